"""The VALIDATE action's pipeline, `oai-validate`: transform and validate a snapshot's records.

    begin (pick the newest harvested snapshot, load the rule sets) -> validate (page by page)
        -> finish (the snapshot becomes the last good known) -> hand_over

Each record is read from the store, parsed (the trust boundary: no DTDs, UTF-8 only), run
through the network's transformer set, then judged by its rule set. What is published is the
transformed metadata, stored by hash like the original. A record that cannot be read or
transformed is marked invalid with its reason and dead-lettered; the run goes on. Every page
commits its rows and the snapshot's running statistics together, so a resumed run neither
loses nor double-counts a record.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, update

from ...batch import Page as BatchPage
from ...batch import run_batches
from ...context import StepContext
from ...errors import describe
from ...pipeline import Pipeline, step
from ...store.database import utcnow
from .actions import HAND_OVER_RETRY, NetworkParams, hand_over, network_context
from .config import OaiConfig, oai_config
from .record import MetadataRecord
from .snapshots import (
    HARVEST_DONE,
    VALID,
    VALIDATING,
    VALIDATION_FAILED,
    Network,
    Networks,
    Snapshots,
    records_t,
)
from .storage import MetadataStore, MissingMetadata, digest_of, packed_all
from .transform import (
    TransformContext,
    TransformerSet,
    TransformFailed,
    TransformStats,
    apply,
)
from .validation import RuleSet, UrlChecker, ValidationStats, validate

_ROW_UPDATE = (
    update(records_t)
    .where(
        records_t.c.snapshot_id == bindparam("s_id"),
        records_t.c.identifier == bindparam("s_identifier"),
    )
    .values(
        valid=bindparam("valid"),
        transformed=bindparam("transformed"),
        published_hash=bindparam("published_hash"),
        published_identifier=bindparam("published_identifier"),
        failed_rules=bindparam("failed_rules"),
        problem=bindparam("problem"),
    )
)


#: bytes of each rules-folder file that count for the fingerprint
FINGERPRINT_LIMIT = 16 << 20


class ValidateParams(NetworkParams):
    pass


def rule_sets(network: Network, config: OaiConfig) -> tuple[RuleSet, TransformerSet | None]:
    """The network's rule set (none: every readable record is valid) and transformer set."""
    folder = config.rules_dir
    ruleset = (
        RuleSet.load(folder / network.validation, rules_dir=folder)
        if network.validation
        else RuleSet(name="(no rules)", rules=[])
    )
    transformers = (
        TransformerSet.load(folder / network.transformation, rules_dir=folder)
        if network.transformation
        else None
    )
    return ruleset, transformers


def rules_fingerprint(network: Network, config: OaiConfig) -> str:
    """What the verdicts depend on besides the records: the network's choice of sets, the
    detailed flag, and every file in the rules folder (vocabularies included)."""
    digest = hashlib.sha256()
    chosen = (network.validation, network.transformation, network.on("detailed_diagnose"))
    digest.update(repr(chosen).encode())
    folder = config.rules_dir
    if folder.is_dir():
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(folder)).encode() + b"\0")
            digest.update(path.read_bytes()[:FINGERPRINT_LIMIT])
    return digest.hexdigest()[:16]


def begin(ctx: StepContext) -> dict[str, Any]:
    network = Networks(ctx.engine.store).get(ctx.params.network)
    snapshots = Snapshots(ctx.engine.store)
    row = snapshots.latest(network.acronym, HARVEST_DONE)
    if row is None:
        ctx.warn(f"network {network.acronym}: no finished harvest to validate")
        return {"snapshot": None}
    config = oai_config(ctx.engine.settings)
    ruleset, _ = rule_sets(network, config)  # broken sets fail here
    label = f"{ruleset.name} [{rules_fingerprint(network, config)}]"
    if row.state == VALID and row.ruleset == label:
        # nothing new was harvested (an empty incremental harvest) and the rules are the same
        ctx.log.info(f"snapshot {row.id} is already validated with these rules; nothing to do")
        return {"snapshot": None, "unchanged": row.id}
    snapshots.set(
        row.id,
        state=VALIDATING,
        ruleset=label,
        valid=0,
        invalid=0,
        transformed=0,
        stats=None,
        error=None,
        validated_at=None,
    )
    snapshots.log(row.id, f"validation with rule set {ruleset.name!r} started")
    return {"snapshot": row.id}


