"""The dashboard's charts on known data: percentiles, hourly buckets, axis ticks, and the SVG
they draw (parsed back, so it must be well-formed and every number can be checked)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from shelfwork.dashboard.charts import (
    FinishedJob,
    Hour,
    durations_svg,
    hourly,
    per_pipeline,
    percentile,
    throughput_svg,
    ticks,
    timeline_svg,
    window_start,
)
from shelfwork.dashboard.i18n import Translator

SVG = "{http://www.w3.org/2000/svg}"
NOW = datetime(2024, 5, 1, 12, 34, 56, tzinfo=UTC)
EN = Translator("en")


def parse(markup: str) -> ET.Element:
    return ET.fromstring(str(markup))


def pct(value: str) -> float:
    assert value.endswith("%"), value
    return float(value[:-1])


def job(
    state: str, finished_minutes_ago: float, seconds: float | None, pipeline: str = "p"
) -> FinishedJob:
    finished = NOW - timedelta(minutes=finished_minutes_ago)
    started = None if seconds is None else finished - timedelta(seconds=seconds)
    return FinishedJob(pipeline, state, started, finished)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([15, 20, 35, 40, 50], 5, 15),
        ([15, 20, 35, 40, 50], 30, 20),
        ([15, 20, 35, 40, 50], 40, 20),
        ([15, 20, 35, 40, 50], 50, 35),
        ([15, 20, 35, 40, 50], 100, 50),
        (list(range(1, 101)), 95, 95),
        (list(range(100, 0, -1)), 50, 50),
        ([3.5], 95, 3.5),
        ([], 50, None),
    ],
)
def test_percentiles_are_nearest_rank(
    values: list[float], q: float, expected: float | None
) -> None:
    assert percentile(values, q) == expected


@pytest.mark.parametrize(
    ("peak", "whole", "expected"),
    [
        (0, True, [0, 1]),
        (1, True, [0, 1]),
        (7, True, [0, 2, 4, 6, 8]),
        (10, True, [0, 5, 10]),
        (100, False, [0, 50, 100]),
        (0.37, False, [0, 0.1, 0.2, 0.3, 0.4]),
        (12, False, [0, 5, 10, 15]),
    ],
)
def test_axis_ticks_are_round_and_cover_the_peak(
    peak: float, whole: bool, expected: list[float]
) -> None:
    assert ticks(peak, whole=whole) == pytest.approx(expected)


def test_jobs_fall_into_the_hour_they_finished() -> None:
    assert window_start(NOW) == datetime(2024, 4, 30, 13, 0, tzinfo=UTC)
    jobs = [
        job("succeeded", 0, 10),  # this hour (12:00)
        job("succeeded", 30, 20),  # 12:04 -> this hour
        job("failed", 40, 40),  # 11:54 -> 11:00
        job("cancelled", 40, 5),  # counted, but not timed
        job("cancelled", 41, None),  # cancelled while queued
        job("succeeded", 23 * 60 + 30, 1),  # 13:04 yesterday: the first bucket
        job("succeeded", 24 * 60, 1),  # 12:34 yesterday: outside
    ]
    hours = hourly(jobs, NOW)
    assert len(hours) == 24 and hours[-1].start == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert hours[-1].counts == {"succeeded": 2} and sorted(hours[-1].durations) == [10, 20]
    assert hours[-2].counts == {"failed": 1, "cancelled": 2} and hours[-2].durations == [40]
    assert hours[0].counts == {"succeeded": 1}
    assert sum(h.total for h in hours) == 6
    assert (hours[-1].p50, hours[-1].p95, hours[5].p50) == (10, 20, None)


def test_durations_per_pipeline() -> None:
    jobs = [
        job("succeeded", 1, 10, "koha"),
        job("succeeded", 2, 30, "koha"),
        job("failed", 3, 90, "koha"),
        job("cancelled", 4, 500, "koha"),
        job("succeeded", 5, 7, "oai"),
    ]
    koha, oai = per_pipeline(jobs)
    assert (koha.pipeline, koha.finished, koha.failed, koha.p50, koha.p95) == ("koha", 4, 1, 30, 90)
    assert (oai.pipeline, oai.finished, oai.failed, oai.p50, oai.p95) == ("oai", 1, 0, 7, 7)


def test_throughput_bars_stack_to_their_counts() -> None:
    start = window_start(NOW)
    hours = [Hour(start + timedelta(hours=i)) for i in range(24)]
    hours[3].counts = {"succeeded": 3, "failed": 1}
    hours[10].counts = {"succeeded": 8}
    hours[23].counts = {"cancelled": 2}
    svg = parse(throughput_svg(hours, EN))
    bars = svg.findall(f"{SVG}rect[@class]")
    bars = [b for b in bars if b.get("class", "").startswith("bar ")]
    assert [(b.get("data-hour"), b.get("class"), b.get("data-count")) for b in bars] == [
        (hours[3].start.isoformat(), "bar bar-succeeded", "3"),
        (hours[3].start.isoformat(), "bar bar-failed", "1"),
        (hours[10].start.isoformat(), "bar bar-succeeded", "8"),
        (hours[23].start.isoformat(), "bar bar-cancelled", "2"),
    ]
    height = {b.get("class"): float(b.get("height", 0)) for b in bars[:2]}
    tallest = float(bars[2].get("height", 0))
    # The axis tops at 8 (ticks 0, 2, 4, 6, 8): the 8-job hour fills the plot, 3 jobs fill 3/8.
    assert height["bar bar-succeeded"] == pytest.approx(tallest * 3 / 8, abs=0.02)
    assert height["bar bar-failed"] == pytest.approx(tallest / 8, abs=0.02)
    succeeded, failed = bars[0], bars[1]
    assert float(failed.get("y", 0)) + float(failed.get("height", 0)) == pytest.approx(
        float(succeeded.get("y", 0)), abs=0.02
    )  # stacked: failed sits on succeeded
    xs = [pct(b.get("x", "")) for b in bars]
    assert xs[0] == xs[1] < xs[2] < xs[3] < 100
    assert pct(bars[3].get("width", "")) == pytest.approx(100 / 24 * 0.7, abs=0.01)
    title = succeeded.find(f"{SVG}title")
    assert title is not None and title.text == "16:00: succeeded 3"
    labels = [t.text for t in svg.iter(f"{SVG}text")]
    assert "15:00" in labels and "12:00" in labels and "8" in labels


def test_duration_lines_join_neighbouring_hours_and_break_at_gaps() -> None:
    start = window_start(NOW)
    hours = [Hour(start + timedelta(hours=i)) for i in range(24)]
    hours[0].durations = [10.0, 20.0, 30.0]
    hours[1].durations = [40.0]
    hours[5].durations = [5.0, 100.0]
    svg = parse(durations_svg(hours, EN))
    points = {
        (c.get("class"), c.get("data-hour")): float(c.get("data-seconds", 0))
        for c in svg.iter(f"{SVG}circle")
    }
    assert points == {
        ("point point-p50", hours[0].start.isoformat()): 20.0,
        ("point point-p95", hours[0].start.isoformat()): 30.0,
        ("point point-p50", hours[1].start.isoformat()): 40.0,
        ("point point-p95", hours[1].start.isoformat()): 40.0,
        ("point point-p50", hours[5].start.isoformat()): 5.0,
        ("point point-p95", hours[5].start.isoformat()): 100.0,
    }
    joined = [line for line in svg.iter(f"{SVG}line") if line.get("stroke-width") == "2"]
    assert len(joined) == 2  # hour 0 to hour 1, once per line; hour 5 stands alone
    cy = {
        (c.get("class"), c.get("data-hour")): float(c.get("cy", 0))
        for c in svg.iter(f"{SVG}circle")
    }
    h5 = hours[5].start.isoformat()
    assert cy[("point point-p95", h5)] < cy[("point point-p50", h5)]  # longer is higher up


@dataclass
class Step:
    name: str
    branch: str | None
    state: str
    started_at: datetime | None
    finished_at: datetime | None


def test_the_timeline_puts_each_step_on_the_time_axis() -> None:
    t0 = NOW - timedelta(seconds=10)
    steps = [
        Step("fetch", None, "succeeded", t0, t0 + timedelta(seconds=2)),
        Step(
            "cover", "cover_branch", "failed", t0 + timedelta(seconds=2), t0 + timedelta(seconds=3)
        ),
        Step("deposit <b>", "dspace", "running", t0 + timedelta(seconds=2), None),
        Step("finalize", None, "pending", None, None),
    ]
    svg = parse(timeline_svg(steps, t0, NOW, EN))
    bars = {r.get("data-step"): r for r in svg.iter(f"{SVG}rect")}
    assert set(bars) == {"fetch", "cover", "deposit <b>"}  # the pending step has no bar
    # 10 s of job: the axis runs to 10 s (ticks 0, 5, 10).
    assert pct(bars["fetch"].get("x", "")) == 0
    assert pct(bars["fetch"].get("width", "")) == pytest.approx(20)
    assert pct(bars["cover"].get("x", "")) == pytest.approx(20)
    assert pct(bars["cover"].get("width", "")) == pytest.approx(10)
    running = bars["deposit <b>"]
    assert running.get("data-state") == "running" and running.get("data-seconds") == "8"
    assert pct(running.get("x", "")) + pct(running.get("width", "")) == pytest.approx(100)
    assert float(bars["cover"].get("y", 0)) > float(bars["fetch"].get("y", 0))
    words = " ".join("".join(t.itertext()) for t in svg.iter(f"{SVG}text"))
    assert "cover_branch · failed · 1.0 s" in words and "finalize pending" in words
    assert "+0.0 s" in words and "+10 s" in words
    assert "<b>" in words  # escaped in the markup, so it parsed back as text


def test_a_timeline_before_any_step_ran_is_still_valid() -> None:
    svg = parse(timeline_svg([Step("first", None, "pending", None, None)], None, NOW, EN))
    assert not list(svg.iter(f"{SVG}rect"))
