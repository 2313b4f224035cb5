"""Who may do what: the route table with each route's role (401 without a token, 403 below the
role), tokens (hashed, revocable, expiring), dashboard sessions with CSRF, login rate limits,
CORS, and secrets kept out of logs."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from shelfwork.api.auth import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    Auth,
    LoginRefused,
    LoginThrottled,
    PasswordHasher,
    Principal,
    Tokens,
)
from shelfwork.api.login import safe_next
from shelfwork.config import load_settings
from shelfwork.errors import ConfigError
from shelfwork.store.database import utcnow
from shelfwork.store.models import ApiToken, UserSession
from tests.support.clock import FakeClock

from .conftest import ROLES, Api, ApiFactory

# Every API route and the least role it needs. A new route must be added here (the first test
# fails otherwise), so none can ship without a decision about who may call it.
ROUTES: dict[tuple[str, str], str] = {
    ("POST", "/api/v1/jobs"): "operator",
    ("GET", "/api/v1/jobs"): "viewer",
    ("GET", "/api/v1/jobs/{job_id}"): "viewer",
    ("POST", "/api/v1/jobs/{job_id}/cancel"): "operator",
    ("POST", "/api/v1/jobs/{job_id}/retry"): "operator",
    ("POST", "/api/v1/jobs/{job_id}/release"): "operator",
    ("GET", "/api/v1/jobs/{job_id}/events"): "viewer",
    ("GET", "/api/v1/jobs/{job_id}/events/stream"): "viewer",
    ("GET", "/api/v1/pipelines"): "viewer",
    ("GET", "/api/v1/pipelines/{name}"): "viewer",
    ("GET", "/api/v1/schedules"): "viewer",
    ("POST", "/api/v1/schedules"): "operator",
    ("GET", "/api/v1/schedules/{name}"): "viewer",
    ("POST", "/api/v1/schedules/{name}/pause"): "operator",
    ("POST", "/api/v1/schedules/{name}/resume"): "operator",
    ("DELETE", "/api/v1/schedules/{name}"): "operator",
    ("GET", "/api/v1/schedules/{name}/runs"): "viewer",
    ("GET", "/api/v1/trackers"): "viewer",
    ("GET", "/api/v1/trackers/{tracker}/entities"): "viewer",
    ("POST", "/api/v1/trackers/{tracker}/entities"): "operator",
    ("GET", "/api/v1/trackers/{tracker}/entities/{key:path}/transitions"): "viewer",
    ("GET", "/api/v1/trackers/{tracker}/entities/{key:path}"): "viewer",
    ("POST", "/api/v1/trackers/{tracker}/entities/{key:path}/poll"): "operator",
    ("POST", "/api/v1/trackers/{tracker}/entities/{key:path}/acknowledge"): "operator",
    ("POST", "/api/v1/trackers/{tracker}/entities/{key:path}/transition"): "operator",
    ("GET", "/api/v1/dead-letters"): "viewer",
    ("GET", "/api/v1/dead-letters/{letter_id}"): "viewer",
    ("GET", "/api/v1/locks"): "admin",
    ("DELETE", "/api/v1/locks/{name:path}"): "admin",
    ("GET", "/api/v1/me"): "viewer",
    ("GET", "/api/v1/tokens"): "admin",
    ("POST", "/api/v1/tokens"): "admin",
    ("DELETE", "/api/v1/tokens/{token_id}"): "admin",
    ("GET", "/api/v1/oai/networks"): "viewer",
    ("GET", "/api/v1/oai/networks/{acronym}"): "viewer",
    ("PUT", "/api/v1/oai/networks/{acronym}"): "operator",
    ("DELETE", "/api/v1/oai/networks/{acronym}"): "operator",
    ("GET", "/api/v1/oai/actions"): "viewer",
    ("POST", "/api/v1/oai/networks/{acronym}/run"): "operator",
    ("GET", "/api/v1/oai/networks/{acronym}/snapshots"): "viewer",
    ("GET", "/api/v1/oai/snapshots/{snapshot_id}"): "viewer",
    ("POST", "/api/v1/oai/snapshots/{snapshot_id}/confirm"): "operator",
    ("GET", "/api/v1/oai/snapshots/{snapshot_id}/diagnose"): "viewer",
    ("GET", "/api/v1/oai/snapshots/{snapshot_id}/records"): "viewer",
    ("GET", "/api/v1/oai/snapshots/{snapshot_id}/record"): "viewer",
    ("GET", "/api/v1/search"): "viewer",
    ("POST", "/integrate"): "operator",
    ("GET", "/status/{task_id}"): "viewer",
}
PUBLIC = {("GET", "/healthz"), ("GET", "/metrics")}
SAMPLE = {
    "{job_id}": "987654",
    "{name}": "nothing-here",
    "{tracker}": "no-tracker",
    "{key:path}": "k/1",
    "{name:path}": "no-lock",
    "{letter_id}": "987654",
    "{token_id}": "987654",
    "{task_id}": "987654",
    "{acronym}": "NONE",
    "{snapshot_id}": "987654",
}


def concrete(path: str) -> str:
    for placeholder, value in SAMPLE.items():
        path = path.replace(placeholder, value)
    assert "{" not in path, path
    return path


def test_every_api_route_is_in_the_role_table(shared_api: Api) -> None:
    spec = shared_api.client.get("/api/v1/openapi.json").json()
    served = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    table = {(method, path.replace(":path", "")) for method, path in ROUTES}
    assert served - PUBLIC == table


@pytest.mark.parametrize(("method", "path"), sorted(ROUTES), ids=lambda v: str(v))
def test_each_route_needs_its_role(shared_api: Api, method: str, path: str) -> None:
    api = shared_api
    needed = ROUTES[(method, path)]
    url = concrete(path)
    body = {"json": {}} if method == "POST" else {}

    anonymous = api.client.request(method, url, **body)
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.json()["error"] == "unauthorized"
    assert anonymous.headers["www-authenticate"].startswith("Bearer")

    forged = api.client.request(
        method, url, headers={"Authorization": "Bearer swk_0123456789ab_" + "x" * 43}, **body
    )
    assert forged.status_code == 401
    basic = api.client.request(method, url, headers={"Authorization": "Basic YTpi"}, **body)
    assert basic.status_code == 401

    for role in ROLES:
        r = api.client.request(method, url, headers=api.auth(role), **body)
        if ROLES.index(role) < ROLES.index(needed):
            assert r.status_code == 403, (role, r.text)
            assert r.json()["error"] == "forbidden" and needed in r.json()["detail"]
        else:
            assert r.status_code not in (401, 403), (role, r.text)


def test_the_integrator_token_reaches_only_integrate_and_status(shared_api: Api) -> None:
    """The Koha button's token sits in every staff browser: beyond /integrate and /status it
    gets nothing, not the job list, events, dead letters, pipelines or any dashboard page."""
    api = shared_api
    button = api.button()
    for method, path in sorted(ROUTES):
        body = {"json": {}} if method in ("POST", "PUT") else {}
        answer = api.client.request(method, concrete(path), headers=button, **body)
        if path in ("/integrate", "/status/{task_id}"):
            assert answer.status_code not in (401, 403), (method, path, answer.text)
        else:
            assert answer.status_code == 403, (method, path, answer.text)
    for page in ("/", "/admission", "/dead-letters", "/networks", "/search", "/charts"):
        answer = api.client.get(page, headers=button, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
    for fragment in ("/fragments/jobs", "/fragments/job-counts", "/fragments/jobs/1"):
        assert api.client.get(fragment, headers=button).status_code == 401


def test_health_and_metrics_need_no_token(api_for: ApiFactory) -> None:
    api = api_for(start=True)
    assert api.client.get("/healthz").status_code == 200
    assert api.client.get("/metrics").status_code == 200


def test_tokens_are_stored_only_as_hashes(api: Api) -> None:
    with api.engine.store.read() as conn:
        rows = conn.execute(select(ApiToken.__table__)).all()
    stored = " ".join(str(tuple(r)) for r in rows)
    for secret in api.tokens.values():
        assert secret not in stored
        prefix = re.match(r"^swk_([0-9a-f]{12})_", secret)
        assert prefix is not None
        row = next(r for r in rows if r.prefix == prefix.group(1))
        assert row.token_hash == hashlib.sha256(secret.encode()).hexdigest()


def test_a_token_with_a_known_prefix_but_wrong_secret_is_refused(api: Api) -> None:
    prefix = api.tokens["admin"][: len("swk_") + 13]
    r = api.client.get("/api/v1/me", headers={"Authorization": f"Bearer {prefix}{'A' * 43}"})
    assert r.status_code == 401


def test_revoked_and_expired_tokens_stop_working(api: Api) -> None:
    tokens = Tokens(api.engine.store)
    info, secret = tokens.create("operator", "short-lived", expires_in=timedelta(hours=1))
    headers = {"Authorization": f"Bearer {secret}"}
    assert api.client.get("/api/v1/me", headers=headers).json() == {
        "kind": "token",
        "name": "short-lived",
        "role": "operator",
    }
    assert tokens.get(info.id).last_used_at is not None
    with api.engine.store.write() as conn:
        conn.execute(
            update(ApiToken.__table__)
            .where(ApiToken.__table__.c.id == info.id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert api.client.get("/api/v1/me", headers=headers).status_code == 401

    info2, secret2 = tokens.create("viewer")
    assert api.client.get("/api/v1/me", headers={"Authorization": f"Bearer {secret2}"}).is_success
    tokens.revoke(tokens.find(secret2).id)
    r = api.client.get("/api/v1/me", headers={"Authorization": f"Bearer {secret2}"})
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert info2.name.startswith("token-")


def test_admins_manage_tokens_over_the_api(api: Api) -> None:
    r = api.client.post(
        "/api/v1/tokens",
        json={"role": "operator", "name": "koha-staff", "expires_in_days": 30},
        headers=api.admin,
    )
    assert r.status_code == 201
    made = r.json()
    assert made["role"] == "operator" and made["active"] and made["expires_at"]
    assert made["created_by"] == "token:test-admin"
    new = {"Authorization": f"Bearer {made['token']}"}
    assert api.client.get("/api/v1/me", headers=new).json()["name"] == "koha-staff"

    listed = api.client.get("/api/v1/tokens", headers=api.admin).json()["items"]
    assert made["id"] in [t["id"] for t in listed]
    assert all("token" not in t and "token_hash" not in t for t in listed)
    assert made["token"] not in api.client.get("/api/v1/tokens", headers=api.admin).text

    r = api.client.delete(f"/api/v1/tokens/{made['id']}", headers=api.admin)
    assert r.status_code == 200 and r.json()["active"] is False and r.json()["revoked_at"]
    assert api.client.get("/api/v1/me", headers=new).status_code == 401
    assert api.client.delete("/api/v1/tokens/987654", headers=api.admin).status_code == 404
    bad = api.client.post("/api/v1/tokens", json={"role": "root"}, headers=api.admin)
    assert bad.status_code == 422 and "role" in bad.json()["fields"]

    own_id = next(t["id"] for t in listed if t["name"] == "test-admin")
    r = api.client.delete(f"/api/v1/tokens/{own_id}", headers=api.admin)
    assert r.status_code == 409
    assert api.client.get("/api/v1/me", headers=api.admin).is_success


def test_token_and_login_answers_are_never_cached(api: Api, fast_hashing: None) -> None:
    """They carry a token's secret or set a session cookie: no browser or proxy may keep them."""
    made = api.client.post("/api/v1/tokens", json={"role": "viewer"}, headers=api.admin)
    answers = {
        "POST /api/v1/tokens": made,
        "GET /api/v1/tokens": api.client.get("/api/v1/tokens", headers=api.admin),
        "DELETE /api/v1/tokens/{id}": api.client.delete(
            f"/api/v1/tokens/{made.json()['id']}", headers=api.admin
        ),
        "GET /api/v1/me": api.client.get("/api/v1/me", headers=api.viewer),
    }
    api.client.app.state.auth.users.create("hal", "viewer", "hal's password!")  # type: ignore[attr-defined]
    answers["GET /login"] = api.client.get("/login")
    answers["POST /login (wrong)"] = login(api, "hal", "not the password")  # type: ignore[assignment]
    answers["POST /login"] = login(api, "hal", "hal's password!")  # type: ignore[assignment]
    csrf = api.client.get("/api/v1/me")  # the session works
    assert csrf.status_code == 200
    answers["POST /logout"] = api.client.post("/logout", follow_redirects=False)
    for name, answer in answers.items():
        assert answer.headers.get("cache-control") == "no-store", name