def validate_records(ctx: StepContext) -> dict[str, Any] | None:
    snapshot_id = ctx.results["begin"]["snapshot"]
    if snapshot_id is None:
        return None
    network = Networks(ctx.engine.store).get(ctx.params.network)
    config = oai_config(ctx.engine.settings)
    ruleset, transformers = rule_sets(network, config)
    blobs = MetadataStore(ctx.engine.store)
    snapshots = Snapshots(ctx.engine.store)
    snapshot = snapshots.get(snapshot_id)
    detailed = network.on("detailed_diagnose")
    resumed = ctx.checkpoint is not None and snapshot.stats
    if resumed:
        stats = ValidationStats.model_validate(snapshot.stats["validation"])
        changes = TransformStats.model_validate(snapshot.stats["transformation"])
    else:
        stats = ValidationStats.for_ruleset(ruleset, detailed=detailed)
        changes = (
            TransformStats.for_transformers(transformers) if transformers else TransformStats()
        )
    context = TransformContext(
        network_acronym=network.acronym,
        network_name=network.name,
        repository_name=(snapshot.identify or {}).get("repository_name") or network.name,
        base_url=network.base_url,
        harvested_at=snapshot.started_at or utcnow(),
        metadata_prefix=network.metadata_prefix,
    )
    checker = UrlChecker() if ruleset.needs_urls() else None
    namespaces = ruleset.namespace_table()
    year = datetime.now().year
    updates: list[dict[str, Any]] = []
    published_now: dict[str, bytes] = {}  # transformed metadata by hash, stored with its page
    metadata: dict[str, bytes] = {}  # the page's stored metadata, read before its transaction

    def pages(position: Any) -> Any:
        after = position
        while True:
            rows = snapshots.records(
                snapshot_id, after=after, limit=config.batch, include_deleted=False
            )
            if not rows:
                return
            after = rows[-1].identifier
            last = len(rows) < config.batch
            metadata.clear()
            metadata.update(
                blobs.get_many(network.acronym, [r.metadata_hash for r in rows], strict=False)
            )
            yield BatchPage(rows, after=None if last else after, total=snapshot.total or None)
            if last:
                return

    def judge(row: Any, _tx: Any) -> None:
        result = {
            "s_id": snapshot_id,
            "s_identifier": row.identifier,
            "transformed": False,
            "published_hash": None,
            "published_identifier": None,
            "failed_rules": None,
        }
        try:
            data = metadata.get(row.metadata_hash or "")
            if data is None:
                raise MissingMetadata(network.acronym, str(row.metadata_hash))
            record = MetadataRecord.parse(data, row.identifier, namespaces=namespaces)
            changed = False
            identifier = row.identifier
            if transformers is not None:
                try:
                    outcome = apply(record, transformers, context)
                except TransformFailed as exc:
                    changes.add_failure(exc)
                    raise
                changes.add(outcome)
                changed = outcome.changed
                identifier = outcome.identifier
            verdict = validate(
                record, ruleset, url_checker=checker, year=year, keep_occurrences=detailed
            )
        except Exception as exc:
            updates.append({**result, "valid": False, "problem": describe(exc)})
            raise
        stats.add(verdict)
        published = row.metadata_hash
        if changed:
            data = record.to_bytes()
            published = digest_of(data)
            published_now[published] = data
        updates.append(
            {
                **result,
                "valid": verdict.valid,
                "transformed": changed,
                "published_hash": published,
                "published_identifier": identifier if identifier != row.identifier else None,
                "failed_rules": verdict.failed_mandatory or None,
                "problem": None,
            }
        )

    def save_page(page: BatchPage[Any], tx: Any) -> None:
        try:
            MetadataStore.add_packed(tx, network.acronym, packed_all(published_now))
            if updates:
                tx.execute(_ROW_UPDATE, updates)
            snapshots.set(
                snapshot_id,
                tx,
                valid=stats.valid,
                invalid=stats.invalid,
                transformed=changes.transformed,
                stats={
                    "validation": stats.model_dump(mode="json"),
                    "transformation": changes.model_dump(mode="json"),
                },
            )
        finally:
            updates.clear()
            published_now.clear()

    try:
        summary = run_batches(
            ctx,
            pages,
            judge,
            key=lambda row: row.identifier,
            max_error_rate=0.5,
            min_items=200,
            after_page=save_page,
            savepoints=False,
        )
    finally:
        if checker is not None:
            checker.close()
    return summary.as_dict()


def finish(ctx: StepContext) -> dict[str, Any] | None:
    snapshot_id = ctx.results["begin"]["snapshot"]
    if snapshot_id is None:
        return None
    snapshots = Snapshots(ctx.engine.store)
    counts = snapshots.verdicts(snapshot_id)  # unreadable records count as invalid too
    snapshots.set(snapshot_id, state=VALID, validated_at=utcnow(), finished_at=utcnow(), **counts)
    snapshots.log(
        snapshot_id,
        f"validated: {counts['valid']} valid, {counts['invalid']} invalid, "
        f"{counts['transformed']} transformed; now the network's last good known snapshot",
    )
    return {"snapshot": snapshot_id, **counts}


def on_failure(ctx: StepContext, exc: BaseException) -> None:
    started = ctx.results.get("begin") or {}
    snapshot_id = started.get("snapshot")
    if snapshot_id is None:
        return
    snapshots = Snapshots(ctx.engine.store)
    if snapshots.get(snapshot_id).state != VALIDATING:
        return
    snapshots.set(snapshot_id, state=VALIDATION_FAILED, error=describe(exc))
    snapshots.log(snapshot_id, f"validation failed: {describe(exc)}", "error")


pipeline = Pipeline(
    "oai-validate",
    params=ValidateParams,
    system="oai",
    description="Transform and validate a network's newest harvested snapshot",
    context=network_context,
    steps=[
        step(begin),
        step(validate_records, name="validate"),
        step(finish),
        step(hand_over, retry=HAND_OVER_RETRY),
    ],
    compensate=on_failure,
)
