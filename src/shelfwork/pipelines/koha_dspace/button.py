"""The Koha staff button (`intranet-button.js`), filled in for one shelfwork server."""

from __future__ import annotations

import json
from importlib import resources

from ...errors import ConfigError

URL_MARK = '"__SHELFWORK_URL__"'
TOKEN_MARK = '"__SHELFWORK_TOKEN__"'


def button_template() -> str:
    return (
        resources.files("shelfwork.pipelines.koha_dspace")
        .joinpath("intranet-button.js")
        .read_text(encoding="utf-8")
    )


def check_button_token(role: str | None) -> None:
    """Refuse a token that must not be embedded in Koha's pages: every staff browser can read
    the script, so only the integrator role (start an integration, read its status) may go
    there. `role` is the token's role, None when the database does not know the token."""
    make = "make one with `shelfwork token create --role integrator --name koha-staff`"
    if role is None:
        raise ConfigError(f"the token is unknown, revoked or expired in this database; {make}")
    if role != "integrator":
        raise ConfigError(
            f"the token has the {role} role, and only an integrator token may be put in Koha's "
            f"pages (every staff browser can read it); {make}"
        )


def button_script(url: str, token: str) -> str:
    """The snippet for Koha's IntranetUserJS, with the server URL and token as JS strings."""
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"shelfwork URL {url!r} must start with http:// or https://")
    if not token or any(c.isspace() for c in token):
        raise ConfigError("the token must be one word (shelfwork token create --role integrator)")

    # json.dumps gives a valid JS string literal; "</" is escaped so the value cannot end the
    # <script> element Koha wraps IntranetUserJS in.
    def literal(value: str) -> str:
        return json.dumps(value).replace("</", "<\\/")

    return (
        button_template()
        .replace(URL_MARK, literal(url.rstrip("/")), 1)
        .replace(TOKEN_MARK, literal(token), 1)
    )
