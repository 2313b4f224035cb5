"""The batch runner: big jobs as pages of items, one transaction per page, resumable, cancellable.

Used from inside a step:

    def harvest(ctx: StepContext) -> dict[str, Any]:
        def pages(token: str | None) -> Iterator[Page[Record]]:
            while True:
                records, token = oai.list_records(resumption_token=token)  # no transaction open
                yield Page(records, after=token)  # token None: this was the last page
                if token is None:
                    return

        def save(record: Record, tx: Connection) -> None:
            tx.execute(upsert(records_t).values(...))  # in the page's transaction

        return run_batches(ctx, pages, save, key=lambda r: r.identifier).as_dict()

How it holds together:
- `pages(position)` yields `Page`s starting at `position` (None: from the beginning; otherwise
  the `after` of the last committed page). It is advanced outside any transaction, so network
  fetches never hold the database's write lock.
- Each page is one transaction on the metadata database: every item's writes (through `tx`), the
  dead letters of the items that failed, and the step's checkpoint (the position after the page,
  plus the counts) commit together, after a lease check that locks the job row. A job killed
  mid-page leaves nothing of that page behind, and its next run starts exactly after the last
  committed page, so no page is applied twice and none is skipped.
- Each item runs in a savepoint. An item that raises is rolled back alone and recorded as a dead
  letter (item key, reason, a payload summary) in the page's transaction; the run goes on. Errors
  that say the database, the connection or the lease is in trouble (not the item) abort the page.
- After each page, if more than `max_error_rate` of the items seen failed (judged once at least
  `min_items` were seen), the page still commits (its dead letters are the evidence) and the step
  fails with ErrorRateExceeded. The counts that judge the rate then restart, so a retry after a
  fix is not failed by the old errors; the totals keep counting.
- Cancel is checked between pages: the current page commits, then Cancelled is raised; a retry
  of the job continues after that page.
- Progress (items done, of the total when the source or the caller knows it) after each page.

`tx` is a SQLAlchemy Connection. Callers with their own tables in the metadata database write
through it, or bind an ORM Session to it (`Session(bind=tx)`; flush, never commit). `write` lets a
caller supply its own connection factory (e.g. an engine with its own options); it must reach the
metadata database, since the checkpoint and the dead letters are written on the same connection.
While a page is open, write only through `tx`: `ctx.log`, `ctx.warn` and the like open their own
transactions, which on SQLite would wait for this page's own write lock until they time out. On
SQLite a `write` factory should also begin with BEGIN IMMEDIATE, as Store.write does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import InterfaceError, InternalError, OperationalError

from .errors import (
    Cancelled,
    DatabaseUnavailable,
    ErrorRateExceeded,
    LeaseLost,
    ShelfworkError,
    describe,
)
from .jobs import Jobs
from .store.database import Store, utcnow
from .store.models import DeadLetter

if TYPE_CHECKING:
    from .context import StepContext

dead_t = DeadLetter.__table__

T = TypeVar("T")

KEY_LIMIT = 500  # dead_letters.item_key length
PAYLOAD_LIMIT = 2000  # characters of an item kept with its dead letter

# Errors that mean the page cannot go on (the database, connection or lease), not a bad item.
PAGE_FATAL: tuple[type[BaseException], ...] = (
    Cancelled,
    LeaseLost,
    DatabaseUnavailable,
    OperationalError,
    InterfaceError,
    InternalError,
)


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of items from a source.

    `after` is where the next page starts (an offset, a resumption token; JSON), or None when the
    source knows this is the last page. `total` is the number of items in the whole job, if known.
    """

    items: Sequence[T]
    after: Any = None
    total: int | None = None


@dataclass(frozen=True)
class ErrorRateLimit:
    """Fail the job when more than `max_rate` of the items failed, once `min_items` were seen.

    None disables the limit. A small `min_items` lets the first bad item of a run fail it.
    """

    max_rate: float | None = 0.1
    min_items: int = 50

    def __post_init__(self) -> None:
        if self.max_rate is not None and not 0.0 <= self.max_rate <= 1.0:
            raise ShelfworkError(
                f"max_error_rate must be between 0 and 1 (a fraction), got {self.max_rate}"
            )
        if self.min_items < 1:
            raise ShelfworkError(f"min_items must be at least 1, got {self.min_items}")

    def exceeded(self, failed: int, seen: int) -> bool:
        if self.max_rate is None or seen < self.min_items:
            return False
        return failed > self.max_rate * seen


