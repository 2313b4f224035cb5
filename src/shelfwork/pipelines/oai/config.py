"""OAI-PMH harvesting settings: `[systems.oai]` in shelfwork.toml.

    [systems.oai]
    rules_dir = "/etc/shelfwork/rules"  # rule and transformer sets; vocabulary files
    allow_private_hosts = []            # e.g. ["10.0.0.0/8"]: repositories on a private network
    provider_secret = "env:OAI_TOKEN_SECRET"  # signs the provider's resumption tokens (default:
                                        # made once and kept in the metadata database)

    [systems.oai.solr]                  # only for networks with index_solr
    url = "http://127.0.0.1:8983/solr"
    core = "oai"

    [[systems.oai.networks]]
    acronym = "RI"
    name = "Repositorio Institucional"
    base_url = "https://repository.example/oai/request"
    metadata_prefix = "oai_dc"
    sets = ["col_1", "col_2"]           # harvested in turn; none = the whole repository
    cron = "0 3 * * *"
    timezone = "America/Argentina/Buenos_Aires"
    validation = "driver.toml"          # in rules_dir
    transformation = "driver-transform.toml"
    properties = { index_builtin = true, index_oai = true, detailed_diagnose = false }
    limits = { max_page_bytes = 100_000_000, request_deadline = 600, retries = 5 }  # HarvestLimits

Actions come from the package's `actions.toml` unless `actions_file` names another. A network's
properties must be ones some action declares, so a typo is an error, not a switch that does
nothing.
"""

from __future__ import annotations

import secrets
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

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
from ...connectors.oaipmh import DEADLINE, MAX_BYTES
from ...errors import ConfigError
from ...locks import UNSET, EntityValues
from ...outbound import AddressPolicy
from ...store.database import Store
from .storage import ACRONYM

SYSTEM = "oai"
#: where a generated provider secret is kept (EntityValues)
SECRET_ENTITY = "oai:provider"
#: properties every network has, whether or not an action declares them
#: (accept_empty_harvest: a full harvest that finds nothing, where the one before found records,
#: is taken as it is instead of being held back as suspicious)
BASE_PROPERTIES = ("force_full_harvest", "detailed_diagnose", "accept_empty_harvest")
#: a day in seconds: the most any one harvest limit may wait
DAY = 86_400


