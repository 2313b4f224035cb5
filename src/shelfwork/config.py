"""Settings: defaults, then a TOML file, then SHELFWORK_* environment variables.

A broken file is reported with its path and line so a person can fix it without reading a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

DEFAULT_CONFIG = "shelfwork.toml"


def env_secret(value: Any) -> Any:
    """Resolve "env:NAME" to the variable's value (a secret kept out of config files); a missing
    variable is an error that names it."""
    if isinstance(value, str) and value.startswith("env:"):
        name = value[4:]
        if name not in os.environ:
            raise ValueError(f"environment variable {name} (named by {value!r}) is not set")
        return os.environ[name]
    return value


class ScheduleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    pipeline: str
    cron: str
    timezone: str = "UTC"
    params: dict[str, Any] = Field(default_factory=dict)
    context: str | None = None
    lane: str | None = None
    priority: int = 0
    misfire: Literal["skip", "run_once"] = "run_once"
    when_busy: Literal["queue", "skip"] = "skip"
    paused: bool = False


class StatePolling(BaseModel):
    """How one tracker state is polled under one profile."""

    model_config = ConfigDict(extra="forbid")

    interval: float | None = Field(default=None, ge=0)  # seconds; None = not polled
    factor: float = Field(default=1.0, ge=1.0)
    max_interval: float | None = Field(default=None, ge=0)
    too_long_after: float | None = Field(default=None, gt=0)


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    database_url: str = "sqlite:///./shelfwork.db"
    executor: Literal["local", "celery"] = "local"
    broker_url: str = "redis://127.0.0.1:6379/0"
    celery_queue: str = "shelfwork"
    max_running: int = Field(default=4, ge=1)
    max_queue: int = Field(default=32, ge=0)
    local_threads: int | None = Field(default=None, ge=1)
    lease_ttl: float = Field(default=30.0, gt=0)
    heartbeat: float | None = Field(default=None, gt=0)
    dispatch_ttl: float = Field(default=300.0, gt=0)
    poll_interval: float = Field(default=0.5, gt=0)
    tracker_profile: str = "live"
    tracker_concurrency: int = Field(default=8, ge=1)
    tracker_batch: int = Field(default=100, ge=1)
    pipeline_modules: list[str] = Field(default_factory=list)
    schedules: list[ScheduleConfig] = Field(default_factory=list)
    # profile -> tracker kind -> state -> polling rule
    tracker_profiles: dict[str, dict[str, dict[str, StatePolling]]] = Field(default_factory=dict)
    # HTTP API (shelfwork.api): browser origins allowed to call it (e.g. the Koha staff client),
    # and dashboard logins: session lifetime, failed logins allowed per window (per user name and
    # per client address), and the cookie's Secure flag (None: set when the request came by https).
    cors_origins: list[str] = Field(default_factory=list)
    session_ttl: float = Field(default=8 * 3600, gt=0)
    login_max_failures: int = Field(default=5, ge=1)
    login_max_failures_per_ip: int = Field(default=20, ge=1)
    login_window: float = Field(default=900, gt=0)
    # Past login_max_failures for one (user, address), each further try waits login_backoff
    # seconds, doubled per failure, at most login_backoff_max (see api/auth.py LoginLimiter).
    login_backoff: float = Field(default=1.0, gt=0)
    login_backoff_max: float = Field(default=300.0, gt=0)
    cookie_secure: bool | None = None
    # Requests: the largest body accepted from a caller who may send one (bytes; routes open to
    # anyone accept less, see api/bodies.py), the seconds a client has to send a request's
    # headers and then its whole body, the seconds it may leave an answer unread, and the
    # reverse proxies (addresses or networks) whose X-Forwarded-For and X-Forwarded-Proto are
    # believed; none by default: the peer's address is the client's.
    max_body: int = Field(default=1024 * 1024, ge=1024)
    header_timeout: float = Field(default=10.0, gt=0)
    body_timeout: float = Field(default=30.0, gt=0)
    send_timeout: float = Field(default=60.0, gt=0)
    trusted_proxies: list[str] = Field(default_factory=list)
    # Per-system settings, one table each (`[systems.koha-dspace]`), checked by the system's own
    # pipeline package when it first needs them, so an engine without that system never cares.
    systems: dict[str, dict[str, Any]] = Field(default_factory=dict)
    source: str | None = None  # the file these settings came from, for messages

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        """Accept a comma-separated string (environment) and check each origin's shape."""
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            for origin in value:
                if not isinstance(origin, str) or not _ORIGIN.match(origin):
                    raise ValueError(
                        f"CORS origin {origin!r} must be scheme://host[:port] with no path or "
                        "trailing slash, e.g. 'https://staff.library.example'; '*' is not allowed"
                    )
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: Any) -> Any:
        """Accept a comma-separated string (environment); each entry an address or network."""
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            for proxy in value:
                try:
                    ipaddress.ip_network(str(proxy), strict=False)
                except ValueError:
                    raise ValueError(
                        f"trusted proxy {proxy!r} must be an IP address or network such as "
                        "'127.0.0.1' or '10.0.0.0/24'"
                    ) from None
        return value

    @property
    def heartbeat_interval(self) -> float:
        return self.heartbeat or max(self.lease_ttl / 3, 0.05)

    @property
    def threads(self) -> int:
        return self.local_threads or self.max_running


_ORIGIN = re.compile(
    r"^https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$"
)

