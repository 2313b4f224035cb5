"""The content-addressed metadata store in the metadata database: one blob per distinct record
and network, gzipped, read back intact; missing and oversized blobs refused with a clear error;
unreferenced blobs removed."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from shelfwork.errors import ShelfworkError
from shelfwork.pipelines.oai.snapshots import networks_t
from shelfwork.pipelines.oai.storage import (
    MAX_RECORD_BYTES,
    MetadataStore,
    MissingMetadata,
    blobs_t,
    digest_of,
)
from shelfwork.store.database import Store, utcnow


@pytest.fixture
def store(tmp_path: Path) -> Store:
    made = Store(f"sqlite:///{tmp_path / 'blobs.db'}")
    made.upgrade()
    now = utcnow()
    with made.write() as conn:
        for acronym in ("A", "B"):
            conn.execute(
                insert(networks_t).values(
                    acronym=acronym,
                    name=acronym,
                    base_url="http://x",
                    created_at=now,
                    updated_at=now,
                )
            )
    return made


def test_blobs_are_shared_gzipped_and_read_back(store: Store) -> None:
    blobs = MetadataStore(store)
    record = "<dc>Cañón — Жёлтый</dc>".encode()
    with store.write() as conn:
        digests = MetadataStore.add(conn, "A", [record, record, b"<dc>other</dc>"])
    assert digests[0] == digests[1] == digest_of(record)
    assert blobs.count("A") == 2
    assert blobs.put("A", record) == digest_of(record)  # already there: nothing new
    assert blobs.count("A") == 2 and blobs.count("B") == 0
    with store.read() as conn:
        body = conn.execute(select(blobs_t.c.data).where(blobs_t.c.digest == digests[0])).scalar()
    assert gzip.decompress(body) == record  # a plain .gz member
    assert blobs.get("A", digests[0]) == record
    with pytest.raises(MissingMetadata, match=r"network B: metadata .* is missing"):
        blobs.get("B", digests[0])  # per network
    assert blobs.get_many("B", [digests[0]], strict=False) == {}


def test_a_blob_that_unpacks_too_large_is_refused(store: Store) -> None:
    huge = zlib.compress(b"x" * (MAX_RECORD_BYTES + 10), 9, 16 + zlib.MAX_WBITS)
    with store.write() as conn:
        conn.execute(insert(blobs_t).values(network="A", digest="f" * 64, size=1, data=huge))
    with pytest.raises(ShelfworkError, match="unpacks to more than"):
        MetadataStore(store).get("A", "f" * 64)


def test_unreferenced_blobs_are_removed(store: Store) -> None:
    blobs = MetadataStore(store)
    keep, drop = blobs.put("A", b"<keep/>"), blobs.put("A", b"<drop/>")
    other = blobs.put("B", b"<drop/>")
    with store.write() as conn:
        removed = MetadataStore.remove_unreferenced(
            conn, "A", select(blobs_t.c.digest).where(blobs_t.c.digest == keep)
        )
    assert removed == 1
    assert blobs.contains("A", keep) and not blobs.contains("A", drop)
    assert blobs.contains("B", other)


def test_deleting_a_network_takes_its_snapshots_entries_and_blobs(store: Store) -> None:
    from shelfwork.pipelines.oai.snapshots import Networks, Snapshots, entries_t, records_t

    blobs = MetadataStore(store)
    mine, theirs = blobs.put("A", b"<a/>"), blobs.put("B", b"<b/>")
    snapshot = Snapshots(store).create(
        "A", incremental=False, previous_id=None, job_id=None, harvest_from=None, identify=None
    )
    with store.write() as conn:
        conn.execute(
            insert(records_t).values(
                snapshot_id=snapshot, identifier="oai:a:1", datestamp="2024", metadata_hash=mine
            )
        )
        conn.execute(
            insert(entries_t).values(
                network="A", target="oai", identifier="oai:a:1", changed_at=utcnow()
            )
        )
    Networks(store).delete("A")
    with store.read() as conn:
        assert conn.execute(select(records_t)).all() == []
        assert conn.execute(select(entries_t)).all() == []
    assert Snapshots(store).list("A") == []
    assert not blobs.contains("A", mine) and blobs.contains("B", theirs)
