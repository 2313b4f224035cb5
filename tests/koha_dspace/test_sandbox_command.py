"""`shelfwork sandbox` as a user runs it: start it, paste the table it prints into a config file,
and integrate one of the records it catalogued with `shelfwork submit --wait`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHELFWORK = [sys.executable, "-m", "shelfwork.cli"]


def read_table(proc: subprocess.Popen[str], timeout: float = 60.0) -> str:
    """Lines of stdout up to the end of the printed [systems.koha-dspace] table."""
    assert proc.stdout is not None
    stdout = proc.stdout
    lines: list[str] = []
    done = threading.Event()

    def read() -> None:
        for line in stdout:
            lines.append(line)
            if line.startswith("deposit ="):
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    if not done.wait(timeout) or not lines or not lines[-1].startswith("deposit ="):
        raise AssertionError(f"no table from `shelfwork sandbox`: {''.join(lines)!r}")
    return "".join(lines)


def test_the_printed_table_integrates_a_catalogued_record(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    files = tmp_path / "files"
    proc = subprocess.Popen(
        [*SHELFWORK, "sandbox", "--koha-port", "0", "--dspace-port", "0", "--dir", str(files)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        table = read_table(proc)
        assert tomllib.loads(table)["systems"]["koha-dspace"]["inbox"] == str(files / "inbox")
        config = tmp_path / "shelfwork.toml"
        config.write_text(
            f'[database]\nurl = "sqlite:///{tmp_path / "s.db"}"\n\n'
            '[pipelines]\nmodules = ["shelfwork.pipelines.koha_dspace"]\n\n' + table,
            encoding="utf-8",
        )
        run = subprocess.run(
            [
                *SHELFWORK,
                "--config",
                str(config),
                "submit",
                "koha-dspace",
                "-p",
                "biblionumber=1001",
                "--wait",
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert "succeeded" in run.stderr + run.stdout
        assert [p.name for p in (files / "processed").iterdir()] == ["reading-room_v01.pdf"]
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=20)
    assert proc.returncode in (0, -signal.SIGINT, 130)
