"""956$u inside the inbox only, rename-first claims with versions, the Error folder."""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from shelfwork.errors import ConfigError
from shelfwork.pipelines.koha_dspace import files
from shelfwork.pipelines.koha_dspace.files import (
    FileRejected,
    Folders,
    MissingFile,
    PathOutsideInbox,
    claim_into,
    md5_of,
    move_to_error,
    resolve_in_inbox,
)


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    (folder / "2024" / "May").mkdir(parents=True)
    (folder / "scan.pdf").write_bytes(b"%PDF-1.4 scan")
    (folder / "2024" / "May" / "книга 1.pdf").write_bytes(b"%PDF-1.4 book")
    return folder


# --- Folders -----------------------------------------------------------------------------------


def test_folders_from_a_table_or_the_checked_config(tmp_path: Path) -> None:
    table = {"inbox": tmp_path / "in", "processed": str(tmp_path / "done"), "error": tmp_path / "e"}
    folders = Folders.from_config(table)
    assert folders == Folders(tmp_path / "in", tmp_path / "done", tmp_path / "e")
    assert Folders.from_config(SimpleNamespace(**table)) == folders
    assert folders.ensure() is folders
    assert all(p.is_dir() for p in (folders.inbox, folders.processed, folders.error))


def test_folders_must_be_set_and_differ(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="error not set"):
        Folders.from_config({"inbox": tmp_path, "processed": tmp_path / "p"})
    with pytest.raises(ConfigError, match="must differ"):
        Folders.from_config({"inbox": tmp_path, "processed": tmp_path, "error": tmp_path / "e"})


# --- resolve_in_inbox --------------------------------------------------------------------------


def test_resolves_files_and_subfolders(inbox: Path) -> None:
    assert resolve_in_inbox(inbox, "scan.pdf") == (inbox / "scan.pdf").resolve()
    book = (inbox / "2024" / "May" / "книга 1.pdf").resolve()
    assert resolve_in_inbox(inbox, "2024/May/книга 1.pdf") == book
    assert resolve_in_inbox(inbox, "./2024//May/./книга 1.pdf") == book
    assert resolve_in_inbox(inbox, "2024\\May\\книга 1.pdf") == book  # typed on Windows
    assert resolve_in_inbox(inbox, "  scan.pdf  ") == (inbox / "scan.pdf").resolve()


@pytest.mark.parametrize(
    ("reference", "reason"),
    [
        ("../x.pdf", "contains '..'"),
        ("a/../../x", "contains '..'"),
        ("2024/../scan.pdf", "contains '..'"),  # even when it would land inside
        ("..\\..\\x.pdf", "contains '..'"),
        ("/etc/passwd", "an absolute path"),
        ("C:\\scans\\x.pdf", "an absolute path"),
        ("c:x.pdf", "an absolute path"),
        ("\\\\server\\share\\x.pdf", "an absolute path"),
        ("\\x.pdf", "an absolute path"),
        ("file:///etc/passwd", "a URL"),
        ("https://example.org/x.pdf", "a URL"),
        ("smb://server/x.pdf", "a URL"),
        ("scan.pdf\x00.txt", "NUL"),
    ],
)
def test_references_leaving_the_inbox_are_refused(inbox: Path, reference: str, reason: str) -> None:
    with pytest.raises(PathOutsideInbox) as caught:
        resolve_in_inbox(inbox, reference)
    assert reason in caught.value.reason
    assert caught.value.path == reference


def test_empty_reference_and_the_inbox_itself(inbox: Path) -> None:
    for reference in ("", "   ", ".", "./"):
        with pytest.raises(FileRejected) as caught:
            resolve_in_inbox(inbox, reference)
        assert not isinstance(caught.value, MissingFile)


