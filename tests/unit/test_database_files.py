"""The SQLite database holds the OAI provider's token secret and dashboard sessions: its file, the
WAL and shared-memory files beside it, and a folder shelfwork makes for it are the owner's only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sqlalchemy import text

from shelfwork.store import Store


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_sqlite_database_and_its_folder_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask: files 0644, folders 0755 unless we say otherwise
    try:
        db = tmp_path / "made" / "by" / "shelfwork" / "shelfwork.db"
        store = Store(f"sqlite:///{db}")
        store.upgrade()
        with store.write() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS probe (x INTEGER)"))
            conn.execute(text("INSERT INTO probe VALUES (1)"))
        wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")
        assert wal.exists() and shm.exists()  # open connections keep them
        assert mode(db) == 0o600
        assert mode(wal) == 0o600 and mode(shm) == 0o600
        assert mode(db.parent) == 0o700  # the folder shelfwork made
        store.dispose()
    finally:
        os.umask(old)


def test_an_existing_folder_keeps_its_mode(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    store = Store(f"sqlite:///{folder / 'shelfwork.db'}")
    store.upgrade()
    assert mode(folder) == 0o755  # not ours to change
    assert mode(folder / "shelfwork.db") == 0o600
    store.dispose()
