"""`export`: the tenant's autopilot events into a CSV or Excel file that is valid input as it is.

The file is the start of the export → edit → `run` workflow, so it holds wire values exactly:
strings verbatim (ids and serials keep their leading zeros), null as an empty cell (an empty cell
leaves a property unchanged), every other value as Graph sent it, the `id` column first. Running
the untouched file with `run --only-changed` therefore changes nothing.

Stale exports are safe: a last column `_exported` holds each row's stamp (`batch.stamp`), the
digests of what the export saw in every cell. A later `run` of the file never writes a cell that
still holds the exported value, and refuses (`conflict`) a cell the admin edited that the tenant
also changed since. A stamp column, not a sidecar file, because the file is renamed, moved and
saved again as .xlsx, and its rows are sorted, filtered and copied into other files (and into
`failures.csv`): the stamp travels with its row through all of that. The reader ignores `_`
columns as properties, so the file stays valid input for older versions too.

CSV cells a spreadsheet would run as formulas (`=`, `+`, `-`, `@` first) get a leading `'`
(`batch.report.neutralise_cell`), which the reader takes off again; negative durations such as
`-PT5M` are among them and read back unchanged. XLSX cells are text cells and need no guard; only
a value that itself starts with `'` and then `= + - @` gets one more `'` there too, so that it
reads back as it was.

Reading: one paged walk of the event list (`batch.listing.ListWalker`: `$top`, `@odata.nextLink`),
each page paced by the read budget and retried on 429/503/504/no answer, so a 429 closes the
limiter's gate for its Retry-After. Time (the waits, the elapsed time reported, the progress rate)
comes from the one `Clock` the caller passes (`batch.limiter.Clock`), so a test on
`batch.testing.FakeClock` waits for nothing.

Writing: rows stream to a `.partial` file next to OUT that replaces OUT only once every page is
written, so a failed or interrupted export never leaves a half file (or destroys the old one).
CSV through the csv module (UTF-8 with BOM for Excel, RFC 4180 quoting); XLSX through openpyxl's
write-only mode with every cell a text cell in the text number format (`@`), so Excel keeps
leading zeros even when a cell is retyped, and text that starts with `=` never becomes a formula.
While one page is written (in a worker thread), the next one is fetched; memory holds at most two
pages, whatever the tenant's size.

Filters Graph does not offer for this list run here: `--serial-file` (serials compared like
`--key`: case and surrounding spaces ignored, leading zeros kept) and `--since` on eventDateTime.

Any resource (`--resource`, `batch.resources`): its export columns by default, its collection,
its stamp table (`batch.stamp`), its serial number (the first of its `keys`) for
`--serial-file`; `--since` only where the resource has a date to be newer by (`newest_by`:
events). A secret property (a device account password) is never a column: it cannot be read.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Protocol

import anyio
import httpx

from batch.auth import TokenProvider
from batch.errors import BatchError, GraphError, InputFileError, UsageError
from batch.graph import PAGE_SIZE, GraphClient
from batch.limiter import DEFAULT_READ_RATE, Clock, Limiter, SystemClock
from batch.listing import ListWalker, collection_of
from batch.mapper import resolve_header, suggest_property
from batch.model import JSON, CellNote, Rate
from batch.report import neutralise_cell
from batch.resources import EVENTS, Resource
from batch.schema import PROPERTIES, canonical, normalize_header
from batch.stamp import STAMP_COLUMN, Stamper

__all__ = [
    "ExportOptions",
    "ExportProgress",
    "ExportResult",
    "Serials",
    "cell_text",
    "export_events",
    "fold_key",
    "load_serials",
    "make_export_progress",
    "parse_columns",
    "parse_since",
]

log = logging.getLogger("batch.export")

SUFFIXES: Final = (".csv", ".xlsx")
_EVENT_DATE: Final = PROPERTIES["eventDateTime"]
# Header texts of a serial-number column in a --serial-file besides the property name itself.
_SERIAL_HEADERS: Final = frozenset({"serial", "serialnumber", "serialno", "sn"})
_DATE_ONLY: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Excel's limit of characters in one cell.
_EXCEL_MAX_TEXT: Final = 32_767
# Text openpyxl stores as it is (a plain string cell): no formula (=...), error code (#...), control
# character or excess length. Anything else goes through `_XlsxSink._fit`.
_PLAIN_TEXT: Final = re.compile(r"(?![=#])[^\x00-\x08\x0b\x0c\x0e-\x1f]{0,32767}")
# A value that starts with `'` and then `= + - @`: the reader takes one `'` off such text.
_QUOTED_FORMULA: Final = re.compile(r"'+[=+\-@]")
# How many unmatched serials a warning names before it says "and N more".
_SHOWN_SERIALS: Final = 5


def fold_key(text: str) -> str:
    """How serials and device names compare: case and surrounding spaces ignored, zeros kept."""
    return text.strip().casefold()


class Serials(frozenset[str]):
    """The folded serials of a `--serial-file`, remembering each as the file spells it.

    Matching folds (`fold_key`); a message about a serial names it as the admin wrote it
    (`NOPE`, not `nope`), so it can be found in the file.
    """

    given: dict[str, str]

    def __new__(cls, texts: Iterable[str]) -> Serials:
        given: dict[str, str] = {}
        for text in texts:
            if folded := fold_key(text):
                given.setdefault(folded, text.strip())
        self = super().__new__(cls, given)
        self.given = given
        return self

    def spelled(self, folded: str) -> str:
        """The serial `folded` as the file first spelt it."""
        return self.given.get(folded, folded)


def cell_text(value: JSON) -> str | None:
    """A wire value as cell text that reads back as the same value; None for an empty cell."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def parse_columns(text: str, resource: Resource = EVENTS) -> tuple[str, ...]:
    """`--columns a,b,c` → property names (any header spelling), `id` first; raises UsageError."""
    names: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name = resolve_header(part, resource)
        if name is None:
            hint = suggest_property(part, resource)
            did_you_mean = f" (did you mean {hint}?)" if hint else ""
            raise UsageError(
                f"--columns: {part!r} is not a property{did_you_mean}; "
                "`autopilot-batch schema` lists them"
            )
        if name not in names:
            names.append(name)
    if not names:
        raise UsageError("--columns needs at least one property name, e.g. --columns id,osVersion")
    # Without ids the file could not be fed back to `run`; they always lead.
    return ("id", *(n for n in names if n != "id"))


