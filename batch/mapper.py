"""Headers → properties and rows → `Update` / `Invalid` / `Skipped` (CONTRACT.md, "Input files").

`prepare()` does all the file-level work up front, so a bad file is refused before anything is
sent: it opens the input, maps every header to a property (`--map FILE.toml`, the `id` aliases,
case/space/`_`/`-`-insensitive matching, `_`-prefixed columns ignored, unknown columns refused
with a suggestion), then reads the file once to count the rows and find ids that occur on more
than one row. `Prepared.rows()` then streams the file again and maps each row on its own:

* an empty (or all-blank) cell leaves the property out of the body;
* the null token (`<null>`) sends JSON null, only for nullable properties;
* every problem of a row is collected, not only the first;
* a row whose id is also on another row is invalid, and so is that other row;
* a row with nothing but its id is skipped;
* a row of an export (its `_exported` stamp, `batch.stamp`) keeps only the cells edited since
  the export, and is skipped when there are none.

Duplicate detection keeps 16 bytes per row (a BLAKE2b digest of the folded id) plus the row
number, and sorts them with numpy once: about 24 MB for a million rows, instead of a set of a
million strings. Up to 200,000 ids, a set of their 64-bit digest prefixes first tells whether
any two can be equal; when none can (the usual file) numpy is not even loaded. A digest
collision between different ids is astronomically unlikely (2^-128).

With `InputOptions(key="deviceSerialNumber")` (or `managedDeviceName`; `--key`) the file has no
id column: the key column takes its place (required, filled, duplicates refused, case and
surrounding spaces ignored, leading zeros kept), it is not sent in the body (it only identifies
the event), and `prepare(..., resolve=...)` takes the callback that turns the key cell's text into
an event id or a `Problem` (`batch.resolve.KeyResolver`). Without a resolver (`validate --key`)
rows are checked but carry no event id.

What a header means comes from the resource (`InputOptions.resource`, `--resource`; events by
default): its property names and aliases (the Intune portal's `Device Serial Number`, `Group
Tag`, `Assigned User` for devices), its keys, its nouns in messages, and how the null token
goes on the wire (`Resource.wire_null`: `""` for devices). A column the resource has but cannot
write (a device's `Manufacturer`, `Hardware Hash` of the portal's import file) is left out with
one warning naming every such column, so a portal file or a device export is fed back as it is.
A `--key` cell in scientific notation is refused like any text cell: the digits are gone.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import sys
import tomllib
import unicodedata
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar, overload
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from batch.errors import ConfigError, InputFileError, UsageError
from batch.model import JSON, CellNote, Invalid, Problem, RawRow, Skipped, Update
from batch.reader import RowSource, file_sha256, open_input
from batch.resources import EVENTS, RESOURCES, Resource
from batch.schema import (
    MAX_VALUE_LENGTH,
    EdmType,
    Property,
    ValueProblem,
    cell_problem,
    coerce_text,
    describe_char,
    is_null_token,
    normalize_header,
    null_token_test,
)
from batch.stamp import find_stamp_column, parse_stamp, stamp_row

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "KEY_PROPERTIES",
    "InputOptions",
    "Prepared",
    "Resolver",
    "key_property",
    "legacy_warning",
    "load_column_map",
    "prepare",
    "resolve_header",
    "suggest_property",
    "template_columns",
]

_T = TypeVar("_T")

Resolver = Callable[[str], str | Problem]
"""Turns the key cell's (trimmed) text into an entity id, or a `Problem` when it cannot."""

ID: Final = "id"
# The properties `--key` may name for events: they identify an event when the file has no id
# column (each resource names its own: `Resource.keys`).
KEY_PROPERTIES: Final = EVENTS.keys
# How many unknown columns an error names before it says "and N more".
_SHOWN_UNKNOWN: Final = 10
# How many other rows a duplicate-id message names before it says "and N more".
_SHOWN_DUPLICATES: Final = 3
# Characters that would change the meaning of the PATCH URL if they were in an id (every id is
# percent-encoded anyway; `%` also keeps `a%2Fb` from meaning `a/b` to a server that decodes
# twice), plus whitespace and C0/C1 controls. Invisible and direction characters are caught by
# their Unicode category in `_RowMapper.key_problem`, lone surrogates too (they cannot even be
# encoded into a URL).
_ID_FORBIDDEN: Final = re.compile(r"[\s/\\?#%\x00-\x1f\x7f-\x9f]")
# Format (zero-width, BOM, bidi marks), surrogate and control characters: an id holding one
# looks like another id on screen, or cannot be sent at all.
_ID_INVISIBLE: Final = frozenset({"Cc", "Cf", "Cs"})
# `PATCH .../autopilotEvents/..` is `PATCH .../deviceManagement` once a URL is normalised.
_ID_PATH_STEPS: Final = frozenset({".", ".."})


def _hints(resource: Resource) -> Mapping[str, str]:
    """A few words admins use for a property; only ever offered as a suggestion, never applied."""
    return resource.hints


