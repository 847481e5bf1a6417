"""The property table and the coercers: examples, edge cases, and hypothesis round trips."""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batch.model import JSON
from batch.schema import (
    ALIASES,
    ENUMS,
    MAX_VALUE_LENGTH,
    PROPERTIES,
    WRITABLE,
    EdmType,
    Property,
    ValueProblem,
    canonical,
    cell_problem,
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
    # In any case: `<NULL>` is typed meaning `<null>`; `NULL` alone stays text.
    assert coerce("deviceSerialNumber", "<NULL>") is None
    assert coerce("deviceSerialNumber", "<Null>") is None
    assert coerce("deviceSerialNumber", "NULL") == "NULL"
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


@given(st.text(min_size=1).filter(lambda s: s.casefold() != "<null>" and cell_problem(s) is None))
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


# --- hostile values (issue 19): limits, control characters, digits -------------------------------

_HUGE = "9" * 5_000


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        pytest.param("targetedAppCount", "9" * 4_301, "Int32 range", id="int32-4301-digits"),
        pytest.param("targetedAppCount", "-" + "9" * 4_301, "Int32 range", id="int32-negative"),
        pytest.param("deploymentDuration", f"P{_HUGE}D", "TimeSpan", id="iso-days"),
        pytest.param("deploymentDuration", f"PT{_HUGE}S", "TimeSpan", id="iso-seconds"),
        pytest.param("deploymentDuration", f"PT{_HUGE}H", "TimeSpan", id="iso-hours"),
        pytest.param("deploymentDuration", f"{_HUGE}.00:00:00", "TimeSpan", id="timespan-days"),
        pytest.param("deploymentDuration", f"{_HUGE}:00:00:00", "TimeSpan", id="timespan-g-days"),
    ],
)
def test_very_long_digit_strings_are_problems_not_crashes(
    name: str, text: str, reason: str
) -> None:
    with pytest.raises(ValueProblem, match=reason):
        coerce(name, text)
    # The same text arriving on the wire (the emulator) or compared (--only-changed).
    assert check_wire(P[name], text) is not None
    assert canonical(P[name], text) == text


def test_leading_zeros_do_not_count_as_digits() -> None:
    assert coerce("targetedAppCount", "0" * 5_000 + "7") == 7
    assert coerce("deploymentDuration", f"PT{'0' * 5_000}90S") == "PT1M30S"


def test_a_value_may_hold_as_many_characters_as_an_excel_cell() -> None:
    assert MAX_VALUE_LENGTH == 32_767
    longest = "x" * MAX_VALUE_LENGTH
    assert coerce("enrollmentFailureDetails", longest) == longest
    with pytest.raises(ValueProblem, match=r"longer than 32,767 characters \(32,768\)"):
        coerce("enrollmentFailureDetails", longest + "x")
    with pytest.raises(ValueProblem, match="32,767"):
        coerce("deploymentDuration", "P" + "0" * MAX_VALUE_LENGTH + "1D")


@pytest.mark.parametrize(
    ("char", "code"),
    [
        ("\x00", "U+0000"),
        ("\t", "U+0009"),
        ("\n", "U+000A"),
        ("\r", "U+000D"),
        ("\x1b", "U+001B"),
        ("\x7f", "U+007F"),
        ("\x85", "U+0085"),
        ("\x9f", "U+009F"),
    ],
)
@pytest.mark.parametrize("name", ["deviceSerialNumber", "targetedAppCount", "enrollmentState"])
def test_a_control_character_anywhere_is_a_problem_naming_it(
    name: str, char: str, code: str
) -> None:
    with pytest.raises(
        ValueProblem, match=re.escape(f"contains a control character {code} at character 4")
    ):
        coerce(name, f"123{char}4")
    assert cell_problem(f"123{char}") is not None


def test_printable_unicode_in_strings_is_fine() -> None:
    for text in ("Zoë's PC", "東京-PC-01", "\u00a0NBSP", "😀"):
        assert cell_problem(text) is None
        assert coerce("managedDeviceName", text) == text


@pytest.mark.parametrize(
    ("name", "text", "wire"),
    [
        pytest.param(
            "eventDateTime",
            "2024-05-01T09:30:00+\uff10\uff11:\uff10\uff10",
            "2024-05-01T09:30:00+01:00",
            id="full-width-offset",
        ),
        pytest.param(
            "eventDateTime",
            "\uff12\uff10\uff12\uff14-05-01\u300009:30\uff3a",
            "2024-05-01T09:30:00Z",
            id="full-width-year-space-z",
        ),
        pytest.param("targetedAppCount", "\uff14\uff12", 42, id="full-width-int"),
        pytest.param("deploymentDuration", "\uff30\uff34\uff15\uff33", "PT5S", id="full-width-iso"),
    ],
)
def test_full_width_forms_are_read_as_ascii(name: str, text: str, wire: JSON) -> None:
    value = coerce(name, text)
    assert value == wire
    assert check_wire(P[name], value) is None


@pytest.mark.parametrize(
    ("name", "text", "named"),
    [
        ("eventDateTime", "2024-05-01T09:30:00+\u0660\u0661:00", "U+0660 ARABIC-INDIC DIGIT ZERO"),
        ("eventDateTime", "2024-05-01T09:30:00\u221202:00", "U+2212 MINUS SIGN"),
        ("targetedAppCount", "\u0967", "U+0967 DEVANAGARI DIGIT ONE"),
        ("targetedAppCount", "\u00b2", "U+00B2 SUPERSCRIPT TWO"),
        ("deploymentDuration", "PT1.\u0665S", "U+0665 ARABIC-INDIC DIGIT FIVE"),
        ("deploymentDuration", "PT5\u017f", "U+017F LATIN SMALL LETTER LONG S"),
    ],
)
def test_other_non_ascii_in_typed_values_is_refused_by_name(
    name: str, text: str, named: str
) -> None:
    with pytest.raises(ValueProblem, match=re.escape(named)):
        coerce(name, text)


