"""Charts drawn on the server as inline SVG: jobs finished per hour and their durations (p50, p95)
over the last 24 hours, and a job's steps as bars on a time axis.

No JavaScript draws anything: a chart is a function of rows from the jobs table, so it is tested
like any other function and shows the same in every browser. Colours are SVG attributes (not
inline styles), so the pages' Content-Security-Policy needs no 'unsafe-inline'.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from html import escape
from typing import Protocol

from markupsafe import Markup
from sqlalchemy import select

from ..store.database import Store
from ..store.models import FINAL_STATES, Job
from .i18n import Translator, span

jobs_t = Job.__table__

COLOURS = {
    "succeeded": "#2f855a",
    "failed": "#c53030",
    "cancelled": "#718096",
    "running": "#2b6cb0",
    "queued": "#a0aec0",
    "pending": "#cbd5e0",
    "skipped": "#cbd5e0",
    "p50": "#2b6cb0",
    "p95": "#d69e2e",
}
STACK = ("succeeded", "failed", "cancelled")
TIMED_STATES = ("succeeded", "failed")  # cancelled runs stop early and would skew durations
FONT = 12
AXIS_COLOUR = "#4a5568"
COLOURS_TEXT = "#1a202c"
GRID_COLOUR = "#e2e8f0"


@dataclass(frozen=True)
class FinishedJob:
    pipeline: str
    state: str
    started_at: datetime | None
    finished_at: datetime

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        return max(0.0, (self.finished_at - self.started_at).total_seconds())


@dataclass
class Hour:
    """One hour of finished jobs: counts by final state and the durations of timed ones."""

    start: datetime
    counts: dict[str, int] = field(default_factory=dict)
    durations: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def p50(self) -> float | None:
        return percentile(self.durations, 50)

    @property
    def p95(self) -> float | None:
        return percentile(self.durations, 95)


@dataclass(frozen=True)
class PipelineDurations:
    pipeline: str
    finished: int
    failed: int
    p50: float | None
    p95: float | None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank percentile: the smallest value with at least q% of values at or below it
    (always one of the values, so "p95 = 12 s" means a job really took 12 s)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def window_start(now: datetime, hours: int = 24) -> datetime:
    """The start of the oldest of `hours` whole-hour buckets, the newest being the current hour."""
    return now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)


def finished_since(store: Store, since: datetime) -> list[FinishedJob]:
    """Jobs that reached a final state at or after `since`, from the metadata database."""
    q = select(jobs_t.c.pipeline, jobs_t.c.state, jobs_t.c.started_at, jobs_t.c.finished_at).where(
        jobs_t.c.finished_at >= since, jobs_t.c.state.in_(FINAL_STATES)
    )
    with store.read() as conn:
        return [FinishedJob(*row) for row in conn.execute(q).all()]


def hourly(jobs: Iterable[FinishedJob], now: datetime, hours: int = 24) -> list[Hour]:
    """`hours` buckets ending with the current hour; jobs outside them are left out."""
    first = window_start(now, hours)
    buckets = [Hour(first + timedelta(hours=i)) for i in range(hours)]
    for job in jobs:
        index = math.floor((job.finished_at - first).total_seconds() / 3600)
        if not 0 <= index < hours:
            continue
        bucket = buckets[index]
        bucket.counts[job.state] = bucket.counts.get(job.state, 0) + 1
        if job.state in TIMED_STATES and job.duration is not None:
            bucket.durations.append(job.duration)
    return buckets


def per_pipeline(jobs: Iterable[FinishedJob]) -> list[PipelineDurations]:
    """Finished and failed counts and duration percentiles of each pipeline, by name."""
    finished: dict[str, int] = {}
    failed: dict[str, int] = {}
    durations: dict[str, list[float]] = {}
    for job in jobs:
        finished[job.pipeline] = finished.get(job.pipeline, 0) + 1
        if job.state == "failed":
            failed[job.pipeline] = failed.get(job.pipeline, 0) + 1
        if job.state in TIMED_STATES and job.duration is not None:
            durations.setdefault(job.pipeline, []).append(job.duration)
    return [
        PipelineDurations(
            name,
            finished[name],
            failed.get(name, 0),
            percentile(durations.get(name, []), 50),
            percentile(durations.get(name, []), 95),
        )
        for name in sorted(finished)
    ]


def ticks(peak: float, count: int = 4, *, whole: bool = False) -> list[float]:
    """Axis ticks from 0 to a round value at or above `peak`, steps of 1, 2 or 5 times a power
    of ten (at least 1 for `whole` numbers such as job counts)."""
    if peak <= 0:
        return [0.0, 1.0]
    raw = peak / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    if whole:
        step = max(1.0, float(math.ceil(step)))
    top = math.ceil(peak / step - 1e-9) * step
    return [round(i * step, 10) for i in range(round(top / step) + 1)]


# --- drawing ------------------------------------------------------------------------------------
#
# Horizontal positions are percentages of the chart's width and vertical ones are pixels, with no
# viewBox: a chart fills any width (1280 px or a phone) while its text keeps its size.


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.3f}".rstrip("0").rstrip(".") + "%"


class _Canvas:
    """An SVG document built element by element; every text and attribute value is escaped."""

    def __init__(self, height: float, title: str, css_class: str) -> None:
        self.height = height
        self.parts: list[str] = [
            f'<svg xmlns="http://www.w3.org/2000/svg" class="{escape(css_class)}" width="100%" '
            f'height="{height:g}" role="img" font-family="system-ui, sans-serif" '
            f'font-size="{FONT}">',
            f"<title>{escape(title)}</title>",
        ]

    def add(
        self, tag: str, text: str | None = None, *, tip: str | None = None, **attrs: object
    ) -> None:
        rendered = _attributes(attrs)
        inner = (f"<title>{escape(tip)}</title>" if tip else "") + (escape(text) if text else "")
        self.parts.append(f"<{tag} {rendered}>{inner}</{tag}>" if inner else f"<{tag} {rendered}/>")

    def spans(self, x: float, y: float, parts: Sequence[tuple[str, dict[str, object]]]) -> None:
        """One line of text in pieces that follow each other (e.g. a bold name, then details)."""
        inner = "".join(
            f"<tspan{_attributes(attrs, lead=' ')}>{escape(text)}</tspan>"
            + ("" if i == len(parts) - 1 else " ")
            for i, (text, attrs) in enumerate(parts)
        )
        self.parts.append(f'<text x="{x:g}" y="{y:g}" fill="{AXIS_COLOUR}">{inner}</text>')

    def legend(self, y: float, items: Sequence[tuple[str, str]]) -> None:
        x = 0.0
        for label, colour in items:
            self.add("rect", x=x, y=y - 9, width=10, height=10, fill=colour, rx=2)
            self.add("text", label, x=x + 14, y=y, fill=AXIS_COLOUR)
            x += 14 + len(label) * 7 + 16

    def markup(self) -> Markup:
        return Markup("".join([*self.parts, "</svg>"]))  # every part was escaped


def _attributes(attrs: dict[str, object], lead: str = "") -> str:
    """SVG attributes from keywords: `class_` is `class`, `data_step` is `data-step`."""
    rendered = " ".join(
        f'{name.rstrip("_").replace("_", "-")}="{escape(_value(value))}"'
        for name, value in attrs.items()
        if value is not None
    )
    return lead + rendered if rendered else ""


def _value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return str(value)


@dataclass(frozen=True)
class _HourFrame:
    """An hourly chart's plot: hours across the full width, values up from the bottom axis."""

    hours: int
    peak: float
    top: float = 44
    bottom: float = 24
    height: float = 240

    @property
    def plot_h(self) -> float:
        return self.height - self.top - self.bottom

    def y(self, value: float) -> float:
        return self.top + self.plot_h - (value / self.peak) * self.plot_h

    def centre(self, index: int) -> str:
        return _pct((index + 0.5) / self.hours)


