"""The two pictures of report.html, as inline SVG: the outcome bar and the writes-per-second chart.

A plotting library would be a hundred megabytes for two shapes; these are rectangles, one
polyline and a few lines, written as text. Every number a test or a script may want to check is
also in a `data-` attribute (the chart's rates, step and averaging window; each outcome's count),
so the picture can be checked against what the run recorded without reading pixels back.

All text goes through `html.escape`; nothing here refers to anything outside the page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Final

from batch.model import Rate
from batch.report.timeline import PartTimeline, Series

__all__ = ["OUTCOME_COLOURS", "bar_widths", "duration_label", "outcome_bar", "rate_chart"]

#: One colour per outcome, in the order the bar stacks them (good news first).
OUTCOME_COLOURS: Final = {
    "updated": "#2e7d32",
    "unchanged": "#78909c",
    "skipped": "#b0bec5",
    "planned": "#1565c0",
    "conflict": "#6a1b9a",
    "invalid": "#ef6c00",
    "failed": "#c62828",
    "not_attempted": "#5d4037",
}

_LEFT, _RIGHT, _TOP, _BOTTOM = 56.0, 16.0, 18.0, 34.0


def _n(value: float) -> str:
    """A coordinate: one decimal, no trailing zeros."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def duration_label(seconds: float) -> str:
    """`45 s`, `12:05` (minutes), `2:01:40` (hours)."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def outcome_bar(counts: Mapping[str, int], *, width: int = 720, height: int = 30) -> str:
    """A stacked horizontal bar of the outcome counts, one coloured share per outcome."""
    total = sum(counts.values())
    parts = []
    x = 0.0
    for outcome, colour in OUTCOME_COLOURS.items():
        n = counts.get(outcome, 0)
        if not n or not total:
            continue
        w = width * n / total
        label = f"{outcome.replace('_', ' ')}: {n:,}"
        parts.append(
            f'<rect class="outcome" data-outcome="{outcome}" data-count="{n}" x="{_n(x)}" y="0" '
            f'width="{_n(max(w, 0.5))}" height="{height}" fill="{colour}">'
            f"<title>{escape(label)}</title></rect>"
        )
        x += w
    if not parts:
        parts.append(f'<rect x="0" y="0" width="{width}" height="{height}" fill="#eceff1"/>')
    return (
        f'<svg class="outcomes" role="img" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" data-total="{total}"><title>outcomes of {total:,} rows</title>'
        + "".join(parts)
        + "</svg>"
    )


def _ticks(top: float, count: int = 4) -> list[float]:
    """About `count` round values from 0 to `top` (1, 2 or 5 times a power of ten apart)."""
    if top <= 0:
        return [0.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [i * step for i in range(int(top / step) + 1)]


def _time_ticks(length: int) -> list[int]:
    """Round elapsed-time marks (seconds) across a part of `length` seconds."""
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200):
        if length / step <= 8:
            return list(range(0, length + 1, step))
    return [0, length]


def rate_chart(
    part: PartTimeline,
    series: Series,
    limit: Rate | None,
    *,
    width: int = 720,
    height: int = 230,
) -> str:
    """Writes per second over one part, against the limit, with pauses and 429s marked.

    The polyline's `data-rates` holds the plotted values (writes per second, 4 decimals) at
    `data-first + data-start + k * data-step` Unix seconds, each averaged over the
    `data-average` seconds up to it; `data-writes` is the part's total.
    """
    plot_w = width - _LEFT - _RIGHT
    plot_h = height - _TOP - _BOTTOM
    length = part.length
    limit_rate = limit.per_second if limit is not None else 0.0
    top = max([limit_rate * 1.25, *(r * 1.1 for r in series.rates), 1.0])
    ticks = _ticks(top)
    top = max(top, ticks[-1])

    def x(offset: float) -> float:
        return _LEFT + plot_w * min(max(offset, 0.0), length) / length

    def y(rate: float) -> float:
        return _TOP + plot_h * (1 - rate / top)

    out: list[str] = [
        f'<svg class="timeline" role="img" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" data-part="{part.number}">',
        f"<title>writes per second, part {part.number}</title>",
    ]
    for a, b in part.pauses:
        x0, x1 = x(a - series.first), x(b - series.first)
        out.append(
            f'<rect class="pause" x="{_n(x0)}" y="{_n(_TOP)}" width="{_n(max(x1 - x0, 1.0))}" '
            f'height="{_n(plot_h)}" data-seconds="{b - a:.3f}">'
            f"<title>paused {b - a:.1f} s (429)</title></rect>"
        )
    for value in ticks:
        yy = y(value)
        out.append(
            f'<line class="grid" x1="{_n(_LEFT)}" x2="{_n(width - _RIGHT)}" '
            f'y1="{_n(yy)}" y2="{_n(yy)}"/>'
            f'<text class="axis" x="{_n(_LEFT - 6)}" y="{_n(yy + 4)}" text-anchor="end">'
            f"{value:g}</text>"
        )
    for mark in _time_ticks(length):
        xx = x(mark)
        out.append(
            f'<line class="tick" x1="{_n(xx)}" x2="{_n(xx)}" y1="{_n(_TOP + plot_h)}" '
            f'y2="{_n(_TOP + plot_h + 4)}"/>'
            f'<text class="axis" x="{_n(xx)}" y="{_n(_TOP + plot_h + 17)}" '
            f'text-anchor="middle">{duration_label(mark)}</text>'
        )
    if limit is not None:
        yy = y(limit_rate)
        out.append(
            f'<line class="limit" x1="{_n(_LEFT)}" x2="{_n(width - _RIGHT)}" y1="{_n(yy)}" '
            f'y2="{_n(yy)}" data-rate="{limit_rate:.4f}"/>'
            f'<text class="limit-label" x="{_n(width - _RIGHT)}" y="{_n(yy - 5)}" '
            f'text-anchor="end">limit {escape(str(limit))} s = {limit_rate:.3g}/s</text>'
        )
    throttled = [s for s in part.seconds if s.throttled]
    for s in throttled:
        xx = x(s.second - series.first + 0.5)
        out.append(
            f'<path class="throttled" d="M{_n(xx - 4)},{_n(_TOP - 9)} h8 l-4,7 z" '
            f'data-second="{s.second}" data-count="{s.throttled}">'
            f"<title>429 answers: {s.throttled}</title></path>"
        )
    points = " ".join(
        f"{_n(x(offset))},{_n(y(rate))}"
        for offset, rate in zip(series.offsets(), series.rates, strict=True)
    )
    rates = " ".join(f"{r:.4f}" for r in series.rates)
    out.append(
        f'<polyline class="rate" points="{points}" data-first="{series.first}" '
        f'data-start="{series.start}" data-step="{series.step}" data-average="{series.average}" '
        f'data-writes="{part.writes}" data-rates="{rates}"/>'
    )
    out.append(
        f'<line class="axis-line" x1="{_n(_LEFT)}" x2="{_n(_LEFT)}" y1="{_n(_TOP)}" '
        f'y2="{_n(_TOP + plot_h)}"/>'
        f'<line class="axis-line" x1="{_n(_LEFT)}" x2="{_n(width - _RIGHT)}" '
        f'y1="{_n(_TOP + plot_h)}" y2="{_n(_TOP + plot_h)}"/>'
    )
    out.append("</svg>")
    return "".join(out)


def bar_widths(values: Sequence[int]) -> list[float]:
    """Each value's share of the largest, in percent (for the CSS bars of a table)."""
    top = max(values, default=0)
    return [100.0 * v / top if top else 0.0 for v in values]