@dataclass(frozen=True, kw_only=True)
class InputOptions:
    """How to read and interpret an input file (the input options shared by every command)."""

    encoding: str | None = None
    sheet: str | None = None
    map_file: Path | None = None
    null_token: str = "<null>"
    assume_tz: str | None = None
    ignore_unknown_columns: bool = False
    # `--key`: the property (one of the resource's `keys`) that identifies each row's entity
    # instead of an id column; None means the file has an id column.
    key: str | None = None
    # `--header-row N`: the header is row N (rows above it are a title); None: the first row
    # (an Excel sheet: the first row with anything in it).
    header_row: int | None = None
    # `--allow-numeric-text`: a General-format number cell in a text column is sent as its plain
    # digits (the admin knows the column never had leading zeros); otherwise it is invalid.
    allow_numeric_text: bool = False
    # `--skip-hidden-rows`: rows hidden in the sheet (a filter) are skipped instead of sent.
    skip_hidden_rows: bool = False
    # `--resource`: what the rows update (headers, keys, how the null token is sent).
    resource: Resource = EVENTS


def suggest_property(header: str, resource: Resource = EVENTS) -> str | None:
    """The property of `resource` a misspelt or unknown header most likely meant, or None."""
    folded = normalize_header(header)
    if not folded:
        return None
    hints = _hints(resource)
    if folded in hints:
        return hints[folded]
    by_normalized = resource.headers
    close = difflib.get_close_matches(folded, list(by_normalized), n=1, cutoff=0.75)
    if close:
        return by_normalized[close[0]]
    # "Serial" inside "deviceSerialNumber": a fragment of exactly one property name.
    containing = {name for key, name in by_normalized.items() if len(folded) >= 4 and folded in key}
    if len(containing) == 1:
        return containing.pop()
    close = difflib.get_close_matches(folded, list(by_normalized), n=1, cutoff=0.6)
    return by_normalized[close[0]] if close else None


def resolve_header(header: str, resource: Resource = EVENTS) -> str | None:
    """The property of `resource` a header names (case, spaces, `_`, `-` ignored; aliases)."""
    return resource.headers.get(normalize_header(header))


def key_property(text: str, resource: Resource = EVENTS) -> str:
    """`--key TEXT` → one of `resource.keys`; raises `UsageError` otherwise.

    Any header spelling of a key's name is accepted, its aliases, and the resource's hint
    words (`serial` and `device name` for events).
    """
    folded = normalize_header(text)
    name = resource.headers.get(folded) or _hints(resource).get(folded)
    if name is None or name not in resource.keys:
        raise UsageError(
            f"--key must be {' or '.join(resource.keys)}, not {text!r} "
            "(with an id column in the file, leave --key out)"
        )
    return name


def template_columns(*, include_legacy: bool = False, resource: Resource = EVENTS) -> list[str]:
    """The header row of an empty input file: id first, then every writable property.

    Events have always listed every property (all of them but the id can be written);
    legacy ones only on request. Other resources list the id and what a write may carry.
    """
    return [
        name
        for name, prop in resource.properties.items()
        if (prop.key or prop.writable) and (include_legacy or not prop.legacy)
    ]


def legacy_warning(column: str, prop: Property) -> str:
    """The warning for a column holding a property the current beta schema no longer lists."""
    where = f"column {column!r} ({prop.name})" if column != prop.name else f"column {column!r}"
    return (
        f"{where} is a legacy property: the current Graph beta schema no longer lists it, "
        "so Graph may reject it"
    )


def load_column_map(path: Path, resource: Resource = EVENTS) -> dict[str, str]:
    """Read a `--map` TOML file: `[columns]` header → property name; raises `ConfigError`."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: map file not found") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the map file: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: the file is not UTF-8 text") from None
    columns = data.get("columns")
    if not isinstance(columns, dict):
        raise ConfigError(
            f'{path}: needs a [columns] table, e.g. [columns] "Serial" = "deviceSerialNumber"'
        )
    unknown_keys = sorted(set(data) - {"columns"})
    if unknown_keys:
        raise ConfigError(f"{path}: unknown table or key {unknown_keys[0]!r} (only [columns])")
    mapping: dict[str, str] = {}
    for header, target in columns.items():
        if not isinstance(target, str):
            raise ConfigError(
                f"{path}: [columns] {header!r} must map to a property name (a string)"
            )
        prop = resolve_header(target, resource)
        if prop is None:
            hint = suggest_property(target, resource)
            did_you_mean = f" (did you mean {hint}?)" if hint else ""
            raise ConfigError(
                f"{path}: [columns] {header!r} maps to {target!r}, "
                f"which is not a property{did_you_mean}; `autopilot-batch schema` lists them"
            )
        mapping[header] = prop
    return mapping


@dataclass(frozen=True, slots=True)
class _Column:
    header: str
    prop: Property


Converter = Callable[[str], JSON]


@dataclass(frozen=True, slots=True)
class _Bad:
    """A remembered rejection (the reason) in a converter's memo."""

    reason: str


_MISSING: Final = _Bad("")
# Distinct cell texts remembered per column. Enum columns repeat a handful of values a million
# times; a column of unique timestamps fills the memo once and then simply stops adding.
_MEMO_LIMIT: Final = 4096


def _converter(
    prop: Property, null_token: str, assume_tz: str | None, resource: Resource = EVENTS
) -> Converter:
    """A cell-text → wire-value function for one column; raises `ValueProblem`.

    The null token becomes the resource's `null_value` on the wire (`Resource.wire_null`: JSON
    null for events, `""` for devices, as the portal clears a group tag).
    """

    # The mapper hands over trimmed values, so the null token needs no trimming here.
    def coerce(text: str) -> JSON:
        return resource.wire_null(
            coerce_text(prop, text, null_token=null_token, assume_tz=assume_tz)
        )

    if prop.edm == EdmType.STRING:
        # Strings go verbatim: no call at all unless the cell is the null token (in any case).
        is_null = null_token_test(null_token)
        return lambda text: coerce(text) if is_null(text) else text
    memo: dict[str, JSON | _Bad] = {}

    def memoized(text: str) -> JSON:
        found = memo.get(text, _MISSING)
        if found is _MISSING:
            try:
                found = coerce(text)
            except ValueProblem as problem:
                found = _Bad(str(problem))
            if len(memo) < _MEMO_LIMIT:
                memo[text] = found
        if isinstance(found, _Bad):
            # A fresh exception each time: re-raising one instance would grow its traceback.
            raise ValueProblem(found.reason)
        return found

    return memoized


