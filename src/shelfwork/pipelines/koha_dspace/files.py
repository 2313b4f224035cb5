"""The scan's way through the folders: inbox → Processed (rename-first) → Error on failure.

956$u is typed by a cataloguer and read from a remote record, so it is treated as untrusted: it
must name a regular file inside the inbox, whatever `..`, absolute paths, URLs or symlinks it
tries. The file is opened once, walking down from the inbox folder one name at a time with
`O_NOFOLLOW` (a symlink anywhere on the way is refused, even one that stays inside), and from
then on it is only ever reached through those open descriptors: it is hashed from its own
descriptor and moved by descriptor-relative `linkat`/`unlinkat`, so a folder swapped for a
symlink after the file was found cannot make anything outside the inbox be read, moved or
deleted. What was taken is recorded by size and SHA-256; later steps check the file they use
against it (`verify_taken`).

The file is claimed by moving it to Processed under a new version name (`<stem>_v01.pdf`,
`_v02`, ...) before anything else happens, so a second click, a second worker, or a cataloguer
replacing the scan never works on the same path. On failure it moves on to the Error folder
next to a JSON note saying why; nothing here ever deletes or overwrites a file.

Errors name files by their path relative to the inbox (or by their name in Processed/Error),
never by an absolute server path: they reach Koha's 956$z and the task status.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ...errors import ConfigError, ShelfworkError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # two or more letters: "C:" is a drive, not a URL
_DRIVE = re.compile(r"^[A-Za-z]:")
_CHUNK = 1024 * 1024
_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO someone put in the inbox must not wait for a writer (it is refused
# right after, as not a regular file); reads of a regular file ignore the flag.
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: the longest file name taken from the inbox, in bytes (UTF-8): file systems allow 255, and
#: the names made from it add up to 25 (`_v100` in Processed, `.pdf` to a name without it,
#: `-100` in Error and `.error.json` for its note)
MAX_NAME_BYTES = 230


class FileRejected(ShelfworkError):
    """956$u does not name a file the integration may take; `reason` says why."""

    def __init__(self, path: str, reason: str, message: str | None = None) -> None:
        self.path = path
        self.reason = reason
        super().__init__(message or f"file {path!r} refused: {reason}")


class PathOutsideInbox(FileRejected):
    """The reference could lead outside the inbox (absolute, `..`, a URL, or a symlink)."""


class MissingFile(FileRejected):
    """The reference is well-formed but no such file is in the inbox (yet)."""


class FileChanged(FileRejected):
    """The file is not the one that was taken: another file took its name, or its content (its
    SHA-256) changed after it was taken. It is not deposited."""


@dataclass(frozen=True)
class Fingerprint:
    """What was taken: size and SHA-256 identify it, MD5 is what DSpace reports back."""

    size: int
    sha256: str
    md5: str


class _FolderSettings(Protocol):
    inbox: Path
    processed: Path
    error: Path


@dataclass(frozen=True)
class Folders:
    """Where scans wait, where claimed scans live, and where failed ones go."""

    inbox: Path
    processed: Path
    error: Path

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | _FolderSettings) -> Folders:
        """From `[systems.koha-dspace]` (a mapping, or the checked IntegratorConfig)."""
        if isinstance(config, Mapping):
            missing = [key for key in ("inbox", "processed", "error") if not config.get(key)]
            if missing:
                raise ConfigError(f"koha-dspace folders: {', '.join(missing)} not set")
            values = (config["inbox"], config["processed"], config["error"])
        else:
            values = (config.inbox, config.processed, config.error)
        inbox, processed, error = (Path(value).expanduser() for value in values)
        if len({inbox.absolute(), processed.absolute(), error.absolute()}) != 3:
            raise ConfigError(
                f"koha-dspace folders must differ: inbox {inbox}, processed {processed}, "
                f"error {error}"
            )
        return cls(inbox=inbox, processed=processed, error=error)

    def ensure(self) -> Folders:
        for folder in (self.inbox, self.processed, self.error):
            folder.mkdir(parents=True, exist_ok=True)
        return self


# --- 956$u → a file opened inside the inbox ----------------------------------------------------


class StillBeingWritten(FileRejected):
    """The file changed while it was being read (a copy still arriving): try again later."""


def reference_parts(reference: str) -> list[str]:
    """The names 956$u walks down through from the inbox, checked before anything is opened.

    Backslashes count as separators (a reference typed on Windows).
    """
    shown = reference
    if "\x00" in reference:
        raise PathOutsideInbox(shown, "contains a NUL character")
    reference = reference.strip()
    if not reference:
        raise FileRejected(shown, "empty file reference (956$u)")
    if _URL.match(reference):
        raise PathOutsideInbox(shown, "a URL, not a path relative to the inbox")
    if _DRIVE.match(reference) or reference.startswith(("/", "\\")):
        raise PathOutsideInbox(shown, "an absolute path; 956$u must be relative to the inbox")
    parts = [part for part in re.split(r"[/\\]+", reference) if part not in ("", ".")]
    if ".." in parts:
        raise PathOutsideInbox(shown, "contains '..'")
    if not parts:
        raise FileRejected(shown, "names the inbox itself, not a file")
    return parts


class OpenFile:
    """A regular file opened once, with the folder it was found in.

    Everything done to the file afterwards goes through these two descriptors (`fd` for its
    content, `folder_fd` + `name` for its directory entry), never through a path that would be
    looked up again. `shown` names it in messages: its path relative to the inbox, or its name.
    """

    def __init__(self, shown: str, folder_fd: int, name: str, fd: int) -> None:
        self.shown = shown
        self.folder_fd = folder_fd
        self.name = name
        self.fd = fd
        self.info = os.fstat(fd)

    @property
    def identity(self) -> tuple[int, int]:
        return _identity(self.info)

    def fingerprint(self) -> Fingerprint:
        """Size, SHA-256 and MD5 of the content, read from the descriptor in one pass.

        StillBeingWritten if the file changed while it was read: the hashes would then describe
        no version of it that ever existed whole."""
        before = os.fstat(self.fd)
        size, sha256, md5 = content_hashes(self.fd)
        after = os.fstat(self.fd)
        if (
            size != before.st_size
            or after.st_size != size
            or after.st_mtime_ns != before.st_mtime_ns
        ):
            raise StillBeingWritten(
                self.shown,
                "still being written",
                f"{self.shown} is still being written (it changed while it was read)",
            )
        return Fingerprint(size=size, sha256=sha256, md5=md5)

    def reader(self) -> BinaryIO:
        """The content as a file object of its own (a duplicate descriptor: close it), for
        code that reads files, not descriptors, such as an upload."""
        return open(os.dup(self.fd), "rb")

    def close(self) -> None:
        for fd in (self.fd, self.folder_fd):
            with suppress(OSError):
                os.close(fd)


def content_hashes(fd: int) -> tuple[int, str, str]:
    """Bytes read, SHA-256 and MD5 of an open file's whole content, in one pass (positioned
    reads: the descriptor's own offset is left alone)."""
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    size = 0
    while chunk := os.pread(fd, _CHUNK, size):
        sha256.update(chunk)
        md5.update(chunk)
        size += len(chunk)
    return size, sha256.hexdigest(), md5.hexdigest()


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


