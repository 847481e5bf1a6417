"""The deviceManagementAutopilotEvent property table and the value coercers.

One declarative table (`PROPERTIES`) that the mapper, the emulator, `schema` and `template`
all read; it is `batch.resources.EVENTS`' table (the resource descriptions own the tables and
the `Property` type, re-exported here), the coercers work for any resource's properties.
Two directions of checking live here:

* `coerce_text` turns what a user typed in a cell into the exact wire value (or raises
  `ValueProblem` with a precise reason);
* `check_wire` judges a JSON value the way Graph does when it arrives in a request body.

`canonical` turns a wire value into something comparable, so `--only-changed` treats the same
instant in two offsets, or an enum in two spellings, as equal.

Limits and character rules every cell obeys (`cell_problem`, checked first by `coerce_text`):

* a value holds at most `MAX_VALUE_LENGTH` (32,767) characters, Excel's own limit for a cell;
* no control character anywhere in a value (C0 including tab and line breaks, DEL, C1): such a
  byte is damage from a binary file or a bad export, never something Graph should store;
* typed values (Int32, DateTimeOffset, Duration) are ASCII: full-width forms as an East Asian
  input method types them (an offset +01:00 in FULLWIDTH DIGITs) are read as their ASCII twins,
  any other non-ASCII character (Arabic-Indic digits, U+2212 MINUS SIGN, ...) is refused by
  name. NFKC is not used: it would also turn a superscript `²` into the digit `2`;
* no number is converted from more digits than its type could ever hold, so Python's limit on
  integer-string conversion (4,300 digits) is never reached.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Callable
from decimal import Decimal
from typing import Final
from zoneinfo import ZoneInfo

from batch.model import JSON
from batch.resources import EVENTS, EdmType, Property, normalize_header

__all__ = [
    "ALIASES",
    "ENUMS",
    "MAX_VALUE_LENGTH",
    "PROPERTIES",
    "WRITABLE",
    "EdmType",
    "Property",
    "ValueProblem",
    "canonical",
    "cell_problem",
    "check_wire",
    "coerce_text",
    "describe_char",
    "is_null_token",
    "normalize_header",
    "null_token_test",
]


class ValueProblem(ValueError):
    """A cell or wire value that does not fit its property; the message is the reason."""


# The events' table lives in `batch.resources` (issue 16: a resource is data); these names are
# kept here because every stage reads them from this module.
ENUMS: Final[dict[str, tuple[str, ...]]] = dict(EVENTS.enums)

PROPERTIES: Final[dict[str, Property]] = dict(EVENTS.properties)

# Every property that may appear in a PATCH body (the id goes in the URL).
WRITABLE: Final[tuple[str, ...]] = EVENTS.writable

# Other header spellings that mean the id column (CONTRACT.md, "Input files").
ALIASES: Final[dict[str, str]] = EVENTS.aliases


# --- limits and characters ---------------------------------------------------------------------

MAX_VALUE_LENGTH: Final = 32_767
"""The most characters a value may have: Excel's limit for the text of one cell."""

# C0 (tab and line breaks too: no property is multi-line text), DEL and C1.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# In free text (strings) tabs and line breaks are text: an exported failure detail may hold
# them, and an export → edit → run cycle must not turn such rows invalid.
_TEXT_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Full-width forms (U+FF01..U+FF5E) and the ideographic space, as East Asian input methods type
# them, map one to one onto ASCII; nothing else is folded (see the module docstring).
_WIDE_TO_ASCII: Final = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


def describe_char(char: str) -> str:
    """`U+0661 ARABIC-INDIC DIGIT ONE` (control characters have no name: just the code point)."""
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X} {name}" if name else f"U+{ord(char):04X}"


def cell_problem(text: str, *, free_text: bool = False) -> str | None:
    """Why a cell's text can never be a value (too long, a control character), or None.

    The mapper calls this for every non-empty cell, string columns included, so it is one
    length test and one C-level regex search. `free_text` (a string property) lets tabs and
    line breaks through.
    """
    if len(text) > MAX_VALUE_LENGTH:
        return (
            f"longer than {MAX_VALUE_LENGTH:,} characters ({len(text):,}), "
            "the most one value may have (Excel's limit for a cell)"
        )
    if text.isascii() and text.isprintable():
        # Printable ASCII (0x20-0x7E) holds no control character: two C-level scans, a third
        # of the regex search's cost, for nearly every cell.
        return None
    found = (_TEXT_CONTROL if free_text else _CONTROL).search(text)
    if found is not None:
        return (
            f"contains a control character {describe_char(found.group())} "
            f"at character {found.start() + 1}"
        )
    return None


