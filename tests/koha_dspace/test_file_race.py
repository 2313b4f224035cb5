"""B1: a folder or file in the inbox swapped for a symlink while take_file works must never let
it read, move, delete or deposit anything outside the inbox.

The steps run as the pipeline runs them (take_file, then check_file) with a small stand-in for
the step context. The swap happens at take_file's checkpoint, which is saved after the file has
been found and hashed and before it is moved: exactly the window of the old resolve-then-move
code. Every access to the outside folder is watched with inotify (Linux), so "never read" is
observed, not inferred from file contents.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import pytest

from shelfwork.config import Settings
from shelfwork.errors import ShelfworkError
from shelfwork.pipelines.koha_dspace import files, pipeline
from shelfwork.pipelines.koha_dspace.config import SYSTEM
from shelfwork.pipelines.koha_dspace.files import FileChanged, FileRejected, open_in_inbox
from shelfwork.pipelines.koha_dspace.marc import integration_state, parse_marcxml
from shelfwork.pipelines.koha_dspace.pipeline import (
    check_file,
    deposit,
    fetch_record,
    on_failure,
    take_file,
)
from shelfwork.sandbox.pdfs import text_pdf
from shelfwork.sandbox.peers import Peers
from shelfwork.sandbox.records import Book, marcxml

#: take_file runs this many times against the free-running swapper
ROUNDS = 120
#: how long a checkpoint waits for the swapper's next flip (a bound, not a pause: it is woken)
FLIP_WAIT = 5.0

_IN_ACCESS, _IN_MODIFY, _IN_ATTRIB, _IN_OPEN = 0x1, 0x2, 0x4, 0x20
_IN_MOVED_FROM, _IN_DELETE, _IN_DELETE_SELF, _IN_MOVE_SELF = 0x40, 0x200, 0x400, 0x800
_WATCHED = (
    _IN_ACCESS
    | _IN_MODIFY
    | _IN_ATTRIB
    | _IN_OPEN
    | _IN_MOVED_FROM
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
)
_NAMES = {
    _IN_ACCESS: "read",
    _IN_MODIFY: "written",
    _IN_ATTRIB: "metadata changed",
    _IN_OPEN: "opened",
    _IN_MOVED_FROM: "moved away",
    _IN_DELETE: "deleted",
    _IN_DELETE_SELF: "folder deleted",
    _IN_MOVE_SELF: "folder moved",
}


class OutsideWatch:
    """Every open, read, change, move or delete in one folder (and of the folder), by inotify.

    The folder's watch sees what is done through the folder's names; each file is watched too,
    since a file reached through another name (a hard link made elsewhere) reports its opens
    and link-count changes only to its own watch."""

    def __init__(self, folder: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._names: dict[int, str] = {}
        for path in (folder, *sorted(folder.iterdir())):
            wd = libc.inotify_add_watch(self._fd, os.fsencode(path), _WATCHED)
            if wd < 0:
                os.close(self._fd)
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
            self._names[wd] = "" if path == folder else path.name

    def events(self) -> list[str]:
        """What happened since the watch began, e.g. 'secret.pdf: opened'; then stop watching."""
        seen: list[str] = []
        try:
            while True:
                try:
                    data = os.read(self._fd, 64 * 1024)
                except BlockingIOError:
                    break
                offset = 0
                while offset < len(data):
                    wd, mask, _cookie, size = struct.unpack_from("iIII", data, offset)
                    name = data[offset + 16 : offset + 16 + size].rstrip(b"\0").decode()
                    name = name or self._names.get(wd, "")
                    offset += 16 + size
                    kinds = [text for bit, text in _NAMES.items() if mask & bit]
                    if kinds:
                        seen.append(f"{name or '(the folder)'}: {', '.join(kinds)}")
        finally:
            os.close(self._fd)
        return seen


@dataclass(frozen=True)
class Seen:
    """What a file outside the inbox looked like: it must look the same afterwards."""

    data: bytes
    inode: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> Seen:
        info = path.stat(follow_symlinks=False)
        return cls(path.read_bytes(), info.st_ino, info.st_mtime_ns)


@dataclass
class Scene:
    """inbox/shelf/scan.pdf, and outside/scan.pdf + outside/other.pdf the inbox must not reach.

    `link_shelf` / `unlink_shelf` swap inbox/shelf between the real folder and a symlink to the
    outside folder (two renames; the real folder keeps living under another inbox name)."""

    root: Path
    settings: Settings
    pdf: bytes
    shelf_fd: int = -1
    flips: int = 0  # odd: inbox/shelf is the symlink
    held: bool = False
    parked: bool = False
    flipped: threading.Condition = field(default_factory=threading.Condition)

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def outside(self) -> Path:
        return self.root / "outside"

    @property
    def processed(self) -> Path:
        return self.root / "processed"

    def inside_pdf(self, n: int) -> bytes:
        return self.pdf + f"% inside copy {n}\n".encode()

    def put_scan(self, n: int) -> None:
        """A fresh inbox/shelf/scan.pdf, written through the real folder wherever it is now."""
        try:
            fd = os.open(
                "scan.pdf", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=self.shelf_fd
            )
        except FileExistsError:
            return  # the last round refused it: it is still there
        with os.fdopen(fd, "wb") as out:
            out.write(self.inside_pdf(n))

    def link_shelf(self) -> None:
        os.rename(self.inbox / "shelf", self.inbox / ".shelf-real")
        os.rename(self.inbox / ".shelf-link", self.inbox / "shelf")

    def unlink_shelf(self) -> None:
        os.rename(self.inbox / "shelf", self.inbox / ".shelf-link")
        os.rename(self.inbox / ".shelf-real", self.inbox / "shelf")

    def swap_freely(self, stop: threading.Event) -> None:
        """Flip inbox/shelf to the symlink and back as fast as possible until `stop`; between
        two pairs of flips, stay on the real folder while a round holds it (see `hold`)."""
        while not stop.is_set():
            self.link_shelf()
            self._flipped()
            self.unlink_shelf()
            self._flipped()
            with self.flipped:
                self.parked = True
                self.flipped.notify_all()
                self.flipped.wait_for(lambda: not self.held or stop.is_set(), FLIP_WAIT)
                self.parked = False

    def _flipped(self) -> None:
        with self.flipped:
            self.flips += 1
            self.flipped.notify_all()

    def hold(self) -> None:
        """Until the swapper stands still on the real folder (so the file can be found)."""
        with self.flipped:
            self.held = True
            assert self.flipped.wait_for(lambda: self.parked, FLIP_WAIT), "the swapper stopped"

    def let_go_and_wait_for_a_swap(self) -> None:
        """Free the swapper and return once it has put the symlink in place again; it goes on
        flipping while the caller moves the file."""
        with self.flipped:
            self.held = False
            seen = self.flips
            self.flipped.notify_all()
            swapped = self.flipped.wait_for(
                lambda: self.flips > seen and self.flips % 2 == 1, FLIP_WAIT
            )
            assert swapped, "the swapper stopped"


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    (inbox / "shelf").mkdir(parents=True)
    outside.mkdir()
    pdf = text_pdf(tmp_path / "model.pdf", 1).read_bytes()
    (outside / "scan.pdf").write_bytes(pdf + b"% SECRET: outside the inbox\n")
    (outside / "other.pdf").write_bytes(pdf + b"% SECRET: another outside file\n")
    os.utime(outside / "scan.pdf", ns=(1_000_000_000, 1_000_000_000))
    (inbox / ".shelf-link").symlink_to(outside, target_is_directory=True)
    config = {
        "inbox": str(inbox),
        "processed": str(tmp_path / "processed"),
        "error": str(tmp_path / "error"),
        "koha": {"url": "http://koha.invalid", "opac_url": "http://koha.invalid"}
        | {"user": "u", "password": "p"},
        "dspace": {"url": "http://dspace.invalid/server/api", "user": "u", "password": "p"}
        | {"collection": "c"},
        "pdf_retry_delay": 0,
    }
    made = Scene(tmp_path, Settings(systems={SYSTEM: config}), pdf=pdf)
    made.shelf_fd = os.open(inbox / "shelf", os.O_RDONLY | os.O_DIRECTORY)
    yield made
    os.close(made.shelf_fd)


class Step:
    """The little of StepContext that take_file and check_file use; `at_checkpoint` runs when
    take_file saves its checkpoint (the file found, not yet moved)."""

    def __init__(self, scene: Scene, at_checkpoint: Callable[[], None]) -> None:
        self.engine = SimpleNamespace(settings=scene.settings)
        self.results: dict[str, Any] = {
            "fetch_record": {
                "biblionumber": 7,
                "integrated": False,
                "file": "shelf/scan.pdf",
                "uuid": None,
            }
        }
        self.checkpoint: Any = None
        self.log = SimpleNamespace(info=lambda *a, **k: None, warning=lambda *a, **k: None)
        self._at_checkpoint = at_checkpoint

    def progress(self, *args: object, **kwargs: object) -> None:
        pass

    def sleep(self, seconds: float) -> None:
        pass

    def save_checkpoint(self, value: Any) -> None:
        self.checkpoint = value
        self._at_checkpoint()

    def take_and_check(self) -> dict[str, Any]:
        self.results["take_file"] = take_file(self)  # type: ignore[arg-type]
        self.results["check_file"] = check_file(self)  # type: ignore[arg-type]
        return self.results["take_file"]


def _outside(scene: Scene) -> dict[str, Seen]:
    return {path.name: Seen.of(path) for path in sorted(scene.outside.iterdir())}


def _assert_nothing_outside_touched(
    scene: Scene, before: dict[str, Seen], watch: OutsideWatch
) -> None:
    touched = watch.events()  # first: reading the files below would be seen too
    assert touched == [], f"the outside folder was touched: {touched}"
    assert _outside(scene) == before
    secrets = {seen.data for seen in before.values()}
    for entry in scene.processed.iterdir() if scene.processed.exists() else []:
        assert not entry.is_symlink(), f"{entry.name} in Processed is a symlink"
        assert entry.read_bytes() not in secrets, f"{entry.name} is a file from outside"


def test_a_folder_swapped_for_a_symlink_after_the_file_was_found(scene: Scene) -> None:
    """The old code resolved inbox/shelf/scan.pdf, then moved it by that path, through the
    symlink put in place meanwhile: the outside scan.pdf was deposited and gone from outside."""
    scene.put_scan(1)
    before = _outside(scene)
    watch = OutsideWatch(scene.outside)
    step = Step(scene, at_checkpoint=scene.link_shelf)
    try:
        taken = step.take_and_check()
    except ShelfworkError as refused:
        taken = {"refused": str(refused)}
    _assert_nothing_outside_touched(scene, before, watch)
    if "path" in taken:  # the file that was found is the file that was taken
        assert Path(taken["path"]).read_bytes() == scene.inside_pdf(1)
        assert step.results["check_file"]["md5"] == taken["md5"]
    else:
        assert str(scene.root) not in taken["refused"]


def test_the_file_swapped_for_a_symlink_after_it_was_found(scene: Scene) -> None:
    """The old code linked the symlink itself into Processed, where check_file and the deposit
    read the outside file through it."""
    scene.put_scan(1)
    before = _outside(scene)
    watch = OutsideWatch(scene.outside)

    def swap_the_file() -> None:
        os.rename(scene.inbox / "shelf" / "scan.pdf", scene.inbox / "shelf" / "was-scan.pdf")
        os.symlink(scene.outside / "scan.pdf", scene.inbox / "shelf" / "scan.pdf")

    step = Step(scene, at_checkpoint=swap_the_file)
    try:
        taken = step.take_and_check()
    except ShelfworkError as refused:
        taken = {"refused": str(refused)}
    _assert_nothing_outside_touched(scene, before, watch)
    assert taken == {
        "refused": "shelf/scan.pdf was replaced by another file while it was being moved; "
        "nothing was taken"
    }
    # the symlink was not taken and nothing was left in Processed
    assert (scene.inbox / "shelf" / "scan.pdf").is_symlink()
    assert not scene.processed.exists() or list(scene.processed.iterdir()) == []


def test_a_symlink_swap_in_a_loop_never_reaches_outside(scene: Scene) -> None:
    """A thread flips inbox/shelf between the real folder and a symlink to the outside folder
    as fast as it can while take_file and check_file run ROUNDS times.

    Left alone, the swapper mostly makes take_file miss the folder. So in every other round it
    is held on the real folder until the file has been found, and let go at the checkpoint; the
    move starts once it has swapped the symlink in, and it goes on flipping meanwhile."""
    before = _outside(scene)
    watch = OutsideWatch(scene.outside)
    stop = threading.Event()
    failures: list[BaseException] = []

    def swapper() -> None:
        try:
            scene.swap_freely(stop)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=swapper)
    outcomes: dict[str, int] = {}
    taken_data: list[bytes] = []
    leaks: list[str] = []  # errors a cataloguer reads must not show server paths
    unexpected: list[str] = []  # anything but a clear refusal
    thread.start()
    try:
        for n in range(ROUNDS):
            scene.put_scan(n)
            held = n % 2 == 0
            if held:
                scene.hold()
            step = Step(scene, at_checkpoint=scene.let_go_and_wait_for_a_swap)
            try:
                taken = step.take_and_check()
            except ShelfworkError as refused:
                if str(scene.root) in str(refused):
                    leaks.append(str(refused))
                kind = type(refused).__name__
            except Exception as crash:  # reported after the outside folder is checked
                unexpected.append(f"{type(crash).__name__}: {crash}")
                kind = "unexpected"
            else:
                kind = "taken"
                taken_data.append(Path(taken["path"]).read_bytes())
            key = f"{'held' if held else 'free'} {kind}"
            outcomes[key] = outcomes.get(key, 0) + 1
            if held and scene.held:  # refused before the checkpoint
                with scene.flipped:
                    scene.held = False
                    scene.flipped.notify_all()
    finally:
        stop.set()
        with scene.flipped:
            scene.flipped.notify_all()
        thread.join(10)
    assert not failures, failures
    if (scene.inbox / "shelf").is_symlink():
        scene.unlink_shelf()
    _assert_nothing_outside_touched(scene, before, watch)
    assert unexpected == []
    assert leaks == []
    assert outcomes.get("held taken", 0) > 0, outcomes  # the loop did take files, not only refuse
    assert all(data.startswith(scene.pdf) and b"inside copy" in data for data in taken_data)
    assert sum(outcomes.values()) == ROUNDS


def test_a_fifo_in_the_inbox_is_refused_without_being_opened(tmp_path: Path) -> None:
    """Opening a FIFO would release a writer blocked in its own open (and a device's open can
    act on the device): the entry is looked at before anything is opened."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    os.mkfifo(inbox / "pipe.pdf")
    watch = OutsideWatch(inbox)
    with pytest.raises(FileRejected) as refused, open_in_inbox(inbox, "pipe.pdf"):
        pass
    assert refused.value.reason == "not a regular file"
    assert [seen for seen in watch.events() if seen.startswith("pipe.pdf")] == []