def parse_since(text: str) -> dt.datetime:
    """`--since`: a date (midnight UTC) or a date and time with an offset; raises UsageError."""
    s = text.strip()
    problem = (
        f"--since {text!r}: use a date (2024-05-01, meaning midnight UTC) or a date and time "
        "with an offset (2024-05-01T09:30:00+02:00)"
    )
    if _DATE_ONLY.match(s):
        try:
            return dt.datetime.fromisoformat(s).replace(tzinfo=dt.UTC)
        except ValueError:
            raise UsageError(problem) from None
    instant = _instant(s)
    if instant is None:
        raise UsageError(problem)
    return instant[0]


def _instant(value: JSON) -> tuple[dt.datetime, str] | None:
    """A DateTimeOffset as (UTC datetime, digits beyond the microsecond), or None."""
    if not isinstance(value, str) or not value.strip():
        return None
    found = canonical(_EVENT_DATE, value)
    if isinstance(found, tuple) and isinstance(found[0], dt.datetime) and found[0].tzinfo:
        return found[0], str(found[1])
    return None


def _serial(resource: Resource) -> str:
    """The serial number property: the first key (`deviceSerialNumber`, `serialNumber`)."""
    return resource.keys[0]


def load_serials(path: Path, resource: Resource = EVENTS) -> Serials:
    """The serial numbers of a `--serial-file`, folded like `--key` matching.

    One serial per line, or a CSV/Excel file with a column named deviceSerialNumber (or Serial,
    Serial Number). Raises `InputFileError` for an unreadable or empty file, `UsageError` for a
    table without a serial column.
    """
    path = Path(path)
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        from batch.reader import open_input

        source = open_input(path)
        header = _serial_header(source.headers, resource)
        if header is None:
            raise UsageError(_no_serial_column(path))
        # A serial in a zero-padding number format is the text Excel shows (`000456`, not 456),
        # as `run --key` reads it (`batch.mapper`).
        serials = Serials(_padded(note) or text for _, text, note in source.noted_column(header))
    else:
        serials = _serials_from_text(path, resource)
    if not serials:
        raise InputFileError(path, "holds no serial numbers")
    return serials


