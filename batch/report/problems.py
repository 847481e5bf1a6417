"""The rows that need a person, read back from results.csv for the console and report.html.

Read from the file, not kept in memory during the run: results.csv is rewritten whole by every
part of a resumed run, in input order, so it is the one place that always holds the run's
complete and final answer, and `autopilot-batch report RUN_DIR` sees exactly what the run saw.
Reading stops after `limit` problem rows; a clean 50,000-row file reads in a fraction of a second.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from batch.report.files import KEY_PROPERTIES

__all__ = ["ProblemRow", "first_problems"]

_PROBLEMS: Final = frozenset({"failed", "invalid", "conflict"})
_NEUTRALISED: Final = ("'=", "'+", "'-", "'@", "'\t", "'\r")


@dataclass(frozen=True, slots=True)
class ProblemRow:
    """One failed, invalid or conflict row: where it is, what it is, why."""

    row: int
    event_id: str
    key: str  # the serial or device name, "" when the input had neither
    key_name: str  # the property `key` comes from
    outcome: str
    reason: str

    @property
    def label(self) -> str:
        """`row 7, serial 0012345678` or `row 7, id 3f2c…` (the id when there is no key)."""
        if self.key:
            # An event's and a device identity's serial number (`batch.resources` keys).
            name = "serial" if self.key_name in ("deviceSerialNumber", "serialNumber") else "device"
            return f"row {self.row}, {name} {self.key}"
        return f"row {self.row}, id {self.event_id}" if self.event_id else f"row {self.row}"


def _plain(text: str) -> str:
    """A results.csv cell without the `'` that kept Excel from running it as a formula."""
    return text[1:] if text.startswith(_NEUTRALISED) else text


def _reason(line: dict[str, str]) -> str:
    code = _plain(line.get("error_code", ""))
    message = _plain(line.get("error_message", ""))
    status = line.get("status", "")
    if code in ("InvalidRow", "Conflict", ""):
        # The message says it all; the code only names the outcome again.
        return message or code
    head = f"{status} {code}" if status else code
    return f"{head}: {message}" if message else head


def first_problems(results_csv: Path, limit: int) -> list[ProblemRow]:
    """Up to `limit` problem rows of a results.csv, in input order ([] when there is none)."""
    found: list[ProblemRow] = []
    if limit <= 0:
        return found
    try:
        handle = results_csv.open(encoding="utf-8-sig", newline="")
    except OSError:
        return found
    with handle:
        for line in csv.DictReader(handle):
            if line.get("outcome") not in _PROBLEMS:
                continue
            key_name = next((p for p in KEY_PROPERTIES if line.get(p)), "")
            found.append(
                ProblemRow(
                    row=int(line.get("row") or 0),
                    event_id=line.get("id", ""),
                    key=_plain(line.get(key_name, "")) if key_name else "",
                    key_name=key_name,
                    outcome=line.get("outcome", ""),
                    reason=_reason(line),
                )
            )
            if len(found) >= limit:
                break
    return found
