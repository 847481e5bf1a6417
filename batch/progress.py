"""Progress on stderr: a rich bar on a terminal, plain periodic log lines otherwise (cron, CI).

The bar fits 80 columns (the file name is in the "run started" line above it, not in the bar),
and its rate is computed as it is drawn, never frozen at the last finished row. When no row has
finished for a moment, it says what the run is waiting for instead (`watch`): the write window
(the budget is spent: at Graph's pace, most of the time between two `$batch`es) or a 429 pause.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from types import TracebackType
from typing import Final, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Column
from rich.text import Text

from batch.model import Outcome

__all__ = ["MAX_WIDTH", "ProgressSink", "make_progress"]

log = logging.getLogger("batch.progress")


class ProgressSink(Protocol):
    """Where the engine reports rows as they finish."""

    def start(self, total: int, description: str) -> None:
        """The run begins with `total` rows."""

    def advance(self, outcome: Outcome, *, throttled: int) -> None:
        """One row finished; `throttled` is the run's 429 count so far."""

    def watch(self, status: Callable[[], str | None]) -> None:
        """Ask `status` what the run waits for when no row finishes (it may be called from
        another thread, so it must only read)."""

    def close(self) -> None:
        """The run ended."""


#: The bar's width at most, whatever the terminal's.
MAX_WIDTH: Final = 80
# Rows finishing less than this long ago show the rate; a longer lull shows what holds them.
_LULL_SECONDS: Final = 1.5


class _Quiet:
    def start(self, total: int, description: str) -> None:
        pass

    def watch(self, status: Callable[[], str | None]) -> None:
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

    def watch(self, status: Callable[[], str | None]) -> None:
        pass  # a line per interval already shows progress; a lull is visible as its absence

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


class _StatusColumn(ProgressColumn):
    """Rows per second, or what the run waits for when no row finished for a moment."""

    def __init__(self, last_advance: Callable[[], float]) -> None:
        super().__init__(table_column=Column(width=28, no_wrap=True))
        self.status: Callable[[], str | None] = lambda: None
        self._last_advance = last_advance

    def render(self, task: Task) -> Text:
        if time.monotonic() - self._last_advance() > _LULL_SECONDS:
            status = self.status()
            if status:
                return Text(status, style="yellow")
        elapsed = task.elapsed or 0.0
        rate = task.completed / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:.1f} rows/s")


class _Bar:
    """A rich progress bar with rate (or what it waits for), 429s and ETA, in 80 columns."""

    def __init__(self, console: Console) -> None:
        self._last = time.monotonic()
        self._status = _StatusColumn(lambda: self._last)
        self._progress = Progress(
            BarColumn(bar_width=None),
            MofNCompleteColumn(),
            self._status,
            TextColumn("429s {task.fields[throttled]}"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            expand=True,
        )
        self._task: TaskID | None = None

    def start(self, total: int, description: str) -> None:
        self._last = time.monotonic()
        self._task = self._progress.add_task(description, total=total, throttled=0)
        self._progress.start()

    def advance(self, outcome: Outcome, *, throttled: int) -> None:
        if self._task is None:
            return
        self._last = time.monotonic()
        self._progress.update(self._task, advance=1, throttled=throttled)

    def watch(self, status: Callable[[], str | None]) -> None:
        self._status.status = status

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
        width = min(shutil.get_terminal_size((MAX_WIDTH, 24)).columns, MAX_WIDTH)
        return _Bar(Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), width=width))
    return _Lines(every)