def test_symlink_out_of_the_inbox_is_refused(inbox: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.pdf").write_bytes(b"%PDF secret")
    (inbox / "link.pdf").symlink_to(outside / "secret.pdf")
    (inbox / "dir").symlink_to(outside)
    (inbox / "up.pdf").symlink_to(Path("..") / "outside" / "secret.pdf")  # relative symlink
    for reference in ("link.pdf", "dir/secret.pdf", "up.pdf"):
        with pytest.raises(PathOutsideInbox, match="symlink leads outside"):
            resolve_in_inbox(inbox, reference)


def test_symlink_inside_the_inbox_is_allowed(inbox: Path) -> None:
    (inbox / "alias.pdf").symlink_to(inbox / "2024" / "May" / "книга 1.pdf")
    (inbox / "latest").symlink_to(Path("2024") / "May")
    real = (inbox / "2024" / "May" / "книга 1.pdf").resolve()
    assert resolve_in_inbox(inbox, "alias.pdf") == real
    assert resolve_in_inbox(inbox, "latest/книга 1.pdf") == real


def test_inbox_reached_through_a_symlink_works(inbox: Path, tmp_path: Path) -> None:
    (tmp_path / "scans").symlink_to(inbox)
    assert resolve_in_inbox(tmp_path / "scans", "scan.pdf") == (inbox / "scan.pdf").resolve()


def test_missing_file_says_which_and_where(inbox: Path) -> None:
    with pytest.raises(MissingFile) as caught:
        resolve_in_inbox(inbox, "2024/scan2.pdf")
    assert str(caught.value) == f"2024/scan2.pdf not found in inbox {inbox.resolve()}"
    (inbox / "dangling.pdf").symlink_to(inbox / "gone.pdf")
    with pytest.raises(MissingFile):
        resolve_in_inbox(inbox, "dangling.pdf")


def test_directory_and_special_files_are_refused(inbox: Path) -> None:
    with pytest.raises(FileRejected, match="a directory") as caught:
        resolve_in_inbox(inbox, "2024/May")
    assert not isinstance(caught.value, MissingFile | PathOutsideInbox)
    os.mkfifo(inbox / "pipe.pdf")
    with pytest.raises(FileRejected, match="not a regular file"):
        resolve_in_inbox(inbox, "pipe.pdf")
    (inbox / "loop.pdf").symlink_to(inbox / "loop.pdf")
    with pytest.raises(FileRejected, match="cannot be resolved"):
        resolve_in_inbox(inbox, "loop.pdf")


def test_missing_inbox_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileRejected, match=r"the inbox .* is not usable"):
        resolve_in_inbox(tmp_path / "nowhere", "scan.pdf")


# --- claim_into --------------------------------------------------------------------------------


def test_claims_get_the_next_version(tmp_path: Path) -> None:
    processed = tmp_path / "processed"
    names = []
    for n in range(1, 4):
        source = tmp_path / "inbox" / "scan.PDF"
        source.parent.mkdir(exist_ok=True)
        source.write_bytes(f"version {n}".encode())
        claimed = claim_into(source, processed)
        names.append(claimed.name)
        assert not source.exists()
        assert claimed.read_bytes() == f"version {n}".encode()
    assert names == ["scan_v01.pdf", "scan_v02.pdf", "scan_v03.pdf"]


def test_versions_grow_past_99_and_ignore_other_stems(tmp_path: Path) -> None:
    processed = tmp_path / "processed"
    processed.mkdir()
    for name in ("scan_v99.pdf", "scan_v7.pdf", "scanner_v150.pdf", "scan_v01.pdf.error.json"):
        (processed / name).write_bytes(b"old")
    source = tmp_path / "scan.pdf"
    source.write_bytes(b"new")
    assert claim_into(source, processed).name == "scan_v100.pdf"
    source.write_bytes(b"newer")
    assert claim_into(source, processed).name == "scan_v101.pdf"
    assert (processed / "scan_v99.pdf").read_bytes() == b"old"


def test_claim_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MissingFile):
        claim_into(tmp_path / "nothing.pdf", tmp_path / "processed")


def _claim_after_barrier(source: str, processed: str, barrier: object) -> str:
    barrier.wait()  # type: ignore[attr-defined]
    try:
        return claim_into(Path(source), Path(processed)).name
    except MissingFile:
        return "lost"


