"""What shapes a run and what it returns: `RunOptions`, `RunSummary`, and the `RowPlan` it streams.

The bottom of the engine package: every stage may read these, none of them imports a stage.
`RunOptions` is the one object the CLI and job files build (its field names are part of the job
file format, `batch.jobs.spec`).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from batch.errors import UsageError
from batch.mapper import InputOptions
from batch.model import Invalid, Rate, RawRow, Skipped, Update
from batch.planner import MAX_BATCH

__all__ = ["RowPlan", "RunOptions", "RunSummary", "default_out_dir"]


@dataclass(kw_only=True)
class RunOptions:
    """Everything that shapes one run (the CLI and job files both build this)."""

    input: Path
    out: Path | None = None
    resume: bool = False
    dry_run: bool = False
    mode: Literal["single", "batch"] = "batch"
    batch_size: int = MAX_BATCH
    write_limit: Rate = field(default_factory=lambda: Rate(100, 20))
    # None: ten times the write budget over the same window, as Graph's limits are (1000 vs 100).
    read_limit: Rate | None = None
    concurrency: int = 4
    max_retries: int = 8
    input_options: InputOptions = field(default_factory=InputOptions)
    graph_root: str = "https://graph.microsoft.com"
    cloud: str = "global"
    runs_root: Path = Path("runs")
    # Read the current values first; rows already holding the given values are `unchanged`.
    only_changed: bool = False
    # Keep before-images (read before writing, stored before the PATCH); drives `revert`.
    backup: bool = True
    # Write fields someone else changed since the reverted run (revert) or since the export
    # (a file from `export`, batch.stamp); otherwise such fields are a `conflict`.
    force: bool = False
    # With `input_options.key` (--key): how to choose among several events with one key.
    pick: str | None = None
    # Send changes that look like Excel's damage to the current value (leading zeros stripped,
    # digits in scientific notation); otherwise such rows are `invalid` (batch.changes).
    accept_lost_zeros: bool = False

    @property
    def reads(self) -> Rate:
        """The read (any request) budget in effect."""
        return self.read_limit or Rate(self.write_limit.count * 10, self.write_limit.seconds)

    def check(self) -> None:
        """Reject impossible combinations before anything is read or sent."""
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise UsageError(f"--batch-size must be between 1 and {MAX_BATCH}")
        if self.concurrency < 1:
            raise UsageError("--concurrency must be at least 1")
        if self.max_retries < 0:
            raise UsageError("--max-retries must be 0 or more")
        if self.mode not in ("single", "batch"):
            raise UsageError("--mode must be single or batch")
        if self.pick is not None and self.input_options.key is None:
            raise UsageError("--pick chooses among events with the same --key: pass --key too")

    def recorded(self) -> dict[str, Any]:
        """The options as stored in the ledger and summary (no secrets exist here)."""
        return {
            "mode": self.mode,
            "batch_size": self.batch_size,
            "write_limit": str(self.write_limit),
            "concurrency": self.concurrency,
            "max_retries": self.max_retries,
            "dry_run": self.dry_run,
            "graph_root": self.graph_root,
            "cloud": self.cloud,
            "only_changed": self.only_changed,
            "backup": self.backup,
            "key": self.input_options.key,
            "pick": self.pick,
            "force": self.force,
            "accept_lost_zeros": self.accept_lost_zeros,
        }


@dataclass
class RunSummary:
    """What a run did, as written to summary.json; `exit_code` follows CONTRACT.md."""

    out_dir: Path
    counts: Counter[str]
    total: int
    exit_code: int
    data: dict[str, Any]


class _Headers(Protocol):
    @property
    def headers(self) -> Sequence[str]: ...


class RowPlan(Protocol):
    """What a run streams: a prepared input file (`mapper.Prepared`) or a `revert.RevertPlan`."""

    @property
    def source(self) -> _Headers:
        """The columns failures.csv repeats (`.headers`)."""
        ...

    @property
    def total(self) -> int:
        """How many rows `rows()` yields."""
        ...

    @property
    def sha256(self) -> str:
        """The digest `--resume` checks the plan against."""
        ...

    @property
    def columns(self) -> Mapping[str, str]:
        """Header → property of the columns in use."""
        ...

    @property
    def warnings(self) -> Sequence[str]:
        """File-level warnings, logged at the start."""
        ...

    @property
    def stamped(self) -> bool:
        """Whether rows carry export stamps (the tenant's values must then be read)."""
        ...

    def rows(self) -> Iterator[tuple[RawRow, Update | Invalid | Skipped]]:
        """Every row with what it maps to, in order."""
        ...


def default_out_dir(options: RunOptions, now: dt.datetime | None = None) -> Path:
    """`runs/<UTC timestamp>-<input stem>/`."""
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    return options.runs_root / f"{stamp}-{options.input.stem}"