# Excel keeps 15 significant digits of a number; more in a number cell means some are lost.
_EXCEL_DIGITS: Final = 15
# What Excel (and other spreadsheets) take as the start of a formula.
_FORMULA_STARTS: Final = frozenset("=+-@")
# A number as Excel writes it in scientific notation (General format, 12+ digits): `9.36382E+11`.
_SCIENTIFIC: Final = re.compile(r"[+-]?\d+(?:[.,]\d+)?[Ee][+-]\d{1,3}")
_UPN: Final = re.compile(r"[^@\s]+@[^@\s]+")
_UPN_PROPERTY: Final = "userPrincipalName"
# Anything `_text_problem`, `cell_problem` or `_text_warning` could object to: a control
# character, a formula-like start, scientific notation. No match: the value is plain text.
# A user principal name with nothing to say about it: name@domain, no control character, not
# starting like a formula (the common case, decided by one match).
_UPN_PLAIN: Final = re.compile(
    r"[^\s@=+\-'\x00-\x1f\x7f-\x9f][^\s@\x00-\x1f\x7f-\x9f]*@[^\s@\x00-\x1f\x7f-\x9f]+"
)
_TEXT_SUSPECT: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]|^[=+\-@]|\d[Ee][+-]\d")


def _suspect(value: str) -> bool:
    """Whether `_TEXT_SUSPECT` finds something in the (non-empty) value.

    The pattern can only match a value that starts like a formula, holds a character that is
    not printable (every control character) or an exponent sign; string tests rule out the
    rest at a fraction of a regex search's cost, and only those few values are searched.
    """
    return (
        value[0] in _FORMULA_STARTS
        or not value.isprintable()
        or "E+" in value
        or "E-" in value
        or "e+" in value
        or "e-" in value
    ) and _TEXT_SUSPECT.search(value) is not None


def _plain_upn(value: str) -> bool:
    """Whether `_UPN_PLAIN` matches the whole value; the usual `name@domain` without a regex.

    Printable (no control character, no whitespace but the ASCII space), no space, one `@`
    neither first nor last, not starting like a formula or with `'`: the pattern matches all
    of these. Anything else (non-printable letters included) is left to the pattern itself.
    """
    if (
        value.isprintable()
        and " " not in value
        and value.count("@") == 1
        and value[0] not in "=+-'@"
        and value[-1] != "@"
    ):
        return True
    return _UPN_PLAIN.fullmatch(value) is not None


def _unquote(value: str) -> str:
    """Take off the `'` that neutralised a formula-looking value (`'=x` → `=x`), as Excel does.

    Reports put one `'` before any run of quotes that ends in `= + - @` (`report.neutralise_cell`),
    so `''=x` (a value that itself began `'=x`) reads back as `'=x`.
    """
    if value[:1] == "'" and value.lstrip("'")[:1] in _FORMULA_STARTS and value.lstrip("'"):
        return value[1:]
    return value


def _text_problem(value: str) -> str | None:
    """Why a (trimmed) string value cannot be what the admin meant, or None."""
    if value[-1].isdigit() and _SCIENTIFIC.fullmatch(value):
        return (
            "looks like a number Excel showed in scientific notation, and the digits it stood "
            "for are lost: format the column as Text in Excel and type the values again"
        )
    return None


# Notes of cells Excel converted from typed text: a date (time, duration) or TRUE/FALSE. In a
# text property that is never what the admin typed, so the row is invalid (issue 12).
_CONVERTED: Final = frozenset({"date", "boolean"})


def _converted_reason(note: CellNote) -> str:
    """Why a date or boolean cell cannot go into a text property, and how to fix the sheet."""
    what = "TRUE/FALSE value" if note.kind == "boolean" else note.detail or "date"
    article = "an" if what[0] in "aeiou" else "a"
    return (
        f"{article} {what} in a text column (Excel shows {note.shown}): Excel turned the typed "
        f"text into {article} {what}; format the column as Text and type the value again"
    )


def _text_warning(header: str, name: str, value: str, null_token: str) -> str | None:
    """What `validate` should point out in a string value that is still sent as written."""
    if value[0] in _FORMULA_STARTS:
        return (
            f"{header}: {value[:40]!r} starts with {value[0]!r}, which Excel runs as a formula "
            "when the file is opened there"
        )
    if name == _UPN_PROPERTY and not _UPN.fullmatch(value) and not is_null_token(value, null_token):
        return f"{header}: {value[:40]!r} does not look like a user principal name (name@domain)"
    return None


