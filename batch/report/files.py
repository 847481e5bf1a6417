"""The run folder's row files: results.csv, failures.csv, changes.csv, requests.jsonl, summary.json.

Writers are incremental and flushed after every write so that a crash leaves usable files. CSVs are
UTF-8 with a BOM (Excel) and RFC 4180 quoting. Text that came from Graph and looks like a formula is
neutralised, so opening results.csv in Excel never runs it.

Two guards, because the files have two jobs. `neutralise` (results.csv, changes.csv, messages) also
covers a leading tab or carriage return, as OWASP advises; nobody feeds those cells back.
`neutralise_cell` (failures.csv's input columns, CSV exports) prefixes only what the reader takes
off again (a `'` before `= + - @`, `batch.reader`), so a neutralised file is still valid input
meaning the same values: `=1+1` is written `'=1+1` and read back as `=1+1`.

Key columns: an admin finds a row by its serial or device name, not by its GUID, so results.csv
ends with the input's key columns (`deviceSerialNumber`, `managedDeviceName`, named by property
whatever the file's header said) and changes.csv carries the first of them as `key`.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final

from batch.model import JSON, RawRow, RowResult

__all__ = [
    "CHANGE_COLUMNS",
    "KEY_PROPERTIES",
    "NULL_TEXT",
    "RESULT_COLUMNS",
    "ChangesWriter",
    "FailuresWriter",
    "RequestsWriter",
    "ResultsWriter",
    "cell_text",
    "key_columns",
    "neutralise",
    "neutralise_cell",
    "write_json_atomic",
]

RESULT_COLUMNS: Final = (
    "row",
    "id",
    "outcome",
    "status",
    "error_code",
    "error_message",
    "changed_fields",
    "attempts",
    "request_id",
    "client_request_id",
    "last_error",
)
#: One line per changed field per row.
CHANGE_COLUMNS: Final = ("row", "id", "key", "field", "old", "new", "outcome")
#: Properties that name a device for a person; results.csv repeats those the input has
#: (events' serial and device name, devices' serial: no file holds both resources' names).
KEY_PROPERTIES: Final = ("deviceSerialNumber", "managedDeviceName", "serialNumber")
#: How a JSON null shows in a report cell (the input's default `--null-token`).
NULL_TEXT: Final = "<null>"

_FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")
# What the reader unquotes: a `'` followed by `= + - @`. Text that already starts that way gets
# one more `'`, so reading it back takes off exactly the one added here.
_INPUT_FORMULA: Final = re.compile(r"'*[=+\-@]")


def neutralise(text: str) -> str:
    """Prefix a formula-looking cell with `'` so spreadsheet programs show it as text (OWASP)."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def neutralise_cell(text: str) -> str:
    """Prefix an input cell with `'` where a spreadsheet would run it; the reader undoes it."""
    return "'" + text if _INPUT_FORMULA.match(text) else text


def _open_csv(path: Path) -> IO[str]:
    # newline="" is what the csv module needs to write RFC 4180 line endings itself.
    return path.open("w", encoding="utf-8-sig", newline="")


def cell_text(value: JSON) -> str:
    """A wire value as report text: strings as they are, null as `<null>`, the rest as JSON."""
    if value is None:
        return NULL_TEXT
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def key_columns(columns: Mapping[str, str]) -> list[tuple[str, str]]:
    """(property, header) of the key properties an input has, given its header → property map."""
    by_property = {prop: header for header, prop in columns.items()}
    return [(p, by_property[p]) for p in KEY_PROPERTIES if p in by_property]


