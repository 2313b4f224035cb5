"""`shelfwork koha-button`: the IntranetUserJS snippet, filled in safely."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shelfwork.api.auth import Tokens
from shelfwork.errors import ConfigError
from shelfwork.pipelines.koha_dspace.button import button_script, button_template
from shelfwork.store import Store
from tests.support.cli import Cli, in_process

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shelfwork.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})},
        timeout=60,
    )


@pytest.fixture
def here(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    """`shelfwork ARGS` through `main` in this process (faster than a new interpreter)."""
    with in_process(capsys, monkeypatch) as run:
        yield run


@pytest.fixture
def database(sqlite_url: str) -> Iterator[tuple[str, Tokens]]:
    store = Store(sqlite_url)
    store.upgrade()
    yield sqlite_url, Tokens(store)
    store.dispose()


def test_the_command_fills_in_url_and_token(tmp_path: Path, database: tuple[str, Tokens]) -> None:
    url, tokens = database
    _, secret = tokens.create("integrator", "koha-staff")
    token = tmp_path / "koha.token"
    token.write_text(secret + "\n")
    run = cli(
        "--database-url",
        url,
        "koha-button",
        "--url",
        "https://shelfwork.example/",
        "--token-file",
        str(token),
    )
    assert run.returncode == 0, run.stderr
    assert 'var SHELFWORK_URL = "https://shelfwork.example";' in run.stdout
    assert f'var SHELFWORK_TOKEN = "{secret}";' in run.stdout
    assert "__SHELFWORK" not in run.stdout
    assert run.stdout.rstrip().endswith("})();")
    script = tmp_path / "button.js"
    script.write_text(run.stdout)
    checked = subprocess.run(["node", "--check", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr  # still valid JavaScript once filled in


@pytest.mark.parametrize("role", ["admin", "operator", "viewer"])
def test_only_an_integrator_token_goes_into_koha_pages(
    database: tuple[str, Tokens], role: str, here: Cli
) -> None:
    """Every staff browser can read the script: a token with more power than starting an
    integration and reading its status must never be put there."""
    url, tokens = database
    _, secret = tokens.create(role, f"{role}-token")
    run = here(
        "--database-url",
        url,
        "koha-button",
        "--url",
        "https://shelfwork.example",
        env={"SHELFWORK_BUTTON_TOKEN": secret},
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert secret not in run.stdout and secret not in run.stderr
    assert f"has the {role} role" in run.stderr and "only an integrator token" in run.stderr
    assert "shelfwork token create --role integrator" in run.stderr
    assert "Traceback" not in run.stderr


def test_an_unknown_or_revoked_token_is_refused(database: tuple[str, Tokens], here: Cli) -> None:
    url, tokens = database
    info, secret = tokens.create("integrator", "old-button")
    tokens.revoke(info.id)
    for token in (secret, "swk_0123456789ab_secretsecretsecretsecret"):
        run = here(
            "--database-url",
            url,
            "koha-button",
            "--url",
            "https://x.example",
            env={"SHELFWORK_BUTTON_TOKEN": token},
        )
        assert run.returncode == 2, run.stdout + run.stderr
        assert "unknown, revoked or expired" in run.stderr and token not in run.stderr


def test_no_token_is_a_clear_error() -> None:
    run = cli("koha-button", "--url", "https://x.example", env={"SHELFWORK_BUTTON_TOKEN": ""})
    assert run.returncode == 2
    assert "shelfwork token create --role integrator" in run.stderr
    assert "Traceback" not in run.stderr


def test_values_cannot_break_out_of_the_script() -> None:
    script = button_script("https://x.example/</script><script>alert(1)//", "tok")
    assert "</script>" not in script.split("var SHELFWORK_URL", 1)[1].split("\n", 1)[0]
    with pytest.raises(ConfigError):
        button_script("javascript:alert(1)", "tok")
    with pytest.raises(ConfigError):
        button_script("https://x.example", "two words")
    assert "__SHELFWORK_URL__" in button_template()
