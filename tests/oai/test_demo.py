"""`shelfwork oai-demo` runs to the end and says every step went as planned."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from shelfwork.pipelines.oai.demo import run_oai_demo


def test_oai_demo_runs_end_to_end(tmp_path: Path) -> None:
    printed = io.StringIO()
    code = run_oai_demo(tmp_path / "demo", keep=False, console=Console(file=printed, width=120))
    text = printed.getvalue()
    assert code == 0, text
    assert "Every step went as planned." in text
    assert "snapshot 2 (incremental, valid): 2 harvested, 1 deleted" in text
    assert (tmp_path / "demo" / "rules" / "driver.toml").exists()