class ResultsWriter:
    """results.csv: one line per input row, written in input order as rows complete.

    `keys`: (property, header) of the input's key columns (`key_columns`), repeated at the end.
    """

    def __init__(self, path: Path, keys: Sequence[tuple[str, str]] = ()) -> None:
        self._keys = list(keys)
        self._file = _open_csv(path)
        self._csv = csv.writer(self._file)
        self._csv.writerow([*RESULT_COLUMNS, *(p for p, _ in self._keys)])
        self._file.flush()

    def write(self, result: RowResult, raw: RawRow | None = None) -> None:
        """Append one row's result (`raw`: its input row, for the key columns)."""
        cells = raw.cells if raw is not None else {}
        self._csv.writerow(
            (
                result.number,
                result.event_id,
                result.outcome.value,
                "" if result.status is None else result.status,
                neutralise(result.error_code),
                neutralise(result.error_message),
                ";".join(result.changed_fields),
                result.attempts,
                result.request_id,
                result.client_request_id,
                neutralise(result.last_error),
                # Trimmed as the row's values are: ` SN1 ` is the serial SN1.
                *(neutralise(cells.get(header, "").strip()) for _, header in self._keys),
            )
        )

    def flush(self) -> None:
        """Push buffered lines to the file."""
        self._file.flush()

    def close(self) -> None:
        """Flush and close."""
        self._file.close()


class FailuresWriter:
    """failures.csv: failed, invalid and conflict rows in their own columns; `_row,_outcome,_error`.

    The file is valid input for a re-run as it is: `_`-prefixed columns are ignored by the reader
    (an export's `_exported` stamp is kept, so the re-run still compares three ways), and cells
    are neutralised only in the way the reader undoes (`neutralise_cell`).
    """

    def __init__(self, path: Path, headers: Sequence[str]) -> None:
        self._headers = [h for h in headers if h not in ("_row", "_outcome", "_error")]
        self._file = _open_csv(path)
        self._csv = csv.writer(self._file)
        self._csv.writerow([*self._headers, "_row", "_outcome", "_error"])
        self._file.flush()
        self.count = 0

    def write(self, raw: RawRow, result: RowResult) -> None:
        """Append one failed or invalid row with its own cells."""
        message = result.error_message
        if result.error_code:
            message = f"{result.error_code}: {message}" if message else result.error_code
        self._csv.writerow(
            [
                *(neutralise_cell(raw.cells.get(h, "")) for h in self._headers),
                raw.number,
                result.outcome.value,
                neutralise(message),
            ]
        )
        self.count += 1

    def flush(self) -> None:
        """Push buffered lines to the file."""
        self._file.flush()

    def close(self) -> None:
        """Flush and close."""
        self._file.close()


class ChangesWriter:
    """changes.csv: one line per changed field per row, `row,id,key,field,old,new,outcome`.

    The lines are exactly results.csv's `changed_fields` spelled out, so the two files always
    agree. `old` is the before-image's value (empty when the run did not read the event, e.g.
    `--no-backup` or a plain dry run); `new` what was written, or would be (dry run).
    """

    def __init__(self, path: Path, keys: Sequence[tuple[str, str]] = ()) -> None:
        self._keys = list(keys)
        self._file = _open_csv(path)
        self._csv = csv.writer(self._file)
        self._csv.writerow(CHANGE_COLUMNS)
        self._file.flush()

    def write(self, raw: RawRow, result: RowResult) -> None:
        """Append the changed fields of one row (nothing for a row that changed nothing)."""
        if not result.changed_fields:
            return
        key = next((v for _, h in self._keys if (v := raw.cells.get(h, "").strip())), "")
        before = result.before
        for name in result.changed_fields:
            old = "" if before is None or name not in before else cell_text(before[name])
            new = cell_text(result.written[name]) if name in result.written else ""
            self._csv.writerow(
                (
                    result.number,
                    result.event_id,
                    neutralise(key),
                    name,
                    neutralise(old),
                    neutralise(new),
                    result.outcome.value,
                )
            )

    def flush(self) -> None:
        """Push buffered lines to the file."""
        self._file.flush()

    def close(self) -> None:
        """Flush and close."""
        self._file.close()


class RequestsWriter:
    """requests.jsonl (dry-run): one planned request per line `{"row","method","url","body"}`."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("w", encoding="utf-8")

    def write(self, row: int, method: str, url: str, body: Mapping[str, JSON]) -> None:
        """Append one planned request."""
        line = {"row": row, "method": method, "url": url, "body": dict(body)}
        self._file.write(json.dumps(line, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        """Push buffered lines to the file."""
        self._file.flush()

    def close(self) -> None:
        """Flush and close."""
        self._file.close()


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
