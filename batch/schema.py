"""The deviceManagementAutopilotEvent property table and the value coercers.

One declarative table (`PROPERTIES`) that the mapper, the emulator, `schema` and `template`
all read.
Two directions of checking live here:

* `coerce_text` turns what a user typed in a cell into the exact wire value (or raises
  `ValueProblem` with a precise reason);
* `check_wire` judges a JSON value the way Graph does when it arrives in a request body.

`canonical` turns a wire value into something comparable, so `--only-changed` treats the same
instant in two offsets, or an enum in two spellings, as equal.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Final
from zoneinfo import ZoneInfo

from batch.model import JSON

__all__ = [
    "ALIASES",
    "ENUMS",
    "PROPERTIES",
    "WRITABLE",
    "EdmType",
    "Property",
    "ValueProblem",
    "canonical",
    "check_wire",
    "coerce_text",
    "normalize_header",
]


class ValueProblem(ValueError):
    """A cell or wire value that does not fit its property; the message is the reason."""


class EdmType:
    """The EDM type names used in the table (plain strings, as Graph's metadata spells them)."""

    STRING: Final = "String"
    INT32: Final = "Int32"
    DATETIMEOFFSET: Final = "DateTimeOffset"
    DURATION: Final = "Duration"
    ENUM: Final = "Enum"


ENUMS: Final[dict[str, tuple[str, ...]]] = {
    "windowsAutopilotEnrollmentType": (
        "unknown",
        "azureADJoinedWithAutopilotProfile",
        "offlineDomainJoined",
        "azureADJoinedUsingDeviceAuthWithAutopilotProfile",
        "azureADJoinedUsingDeviceAuthWithoutAutopilotProfile",
        "azureADJoinedWithOfflineAutopilotProfile",
        "azureADJoinedWithWhiteGlove",
        "offlineDomainJoinedWithWhiteGlove",
        "offlineDomainJoinedWithOfflineAutopilotProfile",
    ),
    "enrollmentState": ("unknown", "enrolled", "pendingReset", "failed", "notContacted", "blocked"),
    "windowsAutopilotDeploymentState": (
        "unknown",
        "success",
        "inProgress",
        "failure",
        "successWithTimeout",
        "notAttempted",
        "disabled",
        "successOnRetry",
    ),
}


@dataclass(frozen=True, slots=True)
class Property:
    """One property of deviceManagementAutopilotEvent (GRAPH.md, "The resource")."""

    name: str
    edm: str
    nullable: bool
    enum_type: str | None = None
    legacy: bool = False
    key: bool = False
    description: str = ""

    @property
    def members(self) -> tuple[str, ...]:
        """The enum members in wire spelling (empty for non-enums)."""
        return ENUMS[self.enum_type] if self.enum_type else ()

    @property
    def type_name(self) -> str:
        """The type as Graph's metadata names it (the enum type name for enums)."""
        return self.enum_type or self.edm


def _p(
    name: str,
    edm: str,
    nullable: bool,
    description: str,
    *,
    enum_type: str | None = None,
    legacy: bool = False,
    key: bool = False,
) -> Property:
    return Property(name, edm, nullable, enum_type, legacy, key, description)


_S, _I, _T, _D, _E = (
    EdmType.STRING,
    EdmType.INT32,
    EdmType.DATETIMEOFFSET,
    EdmType.DURATION,
    EdmType.ENUM,
)

PROPERTIES: Final[dict[str, Property]] = {
    p.name: p
    for p in (
        _p("id", _S, False, "The event id; goes in the URL, never in the body", key=True),
        _p("deviceId", _S, True, "Device id"),
        _p("eventDateTime", _T, False, "Time the event occurred"),
        _p("deviceRegisteredDateTime", _T, False, "Device registration date"),
        _p("enrollmentStartDateTime", _T, False, "Device enrollment start date"),
        _p(
            "enrollmentType",
            _E,
            False,
            "Enrollment type",
            enum_type="windowsAutopilotEnrollmentType",
        ),
        _p("deviceSerialNumber", _S, True, "Device serial number"),
        _p("managedDeviceName", _S, True, "Managed device name"),
        _p("userPrincipalName", _S, True, "User principal name used to enroll the device"),
        _p("userId", _S, True, "User id (current schema only)"),
        _p(
            "windowsAutopilotDeploymentProfileDisplayName",
            _S,
            True,
            "Autopilot profile name",
        ),
        _p("enrollmentState", _E, False, "Enrollment state", enum_type="enrollmentState"),
        _p(
            "windows10EnrollmentCompletionPageConfigurationDisplayName",
            _S,
            True,
            "Enrollment Status Page profile name",
        ),
        _p(
            "windows10EnrollmentCompletionPageConfigurationId",
            _S,
            True,
            "Enrollment Status Page profile id",
        ),
        _p(
            "deploymentState",
            _E,
            False,
            "Deployment state",
            enum_type="windowsAutopilotDeploymentState",
        ),
        _p(
            "deviceSetupStatus",
            _E,
            False,
            "Device setup status",
            enum_type="windowsAutopilotDeploymentState",
        ),
        _p(
            "accountSetupStatus",
            _E,
            False,
            "Account setup status",
            enum_type="windowsAutopilotDeploymentState",
        ),
        _p("osVersion", _S, True, "Device operating system version"),
        _p("deploymentDuration", _D, False, "Autopilot deployment duration"),
        _p("deploymentTotalDuration", _D, False, "Total deployment duration"),
        _p(
            "devicePreparationDuration",
            _D,
            False,
            "Time spent in device enrollment (legacy)",
            legacy=True,
        ),
        _p("deviceSetupDuration", _D, False, "Time spent in device ESP"),
        _p("accountSetupDuration", _D, False, "Time spent in user ESP"),
        _p("deploymentStartDateTime", _T, False, "Deployment start time"),
        _p("deploymentEndDateTime", _T, False, "Deployment end time"),
        _p("targetedAppCount", _I, False, "Count of applications targeted (legacy)", legacy=True),
        _p("targetedPolicyCount", _I, False, "Count of policies targeted (legacy)", legacy=True),
        _p("enrollmentFailureDetails", _S, True, "Enrollment failure details"),
    )
}

# Every property that may appear in a PATCH body (the id goes in the URL).
WRITABLE: Final[tuple[str, ...]] = tuple(n for n, p in PROPERTIES.items() if not p.key)

# Other header spellings that mean the id column (CONTRACT.md, "Input files").
ALIASES: Final[dict[str, str]] = {
    "eventid": "id",
    "devicemanagementautopiloteventid": "id",
}

_HEADER_JUNK = re.compile(r"[\s_\-]+")


def normalize_header(text: str) -> str:
    """Fold a header for matching: case-insensitive, ignoring spaces, `_` and `-`."""
    return _HEADER_JUNK.sub("", text).casefold()


# --- Int32 -----------------------------------------------------------------------------------

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT_TEXT = re.compile(r"^[+-]?\d+(?:\.0*)?$")


def _coerce_int32(text: str) -> int:
    s = text.strip()
    if not _INT_TEXT.match(s):
        raise ValueProblem("not a whole number")
    value = int(s.split(".", 1)[0])
    if not _INT32_MIN <= value <= _INT32_MAX:
        raise ValueProblem(f"out of the Int32 range {_INT32_MIN}..{_INT32_MAX}")
    return value


# --- DateTimeOffset -----------------------------------------------------------------------------

# What users type: a date, `T` or a space, a time with optional seconds and fraction, an offset.
_DATETIME_TEXT = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[T ](?P<hm>\d{2}:\d{2})(?::(?P<sec>\d{2})(?:\.(?P<frac>\d+))?)?"
    r"\s*(?P<tz>Z|z|[+-]\d{2}(?::?\d{2})?)?$"
)
# What Graph accepts (GRAPH.md, "Wire formats").
_DATETIME_WIRE = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,12})?(?:Z|[+-]\d{2}:\d{2})$"
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


