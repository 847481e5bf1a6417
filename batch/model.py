"""The plain values that flow between the modules (reader → mapper → planner → engine → report)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TypeAlias

if TYPE_CHECKING:
    from batch.stamp import ExportStamp

__all__ = [
    "JSON",
    "NOTHING_TO_CHANGE",
    "CellNote",
    "Invalid",
    "Outcome",
    "Problem",
    "Rate",
    "RawRow",
    "RowResult",
    "Skipped",
    "Update",
]

JSON: TypeAlias = str | int | float | bool | list["JSON"] | dict[str, "JSON"] | None

#: Why a row with only its id is skipped (`Skipped.reason` unless another is given).
NOTHING_TO_CHANGE: Final = "nothing to change"


@dataclass(frozen=True, slots=True)
class CellNote:
    """What a spreadsheet cell's text alone does not say; the mapper judges it per property.

    `kind` is `number` (a number cell: `shown` is the text Excel displays, `detail` how it is
    displayed: `general`, `scientific`, `digits` or `other`), `date` (a date, time or duration
    cell: `shown` as Excel displays it, `detail` is `date`, `time` or `duration`), `boolean` (a
    TRUE/FALSE cell: `shown` is `TRUE` or `FALSE`), `formula` (a formula without a saved value:
    `detail` is the formula) or `error` (an error cell such as `#N/A`, or a value Excel cannot
    show: `shown` is what Excel shows, `detail` says why).
    """

    kind: str
    shown: str
    detail: str


@dataclass(frozen=True, slots=True)
class RawRow:
    """One data row as text cells keyed by the file's own header; `number` as Excel shows it.

    `notes` (Excel only, usually None) holds the cells whose text is not the whole story;
    `hidden` says the row is hidden in the sheet (by a filter or by hand).
    """

    number: int
    cells: dict[str, str]
    notes: dict[str, CellNote] | None = None
    hidden: bool = False


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason a row is invalid: the column (as in the file), the offending value, why."""

    column: str
    value: str
    reason: str

    def __str__(self) -> str:
        if self.column and self.value:
            return f"{self.column}: {self.reason} (got {_shown(self.value)})"
        if self.column:
            return f"{self.column}: {self.reason}"
        return self.reason


# A message shows this much of a bad value; the value itself stays whole (failures.csv).
_SHOWN_VALUE = 80


def _shown(value: str) -> str:
    if len(value) <= _SHOWN_VALUE:
        return repr(value)
    return f"{value[:_SHOWN_VALUE]!r}… ({len(value):,} characters)"


@dataclass(frozen=True, slots=True)
class Update:
    """A valid row: the event to patch and the wire body (only the given properties).

    `exported`: the row's `_exported` stamp (the file came from `export`), which
    `batch.changes.judge` compares the file and the tenant with; None for other rows.
    """

    number: int
    event_id: str
    body: dict[str, JSON]
    warnings: tuple[str, ...] = ()
    exported: ExportStamp | None = None


@dataclass(frozen=True, slots=True)
class Invalid:
    """A row that cannot be sent, with every problem found in it (not only the first)."""

    number: int
    event_id: str
    problems: tuple[Problem, ...]

    @property
    def message(self) -> str:
        """All problems as one line, for reports."""
        return "; ".join(str(p) for p in self.problems)


@dataclass(frozen=True, slots=True)
class Skipped:
    """A row with nothing to change (only its id)."""

    number: int
    event_id: str
    reason: str = NOTHING_TO_CHANGE
    # What `validate` points out about the row although nothing is wrong with it (a cell the
    # admin emptied in an export, which changes nothing).
    warnings: tuple[str, ...] = ()


class Outcome(enum.StrEnum):
    """What happened to one input row (CONTRACT.md, "The run folder")."""

    UPDATED = "updated"
    UNCHANGED = "unchanged"
    SKIPPED = "skipped"
    INVALID = "invalid"
    FAILED = "failed"
    PLANNED = "planned"
    NOT_ATTEMPTED = "not_attempted"
    CONFLICT = "conflict"

    @property
    def ok(self) -> bool:
        """Whether this outcome lets the run exit 0."""
        return self in (Outcome.UPDATED, Outcome.UNCHANGED, Outcome.SKIPPED, Outcome.PLANNED)


@dataclass(slots=True)
class RowResult:
    """Exactly one per input row: the only thing the reporter and the ledger consume."""

    number: int
    event_id: str
    outcome: Outcome
    status: int | None = None
    error_code: str = ""
    error_message: str = ""
    changed_fields: tuple[str, ...] = ()
    attempts: int = 0
    request_id: str = ""
    client_request_id: str = ""
    # A row an earlier part of the run finished (`--resume`): reported again, not recorded again.
    restored: bool = False
    # The values behind `changed_fields` (changes.csv, the dry run's diff): the body written or
    # planned (a superset of the changed fields; the row's own dict, not a copy), and the
    # event's values before it (None: not read, so not known).
    written: dict[str, JSON] = field(default_factory=dict)
    before: dict[str, JSON] | None = None
    # The last error that made the tool retry this row (results.csv `last_error`); "" if none.
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class Rate:
    """A budget such as `100/20`: at most `count` requests in any `seconds`-long window."""

    count: int
    seconds: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Parse `N/SECONDS` (e.g. `100/20`, `100/2.5`); raises ValueError with a clear message."""
        count_text, sep, seconds_text = text.strip().partition("/")
        try:
            count, seconds = int(count_text), float(seconds_text)
        except ValueError:
            count, seconds = 0, 0.0
        if not sep or count < 1 or not seconds > 0:
            raise ValueError(f"{text!r} is not a rate like 100/20 (N requests per SECONDS)")
        return cls(count, seconds)

    @property
    def per_second(self) -> float:
        """The sustained rate this budget allows."""
        return self.count / self.seconds

    def __str__(self) -> str:
        return f"{self.count}/{self.seconds:g}"