def _padded(note: CellNote | None) -> str:
    """What a number cell shown through digit placeholders (`000000`) displays; else ""."""
    return (
        note.shown if note is not None and note.kind == "number" and note.detail == "digits" else ""
    )


def _serial_header(headers: Sequence[str], resource: Resource = EVENTS) -> str | None:
    serial = _serial(resource)
    for header in headers:
        if (
            resolve_header(header, resource) == serial
            or normalize_header(header) in _SERIAL_HEADERS
        ):
            return header
    return None


def _no_serial_column(path: Path) -> str:
    return (
        f"{path}: no serial number column (name it deviceSerialNumber or Serial), "
        "or list one serial per line"
    )


def _serials_from_text(path: Path, resource: Resource = EVENTS) -> Serials:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputFileError(path, "no such file") from None
    except IsADirectoryError:
        raise InputFileError(path, "is a folder, not a file") from None
    except UnicodeDecodeError:
        raise InputFileError(path, "not UTF-8 text") from None
    except OSError as error:
        raise InputFileError(path, f"cannot read: {error.strerror or error}") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return Serials(())
    delimiter = next((d for d in (",", ";", "\t") if d in lines[0]), ",")
    first = next(csv.reader([lines[0]], delimiter=delimiter))
    header = _serial_header(first, resource)
    if header is not None:
        index = first.index(header)
        rows = csv.reader(lines[1:], delimiter=delimiter)
        return Serials(row[index] for row in rows if len(row) > index)
    if len(first) > 1:
        raise UsageError(_no_serial_column(path))
    # One serial per line; a serial in quotes (as spreadsheets save them) loses the quotes.
    cells = (next(csv.reader([line.strip()]), [""]) for line in lines)
    return Serials(cell[0] for cell in cells if cell)


# --- progress ---------------------------------------------------------------------------------


class ExportProgress(Protocol):
    """Where `export_events` reports progress (the event count is unknown until the end)."""

    def start(self, description: str) -> None:
        """The export begins."""

    def update(self, *, read: int, written: int, throttled: int) -> None:
        """A page was read: events read and written so far, 429s so far."""

    def close(self) -> None:
        """The export ended."""


class _QuietProgress:
    def start(self, description: str) -> None:
        pass

    def update(self, *, read: int, written: int, throttled: int) -> None:
        pass

    def close(self) -> None:
        pass


class _LineProgress:
    """A log line every `every` seconds: what cron mails and CI logs keep."""

    def __init__(
        self, every: float, clock: Clock, *, items: str = "autopilot events", noun: str = "event"
    ) -> None:
        self._every = every
        self._clock = clock
        self._items = items
        self._noun = noun
        self._started = self._last = clock.now()

    def start(self, description: str) -> None:
        self._started = self._last = self._clock.now()
        log.info("%s: reading the tenant's %s", description, self._items)

    def update(self, *, read: int, written: int, throttled: int) -> None:
        now = self._clock.now()
        if now - self._last >= self._every:
            self._last = now
            rate = read / max(now - self._started, 1e-9)
            log.info(
                "export: %d %ss read, %d written (%.0f %ss/s, 429s %d)",
                read,
                self._noun,
                written,
                rate,
                self._noun,
                throttled,
            )

    def close(self) -> None:
        pass


