"""Tracker polling rules: interval growth and cap, too-long deadlines, profiles and overrides."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shelfwork.config import StatePolling, load_settings
from shelfwork.errors import TrackerError
from shelfwork.trackers import NOT_POLLED, Poll, StateRule, Tracker, resolve_rules

T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)
DAY = 86400.0


def nothing(entity: object) -> Poll:
    return Poll()


DCB_STATES = ["REQUEST_PLACED_AT_SUPPLYING_AGENCY", "CONFIRMED", "LOANED", "COMPLETED"]
dcb = Tracker(
    "dcb",
    nothing,
    states=DCB_STATES,
    final=["COMPLETED"],
    profiles={
        "live": {
            "REQUEST_PLACED_AT_SUPPLYING_AGENCY": StatePolling(interval=1, too_long_after=56 * DAY),
            "CONFIRMED": {"interval": 600, "factor": 2, "max_interval": 3600},
            "LOANED": {"interval": 6 * 3600, "too_long_after": 56 * DAY},
        },
        "dev": {"REQUEST_PLACED_AT_SUPPLYING_AGENCY": {"interval": 0.01}},
    },
)


def test_interval_grows_by_factor_up_to_the_cap() -> None:
    rule = StateRule(interval=10, factor=2, max_interval=70)
    assert [rule.interval_after(n) for n in range(6)] == [10, 20, 40, 70, 70, 70]
    assert rule.interval_after(10_000) == 70  # no overflow, however long it stays unchanged


def test_fixed_and_absent_intervals() -> None:
    assert StateRule(interval=5).interval_after(50) == 5
    assert StateRule(interval=0, factor=2, max_interval=10).interval_after(3) == 0
    assert NOT_POLLED.interval_after(0) is None
    assert not NOT_POLLED.polled


def test_next_poll_is_the_interval_or_the_too_long_deadline_whichever_comes_first() -> None:
    rule = StateRule(interval=3600, too_long_after=600)
    assert rule.next_poll_at(T0, 0, T0) == T0 + timedelta(seconds=600)
    assert rule.next_poll_at(T0, 0, T0 - timedelta(hours=5)) == T0 - timedelta(hours=5, minutes=-10)
    unpolled = StateRule(too_long_after=60)  # not polled, but still flagged on time
    assert unpolled.next_poll_at(T0, 0, T0) == T0 + timedelta(seconds=60)
    assert StateRule().next_poll_at(T0, 0, T0) is None


def test_too_long_deadline() -> None:
    rule = StateRule(interval=1, too_long_after=56 * DAY)
    assert not rule.is_too_long(T0, T0 + timedelta(days=55, hours=23))
    assert rule.is_too_long(T0, T0 + timedelta(days=56))
    assert not StateRule(interval=1).is_too_long(T0, T0 + timedelta(days=9999))


def test_profiles_pick_the_rules_and_final_states_are_never_polled() -> None:
    live = resolve_rules(dcb, "live", {})
    assert live["REQUEST_PLACED_AT_SUPPLYING_AGENCY"] == StateRule(1, too_long_after=56 * DAY)
    assert live["CONFIRMED"].interval_after(5) == 3600
    assert live["COMPLETED"] is NOT_POLLED
    dev = resolve_rules(dcb, "dev", {})
    assert dev["REQUEST_PLACED_AT_SUPPLYING_AGENCY"].interval == 0.01
    assert not dev["LOANED"].polled  # no rule in this profile: not polled


def test_config_overrides_the_tracker_key_by_key() -> None:
    settings = load_settings(
        env={},
        tracker_profiles={
            "live": {"dcb": {"LOANED": {"interval": 3600}, "COMPLETED": {"interval": 5}}}
        },
    )
    rules = resolve_rules(dcb, "live", settings.tracker_profiles["live"])
    assert rules["LOANED"] == StateRule(3600, too_long_after=56 * DAY)  # too_long_after kept
    assert rules["COMPLETED"] is NOT_POLLED  # final stays final
    # a profile only the config knows
    rules = resolve_rules(dcb, "staging", {"dcb": {"CONFIRMED": StatePolling(interval=30)}})
    assert rules["CONFIRMED"].interval == 30 and not rules["LOANED"].polled


def test_bad_rules_are_refused_with_where_they_are() -> None:
    with pytest.raises(TrackerError, match=r"no polling rules for profile 'staging'.*live"):
        resolve_rules(dcb, "staging", {})
    with pytest.raises(TrackerError, match=r"unknown state\(s\) \['SHIPPED'\]"):
        resolve_rules(dcb, "live", {"dcb": {"SHIPPED": StatePolling(interval=1)}})
    with pytest.raises(TrackerError, match=r"factor 2\.0 needs a max_interval"):
        resolve_rules(dcb, "live", {"dcb": {"LOANED": StatePolling(factor=2)}})
    with pytest.raises(TrackerError, match=r"max_interval 10\.0 is below interval"):
        resolve_rules(dcb, "live", {"dcb": {"CONFIRMED": StatePolling(max_interval=10)}})


def test_tracker_definitions_are_checked() -> None:
    with pytest.raises(TrackerError, match="lists no states"):
        Tracker("empty", nothing, states=[])
    with pytest.raises(TrackerError, match=r"final state\(s\) \['DONE'\]"):
        Tracker("t", nothing, states=["A"], final=["DONE"])
    with pytest.raises(TrackerError, match=r"profile state\(s\) \['B'\]"):
        Tracker("t", nothing, states=["A"], profiles={"live": {"B": {"interval": 1}}})
