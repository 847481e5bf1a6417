"""The mapper: headers to properties, rows to Update / Invalid / Skipped, file-level checks."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import time
import tracemalloc
from array import array
from pathlib import Path

import openpyxl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batch.errors import ConfigError, InputFileError, UsageError
from batch.mapper import (
    InputOptions,
    Prepared,
    _duplicate_reason,
    _find_duplicates,
    prepare,
    resolve_header,
    suggest_property,
    template_columns,
)
from batch.model import Invalid, Problem, Skipped, Update

DOCS_EXAMPLE = Path(__file__).resolve().parent / "fixtures" / "docs-example-request.json"
SAMPLES = Path(__file__).resolve().parent.parent / "sample_data"
ID1 = "3e455cab-5cab-3e45-ab5c-453eab5c453e"
ID2 = "0f9c7a52-1b7e-4c1e-9d52-6f1b2a3c4d5e"


def write_csv(tmp_path: Path, header: list[str], *rows: list[str], name: str = "in.csv") -> Path:
    path = tmp_path / name
    with path.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def mapped(path: Path, **options: object) -> list[Update | Invalid | Skipped]:
    return [m for _, m in prepare(path, InputOptions(**options)).rows()]  # type: ignore[arg-type]


def one(path: Path, **options: object) -> Update | Invalid | Skipped:
    (result,) = mapped(path, **options)
    return result


def docs_body() -> dict[str, object]:
    body = json.loads(DOCS_EXAMPLE.read_text())
    body.pop("@odata.type")
    return body


# --- the docs example --------------------------------------------------------------------------


def test_docs_example_as_one_csv_row_gives_exactly_that_body(tmp_path: Path) -> None:
    body = docs_body()
    path = write_csv(tmp_path, ["id", *body], [ID1, *(str(v) for v in body.values())])
    prepared = prepare(path, InputOptions())
    (result,) = [m for _, m in prepared.rows()]
    assert isinstance(result, Update)
    assert result.event_id == ID1
    assert result.body == body
    assert json.dumps(result.body) == json.dumps(body)  # same order too
    legacy = {"devicePreparationDuration", "targetedAppCount", "targetedPolicyCount"}
    # Three legacy columns, and the docs' placeholder UPN "User Principal Name value".
    assert len(result.warnings) == 4
    assert all(any(name in w for w in result.warnings) for name in legacy)
    assert any("does not look like a user principal name" in w for w in result.warnings)
    assert sum("legacy property" in w for w in prepared.warnings) == 3


def test_docs_example_as_one_xlsx_row_gives_exactly_that_body(tmp_path: Path) -> None:
    body = docs_body()
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["id", *body])
    # Numbers as real numeric cells, the way Excel stores them; everything else as text.
    sheet.append([ID1, *body.values()])
    path = tmp_path / "docs.xlsx"
    book.save(path)
    result = one(path)
    assert isinstance(result, Update)
    assert result.body == body


# --- headers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "prop"),
    [
        ("deviceSerialNumber", "deviceSerialNumber"),
        ("Device Serial Number", "deviceSerialNumber"),
        ("device_serial_number", "deviceSerialNumber"),
        ("DEVICE-SERIAL-NUMBER", "deviceSerialNumber"),
        ("eventId", "id"),
        ("Event ID", "id"),
        ("deviceManagementAutopilotEventId", "id"),
        ("ID", "id"),
        ("Serial", None),
    ],
)
def test_resolve_header(header: str, prop: str | None) -> None:
    assert resolve_header(header) == prop


@pytest.mark.parametrize(
    ("header", "hint"),
    [
        ("Serial", "deviceSerialNumber"),
        ("Serial Number", "deviceSerialNumber"),
        ("UPN", "userPrincipalName"),
        ("devicSerialNumber", "deviceSerialNumber"),
        ("Enrolment State", "enrollmentState"),
        ("hostname", "managedDeviceName"),
        ("xyzzy", None),
    ],
)
def test_suggest_property(header: str, hint: str | None) -> None:
    assert suggest_property(header) == hint


def test_headers_map_case_and_punctuation_insensitively(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        ["Event ID", "Device Serial Number", "enrollment_state"],
        [ID1, "0042", "ENROLLED"],
    )
    prepared = prepare(path, InputOptions())
    assert prepared.columns == {
        "Event ID": "id",
        "Device Serial Number": "deviceSerialNumber",
        "enrollment_state": "enrollmentState",
    }
    assert prepared.id_column == "Event ID"
    assert [m for _, m in prepared.rows()] == [
        Update(2, ID1, {"deviceSerialNumber": "0042", "enrollmentState": "enrolled"})
    ]


def test_underscore_columns_are_ignored(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ["id", "osVersion", "_row", "_error"], [ID1, "10.0", "2", "boom"])
    prepared = prepare(path, InputOptions())
    assert prepared.columns == {"id": "id", "osVersion": "osVersion"}
    assert prepared.warnings == []
    assert [m for _, m in prepared.rows()] == [Update(2, ID1, {"osVersion": "10.0"})]


def test_unknown_column_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ["id", "Serial", "Colour"], [ID1, "X", "red"])
    with pytest.raises(InputFileError) as caught:
        prepare(path, InputOptions())
    message = str(caught.value)
    assert "unknown columns 'Serial' (did you mean deviceSerialNumber?), 'Colour'" in message
    assert "--ignore-unknown-columns" in message
    prepared = prepare(path, InputOptions(ignore_unknown_columns=True))
    assert prepared.warnings == [
        "column 'Serial' is not a property of the event: ignored",
        "column 'Colour' is not a property of the event: ignored",
    ]
    assert [m for _, m in prepared.rows()] == [Skipped(2, ID1)]


def test_two_columns_for_one_property_are_refused(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ["id", "osVersion", "OS Version"], [ID1, "a", "b"])
    with pytest.raises(InputFileError, match="'osVersion' and 'OS Version' both mean osVersion"):
        prepare(path, InputOptions())


def test_no_id_column_is_refused(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ["deviceSerialNumber"], ["X"])
    with pytest.raises(InputFileError, match="no id column"):
        prepare(path, InputOptions())


def test_header_only_file_is_a_file_error(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no data rows"):
        prepare(write_csv(tmp_path, ["id", "osVersion"]), InputOptions())


def test_blank_header_column_is_warned_about(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ["id", "", "osVersion"], [ID1, "junk", "10"])
    prepared = prepare(path, InputOptions())
    assert prepared.warnings == ["column B has no header: ignored"]
    assert [m for _, m in prepared.rows()] == [Update(2, ID1, {"osVersion": "10"})]


# --- --map -------------------------------------------------------------------------------------


def write_map(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "columns.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_map_file_renames_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ["Event", "Serial", "Who"], [ID1, "0042", "a@contoso.com"])
    map_file = write_map(
        tmp_path,
        '[columns]\n"Event" = "id"\n"serial" = "Device Serial Number"\n'
        '"Who" = "userPrincipalName"\n"Gone" = "osVersion"\n',
    )
    prepared = prepare(path, InputOptions(map_file=map_file))
    assert prepared.columns == {
        "Event": "id",
        "Serial": "deviceSerialNumber",
        "Who": "userPrincipalName",
    }
    assert prepared.warnings == [f"{map_file}: [columns] 'Gone' matches no column"]
    assert [m for _, m in prepared.rows()] == [
        Update(2, ID1, {"deviceSerialNumber": "0042", "userPrincipalName": "a@contoso.com"})
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("[columns\n", "not valid TOML", id="bad-toml"),
        pytest.param('"Serial" = "deviceSerialNumber"\n', "needs a .columns. table", id="no-table"),
        pytest.param('[columns]\n"Serial" = 3\n', "must map to a property name", id="not-str"),
        pytest.param(
            '[columns]\n"Serial" = "serialNumber"\n',
            "maps to 'serialNumber', which is not a property .did you mean deviceSerialNumber",
            id="unknown-target",
        ),
        pytest.param("[columns]\n[other]\n", "unknown table or key 'other'", id="extra-table"),
    ],
)
def test_bad_map_files_are_config_errors_naming_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write_csv(tmp_path, ["id", "Serial"], [ID1, "X"])
    map_file = write_map(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as caught:
        prepare(path, InputOptions(map_file=map_file))
    assert str(caught.value).startswith(str(map_file))
    assert caught.value.exit_code == 2


def test_missing_map_file(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ["id"], [ID1])
    with pytest.raises(ConfigError, match="map file not found"):
        prepare(path, InputOptions(map_file=tmp_path / "nope.toml"))


# --- values ------------------------------------------------------------------------------------


def test_empty_cells_leave_properties_out(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        ["id", "osVersion", "deviceSerialNumber", "enrollmentState"],
        [ID1, "", "   ", "failed"],
    )
    assert one(path) == Update(2, ID1, {"enrollmentState": "failed"})


def test_null_token(tmp_path: Path) -> None:
    header = ["id", "deviceSerialNumber", "userPrincipalName", "enrollmentState"]
    path = write_csv(tmp_path, header, [ID1, "<null>", " <null> ", ""], [ID2, "NULL", "", "<null>"])
    first, second = mapped(path)
    assert first == Update(2, ID1, {"deviceSerialNumber": None, "userPrincipalName": None})
    assert isinstance(second, Invalid)
    assert second.problems == (
        Problem(
            "enrollmentState", "<null>", "enrollmentState is not nullable, so <null> is not allowed"
        ),
    )
    first, second = mapped(path, null_token="NULL")
    # Surrounding spaces are trimmed from every value, this one too.
    assert isinstance(first, Update)
    assert first.body == {"deviceSerialNumber": "<null>", "userPrincipalName": "<null>"}
    # With another token, "<null>" is just text: not an enrollmentState value.
    assert isinstance(second, Invalid)
    assert [(p.column, p.value) for p in second.problems] == [("enrollmentState", "<null>")]


def test_the_null_token_matches_in_any_case(tmp_path: Path) -> None:
    header = ["id", "deviceSerialNumber", "userPrincipalName", "enrollmentState"]
    path = write_csv(
        tmp_path, header, [ID1, "<NULL>", "<Null>", ""], [ID2, "", "", "<NULL>"], ["<NULL>", "x"]
    )
    first, second, third = mapped(path)
    assert first == Update(2, ID1, {"deviceSerialNumber": None, "userPrincipalName": None})
    # Not nullable in any case; the message shows what the cell holds.
    assert isinstance(second, Invalid)
    assert second.problems == (
        Problem(
            "enrollmentState", "<NULL>", "enrollmentState is not nullable, so <NULL> is not allowed"
        ),
    )
    # An id cannot be the null token in any case either.
    assert isinstance(third, Invalid)
    assert [p.reason for p in third.problems] == ["the id cannot be <null>"]
    # Another token matches in any case too; `<NULL>` is then plain text.
    other = mapped(path, null_token="nil")[0]
    assert isinstance(other, Update)
    assert other.body == {"deviceSerialNumber": "<NULL>", "userPrincipalName": "<Null>"}
    assert mapped(write_csv(tmp_path, header, [ID1, "NIL", "", ""]), null_token="nil") == [
        Update(2, ID1, {"deviceSerialNumber": None})
    ]


def test_every_problem_of_a_row_is_reported(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        ["id", "enrollmentState", "eventDateTime", "deploymentDuration", "osVersion"],
        [ID1, "done", "2025-10-01T25:00:00Z", "-", "ok"],
    )
    result = one(path)
    assert isinstance(result, Invalid)
    assert [p.column for p in result.problems] == [
        "enrollmentState",
        "eventDateTime",
        "deploymentDuration",
    ]
    assert [p.value for p in result.problems] == ["done", "2025-10-01T25:00:00Z", "-"]
    assert result.message.count("; ") == 2


def test_assume_tz(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ["id", "eventDateTime"], [ID1, "2025-07-01 12:00"])
    invalid = one(path)
    assert isinstance(invalid, Invalid)
    assert "no UTC offset" in invalid.problems[0].reason
    assert one(path, assume_tz="America/New_York") == Update(
        2, ID1, {"eventDateTime": "2025-07-01T12:00:00-04:00"}
    )


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        pytest.param("", "missing id", id="empty"),
        pytest.param("<null>", "cannot be <null>", id="null"),
        pytest.param("a/b", "not a valid event id", id="slash"),
        pytest.param("a b", "not a valid event id", id="space"),
        pytest.param("a?b", "not a valid event id", id="query"),
    ],
)
def test_bad_ids(tmp_path: Path, key: str, reason: str) -> None:
    path = write_csv(tmp_path, ["id", "osVersion"], [key, "10"])
    result = one(path)
    assert isinstance(result, Invalid)
    assert [p.column for p in result.problems] == ["id"]
    assert reason in result.problems[0].reason


def test_ids_are_trimmed(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ["id", "osVersion"], [f"  {ID1} ", "10"])
    assert one(path) == Update(2, ID1, {"osVersion": "10"})


def test_only_an_id_is_skipped(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ["id", "osVersion", "_note"], [ID1, "", "hello"], [ID2])
    assert mapped(path) == [Skipped(2, ID1), Skipped(3, ID2)]


def test_duplicate_ids_make_every_copy_invalid(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        ["id", "osVersion"],
        [ID1, "1"],
        [ID2, "2"],
        [f" {ID1.upper()} ", "3"],
        ["", "4"],
        ["", "5"],
        [ID1, ""],
    )
    results = mapped(path)
    assert isinstance(results[1], Update)
    by_row = {r.number: r for r in results}
    for number, others in ((2, "rows 4, 7"), (4, "rows 2, 7"), (7, "rows 2, 4")):
        result = by_row[number]
        assert isinstance(result, Invalid)
        assert result.problems[-1].reason == f"id also on {others} (duplicate ids are never sent)"
    # Rows without an id are invalid for that, not duplicates of each other.
    for number in (5, 6):
        result = by_row[number]
        assert isinstance(result, Invalid)
        assert [p.reason for p in result.problems] == ["missing id (every row needs the event id)"]


def test_many_duplicates_are_summarised(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ["id", "osVersion"], *([ID1, "x"] for _ in range(6)))
    first = mapped(path)[0]
    assert isinstance(first, Invalid)
    assert (
        first.problems[0].reason
        == "id also on rows 3, 4, 5 and 2 more (duplicate ids are never sent)"
    )


def test_duplicates_scale_to_many_rows(tmp_path: Path) -> None:
    rows = [[f"{n:08d}-0000-4000-8000-000000000000", "x"] for n in range(30_000)]
    rows.append(rows[12_345])
    path = write_csv(tmp_path, ["id", "osVersion"], *rows)
    prepared = prepare(path, InputOptions())
    assert prepared.total == 30_001
    invalid = [m.number for _, m in prepared.rows() if isinstance(m, Invalid)]
    assert invalid == [12_347, 30_002]


def test_prepared_facts(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ["id", "osVersion"], [ID1, "1"], ["", ""], [ID2, "2"])
    prepared = prepare(path, InputOptions())
    assert isinstance(prepared, Prepared)
    assert prepared.total == 2  # the blank row is absent
    assert prepared.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert prepared.source.headers == ["id", "osVersion"]
    assert list(prepared.rows()) == list(prepared.rows())  # re-iterable
    raw, _ = next(prepared.rows())
    assert prepared.map_row(raw) == Update(2, ID1, {"osVersion": "1"})


def test_resolver_hook_turns_the_key_into_an_event_id(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ["id", "osVersion"], ["SERIAL-1", "1"], ["SERIAL-2", "2"])

    def resolve(key: str) -> str | Problem:
        if key == "SERIAL-1":
            return ID1
        return Problem("id", key, "no event with this serial number")

    results = [m for _, m in prepare(path, InputOptions(), resolve=resolve).rows()]
    assert results[0] == Update(2, ID1, {"osVersion": "1"})
    assert results[1] == Invalid(
        3, "SERIAL-2", (Problem("id", "SERIAL-2", "no event with this serial number"),)
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"assume_tz": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'", id="tz"),
        pytest.param({"null_token": ""}, "--null-token", id="empty-null"),
        pytest.param({"null_token": " x "}, "--null-token", id="spaced-null"),
    ],
)
def test_bad_options_are_usage_errors(
    tmp_path: Path, options: dict[str, str], message: str
) -> None:
    path = write_csv(tmp_path, ["id"], [ID1])
    with pytest.raises(UsageError, match=message):
        prepare(path, InputOptions(**options))  # type: ignore[arg-type]


def test_template_columns() -> None:
    columns = template_columns()
    assert columns[0] == "id"
    assert "targetedAppCount" not in columns and "userId" in columns
    assert len(template_columns(include_legacy=True)) == len(columns) + 3


# --- the bundled samples -----------------------------------------------------------------------


def _make_samples() -> object:
    spec = importlib.util.spec_from_file_location("make_samples", SAMPLES / "make_samples.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sample_events_are_all_valid_and_the_same_in_csv_and_xlsx() -> None:
    from_csv = mapped(SAMPLES / "events.csv")
    from_xlsx = mapped(SAMPLES / "events.xlsx")
    assert len(from_csv) == 300
    assert all(isinstance(m, Update) for m in from_csv)
    assert from_csv == from_xlsx
    ids = [m.event_id for m in from_csv]
    assert ids == _make_samples().event_ids()  # type: ignore[attr-defined]
    bodies = [m.body for m in from_csv if isinstance(m, Update)]
    assert any(b.get("userPrincipalName", "") is None for b in bodies)
    assert any(str(b.get("deviceSerialNumber", "")).startswith("0") for b in bodies)


def test_bad_rows_sample_fails_exactly_as_its_notes_say() -> None:
    prepared = prepare(SAMPLES / "bad_rows.csv", InputOptions())
    notes = {raw.number: raw.cells["_note"] for raw in prepared.source}
    kinds = set()
    for raw, result in prepared.rows():
        note = notes[raw.number]
        if note.startswith("valid"):
            assert isinstance(result, Update)
        elif note.startswith("skipped"):
            assert isinstance(result, Skipped)
        else:
            assert isinstance(result, Invalid), note
            column = note.split(":", 1)[0]
            if column.startswith("three problems"):
                assert len(result.problems) == 3
            else:
                assert column in {p.column for p in result.problems}, note
                kinds.add(result.problems[0].reason.split(" (")[0][:25])
    assert len(kinds) >= 12


# --- hostile ids and huge duplicate groups (issue 19) -------------------------------------------


@pytest.mark.parametrize(
    ("key", "named"),
    [
        pytest.param(".", "'.' is a path step", id="dot"),
        pytest.param("..", "'..' is a path step", id="dot-dot"),
        pytest.param("a/b", "contains '/'", id="slash"),
        pytest.param("a\\b", "contains '\\\\'", id="backslash"),
        pytest.param("a?b", "contains '?'", id="query"),
        pytest.param("a#b", "contains '#'", id="fragment"),
        pytest.param("a%2Fb", "contains '%'", id="encoded-slash"),
        pytest.param(f"{ID1}\u200b", "U+200B ZERO WIDTH SPACE", id="zwsp"),
        pytest.param(f"\u200c{ID1}", "U+200C ZERO WIDTH NON-JOINER", id="zwnj"),
        pytest.param(f"{ID1[:8]}\u200d{ID1[8:]}", "U+200D ZERO WIDTH JOINER", id="zwj"),
        pytest.param(f"{ID1}\u2060", "U+2060 WORD JOINER", id="word-joiner"),
        pytest.param(f"\ufeff{ID1}", "U+FEFF ZERO WIDTH NO-BREAK SPACE", id="bom"),
        pytest.param(f"\u200e{ID1}", "U+200E LEFT-TO-RIGHT MARK", id="lrm"),
        pytest.param(f"{ID1}\u200f", "U+200F RIGHT-TO-LEFT MARK", id="rlm"),
        pytest.param(f"\u202a{ID1}", "U+202A LEFT-TO-RIGHT EMBEDDING", id="lre"),
        pytest.param(f"\u202e{ID1}", "U+202E RIGHT-TO-LEFT OVERRIDE", id="rlo"),
        pytest.param(f"\u2066{ID1}", "U+2066 LEFT-TO-RIGHT ISOLATE", id="lri"),
        pytest.param(f"{ID1}\u2069", "U+2069 POP DIRECTIONAL ISOLATE", id="pdi"),
        pytest.param(f"{ID1[:8]}\u00a0{ID1[8:]}", "U+00A0 NO-BREAK SPACE", id="nbsp"),
    ],
)
def test_an_id_must_be_a_plain_key_segment(tmp_path: Path, key: str, named: str) -> None:
    path = write_csv(tmp_path, ["id", "osVersion"], [key, "10"], [key, "11"])
    for result in mapped(path):
        assert isinstance(result, Invalid)
        # Only that reason: an id that is wrong anyway is not also a "duplicate".
        (problem,) = result.problems
        assert problem.column == "id"
        assert problem.reason.startswith("not a valid event id")
        assert named in problem.reason
        assert "an id must be one plain URL path segment" in problem.reason


def test_ids_with_ordinary_unicode_letters_are_left_to_the_tenant(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ["id", "osVersion"], ["événement-1", "10"])
    assert one(path) == Update(2, "événement-1", {"osVersion": "10"})


def test_a_group_of_100000_duplicate_ids_takes_flat_memory() -> None:
    count = 100_000
    digests = bytearray(hashlib.blake2b(b"same id", digest_size=16).digest() * count)
    numbers = array("q", range(2, count + 2))
    tracemalloc.start()
    started = time.perf_counter()
    try:
        found = _find_duplicates(digests, numbers)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Listing every other row per row needed ~80 GB here; the index needs ~16 bytes per row.
    assert peak < 32 * 2**20, f"peak {peak:,} bytes"
    assert elapsed < 2.0, f"{elapsed:.2f} s"
    assert len(found) == count
    expected = {
        2: "id also on rows 3, 4, 5 and 99,996 more (duplicate ids are never sent)",
        4: "id also on rows 2, 3, 5 and 99,996 more (duplicate ids are never sent)",
        50_000: "id also on rows 2, 3, 4 and 99,996 more (duplicate ids are never sent)",
        count + 1: "id also on rows 2, 3, 4 and 99,996 more (duplicate ids are never sent)",
    }
    for number, reason in expected.items():
        others = found.get(number, ())
        assert len(others) == 3
        assert _duplicate_reason(others) == reason
    assert found.get(1) is None and found.get(count + 2, ()) == ()
    assert "deviceSerialNumber also on rows 3, 4, 5 and 99,996 more" in _duplicate_reason(
        found[2], "deviceSerialNumber"
    )


def test_every_row_of_a_100000_row_group_is_invalid_through_prepare(tmp_path: Path) -> None:
    path = tmp_path / "same.csv"
    path.write_text("id,osVersion\n" + f"{ID1},10\n" * 100_000, encoding="utf-8")
    prepared = prepare(path, InputOptions())
    results = [m for _, m in prepared.rows()]
    assert len(results) == 100_000
    assert all(isinstance(m, Invalid) for m in results)
    last = results[-1]
    assert isinstance(last, Invalid)
    assert last.problems[-1].reason == (
        "id also on rows 2, 3, 4 and 99,996 more (duplicate ids are never sent)"
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 6), max_size=40))
def test_duplicate_groups_match_a_plain_count(ids: list[int]) -> None:
    # Row numbers with gaps (blank rows are not in the arrays), in file order.
    numbers = array("q", [2 + 3 * i for i in range(len(ids))])
    digests = bytearray(
        b"".join(hashlib.blake2b(str(i).encode(), digest_size=16).digest() for i in ids)
    )
    found = _find_duplicates(digests, numbers)
    for number, key in zip(numbers, ids, strict=True):
        others = [n for n, k in zip(numbers, ids, strict=True) if k == key and n != number]
        got = found.get(number)
        if not others:
            assert got is None
            continue
        assert got is not None
        assert list(got) == others[:3]
        more = f" and {len(others) - 3:,} more" if len(others) > 3 else ""
        rows = "row" if len(others) == 1 else "rows"
        assert _duplicate_reason(got) == (
            f"id also on {rows} {', '.join(map(str, others[:3]))}{more} "
            "(duplicate ids are never sent)"
        )
    assert sorted(found) == sorted(n for n, k in zip(numbers, ids, strict=True) if ids.count(k) > 1)


# --- arbitrary rows (issue 19): a value or a problem, never an exception --------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from batch.model import CellNote, RawRow  # noqa: E402


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cells=st.dictionaries(
        st.sampled_from(
            [
                "id",
                "deviceSerialNumber",
                "deploymentDuration",
                "eventDateTime",
                "enrollmentState",
                "targetedAppCount",
                "userPrincipalName",
            ]
        ),
        st.one_of(st.text(max_size=60), st.from_regex(r"[0-9.,:E+\-PTDHMS ]{0,40}")),
    ),
    notes=st.dictionaries(
        st.sampled_from(["id", "deviceSerialNumber", "targetedAppCount"]),
        st.builds(
            CellNote,
            st.sampled_from(["number", "formula", "error", "other"]),
            st.text(max_size=20),
            st.sampled_from(["general", "digits", "scientific", "other", "#N/A", "=A1"]),
        ),
    ),
    hidden=st.booleans(),
)
def test_any_row_maps_to_a_value_or_problems(
    tmp_path_factory: pytest.TempPathFactory,
    cells: dict[str, str],
    notes: dict[str, CellNote],
    hidden: bool,
) -> None:
    folder = tmp_path_factory.mktemp("rows")
    header = [
        "id",
        "deviceSerialNumber",
        "deploymentDuration",
        "eventDateTime",
        "enrollmentState",
        "targetedAppCount",
        "userPrincipalName",
    ]
    path = write_csv(folder, header, [ID1, *([""] * (len(header) - 1))])
    prepared = prepare(path, InputOptions(assume_tz="UTC", skip_hidden_rows=hidden))
    row = RawRow(2, {h: cells.get(h, "") for h in header}, notes or None, hidden)
    result = prepared.map_row(row)
    assert isinstance(result, Update | Invalid | Skipped)
    if isinstance(result, Update):
        assert result.body  # an update always changes something
