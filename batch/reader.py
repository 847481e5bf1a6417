"""Input files (CSV, XLSX, XLSM) → `RawRow`s of text cells, streamed, with file-level errors.

The reader knows files, not properties: it finds the header row, hands out every data row as
text exactly as the user sees it, and turns every way a file can be unreadable into one
`InputFileError` line. Mapping headers to properties is `batch.mapper`'s job.

Decisions worth knowing:

* Every cell is text. CSV cells are read verbatim (no float ids, no lost leading zeros, no `nan`).
  Native Excel cells are converted deliberately: whole numbers as integers (`3.0` → `3`), other
  numbers without exponent, date/time cells as ISO text *without* an offset (so they need
  `--assume-tz`), durations as .NET TimeSpan text, booleans as `true`/`false`.
* Row numbers are the file's own, as Excel shows them: the header is row 1 and the first data row
  is row 2. Rows whose cells are all blank are treated as absent (Excel files often carry trailing
  empty rows); they are not returned and not counted, but they keep their numbers.
* A column with a blank header is not returned (there is no property to map it to); its letter is
  listed in `RowSource.ignored_columns` so callers can warn about it.
* A CSV row with more cells than the header is an error naming the row; a shorter row is padded
  with empty cells (empty means "leave unchanged").
* Iterating a `RowSource` re-opens the file, so a source can be read any number of times with
  flat memory (pandas chunks for CSV, calamine's lazy row iterator for Excel).
"""

from __future__ import annotations

import codecs
import contextlib
import datetime as dt
import hashlib
import math
import re
from collections.abc import Generator, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Final

import pandas as pd
import python_calamine

from batch.errors import InputFileError, UsageError
from batch.model import RawRow

__all__ = [
    "CSV_SUFFIXES",
    "EXCEL_SUFFIXES",
    "RowSource",
    "column_letter",
    "excel_cell_text",
    "file_sha256",
    "open_input",
]

CSV_SUFFIXES: Final = frozenset({".csv"})
EXCEL_SUFFIXES: Final = frozenset({".xlsx", ".xlsm"})

_HASH_BLOCK = 1 << 20
_SNIFF_BYTES = 64 * 1024
_DELIMITERS: Final = (",", ";", "\t")
# pandas reports tokenizer failures with the record number; these pull it out of the message.
_RAGGED = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_EOF_IN_STRING = re.compile(r"EOF inside string starting at row (\d+)")


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file's bytes as lowercase hex (the run ledger's input digest)."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while block := handle.read(_HASH_BLOCK):
                digest.update(block)
    except OSError as error:
        raise InputFileError(path, f"cannot read: {error.strerror or error}") from None
    return digest.hexdigest()


def column_letter(index: int) -> str:
    """The spreadsheet letter of a 0-based column index (0 → A, 26 → AA)."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def _timespan_text(value: dt.timedelta) -> str:
    """A duration as .NET TimeSpan text `[-][d.]hh:mm:ss[.ffffff]`, as PowerShell prints it."""
    sign = "-" if value < dt.timedelta(0) else ""
    value = abs(value)
    hours, rest = divmod(value.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    days = f"{value.days}." if value.days else ""
    fraction = f".{value.microseconds:06d}" if value.microseconds else ""
    return f"{sign}{days}{hours:02d}:{minutes:02d}:{seconds:02d}{fraction}"


def excel_cell_text(value: object) -> str:
    """Turn one native Excel cell (as calamine returns it) into the text a user would type."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value.is_integer():
            return str(int(value))
        # repr is the shortest text that reads back as the same float; Decimal drops the exponent.
        return format(Decimal(repr(value)), "f")
    if isinstance(value, dt.datetime):  # before date: datetime is a date subclass
        # Excel stores no offset: leave it off, so the value counts as "without offset".
        return value.replace(tzinfo=None).isoformat()
    if isinstance(value, dt.date):
        return f"{value.isoformat()}T00:00:00"
    if isinstance(value, dt.time):
        return value.replace(tzinfo=None).isoformat()
    if isinstance(value, dt.timedelta):
        return _timespan_text(value)
    if value is None:
        return ""
    return str(value)


def _blank(cell: str) -> bool:
    return not cell or cell.isspace()