def test_non_ascii_wire_values_are_what_graph_rejects() -> None:
    assert check_wire(P["eventDateTime"], "2024-05-01T09:30:00+\uff10\uff11:00") is not None
    assert check_wire(P["deploymentDuration"], "PT\u0665S") is not None
    assert canonical(P["deploymentDuration"], "PT5\u017f") == "PT5\u017f"


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        pytest.param("00:03:21,5549443", "PT3M21.5549443S", id="decimal-comma"),
        pytest.param("-1.00:00:01,5", "-P1DT1.5S", id="comma-with-days"),
        pytest.param("1:02:03:04,5", "P1DT2H3M4.5S", id="g-format-days"),
        pytest.param("PT21,5S", "PT21.5S", id="iso-comma"),
    ],
)
def test_timespan_with_a_decimal_comma(text: str, wire: str) -> None:
    assert coerce("deploymentDuration", text) == wire
    assert check_wire(P["deploymentDuration"], wire) is None
    # The wire stays strict: Graph wants the point.
    assert check_wire(P["deploymentDuration"], "PT21,5S") is not None


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("01.10.2025 09:30", "2025-10-01T09:30:00+02:00"),
        ("01.10.2025 09:30:15", "2025-10-01T09:30:15+02:00"),
        ("01.10.2025 09:30:15,25", "2025-10-01T09:30:15.25+02:00"),
        ("01.10.2025", "2025-10-01T00:00:00+02:00"),
        ("1.1.2025 9:30", "2025-01-01T09:30:00+01:00"),
        ("2025-10-01", "2025-10-01T00:00:00+02:00"),
        ("01.10.2025 09:30 Z", "2025-10-01T09:30:00Z"),
    ],
)
def test_day_first_dotted_dates_with_assume_tz(text: str, wire: str) -> None:
    assert coerce("eventDateTime", text, assume_tz="Europe/Berlin") == wire
    assert check_wire(P["eventDateTime"], wire) is None


def test_dotted_dates_need_an_offset_like_other_local_times() -> None:
    with pytest.raises(ValueProblem, match=r"no UTC offset.*--assume-tz"):
        coerce("eventDateTime", "01.10.2025 09:30")
    with pytest.raises(ValueProblem, match="calendar"):
        coerce("eventDateTime", "31.02.2025", assume_tz="UTC")


@pytest.mark.parametrize("text", ["10/01/2025 09:30", "Oct 1 2025", "2025-10-01T9:30", "01.10.25"])
def test_an_unreadable_date_names_the_accepted_formats(text: str) -> None:
    with pytest.raises(ValueProblem) as caught:
        coerce("eventDateTime", text, assume_tz="UTC")
    reason = str(caught.value)
    assert "ISO 8601 (2024-05-01T09:30:00+02:00" in reason
    assert "day.month.year (01.10.2025 09:30:15, 01.10.2025 09:30, 01.10.2025)" in reason


def test_canonical_and_check_wire_never_raise_on_a_bad_calendar_date() -> None:
    assert canonical(P["eventDateTime"], "2024-02-30T09:30:00Z") == "2024-02-30T09:30:00Z"
    assert check_wire(P["eventDateTime"], "2024-02-30T09:30:00Z") is not None


# --- hypothesis: any text, every property: a value or a ValueProblem -----------------------------

_DIGITS_AND_SIGNS = [
    *"0123456789.:,+-PTDHMSZzT ",
    "\uff10",  # FULLWIDTH DIGIT ZERO
    "\uff1a",  # FULLWIDTH COLON
    "\u0662",  # ARABIC-INDIC DIGIT TWO
    "\u2212",  # MINUS SIGN
    "\u00b2",  # SUPERSCRIPT TWO
    "\x00",
]
_digit_heavy = st.text(st.sampled_from(_DIGITS_AND_SIGNS), max_size=40)
_huge_digits = st.builds(
    lambda head, digit, count, tail: head + digit * count + tail,
    st.sampled_from(["", "-", "+", "P", "PT", "-P", "PT1.", "1.", "2024-05-01T09:30:00."]),
    st.sampled_from("0917"),
    st.integers(4_000, 40_000),
    st.sampled_from(["", "D", "S", "H", "M", ".00:00:00", ":00:00:00", "Z", ".0", "DT1S"]),
)
_any_text = st.one_of(st.text(), _digit_heavy, _huge_digits)


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(list(P.values())), _any_text, st.sampled_from([None, "Europe/Berlin", "UTC"])
)
def test_any_text_gives_a_value_or_a_problem_never_another_exception(
    prop: Property, text: str, assume_tz: str | None
) -> None:
    try:
        value = coerce_text(prop, text, assume_tz=assume_tz)
    except ValueProblem as problem:
        assert str(problem)  # a reason to show
    else:
        # What coerce_text gives, Graph takes, and it reads back as itself.
        assert check_wire(prop, value) is None
        if value is not None:
            again = value if isinstance(value, str) else str(value)
            assert coerce_text(prop, again) == value
            assert canonical(prop, value) == canonical(prop, coerce_text(prop, again))
    # The wire side never raises either: Graph's judgement and the comparison form.
    assert check_wire(prop, text) is None or isinstance(check_wire(prop, text), str)
    canonical(prop, text)
