"""The batch runner's pure parts: the error-rate rule, checkpoints, dead-letter keys, payloads."""

from __future__ import annotations

import pytest

from shelfwork.batch import (
    KEY_LIMIT,
    PAYLOAD_LIMIT,
    BatchState,
    ErrorRateLimit,
    _item_key,
    payload_summary,
)
from shelfwork.errors import ErrorRateExceeded, ShelfworkError


def test_rate_is_judged_only_after_min_items() -> None:
    limit = ErrorRateLimit(0.1, min_items=20)
    assert not limit.exceeded(failed=19, seen=19)  # everything failed, but too few to judge
    assert limit.exceeded(failed=3, seen=20)
    assert not limit.exceeded(failed=2, seen=20)  # exactly at the limit is allowed


def test_zero_rate_fails_on_the_first_bad_item_and_none_never_fails() -> None:
    assert ErrorRateLimit(0.0, min_items=1).exceeded(1, 1000)
    assert not ErrorRateLimit(0.0, min_items=1).exceeded(0, 1000)
    assert not ErrorRateLimit(None, min_items=1).exceeded(1000, 1000)


@pytest.mark.parametrize("rate", [-0.1, 1.5, 10.0])
def test_rate_must_be_a_fraction(rate: float) -> None:
    with pytest.raises(ShelfworkError, match="between 0 and 1"):
        ErrorRateLimit(rate)


def test_min_items_must_be_positive() -> None:
    with pytest.raises(ShelfworkError, match="min_items"):
        ErrorRateLimit(0.1, min_items=0)


def test_error_rate_message_names_the_numbers() -> None:
    message = str(ErrorRateExceeded(7, 20, 0.2))
    assert message == "7 of 20 items failed (35.0%), over the error-rate limit of 20.0%"


def test_checkpoint_round_trip_and_foreign_checkpoints_are_refused() -> None:
    state = BatchState(position={"token": "abc"}, pages=3, items=30, failed=2, total=100)
    assert BatchState.from_checkpoint(state.to_checkpoint()) == state
    assert BatchState.from_checkpoint(None) == BatchState()
    with pytest.raises(ShelfworkError, match="not written by run_batches"):
        BatchState.from_checkpoint({"offset": 10})


def test_item_keys_are_bounded_and_survive_a_failing_key_function() -> None:
    assert _item_key(str, 42, 0) == "42"
    long = _item_key(lambda item: "x" * 1000, None, 0)
    assert len(long) == KEY_LIMIT and long.endswith("…")

    def broken(item: dict[str, str]) -> str:
        return item["id"]

    assert _item_key(broken, {}, 7).startswith("item #7 (key unavailable: KeyError")


def test_payload_is_kept_when_small_and_truncated_when_large() -> None:
    assert payload_summary({"id": 1, "title": "Émile"}) == {"id": 1, "title": "Émile"}
    assert payload_summary(b"bytes") == "b'bytes'"  # anything not JSON is kept as text
    big = payload_summary({"text": "y" * 10_000})
    assert len(big["truncated"]) == PAYLOAD_LIMIT and big["length"] > 10_000
