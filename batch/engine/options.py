"""What shapes a run and what it returns: `RunOptions`, `RunSummary`, and the `RowPlan` it streams.

The bottom of the engine package: every stage may read these, none of them imports a stage.
`RunOptions` is the one object the CLI and job files build; it lives in `batch.options` (small
parts: sending, source, target, judging) and is re-exported here for the stages.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from batch.model import Invalid, RawRow, Skipped, Update
from batch.options import RunOptions

__all__ = ["RowPlan", "RunOptions", "RunSummary", "default_out_dir"]


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
    return options.runs_root / f"{stamp}-{options.source.file.stem}"