class _BarProgress:
    """A rich progress line: events written and read, rate, 429s, elapsed time."""

    def __init__(self, clock: Clock, *, noun: str = "event") -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")))
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),  # no total: a pulsing bar
            TextColumn(f"{{task.completed}} {noun}s written, {{task.fields[read]}} read"),
            TextColumn("{task.fields[rate]:.0f}/s"),
            TextColumn("429s {task.fields[throttled]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self._task: Any = None
        self._clock = clock
        self._started = clock.now()

    def start(self, description: str) -> None:
        self._started = self._clock.now()
        self._task = self._progress.add_task(description, total=None, read=0, rate=0.0, throttled=0)
        self._progress.start()

    def update(self, *, read: int, written: int, throttled: int) -> None:
        if self._task is None:
            return
        rate = read / max(self._clock.now() - self._started, 1e-9)
        self._progress.update(
            self._task, completed=written, read=read, rate=rate, throttled=throttled
        )

    def close(self) -> None:
        self._progress.stop()


def make_export_progress(
    *,
    quiet: bool,
    every: float = 10.0,
    clock: Clock | None = None,
    resource: Resource = EVENTS,
) -> ExportProgress:
    """A bar when stderr is a terminal, periodic log lines otherwise, nothing with `--quiet`.

    `clock` (default: the real one) times the rate shown and the lines' spacing; `resource`
    names what is counted.
    """
    import sys

    clock = clock or SystemClock()
    if quiet:
        return _QuietProgress()
    if sys.stderr.isatty() and os.environ.get("TERM") != "dumb":
        return _BarProgress(clock, noun=resource.noun)
    return _LineProgress(every, clock, items=collection_of(resource).items, noun=resource.noun)


# --- writing ----------------------------------------------------------------------------------


class _Sink(Protocol):
    def shows(self, text: str | None) -> str | None: ...

    def write_rows(self, rows: Sequence[Sequence[str | None]]) -> None: ...

    def finish(self) -> None: ...

    def discard(self) -> None: ...


def _keep_quote(text: str | None) -> str | None:
    """An XLSX text cell that reads back as `text`: a value such as `'=x` gets one more `'`.

    Text cells need no guard against formulas, but the reader takes a `'` off a value that
    starts with `'` and `= + - @` (it is how neutralised CSV cells come back); the extra `'` is
    the one it takes.
    """
    if text is not None and text.startswith("'") and _QUOTED_FORMULA.match(text):
        return "'" + text
    return text


class _CsvSink:
    """UTF-8 with BOM (Excel then reads it as UTF-8) and RFC 4180 quoting, as every report.

    Formula-looking cells are neutralised the way the reader undoes (see the module docstring).
    """

    def __init__(self, path: Path, headers: Sequence[str]) -> None:
        self._path = path
        self._handle: IO[str] = path.open("w", encoding="utf-8-sig", newline="")
        self._writer = csv.writer(self._handle)
        self._writer.writerow(headers)

    def shows(self, text: str | None) -> str | None:
        """What the file will show for `text`: CSV holds any text."""
        return text

    def write_rows(self, rows: Sequence[Sequence[str | None]]) -> None:
        self._writer.writerows(
            ["" if c is None else neutralise_cell(c) for c in row] for row in rows
        )

    def finish(self) -> None:
        self._handle.close()

    def discard(self) -> None:
        self._handle.close()
        self._path.unlink(missing_ok=True)


class _XlsxSink:
    """openpyxl write-only: rows go to a temporary file at once, memory stays flat.

    Every value is an inline string cell, and the workbook's default cell format (cell format 0,
    the one every cell without a style of its own uses) is Text (`@`): Excel then keeps leading
    zeros even in a cell the user retypes, and never turns an id into a number. A default format
    instead of a style on each cell halves the writing time (openpyxl spends it per styled cell).
    """

    def __init__(self, path: Path, headers: Sequence[str], sheet_name: str = "Events") -> None:
        from openpyxl import Workbook
        from openpyxl.cell import WriteOnlyCell
        from openpyxl.styles.cell_style import StyleArray
        from openpyxl.utils import get_column_letter
        from openpyxl.utils.indexed_list import IndexedList

        self._path = path
        self.altered = 0
        self._cell = WriteOnlyCell
        self._book: Any = Workbook(write_only=True)
        # Cell format 0 as Text (49 is Excel's built-in "@"): openpyxl starts the workbook with
        # one default StyleArray in `_cell_styles` and writes that list as the cellXfs table.
        text = StyleArray()
        text.numFmtId = 49
        self._book._cell_styles = IndexedList([text])
        sheet = self._book.create_sheet(sheet_name)
        sheet.freeze_panes = "A2"
        for index, header in enumerate(headers, start=1):
            column = sheet.column_dimensions[get_column_letter(index)]
            column.width = max(12, min(len(header) + 2, 40))
            column.number_format = "@"  # a column style of its own would be General
        self._sheet = sheet
        self.write_rows([list(headers)])

    def shows(self, text: str | None) -> str | None:
        """What the workbook will show for `text` (see `_fit`)."""
        if text is None or _PLAIN_TEXT.fullmatch(text):
            return text
        from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

        return str(ILLEGAL_CHARACTERS_RE.sub("", text)[:_EXCEL_MAX_TEXT])

    def write_rows(self, rows: Sequence[Sequence[str | None]]) -> None:
        append, fit = self._sheet.append, self._fit
        for values in rows:
            append(
                [
                    text if text is None or _PLAIN_TEXT.fullmatch(text) else fit(text)
                    for text in map(_keep_quote, values)
                ]
            )

    def _fit(self, text: str) -> object:
        """A value openpyxl would not store as the same text: a text cell that holds it."""
        from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

        stored = ILLEGAL_CHARACTERS_RE.sub("", text)[:_EXCEL_MAX_TEXT]
        if stored != text:
            # XML cannot hold most control characters, Excel no more than 32,767 characters.
            self.altered += 1
        cell = self._cell(self._sheet)
        cell.value = stored
        cell.data_type = "s"  # "=1+1" stays text, never a formula; "#N/A" never an error
        return cell

    def finish(self) -> None:
        self._book.save(self._path)

    def discard(self) -> None:
        # Saving closes openpyxl's temporary sheet file; the result is then thrown away.
        try:
            self._book.save(self._path)
        except Exception:  # already failing: the first error is the one to report
            log.debug("closing the partial workbook failed", exc_info=True)
        self._path.unlink(missing_ok=True)


# --- the export -------------------------------------------------------------------------------


@dataclass(kw_only=True)
class ExportOptions:
    """Everything that shapes one export (the CLI builds it; the values are already parsed)."""

    out: Path
    # Empty: the resource's export columns (`Resource.export_columns`).
    columns: tuple[str, ...] = ()
    serials: frozenset[str] | None = None  # folded with `fold_key`
    since: dt.datetime | None = None  # aware
    read_limit: Rate = DEFAULT_READ_RATE
    max_retries: int = 8
    force: bool = False
    graph_root: str = "https://graph.microsoft.com"
    page_size: int = PAGE_SIZE
    resource: Resource = field(default=EVENTS)

    def __post_init__(self) -> None:
        if not self.columns:
            self.columns = self.resource.export_columns

    def check(self) -> None:
        """Refuse a bad target or options before anything is read."""
        out = self.out
        if out.suffix.lower() not in SUFFIXES:
            raise UsageError(f"{out}: the export must be a .csv or .xlsx file")
        if out.is_dir():
            raise UsageError(f"{out} is a folder")
        if out.exists() and not self.force:
            raise UsageError(f"{out} already exists (pass --force to overwrite it)")
        if not out.parent.is_dir():
            raise UsageError(f"{out}: the folder {out.parent} does not exist")
        if not self.columns or self.columns[0] != "id":
            raise UsageError("the export's columns must start with id")
        unknown = [c for c in self.columns if c not in self.resource.properties]
        if unknown:
            raise UsageError(f"not properties: {', '.join(unknown)}")
        secret = [c for c in self.columns if c in self.resource.secrets]
        if secret:
            raise UsageError(f"{', '.join(secret)} cannot be read back, so cannot be exported")
        if self.max_retries < 0:
            raise UsageError("--max-retries must be 0 or more")
        if not 1 <= self.page_size <= PAGE_SIZE:
            raise UsageError(f"the page size must be between 1 and {PAGE_SIZE}")
        if self.since is not None and self.since.tzinfo is None:
            raise UsageError("--since needs a time zone")
        if self.since is not None and self.resource.newest_by is None:
            raise UsageError(
                f"--since cannot be used with --resource {self.resource.name}: "
                f"{self.resource.noun}s have no event date"
            )

    @property
    def select(self) -> tuple[str, ...]:
        """The properties to ask Graph for: the columns plus what the filters look at."""
        wanted = list(self.columns)
        serial = _serial(self.resource)
        if self.serials is not None and serial not in wanted:
            wanted.append(serial)
        newest_by = self.resource.newest_by
        if self.since is not None and newest_by is not None and newest_by not in wanted:
            wanted.append(newest_by)
        return tuple(wanted)


@dataclass
class ExportResult:
    """What an export did (printed by the CLI, one JSON object with `--json`)."""

    out: Path
    columns: tuple[str, ...]
    read: int = 0
    written: int = 0
    pages: int = 0
    throttled: int = 0
    retries: int = 0
    elapsed: float = 0.0
    unmatched_serials: tuple[str, ...] = ()
    altered_cells: int = 0

    @property
    def data(self) -> dict[str, JSON]:
        """The result as plain JSON values."""
        return {
            "file": str(self.out),
            "columns": list(self.columns),
            "events_read": self.read,
            "events_written": self.written,
            "pages": self.pages,
            "throttled_429": self.throttled,
            "retries": self.retries,
            "elapsed_seconds": round(self.elapsed, 3),
            "unmatched_serials": len(self.unmatched_serials),
            "altered_cells": self.altered_cells,
        }


class _Filter:
    """The client-side filters; remembers which serials of the list were seen."""

    def __init__(self, options: ExportOptions) -> None:
        self.serials = options.serials
        self.since = options.since
        self.serial = _serial(options.resource)
        self.newest_by = options.resource.newest_by or "eventDateTime"
        self.seen: set[str] = set()

    def keep(self, event: dict[str, JSON]) -> bool:
        if self.serials is not None:
            serial = event.get(self.serial)
            folded = fold_key(serial) if isinstance(serial, str) else ""
            if folded not in self.serials:
                return False
            self.seen.add(folded)
        if self.since is not None:
            instant = _instant(event.get(self.newest_by))
            # No (readable) eventDateTime: not provably recent, so not exported.
            if instant is None or instant[0] < self.since:
                return False
        return True


def _partial_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial")


def _open_sink(
    path: Path, suffix: str, columns: Sequence[str], sheet_name: str = "Events"
) -> _CsvSink | _XlsxSink:
    try:
        if suffix == ".csv":
            return _CsvSink(path, columns)
        return _XlsxSink(path, columns, sheet_name)
    except OSError as error:
        raise UsageError(f"{path.parent}: cannot write there: {error.strerror or error}") from None


async def export_events(
    options: ExportOptions,
    *,
    tokens: TokenProvider,
    progress: ExportProgress | None = None,
    clock: Clock | None = None,
    http: httpx.AsyncClient | None = None,
) -> ExportResult:
    """Write every (filtered) event of the tenant to `options.out`; see the module docstring.

    Raises `UsageError` for a bad target, `AuthError`/`RunAborted` when Graph cannot be read, and
    `BatchError` when the file cannot be written; OUT is then left as it was.
    """
    options.check()
    clock = clock or SystemClock()
    progress = progress or _QuietProgress()
    # Export never writes to Graph: the write budget is there only because a Limiter needs one.
    limiter = Limiter(write=options.read_limit, read=options.read_limit, clock=clock)
    columns = options.columns
    keep = _Filter(options)
    result = ExportResult(out=options.out, columns=columns)
    started = clock.now()
    partial = _partial_path(options.out)
    resource = options.resource
    sink = _open_sink(
        partial, options.out.suffix.lower(), (*columns, STAMP_COLUMN), resource.name.capitalize()
    )
    stamp = Stamper(columns, resource)
    finished = False

    def write(page: list[dict[str, JSON]]) -> None:
        rows = []
        for event in page:
            result.read += 1
            if isinstance(event.get("id"), str) and keep.keep(event):
                cells = [cell_text(event.get(name)) for name in columns]
                shown = [sink.shows(text) for text in cells]
                if shown != cells:
                    # The stamp records what the file shows: a cell the workbook could not hold
                    # as Graph sent it is not "edited", and a run leaves it alone.
                    seen = zip(columns, shown, cells, strict=True)
                    event = {**event, **{n: text for n, text, was in seen if text != was}}
                rows.append([*cells, stamp(event)])
        try:
            sink.write_rows(rows)
        except OSError as error:
            raise BatchError(f"{partial}: cannot write: {error.strerror or error}") from None
        result.written += len(rows)

    progress.start(f"export to {options.out.name}")
    try:
        async with GraphClient(options.graph_root, tokens, http=http) as client:
            reader = ListWalker(
                client,
                limiter,
                collection_of(resource),
                select=options.select,
                max_retries=options.max_retries,
                clock=clock,
                page_size=options.page_size,
            )
            try:
                page = await reader.next_page()
                while True:
                    if reader.done:
                        await anyio.to_thread.run_sync(write, page)
                        break
                    # Write this page in a thread while the next one is on its way.
                    page = await _write_while_fetching(write, page, reader)
                    progress.update(
                        read=result.read, written=result.written, throttled=reader.throttled
                    )
            except GraphError as error:
                raise reader.failure(error) from None
            progress.update(read=result.read, written=result.written, throttled=reader.throttled)
            result.pages, result.throttled, result.retries = (
                reader.pages,
                reader.throttled,
                reader.retries,
            )
        try:
            sink.finish()
            os.replace(partial, options.out)
        except OSError as error:
            raise BatchError(f"{options.out}: cannot write: {error.strerror or error}") from None
        finished = True
    finally:
        progress.close()
        if not finished:
            sink.discard()
    result.elapsed = clock.now() - started
    if isinstance(sink, _XlsxSink) and sink.altered:
        result.altered_cells = sink.altered
        log.warning(
            "%s control characters or more than 32,767 characters, which an Excel file cannot "
            "store; left out (a run of this file leaves those cells alone unless you edit them)",
            "1 cell holds" if sink.altered == 1 else f"{sink.altered} cells hold",
        )
    if options.serials is not None:
        serials = options.serials
        spelled = serials.spelled if isinstance(serials, Serials) else str
        result.unmatched_serials = tuple(spelled(k) for k in sorted(serials - keep.seen))
        if result.unmatched_serials:
            shown = ", ".join(result.unmatched_serials[:_SHOWN_SERIALS])
            more = len(result.unmatched_serials) - _SHOWN_SERIALS
            unmatched = len(result.unmatched_serials)
            log.warning(
                "%s of the serial file match%s no %s: %s%s",
                f"{unmatched} serial{'' if unmatched == 1 else 's'}",
                "es" if unmatched == 1 else "",
                resource.noun,
                shown,
                f" and {more} more" if more > 0 else "",
            )
    return result


async def _write_while_fetching(
    write: Callable[[list[dict[str, JSON]]], None],
    page: list[dict[str, JSON]],
    reader: ListWalker,
) -> list[dict[str, JSON]]:
    """Write `page` in a worker thread while fetching the next one; return the next page."""
    fetched: list[list[dict[str, JSON]]] = []

    async def fetch() -> None:
        fetched.append(await reader.next_page())

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(fetch)
            await anyio.to_thread.run_sync(write, page)
    except BaseExceptionGroup as group:
        # One failure at a time reaches the user: the first one that is not a cancellation.
        raise _first_error(group) from None
    return fetched[0]


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    cancelled = anyio.get_cancelled_exc_class()
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            return _first_error(error)
        if not isinstance(error, cancelled):
            return error
    return group.exceptions[0]
