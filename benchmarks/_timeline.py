"""A run's timeline as a small self-contained SVG: writes per second against the limit.

No plotting stack on purpose (a benchmark must run from the project's own dependencies): the
picture is a few hundred SVG elements written by hand, readable in any browser and in a diff.

What it shows, on the emulator's clock from the run's first request:

- grey bars: the tool's admitted writes per second in short bins (the burst pattern of a
  sliding window: a window's budget goes out at once, then nothing until slots free; cut off
  at three times the limit);
- blue line: the tool's writes per second over the *last window* (sliding): at the ceiling it
  hugs the limit line, and every dip below it is throughput lost;
- dashed line: the limit in writes per second (N / W), or what another app left of the
  tenant's budget when one shares it (a step line);
- purple line: the other app's writes per second over the last window, when there is one;
- ticks under the axis: 429 answers (red), injected faults (orange).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

__all__ = ["Timeline", "write_svg"]

_WIDTH, _HEIGHT = 900, 340
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 58, 58


@dataclass
class Timeline:
    """What one picture shows; every time in seconds from the run's start."""

    title: str
    window: float  # the limit's W, seconds
    limit_rate: float  # N / W, writes per second
    writes: Sequence[float]
    rejected: Sequence[float] = ()
    faults: Sequence[float] = ()
    other_writes: Sequence[float] = ()
    # (start, writes/s) steps: what the tenant leaves the tool (shared budget), if not the limit.
    left: Sequence[tuple[float, float]] = ()
    notes: Sequence[str] = field(default_factory=tuple)


def _sliding_rate(times: Sequence[float], at: float, window: float) -> float:
    """Writes per second over (at - window, at]."""
    return (bisect.bisect_right(times, at) - bisect.bisect_right(times, at - window)) / window


def write_svg(path: Path, timeline: Timeline) -> Path:
    """Draw `timeline` into `path` (an .svg file) and return the path."""
    t = timeline
    writes = sorted(t.writes)
    other = sorted(t.other_writes)
    end = max([*writes, *t.rejected, *t.faults, *other, t.window]) * 1.02
    bin_width = t.window / 10
    bins = [0] * (int(end / bin_width) + 1)
    for w in writes:
        bins[int(w / bin_width)] += 1
    # Bursts reach many times the limit for an instant; the scale is for the rates (bars above
    # it are cut off at the top).
    peak = max([t.limit_rate * 3, *(r * 1.3 for _, r in t.left)])
    plot_w = _WIDTH - _LEFT - _RIGHT
    plot_h = _HEIGHT - _TOP - _BOTTOM

    def x(seconds: float) -> float:
        return _LEFT + plot_w * seconds / end

    def y(rate: float) -> float:
        return _TOP + plot_h * (1 - min(rate, peak) / peak)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect width="{_WIDTH}" height="{_HEIGHT}" fill="white"/>',
        f'<text x="{_LEFT}" y="18" font-size="13">{escape(t.title)}</text>',
    ]
    # Axes and grid.
    step = _nice_step(peak / 5)
    rate = 0.0
    while rate <= peak:
        parts.append(
            f'<line x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{y(rate):.1f}" y2="{y(rate):.1f}" '
            'stroke="#eee"/>'
            f'<text x="{_LEFT - 6}" y="{y(rate) + 4:.1f}" text-anchor="end">{rate:g}</text>'
        )
        rate += step
    second_step = _nice_step(end / 10)
    s = 0.0
    while s <= end:
        parts.append(
            f'<text x="{x(s):.1f}" y="{_TOP + plot_h + 14}" text-anchor="middle">{s:g}</text>'
        )
        s += second_step
    parts.append(
        f'<text x="{_LEFT + plot_w / 2}" y="{_HEIGHT - 6}" text-anchor="middle">seconds from '
        f"the first request (window {t.window:g} s)</text>"
        f'<text x="14" y="{_TOP + plot_h / 2}" transform="rotate(-90 14 {_TOP + plot_h / 2})" '
        'text-anchor="middle">writes / s</text>'
    )
    # Bars: writes per bin.
    for i, count in enumerate(bins):
        if count:
            top = y(count / bin_width)
            parts.append(
                f'<rect x="{x(i * bin_width):.1f}" y="{top:.1f}" '
                f'width="{max(x(bin_width) - _LEFT - 0.5, 0.5):.1f}" '
                f'height="{_TOP + plot_h - top:.1f}" fill="#ccc"/>'
            )
    # The limit, or what the tenant leaves.
    if t.left:
        points = []
        for i, (start, r) in enumerate(t.left):
            stop = t.left[i + 1][0] if i + 1 < len(t.left) else end
            points += [f"{x(start):.1f},{y(r):.1f}", f"{x(stop):.1f},{y(r):.1f}"]
        parts.append(
            f'<polyline points="{" ".join(points)}" fill="none" stroke="#222" '
            'stroke-dasharray="5,3" stroke-width="1.5"/>'
        )
    else:
        parts.append(
            f'<line x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{y(t.limit_rate):.1f}" '
            f'y2="{y(t.limit_rate):.1f}" stroke="#222" stroke-dasharray="5,3" '
            'stroke-width="1.5"/>'
        )
    # Sliding-window rates.
    samples = [end * i / 400 for i in range(401)]
    for series, colour in ((writes, "#1f5fbf"), (other, "#8a3ab9")):
        if series:
            points = " ".join(
                f"{x(at):.1f},{y(_sliding_rate(series, at, t.window)):.1f}" for at in samples
            )
            parts.append(
                f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
            )
    # Ticks: 429s and faults.
    base = _TOP + plot_h
    for times, colour, offset in ((t.rejected, "#d62728", 20), (t.faults, "#ff7f0e", 28)):
        parts.extend(
            f'<line x1="{x(at):.1f}" x2="{x(at):.1f}" y1="{base + offset}" '
            f'y2="{base + offset + 6}" stroke="{colour}"/>'
            for at in times
        )
    # Legend.
    legend = [
        ("#ccc", "writes/s (bins of W/10)"),
        ("#1f5fbf", "writes/s over the last W"),
        ("#222", "what the tenant leaves" if t.left else "limit N/W"),
    ]
    if other:
        legend.append(("#8a3ab9", "other app, over the last W"))
    legend += [("#d62728", f"429 ({len(t.rejected)})"), ("#ff7f0e", f"fault ({len(t.faults)})")]
    for i, (colour, label) in enumerate(legend):
        ly = 32 + (i % 2) * 12
        col = _LEFT + (i // 2) * 200
        parts.append(
            f'<rect x="{col}" y="{ly - 6}" width="10" height="6" fill="{colour}"/>'
            f'<text x="{col + 14}" y="{ly}" font-size="9">{escape(label)}</text>'
        )
    for i, note in enumerate(t.notes):
        parts.append(
            f'<text x="{_LEFT + 4}" y="{_TOP + 12 + 12 * i}" font-size="10" fill="#444">'
            f"{escape(note)}</text>"
        )
    parts.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def _nice_step(raw: float) -> float:
    """1, 2 or 5 times a power of ten, at least `raw`."""
    if raw <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * power >= raw:
            return factor * power
    return 10 * power
