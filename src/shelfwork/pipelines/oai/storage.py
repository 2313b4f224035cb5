"""The content-addressed metadata store: each distinct metadata record once, gzipped, by hash.

Snapshots of one network mostly hold the same records, so the catalog rows of every snapshot
point at blobs `{root}/{NETWORK}/metadata/ab/cd/{sha256}.xml.gz` instead of holding copies.
A blob is written to a temporary file and renamed into place, so a crash never leaves half a
blob under a hash name, and two writers of the same record agree on its content by definition.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from ...errors import ShelfworkError

#: a network acronym becomes a folder name: letters, digits, '-' and '_' only
ACRONYM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_HASH = re.compile(r"^[0-9a-f]{64}$")
#: what one stored record may grow to when read back (a gzip bomb stops here)
MAX_RECORD_BYTES = 16 << 20


class MissingMetadata(ShelfworkError):
    """A catalog row names a blob that is not in the store (deleted by hand, or a lost disk)."""

    def __init__(self, network: str, digest: str, path: Path) -> None:
        self.network = network
        self.digest = digest
        super().__init__(f"network {network}: metadata {digest} is missing from the store ({path})")


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class MetadataStore:
    """Blobs under one root folder; every path is derived from a checked acronym and hash."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def _folder(self, network: str) -> Path:
        if not ACRONYM.match(network):
            raise ShelfworkError(
                f"network acronym {network!r} must be letters, digits, '-' or '_' (max 64)"
            )
        return self.root / network / "metadata"

    def path(self, network: str, digest: str) -> Path:
        if not _HASH.match(digest):
            raise ShelfworkError(f"{digest!r} is not a SHA-256 hex digest")
        return self._folder(network) / digest[:2] / digest[2:4] / f"{digest}.xml.gz"

    def put(self, network: str, data: bytes) -> str:
        """Store `data` (if not there yet) and return its hash."""
        digest = digest_of(data)
        target = self.path(network, digest)
        if target.exists():
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".gz")
        try:
            with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
                gz.write(data)
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return digest

    def get(self, network: str, digest: str) -> bytes:
        target = self.path(network, digest)
        try:
            with gzip.open(target, "rb") as gz:
                data = gz.read(MAX_RECORD_BYTES + 1)
        except FileNotFoundError:
            raise MissingMetadata(network, digest, target) from None
        if len(data) > MAX_RECORD_BYTES:
            raise ShelfworkError(
                f"network {network}: metadata {digest} unpacks to more than "
                f"{MAX_RECORD_BYTES} bytes; refused"
            )
        return data

    def digests(self, network: str) -> Iterator[str]:
        folder = self._folder(network)
        if not folder.is_dir():
            return
        for path in folder.glob("*/*/*.xml.gz"):
            name = path.name.removesuffix(".xml.gz")
            if _HASH.match(name):
                yield name

    def remove_unreferenced(self, network: str, referenced: Iterable[str]) -> int:
        """Delete the network's blobs no catalog or index entry names; returns how many."""
        keep = set(referenced)
        removed = 0
        for digest in list(self.digests(network)):
            if digest not in keep:
                self.path(network, digest).unlink(missing_ok=True)
                removed += 1
        return removed