class _RowMapper:
    """Maps one row at a time; built once per file from the header plan (pure, no I/O)."""

    def __init__(
        self,
        id_header: str,
        columns: list[_Column],
        options: InputOptions,
        resolve: Resolver | None,
        stamp_column: str | None = None,
    ) -> None:
        self.id_header = id_header
        self.columns = columns
        self.null_token = options.null_token
        self.is_null = null_token_test(options.null_token)
        self.resolve = resolve
        self.key_name = options.key
        self.stamp_column = stamp_column
        self.allow_numeric_text = options.allow_numeric_text
        self.skip_hidden_rows = options.skip_hidden_rows
        self.resource = options.resource
        self.noun = options.resource.noun
        #: Values that came with surrounding spaces, trimmed (counted per pass over the file).
        self.trimmed = 0
        self._plan = [
            (
                c.header,
                c.prop.name,
                _converter(c.prop, options.null_token, options.assume_tz, options.resource),
                legacy_warning(c.header, c.prop) if c.prop.legacy else None,
                c.prop.edm == EdmType.STRING,
            )
            for c in columns
        ]

    def key_problem(self, text: str) -> str | None:
        """Why the (trimmed) key cell cannot identify the entity, or None if it can."""
        if self.key_name is not None:
            if not text:
                return f"missing {self.key_name} (with --key {self.key_name} every row needs it)"
            if self.is_null(text):
                return f"the {self.key_name} cannot be {self.null_token}"
            # Any other text may be a serial or a device name (the tenant decides), but not
            # one Excel showed in scientific notation: the digits it stood for are lost.
            return _text_problem(text)
        if not text:
            return f"missing id (every row needs the {self.noun} id)"
        if self.is_null(text):
            return f"the id cannot be {self.null_token}"
        # An id of printable ASCII without the forbidden signs (every GUID) is decided by C-level
        # tests, once per row and pass; the rest is searched below.
        if (
            text.isascii()
            and text.isprintable()
            and text not in _ID_PATH_STEPS
            and not ("/" in text or "%" in text or " " in text)
            and not ("\\" in text or "?" in text or "#" in text)
        ):
            return None
        rule = (
            "an id must be one plain URL path segment: no spaces, / \\ ? # %, "
            "control, invisible or text-direction characters"
        )
        if text in _ID_PATH_STEPS:
            return f"not a valid {self.noun} id: {text!r} is a path step, not an id ({rule})"
        found = _ID_FORBIDDEN.search(text)
        bad = found.group() if found else None
        if bad is None and not text.isascii():
            bad = next((c for c in text if unicodedata.category(c) in _ID_INVISIBLE), None)
        if bad is not None:
            shown = repr(bad) if bad.isprintable() and not bad.isspace() else describe_char(bad)
            return f"not a valid {self.noun} id: it contains {shown} ({rule})"
        return None

    def _unedited(self, cells: Mapping[str, str], name: str, value: str) -> bool:
        """Whether the row's export stamp (`_exported`) says `value` is what the export saw."""
        if self.stamp_column is None:
            return False
        try:
            stamp = parse_stamp(cells.get(self.stamp_column, ""))
        except ValueError:
            return False  # `stamp_row` says what is wrong with the stamp
        return stamp.holds(name, value)

    def _noted(
        self, header: str, text: str, note: CellNote, *, is_text: bool
    ) -> tuple[str, Problem | None]:
        """A cell that came with a note (`batch.xlsx`): the text to use, or why it is invalid.

        What the admin cannot see is never sent: a formula without a saved value or an error
        cell is a problem. A number cell in a text column is taken as the text Excel displays
        when a number format made it (zero padding); a General number there has already lost
        what a text cell would have kept (leading zeros, digits beyond 15), so it is a problem
        unless `--allow-numeric-text`. A date, time or TRUE/FALSE cell in a text column is
        Excel's conversion of what was typed (`2-Jan`, `true`): always a problem there.
        """
        if note.kind == "formula":
            return "", Problem(
                header,
                note.detail[:80],
                "a formula without a saved value (a program wrote the workbook and Excel never "
                "calculated it): open and save the workbook in Excel, or paste values",
            )
        if note.kind == "error":
            reason = (
                f"the cell shows the Excel error {note.shown}, not a value"
                if note.shown == note.detail
                else f"the cell cannot be read: {note.detail}"
            )
            return "", Problem(header, note.shown, reason)
        if note.kind != "number" or not is_text:
            if is_text and note.kind in _CONVERTED:
                return "", Problem(header, note.shown, _converted_reason(note))
            return text, None
        digits = len(text.lstrip("-").partition(".")[0])
        if digits > _EXCEL_DIGITS:
            return "", Problem(
                header,
                note.shown,
                f"a number of {digits} digits: Excel keeps only {_EXCEL_DIGITS}, so the last "
                "ones are already lost; format the column as Text and type the values again",
            )
        if note.detail == "digits":
            return note.shown, None
        if note.detail == "scientific":
            return "", Problem(
                header,
                note.shown,
                "a number shown in scientific notation in a text column: format the column as "
                "Text and type the values again",
            )
        if self.allow_numeric_text:
            return text, None
        return "", Problem(
            header,
            note.shown,
            f"a number in a text column (Excel shows {note.shown}): leading zeros are lost that "
            "way; format the column as Text and type the values again, or pass "
            f"--allow-numeric-text to send {text}",
        )

    def key_cell(self, text: str, note: CellNote | None) -> tuple[str, Problem | None]:
        """The key (id) cell's text as the row is judged by, or why it is invalid."""
        if note is None:
            return text, None
        return self._noted(self.id_header, text, note, is_text=True)

    def shown_row(self, row: RawRow) -> RawRow:
        """`row` with its key cell as Excel displays it (`000456`, not the stored 456).

        Reports and messages name the row by that cell: what the admin sees in the sheet, and
        what a re-run of failures.csv reads as text. A key the row was judged by keeps that text.
        """
        note = row.notes.get(self.id_header) if row.notes is not None else None
        if note is None:
            return row
        text, problem = self.key_cell(row.cells.get(self.id_header, ""), note)
        shown = (note.shown if problem is not None else text) or row.cells.get(self.id_header, "")
        return replace(row, cells={**row.cells, self.id_header: shown})

    def map(self, row: RawRow, duplicates: tuple[int, ...] = ()) -> Update | Invalid | Skipped:
        """Map one row: the wire body, or every problem in it, or "nothing to change"."""
        cells, notes = row.cells, row.notes
        problems: list[Problem] = []
        raw_key = cells.get(self.id_header, "")
        if notes is not None and self.id_header in notes:
            # The id (or key) column is text: a number cell there is judged like one.
            raw_key, note_problem = self._noted(
                self.id_header, raw_key, notes[self.id_header], is_text=True
            )
            if note_problem is not None:
                problems.append(note_problem)
        key = raw_key.strip()
        if key[:1] == "'":
            key = _unquote(key)
        # A --key value is not an event id: the row has one only once the resolver found it.
        event_id = key if self.key_name is None else ""
        # An id cell that is itself the problem (an error cell, a formula) is said once.
        reason = None if problems else self.key_problem(key)
        if reason:
            problems.append(Problem(self.id_header, raw_key if key else "", reason))
        elif self.resolve is not None and not problems:
            resolved = self.resolve(key)
            if isinstance(resolved, Problem):
                # The resolver knows keys, not the file: the problem is in the key column.
                problems.append(
                    resolved if resolved.column else replace(resolved, column=self.id_header)
                )
            else:
                event_id = resolved
        if duplicates:
            problems.append(
                Problem(self.id_header, key, _duplicate_reason(duplicates, self.key_name))
            )
        body: dict[str, JSON] = {}
        warnings: list[str] = []
        get = cells.get
        for header, name, convert, legacy, is_text in self._plan:
            text = get(header, "")
            if notes is not None and header in notes:
                text, note_problem = self._noted(header, text, notes[header], is_text=is_text)
                if note_problem is not None:
                    problems.append(note_problem)
                    continue
            if not text:
                continue
            value = text.strip()
            # `strip` hands back the same object when there is nothing to take off.
            if value is not text:
                if not value:
                    continue  # only spaces: an empty cell
                self.trimmed += 1
            if value[0] == "'":
                value = _unquote(value)
            # Most text values are plain: C-level tests decide whether to look closer.
            if is_text and (
                (not _plain_upn(value) if name == _UPN_PROPERTY else _suspect(value))
                or len(value) > MAX_VALUE_LENGTH
            ):
                reason = _text_problem(value) or cell_problem(value, free_text=True)
                if reason is not None and self._unedited(cells, name, value):
                    # What the export saw and the admin left alone is never written (and
                    # `stamp_row` drops it): the tenant's own value is not the admin's problem.
                    reason = None
                if reason is not None:
                    problems.append(Problem(header, value, reason))
                    continue
                warning = _text_warning(header, name, value, self.null_token)
                if warning is not None:
                    warnings.append(warning)
            try:
                body[name] = convert(value)
            except ValueProblem as problem:
                problems.append(Problem(header, value, str(problem)))
                continue
            except Exception as error:  # the row boundary: a coercer bug fails the row, not the run
                problems.append(
                    Problem(header, value[:80], f"cannot be read ({type(error).__name__})")
                )
                continue
            if legacy is not None:
                warnings.append(legacy)
        if problems:
            return Invalid(row.number, event_id, tuple(problems))
        if row.hidden and self.skip_hidden_rows:
            return Skipped(row.number, event_id, "hidden in the sheet (--skip-hidden-rows)")
        if not body:
            return Skipped(row.number, event_id)
        return Update(row.number, event_id, body, tuple(warnings))


