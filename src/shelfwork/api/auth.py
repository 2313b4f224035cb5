"""Who is calling: API tokens, dashboard users and their sessions, CSRF, login rate limiting.

Roles are ordered integrator < viewer < operator < admin: reading needs viewer, changing anything
needs operator, managing tokens and locks needs admin. The integrator role (the Koha button's
token) may only call /integrate and /status.

- API tokens (`Authorization: Bearer swk_<prefix>_<secret>`) are random, shown once, and kept only
  as a SHA-256 hash; the prefix finds the row and is what listings show. `shelfwork serve` trusts
  a verified token for TOKEN_CACHE_TTL seconds without reading its row again (one database read
  and one thread hand-off less per request): a revocation made through that server ends the token
  at once, one made elsewhere (the CLI, another server, an expiry edited in the database) within
  that time. `create_app` alone does not cache.
- Dashboard users log in with a password (scrypt, per-user salt) and get a session cookie
  (HttpOnly, SameSite=Lax, Secure over https). The cookie holds a random token whose hash is a row in
  `user_sessions`, so logging out ends the session on every server, and disabling a user or changing
  a password ends all of theirs. No signing key is needed, so none has to be configured or shared
  between servers.
- A request authenticated by the session cookie that changes something must carry the session's
  CSRF token (form field `csrf_token` or header `X-CSRF-Token`). The login form itself is protected
  with a double-submit cookie. Cross-origin callers (the Koha staff client) use tokens, and CORS
  never allows credentials, so a foreign page can never ride on a session.
- Failed logins are counted in the database per (user name, client address), which backs off
  (a growing wait, never a lock another address could impose), and per client address, which is
  capped; a login that must wait is refused with 429 and Retry-After before the password is
  checked (LoginLimiter). An IPv6 client is counted as its /64 network (it holds all of it).

Secrets (tokens, passwords, cookies) are never logged and never stored in the clear.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from ..store.database import LOGIN_LOCK, Store, utcnow
from ..store.models import ApiToken, LoginAttempt, User, UserSession
from .errors import AccessError, ApiError

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("shelfwork.api.auth")
tokens_t = ApiToken.__table__
users_t = User.__table__
sessions_t = UserSession.__table__
attempts_t = LoginAttempt.__table__

# Ordered: each role may do what the ones before it may. "integrator" is for the Koha staff
# button's token, which every staff browser can read: it may start an integration and read its
# status (/integrate, /status) and nothing else, not even the job list.
ROLES = ("integrator", "viewer", "operator", "admin")
INTEGRATOR = "integrator"
SESSION_COOKIE = "shelfwork_session"
LOGIN_CSRF_COOKIE = "shelfwork_login_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
TOKEN_PREFIX = "swk_"
_TOKEN = re.compile(r"^swk_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")
_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]*$")
_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,199}$")
#: writes of last_used_at / last_seen_at are skipped when the stored value is this recent
TOUCH_EVERY = timedelta(seconds=60)
#: seconds `shelfwork serve` trusts a verified token before reading its row again
TOKEN_CACHE_TTL = 2.0
#: most verified tokens remembered at once (the oldest is forgotten first)
TOKEN_CACHE_SIZE = 1024
MIN_PASSWORD = 10
MAX_PASSWORD = 1024


def rank(role: str) -> int:
    try:
        return ROLES.index(role)
    except ValueError:
        raise AccessError(f"unknown role {role!r}; roles: {', '.join(ROLES)}") from None


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """The caller of a request: a token or a logged-in user, with the role that decides access."""

    kind: str  # "token" or "user"
    id: int
    name: str
    role: str
    csrf_token: str | None = None  # sessions only: what forms must send back

    @property
    def who(self) -> str:
        """How audit trails name this caller (e.g. `user:alice`, `token:koha-staff`)."""
        return f"{self.kind}:{self.name}"

    def allows(self, role: str) -> bool:
        return rank(self.role) >= rank(role)


# --- API tokens ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    prefix: str
    role: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > utcnow()


def _token_info(row: Any) -> TokenInfo:
    m = row._mapping
    return TokenInfo(**{k: m[k] for k in TokenInfo.__dataclass_fields__})


class Tokens:
    """API tokens over one Store. With `cache_ttl` > 0, a token verified against the database is
    trusted for that many seconds (never past its expiry), keyed by its SHA-256 hash."""

    def __init__(self, store: Store, *, cache_ttl: float = 0.0) -> None:
        self.store = store
        self.cache_ttl = cache_ttl
        self._verified: dict[str, tuple[Principal, float]] = {}  # hash -> (who, monotonic until)

    def cached(self, presented: str) -> Principal | None:
        """The principal of a token verified less than `cache_ttl` seconds ago, else None (then
        `authenticate` decides). Cheap enough for the event loop: one hash, no database."""
        if not self._verified:
            return None
        key = _sha256(presented)
        hit = self._verified.get(key)
        if hit is None:
            return None
        if time.monotonic() >= hit[1]:
            self._verified.pop(key, None)
            return None
        return hit[0]

    def _remember(self, key: str, principal: Principal, expires_at: datetime | None) -> None:
        ttl = self.cache_ttl
        if expires_at is not None:
            ttl = min(ttl, (expires_at - utcnow()).total_seconds())
        if ttl <= 0:
            return
        while len(self._verified) >= TOKEN_CACHE_SIZE:
            try:
                self._verified.pop(next(iter(self._verified)))
            except (StopIteration, KeyError, RuntimeError):  # emptied or changed by another thread
                break
        self._verified[key] = (principal, time.monotonic() + ttl)

    def _forget(self, token_id: int) -> None:
        for key, (principal, _) in list(self._verified.items()):
            if principal.id == token_id:
                self._verified.pop(key, None)

    def create(
        self,
        role: str,
        name: str | None = None,
        *,
        created_by: str = "cli",
        expires_in: timedelta | None = None,
    ) -> tuple[TokenInfo, str]:
        """A new token; returns its record and the secret, which exists nowhere else afterwards."""
        rank(role)
        if name is not None and not (0 < len(name) <= 200 and _PRINTABLE.match(name)):
            raise AccessError("a token name must be 1 to 200 characters, none of them control")
        if expires_in is not None and expires_in <= timedelta(0):
            raise AccessError("a token's lifetime must be positive")
        for _ in range(5):
            prefix = secrets.token_hex(6)
            secret = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
            now = utcnow()
            try:
                with self.store.write() as conn:
                    token_id = conn.execute(
                        insert(tokens_t)
                        .values(
                            name=name or f"token-{prefix}",
                            prefix=prefix,
                            token_hash=_sha256(secret),
                            role=role,
                            created_at=now,
                            created_by=created_by,
                            expires_at=now + expires_in if expires_in else None,
                        )
                        .returning(tokens_t.c.id)
                    ).scalar_one()
            except IntegrityError:
                continue  # the random prefix was taken: draw another
            log.info("API token %s (%s, %s) created by %s", prefix, name, role, created_by)
            return self.get(token_id), secret
        raise AccessError("could not draw a free token prefix; try again")  # pragma: no cover

    def get(self, token_id: int) -> TokenInfo:
        with self.store.read() as conn:
            row = conn.execute(select(tokens_t).where(tokens_t.c.id == token_id)).first()
        if row is None:
            raise AccessError(f"no API token with id {token_id}")
        return _token_info(row)

    def list(self, *, include_revoked: bool = True) -> list[TokenInfo]:
        q = select(tokens_t).order_by(tokens_t.c.id)
        if not include_revoked:
            q = q.where(tokens_t.c.revoked_at.is_(None))
        with self.store.read() as conn:
            return [_token_info(r) for r in conn.execute(q).all()]

    def find(self, ref: str) -> TokenInfo:
        """A token by id, prefix, or the token itself (so a leaked token can be revoked as is)."""
        ref = ref.strip()
        match = _TOKEN.match(ref)
        prefix = match.group(1) if match else ref.removeprefix(TOKEN_PREFIX).rstrip("_")
        with self.store.read() as conn:
            if ref.isdigit() and len(ref) < 19:
                row = conn.execute(select(tokens_t).where(tokens_t.c.id == int(ref))).first()
            else:
                row = conn.execute(select(tokens_t).where(tokens_t.c.prefix == prefix)).first()
        if row is None:
            raise AccessError(f"no API token {ref[:20]!r} (give its id or prefix)")
        return _token_info(row)

    def revoke(self, token_id: int, *, by: str = "cli") -> TokenInfo:
        """Stop a token working at once (its record stays, for the audit trail)."""
        with self.store.write() as conn:
            res = conn.execute(
                update(tokens_t)
                .where(tokens_t.c.id == token_id, tokens_t.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
        self._forget(token_id)
        info = self.get(token_id)
        if res.rowcount == 1:
            log.info("API token %s (%s) revoked by %s", info.prefix, info.name, by)
        return info

    def authenticate(self, presented: str, *, touch: bool = True) -> Principal | None:
        """The principal for a presented token, or None if it is malformed, unknown, revoked
        or expired. The hash comparison takes the same time whatever matches. `touch=False`
        looks without recording a use (e.g. to check a token's role before handing it out)."""
        match = _TOKEN.match(presented)
        if match is None:
            return None
        with self.store.read() as conn:
            row = conn.execute(
                select(
                    tokens_t.c.id,
                    tokens_t.c.name,
                    tokens_t.c.role,
                    tokens_t.c.token_hash,
                    tokens_t.c.expires_at,
                    tokens_t.c.last_used_at,
                    tokens_t.c.revoked_at,
                ).where(tokens_t.c.prefix == match.group(1))
            ).first()
        digest = _sha256(presented)
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            return None
        now = utcnow()
        if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
            return None
        if touch and (row.last_used_at is None or now - row.last_used_at > TOUCH_EVERY):
            with self.store.write() as conn:
                conn.execute(
                    update(tokens_t).where(tokens_t.c.id == row.id).values(last_used_at=now)
                )
        principal = Principal("token", row.id, row.name, row.role)
        if self.cache_ttl > 0:
            self._remember(digest, principal, row.expires_at)
        return principal


# --- passwords ----------------------------------------------------------------------------------


class PasswordHasher:
    """scrypt with a random 16-byte salt; the parameters travel with the hash, so raising them
    later still verifies old hashes."""

    n = 2**14
    r = 8
    p = 1

    def hash(self, password: str) -> str:
        salt = secrets.token_bytes(16)
        key = self._derive(password, salt, self.n, self.r, self.p)
        return "$".join(["scrypt", str(self.n), str(self.r), str(self.p), _b64(salt), _b64(key)])

    def verify(self, password: str, stored: str) -> bool:
        try:
            scheme, n, r, p, salt, key = stored.split("$")
            if scheme != "scrypt":
                return False
            got = self._derive(password, _unb64(salt), int(n), int(r), int(p))
        except (ValueError, TypeError):
            return False
        return hmac.compare_digest(got, _unb64(key))

    @staticmethod
    def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
        return hashlib.scrypt(
            password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32
        )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def check_password(password: str) -> None:
    if not (MIN_PASSWORD <= len(password) <= MAX_PASSWORD):
        raise AccessError(f"a password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long")


# --- users and sessions -------------------------------------------------------------------------


@dataclass(frozen=True)
class UserInfo:
    id: int
    name: str
    role: str
    disabled: bool
    created_at: datetime
    password_changed_at: datetime | None
    last_login_at: datetime | None


def _user_info(row: Any) -> UserInfo:
    m = row._mapping
    return UserInfo(**{k: m[k] for k in UserInfo.__dataclass_fields__})


class Users:
    """Dashboard users over one Store."""

    def __init__(self, store: Store, hasher: PasswordHasher | None = None) -> None:
        self.store = store
        self.hasher = hasher or PasswordHasher()
        self._decoy: str | None = None

    def _decoy_hash(self) -> str:
        """Checked when the user name is unknown, so a wrong name costs as long as a wrong
        password (made on first use: hashing takes a while)."""
        if self._decoy is None:
            self._decoy = self.hasher.hash(secrets.token_urlsafe(16))
        return self._decoy

    def create(self, name: str, role: str, password: str) -> UserInfo:
        if not _USER_NAME.match(name):
            raise AccessError(
                f"bad user name {name!r}: use letters, digits and . _ @ - (up to 200, starting "
                "with a letter or digit)"
            )
        rank(role)
        if role == INTEGRATOR:
            raise AccessError(
                "the integrator role is for the Koha button's API token, not for dashboard "
                "users; give a user viewer, operator or admin"
            )
        check_password(password)
        now = utcnow()
        try:
            with self.store.write() as conn:
                conn.execute(
                    insert(users_t).values(
                        name=name,
                        role=role,
                        password_hash=self.hasher.hash(password),
                        disabled=False,
                        created_at=now,
                        password_changed_at=now,
                    )
                )
        except IntegrityError:
            raise AccessError(f"user {name!r} already exists") from None
        log.info("user %s (%s) created", name, role)
        return self.get(name)

    def get(self, name: str) -> UserInfo:
        with self.store.read() as conn:
            row = conn.execute(select(users_t).where(users_t.c.name == name)).first()
        if row is None:
            raise AccessError(f"no user named {name!r}")
        return _user_info(row)

    def list(self) -> list[UserInfo]:
        with self.store.read() as conn:
            return [_user_info(r) for r in conn.execute(select(users_t).order_by(users_t.c.name))]

    def set_password(self, name: str, password: str) -> UserInfo:
        """Change a password; the user's open sessions end."""
        check_password(password)
        user = self.get(name)
        with self.store.write() as conn:
            conn.execute(
                update(users_t)
                .where(users_t.c.id == user.id)
                .values(password_hash=self.hasher.hash(password), password_changed_at=utcnow())
            )
            conn.execute(delete(sessions_t).where(sessions_t.c.user_id == user.id))
        return self.get(name)

    def set_disabled(self, name: str, disabled: bool) -> UserInfo:
        """Disable (ending the user's sessions) or enable a user."""
        user = self.get(name)
        with self.store.write() as conn:
            conn.execute(update(users_t).where(users_t.c.id == user.id).values(disabled=disabled))
            if disabled:
                conn.execute(delete(sessions_t).where(sessions_t.c.user_id == user.id))
        return self.get(name)

    def verify(self, name: str, password: str) -> UserInfo | None:
        """The user if the name and password match an enabled user, else None."""
        with self.store.read() as conn:
            row = conn.execute(select(users_t).where(users_t.c.name == name[:200])).first()
        if row is None:
            self.hasher.verify(password, self._decoy_hash())
            return None
        if not self.hasher.verify(password, row.password_hash) or row.disabled:
            return None
        return _user_info(row)


class Sessions:
    """Dashboard sessions: the cookie is a random token; the row is keyed by its hash."""

    def __init__(self, store: Store, ttl: float) -> None:
        self.store = store
        self.ttl = timedelta(seconds=ttl)

    def create(self, user: UserInfo) -> tuple[str, str]:
        """Open a session; returns (cookie value, CSRF token)."""
        cookie = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = utcnow()
        with self.store.write() as conn:
            conn.execute(delete(sessions_t).where(sessions_t.c.expires_at <= now))
            conn.execute(
                insert(sessions_t).values(
                    id=_sha256(cookie),
                    user_id=user.id,
                    csrf_token=csrf,
                    created_at=now,
                    expires_at=now + self.ttl,
                    last_seen_at=now,
                )
            )
            conn.execute(update(users_t).where(users_t.c.id == user.id).values(last_login_at=now))
        return cookie, csrf

    def authenticate(self, cookie: str) -> Principal | None:
        """The logged-in user behind a cookie, with their current role; None if the session
        ended, expired, or the user was disabled."""
        if not cookie or len(cookie) > 200:
            return None
        now = utcnow()
        with self.store.read() as conn:
            row = conn.execute(
                select(
                    sessions_t.c.id,
                    sessions_t.c.csrf_token,
                    sessions_t.c.expires_at,
                    sessions_t.c.last_seen_at,
                    users_t.c.id.label("user_id"),
                    users_t.c.name,
                    users_t.c.role,
                    users_t.c.disabled,
                )
                .join(users_t, users_t.c.id == sessions_t.c.user_id)
                .where(sessions_t.c.id == _sha256(cookie))
            ).first()
        if row is None or row.disabled or row.expires_at <= now:
            return None
        if row.last_seen_at is None or now - row.last_seen_at > TOUCH_EVERY:
            with self.store.write() as conn:
                conn.execute(
                    update(sessions_t).where(sessions_t.c.id == row.id).values(last_seen_at=now)
                )
        return Principal("user", row.user_id, row.name, row.role, csrf_token=row.csrf_token)

    def end(self, cookie: str) -> None:
        with self.store.write() as conn:
            conn.execute(delete(sessions_t).where(sessions_t.c.id == _sha256(cookie)))


# --- login rate limiting ------------------------------------------------------------------------


class LoginLimiter:
    """Failed logins, kept in the database so the limits hold across servers and restarts.

    - Per (user name, client address), since that pair's last success: the first `max_failures`
      are free; after that each try waits `backoff` seconds after the last failure, doubled for
      every further failure, at most `backoff_max`. A wait, never a lock: guessing from one
      address slows down, while the same user from another address is not held up, so nobody
      can lock `admin` out by guessing its password from somewhere else.
    - Per client address, whatever the user name: past `max_failures_per_ip` failures within the
      window the address waits until the oldest leaves it (spraying one password over many
      names is capped).

    A client address is what `client_address` makes of it (an IPv6 client is its /64). A try is
    counted as failed before its password is checked, in the transaction that checked the limits
    (`admit`), and becomes a success afterwards if it was one (`succeeded`): checking a password
    takes a while, and tries sent meanwhile must see the ones before them.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_failures: int,
        max_failures_per_ip: int,
        window: float,
        backoff: float = 1.0,
        backoff_max: float = 300.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.max_failures = max_failures
        self.max_failures_per_ip = max_failures_per_ip
        self.window = timedelta(seconds=window)
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.clock = clock

    def retry_after(self, username: str, ip: str) -> float | None:
        """Seconds until a login for (username, ip) may be tried again, or None if it may now."""
        with self.store.read() as conn:
            return self._wait(conn, username[:200], client_address(ip), self.clock())

    def admit(self, username: str, ip: str) -> int:
        """Count a try as failed, or raise LoginThrottled if it must wait; returns the try's id
        for `succeeded`. Serialised (an advisory lock on PostgreSQL, the write lock on SQLite),
        so tries sent at once each see the ones before them."""
        user, address, now = username[:200], client_address(ip), self.clock()
        with self.store.write(serialize=LOGIN_LOCK) as conn:
            wait = self._wait(conn, user, address, now)
            if wait is not None:
                raise LoginThrottled(wait)
            # Older attempts no longer count: a success before the window only ends failures
            # that are outside it too.
            conn.execute(delete(attempts_t).where(attempts_t.c.at < now - self.window))
            attempt: int = conn.execute(
                insert(attempts_t)
                .values(at=now, username=user, ip=address, ok=False)
                .returning(attempts_t.c.id)
            ).scalar_one()
        return attempt

    def succeeded(self, attempt: int) -> None:
        """The try `admit` counted was the right password."""
        with self.store.write() as conn:
            conn.execute(update(attempts_t).where(attempts_t.c.id == attempt).values(ok=True))

    def _wait(self, conn: Any, user: str, address: str, now: datetime) -> float | None:
        """The wait `retry_after` says, read through `conn`."""
        since = now - self.window
        pair = (attempts_t.c.username == user, attempts_t.c.ip == address)
        waits = []
        last_ok = conn.execute(
            select(func.max(attempts_t.c.at)).where(*pair, attempts_t.c.ok.is_(True))
        ).scalar()
        failed = select(func.count(), func.max(attempts_t.c.at)).where(
            *pair, attempts_t.c.ok.is_(False), attempts_t.c.at > since
        )
        if last_ok is not None:
            failed = failed.where(attempts_t.c.at > _aware(last_ok))
        count, last = conn.execute(failed).one()
        if count >= self.max_failures and last is not None:
            delay = min(self.backoff_max, self.backoff * 2.0 ** (count - self.max_failures))
            waits.append((_aware(last) + timedelta(seconds=delay) - now).total_seconds())
        # The limit-th most recent failure from the address leaves the window first.
        oldest = conn.execute(
            select(attempts_t.c.at)
            .where(attempts_t.c.ip == address, attempts_t.c.ok.is_(False))
            .where(attempts_t.c.at > since)
            .order_by(attempts_t.c.at.desc())
            .offset(self.max_failures_per_ip - 1)
            .limit(1)
        ).scalar()
        if oldest is not None:
            waits.append((_aware(oldest) + self.window - now).total_seconds())
        wait = max(waits, default=0.0)
        return wait if wait > 0 else None


def client_address(host: str) -> str:
    """The address failed logins count against. An IPv6 client as its /64 network: one client
    (a home, a host, a cloud instance) holds a whole /64 and could take a fresh address for every
    guess. An IPv4-mapped address (how a dual-stack socket shows an IPv4 peer) as the IPv4 one."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]  # not an IP address: a test client's name, a Unix socket
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
    return str(address)


def _aware(value: Any) -> datetime:
    """Aggregates over SQLite bypass the column type and come back as naive strings."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=utcnow().tzinfo)
    return datetime.fromisoformat(str(value)).replace(tzinfo=utcnow().tzinfo)


# --- the bundle the app holds -------------------------------------------------------------------


class Auth:
    """Everything the API and the dashboard need to know who is calling."""

    def __init__(self, store: Store, settings: Settings, *, token_cache_ttl: float = 0.0) -> None:
        self.settings = settings
        self.tokens = Tokens(store, cache_ttl=token_cache_ttl)
        self.users = Users(store)
        self.sessions = Sessions(store, settings.session_ttl)
        self.limiter = LoginLimiter(
            store,
            max_failures=settings.login_max_failures,
            max_failures_per_ip=settings.login_max_failures_per_ip,
            window=settings.login_window,
            backoff=settings.login_backoff,
            backoff_max=settings.login_backoff_max,
        )

    def login(self, username: str, password: str, ip: str) -> tuple[Principal, str]:
        """Check a login; returns the principal and the session cookie value.
        Raises LoginThrottled (too many failures) or LoginRefused (wrong name or password)."""
        try:
            attempt = self.limiter.admit(username, ip)
        except LoginThrottled:
            log.warning("login for %r from %s refused: too many failures", username[:200], ip)
            raise
        user = self.users.verify(username, password)
        if user is None:
            log.info("failed login for %r from %s", username[:200], ip)
            raise LoginRefused("wrong user name or password")
        self.limiter.succeeded(attempt)
        cookie, csrf = self.sessions.create(user)
        log.info("user %s logged in from %s", user.name, ip)
        return Principal("user", user.id, user.name, user.role, csrf_token=csrf), cookie


class LoginRefused(AccessError):
    """Wrong user name or password (which of the two is not said)."""


class LoginThrottled(AccessError):
    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(f"too many failed logins; try again in {int(retry_after) + 1} s")


# --- FastAPI dependencies -----------------------------------------------------------------------

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="An API token, made with `shelfwork token create --role integrator|viewer|operator|admin`.",
)


def auth_of(request: Request) -> Auth:
    auth: Auth = request.app.state.auth
    return auth


async def identify(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    """Authenticate by bearer token, else by session cookie (with CSRF for changes); 401 if
    neither works. Cached on the request."""
    cached: Principal | None = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    auth = auth_of(request)
    if credentials is not None:
        principal = auth.tokens.cached(credentials.credentials) or await run_in_threadpool(
            auth.tokens.authenticate, credentials.credentials
        )
        if principal is None:
            raise ApiError(
                401,
                "unauthorized",
                "the API token is unknown, revoked or expired",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
    else:
        cookie = request.cookies.get(SESSION_COOKIE)
        principal = await run_in_threadpool(auth.sessions.authenticate, cookie) if cookie else None
        if principal is None:
            raise ApiError(
                401,
                "unauthorized",
                "authentication required: send 'Authorization: Bearer <token>' "
                "(make one with `shelfwork token create`) or log in",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if request.method not in SAFE_METHODS:
            await check_csrf(request, principal)
    request.state.principal = principal
    return principal


async def check_csrf(request: Request, principal: Principal) -> None:
    """A cookie-authenticated change must echo the session's CSRF token (header or form field)."""
    sent = request.headers.get(CSRF_HEADER)
    content_type = request.headers.get("content-type", "")
    if sent is None and content_type.startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    expected = principal.csrf_token or ""
    if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise ApiError(
            403,
            "csrf_failed",
            f"missing or wrong CSRF token: send the session's token as the {CSRF_FIELD!r} form "
            f"field or the {CSRF_HEADER} header",
        )


def require(role: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that lets the request through only for `role` or a higher one."""
    rank(role)

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal:
        principal = await identify(request, credentials)
        if not principal.allows(role):
            raise ApiError(
                403,
                "forbidden",
                f"this needs the {role} role; {principal.who} has the {principal.role} role",
            )
        return principal

    dependency.__name__ = f"require_{role}"
    return dependency


def require_integrator_or(role: str) -> Callable[..., Awaitable[Principal]]:
    """Lets through the integrator role, and `role` or a higher one (not the roles between)."""
    rank(role)
    check = require(INTEGRATOR)

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal:
        principal = await check(request, credentials)
        if principal.role != INTEGRATOR and not principal.allows(role):
            raise ApiError(
                403,
                "forbidden",
                f"this needs the {role} or {INTEGRATOR} role; {principal.who} has the "
                f"{principal.role} role",
            )
        return principal

    dependency.__name__ = f"require_integrator_or_{role}"
    return dependency


Integrator = Annotated[Principal, Depends(require(INTEGRATOR))]
Viewer = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]
Admin = Annotated[Principal, Depends(require("admin"))]


async def session_principal(request: Request) -> Principal | None:
    """The logged-in dashboard user, or None (for pages that redirect to /login instead of 401)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    return await run_in_threadpool(auth_of(request).sessions.authenticate, cookie)


def cookie_secure(request: Request) -> bool:
    configured = auth_of(request).settings.cookie_secure
    return request.url.scheme == "https" if configured is None else configured