def _ascii_text(text: str, type_name: str) -> str:
    """The text with full-width forms folded to ASCII; `ValueProblem` naming any other non-ASCII.

    Typed values go to the wire in the canonical ASCII form, so nothing else may pass through.
    """
    if text.isascii():
        return text
    folded = text.translate(_WIDE_TO_ASCII)
    for char in folded:
        if not char.isascii():
            raise ValueProblem(
                f"contains {char!r} ({describe_char(char)}): write {type_name} values "
                "with the digits 0-9 and ASCII signs"
            )
    return folded


# --- Int32 -----------------------------------------------------------------------------------

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT_TEXT = re.compile(r"^[+-]?\d+(?:\.0*)?$", re.ASCII)
# Significant digits beyond which a number cannot be an Int32 (2147483647 has 10).
_INT32_DIGITS: Final = 10


def _coerce_int32(text: str) -> int:
    s = text.strip()
    if not _INT_TEXT.match(s):
        raise ValueProblem("not a whole number")
    digits = s.lstrip("+-").split(".", 1)[0].lstrip("0")
    # Counted before int(): a 4,301-digit cell would otherwise hit Python's int-string limit.
    if len(digits) > _INT32_DIGITS:
        raise ValueProblem(f"out of the Int32 range {_INT32_MIN}..{_INT32_MAX}")
    value = -int(digits or "0") if s.startswith("-") else int(digits or "0")
    if not _INT32_MIN <= value <= _INT32_MAX:
        raise ValueProblem(f"out of the Int32 range {_INT32_MIN}..{_INT32_MAX}")
    return value


# --- DateTimeOffset -----------------------------------------------------------------------------

# What users type: a date, `T` or a space, a time with optional seconds and fraction, an offset.
# re.ASCII throughout: `\d` would also match Arabic-Indic or full-width digits.
_DATETIME_TEXT = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[T ](?P<hm>\d{2}:\d{2})(?::(?P<sec>\d{2})(?:\.(?P<frac>\d+))?)?"
    r"\s*(?P<tz>Z|z|[+-]\d{2}(?::?\d{2})?)?$",
    re.ASCII,
)
# An ISO date alone means its midnight (it has no offset, so it needs --assume-tz).
_DATE_TEXT = re.compile(r"^(?P<date>\d{4}-\d{2}-\d{2})$", re.ASCII)
# Day-first dotted dates as Excel shows them in German, Swiss, Nordic or Russian locales:
# `01.10.2025`, `1.10.2025 9:30`, `01.10.2025 09:30:15,5`. Dotted dates are never month-first.
_DOTTED_TEXT = re.compile(
    r"^(?P<day>\d{1,2})\.(?P<month>\d{1,2})\.(?P<year>\d{4})"
    r"(?: +(?P<hour>\d{1,2}):(?P<minute>\d{2})(?::(?P<sec>\d{2})(?:[.,](?P<frac>\d+))?)?"
    r"\s*(?P<tz>Z|z|[+-]\d{2}(?::?\d{2})?)?)?$",
    re.ASCII,
)
# What Graph accepts (GRAPH.md, "Wire formats").
_DATETIME_WIRE = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,12})?(?:Z|[+-]\d{2}:\d{2})$", re.ASCII
)
_DATETIME_FORMATS: Final = (
    "ISO 8601 (2024-05-01T09:30:00+02:00, 2024-05-01 09:30, 2024-05-01) "
    "or day.month.year (01.10.2025 09:30:15, 01.10.2025 09:30, 01.10.2025)"
)


def _normalize_offset(tz: str) -> str:
    if tz in ("Z", "z"):
        return "Z"
    sign, digits = tz[0], tz[1:].replace(":", "")
    hours, minutes = digits[:2], digits[2:] or "00"
    if int(hours) > 14 or int(minutes) > 59 or (int(hours) == 14 and int(minutes) > 0):
        raise ValueProblem(f"offset {tz} is out of range (-14:00..+14:00)")
    return f"{sign}{hours}:{minutes}"