def _duplicate_reason(others: tuple[int, ...], key_name: str | None = None) -> str:
    # `_DuplicateIndex` hands over a few rows and the count; a plain tuple is every other row.
    total = others.total if isinstance(others, _OtherRows) else len(others)
    shown = ", ".join(str(n) for n in others[:_SHOWN_DUPLICATES])
    more = total - min(len(others), _SHOWN_DUPLICATES)
    rows = "row" if total == 1 else "rows"
    tail = f" and {more:,} more" if more > 0 else ""
    # Neither row is sent: which of them should win cannot be guessed.
    if key_name is not None:
        return f"{key_name} also on {rows} {shown}{tail} (rows with the same key are never sent)"
    return f"id also on {rows} {shown}{tail} (duplicate ids are never sent)"


def _fold_id(text: str) -> str:
    """Ids compare case-insensitively and trimmed (Graph ids are GUIDs, case-insensitive)."""
    return text.strip().casefold()


class _OtherRows(tuple[int, ...]):
    """The other rows of a row's duplicate group a message names (a few), and how many in all.

    A tuple, so `_RowMapper.map` passes it on as the plain tuple of other rows it always took.
    """

    total: int

    def __new__(cls, shown: Iterable[int], total: int) -> Self:
        self = super().__new__(cls, shown)
        self.total = total
        return self


# Row numbers kept per duplicate group: enough to name `_SHOWN_DUPLICATES` others of any row.
_KEPT: Final = _SHOWN_DUPLICATES + 1


