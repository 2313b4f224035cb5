"""The integrator's settings: the README's example is valid, and every mistake is named."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from shelfwork.config import Settings, load_settings
from shelfwork.engine import Engine
from shelfwork.errors import ConfigError
from shelfwork.pipelines.koha_dspace.config import SYSTEM, integrator_config

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_example_is_valid_and_keeps_secrets_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KOHA_PASSWORD", "koha-secret-1")
    monkeypatch.setenv("DSPACE_PASSWORD", "dspace-secret-2")
    example = README.read_text(encoding="utf-8").split("## Koha → DSpace integrator", 1)[1]
    text = re.search(r"```toml\n(.*?)```", example, re.S).group(1)  # type: ignore[union-attr]
    path = tmp_path / "shelfwork.toml"
    path.write_text(text, encoding="utf-8")
    settings = load_settings(path, env={})
    config = integrator_config(settings)
    assert config.koha.password is not None
    assert config.koha.password.get_secret_value() == "koha-secret-1"
    assert config.dspace.password.get_secret_value() == "dspace-secret-2"
    for shown in (repr(config), str(config)):
        assert "koha-secret-1" not in shown and "dspace-secret-2" not in shown
    assert settings.cors_origins == ["https://staff.koha.example"]


def settings_with(table: dict[str, Any] | None) -> Settings:
    return Settings(systems={} if table is None else {SYSTEM: table})


def good() -> dict[str, Any]:
    return {
        "inbox": "/srv/in",
        "processed": "/srv/done",
        "error": "/srv/error",
        "koha": {"url": "https://k", "opac_url": "https://o", "user": "u", "password": "p"},
        "dspace": {"url": "https://d/server/api", "user": "a", "password": "b", "collection": "c"},
    }


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda t: None, "needs a [systems.koha-dspace] table"),
        (lambda t: t.pop("inbox"), "inbox: Field required"),
        (lambda t: t["koha"].update(url="koha.example"), "not an http(s) URL"),
        (lambda t: t["koha"].pop("password"), "needs user and password"),
        (lambda t: t["koha"].update(auth="oauth2"), "needs client_id and client_secret"),
        (lambda t: t["dspace"].update(password="env:NO_SUCH_VARIABLE_X"), "NO_SUCH_VARIABLE_X"),
        (lambda t: t["dspace"].update(deposit="ftp"), "dspace.deposit"),
        (lambda t: t.update(surprise=1), "surprise"),
        (lambda t: t.update(crosswalk={"245": {"field": 7}}), "crosswalk"),
    ],
)
def test_mistakes_are_named(change: Any, expected: str) -> None:
    table = good()
    table = None if change(table) is None and expected.startswith("needs a") else table
    with pytest.raises(ConfigError) as raised:
        integrator_config(settings_with(table))
    assert expected in str(raised.value)
    assert "'p'" not in str(raised.value)


def test_an_engine_with_a_broken_table_refuses_to_start(tmp_path: Path) -> None:
    table = good()
    table["koha"]["url"] = "not a url"
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'x.db'}",
        pipeline_modules=["shelfwork.pipelines.koha_dspace"],
        systems={SYSTEM: table},
    )
    with pytest.raises(ConfigError, match="not an http"):
        Engine(settings)


@pytest.mark.parametrize(
    ("processed", "error", "expected"),
    [("/srv/in", "/srv/error", "the same as"), ("/srv/in/done", "/srv/error", "inside")],
)
def test_folders_must_be_separate(processed: str, error: str, expected: str) -> None:
    table = good()
    table |= {"processed": processed, "error": error}
    with pytest.raises(ConfigError, match=expected):
        integrator_config(settings_with(table))


def test_folders_inside_the_inbox_through_a_symlink_are_not_separate(tmp_path: Path) -> None:
    """Processed reached through a symlink into the inbox is still inside it: 956$u could name
    another record's scan there."""
    (tmp_path / "in" / "done").mkdir(parents=True)
    (tmp_path / "processed").symlink_to(tmp_path / "in" / "done")
    table = good() | {
        "inbox": str(tmp_path / "in"),
        "processed": str(tmp_path / "processed"),
        "error": str(tmp_path / "error"),
    }
    with pytest.raises(ConfigError, match="inside"):
        integrator_config(settings_with(table))