def _offset_text(offset: dt.timedelta) -> str:
    total = int(offset.total_seconds()) // 60
    sign = "-" if total < 0 else "+"
    hours, minutes = divmod(abs(total), 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


def _datetime_fields(text: str) -> tuple[str, str, str | None]:
    """(`YYYY-MM-DDThh:mm:ss`, fraction digits, offset text or None) of a typed date and time."""
    m = _DATETIME_TEXT.match(text)
    if m:
        # The matched text, not strftime: faster, and %Y drops the zeros of year 0001 on Linux.
        return f"{m['date']}T{m['hm']}:{m['sec'] or '00'}", m["frac"] or "", m["tz"]
    m = _DATE_TEXT.match(text)
    if m:
        return f"{m['date']}T00:00:00", "", None
    m = _DOTTED_TEXT.match(text)
    if m:
        day, month, hour = int(m["day"]), int(m["month"]), int(m["hour"] or 0)
        stamp = f"{m['year']}-{month:02d}-{day:02d}T{hour:02d}:{m['minute'] or '00'}"
        return f"{stamp}:{m['sec'] or '00'}", m["frac"] or "", m["tz"]
    raise ValueProblem(
        f"not a date and time: write it as {_DATETIME_FORMATS} "
        "(a value without Z or +hh:mm needs --assume-tz ZONE)"
    )


def _coerce_datetime(text: str, assume_tz: str | None) -> str:
    stamp, frac, tz = _datetime_fields(text.strip())
    if len(frac) > 12:
        raise ValueProblem("more than 12 fractional second digits")
    try:
        naive = dt.datetime.fromisoformat(stamp)
    except ValueError:
        raise ValueProblem("not a real calendar date and time") from None
    if tz:
        offset = _normalize_offset(tz)
    elif assume_tz:
        try:
            zone = ZoneInfo(assume_tz)
        except (KeyError, ValueError, OSError):
            raise ValueProblem(f"unknown time zone {assume_tz!r}") from None
        utcoffset = naive.replace(tzinfo=zone).utcoffset()
        assert utcoffset is not None  # a ZoneInfo always yields an offset
        offset = _offset_text(utcoffset)
    else:
        raise ValueProblem(
            "has no UTC offset (add Z or +hh:mm, or pass --assume-tz ZONE to say which zone it is)"
        )
    fraction = f".{frac}" if frac else ""
    value = f"{stamp}{fraction}{offset}"
    if naive.year in (1, 9999):
        _datetime_instant(value)  # the offset may push the UTC instant out of years 1..9999
    return value


def _datetime_instant(value: str) -> tuple[dt.datetime, str]:
    """An aware datetime (to the microsecond) plus the digits beyond the microsecond."""
    m = _DATETIME_TEXT.match(value)
    if not m or not m["tz"]:
        raise ValueProblem("not a DateTimeOffset")
    frac = (m["frac"] or "").ljust(6, "0")
    offset = _normalize_offset(m["tz"])
    tz = (
        dt.UTC
        if offset == "Z"
        else dt.timezone(
            (1 if offset[0] == "+" else -1)
            * dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
        )
    )
    try:
        base = dt.datetime.fromisoformat(f"{m['date']}T{m['hm']}:{m['sec'] or '00'}")
    except ValueError:
        # canonical() and check_wire() meet values nobody checked yet (2024-02-30 from a file).
        raise ValueProblem("not a real calendar date and time") from None
    aware = base.replace(microsecond=int(frac[:6]), tzinfo=tz)
    try:
        # .NET's DateTimeOffset, like Python, needs the UTC instant within years 1..9999.
        return aware.astimezone(dt.UTC), frac[6:].rstrip("0")
    except OverflowError:
        raise ValueProblem("outside the DateTimeOffset range (years 1 to 9999 in UTC)") from None


# --- Duration -----------------------------------------------------------------------------------

_DURATION_WIRE = re.compile(
    r"^-?P(?:[0-9]+D)?(?:T(?:[0-9]+H)?(?:[0-9]+M)?(?:[0-9]+(?:[.][0-9]+)?S)?)?$"
)
# ISO 8601 allows a decimal comma as well as a point.
_DURATION_ISO = re.compile(
    r"^(?P<sign>-)?P(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+)(?:[.,](?P<f>\d+))?S)?)?$",
    re.ASCII,
)
# .NET TimeSpan text: `c` as PowerShell prints it, [-][d.]hh:mm:ss[.fffffff]; and `g`/`G` as
# a German or French culture formats it, [-][d:]hh:mm:ss[,fffffff] (decimal comma, `d:`).
_TIMESPAN = re.compile(
    r"^(?P<sign>-)?(?:(?P<d>\d+)[.:])?(?P<h>\d{1,2}):(?P<m>\d{1,2}):(?P<s>\d{1,2})"
    r"(?:[.,](?P<f>\d{1,7}))?$",
    re.ASCII,
)
_DURATION_FORMATS: Final = (
    "ISO 8601 (PT3M21.5S) or TimeSpan text ([-][d.]hh:mm:ss[.fffffff], "
    "a decimal comma is fine: 00:03:21,5549443)"
)
_TIMESPAN_TOO_LONG: Final = "longer than a .NET TimeSpan can hold (about 29,000 years)"
# Significant digits beyond which a day, hour, minute or second count exceeds every TimeSpan
# (its maximum is 922,337,203,685 seconds: 12 digits). Checked before int(), which refuses
# more than 4,300 digits with a ValueError of its own.
_DURATION_PART_DIGITS: Final = 20


def _count(digits: str | None) -> int:
    if not digits:
        return 0
    significant = digits.lstrip("0")
    if len(significant) > _DURATION_PART_DIGITS:
        raise ValueProblem(_TIMESPAN_TOO_LONG)
    return int(significant or "0")


def _duration_parts(text: str) -> tuple[bool, int, str]:
    """(negative, whole seconds, fraction digits without trailing zeros) of user or wire text.

    Integer arithmetic on the digits, not Decimal: this runs for every duration cell of a
    million-row file, and it keeps every digit exactly (7 for .NET ticks, or more).
    """
    s = text.strip()
    if not s.isascii():
        # Also keeps str.upper() honest: it turns U+017F LATIN SMALL LETTER LONG S into "S".
        raise ValueProblem(f"not a duration: use {_DURATION_FORMATS}")
    upper = s.upper()
    m = _DURATION_ISO.match(upper)
    if m and upper not in ("P", "-P") and not upper.endswith("T"):
        days, hours, minutes, seconds = m["d"], m["h"], m["m"], m["s"]
        if days or hours or minutes or seconds:
            total = (
                _count(days) * 86400 + _count(hours) * 3600 + _count(minutes) * 60 + _count(seconds)
            )
            return bool(m["sign"]), total, (m["f"] or "").rstrip("0")
    m = _TIMESPAN.match(s)
    if m:
        hours, minutes, seconds = int(m["h"]), int(m["m"]), int(m["s"])
        if hours > 23 or minutes > 59 or seconds > 59:
            raise ValueProblem("TimeSpan hours must be 0-23, minutes and seconds 0-59")
        total = _count(m["d"]) * 86400 + hours * 3600 + minutes * 60 + seconds
        return bool(m["sign"]), total, (m["f"] or "").rstrip("0")
    raise ValueProblem(f"not a duration: use {_DURATION_FORMATS}")


def _duration_seconds(text: str) -> Decimal:
    """The signed length in seconds, exactly (for comparing durations written differently)."""
    negative, whole, frac = _duration_parts(text)
    total = Decimal(f"{whole}.{frac}") if frac else Decimal(whole)
    return -total if negative and total else total


def _format_duration(negative: bool, whole: int, frac: str) -> str:
    """The canonical wire form, as .NET's XmlConvert writes a TimeSpan (days, h, m, s)."""
    if not whole and not frac:
        return "PT0S"  # also for "-PT0S": there is no negative zero on the wire
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    out = ["-P" if negative else "P"]
    if days:
        out.append(f"{days}D")
    if hours or minutes or seconds or frac:
        out.append("T")
        if hours:
            out.append(f"{hours}H")
        if minutes:
            out.append(f"{minutes}M")
        if seconds or frac:
            out.append(f"{seconds}.{frac}S" if frac else f"{seconds}S")
    return "".join(out)


# .NET TimeSpan.MaxValue (Graph's Duration is a TimeSpan): 10675199.02:48:05.4775807.
_TIMESPAN_MAX_SECONDS = Decimal("922337203685.4775807")


def _coerce_duration(text: str) -> str:
    negative, whole, frac = _duration_parts(text)
    if whole >= int(_TIMESPAN_MAX_SECONDS) and abs(_duration_seconds(text)) > _TIMESPAN_MAX_SECONDS:
        raise ValueProblem(_TIMESPAN_TOO_LONG)
    return _format_duration(negative, whole, frac)


# --- enums ------------------------------------------------------------------------------------


def _coerce_enum(prop: Property, text: str) -> str:
    s = text.strip()
    for member in prop.members:
        if member.casefold() == s.casefold():
            return member
    raise ValueProblem(f"must be one of {', '.join(prop.members)}")


# --- public -----------------------------------------------------------------------------------


def is_null_token(text: str, null_token: str) -> bool:
    """Whether a (trimmed) cell is the null token, in any case.

    `<NULL>` or `<Null>` is typed meaning the same as `<null>`; sending it as a literal group
    tag or user name would set a value where the admin asked for a clear.
    """
    return text == null_token or text.casefold() == null_token.casefold()


def null_token_test(null_token: str) -> Callable[[str], bool]:
    """`is_null_token` for one token, cheap for the million cells that are not it.

    Casefolding keeps the length of ASCII text, so an ASCII cell of another length than an
    ASCII token cannot be it, decided without folding the cell.
    """
    folded = null_token.casefold()
    if not null_token.isascii():
        return lambda text: text.casefold() == folded
    size = len(null_token)
    return lambda text: (len(text) == size or not text.isascii()) and text.casefold() == folded


def coerce_text(
    prop: Property, text: str, *, null_token: str = "<null>", assume_tz: str | None = None
) -> JSON:
    """Turn a cell's text into the exact wire value for `prop`, or raise `ValueProblem`.

    The caller drops empty cells before calling (an empty cell leaves the property unchanged).
    Every text gives a value or a `ValueProblem`, never another exception (tests/test_schema.py
    feeds arbitrary text to every property to keep it so).
    """
    reason = cell_problem(text)
    if reason is not None:
        raise ValueProblem(reason)
    if is_null_token(text, null_token):
        if not prop.nullable:
            raise ValueProblem(f"{prop.name} is not nullable, so {text} is not allowed")
        return None
    if prop.edm == EdmType.STRING:
        return text
    if prop.edm == EdmType.ENUM:
        return _coerce_enum(prop, text)
    typed = _ascii_text(text, prop.edm)
    if prop.edm == EdmType.INT32:
        return _coerce_int32(typed)
    if prop.edm == EdmType.DATETIMEOFFSET:
        return _coerce_datetime(typed, assume_tz)
    if prop.edm == EdmType.DURATION:
        return _coerce_duration(typed)
    raise AssertionError(f"unhandled EDM type {prop.edm}")  # pragma: no cover


def check_wire(prop: Property, value: object) -> str | None:
    """Judge a JSON value as Graph does on arrival; the reason it is rejected, or None if fine."""
    if value is None:
        return None if prop.nullable else f"{prop.name} cannot be null"
    if prop.edm == EdmType.STRING:
        return None if isinstance(value, str) else f"{prop.name} must be a string"
    if prop.edm == EdmType.INT32:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{prop.name} must be an Int32 number"
        return None if _INT32_MIN <= value <= _INT32_MAX else f"{prop.name} is out of Int32 range"
    if not isinstance(value, str):
        return f"{prop.name} must be a string in {prop.type_name} format"
    if prop.edm == EdmType.DATETIMEOFFSET:
        if not _DATETIME_WIRE.match(value):
            return f"Cannot convert the literal '{value}' to the expected type 'Edm.DateTimeOffset'"
        try:
            _datetime_instant(value)
        except (ValueError, ValueProblem):
            return f"Cannot convert the literal '{value}' to the expected type 'Edm.DateTimeOffset'"
        return None
    if prop.edm == EdmType.DURATION:
        # "P", "-PT", "P1DT": the pattern alone accepts designators with no number after them.
        rejected = f"Cannot convert the literal '{value}' to the expected type 'Edm.Duration'"
        if (
            not _DURATION_WIRE.match(value)
            or value.lstrip("-") in ("P", "PT")
            or value.endswith("T")
        ):
            return rejected
        try:
            seconds = _duration_seconds(value)
        except ValueProblem:  # more digits than any TimeSpan
            return rejected
        return rejected if abs(seconds) > _TIMESPAN_MAX_SECONDS else None
    if value not in prop.members:
        return f"Requested value '{value}' was not found in enum 'microsoft.graph.{prop.enum_type}'"
    return None


def canonical(prop: Property, value: JSON) -> object:
    """A comparable form of a wire value: equal for the same instant, duration or enum member."""
    if value is None or not isinstance(value, str):
        return value
    try:
        if prop.edm == EdmType.DATETIMEOFFSET:
            return _datetime_instant(value.strip())
        if prop.edm == EdmType.DURATION:
            return _duration_seconds(value)
        if prop.edm == EdmType.ENUM:
            return value.casefold()
        if prop.edm == EdmType.INT32:
            return _coerce_int32(value)
    except ValueProblem:
        return value
    return value