def _same_stem_sources(tmp_path: Path, count: int) -> list[Path]:
    sources = []
    for n in range(count):
        source = tmp_path / "inbox" / f"shelf{n}" / "scan.pdf"
        source.parent.mkdir(parents=True)
        source.write_bytes(f"scan from shelf {n}".encode() * 1000)
        sources.append(source)
    return sources


def _check_all_kept(sources: list[Path], processed: Path, names: list[str]) -> None:
    assert len(set(names)) == len(sources), names
    assert sorted(names) == [f"scan_v{n:02d}.pdf" for n in range(1, len(sources) + 1)]
    contents = sorted(path.read_bytes() for path in processed.iterdir())
    assert contents == sorted(f"scan from shelf {n}".encode() * 1000 for n in range(len(sources)))
    assert not any(source.exists() for source in sources)


def _claim_in_process(source: str, processed: str, barrier: object, results: object) -> None:
    results.put(_claim_after_barrier(source, processed, barrier))  # type: ignore[attr-defined]


def test_processes_claiming_same_stem_never_overwrite(tmp_path: Path) -> None:
    count = 8
    sources = _same_stem_sources(tmp_path, count)
    processed = tmp_path / "processed"
    processed.mkdir()
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(count)
    results = context.Queue()
    workers = [
        context.Process(target=_claim_in_process, args=(str(s), str(processed), barrier, results))
        for s in sources
    ]
    for worker in workers:
        worker.start()
    names = [results.get(timeout=30) for _ in workers]
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    _check_all_kept(sources, processed, names)


def _run_threads(count: int, claim: Callable[[threading.Barrier], str]) -> list[str]:
    barrier = threading.Barrier(count)
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(claim(barrier))) for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_threads_claiming_same_stem_never_overwrite(tmp_path: Path) -> None:
    count = 16
    sources = _same_stem_sources(tmp_path, count)
    processed = tmp_path / "processed"
    processed.mkdir()
    queue = list(sources)
    lock = threading.Lock()

    def claim(barrier: threading.Barrier) -> str:
        with lock:
            source = queue.pop()
        return _claim_after_barrier(str(source), str(processed), barrier)

    names = _run_threads(count, claim)
    _check_all_kept(sources, processed, names)


def test_two_workers_claiming_the_same_file_one_wins(tmp_path: Path) -> None:
    source = tmp_path / "inbox" / "scan.pdf"
    source.parent.mkdir()
    processed = tmp_path / "processed"
    processed.mkdir()
    for _ in range(20):
        source.write_bytes(b"the only copy")
        results = _run_threads(
            2, lambda barrier: _claim_after_barrier(str(source), str(processed), barrier)
        )
        assert results.count("lost") <= 1
        won = [name for name in results if name != "lost"]
        assert len(won) >= 1
        for path in processed.iterdir():
            assert path.read_bytes() == b"the only copy"
    # every round left exactly one copy: one claim, or two claims when the second began after
    # the first had finished (then the second found no file and lost)
    assert len(list(processed.iterdir())) == 20


@pytest.mark.parametrize("code", [errno.EXDEV, errno.EPERM])
def test_claim_without_hard_links_copies_exclusively(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """Another file system (EXDEV) or a share without hard links (EPERM): copy + fsync + unlink."""

    def no_link(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files.os, "link", no_link)
    processed = tmp_path / "processed"
    processed.mkdir()
    (processed / "scan_v01.pdf").write_bytes(b"taken by a concurrent claim")
    os.utime(processed / "scan_v01.pdf", (0, 0))
    source = tmp_path / "scan.pdf"
    source.write_bytes(b"payload")
    os.utime(source, (1_000_000, 1_000_000))
    # a concurrent claim took v02 after this one listed the folder
    real_open = os.open
    raced = []

    def racing_open(path: object, flags: int, *args: object) -> int:
        if str(path).endswith("scan_v02.pdf") and not raced:
            raced.append(True)
            Path(str(path)).write_bytes(b"the other claim")
        return real_open(path, flags, *args)

    monkeypatch.setattr(files.os, "open", racing_open)
    claimed = claim_into(source, processed)
    assert claimed.name == "scan_v03.pdf"
    assert claimed.read_bytes() == b"payload"
    assert claimed.stat().st_mtime == 1_000_000
    assert (processed / "scan_v01.pdf").read_bytes() == b"taken by a concurrent claim"
    assert (processed / "scan_v02.pdf").read_bytes() == b"the other claim"
    assert not source.exists()


def test_an_unexpected_link_error_is_not_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "link", full_disk)
    source = tmp_path / "scan.pdf"
    source.write_bytes(b"x")
    with pytest.raises(OSError, match="No space"):
        claim_into(source, tmp_path / "processed")
    assert source.read_bytes() == b"x"