@contextmanager
def open_in_inbox(inbox: Path, reference: str) -> Iterator[OpenFile]:
    """The regular file `reference` (956$u) names inside `inbox`, opened once.

    Each name on the way is opened relative to the folder before it with `O_NOFOLLOW`, so a
    symlink anywhere is refused (even one that stays inside: it could be changed to lead out
    between two looks), and so is anything but a folder on the way and a regular file at the
    end. The inbox folder itself comes from the configuration and may be reached through a
    symlink.
    """
    parts = reference_parts(reference)
    length = len(os.fsencode(parts[-1]))
    if length > MAX_NAME_BYTES:
        raise FileRejected(
            reference,
            f"its name is too long ({length} bytes in UTF-8, at most {MAX_NAME_BYTES}): "
            "give the file a shorter name",
        )
    try:
        root = os.open(inbox, _FOLDER)
    except OSError as exc:
        raise FileRejected(
            reference,
            "the inbox folder cannot be opened",
            f"the inbox folder cannot be opened ({exc.strerror}); check the inbox setting",
        ) from None
    try:
        opened = _open_beneath(root, parts, reference)
    finally:
        os.close(root)
    try:
        yield opened
    finally:
        opened.close()


def _open_beneath(root: int, parts: list[str], reference: str) -> OpenFile:
    whole = "/".join(parts)
    folder = os.dup(root)
    try:
        for depth, part in enumerate(parts[:-1], start=1):
            try:
                inner = os.open(part, _FOLDER | os.O_NOFOLLOW, dir_fd=folder)
            except OSError as exc:
                raise _refusal(
                    exc, folder, part, "/".join(parts[:depth]), whole, reference
                ) from None
            os.close(folder)
            folder = inner
        return _open_file(folder, parts[-1], whole, reference)
    except BaseException:
        os.close(folder)
        raise


def _open_file(folder: int, name: str, shown: str, reference: str) -> OpenFile:
    """Open `name` in `folder` (a descriptor the caller hands over) as a regular file.

    The entry is looked at before it is opened, so a device or FIFO is refused without being
    opened; the open descriptor is what counts in the end."""
    try:
        _check_kind(os.stat(name, dir_fd=folder, follow_symlinks=False), shown, reference)
        fd = os.open(name, _FILE, dir_fd=folder)
    except OSError as exc:
        raise _refusal(exc, folder, name, shown, shown, reference) from None
    try:
        opened = OpenFile(shown, folder, name, fd)
        _check_kind(opened.info, shown, reference)
    except BaseException:
        os.close(fd)
        raise
    return opened


