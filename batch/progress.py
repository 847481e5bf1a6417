"""Progress on stderr: a rich bar on a terminal, plain periodic log lines otherwise (cron, CI)."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter
from types import TracebackType
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from batch.model import Outcome

__all__ = ["ProgressSink", "make_progress"]

log = logging.getLogger("batch.progress")


class ProgressSink(Protocol):
    """Where the engine reports rows as they finish."""

    def start(self, total: int, description: str) -> None:
        """The run begins with `total` rows."""

    def advance(self, outcome: Outcome, *, throttled: int) -> None:
        """One row finished; `throttled` is the run's 429 count so far."""

    def close(self) -> None:
        """The run ended."""


class _Quiet:
    def start(self, total: int, description: str) -> None:
        pass

    def advance(self, outcome: Outcome, *, throttled: int) -> None:
        pass

    def close(self) -> None:
        pass


class _Lines:
    """One log line every `every` seconds: what cron mails and CI logs keep."""

    def __init__(self, every: float = 10.0) -> None:
        self._every = every
        self._total = 0
        self._done = 0
        self._counts: Counter[str] = Counter()
        self._started = time.monotonic()
        self._last = self._started
        self._throttled = 0

    def start(self, total: int, description: str) -> None:
        self._total = total
        self._started = self._last = time.monotonic()
        log.info("%s: %d rows", description, total)

    def advance(self, outcome: Outcome, *, throttled: int) -> None:
        self._done += 1
        self._counts[outcome.value] += 1
        self._throttled = throttled
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = max(now - self._started, 1e-9)
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self._counts.items()))
        log.info(
            "progress %d/%d rows (%.1f rows/s, 429s %d): %s",
            self._done,
            self._total,
            self._done / elapsed,
            self._throttled,
            counts,
        )

    def close(self) -> None:
        pass


class _Bar:
    """A rich progress bar with rate, 429s and ETA."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.1f} rows/s"),
            TextColumn("429s {task.fields[throttled]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task: TaskID | None = None
        self._started = time.monotonic()
        self._done = 0

    def start(self, total: int, description: str) -> None:
        self._started = time.monotonic()
        self._task = self._progress.add_task(description, total=total, rate=0.0, throttled=0)
        self._progress.start()

    def advance(self, outcome: Outcome, *, throttled: int) -> None:
        if self._task is None:
            return
        self._done += 1
        rate = self._done / max(time.monotonic() - self._started, 1e-9)
        self._progress.update(self._task, advance=1, rate=rate, throttled=throttled)

    def close(self) -> None:
        self._progress.stop()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def make_progress(*, quiet: bool, every: float = 10.0) -> ProgressSink:
    """A bar when stderr is a terminal, periodic lines otherwise, nothing with `--quiet`."""
    if quiet:
        return _Quiet()
    if sys.stderr.isatty() and os.environ.get("TERM") != "dumb":
        return _Bar(Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR"))))
    return _Lines(every)
