"""The scan's way through the folders: inbox → Processed (rename-first) → Error on failure.

956$u is typed by a cataloguer and read from a remote record, so it is treated as untrusted: it
must name a regular file inside the inbox, whatever `..`, absolute paths, URLs or symlinks it
tries. The file is then claimed by moving it to Processed under a new version name
(`<stem>_v01.pdf`, `_v02`, ...) before anything else happens, so a second click, a second worker,
or a cataloguer replacing the scan never works on the same path. On failure it moves on to the
Error folder next to a JSON note saying why; nothing here ever deletes or overwrites a file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from ...errors import ConfigError, ShelfworkError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # two or more letters: "C:" is a drive, not a URL
_DRIVE = re.compile(r"^[A-Za-z]:")
_CHUNK = 1024 * 1024


class FileRejected(ShelfworkError):
    """956$u does not name a file the integration may take; `reason` says why."""

    def __init__(self, path: str, reason: str, message: str | None = None) -> None:
        self.path = path
        self.reason = reason
        super().__init__(message or f"file {path!r} refused: {reason}")


class PathOutsideInbox(FileRejected):
    """The reference points outside the inbox (absolute, `..`, a URL, or a symlink out)."""


class MissingFile(FileRejected):
    """The reference is well-formed but no such file is in the inbox (yet)."""


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


# --- 956$u → a file in the inbox ---------------------------------------------------------------


def resolve_in_inbox(inbox: Path, reference: str) -> Path:
    """The real path of the regular file `reference` (956$u) names inside `inbox`.

    Backslashes count as separators (a reference typed on Windows). Symlinks are followed, and
    allowed as long as where they lead is inside the inbox; the returned path is that real path,
    so what was checked is what gets moved.
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
    try:
        root = inbox.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise FileRejected(shown, f"the inbox {inbox} is not usable: {exc}") from None
    candidate = root.joinpath(*parts)
    try:
        real = candidate.resolve(strict=True)
    except FileNotFoundError:
        raise MissingFile(
            shown, "not found", f"{'/'.join(parts)} not found in inbox {root}"
        ) from None
    except (OSError, RuntimeError) as exc:  # a symlink loop, a permission problem
        raise FileRejected(shown, f"cannot be resolved: {exc}") from None
    if not real.is_relative_to(root):
        raise PathOutsideInbox(shown, f"a symlink leads outside the inbox {root}")
    mode = real.stat().st_mode
    if stat.S_ISDIR(mode):
        raise FileRejected(shown, "a directory, not a file")
    if not stat.S_ISREG(mode):
        raise FileRejected(shown, "not a regular file")
    return real


# --- moving without ever overwriting -----------------------------------------------------------


def _version_names(stem: str, suffix: str, processed: Path) -> Iterator[str]:
    pattern = re.compile(rf"^{re.escape(stem)}_v(\d{{2,}}){re.escape(suffix)}$")
    taken = [int(m.group(1)) for name in os.listdir(processed) if (m := pattern.match(name))]
    number = max(taken, default=0) + 1
    while True:
        yield f"{stem}_v{number:02d}{suffix}"
        number += 1


def claim_into(source: Path, processed: Path) -> Path:
    """Move `source` to `processed/<stem>_vNN.pdf` (the next free version) and return the path.

    The name is taken with `os.link`, which fails if the name exists: two processes claiming
    files with the same stem each get their own version and neither overwrites the other, with
    no window where a claimed name holds a half-written or empty file (an O_EXCL placeholder
    renamed over would show an empty file meanwhile, and leave one behind after a crash). Then
    the inbox name is unlinked; if that fails because it is gone, another worker claimed the
    same file first and this claim is undone. Where hard links are impossible (another file
    system, some network shares) the file is copied into an O_EXCL-created name and fsynced
    before the source is removed.
    """
    processed.mkdir(parents=True, exist_ok=True)
    suffix = source.suffix.lower() or ".pdf"
    stem = source.stem if source.suffix else source.name
    return _move_exclusive(source, processed, _version_names(stem, suffix, processed))


def _move_exclusive(source: Path, folder: Path, names: Iterator[str]) -> Path:
    if not source.is_file():
        raise MissingFile(str(source), "not found", f"{source} not found (moved away meanwhile?)")
    for name in names:
        target = folder / name
        try:
            os.link(source, target, follow_symlinks=False)
        except FileExistsError:
            continue
        except FileNotFoundError:
            raise MissingFile(
                str(source), "not found", f"{source} disappeared before it could be moved"
            ) from None
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                raise
            try:
                _copy_exclusive(source, target)
            except FileExistsError:
                continue
        _fsync_dir(folder)
        try:
            source.unlink()
        except FileNotFoundError:
            target.unlink()  # our second name of a file another worker already took
            raise MissingFile(
                str(source), "claimed elsewhere", f"{source} was claimed by another worker"
            ) from None
        _fsync_dir(source.parent)
        return target
    raise AssertionError("unreachable: the name generator is endless")


def _copy_exclusive(source: Path, target: Path) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, _CHUNK)
            out.flush()
            os.fsync(out.fileno())
        shutil.copystat(source, target)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # not supported here (some network file systems); the rename is still done
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _error_names(name: str, error_dir: Path) -> Iterator[str]:
    stem, suffix = os.path.splitext(name)
    candidates = (name, *(f"{stem}-{n}{suffix}" for n in range(2, 1_000_000)))
    for candidate in candidates:
        if not (error_dir / sidecar_name(candidate)).exists():
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
    moved = _move_exclusive(path, error_dir, _error_names(path.name, error_dir))
    note = {
        "file": moved.name,
        "original_path": str(original),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "error": dict(error),
    }
    body = json.dumps(note, ensure_ascii=False, indent=2, default=str).encode()
    sidecar = error_dir / sidecar_name(moved.name)
    fd, temp = tempfile.mkstemp(dir=error_dir, prefix=f".{moved.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, sidecar)
    except OSError as exc:
        Path(temp).unlink(missing_ok=True)
        raise FileRejected(
            str(path), "error note not written", f"{path} moved to {moved}, but {exc}"
        ) from exc
    _fsync_dir(error_dir)
    return moved


def md5_of(path: Path) -> str:
    """The file's MD5, as DSpace reports a bitstream's checksum (for matching, not security)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