class _DuplicateIndex(Mapping[int, tuple[int, ...]]):
    """Row number → the other rows with the same id, in memory flat in the group sizes.

    Two parallel arrays sorted by row number (the row, its group) and, per group, its size and
    its first `_KEPT` rows: 16 bytes per duplicate row plus 40 per group. Listing every other
    row for every row took memory by the square of a group: 100,000 rows with one id, ~80 GB.
    """

    __slots__ = ("_firsts", "_groups", "_rows", "_sizes")

    def __init__(
        self,
        rows: array[int] | None = None,
        groups: array[int] | None = None,
        sizes: array[int] | None = None,
        firsts: array[int] | None = None,
    ) -> None:
        self._rows = rows if rows is not None else array("q")
        self._groups = groups if groups is not None else array("q")
        self._sizes = sizes if sizes is not None else array("q")
        self._firsts = firsts if firsts is not None else array("q")

    def _others(self, number: int) -> _OtherRows | None:
        rows = self._rows
        at = bisect_left(rows, number)
        if at == len(rows) or rows[at] != number:
            return None
        group = self._groups[at]
        size = self._sizes[group]
        first = self._firsts[group * _KEPT : group * _KEPT + min(size, _KEPT)]
        return _OtherRows([n for n in first if n != number][:_SHOWN_DUPLICATES], size - 1)

    def __getitem__(self, number: int) -> tuple[int, ...]:
        found = self._others(number)
        if found is None:
            raise KeyError(number)
        return found

    @overload
    def get(self, key: int, /) -> tuple[int, ...] | None: ...
    @overload
    def get(self, key: int, /, default: tuple[int, ...] | _T) -> tuple[int, ...] | _T: ...
    def get(self, key: int, /, default: object = None) -> object:
        """The other rows of row `key`'s group, or `default` (no exception per unique row)."""
        found = self._others(key) if self._rows else None
        return default if found is None else found

    def __iter__(self) -> Iterator[int]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


# Up to this many ids the quick check in `_find_duplicates` runs first (its set holds ~70 bytes
# per id); bigger files go straight to numpy.
_QUICK_CHECK_ROWS: Final = 200_000


def _find_duplicates(digests: bytearray, numbers: array[int]) -> _DuplicateIndex:
    """Row number → a few other rows with the same id and their count, from parallel arrays.

    `digests` holds 16 bytes per entry of `numbers` (the row numbers). Whole-array numpy work:
    no Python loop per row or per group, and nothing that grows with a group's size squared.
    """
    if len(numbers) < 2:
        return _DuplicateIndex()
    if len(numbers) <= _QUICK_CHECK_ROWS and "numpy" not in sys.modules:
        # Distinct 64-bit digest prefixes mean distinct ids: the usual file (no duplicates)
        # is answered by a set of a few MB, and an Excel run never loads numpy (~0.2 s). A CSV
        # run has it loaded already (pandas): the set would only add to its memory.
        with memoryview(digests) as view, view.cast("Q") as words:
            if len(set(words[::2])) == len(numbers):
                return _DuplicateIndex()
    import numpy as np

    keys = np.frombuffer(digests, dtype=np.uint64).reshape(-1, 2)
    rows = np.frombuffer(numbers, dtype=np.int64)
    # By digest, then by row: every group is a run of positions, its rows ascending.
    order = np.lexsort((rows, keys[:, 1], keys[:, 0]))
    ordered = keys[order]
    same_as_next = np.all(ordered[1:] == ordered[:-1], axis=1)
    if not same_as_next.any():
        return _DuplicateIndex()
    del ordered
    # Runs of equal digests: one starts where the previous position differs.
    starts = np.flatnonzero(np.concatenate(([True], ~same_as_next)))
    sizes = np.diff(np.append(starts, len(order)))
    is_group = sizes >= 2
    in_group = np.repeat(is_group, sizes)  # per sorted position
    starts, sizes = starts[is_group], sizes[is_group]
    sorted_rows = rows[order]
    firsts = np.zeros((len(starts), _KEPT), dtype=np.int64)  # 0 pads: no data row is row 0
    for k in range(_KEPT):
        has = sizes > k
        firsts[has, k] = sorted_rows[starts[has] + k]
    member_rows = sorted_rows[in_group]
    member_groups = np.repeat(np.arange(len(starts), dtype=np.int64), sizes)
    by_row = np.argsort(member_rows, kind="stable")

    def packed(values: np.ndarray[Any, Any]) -> array[int]:
        return array("q", np.ascontiguousarray(values, dtype=np.int64).tobytes())

    return _DuplicateIndex(
        packed(member_rows[by_row]), packed(member_groups[by_row]), packed(sizes), packed(firsts)
    )