@dataclass
class BatchState:
    """What the step's checkpoint holds between pages (and between runs)."""

    position: Any = None
    pages: int = 0
    items: int = 0
    failed: int = 0
    window_items: int = 0  # items and failures counted for the error rate in this attempt
    window_failed: int = 0
    total: int | None = None
    finished: bool = False

    @classmethod
    def from_checkpoint(cls, value: Any) -> BatchState:
        if value is None:
            return cls()
        if not isinstance(value, dict) or "batch" not in value:
            raise ShelfworkError(
                f"step checkpoint {value!r} was not written by run_batches; a step that runs "
                "batches must not save checkpoints of its own"
            )
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in value["batch"].items() if k in known})

    def to_checkpoint(self) -> dict[str, Any]:
        return {"batch": asdict(self)}


@dataclass(frozen=True)
class BatchSummary:
    """What a batch run did, over all the job's runs so far: a step can return `as_dict()`."""

    pages: int
    items: int
    failed: int
    position: Any
    finished: bool
    resumed: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ItemFailure:
    """An item that raised: what goes into its dead letter."""

    key: str
    reason: str
    payload: Any


def run_batches(
    ctx: StepContext,
    pages: Callable[[Any], Iterable[Page[T]]],
    process: Callable[[T, Connection], Any],
    *,
    key: Callable[[T], str] = str,
    max_error_rate: float | None = 0.1,
    min_items: int = 50,
    total: int | None = None,
    write: Callable[[], AbstractContextManager[Connection]] | None = None,
    after_page: Callable[[Page[T], Connection], None] | None = None,
    savepoints: bool = True,
) -> BatchSummary:
    """Run `process(item, tx)` over every item of every page, one transaction per page.

    `after_page(page, tx)` runs in the page's transaction after its items, before the checkpoint:
    for a caller's own per-page state (bulk writes, running totals) that must commit with it.
    `savepoints=False` skips the per-item savepoint, for a `process` that writes nothing itself
    (a failing item is still dead-lettered, but its own writes would not be rolled back alone).

    Resumes after the last committed page of an earlier run of this step. Raises ErrorRateExceeded
    when too many items fail, Cancelled (after committing the current page) when the job is
    cancelled, LeaseLost when another worker took the job over (the open page is rolled back).
    """
    limit = ErrorRateLimit(max_error_rate, min_items)
    state = BatchState.from_checkpoint(ctx.checkpoint)
    resumed = state.pages > 0 or state.finished
    if total is not None:
        state.total = total
    open_tx = write or ctx.engine.store.write
    owner = ctx._run.owner  # the job's lease owner: the checkpoint write checks it
    if state.finished:
        return _summary(state, resumed)
    if resumed:
        ctx.log.info(
            f"resuming after page {state.pages} ({state.items} items, {state.failed} failed)",
            {"position": state.position},
        )
    source: Iterator[Page[T]] = iter(pages(state.position))
    try:
        _run_pages(ctx, source, process, key, limit, open_tx, owner, state, after_page, savepoints)
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()  # let a generator source release its connections and files now
    if state.failed:
        ctx.warn(f"{state.failed} of {state.items} items failed and were kept as dead letters")
    return _summary(state, resumed)


def _run_pages(
    ctx: StepContext,
    source: Iterator[Page[T]],
    process: Callable[[T, Connection], Any],
    key: Callable[[T], str],
    limit: ErrorRateLimit,
    open_tx: Callable[[], AbstractContextManager[Connection]],
    owner: str,
    state: BatchState,
    after_page: Callable[[Page[T], Connection], None] | None = None,
    savepoints: bool = True,
) -> None:
    """Page after page until the source ends, a page says it is the last, or the job stops."""
    while True:
        if ctx.cancelled():
            raise Cancelled(
                f"job {ctx.job_id} cancelled; step {ctx.step!r} stopped after page {state.pages} "
                f"({state.items} items); a retry continues from there"
            )
        page = next(source, None)
        if page is None:
            _finish(ctx, open_tx, owner, state)
            return
        _check_page(ctx, page)
        with open_tx() as tx:
            failures = _run_page(page, process, key, tx, savepoints)
            if after_page is not None:
                after_page(page, tx)
            _count(state, page, failures)
            exceeded = limit.exceeded(state.window_failed, state.window_items)
            if failures:
                _dead_letters(tx, ctx, failures)
            checkpoint = state.to_checkpoint()
            if exceeded:  # the next attempt judges the rate afresh
                checkpoint["batch"].update(window_items=0, window_failed=0)
            Jobs.save_checkpoint_in(tx, ctx.job_id, owner, ctx.step, checkpoint)
        ctx.checkpoint = checkpoint
        _report(ctx, state)
        if exceeded:
            raise ErrorRateExceeded(state.window_failed, state.window_items, limit.max_rate or 0.0)
        if state.finished:
            return