class RowSource:
    """A re-iterable stream of one input file's data rows.

    Every `iter()` re-opens the file and yields `RawRow(number, cells)` with the file's own row
    numbers and `cells` keyed by the header text, skipping rows whose cells are all blank.
    """

    path: Path
    headers: list[str]
    ignored_columns: list[str]

    def __init__(
        self,
        path: Path,
        header_cells: Sequence[str],
        header_number: int,
        *,
        first_column: int = 0,
    ) -> None:
        self.path = path
        self.header_number = header_number
        cleaned = [cell.strip() for cell in header_cells]
        if cleaned:
            cleaned[0] = cleaned[0].lstrip("\ufeff").strip()
        self._positions = [i for i, cell in enumerate(cleaned) if cell]
        if not self._positions:
            raise InputFileError(path, f"the header row (row {header_number}) is empty")
        self.headers = [cleaned[i] for i in self._positions]
        # Letters as the spreadsheet shows them (an Excel sheet may start in a later column).
        letter = [column_letter(first_column + i) for i in range(len(cleaned))]
        self.ignored_columns = [letter[i] for i, cell in enumerate(cleaned) if not cell]
        seen: dict[str, int] = {}
        for i in self._positions:
            if cleaned[i] in seen:
                raise InputFileError(
                    path,
                    f"duplicate column header {cleaned[i]!r} "
                    f"(columns {letter[seen[cleaned[i]]]} and {letter[i]})",
                )
            seen[cleaned[i]] = i
        self._width = len(cleaned)

    def _records(self) -> Iterator[tuple[int, Sequence[str]]]:
        """Every row after the header as (row number, all cells), blank rows included."""
        raise NotImplementedError  # pragma: no cover - every concrete source overrides it

    def _data(self) -> Iterator[tuple[int, Sequence[str]]]:
        for number, cells in self._records():
            # Stops at the first filled cell (usually the id), so it is cheap per row.
            if not all(_blank(cell) for cell in cells):
                yield number, cells

    def __iter__(self) -> Iterator[RawRow]:
        headers, positions = self.headers, self._positions
        contiguous = positions == list(range(len(positions)))
        for number, cells in self._data():
            if contiguous:
                yield RawRow(number, dict(zip(headers, cells, strict=False)))
            else:
                yield RawRow(number, {h: cells[i] for h, i in zip(headers, positions, strict=True)})

    def column(self, header: str) -> Iterator[tuple[int, str]]:
        """(row number, cell text) of one column for every data row; cheaper than full rows."""
        index = self._positions[self.headers.index(header)]
        for number, cells in self._data():
            yield number, cells[index]

    def count(self) -> int:
        """The number of data rows (blank rows excluded), by reading the file once."""
        return sum(1 for _ in self._data())


def _read_csv(
    path: Path, encoding: str, delimiter: str, chunk_size: int, nrows: int | None = None
) -> Iterator[pd.DataFrame]:
    """pandas chunks of every record, header included, every cell as text."""
    reader = pd.read_csv(
        path,
        header=None,
        sep=delimiter,
        dtype=str,
        keep_default_na=False,
        na_filter=False,
        # Blank lines stay in so that record numbers are the file's own row numbers.
        skip_blank_lines=False,
        encoding=encoding,
        encoding_errors="strict",
        engine="c",
        chunksize=chunk_size,
        nrows=nrows,
    )
    with reader:
        yield from reader


@contextlib.contextmanager
def _csv_errors(path: Path, encoding: str) -> Iterator[None]:
    """Turn what pandas raises while reading a CSV into one `InputFileError` line."""
    try:
        yield
    except UnicodeDecodeError:
        line = _first_undecodable_line(path, encoding)
        where = f" (line {line})" if line else ""
        hint = ", e.g. --encoding cp1252 if Excel saved it" if _is_utf8(encoding) else ""
        raise InputFileError(
            path,
            f"not valid {_display_encoding(encoding)} text{where}; "
            f"pass the file's encoding with --encoding{hint}",
        ) from None
    except pd.errors.EmptyDataError:
        raise InputFileError(path, "the file is empty (no header row)") from None
    except pd.errors.ParserError as error:
        message = str(error)
        if m := _RAGGED.search(message):
            raise InputFileError(
                path, f"row {m[2]} has {m[3]} cells but the header (row 1) has {m[1]}"
            ) from None
        if m := _EOF_IN_STRING.search(message):
            raise InputFileError(
                path, f'row {int(m[1]) + 1} opens a quoted cell (") that is never closed'
            ) from None
        raise InputFileError(path, f"not a readable CSV file: {message}") from None
    except OSError as error:
        raise InputFileError(path, f"cannot read: {error.strerror or error}") from None
    except ValueError as error:
        raise InputFileError(path, f"not a readable CSV file: {error}") from None