class Prepared:
    """An input file, mapped and checked at file level, ready to be streamed row by row."""

    source: RowSource
    total: int
    sha256: str
    columns: dict[str, str]
    warnings: list[str]

    def __init__(
        self,
        source: RowSource,
        *,
        total: int,
        sha256: str,
        columns: dict[str, str],
        warnings: list[str],
        mapper: _RowMapper,
        duplicates: Mapping[int, tuple[int, ...]],
    ) -> None:
        self.source = source
        self.total = total
        self.sha256 = sha256
        self.columns = columns
        self.warnings = warnings
        self._mapper = mapper
        self._duplicates = duplicates
        # The `_exported` column of a file that came from `export` (batch.stamp), or None.
        self.stamp_column = find_stamp_column(source.headers)

    @property
    def stamped(self) -> bool:
        """Whether the file has export stamps: a run must then read the tenant's values."""
        return self.stamp_column is not None

    @property
    def id_column(self) -> str:
        """The file's header of the id (key) column."""
        return self._mapper.id_header

    def key_cells(self) -> Iterator[tuple[int, str]]:
        """(row number, key cell text as `map` judges it) of every row whose key cell is usable.

        The text Excel displays (a serial stored as 456 with format `000000` is `000456`), so
        whoever collects keys (`batch.resolve.KeyResolver.want`) collects the ones rows look up.
        """
        key_cell = self._mapper.key_cell
        for number, text, note in self.source.noted_column(self.id_column):
            used, problem = key_cell(text, note)
            if problem is None:
                yield number, used

    def map_row(self, row: RawRow) -> Update | Invalid | Skipped:
        """Map one row of this file (duplicate ids found by `prepare` included)."""
        mapped = self._mapper.map(row, self._duplicates.get(row.number, ()))
        if self.stamp_column is not None:
            mapped = self._stamped(mapped, row.cells, self.stamp_column)
        return mapped

    def _stamped(
        self, mapped: Update | Invalid | Skipped, cells: Mapping[str, str], column: str
    ) -> Update | Invalid | Skipped:
        """`stamp_row` for a row of this file, told which of its cells are empty."""
        mapper, text = self._mapper, cells.get(column, "")
        # Only a stamped row can have had a value in a cell that is empty now.
        emptied = (
            [(c.header, c.prop.name) for c in mapper.columns if not cells.get(c.header, "").strip()]
            if text.strip()
            else []
        )
        return stamp_row(
            mapped, text, column, mapper.resource, emptied=emptied, null_token=mapper.null_token
        )

    @property
    def trimmed(self) -> int:
        """How many values of the latest `rows()` pass had surrounding spaces (trimmed)."""
        return self._mapper.trimmed

    def rows(self) -> Iterator[tuple[RawRow, Update | Invalid | Skipped]]:
        """Every data row with what it maps to, streamed in input order (re-reads the file)."""
        mapper, duplicates, stamps = self._mapper, self._duplicates, self.stamp_column
        mapper.trimmed = 0
        for row in self.source:
            mapped = mapper.map(row, duplicates.get(row.number, ()))
            if stamps is not None:
                mapped = self._stamped(mapped, row.cells, stamps)
            yield (row if row.notes is None else mapper.shown_row(row)), mapped


def _check_options(options: InputOptions) -> None:
    if not options.null_token or options.null_token != options.null_token.strip():
        raise UsageError("--null-token must be non-empty text without surrounding spaces")
    keys = options.resource.keys
    if options.key is not None and options.key not in keys:
        raise UsageError(
            f"--key must be {' or '.join(keys)}, not {options.key!r} "
            "(with an id column in the file, leave --key out)"
        )
    if options.assume_tz is not None:
        try:
            ZoneInfo(options.assume_tz)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise UsageError(
                f"--assume-tz: unknown time zone {options.assume_tz!r} "
                "(use an IANA name such as Europe/Berlin, America/New_York or UTC)"
            ) from None


def _other_resource(unknown: list[str], resource: Resource) -> Resource | None:
    """The other resource whose columns most of `unknown` are (a file read as the wrong one)."""
    for other in RESOURCES.values():
        if other is resource:
            continue
        theirs = sum(1 for h in unknown if resolve_header(h, other) is not None or other.ignored(h))
        # Most, not all: a file of one resource may carry a column of the admin's own.
        if theirs * 2 > len(unknown):
            return other
    return None