def test_roles_are_ordered() -> None:
    viewer = Principal("token", 1, "v", "viewer")
    admin = Principal("user", 2, "a", "admin")
    assert viewer.allows("viewer") and not viewer.allows("operator")
    assert admin.allows("operator") and admin.allows("admin")
    assert (viewer.who, admin.who) == ("token:v", "user:a")


# --- dashboard sessions -------------------------------------------------------------------------


def login(api: Api, username: str, password: str, *, next_path: str = "/") -> object:
    page = api.client.get("/login")
    assert page.status_code == 200
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf is not None and page.cookies.get(LOGIN_CSRF_COOKIE) == csrf.group(1)
    return api.client.post(
        "/login",
        data={
            "username": username,
            "password": password,
            "csrf_token": csrf.group(1),
            "next": next_path,
        },
        follow_redirects=False,
    )


def test_login_opens_a_session_that_works_with_its_csrf_token(api: Api, fast_hashing: None) -> None:
    auth = api.client.app.state.auth  # type: ignore[attr-defined]
    auth.users.create("alice", "operator", "correct horse battery")
    r = login(api, "alice", "correct horse battery", next_path="/jobs?state=failed")
    assert r.status_code == 303 and r.headers["location"] == "/jobs?state=failed"
    set_cookie = r.headers["set-cookie"].lower()
    assert (
        SESSION_COOKIE in set_cookie and "httponly" in set_cookie and "samesite=lax" in set_cookie
    )
    assert "secure" not in set_cookie  # plain http here; see the https test
    cookie = api.client.cookies.get(SESSION_COOKIE)
    assert cookie
    with api.engine.store.read() as conn:
        stored = conn.execute(select(UserSession.__table__)).one()
    assert stored.id == hashlib.sha256(cookie.encode()).hexdigest() and cookie not in str(
        tuple(stored)
    )

    assert api.client.get("/api/v1/me").json() == {
        "kind": "user",
        "name": "alice",
        "role": "operator",
    }
    refused = api.client.post("/api/v1/jobs", json={"pipeline": "noop"})
    assert refused.status_code == 403 and refused.json()["error"] == "csrf_failed"
    wrong = api.client.post(
        "/api/v1/jobs", json={"pipeline": "noop"}, headers={"X-CSRF-Token": "x"}
    )
    assert wrong.status_code == 403
    csrf = stored.csrf_token
    ok = api.client.post("/api/v1/jobs", json={"pipeline": "noop"}, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 202
    events = api.engine.jobs.events(ok.json()["id"])
    assert "user:alice" in events[0]["message"]
    # A form post carries the token as a field.
    form = api.client.post(f"/api/v1/jobs/{ok.json()['id']}/cancel", data={"csrf_token": csrf})
    assert form.status_code == 200 and form.json()["state"] == "cancelled"
    # Operators cannot do admin things through a session either.
    assert api.client.get("/api/v1/locks").status_code == 403

    no_csrf = api.client.post("/logout", follow_redirects=False)
    assert no_csrf.status_code == 403
    out = api.client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    api.client.cookies.set(SESSION_COOKIE, cookie)
    assert api.client.get("/api/v1/me").status_code == 401


def test_login_refusals(api: Api, fast_hashing: None) -> None:
    auth = api.client.app.state.auth  # type: ignore[attr-defined]
    auth.users.create("bob", "viewer", "a long enough password")
    assert login(api, "bob", "wrong password!").status_code == 401
    assert login(api, "nobody", "a long enough password").status_code == 401
    json_refusal = api.client.post(
        "/login",
        data={"username": "bob", "password": "x", "csrf_token": "forged"},
        headers={"Accept": "application/json"},
    )
    assert json_refusal.status_code == 403 and json_refusal.json()["error"] == "csrf_failed"
    api.client.cookies.clear()
    no_cookie = api.client.post(
        "/login", data={"username": "bob", "password": "a long enough password", "csrf_token": "t"}
    )
    assert no_cookie.status_code == 403
    auth.users.set_disabled("bob", True)
    assert login(api, "bob", "a long enough password").status_code == 401


def test_a_password_change_or_disabling_ends_sessions(api: Api, fast_hashing: None) -> None:
    auth = api.client.app.state.auth  # type: ignore[attr-defined]
    auth.users.create("carol", "admin", "first password 1")
    assert login(api, "carol", "first password 1").status_code == 303
    assert api.client.get("/api/v1/locks").status_code == 200
    auth.users.set_password("carol", "second password 2")
    assert api.client.get("/api/v1/locks").status_code == 401
    assert login(api, "carol", "first password 1").status_code == 401
    assert login(api, "carol", "second password 2").status_code == 303
    auth.users.set_disabled("carol", True)
    assert api.client.get("/api/v1/me").status_code == 401


def test_failed_logins_back_off_per_user_and_address_and_cap_each_address(
    api_for: ApiFactory, fast_hashing: None
) -> None:
    api = api_for(
        login_max_failures=3, login_max_failures_per_ip=5, login_window=600, login_backoff=30
    )
    auth = api.client.app.state.auth  # type: ignore[attr-defined]
    auth.users.create("dave", "viewer", "dave's password")
    auth.users.create("erin", "viewer", "erin's password")
    assert login(api, "dave", "dave's password").status_code == 303  # a success counts for nothing
    for _ in range(3):
        assert login(api, "dave", "guess guess").status_code == 401
    blocked = login(api, "dave", "dave's password")  # even the right password waits now
    assert blocked.status_code == 429
    assert 25 <= int(blocked.headers["retry-after"]) <= 31  # a short wait, not a long lock
    assert "too many failed logins" in blocked.text
    assert login(api, "erin", "erin's password").status_code == 303  # another user is not blocked

    for _ in range(2):  # the address reaches its limit of 5 failures, whoever they were for
        assert login(api, "erin", "guess guess").status_code == 401
    spraying = login(api, "erin", "erin's password")
    assert spraying.status_code == 429
    assert 500 <= int(spraying.headers["retry-after"]) <= 600


def limited_auth(api_for: ApiFactory, **settings: object) -> tuple[Auth, FakeClock]:
    """An Auth whose login limiter reads a clock the test moves: tests move time, never sleep."""
    api = api_for(**settings)
    auth: Auth = api.client.app.state.auth  # type: ignore[attr-defined]
    clock = FakeClock()
    auth.limiter.clock = clock
    auth.users.create("admin", "admin", "the admin's password")
    return auth, clock


def test_nobody_can_lock_the_admin_out_from_another_address(
    api_for: ApiFactory, fast_hashing: None
) -> None:
    auth, _clock = limited_auth(api_for, login_max_failures=5, login_max_failures_per_ip=20)
    attacker = "198.51.100.7"
    for _ in range(5):
        with pytest.raises(LoginRefused):
            auth.login("admin", "a guess", attacker)
    with pytest.raises(LoginThrottled):
        auth.login("admin", "a guess", attacker)
    principal, _ = auth.login("admin", "the admin's password", "192.0.2.10")  # the real admin
    assert principal.name == "admin"


def test_the_wait_doubles_with_each_failure_up_to_a_cap_and_then_ends(
    backend: str, api_for: ApiFactory, fast_hashing: None
) -> None:
    auth, clock = limited_auth(
        api_for,
        login_max_failures=3,
        login_max_failures_per_ip=1000,
        login_backoff=2,
        login_backoff_max=60,
        login_window=3600,
    )
    here = "192.0.2.20"
    for _ in range(3):  # the free tries
        with pytest.raises(LoginRefused):
            auth.login("admin", "a guess", here)
    waits = []
    for _ in range(7):
        with pytest.raises(LoginThrottled) as throttled:
            auth.login("admin", "a guess", here)
        waits.append(round(throttled.value.retry_after))
        clock.advance(throttled.value.retry_after)  # wait as told, then guess wrong again
        with pytest.raises(LoginRefused):
            auth.login("admin", "a guess", here)
    assert waits == [2, 4, 8, 16, 32, 60, 60]
    clock.advance(60)
    principal, _ = auth.login("admin", "the admin's password", here)  # no long lock
    assert principal.name == "admin"
    with pytest.raises(LoginRefused):  # a success starts the count again
        auth.login("admin", "a guess", here)


def test_an_address_guessing_many_users_is_capped(api_for: ApiFactory, fast_hashing: None) -> None:
    auth, clock = limited_auth(
        api_for, login_max_failures=5, login_max_failures_per_ip=4, login_window=900
    )
    sprayer = "203.0.113.50"
    for name in ("ann", "ben", "cat", "dan"):
        with pytest.raises(LoginRefused):
            auth.login(name, "Winter2026!", sprayer)
    with pytest.raises(LoginThrottled) as throttled:
        auth.login("eve", "Winter2026!", sprayer)
    assert 890 <= throttled.value.retry_after <= 900
    assert auth.login("admin", "the admin's password", "192.0.2.30")[0].name == "admin"
    clock.advance(901)
    with pytest.raises(LoginRefused):  # the window passed: the address may try again
        auth.login("eve", "Winter2026!", sprayer)


def test_an_ipv6_client_counts_as_its_whole_64_network(
    api_for: ApiFactory, fast_hashing: None
) -> None:
    """One IPv6 client holds a whole /64 (2^64 addresses): counted per address, it could take a
    fresh one for every guess and never wait. An IPv4 client reaching a dual-stack socket
    arrives IPv4-mapped (::ffff:a.b.c.d) and is the same address as without the mapping."""
    auth, _clock = limited_auth(api_for, login_max_failures=3, login_max_failures_per_ip=5)
    for host in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:aaaa::3"):
        with pytest.raises(LoginRefused):
            auth.login("admin", "a guess", host)
    with pytest.raises(LoginThrottled):
        auth.login("admin", "a guess", "2001:db8:1:2:ffff:ffff:ffff:fffe")
    with pytest.raises(LoginRefused):  # another /64 is another client
        auth.login("admin", "a guess", "2001:db8:1:3::1")
    for name in ("ann", "ben"):  # the /64 reaches its cap of 5 failures, whatever the user
        with pytest.raises(LoginRefused):
            auth.login(name, "a guess", f"2001:db8:1:2::{len(name)}:{name[0]}")
    with pytest.raises(LoginThrottled):
        auth.login("cat", "a guess", "2001:db8:1:2::cafe")

    for _ in range(3):
        with pytest.raises(LoginRefused):
            auth.login("admin", "a guess", "198.51.100.7")
    with pytest.raises(LoginThrottled):
        auth.login("admin", "a guess", "::ffff:198.51.100.7")


def test_guesses_sent_at_once_cannot_outrun_the_limit(
    backend: str, api_for: ApiFactory, fast_hashing: None
) -> None:
    """A try is counted as failed before its password is checked (and turned into a success if
    it was right): otherwise every guess sent while the first were being checked (scrypt takes a
    while; the server checks up to 40 at once) would pass the limit's check."""
    auth, _clock = limited_auth(api_for, login_max_failures=1, login_max_failures_per_ip=100)
    checking, go_on = threading.Event(), threading.Event()
    real_verify = auth.users.verify
    first = True

    def slow_verify(name: str, password: str) -> object:
        nonlocal first
        if first:
            first = False
            checking.set()
            assert go_on.wait(10)
        return real_verify(name, password)

    auth.users.verify = slow_verify  # type: ignore[method-assign]
    outcome: list[BaseException] = []

    def guess() -> None:
        try:
            auth.login("admin", "a guess", "198.51.100.8")
        except BaseException as exc:  # the test looks at what it was
            outcome.append(exc)

    first_guess = threading.Thread(target=guess)
    first_guess.start()
    assert checking.wait(10)
    try:
        with pytest.raises(LoginThrottled):  # sent while the first is being checked
            auth.login("admin", "a guess", "198.51.100.8")
    finally:
        go_on.set()
        first_guess.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], LoginRefused)