class _CsvSource(RowSource):
    def __init__(self, path: Path, encoding: str, delimiter: str, chunk_size: int) -> None:
        self._encoding = encoding
        self._delimiter = delimiter
        self._chunk_size = chunk_size
        with _csv_errors(path, encoding):
            first = next(_read_csv(path, encoding, delimiter, 1, nrows=1), None)
        if first is None or first.empty:
            raise InputFileError(path, "the file is empty (no header row)")
        super().__init__(path, [str(cell) for cell in first.iloc[0].tolist()], 1)

    def _records(self) -> Iterator[tuple[int, Sequence[str]]]:
        with _csv_errors(self.path, self._encoding):
            for chunk in _read_csv(self.path, self._encoding, self._delimiter, self._chunk_size):
                # pandas numbers the records of every chunk from the start of the file.
                number = int(chunk.index[0])
                for cells in zip(*(chunk[name].tolist() for name in chunk.columns), strict=True):
                    number += 1
                    if number > 1:  # row 1 is the header
                        yield number, cells

    def column(self, header: str) -> Iterator[tuple[int, str]]:
        """As `RowSource.column`, without building full rows: the first pass over a big file."""
        index = self._positions[self.headers.index(header)]
        with _csv_errors(self.path, self._encoding):
            for chunk in _read_csv(self.path, self._encoding, self._delimiter, self._chunk_size):
                first = int(chunk.index[0]) + 1
                for offset, value in enumerate(chunk[index].tolist()):
                    number = first + offset
                    if number == 1:
                        continue  # the header row
                    # A blank key cell counts only if some other cell of the row is filled.
                    filled = value and not value.isspace()
                    if filled or not all(_blank(c) for c in chunk.iloc[offset].tolist()):
                        yield number, value


class _ExcelSource(RowSource):
    def __init__(self, path: Path, sheet: str) -> None:
        self._sheet = sheet
        self._first_column = 0
        number, header = self._header(path, sheet)
        super().__init__(path, header, number, first_column=self._first_column)

    def _header(self, path: Path, sheet: str) -> tuple[int, list[str]]:
        # The header is the first row with anything in it: leading empty rows are common in
        # hand-made sheets, and their numbers still count.
        with contextlib.closing(self._rows(path)) as rows:
            for number, cells in rows:
                texts = [excel_cell_text(c) for c in cells]
                if not all(_blank(t) for t in texts):
                    return number, texts
        raise InputFileError(path, f"sheet {sheet!r} has no header row (it is empty)")

    def _rows(self, path: Path) -> Generator[tuple[int, list[object]], None, None]:
        try:
            with python_calamine.CalamineWorkbook.from_path(path) as book:
                sheet = book.get_sheet_by_name(self._sheet)
                start = sheet.start
                self._first_column = start[1] if start else 0
                # calamine starts at row 1 (padding empty rows above the data) but at the first
                # used column, so the index is the Excel row number minus one.
                for index, cells in enumerate(sheet.iter_rows()):
                    yield index + 1, list(cells)
        except (python_calamine.CalamineError, OSError, ValueError) as error:
            raise InputFileError(path, f"cannot read the workbook: {error}") from None

    def _records(self) -> Iterator[tuple[int, Sequence[str]]]:
        width = self._width
        for number, cells in self._rows(self.path):
            if number <= self.header_number:
                continue
            texts = [excel_cell_text(c) for c in cells]
            if len(texts) < width:
                texts.extend([""] * (width - len(texts)))
            yield number, texts


def _is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")


def _display_encoding(encoding: str) -> str:
    return "UTF-8" if _is_utf8(encoding) else encoding


def _first_undecodable_line(path: Path, encoding: str) -> int | None:
    """The 1-based physical line holding the first byte that does not decode (for the message)."""
    decoder = codecs.getincrementaldecoder(encoding)()
    try:
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    decoder.decode(line)
                except UnicodeDecodeError:
                    return number
    except OSError:
        return None
    return None