def _plan_columns(
    source: RowSource, options: InputOptions
) -> tuple[str, list[_Column], dict[str, str], list[str]]:
    """Header → property for every column: (id header, value columns, used columns, warnings)."""
    path = source.path
    resource = options.resource
    key = options.key
    renames = load_column_map(options.map_file, resource) if options.map_file else {}
    renames_folded = {normalize_header(k): v for k, v in renames.items()}
    warnings: list[str] = []
    used: dict[str, str] = {}  # header -> property
    owner: dict[str, str] = {}  # property -> header
    unknown: list[str] = []
    # Columns of a portal file (or a device export) this tool cannot write: said once, together.
    ignored: list[str] = []
    matched_map_keys: set[str] = set()
    for header in source.headers:
        folded = normalize_header(header)
        if header in renames or folded in renames_folded:
            prop_name = renames.get(header) or renames_folded[folded]
            matched_map_keys.add(header if header in renames else folded)
        elif header.startswith("_"):
            continue  # notes and report columns such as _row, _outcome, _error
        elif resource.ignored(header, key=key):
            ignored.append(header)
            continue
        else:
            found = resolve_header(header, resource)
            if found is None:
                unknown.append(header)
                continue
            prop_name = found
        if prop_name in owner:
            raise InputFileError(
                path,
                f"columns {owner[prop_name]!r} and {header!r} both mean {prop_name}; "
                "keep one (or rename the other with a leading _ to ignore it)",
            )
        owner[prop_name] = header
        used[header] = prop_name
    if unknown:
        other = _other_resource(unknown, resource)
        if other is not None and not options.ignore_unknown_columns:
            # The file is the other resource's: renaming or ignoring its columns would send
            # the rest to the wrong entities (an event file's <null>s as device clears).
            shown = ", ".join(repr(h) for h in unknown[:_SHOWN_UNKNOWN])
            more = (
                f" and {len(unknown) - _SHOWN_UNKNOWN:,} more"
                if len(unknown) > _SHOWN_UNKNOWN
                else ""
            )
            these = "this is" if len(unknown) == 1 else "these are"
            noun = "column" if len(unknown) == 1 else "columns"
            raise InputFileError(
                path,
                f"unknown {noun} {shown}{more}; {these} {other.title} {noun}: "
                f"pass --resource {other.name}",
            )
        if not options.ignore_unknown_columns:
            parts = []
            # A few are named (with suggestions); a file of junk headers gets a count, not a wall.
            for header in unknown[:_SHOWN_UNKNOWN]:
                hint = suggest_property(header, resource)
                shown = repr(header[:60] + "…" if len(header) > 60 else header)
                parts.append(f"{shown} (did you mean {hint}?)" if hint else shown)
            if len(unknown) > _SHOWN_UNKNOWN:
                parts.append(f"and {len(unknown) - _SHOWN_UNKNOWN:,} more")
            noun, it = ("column", "it") if len(unknown) == 1 else ("columns", "them")
            raise InputFileError(
                path,
                f"unknown {noun} {', '.join(parts)}; rename {it}, map {it} with --map, "
                f"prefix {it} with _ to ignore {it}, or pass --ignore-unknown-columns",
            )
        warnings.extend(
            f"column {h!r} is not a property of the {resource.noun}: ignored" for h in unknown
        )
    if ignored:
        names = ", ".join(repr(h) for h in ignored)
        noun = "column" if len(ignored) == 1 else "columns"
        warnings.append(
            f"{noun} {names} cannot be updated here (not writable on the {resource.noun}): ignored"
        )
    if source.ignored_columns:
        letters = ", ".join(source.ignored_columns)
        warnings.append(f"column {letters} has no header: ignored")
    if options.map_file:
        warnings.extend(
            f"{options.map_file}: [columns] {key!r} matches no column"
            for key in renames
            if key not in matched_map_keys and normalize_header(key) not in matched_map_keys
        )
    noun = resource.noun
    if key is not None:
        if ID in owner:
            raise InputFileError(
                path,
                f"column {owner[ID]!r} holds {noun} ids, but --key {key} resolves the ids from "
                f"the tenant; leave out --key to use the ids, or remove the column",
            )
        if key not in owner:
            raise InputFileError(
                path,
                f"no {key} column: with --key {key} the file needs a column {key!r} "
                f"identifying each row's {noun}",
            )
    elif ID not in owner:
        aliases = "".join(f", {alias!r}" for alias in resource.properties[ID].aliases).replace(
            ", ", " (or ", 1
        )
        first_key = resource.keys[0]
        raise InputFileError(
            path,
            f"no id column: the file needs a column 'id'{aliases}{')' if aliases else ''} "
            f"holding each {noun}'s id "
            f"(or pass --key {first_key} to find {noun}s by serial number)",
        )
    columns: list[_Column] = []
    for header, prop_name in used.items():
        prop = resource.properties[prop_name]
        # The key identifies the event; sending it back would only rewrite its spelling.
        if prop.key or prop_name == key:
            continue
        if prop.legacy:
            warnings.append(legacy_warning(header, prop))
        columns.append(_Column(header, prop))
    return owner[key or ID], columns, used, warnings


def prepare(path: Path, options: InputOptions, *, resolve: Resolver | None = None) -> Prepared:
    """Open, map and check an input file; raise for file-level problems (exit 2).

    Raises `InputFileError` (unreadable file, unknown column, no id column, two columns for one
    property), `ConfigError` (a bad `--map` file) or `UsageError` (bad options). Reads the whole
    file once, so a file that breaks at row 900,000 fails here, before anything is sent.
    """
    _check_options(options)
    path = Path(path)
    source = open_input(
        path, encoding=options.encoding, sheet=options.sheet, header_row=options.header_row
    )
    try:
        id_header, columns, used, warnings = _plan_columns(source, options)
    except InputFileError as error:
        hint = source.title_hint
        if hint is None:
            raise
        # A title above the header ("Autopilot updates, March") makes every column unknown.
        raise InputFileError(
            path,
            f"{error.reason}; row {source.header_number} has a single filled cell, a title? "
            f"Row {hint} looks like the header: pass --header-row {hint}",
        ) from None
    mapper = _RowMapper(
        id_header, columns, options, resolve, stamp_column=find_stamp_column(source.headers)
    )
    digests = bytearray()
    numbers: array[int] = array("q")
    total = 0
    blake2b = hashlib.blake2b
    for number, text, note in source.noted_column(id_header):
        total += 1
        if note is not None:
            # As `map` reads it (`000456`, not the stored 456); a damaged cell is its own problem.
            text, note_problem = mapper.key_cell(text, note)
            if note_problem is not None:
                continue
        folded = _fold_id(text)
        # Rows whose id is already wrong (empty, <null>, ...) say so; "also on row N" is noise.
        if folded and mapper.key_problem(text.strip()) is None:
            digests += blake2b(folded.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            numbers.append(number)
    if total == 0:
        raise InputFileError(path, "no data rows (the file has only a header)")
    hidden = source.hidden_rows
    if hidden.count:
        warnings.append(
            f"{hidden.describe()} hidden in the sheet (a filter?): "
            + (
                "left out (--skip-hidden-rows)"
                if options.skip_hidden_rows
                else "sent like the others; --skip-hidden-rows leaves them out"
            )
        )
    duplicates = _find_duplicates(digests, numbers)
    del digests, numbers
    return Prepared(
        source,
        total=total,
        sha256=file_sha256(path),
        columns=used,
        warnings=warnings,
        mapper=mapper,
        duplicates=duplicates,
    )
