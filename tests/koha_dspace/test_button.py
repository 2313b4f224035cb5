"""`shelfwork koha-button`: the IntranetUserJS snippet, filled in safely."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shelfwork.errors import ConfigError
from shelfwork.pipelines.koha_dspace.button import button_script, button_template

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shelfwork.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})},
        timeout=60,
    )


def test_the_command_fills_in_url_and_token(tmp_path: Path) -> None:
    token = tmp_path / "koha.token"
    token.write_text("swk_0123456789ab_secretsecretsecretsecret\n")
    run = cli("koha-button", "--url", "https://shelfwork.example/", "--token-file", str(token))
    assert run.returncode == 0, run.stderr
    assert 'var SHELFWORK_URL = "https://shelfwork.example";' in run.stdout
    assert 'var SHELFWORK_TOKEN = "swk_0123456789ab_secretsecretsecretsecret";' in run.stdout
    assert "__SHELFWORK" not in run.stdout
    assert run.stdout.rstrip().endswith("})();")
    script = tmp_path / "button.js"
    script.write_text(run.stdout)
    checked = subprocess.run(["node", "--check", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr  # still valid JavaScript once filled in


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
