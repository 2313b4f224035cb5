"""`shelfwork demo` (the README's first command) runs to the end with every record as planned."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from shelfwork.pipelines.koha_dspace.demo import run_demo


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    printed = io.StringIO()
    code = run_demo(tmp_path / "demo", keep=False, console=Console(file=printed, width=160))
    text = printed.getvalue()
    assert code == 0, text
    assert "Every record ended as expected." in text
    assert (tmp_path / "demo" / "shelfwork.db").exists()
