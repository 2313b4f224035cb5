"""The content-addressed metadata store: each distinct metadata record once per network,
gzipped, keyed by the SHA-256 of its bytes, in the metadata database (`oai_blobs`).

Snapshots of one network mostly hold the same records, so the catalog rows of every snapshot
point at blobs by hash instead of holding copies. The blobs live in the metadata database, not
in files: a harvest page's blobs commit in the same transaction as its catalog rows (a crash
leaves neither half), every host of a scaled-out installation sees them without a shared
filesystem, and storing a page is one bulk insert instead of a file per record (a file per
record ran at a tenth of the parsing speed on ext4: bench/RESULTS.md).
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Mapping, Sequence

from sqlalchemy import Connection, delete, func, select
from sqlalchemy.dialects import postgresql

from ...errors import ShelfworkError
from ...store.database import Store
from ...store.models import OaiBlob

blobs_t = OaiBlob.__table__

#: a network acronym: letters, digits, '-' and '_' only
ACRONYM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: what one stored record may grow to when read back (a gzip bomb stops here)
MAX_RECORD_BYTES = 16 << 20
#: zlib level: 1-2 KB records pack a few percent larger than at 6, about three times faster
#: (compression was a sixth of a harvest's time at 6: bench/oai.py)
LEVEL = 1
_GZIP = 16 + zlib.MAX_WBITS  # gzip framing, so a blob is a valid .gz file if exported
#: hashes looked up per query when reading many blobs
READ_BATCH = 500


class MissingMetadata(ShelfworkError):
    """A catalog row names a blob that is not in the store."""

    def __init__(self, network: str, digest: str) -> None:
        self.network = network
        self.digest = digest
        super().__init__(f"network {network}: metadata {digest} is missing from the store")


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pack(data: bytes) -> bytes:
    return zlib.compress(data, LEVEL, _GZIP)


def unpack(network: str, digest: str, body: bytes) -> bytes:
    inflater = zlib.decompressobj(_GZIP)
    data = inflater.decompress(body, MAX_RECORD_BYTES + 1)
    if len(data) > MAX_RECORD_BYTES:
        raise ShelfworkError(
            f"network {network}: metadata {digest} unpacks to more than "
            f"{MAX_RECORD_BYTES} bytes; refused"
        )
    return data


def packed_all(blobs: Mapping[str, bytes]) -> dict[str, tuple[int, bytes]]:
    """hash -> (size, gzipped bytes) for each of `blobs` (hash -> bytes). zlib lets go of the
    GIL while it compresses, so a fetching thread can do this beside the storing one."""
    return {digest: (len(data), pack(data)) for digest, data in blobs.items()}


class MetadataStore:
    """Blobs of every network in the metadata database."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @staticmethod
    def add(conn: Connection, network: str, datas: Sequence[bytes]) -> list[str]:
        """Store each of `datas` not there yet, in the caller's transaction; their hashes."""
        digests = [digest_of(data) for data in datas]
        MetadataStore.add_packed(conn, network, packed_all(dict(zip(digests, datas, strict=True))))
        return digests

    @staticmethod
    def add_packed(conn: Connection, network: str, blobs: dict[str, tuple[int, bytes]]) -> None:
        """Store what `packed_all` made, in the caller's transaction (known hashes skipped)."""
        if not blobs:
            return
        if conn.dialect.name == "sqlite":  # one executemany on the driver
            conn.exec_driver_sql(
                "INSERT OR IGNORE INTO oai_blobs (network, digest, size, data) VALUES (?, ?, ?, ?)",
                [(network, digest, size, body) for digest, (size, body) in blobs.items()],
            )
            return
        stmt = postgresql.insert(blobs_t).on_conflict_do_nothing(
            index_elements=["network", "digest"]
        )
        rows = [
            {"network": network, "digest": digest, "size": size, "data": body}
            for digest, (size, body) in blobs.items()
        ]
        conn.execute(stmt, rows)

    def put(self, network: str, data: bytes) -> str:
        with self.store.write() as conn:
            return self.add(conn, network, [data])[0]

    def get(self, network: str, digest: str) -> bytes:
        found = self.get_many(network, [digest])
        return found[digest]

    def get_many(
        self, network: str, digests: Sequence[str], *, strict: bool = True
    ) -> dict[str, bytes]:
        """Each hash's metadata; MissingMetadata names the first that is not stored (without
        `strict`, missing ones are left out for the caller to report one by one)."""
        wanted = list(dict.fromkeys(d for d in digests if d))
        found: dict[str, bytes] = {}
        with self.store.read() as conn:
            for start in range(0, len(wanted), READ_BATCH):
                chunk = wanted[start : start + READ_BATCH]
                rows = conn.execute(
                    select(blobs_t.c.digest, blobs_t.c.data).where(
                        blobs_t.c.network == network, blobs_t.c.digest.in_(chunk)
                    )
                ).all()
                for row in rows:
                    found[row.digest] = unpack(network, row.digest, row.data)
        for digest in wanted:
            if strict and digest not in found:
                raise MissingMetadata(network, digest)
        return found

    def count(self, network: str) -> int:
        with self.store.read() as conn:
            return int(
                conn.execute(select(func.count()).where(blobs_t.c.network == network)).scalar_one()
            )

    def contains(self, network: str, digest: str) -> bool:
        with self.store.read() as conn:
            return (
                conn.execute(
                    select(blobs_t.c.digest).where(
                        blobs_t.c.network == network, blobs_t.c.digest == digest
                    )
                ).first()
                is not None
            )

    @staticmethod
    def remove_unreferenced(conn: Connection, network: str, referenced: object) -> int:
        """Delete the network's blobs whose hash is not in `referenced` (a select of hashes)."""
        result = conn.execute(
            delete(blobs_t).where(
                blobs_t.c.network == network,
                blobs_t.c.digest.not_in(referenced),  # type: ignore[arg-type]
            )
        )
        return int(result.rowcount or 0)

    def forget(self, network: str, digest: str) -> None:
        """Remove one blob (tests simulate a lost record with it)."""
        with self.store.write() as conn:
            conn.execute(
                delete(blobs_t).where(blobs_t.c.network == network, blobs_t.c.digest == digest)
            )
