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
    FileChanged,
    FileRejected,
    Fingerprint,
    Folders,
    MissingFile,
    PathOutsideInbox,
    StillBeingWritten,
    claim_into,
    fingerprint_of,
    move_to_error,
    open_in_inbox,
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


# --- open_in_inbox -----------------------------------------------------------------------------


def identity(path: Path) -> tuple[int, int]:
    info = path.stat(follow_symlinks=False)
    return info.st_dev, info.st_ino


def opened(inbox: Path, reference: str) -> tuple[bytes, tuple[int, int]]:
    """The content and identity of the file `reference` opens, read through its descriptor."""
    with open_in_inbox(inbox, reference) as file:
        return os.pread(file.fd, 1 << 20, 0), file.identity


def refusal(inbox: Path, reference: str) -> FileRejected:
    with pytest.raises(FileRejected) as caught, open_in_inbox(inbox, reference):
        pass
    # errors reach Koha's 956$z and the task status: no server paths in them
    assert str(inbox.parent) not in str(caught.value)
    return caught.value


def test_opens_files_and_subfolders(inbox: Path) -> None:
    scan = (b"%PDF-1.4 scan", identity(inbox / "scan.pdf"))
    assert opened(inbox, "scan.pdf") == scan
    book = (b"%PDF-1.4 book", identity(inbox / "2024" / "May" / "книга 1.pdf"))
    assert opened(inbox, "2024/May/книга 1.pdf") == book
    assert opened(inbox, "./2024//May/./книга 1.pdf") == book
    assert opened(inbox, "2024\\May\\книга 1.pdf") == book  # typed on Windows
    assert opened(inbox, "  scan.pdf  ") == scan
    with open_in_inbox(inbox, "2024/May/книга 1.pdf") as file:
        assert (file.shown, file.name) == ("2024/May/книга 1.pdf", "книга 1.pdf")


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
    refused = refusal(inbox, reference)
    assert isinstance(refused, PathOutsideInbox)
    assert reason in refused.reason
    assert refused.path == reference


def test_percent_encoding_is_not_decoded(inbox: Path) -> None:
    """956$u is a path, not a URL: `%2e%2e` is a name like any other, never `..`."""
    refused = refusal(inbox, "%2e%2e/%2e%2e/etc/passwd")
    assert isinstance(refused, MissingFile)
    (inbox / "%2e%2e").mkdir()
    (inbox / "%2e%2e" / "scan.pdf").write_bytes(b"%PDF-1.4 odd folder")
    assert opened(inbox, "%2e%2e/scan.pdf")[0] == b"%PDF-1.4 odd folder"


def test_empty_reference_and_the_inbox_itself(inbox: Path) -> None:
    for reference in ("", "   ", ".", "./"):
        assert not isinstance(refusal(inbox, reference), MissingFile)


