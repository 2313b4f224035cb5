"""[systems.oai] is checked on load with errors that say what to fix, and the provider's
generated token secret is made once per metadata database."""

from __future__ import annotations

from pathlib import Path

import pytest

from shelfwork.config import load_settings
from shelfwork.errors import ConfigError
from shelfwork.pipelines.oai.config import OaiConfig, oai_config
from shelfwork.store.database import Store

NETWORK = {"acronym": "RI", "name": "Repo", "base_url": "https://repo.example/oai"}


def config_error(**table: object) -> str:
    settings = load_settings(env={}, systems={"oai": table})
    with pytest.raises(ConfigError) as caught:
        oai_config(settings)
    return str(caught.value)


@pytest.mark.parametrize(
    ("network", "says"),
    [
        ({"properties": {"index_everything": True}}, "unknown properties ['index_everything']"),
        ({"acronym": "../x"}, "acronym"),
        ({"base_url": "ftp://repo.example/oai"}, "http(s) URL"),
        ({"base_url": "https://repo.example/oai?verb=x"}, "without a query"),
        ({"validation": "../driver.toml"}, "inside rules_dir"),
        ({"validation": "/etc/driver.toml"}, "inside rules_dir"),
        ({"method": "PUT"}, "method"),
        ({"limits": {"retries": -1}}, "limits.retries"),
        ({"limits": {"max_page_bytes": 100}}, "limits.max_page_bytes"),
        ({"limits": {"patience": 5}}, "limits.patience"),
        ({"properties": {"accept_empty_harvest": "sometimes"}}, "accept_empty_harvest"),
    ],
)
def test_bad_networks_are_named(network: dict[str, object], says: str) -> None:
    message = config_error(networks=[{**NETWORK, **network}])
    assert "[systems.oai]" in message and says in message


def test_a_network_defined_twice_is_refused() -> None:
    assert "defined twice" in config_error(networks=[NETWORK, NETWORK])


def test_secret_from_the_environment_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OAI_SECRET_FOR_TEST", "s3cret-value-of-enough-length")
    config = OaiConfig.model_validate({"provider_secret": "env:OAI_SECRET_FOR_TEST"})
    assert "s3cret" not in repr(config)
    assert config.token_secret(None) == b"s3cret-value-of-enough-length"  # type: ignore[arg-type]
    assert "NOT_SET_ANYWHERE" in config_error(provider_secret="env:NOT_SET_ANYWHERE")


def test_generated_secret_is_made_once_per_database(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'secret.db'}")
    store.upgrade()
    first = OaiConfig().token_secret(store)
    again = OaiConfig().token_secret(store)
    assert first == again and len(first) == 64
    other = Store(f"sqlite:///{tmp_path / 'other.db'}")
    other.upgrade()
    assert OaiConfig().token_secret(other) != first


def test_the_outbound_allow_list_is_checked_and_empty_by_default() -> None:
    assert OaiConfig().addresses().refusal("127.0.0.1") == "loopback"
    local = OaiConfig.model_validate({"allow_private_hosts": ["127.0.0.1", "10.0.0.0/8"]})
    assert local.addresses().refusal("10.1.2.3") is None
    assert "host names are not accepted" in config_error(allow_private_hosts=["repo.local"])
    assert "'300.1.1.1'" in config_error(allow_private_hosts=["300.1.1.1"])


def test_retry_backoff_must_be_positive() -> None:
    """C1: the backoff is the least any wait is, so zero would let Retry-After: 0 hammer."""
    assert "retry_backoff" in config_error(retry_backoff=0)


def test_network_limits_default_per_network() -> None:
    config = OaiConfig.model_validate(
        {"networks": [NETWORK, {**NETWORK, "acronym": "B", "limits": {"retries": 1}}]}
    )
    first, second = config.networks
    assert first.limits.max_page_bytes == 100_000_000 and first.limits.request_deadline == 600
    assert second.limits.retries == 1 and second.limits.max_total_wait == 900