def _check_kind(info: os.stat_result, shown: str, reference: str) -> None:
    if stat.S_ISLNK(info.st_mode):
        raise _symlink(shown, reference)
    if stat.S_ISDIR(info.st_mode):
        raise FileRejected(reference, "a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise FileRejected(reference, "not a regular file")


def _symlink(shown: str, reference: str) -> PathOutsideInbox:
    return PathOutsideInbox(
        reference,
        f"{shown} is a symbolic link; links are not followed in the inbox, since one could "
        "lead outside it: put the file itself there",
    )


def _refusal(
    exc: OSError, folder: int, name: str, shown: str, whole: str, reference: str
) -> FileRejected:
    """Why `name` (shown as `shown`, on the way to `whole`) could not be opened in `folder`."""
    if exc.errno == errno.ENOENT:
        return MissingFile(reference, "not found", f"{whole} not found in inbox")
    if exc.errno in (errno.ENOTDIR, errno.ELOOP):
        try:
            info = os.stat(name, dir_fd=folder, follow_symlinks=False)
        except OSError:
            return MissingFile(reference, "not found", f"{whole} not found in inbox")
        if stat.S_ISLNK(info.st_mode):
            return _symlink(shown, reference)
        if stat.S_ISDIR(info.st_mode):  # it was something else a moment ago
            return FileRejected(reference, f"{shown} changed while it was being opened")
        return FileRejected(reference, f"{shown} is not a folder")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return FileRejected(reference, f"{shown} cannot be opened: permission denied")
    return FileRejected(reference, f"{shown} cannot be opened: {exc.strerror or exc}")


@contextmanager
def _opened(source: OpenFile | Path) -> Iterator[OpenFile]:
    """`source` as an open file: an OpenFile as it is, a path (in a folder of ours: Processed,
    Error) opened here, its folder as configured and its name not followed."""
    if isinstance(source, OpenFile):
        yield source
        return
    shown = source.name
    try:
        folder = os.open(source.parent, _FOLDER)
    except FileNotFoundError:
        raise MissingFile(
            shown, "not found", f"{shown} not found (moved away meanwhile?)"
        ) from None
    try:
        opened = _open_file(folder, source.name, shown, shown)
    except MissingFile:
        os.close(folder)
        raise MissingFile(
            shown, "not found", f"{shown} not found (moved away meanwhile?)"
        ) from None
    except BaseException:
        os.close(folder)
        raise
    try:
        yield opened
    finally:
        opened.close()


def open_in_folder(path: Path) -> AbstractContextManager[OpenFile]:
    """A file in one of our folders (Processed, Error), opened once, its name not followed:
    what is then checked and read is that one file, whatever happens to its name."""
    return _opened(path)


def fingerprint_of(path: Path) -> Fingerprint:
    """Size, SHA-256 and MD5 of a file in one of our folders (its name is not followed)."""
    with _opened(path) as file:
        return file.fingerprint()


# --- moving without ever overwriting -----------------------------------------------------------


def _version_names(stem: str, suffix: str, existing: list[str]) -> Iterator[str]:
    pattern = re.compile(rf"^{re.escape(stem)}_v(\d{{2,}}){re.escape(suffix)}$")
    taken = [int(m.group(1)) for name in existing if (m := pattern.match(name))]
    number = max(taken, default=0) + 1
    while True:
        yield f"{stem}_v{number:02d}{suffix}"
        number += 1


def claim_into(source: OpenFile | Path, processed: Path) -> Path:
    """Move `source` to `processed/<stem>_vNN.pdf` (the next free version) and return the path.

    The name is taken with `linkat`, which fails if the name exists: two processes claiming
    files with the same stem each get their own version and neither overwrites the other, with
    no window where a claimed name holds a half-written or empty file (an O_EXCL placeholder
    renamed over would show an empty file meanwhile, and leave one behind after a crash). The
    link is made from the open folder and checked to be the very file opened (not whatever took
    its name meanwhile). Then the inbox name is unlinked, from the same open folder, if it still
    names that file; if it does not, another worker claimed the same file first and this claim
    is undone. Where hard links are impossible (another file system, some network shares) the
    opened file is copied into an O_EXCL-created name and fsynced before the source is removed.
    """
    processed.mkdir(parents=True, exist_ok=True)
    with _opened(source) as file:
        name = Path(file.name)
        suffix = name.suffix.lower() or ".pdf"
        stem = name.stem if name.suffix else name.name
        folder = os.open(processed, _FOLDER)
        try:
            names = _version_names(stem, suffix, os.listdir(folder))
            return processed / _move_exclusive(file, folder, names)
        finally:
            os.close(folder)


def _move_exclusive(file: OpenFile, folder: int, names: Iterator[str]) -> str:
    for name in names:
        try:
            os.link(
                file.name,
                name,
                src_dir_fd=file.folder_fd,
                dst_dir_fd=folder,
                follow_symlinks=False,
            )
        except FileExistsError:
            continue
        except FileNotFoundError:
            raise MissingFile(
                file.shown, "not found", f"{file.shown} disappeared before it could be moved"
            ) from None
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                raise
            try:
                _copy_exclusive(file, folder, name)
            except FileExistsError:
                continue
        else:
            linked = os.stat(name, dir_fd=folder, follow_symlinks=False)
            if _identity(linked) != file.identity:
                os.unlink(name, dir_fd=folder)  # what took the name meanwhile stays where it was
                raise FileChanged(
                    file.shown,
                    "replaced while being moved",
                    f"{file.shown} was replaced by another file while it was being moved; "
                    "nothing was taken",
                )
        _fsync(folder)
        _unlink_source(file, folder, name)
        return name
    raise AssertionError("unreachable: the name generator is endless")


def _unlink_source(file: OpenFile, folder: int, name: str) -> None:
    """Remove the source's name once the file has its new one, unless the name no longer names
    the file opened: then another worker took it first, and this claim is undone."""
    try:
        now = os.stat(file.name, dir_fd=file.folder_fd, follow_symlinks=False)
        if _identity(now) != file.identity:
            raise FileNotFoundError(errno.ENOENT, "the name now names another file")
        os.unlink(file.name, dir_fd=file.folder_fd)
    except FileNotFoundError:
        os.unlink(name, dir_fd=folder)  # our second name of a file another worker already took
        raise MissingFile(
            file.shown, "claimed elsewhere", f"{file.shown} was claimed by another worker"
        ) from None
    _fsync(file.folder_fd)


def _copy_exclusive(file: OpenFile, folder: int, name: str) -> None:
    """Copy the opened file's content, mode and times into a new `name` in `folder`."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    out = os.open(name, flags, 0o644, dir_fd=folder)
    try:
        offset = 0
        while chunk := os.pread(file.fd, _CHUNK, offset):
            _write_all(out, chunk)
            offset += len(chunk)
        os.fchmod(out, stat.S_IMODE(file.info.st_mode))
        os.utime(out, ns=(file.info.st_atime_ns, file.info.st_mtime_ns))
        os.fsync(out)
    except BaseException:
        os.close(out)
        os.unlink(name, dir_fd=folder)
        raise
    os.close(out)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync(folder: int) -> None:
    # not supported on some network file systems; the link or rename is done all the same
    with suppress(OSError):
        os.fsync(folder)


def _error_names(name: str, folder: int) -> Iterator[str]:
    stem, suffix = os.path.splitext(name)
    candidates = (name, *(f"{stem}-{n}{suffix}" for n in range(2, 1_000_000)))
    for candidate in candidates:
        try:
            os.stat(sidecar_name(candidate), dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            yield candidate


def sidecar_name(name: str) -> str:
    return f"{name}.error.json"


def move_to_error(path: Path, error_dir: Path, error: Mapping[str, Any]) -> Path:
    """Move `path` into `error_dir` (a free name, never overwriting) with a JSON note beside it.

    The note `<new name>.error.json` holds `error`, when, and where the file came from; it is
    written to a temporary file and renamed, so a reader never sees half of it.
    """
    error_dir.mkdir(parents=True, exist_ok=True)
    original = path.absolute()
    with _opened(path) as file:
        folder = os.open(error_dir, _FOLDER)
        try:
            moved = _move_exclusive(file, folder, _error_names(file.name, folder))
            note = {
                "file": moved,
                "original_path": str(original),
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "error": dict(error),
            }
            body = json.dumps(note, ensure_ascii=False, indent=2, default=str).encode()
            try:
                _write_note(folder, sidecar_name(moved), body)
            except OSError as exc:
                raise FileRejected(
                    file.shown,
                    "error note not written",
                    f"{file.shown} moved to the Error folder as {moved}, but its error note "
                    f"could not be written: {exc.strerror or exc}",
                ) from exc
            _fsync(folder)
        finally:
            os.close(folder)
    return error_dir / moved


def _write_note(folder: int, name: str, body: bytes) -> None:
    temp = f".error-note-{secrets.token_hex(4)}.tmp"  # as short as can be: `name` may be long
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    out = os.open(temp, flags, 0o644, dir_fd=folder)
    try:
        try:
            _write_all(out, body)
            os.fsync(out)
        finally:
            os.close(out)
        os.replace(temp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=folder)
        raise
