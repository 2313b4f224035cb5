"""`shelfwork token ...` and `shelfwork user ...`: API tokens and dashboard users from a shell.

    shelfwork token create --role integrator --name koha-staff   # prints the token, once
    shelfwork token list
    shelfwork token revoke 3            # by id, prefix, or the token itself
    shelfwork user create alice --role admin                    # asks for the password
    printf '%s\\n' "$PW" | shelfwork user create bot --role viewer --password-stdin

The main CLI mounts these with `register(app, settings)`. Results go to stdout (the token alone, so
`TOKEN=$(shelfwork token create ...)` works), messages to stderr; errors are ShelfworkErrors, which
the CLI turns into one line and an exit code.
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..store import Store
from .auth import Tokens, Users
from .errors import AccessError

if TYPE_CHECKING:
    from ..config import Settings

SettingsSource = Callable[[], "Settings"]


class RoleChoice(StrEnum):
    viewer = "viewer"
    operator = "operator"
    admin = "admin"


class TokenRoleChoice(StrEnum):
    """Tokens may also have the integrator role (the Koha staff button: /integrate and /status)."""

    integrator = "integrator"
    viewer = "viewer"
    operator = "operator"
    admin = "admin"


JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
PasswordStdin = Annotated[
    bool,
    typer.Option(
        "--password-stdin", help="Read the password from the first line of standard input."
    ),
]


def register(app: typer.Typer, settings: SettingsSource) -> None:
    """Add the `token` and `user` command groups to `app`; `settings` is called when a command
    needs the database (so `--help` works with a broken config)."""
    app.add_typer(token_commands(settings), name="token")
    app.add_typer(user_commands(settings), name="user")


@contextmanager
def open_store(settings: SettingsSource) -> Iterator[Store]:
    """The metadata database, checked reachable and migrated; closed afterwards."""
    store = Store(settings().database_url)
    try:
        store.ping()
        store.upgrade()
        yield store
    finally:
        store.dispose()


def _operator() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in this environment (containers)
        return "cli"


def _say(message: str) -> None:
    typer.echo(message, err=True)


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M") if value else "-"


def _json(rows: list[dict[str, Any]]) -> None:
    typer.echo(json.dumps(rows, indent=2, default=str))


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for line in [headers, *rows]:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def _password(stdin: bool) -> str:
    if stdin:
        line = sys.stdin.readline()
        if not line:
            raise AccessError("--password-stdin: standard input is empty")
        return line.rstrip("\r\n")
    value: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return value


def token_commands(settings: SettingsSource) -> typer.Typer:
    app = typer.Typer(help="API tokens (Authorization: Bearer ...).", no_args_is_help=True)

    @app.command("create")
    def create(
        role: Annotated[
            TokenRoleChoice,
            typer.Option("--role", help="What the token may do (integrator: the Koha button)."),
        ],
        name: Annotated[
            str | None, typer.Option("--name", help="Who or what uses it, e.g. koha-staff.")
        ] = None,
        expires_days: Annotated[
            float | None,
            typer.Option("--expires-days", min=0.001, help="Stop working after this many days."),
        ] = None,
    ) -> None:
        """Create a token and print it. It is shown only this once: store it now."""
        expires = timedelta(days=expires_days) if expires_days else None
        with open_store(settings) as store:
            info, secret = Tokens(store).create(
                role.value, name, created_by=_operator(), expires_in=expires
            )
        typer.echo(secret)
        _say(
            f"created API token {info.id} {info.name!r} ({info.role}, prefix {info.prefix}"
            + (f", expires {_when(info.expires_at)}" if info.expires_at else "")
            + "); it is shown only this once"
        )

    @app.command("list")
    def list_(as_json: JsonFlag = False) -> None:
        """All tokens, revoked ones included (their secrets are not kept)."""
        with open_store(settings) as store:
            infos = Tokens(store).list()
        if as_json:
            _json([{**asdict(t), "active": t.active} for t in infos])
            return
        if not infos:
            _say("no API tokens; make one with `shelfwork token create --role viewer`")
            return
        _table(
            ["ID", "PREFIX", "NAME", "ROLE", "CREATED", "LAST USED", "EXPIRES", "STATUS"],
            [
                [
                    str(t.id),
                    t.prefix,
                    t.name,
                    t.role,
                    _when(t.created_at),
                    _when(t.last_used_at),
                    _when(t.expires_at),
                    "active" if t.active else ("revoked" if t.revoked_at else "expired"),
                ]
                for t in infos
            ],
        )

    @app.command("revoke")
    def revoke(
        ref: Annotated[str, typer.Argument(metavar="ID|PREFIX|TOKEN", help="Which token.")],
    ) -> None:
        """Stop a token working at once."""
        with open_store(settings) as store:
            tokens = Tokens(store)
            info = tokens.find(ref)
            was_active = info.revoked_at is None
            tokens.revoke(info.id, by=_operator())
        _say(
            f"revoked API token {info.id} {info.name!r} ({info.prefix})"
            if was_active
            else f"API token {info.id} {info.name!r} was already revoked"
        )

    return app


def user_commands(settings: SettingsSource) -> typer.Typer:
    app = typer.Typer(help="Dashboard users.", no_args_is_help=True)

    @app.command("create")
    def create(
        name: Annotated[str, typer.Argument(help="Login name.")],
        role: Annotated[RoleChoice, typer.Option("--role", help="What the user may do.")],
        password_stdin: PasswordStdin = False,
    ) -> None:
        """Create a user; asks for the password (at least 10 characters) unless --password-stdin."""
        password = _password(password_stdin)
        with open_store(settings) as store:
            info = Users(store).create(name, role.value, password)
        _say(f"created user {info.name!r} ({info.role})")

    @app.command("list")
    def list_(as_json: JsonFlag = False) -> None:
        with open_store(settings) as store:
            infos = Users(store).list()
        if as_json:
            _json([asdict(u) for u in infos])
            return
        if not infos:
            _say("no users; make one with `shelfwork user create NAME --role admin`")
            return
        _table(
            ["NAME", "ROLE", "STATUS", "CREATED", "LAST LOGIN"],
            [
                [
                    u.name,
                    u.role,
                    "disabled" if u.disabled else "active",
                    _when(u.created_at),
                    _when(u.last_login_at),
                ]
                for u in infos
            ],
        )

    @app.command("passwd")
    def passwd(
        name: Annotated[str, typer.Argument(help="Login name.")],
        password_stdin: PasswordStdin = False,
    ) -> None:
        """Set a new password; the user's open sessions end."""
        with open_store(settings) as store:
            users = Users(store)
            users.get(name)  # an unknown name fails before the password is asked for
            users.set_password(name, _password(password_stdin))
        _say(f"password of {name!r} changed; their sessions were ended")

    @app.command("disable")
    def disable(name: Annotated[str, typer.Argument(help="Login name.")]) -> None:
        """Refuse the user's logins and end their sessions."""
        with open_store(settings) as store:
            Users(store).set_disabled(name, True)
        _say(f"user {name!r} disabled")

    @app.command("enable")
    def enable(name: Annotated[str, typer.Argument(help="Login name.")]) -> None:
        with open_store(settings) as store:
            Users(store).set_disabled(name, False)
        _say(f"user {name!r} enabled")

    return app