class PipelineCall(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pipeline: str
    params: dict[str, Any] = Field(default_factory=dict)


class Action(BaseModel):
    """A named group of pipelines run in order for one network (the reference platform's
    NetworkAction)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Z][A-Z0-9_]{0,63}$")
    description: str = ""
    properties: tuple[str, ...] = ()
    incremental: bool = False
    run_on_schedule: bool = False
    always_run_on_schedule: bool = False
    pipelines: tuple[PipelineCall, ...] = Field(min_length=1)

    def runs_on_schedule(self, properties: dict[str, bool]) -> bool:
        if not self.run_on_schedule:
            return False
        return self.always_run_on_schedule or any(properties.get(p) for p in self.properties)


class HarvestLimits(BaseModel):
    """What one request to a network's repository may take (connectors/oaipmh.py OaiClient):
    a repository that floods, drips or throttles for ever is given up on, not waited for. Each
    limit has an upper bound too (no infinity): a limit without an end is none."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    #: the most bytes one response may inflate to (a gzip bomb stops there)
    max_page_bytes: int = Field(default=MAX_BYTES, ge=1024, le=1_000_000_000)
    #: seconds one request may take in all: connect, headers and body
    request_deadline: float = Field(default=DEADLINE, gt=0, le=DAY)
    #: seconds each connect or read may take
    timeout: float = Field(default=120.0, gt=0, le=3600)
    #: how many times one request is tried again (throttled, failed, unreadable), every attempt
    #: counted
    retries: int = Field(default=5, ge=0, le=100)
    #: the longest one wait may be, whatever a Retry-After asks
    max_wait: float = Field(default=300.0, gt=0, le=DAY)
    #: how long the waits of one request may add up to
    max_total_wait: float = Field(default=900.0, ge=0, le=DAY)


class NetworkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    acronym: str
    name: str = Field(min_length=1, max_length=300)
    base_url: str
    metadata_prefix: str = Field(default="oai_dc", pattern=r"^[A-Za-z0-9_.!~*'()-]+$")
    sets: list[str] = Field(default_factory=list)
    cron: str | None = None
    timezone: str = "UTC"
    method: Literal["GET", "POST"] = "GET"
    properties: dict[str, bool] = Field(default_factory=dict)
    validation: str | None = None
    transformation: str | None = None
    limits: HarvestLimits = Field(default_factory=HarvestLimits)

    @field_validator("acronym")
    @classmethod
    def _acronym(cls, value: str) -> str:
        if not ACRONYM.match(value):
            raise ValueError("use letters, digits, '-' or '_' (up to 64, no leading '-' or '_')")
        return value

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or "?" in value or "#" in value:
            raise ValueError("must be an http(s) URL without a query or fragment")
        return value

    @field_validator("validation", "transformation")
    @classmethod
    def _file_name(cls, value: str | None) -> str | None:
        if value is not None and (
            Path(value).is_absolute() or ".." in Path(value).parts or not value.strip()
        ):
            raise ValueError("must be a file name inside rules_dir (no absolute path or '..')")
        return value


class SolrConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    core: str = Field(default="oai", pattern=r"^[A-Za-z0-9_.-]+$")
    user: str | None = None
    password: SecretStr | None = None
    batch: int = Field(default=500, ge=1, le=10_000)

    _env = field_validator("password", mode="before")(classmethod(lambda cls, v: env_secret(v)))


class OaiConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules_dir: Path = Path("./oai-rules")
    provider_secret: SecretStr | None = None
    provider_page_size: int = Field(default=100, ge=1, le=5000)
    #: where harvesters reach this server (the provider's baseURL is <public_url>/oai/<acronym>);
    #: unset: the URL each request came to
    public_url: str | None = Field(default=None, pattern=r"^https?://[^?#]+$")
    #: the provider's Identify adminEmail(s); OAI-PMH's schema (emailType) wants user@host.domain,
    #: so the default is a placeholder that passes it: set your own
    admin_emails: list[Annotated[str, Field(pattern=r"^\S+@(\S+\.)+\S+$")]] = Field(
        default_factory=lambda: ["oai-admin@example.invalid"], min_length=1
    )
    #: how far back a restarted list (after badResumptionToken) reaches before its `from`
    restart_overlap: float = Field(default=3600.0, ge=0)
    #: first wait (seconds, doubling) before a failed request is tried again; also the least
    #: any wait is, whatever a Retry-After says
    retry_backoff: float = Field(default=3.0, gt=0)
    #: private, loopback or link-local addresses and networks harvesting may reach (a local
    #: setup: "127.0.0.1", "10.0.0.0/8"); by default only public addresses are (outbound.py)
    allow_private_hosts: list[str] = Field(default_factory=list)
    #: restarts allowed per list before the harvest fails
    max_restarts: int = Field(default=3, ge=0)
    #: catalog rows and blobs written per transaction while validating or indexing
    batch: int = Field(default=500, ge=1, le=20_000)
    solr: SolrConfig | None = None
    actions_file: Path | None = None
    networks: list[NetworkConfig] = Field(default_factory=list)
    actions: tuple[Action, ...] = ()

    _env = field_validator("provider_secret", mode="before")(
        classmethod(lambda cls, v: env_secret(v))
    )

    @field_validator("allow_private_hosts")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        AddressPolicy.allowing(value)  # a wrong entry is named
        return value

    def addresses(self) -> AddressPolicy:
        """Where harvesting (and URL checks) may connect: public addresses and the allow-list."""
        return AddressPolicy.allowing(self.allow_private_hosts)

    @model_validator(mode="after")
    def _checked(self) -> OaiConfig:
        if not self.actions:
            self.actions = load_actions(self.actions_file)
        known = set(BASE_PROPERTIES) | {p for a in self.actions for p in a.properties}
        seen: set[str] = set()
        for network in self.networks:
            if network.acronym in seen:
                raise ValueError(f"network {network.acronym!r} is defined twice")
            seen.add(network.acronym)
            unknown = sorted(set(network.properties) - known)
            if unknown:
                raise ValueError(
                    f"network {network.acronym!r}: unknown properties {unknown}; "
                    f"known: {sorted(known)}"
                )
        return self

    def action(self, name: str) -> Action:
        for action in self.actions:
            if action.name == name:
                return action
        raise ConfigError(
            f"no OAI action {name!r}; known: {', '.join(a.name for a in self.actions)}"
        )

    def known_properties(self) -> list[str]:
        found = list(BASE_PROPERTIES)
        for action in self.actions:
            found.extend(p for p in action.properties if p not in found)
        return found

    def token_secret(self, store: Store) -> bytes:
        """The provider's signing key: configured, or made once and kept in the metadata
        database, so every server behind one URL signs and checks tokens alike."""
        if self.provider_secret is not None:
            return self.provider_secret.get_secret_value().encode()
        values = EntityValues(store)
        found = values.get(SECRET_ENTITY, "token-secret", None)
        if found is None:
            values.compare_and_set(SECRET_ENTITY, "token-secret", UNSET, secrets.token_hex(32))
            found = values.get(SECRET_ENTITY, "token-secret")
        return str(found).encode()


def load_actions(path: Path | None = None) -> tuple[Action, ...]:
    if path is None:
        text = (resources.files(__package__) / "actions.toml").read_text(encoding="utf-8")
        where = "the shipped actions.toml"
    else:
        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"actions_file {where} cannot be read: {exc}") from None
    try:
        raw = tomllib.loads(text)
        actions = tuple(Action.model_validate(a) for a in raw.get("actions", []))
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    names = [a.name for a in actions]
    if not actions or len(set(names)) != len(names):
        raise ValueError(f"{where}: needs at least one action and unique names; has {names}")
    return actions


_cache: dict[int, tuple[Settings, OaiConfig]] = {}


def oai_config(settings: Settings) -> OaiConfig:
    """The checked `[systems.oai]` table (an empty table is valid: no networks yet)."""
    cached = _cache.get(id(settings))
    if cached is not None and cached[0] is settings:
        return cached[1]
    raw = settings.systems.get(SYSTEM, {})
    where = f"config file {settings.source}" if settings.source else "settings"
    try:
        config = OaiConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(table)'}: "
            f"{str(err['msg']).removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise ConfigError(f"{where}: [systems.{SYSTEM}]: {problems}") from None
    _cache[id(settings)] = (settings, config)
    return config
