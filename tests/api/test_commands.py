"""`shelfwork token ...` and `shelfwork user ...` (the command groups the main CLI mounts)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from shelfwork.api.auth import Tokens, Users
from shelfwork.api.commands import register
from shelfwork.api.errors import AccessError
from shelfwork.config import Settings, load_settings
from shelfwork.store import Store


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(env={}, database_url=f"sqlite:///{tmp_path / 'shelfwork.db'}")


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    store = Store(settings.database_url)
    store.upgrade()
    yield store
    store.dispose()


@pytest.fixture
def run(settings: Settings, fast_hashing: None):  # type: ignore[no-untyped-def]
    app = typer.Typer()
    register(app, lambda: settings)
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
        return runner.invoke(app, list(args), input=input)

    return invoke


def test_token_create_prints_only_the_token_and_it_works(run, store: Store) -> None:  # type: ignore[no-untyped-def]
    result = run("token", "create", "--role", "operator", "--name", "koha-staff")
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip()
    assert "\n" not in secret and secret.startswith("swk_")
    assert "shown only this once" in result.stderr and secret not in result.stderr
    principal = Tokens(store).authenticate(secret)
    assert principal is not None and (principal.name, principal.role) == ("koha-staff", "operator")


def test_token_list_and_revoke(run, store: Store) -> None:  # type: ignore[no-untyped-def]
    secret = run("token", "create", "--role", "viewer", "--name", "dash").stdout.strip()
    run("token", "create", "--role", "admin", "--expires-days", "2")
    table = run("token", "list")
    assert table.exit_code == 0 and "dash" in table.stdout and "viewer" in table.stdout
    assert secret not in table.stdout and secret.split("_")[-1] not in table.stdout
    rows = json.loads(run("token", "list", "--json").stdout)
    assert (rows[0]["name"], rows[0]["role"], rows[0]["active"]) == ("dash", "viewer", True)
    assert rows[1]["expires_at"] is not None and "token_hash" not in rows[0]

    prefix = rows[0]["prefix"]
    revoked = run("token", "revoke", prefix)
    assert revoked.exit_code == 0 and "revoked API token" in revoked.stderr
    assert Tokens(store).authenticate(secret) is None
    assert "already revoked" in run("token", "revoke", secret).stderr  # the token itself works too
    unknown = run("token", "revoke", "ffffffffffff")
    assert isinstance(unknown.exception, AccessError)
    assert run("token", "create", "--role", "root").exit_code == 2


def test_user_create_reads_the_password_from_stdin_or_a_prompt(run, store: Store) -> None:  # type: ignore[no-untyped-def]
    made = run(
        "user", "create", "alice", "--role", "admin", "--password-stdin", input="s3cret words!\n"
    )
    assert made.exit_code == 0, made.output
    assert "s3cret" not in made.output
    users = Users(store)
    assert users.verify("alice", "s3cret words!") is not None
    prompted = run(
        "user", "create", "bob", "--role", "viewer", input="bob's password\nbob's password\n"
    )
    assert prompted.exit_code == 0, prompted.output
    assert users.verify("bob", "bob's password") is not None

    short = run("user", "create", "carl", "--role", "viewer", "--password-stdin", input="short\n")
    assert isinstance(short.exception, AccessError) and "10" in str(short.exception)
    again = run(
        "user", "create", "alice", "--role", "viewer", "--password-stdin", input="0123456789ab\n"
    )
    assert isinstance(again.exception, AccessError) and "already exists" in str(again.exception)
    bad_name = run(
        "user", "create", "a b", "--role", "viewer", "--password-stdin", input="0123456789ab\n"
    )
    assert isinstance(bad_name.exception, AccessError)

    listed = run("user", "list")
    assert "alice" in listed.stdout and "admin" in listed.stdout and "carl" not in listed.stdout


def test_user_passwd_disable_enable(run, store: Store) -> None:  # type: ignore[no-untyped-def]
    run(
        "user", "create", "dora", "--role", "operator", "--password-stdin", input="first password\n"
    )
    users = Users(store)
    changed = run("user", "passwd", "dora", "--password-stdin", input="second password\n")
    assert changed.exit_code == 0
    assert users.verify("dora", "first password") is None
    assert users.verify("dora", "second password") is not None
    assert run("user", "disable", "dora").exit_code == 0
    assert users.verify("dora", "second password") is None
    assert json.loads(run("user", "list", "--json").stdout)[0]["disabled"] is True
    assert run("user", "enable", "dora").exit_code == 0
    assert users.verify("dora", "second password") is not None
    missing = run("user", "passwd", "nobody", "--password-stdin", input="whatever12345\n")
    assert isinstance(missing.exception, AccessError)