def _sniff(path: Path, encoding: str) -> str:
    """Check the start of a CSV file for the ways it is not CSV text; return the delimiter."""
    try:
        with path.open("rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError as error:
        raise InputFileError(path, f"cannot read: {error.strerror or error}") from None
    if not head.strip(b"\xef\xbb\xbf \t\r\n"):
        raise InputFileError(path, "the file is empty (no header row)")
    if head.startswith(b"PK\x03\x04"):
        raise InputFileError(
            path, "this is an Excel workbook (or another zip file), not CSV; name it .xlsx"
        )
    if _is_utf8(encoding) and b"\x00" in head:
        hint = " (UTF-16? pass --encoding utf-16)" if head[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise InputFileError(path, f"binary data, not CSV text{hint}")
    # The header line decides the delimiter: Excel in many European locales saves `;`-separated
    # "CSV". Count only outside quotes so that a quoted header containing `,` does not mislead.
    first_line = head.split(b"\n", 1)[0]
    if _is_utf8(encoding) and not first_line.lstrip(b"\xef\xbb\xbf").strip():
        raise InputFileError(path, "the header row (row 1) is empty")
    try:
        text = codecs.decode(first_line, encoding, errors="ignore")
    except LookupError:  # pragma: no cover - the encoding was checked by open_input
        text = first_line.decode("latin-1")
    unquoted = re.sub(r'"[^"]*"', "", text)
    counts = {d: unquoted.count(d) for d in _DELIMITERS}
    best = max(_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _open_csv(path: Path, encoding: str | None, chunk_size: int) -> RowSource:
    encoding = encoding or "utf-8-sig"
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise UsageError(f"--encoding: unknown encoding {encoding!r}") from None
    if _is_utf8(encoding):
        encoding = "utf-8-sig"  # a BOM is never part of the first header
    delimiter = _sniff(path, encoding)
    return _CsvSource(path, encoding, delimiter, chunk_size)


def _pick_sheet(path: Path, sheet: str | None) -> str:
    try:
        with python_calamine.CalamineWorkbook.from_path(path) as book:
            metadata = list(book.sheets_metadata)
    except python_calamine.PasswordError:
        raise InputFileError(path, "the workbook is password-protected") from None
    except (python_calamine.CalamineError, OSError, ValueError) as error:
        raise InputFileError(path, f"not a readable Excel workbook ({error})") from None
    worksheets = [m for m in metadata if m.typ == python_calamine.SheetTypeEnum.WorkSheet]
    names = [m.name for m in worksheets]
    if not names:
        raise InputFileError(path, "the workbook has no worksheet")
    if sheet is None:
        # "The first sheet" is the first tab the user can see.
        visible = [
            m.name for m in worksheets if m.visible == python_calamine.SheetVisibleEnum.Visible
        ]
        return (visible or names)[0]
    if sheet in names:
        return sheet
    # Excel itself treats sheet names case-insensitively.
    for name in names:
        if name.casefold() == sheet.casefold():
            return name
    raise InputFileError(
        path, f"no sheet named {sheet!r} (sheets: {', '.join(repr(n) for n in names)})"
    )


def open_input(
    path: Path, *, encoding: str | None = None, sheet: str | None = None, chunk_size: int = 20_000
) -> RowSource:
    """Open a CSV/XLSX/XLSM input, read its header, and return a re-iterable row source.

    Raises `InputFileError` (exit 2) when the file cannot be used: missing, a directory, empty,
    not CSV/Excel, undecodable, no such sheet, blank or duplicate headers. Errors found later in
    the file (a ragged row, a bad byte at row 900,000) are raised while iterating, with the row.
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "no such file")
    if path.is_dir():
        raise InputFileError(path, "is a directory, not a file")
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        if sheet is not None:
            raise UsageError("--sheet applies only to Excel files (.xlsx, .xlsm)")
        return _open_csv(path, encoding, max(1, chunk_size))
    if suffix in EXCEL_SUFFIXES:
        if encoding is not None:
            raise UsageError("--encoding applies only to CSV files")
        return _ExcelSource(path, _pick_sheet(path, sheet))
    raise InputFileError(
        path,
        f"unsupported file type {suffix or '(no extension)'!r}; use .csv, .xlsx or .xlsm "
        "(save older .xls files as .xlsx)",
    )