def _hour_axes(
    canvas: _Canvas,
    frame: _HourFrame,
    hours: Sequence[Hour],
    marks: list[float],
    label: Callable[[float], str],
) -> None:
    """Gridlines labelled just above their left end, and every third hour along the bottom."""
    for mark in marks:
        y = frame.y(mark)
        canvas.add("line", x1=0, x2="100%", y1=y, y2=y, stroke=GRID_COLOUR)
        if mark:
            canvas.add(
                "text",
                label(mark),
                x=2,
                y=y - 3,
                fill=AXIS_COLOUR,
                stroke="#ffffff",
                stroke_width=3,
                paint_order="stroke",
                class_="tick",
            )
    base = frame.y(0)
    canvas.add("line", x1=0, x2="100%", y1=base, y2=base, stroke=AXIS_COLOUR)
    for i, hour in enumerate(hours):
        if hour.start.hour % 3 == 0:
            canvas.add(
                "text",
                hour.start.strftime("%H:00"),
                x=frame.centre(i),
                y=frame.height - 6,
                text_anchor="middle",
                fill=AXIS_COLOUR,
            )


def throughput_svg(hours: Sequence[Hour], t: Translator) -> Markup:
    """Stacked bars per hour: succeeded, failed and cancelled jobs."""
    marks = ticks(max((h.total for h in hours), default=0), whole=True)
    frame = _HourFrame(len(hours), marks[-1])
    canvas = _Canvas(frame.height, t("charts.throughput"), "chart chart-throughput")
    canvas.legend(14, [(t(f"state.{s}"), COLOURS[s]) for s in STACK])
    _hour_axes(canvas, frame, hours, marks, lambda v: f"{v:g}")
    slot = 1 / len(hours)
    for i, hour in enumerate(hours):
        below = 0
        for state in STACK:
            count = hour.counts.get(state, 0)
            if not count:
                continue
            top = frame.y(below + count)
            canvas.add(
                "rect",
                tip=t(
                    "charts.bar_title",
                    hour=hour.start.strftime("%H:00"),
                    state=t(f"state.{state}"),
                    count=count,
                ),
                x=_pct((i + 0.15) * slot),
                y=top,
                width=_pct(0.7 * slot),
                height=frame.y(below) - top,
                fill=COLOURS[state],
                class_=f"bar bar-{state}",
                data_hour=hour.start.isoformat(),
                data_count=count,
            )
            below += count
    return canvas.markup()