def test_symlink_out_of_the_inbox_is_refused(inbox: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.pdf").write_bytes(b"%PDF secret")
    (inbox / "link.pdf").symlink_to(outside / "secret.pdf")
    (inbox / "dir").symlink_to(outside)
    (inbox / "up.pdf").symlink_to(Path("..") / "outside" / "secret.pdf")  # relative symlink
    for reference, link in (("link.pdf", "link.pdf"), ("dir/secret.pdf", "dir"), ("up.pdf",) * 2):
        refused = refusal(inbox, reference)
        assert isinstance(refused, PathOutsideInbox)
        assert refused.reason.startswith(f"{link} is a symbolic link;")
        assert "could lead outside" in refused.reason


def test_symlinks_inside_the_inbox_are_refused_too(inbox: Path) -> None:
    """A link that stays inside could be changed to lead out between two looks: none is
    followed, wherever it leads."""
    (inbox / "alias.pdf").symlink_to(inbox / "2024" / "May" / "книга 1.pdf")
    (inbox / "latest").symlink_to(Path("2024") / "May")
    (inbox / "dangling.pdf").symlink_to(inbox / "gone.pdf")
    (inbox / "loop.pdf").symlink_to(inbox / "loop.pdf")
    for reference in ("alias.pdf", "latest/книга 1.pdf", "dangling.pdf", "loop.pdf"):
        refused = refusal(inbox, reference)
        assert isinstance(refused, PathOutsideInbox), reference
        assert "is a symbolic link" in refused.reason


def test_inbox_reached_through_a_symlink_works(inbox: Path, tmp_path: Path) -> None:
    """The inbox folder itself is configured, not typed in a record: it may be a symlink."""
    (tmp_path / "scans").symlink_to(inbox)
    assert opened(tmp_path / "scans", "scan.pdf") == (
        b"%PDF-1.4 scan",
        identity(inbox / "scan.pdf"),
    )


def test_missing_file_says_which_but_not_where(inbox: Path) -> None:
    for reference in ("2024/scan2.pdf", "2025/May/scan.pdf"):
        refused = refusal(inbox, reference)
        assert isinstance(refused, MissingFile)
        assert str(refused) == f"{reference} not found in inbox"


def test_directory_and_special_files_are_refused(inbox: Path) -> None:
    refused = refusal(inbox, "2024/May")
    assert refused.reason == "a directory, not a file"
    assert not isinstance(refused, MissingFile | PathOutsideInbox)
    os.mkfifo(inbox / "pipe.pdf")  # refused without waiting for a writer
    assert refusal(inbox, "pipe.pdf").reason == "not a regular file"
    assert refusal(inbox, "scan.pdf/x.pdf").reason == "scan.pdf is not a folder"


def test_a_fifo_put_in_place_after_the_look_is_refused_without_hanging(
    inbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry is looked at, then opened: what is opened is checked again."""
    real_open = os.open

    def swap_then_open(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if path == "scan.pdf":
            os.unlink(inbox / "scan.pdf")
            os.mkfifo(inbox / "scan.pdf")
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(files.os, "open", swap_then_open)
    assert refusal(inbox, "scan.pdf").reason == "not a regular file"


def test_a_symlink_put_in_place_after_the_look_is_not_followed(
    inbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry was a file when looked at and a symlink to a file outside when opened: the
    open itself does not follow it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.pdf").write_bytes(b"%PDF secret")
    real_open = os.open

    def swap_then_open(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if path == "scan.pdf" and not (inbox / "scan.pdf").is_symlink():
            os.unlink(inbox / "scan.pdf")
            os.symlink(outside / "secret.pdf", inbox / "scan.pdf")
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(files.os, "open", swap_then_open)
    refused = refusal(inbox, "scan.pdf")
    assert isinstance(refused, PathOutsideInbox)
    assert refused.reason.startswith("scan.pdf is a symbolic link;")


def test_a_folder_swapped_back_while_it_was_opened(
    inbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening 2024 met a symlink or a file (ENOTDIR); a look right after finds a folder again."""
    real_open = os.open

    def open_meeting_a_swap(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if path == "2024":
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(files.os, "open", open_meeting_a_swap)
    assert refusal(inbox, "2024/May/книга 1.pdf").reason == "2024 changed while it was being opened"


def test_a_name_too_long_for_its_versions_is_refused_before_anything_is_moved(
    inbox: Path,
) -> None:
    """Processed adds `_vNN`, Error `-N` and `.error.json`: a name that leaves no room for them
    within the 255 bytes file systems allow is refused with a reason a cataloguer can act on
    (before, it failed with a raw OSError, or its error note could not be written)."""
    name = "к" * 120 + ".pdf"  # 244 bytes in UTF-8: a name on disk, but no room for "-2.error.json"
    (inbox / name).write_bytes(b"%PDF-1.4 long")
    refused = refusal(inbox, name)
    assert str(refused) == (
        f"file {name!r} refused: its name is too long (244 bytes in UTF-8, at most "
        f"{files.MAX_NAME_BYTES}): give the file a shorter name"
    )
    assert (inbox / name).exists()


def test_the_longest_name_allowed_gets_its_versions_and_its_error_note(
    inbox: Path, tmp_path: Path
) -> None:
    stem = "к" * ((files.MAX_NAME_BYTES - 4) // 2)
    stem += "X" * (files.MAX_NAME_BYTES - 4 - len(stem.encode()))
    name = f"{stem}.pdf"
    assert len(name.encode()) == files.MAX_NAME_BYTES
    processed, error_dir = tmp_path / "processed", tmp_path / "error"
    processed.mkdir()
    error_dir.mkdir()
    (processed / f"{stem}_v99.pdf").write_bytes(b"an earlier claim")
    (error_dir / f"{stem}_v100.pdf").write_bytes(b"an earlier failure")
    (inbox / name).write_bytes(b"%PDF-1.4 long")
    with open_in_inbox(inbox, name) as file:
        claimed = claim_into(file, processed)
    assert claimed.name == f"{stem}_v100.pdf"
    moved = move_to_error(claimed, error_dir, {"error": "x"})
    assert moved.name == f"{stem}_v100-2.pdf"
    note = json.loads((error_dir / f"{moved.name}.error.json").read_text())
    assert note["file"] == moved.name


def test_missing_inbox_is_reported(tmp_path: Path) -> None:
    refused = refusal(tmp_path / "nowhere", "scan.pdf")
    assert str(refused) == (
        "the inbox folder cannot be opened (No such file or directory); check the inbox setting"
    )


def test_the_fingerprint_is_read_from_the_open_file(inbox: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    (inbox / "big.pdf").write_bytes(data)
    with open_in_inbox(inbox, "big.pdf") as file:
        os.rename(inbox / "big.pdf", inbox / "renamed.pdf")
        (inbox / "big.pdf").write_bytes(b"another file under the name")
        found = file.fingerprint()
    assert found == Fingerprint(
        size=len(data), sha256=hashlib.sha256(data).hexdigest(), md5=hashlib.md5(data).hexdigest()
    )
    assert fingerprint_of(inbox / "renamed.pdf") == found


def test_a_file_growing_while_it_is_hashed_is_still_being_written(
    inbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pread = os.pread
    grown: list[bool] = []

    def pread_while_a_copier_appends(fd: int, size: int, offset: int) -> bytes:
        chunk = real_pread(fd, size, offset)
        if not grown:
            grown.append(True)
            with open(inbox / "scan.pdf", "ab") as out:
                out.write(b" and the rest")
        return chunk

    monkeypatch.setattr(files.os, "pread", pread_while_a_copier_appends)
    with open_in_inbox(inbox, "scan.pdf") as file:
        with pytest.raises(StillBeingWritten, match=r"scan\.pdf is still being written"):
            file.fingerprint()
        assert file.fingerprint().size == len(b"%PDF-1.4 scan and the rest")


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


def test_a_claim_moves_the_file_opened_even_through_a_swapped_folder(
    inbox: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "книга 1.pdf").write_bytes(b"%PDF outside")
    with open_in_inbox(inbox, "2024/May/книга 1.pdf") as file:
        os.rename(inbox / "2024" / "May", inbox / "2024" / "Moved")
        (inbox / "2024" / "May").symlink_to(outside)
        claimed = claim_into(file, tmp_path / "processed")
    assert claimed.read_bytes() == b"%PDF-1.4 book"
    assert not (inbox / "2024" / "Moved" / "книга 1.pdf").exists()
    assert (outside / "книга 1.pdf").read_bytes() == b"%PDF outside"


def test_a_claim_takes_nothing_if_another_file_took_the_name(inbox: Path, tmp_path: Path) -> None:
    """Found, then renamed away and replaced (by a file or a symlink): the name no longer
    names the file opened, so nothing is moved and both stay where they are."""
    processed = tmp_path / "processed"
    for replacement in ("file", "symlink"):
        (inbox / "scan.pdf").write_bytes(b"%PDF-1.4 scan")
        with open_in_inbox(inbox, "scan.pdf") as file:
            os.rename(inbox / "scan.pdf", inbox / f"renamed-{replacement}.pdf")
            if replacement == "file":
                (inbox / "scan.pdf").write_bytes(b"%PDF another")
            else:
                (inbox / "scan.pdf").symlink_to(inbox / "2024" / "May" / "книга 1.pdf")
            with pytest.raises(FileChanged) as caught:
                claim_into(file, processed)
        assert str(caught.value) == (
            "scan.pdf was replaced by another file while it was being moved; nothing was taken"
        )
        assert list(processed.iterdir()) == []
        assert (inbox / f"renamed-{replacement}.pdf").read_bytes() == b"%PDF-1.4 scan"
        assert (inbox / "scan.pdf").is_symlink() == (replacement == "symlink")
        (inbox / "scan.pdf").unlink()


def test_a_new_file_given_the_name_while_it_is_claimed_is_left_alone(
    inbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the claim's link into Processed and its removal of the inbox name, the scan was
    renamed and a new one put under its name: the new scan is not deleted, and this claim is
    undone (the scan taken stays under its new name)."""
    real_fsync = files._fsync
    swapped: list[bool] = []

    def swap_then_fsync(folder: int) -> None:
        if not swapped:  # the first fsync comes right after the link
            swapped.append(True)
            os.rename(inbox / "scan.pdf", inbox / "renamed.pdf")
            (inbox / "scan.pdf").write_bytes(b"%PDF-1.4 a new scan")
        real_fsync(folder)

    monkeypatch.setattr(files, "_fsync", swap_then_fsync)
    processed = tmp_path / "processed"
    with open_in_inbox(inbox, "scan.pdf") as file, pytest.raises(MissingFile):
        claim_into(file, processed)
    assert swapped
    assert (inbox / "scan.pdf").read_bytes() == b"%PDF-1.4 a new scan"
    assert (inbox / "renamed.pdf").read_bytes() == b"%PDF-1.4 scan"
    assert list(processed.iterdir()) == []


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

    def racing_open(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if path == "scan_v02.pdf" and not raced:
            raced.append(True)
            (processed / "scan_v02.pdf").write_bytes(b"the other claim")
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

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


def test_a_symlink_put_at_the_note_name_is_replaced_not_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A symlink planted at the note's name after the name was chosen: the note replaces the
    link and the file it pointed to is left as it was."""
    outside = tmp_path / "outside.txt"
    outside.write_text("not to be overwritten")
    error_dir = tmp_path / "error"
    path = tmp_path / "scan_v01.pdf"
    path.write_bytes(b"%PDF broken")
    real_write = files._write_note
    planted: list[str] = []

    def plant_then_write(folder: int, name: str, body: bytes) -> None:
        os.symlink(outside, name, dir_fd=folder)
        planted.append(name)
        real_write(folder, name, body)

    monkeypatch.setattr(files, "_write_note", plant_then_write)
    moved = move_to_error(path, error_dir, {"error": "x"})
    assert planted == [f"{moved.name}.error.json"]
    note = error_dir / f"{moved.name}.error.json"
    assert not note.is_symlink()
    assert json.loads(note.read_text())["error"] == {"error": "x"}
    assert outside.read_text() == "not to be overwritten"


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


def test_fingerprint_of_a_file_larger_than_one_read(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    path.write_bytes(data)
    found = fingerprint_of(path)
    assert found.md5 == hashlib.md5(data).hexdigest()
    assert found.sha256 == hashlib.sha256(data).hexdigest() and found.size == len(data)