def test_a_right_password_counted_first_as_a_failure_is_a_success(
    api_for: ApiFactory, fast_hashing: None
) -> None:
    auth, clock = limited_auth(api_for, login_max_failures=2, login_max_failures_per_ip=100)
    here = "192.0.2.40"
    with pytest.raises(LoginRefused):
        auth.login("admin", "a guess", here)
    clock.advance(1)
    assert auth.login("admin", "the admin's password", here)[0].name == "admin"
    clock.advance(1)
    for _ in range(2):  # the success ended the count: two free failures again
        with pytest.raises(LoginRefused):
            auth.login("admin", "a guess", here)
    with pytest.raises(LoginThrottled):
        auth.login("admin", "a guess", here)


def test_login_page_next_stays_on_this_site() -> None:
    assert safe_next("/jobs/3") == "/jobs/3"
    for hostile in ("//evil.example/x", "https://evil.example", "/\\evil", "jobs", None, "/a\nb"):
        assert safe_next(hostile) == "/"


def test_cookies_are_secure_over_https_or_when_configured(
    api_for: ApiFactory, fast_hashing: None
) -> None:
    api = api_for(cookie_secure=True)
    api.client.app.state.auth.users.create("fay", "viewer", "fay's password!")  # type: ignore[attr-defined]
    page = api.client.get("/login")
    assert "secure" in page.headers["set-cookie"].lower()