def durations_svg(hours: Sequence[Hour], t: Translator) -> Markup:
    """Two lines over the hours: the median and the 95th percentile job duration."""
    peak = max((h.p95 or 0.0 for h in hours), default=0.0)
    marks = ticks(peak)
    frame = _HourFrame(len(hours), marks[-1])
    canvas = _Canvas(frame.height, t("charts.durations"), "chart chart-durations")
    canvas.legend(14, [("p50", COLOURS["p50"]), ("p95", COLOURS["p95"])])
    _hour_axes(canvas, frame, hours, marks, lambda v: span(t, v))
    for which in ("p50", "p95"):
        previous: tuple[int, float] | None = None
        for i, hour in enumerate(hours):
            value = getattr(hour, which)
            if value is None:
                previous = None  # no finished job this hour: the line breaks
                continue
            if previous is not None:
                canvas.add(
                    "line",
                    x1=frame.centre(previous[0]),
                    y1=frame.y(previous[1]),
                    x2=frame.centre(i),
                    y2=frame.y(value),
                    stroke=COLOURS[which],
                    stroke_width=2,
                )
            previous = (i, value)
            canvas.add(
                "circle",
                tip=t(
                    "charts.point_title",
                    hour=hour.start.strftime("%H:00"),
                    which=which,
                    value=span(t, value),
                ),
                cx=frame.centre(i),
                cy=frame.y(value),
                r=3.5,
                fill=COLOURS[which],
                class_=f"point point-{which}",
                data_hour=hour.start.isoformat(),
                data_seconds=round(value, 3),
            )
    return canvas.markup()


class TimedStep(Protocol):
    name: str
    branch: str | None
    state: str
    started_at: datetime | None
    finished_at: datetime | None


ROW = 40  # a label line, then the bar
BAR = 14
AXIS = 26


def timeline_svg(
    steps: Sequence[TimedStep], origin: datetime | None, now: datetime, t: Translator
) -> Markup:
    """Each step as a bar from its start to its end (or to `now` while it runs), against the time
    since `origin` (the job's start), with its name, branch and duration above it. Steps that have
    not started get a label and no bar."""
    starts = [s.started_at for s in steps if s.started_at is not None]
    origin = origin or (min(starts) if starts else now)
    ends = [s.finished_at or now for s in steps if s.started_at is not None]
    total = max([(end - origin).total_seconds() for end in ends] or [0.0])
    marks = ticks(total, 4)
    scale = marks[-1]
    axis_y = len(steps) * ROW + 4
    canvas = _Canvas(axis_y + AXIS, t("job.timeline"), "chart chart-timeline")
    for n, mark in enumerate(marks):
        where = _pct(mark / scale)
        canvas.add("line", x1=where, x2=where, y1=0, y2=axis_y, stroke=GRID_COLOUR)
        anchor = "start" if n == 0 else "end" if n == len(marks) - 1 else "middle"
        label = "+" + span(t, mark)
        canvas.add("text", label, x=where, y=axis_y + 18, text_anchor=anchor, fill=AXIS_COLOUR)
    canvas.add("line", x1=0, x2="100%", y1=axis_y, y2=axis_y, stroke=AXIS_COLOUR)
    for row, step in enumerate(steps):
        y = row * ROW
        seconds = (
            max(0.0, ((step.finished_at or now) - step.started_at).total_seconds())
            if step.started_at is not None
            else None
        )
        about = [t(f"state.{step.state}")]
        if step.branch:
            about.insert(0, step.branch)
        if seconds is not None:
            about.append(span(t, seconds))
        canvas.spans(
            0,
            y + 14,
            [(step.name, {"fill": COLOURS_TEXT, "font_weight": 600}), (" · ".join(about), {})],
        )
        if step.started_at is None or seconds is None:
            continue
        begin = max(0.0, (step.started_at - origin).total_seconds())
        canvas.add(
            "rect",
            tip=f"{step.name}: {' · '.join(about)}",
            x=_pct(begin / scale),
            y=y + 20,
            width=_pct(max(seconds / scale, 0.004)),
            height=BAR,
            rx=2,
            fill=COLOURS.get(step.state, COLOURS["pending"]),
            class_=f"bar bar-{step.state}",
            data_step=step.name,
            data_state=step.state,
            data_start=round(begin, 3),
            data_seconds=round(seconds, 3),
        )
    return canvas.markup()
