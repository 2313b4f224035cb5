"""A snapshot's diagnose drawn on the server as inline SVG: per validation rule the records it
held for and failed on, per transformer rule the records it changed (and failed on), and the
most frequent values a rule saw.

All three are rows of horizontal bars against one count axis, built with charts.py's canvas, so
they escape every label (rule ids and values come from harvested data) and need no inline style.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup

from .charts import AXIS_COLOUR, COLOURS_TEXT, GRID_COLOUR, _Canvas, _pct, ticks
from .i18n import Translator

COLOURS = {
    "valid": "#2f855a",
    "invalid": "#c53030",
    "changed": "#2b6cb0",
    "failed": "#c53030",
}
ROW = 40  # a label line, then the bar
BAR = 14
AXIS = 26
TOP = 24  # room for the legend
#: characters of a value shown as a label (the whole value is in the bar's tooltip)
LABEL_CHARS = 80


@dataclass(frozen=True)
class Segment:
    """A piece of a bar: `count` records of one `kind` (a key of COLOURS)."""

    kind: str
    count: int
    tip: str


@dataclass(frozen=True)
class BarRow:
    """One labelled bar: `name` in bold, `detail` after it, the segments left to right."""

    key: str
    name: str
    detail: str
    segments: tuple[Segment, ...]

    @property
    def total(self) -> int:
        return sum(s.count for s in self.segments)


def bars_svg(
    rows: Sequence[BarRow], title: str, css_class: str, legend: Sequence[tuple[str, str]]
) -> Markup:
    """Rows of stacked horizontal bars on a shared count axis (whole numbers)."""
    marks = ticks(max((r.total for r in rows), default=0), whole=True)
    scale = marks[-1]
    axis_y = TOP + len(rows) * ROW + 4
    canvas = _Canvas(axis_y + AXIS, title, f"chart {css_class}")
    canvas.legend(14, [(label, COLOURS[kind]) for label, kind in legend])
    for n, mark in enumerate(marks):
        where = _pct(mark / scale)
        canvas.add("line", x1=where, x2=where, y1=TOP, y2=axis_y, stroke=GRID_COLOUR)
        anchor = "start" if n == 0 else "end" if n == len(marks) - 1 else "middle"
        canvas.add(
            "text", f"{mark:g}", x=where, y=axis_y + 18, text_anchor=anchor, fill=AXIS_COLOUR
        )
    canvas.add("line", x1=0, x2="100%", y1=axis_y, y2=axis_y, stroke=AXIS_COLOUR)
    for index, row in enumerate(rows):
        y = TOP + index * ROW
        canvas.spans(
            0, y + 14, [(row.name, {"fill": COLOURS_TEXT, "font_weight": 600}), (row.detail, {})]
        )
        left = 0
        for segment in row.segments:
            if not segment.count:
                continue
            canvas.add(
                "rect",
                tip=segment.tip,
                x=_pct(left / scale),
                y=y + 20,
                width=_pct(segment.count / scale),
                height=BAR,
                fill=COLOURS[segment.kind],
                class_=f"bar bar-{segment.kind}",
                data_key=row.key,
                data_count=segment.count,
            )
            left += segment.count
    return canvas.markup()


@dataclass(frozen=True)
class RuleCounts:
    """A validation rule's verdicts over a snapshot: records it held for and failed on."""

    rule_id: str
    mandatory: bool
    valid: int
    invalid: int


def rule_verdicts_svg(rules: Sequence[RuleCounts], t: Translator) -> Markup:
    """Per validation rule, valid then invalid records as one bar."""
    rows = []
    for rule in rules:
        kind = t("diagnose.mandatory") if rule.mandatory else t("diagnose.optional")
        counts = t("diagnose.valid_invalid", valid=rule.valid, invalid=rule.invalid)
        rows.append(
            BarRow(
                key=rule.rule_id,
                name=rule.rule_id,
                detail=f"{kind} · {counts}",
                segments=(
                    Segment(
                        "valid", rule.valid, f"{rule.rule_id}: {t('diagnose.valid')} {rule.valid}"
                    ),
                    Segment(
                        "invalid",
                        rule.invalid,
                        f"{rule.rule_id}: {t('diagnose.invalid')} {rule.invalid}",
                    ),
                ),
            )
        )
    legend = [(t("diagnose.valid"), "valid"), (t("diagnose.invalid"), "invalid")]
    return bars_svg(rows, t("diagnose.rules_chart"), "chart-rules", legend)


@dataclass(frozen=True)
class TransformerCounts:
    """A transformer rule's work over a snapshot: records it changed and failed on."""

    rule_id: str
    type: str
    changed: int
    failed: int


def transformer_changes_svg(rules: Sequence[TransformerCounts], t: Translator) -> Markup:
    """Per transformer rule, changed then failed records as one bar."""
    rows = [
        BarRow(
            key=rule.rule_id,
            name=rule.rule_id,
            detail=" · ".join(
                part
                for part in (
                    rule.type,
                    t("diagnose.changed_failed", changed=rule.changed, failed=rule.failed),
                )
                if part
            ),
            segments=(
                Segment(
                    "changed",
                    rule.changed,
                    f"{rule.rule_id}: {t('diagnose.changed')} {rule.changed}",
                ),
                Segment(
                    "failed", rule.failed, f"{rule.rule_id}: {t('diagnose.failed')} {rule.failed}"
                ),
            ),
        )
        for rule in rules
    ]
    legend = [(t("diagnose.changed"), "changed"), (t("diagnose.failed"), "failed")]
    return bars_svg(rows, t("diagnose.transform_chart"), "chart-transformers", legend)


def values_svg(
    values: Sequence[tuple[str, int]], other: int, kind: str, title: str, t: Translator
) -> Markup:
    """The most frequent values (most first) of a rule's valid or invalid occurrences; values
    beyond the counted ones are one last bar, "other"."""
    rows = []
    for position, (value, count) in enumerate(values):
        label = value if len(value) <= LABEL_CHARS else value[: LABEL_CHARS - 1] + "…"
        rows.append(
            BarRow(
                key=str(position),
                name=label or t("diagnose.empty_value"),
                detail=str(count),
                segments=(Segment(kind, count, f"{value}: {count}"),),
            )
        )
    if other:
        rows.append(
            BarRow(
                key="other",
                name=t("diagnose.other_values"),
                detail=str(other),
                segments=(Segment(kind, other, f"{t('diagnose.other_values')}: {other}"),),
            )
        )
    return bars_svg(rows, title, f"chart-values chart-values-{kind}", [])