def test_passwords_are_scrypt_hashed_with_a_salt() -> None:
    hasher = PasswordHasher()
    one, two = hasher.hash("same password"), hasher.hash("same password")
    assert one != two and one.startswith("scrypt$16384$8$1$")
    assert hasher.verify("same password", one) and not hasher.verify("other password", one)
    assert not hasher.verify("same password", "plain$text")


def test_secrets_never_reach_the_logs(
    api: Api, fast_hashing: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    auth = api.client.app.state.auth  # type: ignore[attr-defined]
    _, secret = auth.tokens.create("admin", "logged")
    auth.users.create("gus", "viewer", "gus secret password")
    api.client.get("/api/v1/me", headers={"Authorization": f"Bearer {secret}"})
    login(api, "gus", "wrong secret password")
    login(api, "gus", "gus secret password")
    cookie = api.client.cookies.get(SESSION_COOKIE)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "logged" in text  # the token's creation was logged, by name
    for secret_text in (
        secret,
        secret.split("_")[-1],
        "gus secret password",
        "wrong secret",
        cookie,
    ):
        assert secret_text and secret_text not in text


# --- CORS ---------------------------------------------------------------------------------------

KOHA = "https://staff.library.example"


def test_cors_allows_the_configured_origin_only(api_for: ApiFactory) -> None:
    api = api_for(cors_origins=[KOHA])
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    ok = api.client.options("/api/v1/jobs", headers={"Origin": KOHA, **preflight})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == KOHA
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in ok.headers

    foreign = api.client.options(
        "/api/v1/jobs", headers={"Origin": "https://evil.example", **preflight}
    )
    assert foreign.status_code == 400
    assert "access-control-allow-origin" not in foreign.headers

    simple = api.client.get("/api/v1/me", headers={"Origin": KOHA, **api.viewer})
    assert simple.headers["access-control-allow-origin"] == KOHA
    other = api.client.get("/api/v1/me", headers={"Origin": "https://evil.example", **api.viewer})
    assert "access-control-allow-origin" not in other.headers


def test_no_cors_origins_means_no_cross_origin_access(api: Api) -> None:
    r = api.client.options(
        "/api/v1/jobs", headers={"Origin": KOHA, "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in r.headers


def test_cors_origins_come_from_the_config_file_or_environment(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = load_settings(env={"SHELFWORK_CORS_ORIGINS": f"{KOHA}, http://localhost:8080"})
    assert settings.cors_origins == [KOHA, "http://localhost:8080"]
    file = tmp_path / "shelfwork.toml"
    file.write_text(f'[api]\ncors_origins = ["{KOHA}"]\nlogin_max_failures = 3\n')
    from_file = load_settings(file, env={})
    assert from_file.cors_origins == [KOHA] and from_file.login_max_failures == 3
    for bad in ("*", f"{KOHA}/", "staff.library.example", f"{KOHA}/path"):
        with pytest.raises(ConfigError, match="CORS origin"):
            load_settings(env={"SHELFWORK_CORS_ORIGINS": bad})
