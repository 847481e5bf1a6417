"""The counts summary.json carries beside the outcomes: fields changed and error codes.

The reporter feeds every row's result to one `Tally`, in input order, restored rows of a
resumed run included, so the counts describe the whole run folder: `fields_changed` counts
exactly the fields results.csv's `changed_fields` lists (changes.csv has one line for each),
and `error_codes` the `error_code` of its failed, invalid and conflict rows. Retry reasons are
counted where the retries happen (the engine), not here: a retry is not a row.
"""

from __future__ import annotations

from collections import Counter
from typing import Final

from batch.model import Outcome, RowResult

__all__ = ["PROBLEM_OUTCOMES", "Tally"]

#: The outcomes that need a person: listed on the console, in report.html and in failures.csv.
PROBLEM_OUTCOMES: Final = frozenset({Outcome.FAILED, Outcome.INVALID, Outcome.CONFLICT})


class Tally:
    """Counts over a run's results: per changed field, per error code."""

    def __init__(self) -> None:
        self.fields: Counter[str] = Counter()
        self.error_codes: Counter[str] = Counter()

    def add(self, result: RowResult) -> None:
        """Count one row's result."""
        self.fields.update(result.changed_fields)
        if result.outcome in PROBLEM_OUTCOMES:
            self.error_codes[result.error_code or "Unknown"] += 1

    def to_json(self) -> dict[str, dict[str, int]]:
        """`fields_changed` and `error_codes`, most frequent first (ties by name)."""
        return {
            "fields_changed": _ordered(self.fields),
            "error_codes": _ordered(self.error_codes),
        }


def _ordered(counts: Counter[str]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