def test_take_file_waits_for_a_copy_still_arriving(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan grows while take_file hashes it: it is hashed again after pdf_retry_delay, and
    what is recorded (and moved) is the whole file."""
    scene.put_scan(1)
    path = scene.inbox / "shelf" / "scan.pdf"
    whole = scene.inside_pdf(1) + b"% the rest of the copy\n"
    real_pread = os.pread
    grown: list[bool] = []

    def pread_while_copying(fd: int, size: int, offset: int) -> bytes:
        chunk = real_pread(fd, size, offset)
        if not grown:
            grown.append(True)
            with path.open("ab") as out:
                out.write(b"% the rest of the copy\n")
        return chunk

    monkeypatch.setattr(files.os, "pread", pread_while_copying)
    step = Step(scene, at_checkpoint=lambda: None)
    slept: list[float] = []
    step.sleep = slept.append  # type: ignore[method-assign]
    taken = take_file(step)  # type: ignore[arg-type]
    assert slept == [0]
    assert taken["sha256"] == hashlib.sha256(whole).hexdigest()
    assert step.checkpoint["sha256"] == taken["sha256"]
    assert Path(taken["path"]).read_bytes() == whole


def test_the_watch_sees_a_read(tmp_path: Path) -> None:
    """The inotify watch the tests above rely on does see a plain read of an outside file."""
    (tmp_path / "secret.pdf").write_bytes(b"x")
    watch = OutsideWatch(tmp_path)
    (tmp_path / "secret.pdf").read_bytes()
    os.unlink(tmp_path / "secret.pdf")
    seen = watch.events()
    assert "secret.pdf: opened" in seen and any("deleted" in s for s in seen), seen


# --- the file checked and deposited is the file taken -------------------------------------------


class PipelineStep(Step):
    """A stand-in context for the whole pipeline against the emulated Koha and DSpace."""

    def __init__(self, settings: Settings, biblionumber: int) -> None:
        free = SimpleNamespace(acquire=lambda *a, **k: None, release=lambda *a, **k: None)
        self.engine = SimpleNamespace(settings=settings, locks=free)
        self.params = SimpleNamespace(biblionumber=biblionumber)
        self.job_id, self.pipeline, self.owner = 1, SYSTEM, "test"
        self.results = {}
        self.checkpoint = None
        self.warned: list[str] = []
        self.log = SimpleNamespace(info=lambda *a, **k: None, warning=self.warned.append)
        self._at_checkpoint = lambda: None

    def warn(self, message: str) -> None:
        self.warned.append(message)


def _fetched(
    peers: Peers, tmp_path: Path, n: int, deposit: Literal["submission", "admin"] = "submission"
) -> PipelineStep:
    """Book `n` catalogued in Koha with its scan in the inbox, and fetched by the pipeline."""
    config = peers.integrator_config(tmp_path, deposit=deposit, pdf_retry_delay=0)
    step = PipelineStep(Settings(systems={SYSTEM: config}), n)
    text_pdf(tmp_path / "inbox" / "scans" / f"book-{n}.pdf", 2)
    book = Book(n, f"Book {n}", year="1999", file=f"scans/book-{n}.pdf")
    peers.koha.add_record(n, marcxml(book))
    step.results["fetch_record"] = fetch_record(step)  # type: ignore[arg-type]
    return step


def _append(path: Path) -> None:
    """Write to the file in Processed, as a copier still holding it open would."""
    with path.open("ab") as out:
        out.write(b"\n% written after it was taken\n%%EOF\n")


def _fails_into_error(step: PipelineStep, refused: ShelfworkError, tmp_path: Path) -> None:
    """The compensation keeps the file in Error with a sidecar saying why."""
    on_failure(step, refused)  # type: ignore[arg-type]
    n = step.params.biblionumber
    assert sorted(p.name for p in (tmp_path / "error").iterdir()) == [
        f"book-{n}_v01.pdf",
        f"book-{n}_v01.pdf.error.json",
    ]
    note = json.loads((tmp_path / "error" / f"book-{n}_v01.pdf.error.json").read_text())
    assert "is not the file taken from the inbox" in note["error"]["error"]
    # the job's log is read by viewers: it names the file, not the server's folders
    assert step.warned and all(str(tmp_path) not in warned for warned in step.warned)
    assert list((tmp_path / "processed").iterdir()) == []


def test_a_file_changed_after_it_was_taken_is_refused_by_check_file(
    peers: Peers, tmp_path: Path
) -> None:
    step = _fetched(peers, tmp_path, 51)
    step.results["take_file"] = take_file(step)  # type: ignore[arg-type]
    _append(Path(step.results["take_file"]["path"]))
    with pytest.raises(ShelfworkError) as refused:
        check_file(step)  # type: ignore[arg-type]
    assert type(refused.value) is FileChanged
    message = str(refused.value)
    assert message.startswith(
        "book-51_v01.pdf is not the file taken from the inbox as scans/book-51.pdf: its content "
        "changed afterwards (SHA-256 "
    )
    assert str(tmp_path) not in message
    _fails_into_error(step, refused.value, tmp_path)
    state = integration_state(parse_marcxml(peers.koha.record(51)))
    assert state.status == "error" and "not the file taken" in (state.message or "")


def test_a_file_changed_before_the_deposit_is_not_deposited(peers: Peers, tmp_path: Path) -> None:
    step = _fetched(peers, tmp_path, 52)
    _append(Path(step.take_and_check()["path"]))
    with pytest.raises(ShelfworkError) as refused:
        deposit(step)  # type: ignore[arg-type]
    assert type(refused.value) is FileChanged
    assert peers.dspace.items_with("dc.identifier.other", "koha:52") == []
    assert peers.dspace.bitstreams == {}
    _fails_into_error(step, refused.value, tmp_path)


# --- what the deposit uploads is the file it checked ---------------------------------------------


def _after_the_deposit_check(monkeypatch: pytest.MonkeyPatch, then: Callable[[], None]) -> None:
    """Run `then` right after the deposit has checked the file's SHA-256 (once)."""
    real = pipeline.same_as_taken
    ran: list[bool] = []

    def check_then(taken: dict[str, Any], sha256: str) -> None:
        real(taken, sha256)
        if not ran:
            ran.append(True)
            then()

    monkeypatch.setattr(pipeline, "same_as_taken", check_then)


@pytest.mark.parametrize("path", ["submission", "admin"])
def test_the_deposit_uploads_the_file_it_checked_not_what_its_name_names_later(
    peers: Peers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """The name in Processed is swapped for a symlink to a file outside right after the deposit
    checked the file: the old deposit then uploaded by that name, and the outside file went to
    DSpace (archived, on the admin path, before any MD5 was compared)."""
    n = 53 if path == "submission" else 54
    step = _fetched(peers, tmp_path, n, deposit=path)  # type: ignore[arg-type]
    taken = step.take_and_check()
    scan = Path(taken["path"])
    inside = scan.read_bytes()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.pdf").write_bytes(inside + b"% SECRET: outside the inbox\n")
    before = {"secret.pdf": Seen.of(outside / "secret.pdf")}
    watch = OutsideWatch(outside)

    def swap_the_name() -> None:
        scan.rename(scan.with_name("moved-aside.pdf"))
        scan.symlink_to(outside / "secret.pdf")

    _after_the_deposit_check(monkeypatch, swap_the_name)
    try:
        deposited: dict[str, Any] | str = deposit(step)  # type: ignore[arg-type]
    except ShelfworkError as refused:
        deposited = str(refused)
    touched = watch.events()
    assert touched == [], f"the outside file was touched: {touched}"
    assert {"secret.pdf": Seen.of(outside / "secret.pdf")} == before
    stored = [b.content for b in peers.dspace.bitstreams.values()]
    assert all(b"SECRET" not in content for content in stored)
    assert isinstance(deposited, dict), deposited
    assert stored == [inside]


def test_a_file_written_to_after_the_deposit_check_is_not_deposited(
    peers: Peers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copier that still holds the file open writes to it after the deposit's check: DSpace
    receives other bytes than were checked, and the submission must stop before it is
    deposited (the old deposit compared MD5s only once the item was archived)."""
    step = _fetched(peers, tmp_path, 55)
    scan = Path(step.take_and_check()["path"])
    writer = scan.open("ab")  # opened before: it writes to the file taken, whatever its name
    try:
        _after_the_deposit_check(monkeypatch, lambda: _append_through(writer))
        with pytest.raises(ShelfworkError) as refused:
            deposit(step)  # type: ignore[arg-type]
    finally:
        writer.close()
    assert str(tmp_path) not in str(refused.value)
    items = peers.dspace.items_with("dc.identifier.other", "koha:55")
    assert [item.in_archive for item in items] in ([], [False])
    assert peers.dspace.workflow_items == {}


def _append_through(writer: Any) -> None:
    writer.write(b"\n% written after the deposit's check\n%%EOF\n")
    writer.flush()
