"""The integrator's settings: `[systems.koha-dspace]` in shelfwork.toml.

    [systems.koha-dspace]
    inbox = "/srv/scans/inbox"          # 956$u is a path relative to this folder
    processed = "/srv/scans/processed"  # files are moved here first, as <stem>_vNN.pdf
    error = "/srv/scans/error"          # and from there here, with a JSON sidecar, on failure

    [systems.koha-dspace.koha]
    url = "https://staff.koha.example"  # REST is served under <url>/api/v1
    opac_url = "https://koha.example"   # for the cover URL written to 956$c
    auth = "basic"                      # or "oauth2" (client_id / client_secret)
    user = "integrator"
    password = "env:KOHA_PASSWORD"      # "env:NAME" reads the environment; never logged

    [systems.koha-dspace.dspace]
    url = "https://repository.example/server/api"
    user = "integrator@example.org"
    password = "env:DSPACE_PASSWORD"
    collection = "5ad50035-ca22-4a4d-84ca-d5132f34f588"
    deposit = "submission"              # or "admin" (item -> ORIGINAL bundle -> bitstream)

    [systems.koha-dspace.crosswalk]     # overrides of the Library of Congress table
    "650" = false

Secrets may be given inline (for the sandbox) or as "env:NAME"; they are kept as SecretStr, so
they print as '**********' in logs, reprs and errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from ...config import Settings, env_secret
from ...errors import ConfigError
from .crosswalk import CrosswalkError, load_rules

SYSTEM = "koha-dspace"


class KohaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="Koha staff/REST root, e.g. https://staff.koha.example")
    opac_url: str = Field(description="OPAC root, for cover URLs")
    staff_url: str | None = Field(default=None, description="staff interface root; default: url")
    auth: Literal["basic", "oauth2"] = "basic"
    user: str | None = None
    password: SecretStr | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    staff_user: str | None = Field(default=None, description="staff login; default: user")
    staff_password: SecretStr | None = None
    timeout: float = Field(default=30.0, gt=0)

    _secrets = field_validator("password", "client_secret", "staff_password", mode="before")(
        lambda cls, v: env_secret(v)
    )

    @field_validator("url", "opac_url", "staff_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return _http_url(value)

    @model_validator(mode="after")
    def _credentials(self) -> KohaConfig:
        if self.auth == "basic" and not (self.user and self.password):
            raise ValueError("auth = 'basic' needs user and password")
        if self.auth == "oauth2" and not (self.client_id and self.client_secret):
            raise ValueError("auth = 'oauth2' needs client_id and client_secret")
        return self

    @property
    def staff_root(self) -> str:
        return self.staff_url or self.url

    @property
    def staff_login(self) -> tuple[str, str] | None:
        user = self.staff_user or self.user
        password = self.staff_password or self.password
        if not user or password is None:
            return None
        return user, password.get_secret_value()


class DSpaceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="REST root ending in /server/api")
    user: str
    password: SecretStr
    collection: str = Field(description="UUID of the owning collection")
    deposit: Literal["submission", "admin"] = "submission"
    timeout: float = Field(default=60.0, gt=0)

    _secrets = field_validator("password", mode="before")(lambda cls, v: env_secret(v))

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value) or value


class IntegratorConfig(BaseModel):
    """The whole `[systems.koha-dspace]` table."""

    model_config = ConfigDict(extra="forbid")

    inbox: Path
    processed: Path
    error: Path
    koha: KohaConfig
    dspace: DSpaceConfig
    identifier_field: str = "dc.identifier.other"
    identifier_prefix: str = "koha:"
    cover: bool = Field(default=True, description="render and upload a cover")
    cover_width: int = Field(default=600, ge=50, le=4000)
    pdf_tries: int = Field(default=3, ge=1, le=20)
    pdf_retry_delay: float = Field(default=1.0, ge=0)
    crosswalk: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _separate_folders(self) -> IntegratorConfig:
        """Three different folders, none inside another: with Processed inside the inbox, a
        956$u could name another record's processed scan. Compared as written and with
        symlinks resolved (a symlink to a folder inside the inbox is inside it)."""
        configured = {"inbox": self.inbox, "processed": self.processed, "error": self.error}
        for view in (_as_written, _resolved):
            folders = {name: view(path) for name, path in configured.items()}
            for name, path in folders.items():
                for other, other_path in folders.items():
                    if name != other and (path == other_path or other_path in path.parents):
                        raise ValueError(
                            f"folders must be separate: {name} {path} is "
                            f"{'the same as' if path == other_path else 'inside'} {other} "
                            f"{other_path}"
                        )
        return self


def _as_written(path: Path) -> Path:
    return path.expanduser().absolute()


def _resolved(path: Path) -> Path:
    try:
        return path.expanduser().resolve()
    except (OSError, RuntimeError):  # a symlink loop: the path as written is all there is
        return _as_written(path)


def _http_url(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value.rstrip("/")


_cache: dict[int, tuple[Settings, IntegratorConfig]] = {}


def integrator_config(settings: Settings) -> IntegratorConfig:
    """The checked `[systems.koha-dspace]` table of these settings (cached per Settings object)."""
    cached = _cache.get(id(settings))
    if cached is not None and cached[0] is settings:
        return cached[1]
    raw = settings.systems.get(SYSTEM)
    where = f"config file {settings.source}" if settings.source else "settings"
    if raw is None:
        raise ConfigError(
            f"{where}: the koha-dspace pipeline needs a [systems.{SYSTEM}] table "
            "(inbox, processed, error, [..koha], [..dspace]); see shelfwork.example.toml"
        )
    try:
        config = IntegratorConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(table)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{where}: [systems.{SYSTEM}]: {problems}") from None
    try:
        load_rules(config.crosswalk)
    except CrosswalkError as exc:
        raise ConfigError(f"{where}: [systems.{SYSTEM}.crosswalk]: {exc}") from None
    _cache[id(settings)] = (settings, config)
    return config