# --- move_to_error -----------------------------------------------------------------------------


def test_move_to_error_keeps_the_file_and_writes_the_sidecar(tmp_path: Path) -> None:
    processed = tmp_path / "processed"
    processed.mkdir()
    path = processed / "scan_v01.pdf"
    path.write_bytes(b"%PDF broken")
    error_dir = tmp_path / "error"
    error = {"biblionumber": 42, "error": "DSpace: 422 Unprocessable", "note": "Кобзар"}
    moved = move_to_error(path, error_dir, error)
    assert moved == error_dir / "scan_v01.pdf"
    assert moved.read_bytes() == b"%PDF broken"
    assert not path.exists()
    sidecar = error_dir / "scan_v01.pdf.error.json"
    note = json.loads(sidecar.read_text(encoding="utf-8"))
    assert note["error"] == error
    assert note["file"] == "scan_v01.pdf"
    assert note["original_path"] == str(path)
    assert datetime.fromisoformat(note["when"]).tzinfo is not None
    assert "Кобзар" in sidecar.read_text(encoding="utf-8")  # not \u-escaped
    assert sorted(p.name for p in error_dir.iterdir()) == [
        "scan_v01.pdf",
        "scan_v01.pdf.error.json",
    ]


def test_move_to_error_never_overwrites(tmp_path: Path) -> None:
    error_dir = tmp_path / "error"
    error_dir.mkdir()
    (error_dir / "scan_v01.pdf").write_bytes(b"earlier failure")
    (error_dir / "scan_v01.pdf.error.json").write_text('{"earlier": true}')
    (error_dir / "scan_v01-2.pdf.error.json").write_text('{"orphan note": true}')
    names = []
    for n in range(2):
        path = tmp_path / "scan_v01.pdf"
        path.write_bytes(f"failure {n}".encode())
        names.append(move_to_error(path, error_dir, {"error": f"boom {n}"}).name)
    assert names == ["scan_v01-3.pdf", "scan_v01-4.pdf"]
    assert (error_dir / "scan_v01.pdf").read_bytes() == b"earlier failure"
    assert json.loads((error_dir / "scan_v01.pdf.error.json").read_text()) == {"earlier": True}
    assert json.loads((error_dir / "scan_v01-2.pdf.error.json").read_text()) == {
        "orphan note": True
    }
    assert json.loads((error_dir / "scan_v01-4.pdf.error.json").read_text())["error"] == {
        "error": "boom 1"
    }
    assert not any(p.name.endswith(".tmp") for p in error_dir.iterdir())


def test_move_to_error_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MissingFile):
        move_to_error(tmp_path / "gone.pdf", tmp_path / "error", {"error": "x"})
    assert list((tmp_path / "error").iterdir()) == []


def test_sidecar_values_json_cannot_encode_become_text(tmp_path: Path) -> None:
    path = tmp_path / "a.pdf"
    path.write_bytes(b"x")
    moved = move_to_error(
        path, tmp_path / "error", {"path": Path("/x/y"), "when": datetime(2024, 1, 2)}
    )
    note = json.loads((moved.parent / f"{moved.name}.error.json").read_text())
    assert note["error"] == {"path": "/x/y", "when": "2024-01-02 00:00:00"}


def test_md5_of(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    path.write_bytes(data)
    assert md5_of(path) == hashlib.md5(data).hexdigest()
