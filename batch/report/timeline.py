"""Writes per second over a run, part by part, from the timeline the ledger recorded.

The ledger keeps, per second, the write and read items the limiter granted and the 429s Graph
answered, plus each process's part of the run and every pause (`batch.ledger.read_timeline`).
This module turns that into what report.html draws; it is pure, so a test can recompute a chart
from the same records.

Decisions:

- **A rate averaged over the throttle window.** Writes are granted in bursts (a `$batch` of 20 at
  one instant), so writes per single second jump between 0 and 20 while the budget is 5 per
  second. What Graph limits, and what the limiter promises, is the count in any window of the
  limit's length; the chart shows exactly that: writes in the last `window` seconds divided by
  `window` (whole seconds: the records are per second), against the limit `N/SECONDS`. For a
  window of whole seconds that line stays under the limit whenever the run kept it.
- **At most `max_points` points per part.** A long part is sampled every `step` seconds, counted
  back from its last second, and the average then spans at least `step` seconds, so every write
  counts in some point.
- **One chart per part.** A resumed run shows each process's part with its own start, end,
  pauses and 429s; the gap between parts (minutes or days) is said in words, not drawn.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any, Final

from batch.ledger import PartRecord, SecondRecord, TimelineRecord
from batch.model import Rate

__all__ = [
    "MAX_POINTS",
    "PartTimeline",
    "Series",
    "iso",
    "parts_summary",
    "rate_series",
    "split_parts",
]

#: Points per part's chart at most (a 3-hour part at Graph's pace is about 10,000 seconds).
MAX_POINTS: Final = 600


@dataclass(frozen=True, slots=True)
class PartTimeline:
    """One part of a run: its seconds and pauses, and when it started and ended (Unix time)."""

    number: int
    started: float
    ended: float
    killed: bool  # no recorded end: `ended` is its last busy second's end
    resumed: bool
    exit_code: int | None
    write_limit: Rate | None
    seconds: list[SecondRecord] = field(default_factory=list)
    pauses: list[tuple[float, float]] = field(default_factory=list)

    @property
    def writes(self) -> int:
        """Write items granted in this part."""
        return sum(s.writes for s in self.seconds)

    @property
    def reads(self) -> int:
        """Read items granted in this part."""
        return sum(s.reads for s in self.seconds)

    @property
    def throttled(self) -> int:
        """429 answers in this part."""
        return sum(s.throttled for s in self.seconds)

    @property
    def first_second(self) -> int:
        """The whole second the chart starts at."""
        return math.floor(self.started)

    @property
    def length(self) -> int:
        """Whole seconds the chart spans (at least 1)."""
        return max(1, math.ceil(self.ended) - self.first_second)


@dataclass(frozen=True, slots=True)
class Series:
    """Writes per second at `first + start + k * step` (Unix seconds), each averaged over the
    `average` seconds up to it; `first` is the part's first second."""

    first: int
    start: int
    step: int
    average: int
    rates: list[float]

    def offsets(self) -> list[int]:
        """Each point's seconds since the part's first second."""
        return [self.start + k * self.step for k in range(len(self.rates))]


def iso(unix: float) -> str:
    """A Unix time as ISO 8601 in UTC, to the millisecond."""
    return dt.datetime.fromtimestamp(unix, dt.UTC).isoformat(timespec="milliseconds")


def _rate(text: str) -> Rate | None:
    try:
        return Rate.parse(text)
    except ValueError:
        return None


def split_parts(record: TimelineRecord) -> list[PartTimeline]:
    """The record's parts, each with its own seconds and pauses (in part order).

    A second belongs to the last part that started at or before it (seconds recorded before the
    first part, by a clock set back, go to the first). A part without a recorded end ends after
    its last busy second, or a second after it started.
    """
    parts: list[PartRecord] = sorted(record.parts, key=lambda p: p.started)
    if not parts:
        return []
    owned: list[list[SecondRecord]] = [[] for _ in parts]
    index = 0
    for second in record.seconds:
        while index + 1 < len(parts) and second.second >= math.floor(parts[index + 1].started):
            index += 1
        owned[index].append(second)
    result = []
    for i, part in enumerate(parts):
        seconds = owned[i]
        killed = part.ended is None
        if part.ended is not None:
            ended = part.ended
        else:
            # Killed: its last busy second is the last thing known of it.
            last = seconds[-1].second + 1 if seconds else part.started + 1
            ended = max(float(last), part.started + 1)
        pauses = [
            (max(a, part.started), min(b, ended))
            for a, b in record.pauses
            if b > part.started and a < ended
        ]
        result.append(
            PartTimeline(
                number=part.number,
                started=part.started,
                ended=ended,
                killed=killed,
                resumed=part.resumed,
                exit_code=part.exit_code,
                write_limit=_rate(part.write_limit),
                seconds=seconds,
                pauses=pauses,
            )
        )
    return result


def rate_series(part: PartTimeline, window: float, max_points: int = MAX_POINTS) -> Series:
    """Writes per second over `part`, averaged over the last `window` seconds (see module)."""
    first, length = part.first_second, part.length
    counts = [0] * length
    for s in part.seconds:
        offset = s.second - first
        if 0 <= offset < length:
            counts[offset] += s.writes
    prefix = [0]
    for c in counts:
        prefix.append(prefix[-1] + c)
    step = max(1, math.ceil(length / max_points))
    average = max(1, math.floor(window), step)
    # Counted back from the last second, so the last point covers the part's end.
    start = (length - 1) % step
    rates = [
        (prefix[i + 1] - prefix[max(0, i + 1 - average)]) / average
        for i in range(start, length, step)
    ]
    return Series(first, start, step, average, rates)


def parts_summary(parts: list[PartTimeline]) -> list[dict[str, Any]]:
    """The parts as summary.json lists them (times in ISO 8601, UTC)."""
    return [
        {
            "part": p.number,
            "started": iso(p.started),
            "ended": None if p.killed else iso(p.ended),
            "resumed": p.resumed,
            "exit_code": p.exit_code,
            "write_limit": None if p.write_limit is None else str(p.write_limit),
            "writes": p.writes,
            "throttled_429": p.throttled,
            "pauses": len(p.pauses),
        }
        for p in parts
    ]
