"""The property table and the coercers: examples, edge cases, and hypothesis round trips."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batch.schema import (
    ALIASES,
    ENUMS,
    PROPERTIES,
    WRITABLE,
    EdmType,
    ValueProblem,
    canonical,
    check_wire,
    coerce_text,
    normalize_header,
)

DOCS_EXAMPLE = Path(__file__).resolve().parent / "fixtures" / "docs-example-request.json"
P = PROPERTIES


def coerce(name: str, text: str, *, null_token: str = "<null>", assume_tz: str | None = None):
    return coerce_text(P[name], text, null_token=null_token, assume_tz=assume_tz)


# --- the table ---------------------------------------------------------------------------------


def test_table_matches_graph_md() -> None:
    assert len(P) == 28
    assert tuple(n for n in P if n != "id") == WRITABLE
    assert {n for n, p in P.items() if p.legacy} == {
        "devicePreparationDuration",
        "targetedAppCount",
        "targetedPolicyCount",
    }
    assert P["id"].key and not P["id"].nullable
    assert P["deviceSetupStatus"].enum_type == "windowsAutopilotDeploymentState"
    assert len(ENUMS["windowsAutopilotEnrollmentType"]) == 9


def test_every_docs_example_value_is_its_own_wire_value() -> None:
    body = json.loads(DOCS_EXAMPLE.read_text())
    body.pop("@odata.type")
    assert set(body) == set(WRITABLE) - {"userId"}
    for name, value in body.items():
        assert check_wire(P[name], value) is None, name
        text = str(value)
        assert coerce(name, text) == value, name


def test_aliases_are_normalized_keys() -> None:
    for key in ALIASES:
        assert normalize_header(key) == key
    assert normalize_header("Device Serial-Number_") == "deviceserialnumber"


# --- examples -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        pytest.param("3", 3, id="int"),
        pytest.param("3.0", 3, id="excel-float"),
        pytest.param(" -7 ", -7, id="spaces"),
        pytest.param("2147483647", 2147483647, id="max"),
        pytest.param("-2147483648", -2147483648, id="min"),
    ],
)
def test_int32(text: str, wire: int) -> None:
    assert coerce("targetedAppCount", text) == wire


@pytest.mark.parametrize("text", ["3.5", "2147483648", "1e3", "three", "0x10"])
def test_int32_rejects(text: str) -> None:
    with pytest.raises(ValueProblem):
        coerce("targetedAppCount", text)


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("2024-05-01T09:30:00+02:00", "2024-05-01T09:30:00+02:00"),
        ("2024-05-01 09:30+0200", "2024-05-01T09:30:00+02:00"),
        ("2024-05-01T09:30:00z", "2024-05-01T09:30:00Z"),
        ("2024-05-01T09:30:00.123456789012-08", "2024-05-01T09:30:00.123456789012-08:00"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
    ],
)
def test_datetime(text: str, wire: str) -> None:
    assert coerce("eventDateTime", text) == wire
    assert check_wire(P["eventDateTime"], wire) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("2024-05-01T09:30:00", "no UTC offset"),
        ("2024-02-30T09:30:00Z", "calendar"),
        ("2024-05-01T09:30:00+15:00", "out of range"),
        ("2024-05-01T09:30:00.1234567890123Z", "12 fractional"),
        ("9999-12-31T23:00:00-08:00", "DateTimeOffset range"),
        ("0001-01-01T00:30:00+01:00", "DateTimeOffset range"),
        ("yesterday", "ISO 8601"),
    ],
)
def test_datetime_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueProblem, match=reason):
        coerce("eventDateTime", text)


def test_datetime_assume_tz_uses_the_zone_rules_of_that_date() -> None:
    winter = coerce("eventDateTime", "2024-01-15 10:00", assume_tz="Europe/Berlin")
    summer = coerce("eventDateTime", "2024-07-15T10:00:00", assume_tz="Europe/Berlin")
    assert winter == "2024-01-15T10:00:00+01:00"
    assert summer == "2024-07-15T10:00:00+02:00"
    # A given offset wins over --assume-tz.
    assert coerce("eventDateTime", "2024-07-15T10:00Z", assume_tz="Europe/Berlin") == (
        "2024-07-15T10:00:00Z"
    )


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("PT3M21.5549443S", "PT3M21.5549443S"),
        ("-PT1M32.1347897S", "-PT1M32.1347897S"),
        ("00:03:21.5549443", "PT3M21.5549443S"),
        ("-00:01:32.1347897", "-PT1M32.1347897S"),
        ("1.02:03:04", "P1DT2H3M4S"),
        ("pt90m", "PT1H30M"),
        ("PT1.50S", "PT1.5S"),
        ("00:00:00", "PT0S"),
        ("-PT0S", "PT0S"),
        ("P2DT0S", "P2D"),
        ("10675199.02:48:05.4775807", "P10675199DT2H48M5.4775807S"),
    ],
)
def test_duration(text: str, wire: str) -> None:
    assert coerce("deploymentDuration", text) == wire
    assert check_wire(P["deploymentDuration"], wire) is None


@pytest.mark.parametrize(
    "text", ["P", "PT", "-P", "P1DT", "24:00:00", "00:60:00", "21 minutes", "10675199.02:48:05.48"]
)
def test_duration_rejects(text: str) -> None:
    with pytest.raises(ValueProblem):
        coerce("deploymentDuration", text)


@pytest.mark.parametrize("wire", ["P", "PT", "-P", "-PT", "P1DT", "PT1H2", "1:00:00", "P99999999D"])
def test_check_wire_rejects_durations_graph_rejects(wire: str) -> None:
    assert check_wire(P["deploymentDuration"], wire) is not None


def test_check_wire_on_datetime_out_of_range_is_a_reason_not_a_crash() -> None:
    assert check_wire(P["eventDateTime"], "9999-12-31T23:00:00-08:00") is not None


def test_null_token_only_for_nullable() -> None:
    assert coerce("deviceSerialNumber", "<null>") is None
    assert coerce("deviceSerialNumber", "NULL", null_token="NULL") is None
    with pytest.raises(ValueProblem, match="not nullable"):
        coerce("enrollmentState", "<null>")


def test_strings_are_verbatim() -> None:
    assert coerce("deviceSerialNumber", "  0012345 ") == "  0012345 "


def test_enum_message_lists_the_members() -> None:
    with pytest.raises(ValueProblem, match="must be one of unknown, enrolled, pendingReset"):
        coerce("enrollmentState", "Enroled")


# --- hypothesis round trips ---------------------------------------------------------------------

_ENUM_PROPS = [p for p in P.values() if p.edm == EdmType.ENUM]
_offsets = st.one_of(
    st.just("Z"),
    st.builds(
        lambda sign, h, m: f"{sign}{h:02d}:{m:02d}",
        st.sampled_from("+-"),
        st.integers(0, 13),
        st.integers(0, 59),
    ),
    st.sampled_from(["+14:00", "-14:00"]),
)


@st.composite
def datetime_wire(draw: st.DrawFn) -> str:
    moment = draw(st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30)))
    digits = draw(st.text("0123456789", max_size=12))
    fraction = f".{digits}" if digits else ""
    return f"{moment:%Y}".zfill(4) + f"{moment:-%m-%dT%H:%M:%S}{fraction}{draw(_offsets)}"


DurationParts = tuple[bool, int, int, int, int, str]


@st.composite
def duration_parts(draw: st.DrawFn) -> DurationParts:
    negative = draw(st.booleans())
    days = draw(st.integers(0, 10_000))
    hours = draw(st.integers(0, 23))
    minutes = draw(st.integers(0, 59))
    seconds = draw(st.integers(0, 59))
    fraction = draw(st.text("0123456789", max_size=7))
    return negative, days, hours, minutes, seconds, fraction


def _canonical_iso(parts: DurationParts) -> str:
    negative, days, hours, minutes, seconds, fraction = parts
    fraction = fraction.rstrip("0")
    if not (days or hours or minutes or seconds or fraction):
        return "PT0S"
    text = ("-" if negative else "") + "P" + (f"{days}D" if days else "")
    time = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if seconds or fraction:
        time += f"{seconds}.{fraction}S" if fraction else f"{seconds}S"
    return text + ("T" + time if time else "")


@settings(max_examples=300)
@given(datetime_wire())
def test_any_datetime_wire_value_parses_back_to_itself(wire: str) -> None:
    prop = P["eventDateTime"]
    assert check_wire(prop, wire) is None
    assert coerce_text(prop, wire) == wire


@settings(max_examples=200)
@given(datetime_wire(), _offsets)
def test_same_instant_in_two_offsets_is_canonically_equal(wire: str, offset: str) -> None:
    prop = P["eventDateTime"]
    instant, extra = canonical(prop, wire)
    moved = instant.astimezone(
        dt.UTC
        if offset == "Z"
        else dt.timezone(
            (1 if offset[0] == "+" else -1)
            * dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
        )
    )
    if not dt.datetime(1, 1, 2) <= moved.replace(tzinfo=None) <= dt.datetime(9999, 12, 30):
        return
    fraction = f"{moved.microsecond:06d}{extra}".rstrip("0")
    text = f"{moved:%Y}".zfill(4) + f"{moved:-%m-%dT%H:%M:%S}"
    text += (f".{fraction}" if fraction else "") + offset
    assert canonical(prop, coerce_text(prop, text)) == canonical(prop, wire)


@settings(max_examples=300)
@given(duration_parts())
def test_any_canonical_duration_parses_back_to_itself(parts: DurationParts) -> None:
    wire = _canonical_iso(parts)
    prop = P["deploymentDuration"]
    assert check_wire(prop, wire) is None
    assert coerce_text(prop, wire) == wire


@settings(max_examples=300)
@given(duration_parts())
def test_timespan_and_iso_of_the_same_length_give_the_same_wire_value(
    parts: DurationParts,
) -> None:
    negative, days, hours, minutes, seconds, fraction = parts
    timespan = ("-" if negative else "") + (f"{days}." if days else "")
    timespan += f"{hours:02d}:{minutes:02d}:{seconds:02d}" + (f".{fraction}" if fraction else "")
    iso = ("-" if negative else "") + f"P{days}DT{hours}H{minutes}M{seconds}"
    iso += (f".{fraction}" if fraction else "") + "S"
    prop = P["deploymentDuration"]
    assert coerce_text(prop, timespan) == coerce_text(prop, iso) == _canonical_iso(parts)
    total = Decimal(days * 86400 + hours * 3600 + minutes * 60 + seconds) + (
        Decimal(f"0.{fraction}") if fraction else 0
    )
    assert canonical(prop, coerce_text(prop, iso)) == (-total if negative and total else total)


@given(st.integers(-(2**31), 2**31 - 1))
def test_any_int32_parses_back_to_itself(value: int) -> None:
    prop = P["targetedAppCount"]
    assert check_wire(prop, value) is None
    assert coerce_text(prop, str(value)) == value
    assert coerce_text(prop, f"{value}.0") == value


@given(st.text(min_size=1).filter(lambda s: s != "<null>"))
def test_any_string_is_sent_verbatim(text: str) -> None:
    prop = P["deviceSerialNumber"]
    assert coerce_text(prop, text) == text
    assert check_wire(prop, text) is None


@given(st.data())
def test_any_enum_member_in_any_case_gives_the_canonical_member(data: st.DataObject) -> None:
    prop = data.draw(st.sampled_from(_ENUM_PROPS))
    member = data.draw(st.sampled_from(prop.members))
    upper = data.draw(st.lists(st.booleans(), min_size=len(member), max_size=len(member)))
    scrambled = "".join(c.upper() if u else c.lower() for c, u in zip(member, upper, strict=True))
    assert coerce_text(prop, scrambled) == member
    assert check_wire(prop, member) is None
    assert canonical(prop, scrambled) == canonical(prop, member)


@st.composite
def any_duration_wire(draw: st.DrawFn) -> str:
    """Any text Graph's Duration pattern accepts, canonical or not (PT90M, P0DT3600S, ...)."""
    number = st.integers(0, 10**6).map(str)
    days = draw(st.none() | number)
    hours, minutes = draw(st.none() | number), draw(st.none() | number)
    fraction = st.just("") | st.text("0123456789", min_size=1, max_size=9).map(lambda f: "." + f)
    seconds = draw(st.none() | st.builds(lambda whole, frac: whole + frac, number, fraction))
    time = "".join(f"{v}{u}" for v, u in ((hours, "H"), (minutes, "M"), (seconds, "S")) if v)
    if not (days or time):
        days = "0"
    text = "P" + (f"{days}D" if days else "") + (f"T{time}" if time else "")
    return ("-" if draw(st.booleans()) else "") + text


@settings(max_examples=300)
@given(any_duration_wire())
def test_any_duration_wire_value_keeps_its_length(wire: str) -> None:
    prop = P["deploymentDuration"]
    assert check_wire(prop, wire) is None
    sent = coerce_text(prop, wire)
    assert canonical(prop, sent) == canonical(prop, wire)
    assert check_wire(prop, sent) is None
    assert coerce_text(prop, sent) == sent  # canonical form is a fixed point