_ENV = {
    "SHELFWORK_DATABASE_URL": "database_url",
    "SHELFWORK_EXECUTOR": "executor",
    "SHELFWORK_BROKER_URL": "broker_url",
    "SHELFWORK_CELERY_QUEUE": "celery_queue",
    "SHELFWORK_MAX_RUNNING": "max_running",
    "SHELFWORK_MAX_QUEUE": "max_queue",
    "SHELFWORK_LEASE_TTL": "lease_ttl",
    "SHELFWORK_POLL_INTERVAL": "poll_interval",
    "SHELFWORK_TRACKER_PROFILE": "tracker_profile",
    "SHELFWORK_CORS_ORIGINS": "cors_origins",
    "SHELFWORK_TRUSTED_PROXIES": "trusted_proxies",
}


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build settings. `path` or $SHELFWORK_CONFIG names the TOML file; ./shelfwork.toml if present."""
    env = dict(os.environ if env is None else env)
    data: dict[str, Any] = {}
    text = ""
    chosen = path or env.get("SHELFWORK_CONFIG")
    file: Path | None = Path(chosen) if chosen else None
    if file is None and Path(DEFAULT_CONFIG).is_file():
        file = Path(DEFAULT_CONFIG)
    if file is not None:
        if not file.is_file():
            raise ConfigError(f"config file {file}: not found")
        text = file.read_text(encoding="utf-8")
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file}: {exc}") from None
        data = _from_toml(raw, file)
        data["source"] = str(file)
    for var, key in _ENV.items():
        if env.get(var):
            data[key] = env[var]
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, file, text)) from None


def _from_toml(raw: dict[str, Any], file: Path) -> dict[str, Any]:
    """Flatten the documented TOML layout into Settings fields."""
    data: dict[str, Any] = {}
    sections = {
        "database": {"url": "database_url"},
        "executor": {
            "kind": "executor",
            "broker_url": "broker_url",
            "threads": "local_threads",
            "dispatch_ttl": "dispatch_ttl",
            "queue": "celery_queue",
        },
        "admission": {"max_running": "max_running", "max_queue": "max_queue"},
        "leases": {"ttl": "lease_ttl", "heartbeat": "heartbeat"},
        "scheduler": {"poll_interval": "poll_interval"},
        "pipelines": {"modules": "pipeline_modules"},
        "api": {
            "cors_origins": "cors_origins",
            "session_ttl": "session_ttl",
            "login_max_failures": "login_max_failures",
            "login_max_failures_per_ip": "login_max_failures_per_ip",
            "login_window": "login_window",
            "login_backoff": "login_backoff",
            "login_backoff_max": "login_backoff_max",
            "cookie_secure": "cookie_secure",
            "max_body": "max_body",
            "header_timeout": "header_timeout",
            "body_timeout": "body_timeout",
            "send_timeout": "send_timeout",
            "trusted_proxies": "trusted_proxies",
        },
    }
    for section, body in raw.items():
        if section in (*sections, "schedules", "trackers", "systems") and not isinstance(
            body, dict
        ):
            raise ConfigError(f"config file {file}: [{section}] must be a table")
        if section in sections:
            for key, value in body.items():
                if key not in sections[section]:
                    allowed = ", ".join(sections[section])
                    raise ConfigError(
                        f"config file {file}: line {_line_of_key(file, section, key)}: "
                        f"unknown key {key!r} in [{section}] (allowed: {allowed})"
                    )
                data[sections[section][key]] = value
        elif section == "schedules":
            for name, spec in body.items():
                if not isinstance(spec, dict):
                    raise ConfigError(
                        f"config file {file}: line {_line_of_key(file, 'schedules', name)}: "
                        f"schedules.{name} must be a table ([schedules.{name}])"
                    )
            data["schedules"] = [{"name": name, **spec} for name, spec in body.items()]
        elif section == "systems":
            for name, spec in body.items():
                if not isinstance(spec, dict):
                    raise ConfigError(
                        f"config file {file}: line {_line_of_key(file, 'systems', name)}: "
                        f"systems.{name} must be a table ([systems.{name}])"
                    )
            data["systems"] = body
        elif section == "trackers":
            body = dict(body)
            if "profile" in body:
                data["tracker_profile"] = body.pop("profile")
            for key in ("concurrency", "batch"):
                if key in body:
                    data[f"tracker_{key}"] = body.pop(key)
            data["tracker_profiles"] = body.pop("profiles", {})
            if body:
                raise ConfigError(
                    f"config file {file}: unknown key(s) in [trackers]: {', '.join(body)}"
                )
        else:
            known = ", ".join([*sections, "schedules", "trackers", "systems"])
            raise ConfigError(
                f"config file {file}: line {_line_of_key(file, section, None)}: "
                f"unknown section [{section}] (known: {known})"
            )
    return data


def _line_of_key(file: Path, section: str, key: str | None) -> int | str:
    text = file.read_text(encoding="utf-8")
    return _find_line(text, section, key)


def _find_line(text: str, section: str | None, key: str | None) -> int | str:
    in_section = section is None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.match(r"^\[+\s*([^\]]+?)\s*\]+", stripped)
        if header:
            name = header.group(1)
            in_section = section is None or name == section or name.startswith(section + ".")
            if in_section and key is None:
                return number
            continue
        if in_section and key is not None and re.match(rf"^{re.escape(key)}\s*=", stripped):
            return number
    return "?"


def _explain(exc: ValidationError, file: Path | None, text: str) -> str:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        where = ""
        if file is not None:
            key = str(err["loc"][-1]) if err["loc"] else None
            line = _find_line(text, None, key) if key else "?"
            where = f"line {line}: " if line != "?" else ""
        problems.append(f"{where}{loc}: {err['msg']}")
    origin = f"config file {file}" if file is not None else "settings"
    return f"{origin}: " + "; ".join(problems)