def _run_page(
    page: Page[T],
    process: Callable[[T, Connection], Any],
    key: Callable[[T], str],
    tx: Connection,
    savepoints: bool = True,
) -> list[ItemFailure]:
    """Each item in its own savepoint: a bad item is rolled back alone and reported."""
    failures: list[ItemFailure] = []
    for index, item in enumerate(page.items):
        try:
            if savepoints:
                with tx.begin_nested():
                    process(item, tx)
            else:
                process(item, tx)
        except PAGE_FATAL:
            raise
        except Exception as exc:
            failures.append(
                ItemFailure(_item_key(key, item, index), describe(exc), payload_summary(item))
            )
    return failures


def _check_page(ctx: StepContext, page: Any) -> None:
    """Catch source bugs before the page's transaction, with a message that names them."""
    if not isinstance(page, Page):
        raise ShelfworkError(
            f"step {ctx.step!r}: the pages source yielded {type(page).__name__}, not a Page"
        )
    try:
        json.dumps(page.after)
    except (TypeError, ValueError) as exc:
        raise ShelfworkError(
            f"step {ctx.step!r}: page position {page.after!r} is not JSON, so it cannot be "
            f"checkpointed: {exc}"
        ) from None


def _count(state: BatchState, page: Page[Any], failures: list[ItemFailure]) -> None:
    n, bad = len(page.items), len(failures)
    state.pages += 1
    state.items += n
    state.failed += bad
    state.window_items += n
    state.window_failed += bad
    if page.total is not None:
        state.total = page.total
    state.position = page.after
    state.finished = page.after is None


def _dead_letters(tx: Connection, ctx: StepContext, failures: list[ItemFailure]) -> None:
    now = utcnow()
    tx.execute(
        insert(dead_t),
        [
            {
                "job_id": ctx.job_id,
                "pipeline": ctx.pipeline,
                "step": ctx.step,
                "item_key": f.key,
                "reason": f.reason,
                "payload": f.payload,
                "created_at": now,
            }
            for f in failures
        ],
    )


def _finish(
    ctx: StepContext,
    open_tx: Callable[[], AbstractContextManager[Connection]],
    owner: str,
    state: BatchState,
) -> None:
    """The source ran dry without naming a last page: record that, so a resume does not re-read."""
    state.finished = True
    checkpoint = state.to_checkpoint()
    with open_tx() as tx:
        Jobs.save_checkpoint_in(tx, ctx.job_id, owner, ctx.step, checkpoint)
    ctx.checkpoint = checkpoint
    _report(ctx, state)


def _report(ctx: StepContext, state: BatchState) -> None:
    message = f"{state.pages} pages, {state.items} items, {state.failed} failed"
    if state.finished:
        message += "; done"
    ctx.progress(state.items, state.total, message, force=True)


def _summary(state: BatchState, resumed: bool) -> BatchSummary:
    return BatchSummary(
        pages=state.pages,
        items=state.items,
        failed=state.failed,
        position=state.position,
        finished=state.finished,
        resumed=resumed,
    )


def _item_key(key: Callable[[Any], str], item: Any, index: int) -> str:
    try:
        value = str(key(item))
    except Exception as exc:  # a key function that fails on a bad item must not lose the item
        value = f"item #{index} (key unavailable: {describe(exc)})"
    return value if len(value) <= KEY_LIMIT else value[: KEY_LIMIT - 1] + "…"


def payload_summary(item: Any) -> Any:
    """The item as JSON if it is small, else the start of its text: enough to find it again."""
    try:
        text = json.dumps(item, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        text = json.dumps(repr(item), ensure_ascii=False)
    if len(text) <= PAYLOAD_LIMIT:
        return json.loads(text)
    return {"truncated": text[:PAYLOAD_LIMIT], "length": len(text)}


@dataclass(frozen=True)
class DeadLetterView:
    id: int
    job_id: int | None
    pipeline: str | None
    step: str | None
    item_key: str
    reason: str
    payload: Any
    created_at: datetime


def dead_letters(
    store: Store, job_id: int | None = None, *, step: str | None = None, limit: int = 1000
) -> list[DeadLetterView]:
    """Dead letters, oldest first, optionally of one job (and step)."""
    q = select(dead_t).order_by(dead_t.c.id).limit(limit)
    if job_id is not None:
        q = q.where(dead_t.c.job_id == job_id)
    if step is not None:
        q = q.where(dead_t.c.step == step)
    with store.read() as conn:
        return [DeadLetterView(**r._mapping) for r in conn.execute(q).all()]