def _coerce_datetime(text: str, assume_tz: str | None) -> str:
    s = text.strip()
    m = _DATETIME_TEXT.match(s)
    if not m:
        raise ValueProblem("not an ISO 8601 date and time, e.g. 2024-05-01T09:30:00+02:00")
    frac = m["frac"] or ""
    if len(frac) > 12:
        raise ValueProblem("more than 12 fractional second digits")
    # The matched text, not strftime: it is faster, and %Y drops the zeros of year 0001 on Linux.
    stamp = f"{m['date']}T{m['hm']}:{m['sec'] or '00'}"
    try:
        naive = dt.datetime.fromisoformat(stamp)
    except ValueError:
        raise ValueProblem("not a real calendar date and time") from None
    if m["tz"]:
        offset = _normalize_offset(m["tz"])
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
    base = dt.datetime.fromisoformat(f"{m['date']}T{m['hm']}:{m['sec'] or '00'}")
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
_DURATION_ISO = re.compile(
    r"^(?P<sign>-)?P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)
# .NET TimeSpan text as PowerShell prints it: [-][d.]hh:mm:ss[.fffffff]
_TIMESPAN = re.compile(
    r"^(?P<sign>-)?(?:(?P<d>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{1,2}):(?P<s>\d{1,2}(?:\.\d{1,7})?)$"
)


def _duration_parts(text: str) -> tuple[bool, int, str]:
    """(negative, whole seconds, fraction digits without trailing zeros) of user or wire text.

    Integer arithmetic on the digits, not Decimal: this runs for every duration cell of a
    million-row file, and it keeps every digit exactly (7 for .NET ticks, or more).
    """
    s = text.strip()
    upper = s.upper()
    m = _DURATION_ISO.match(upper)
    if m and upper not in ("P", "-P") and not upper.endswith("T"):
        days, hours, minutes, seconds = m["d"], m["h"], m["m"], m["s"]
        if days or hours or minutes or seconds:
            whole, _, frac = (seconds or "0").partition(".")
            total = (
                int(days or 0) * 86400
                + int(hours or 0) * 3600
                + int(minutes or 0) * 60
                + int(whole)
            )
            return bool(m["sign"]), total, frac.rstrip("0")
    m = _TIMESPAN.match(s)
    if m:
        whole, _, frac = m["s"].partition(".")
        hours, minutes, seconds = int(m["h"]), int(m["m"]), int(whole)
        if hours > 23 or minutes > 59 or seconds > 59:
            raise ValueProblem("TimeSpan hours must be 0-23, minutes and seconds 0-59")
        total = int(m["d"] or 0) * 86400 + hours * 3600 + minutes * 60 + seconds
        return bool(m["sign"]), total, frac.rstrip("0")
    raise ValueProblem(
        "not a duration: use ISO 8601 (PT3M21.5S) or TimeSpan text ([-][d.]hh:mm:ss[.fffffff])"
    )


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
        raise ValueProblem("longer than a .NET TimeSpan can hold (about 29,000 years)")
    return _format_duration(negative, whole, frac)


# --- enums ------------------------------------------------------------------------------------


def _coerce_enum(prop: Property, text: str) -> str:
    s = text.strip()
    for member in prop.members:
        if member.casefold() == s.casefold():
            return member
    raise ValueProblem(f"must be one of {', '.join(prop.members)}")


# --- public -----------------------------------------------------------------------------------


def coerce_text(
    prop: Property, text: str, *, null_token: str = "<null>", assume_tz: str | None = None
) -> JSON:
    """Turn a cell's text into the exact wire value for `prop`, or raise `ValueProblem`.

    The caller drops empty cells before calling (an empty cell leaves the property unchanged).
    """
    if text == null_token:
        if not prop.nullable:
            raise ValueProblem(f"{prop.name} is not nullable, so {null_token} is not allowed")
        return None
    if prop.edm == EdmType.STRING:
        return text
    if prop.edm == EdmType.INT32:
        return _coerce_int32(text)
    if prop.edm == EdmType.DATETIMEOFFSET:
        return _coerce_datetime(text, assume_tz)
    if prop.edm == EdmType.DURATION:
        return _coerce_duration(text)
    if prop.edm == EdmType.ENUM:
        return _coerce_enum(prop, text)
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
        if (
            not _DURATION_WIRE.match(value)
            or value.lstrip("-") in ("P", "PT")
            or value.endswith("T")
            or abs(_duration_seconds(value)) > _TIMESPAN_MAX_SECONDS
        ):
            return f"Cannot convert the literal '{value}' to the expected type 'Edm.Duration'"
        return None
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
