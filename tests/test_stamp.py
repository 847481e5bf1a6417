"""Export stamps (batch/stamp.py): the `_exported` column's text, read back and applied to rows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from batch.mapper import InputOptions, prepare
from batch.model import JSON, Invalid, Problem, Skipped, Update
from batch.report import neutralise, neutralise_cell
from batch.schema import PROPERTIES
from batch.stamp import (
    NOT_EDITED,
    STAMP_PROPERTIES,
    Stamper,
    find_stamp_column,
    parse_stamp,
    stamp_row,
    value_digest,
)

EVENT: dict[str, JSON] = {
    "id": "3F2504E0-4F89-11D3-9A0C-0305E82C3301",
    "deviceSerialNumber": "0024486700",
    "userPrincipalName": "adele@contoso.com",
    "enrollmentState": "enrolled",
    "deploymentDuration": "PT5M",
    "eventDateTime": "2024-05-01T07:30:00.1234567+02:00",
    "targetedAppCount": 3,
    "osVersion": None,
}
COLUMNS = tuple(EVENT)


def test_every_property_has_a_fixed_bit() -> None:
    """New properties are appended to STAMP_PROPERTIES; a bit never moves."""
    missing = [n for n in PROPERTIES if n != "id" and n not in STAMP_PROPERTIES]
    assert not missing, f"append {missing} to batch.stamp.STAMP_PROPERTIES (never reorder)"
    assert len(set(STAMP_PROPERTIES)) == len(STAMP_PROPERTIES)
    assert STAMP_PROPERTIES[:3] == ("deviceId", "eventDateTime", "deviceRegisteredDateTime")


def test_the_text_survives_spreadsheets() -> None:
    text = Stamper(COLUMNS)(EVENT)
    # Starts with a letter (never a formula, never neutralised), then only URL-safe characters.
    assert re.fullmatch(r"x1\.[A-Za-z0-9_-]+", text), text
    assert neutralise(text) == text == neutralise_cell(text)
    # 1 length byte + 4 mask bytes + 6 per digest (id and 7 properties), in base64: compact.
    assert len(text) == len("x1.") + -(-(1 + 4 + 6 * 8) * 4 // 3)


def test_a_stamp_reads_back_by_property_name() -> None:
    stamp = parse_stamp(Stamper(COLUMNS)(EVENT))
    # The column order of the export does not matter: digests belong to names.
    assert stamp == parse_stamp(Stamper(reversed(COLUMNS))(EVENT))
    assert sorted(stamp.digests) == sorted(n for n in COLUMNS if n != "id")
    assert stamp.of_event("3f2504e0-4f89-11d3-9a0c-0305e82c3301")  # ids: case ignored
    assert not stamp.of_event("another")
    for name, value in EVENT.items():
        if name != "id":
            assert stamp.holds(name, value), name
    # The same meaning in another spelling holds; another value does not.
    assert stamp.holds("enrollmentState", "ENROLLED")
    assert stamp.holds("deploymentDuration", "PT300S")
    assert stamp.holds("eventDateTime", "2024-05-01T05:30:00.1234567Z")
    assert stamp.holds("targetedAppCount", "3")
    assert stamp.holds("userPrincipalName", " adele@contoso.com ")
    assert not stamp.holds("eventDateTime", "2024-05-01T05:30:00.1234568Z")
    assert not stamp.holds("osVersion", "")
    assert not stamp.holds("managedDeviceName", None)  # not exported: not covered
    assert not stamp.covers("managedDeviceName")
    assert stamp.lost_zeros("deviceSerialNumber", "24486700") == "0024486700"
    assert stamp.lost_zeros("deviceSerialNumber", "24486701") is None
    assert stamp.lost_zeros("userPrincipalName", "1") is None


def test_digests_differ_by_property_and_value() -> None:
    assert value_digest("osVersion", "1") != value_digest("deviceId", "1")
    assert value_digest("osVersion", "1") != value_digest("osVersion", "2")
    assert value_digest("osVersion", None) != value_digest("osVersion", "")
    assert len(value_digest("osVersion", "1")) == 6


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("24486700", "not a stamp written by", id="not-a-stamp"),
        pytest.param("x1.", "damaged \\(too short\\)", id="empty"),
        pytest.param("x1.!!!!", "damaged \\(not base64url text\\)", id="not-base64"),
        pytest.param("x1.BAAAAAAAAAAAAAAA", "damaged \\(wrong length\\)", id="length"),
        pytest.param("x1.BQAAAAABAAAAAAAA", "written by a newer autopilot-batch", id="newer"),
    ],
)
def test_malformed_stamps(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_stamp(text)


def test_a_stamp_cut_short_by_a_spreadsheet_is_refused() -> None:
    text = Stamper(COLUMNS)(EVENT)
    with pytest.raises(ValueError, match="damaged"):
        parse_stamp(text[:-4])


def test_rows_keep_only_the_cells_edited_since_the_export() -> None:
    text = Stamper(COLUMNS)(EVENT)
    event_id = str(EVENT["id"])
    edited = Update(
        5, event_id, {"userPrincipalName": "b@contoso.com", "enrollmentState": "ENROLLED"}
    )
    applied = stamp_row(edited, text)
    assert isinstance(applied, Update)
    assert applied.body == {"userPrincipalName": "b@contoso.com"}
    assert applied.exported == parse_stamp(text)
    untouched = Update(5, event_id, {"enrollmentState": "enrolled", "deploymentDuration": "PT5M"})
    assert stamp_row(untouched, text) == Skipped(5, event_id, NOT_EDITED)
    # A row added after the export (no stamp) is sent as it is.
    assert stamp_row(edited, "") is edited
    assert stamp_row(edited, "   ") is edited


def test_a_bad_stamp_makes_the_row_invalid_naming_the_column() -> None:
    text = Stamper(COLUMNS)(EVENT)
    row = Update(5, "another-event", {"osVersion": "1"})
    moved = stamp_row(row, text, "_Exported")
    assert isinstance(moved, Invalid)
    assert moved.problems[0].column == "_Exported"
    assert "belongs to another event" in moved.message
    broken = stamp_row(Update(5, str(EVENT["id"]), {"osVersion": "1"}), "x1.zz")
    assert isinstance(broken, Invalid)
    assert broken.problems[0] == Problem(
        "_exported",
        "x1.zz",
        "damaged (too short); clear the cell to send the row without the export's checks",
    )
    # Problems already found are kept, the stamp's is added.
    earlier = Invalid(5, "e", (Problem("osVersion", "x", "bad"),))
    both = stamp_row(earlier, "nope")
    assert isinstance(both, Invalid) and len(both.problems) == 2


def test_the_stamp_column_is_found_in_any_case() -> None:
    assert find_stamp_column(["id", " _Exported "]) == " _Exported "
    assert find_stamp_column(["id", "_row", "_error"]) is None


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("=1+1", "'=1+1"),
        ("-PT5M", "'-PT5M"),
        ("+49 30", "'+49 30"),
        ("@admin", "'@admin"),
        ("'=already", "''=already"),  # the reader takes one ' off: the value comes back
        ("'plain", "'plain"),
        ("\tx", "\tx"),  # the reader would not undo it; not run by Excel from CSV input cells
        ("a=b", "a=b"),
        ("", ""),
    ],
)
def test_input_cells_are_neutralised_the_way_the_reader_undoes(text: str, written: str) -> None:
    assert neutralise_cell(text) == written


def test_a_cell_emptied_since_the_export_says_it_changes_nothing(tmp_path: Path) -> None:
    # An admin who empties an exported cell most likely meant to clear it; an empty cell still
    # leaves the value alone (CONTRACT), so the row says that instead of "not edited".
    columns = ("id", "deviceSerialNumber", "userPrincipalName", "enrollmentState", "osVersion")
    ids = [f"e{n}" for n in range(2, 6)]
    stamps = [Stamper(columns)({**EVENT, "id": event_id}) for event_id in ids]
    cells = [
        # upn emptied, nothing else edited: skipped, saying why
        "0024486700,,enrolled,",
        # upn and serial emptied, osVersion edited: sent, with a warning
        ",,enrolled,10.0",
        # osVersion was empty in the export too: plainly not edited
        "0024486700,adele@contoso.com,enrolled,",
        # every value cell empty
        ",,,",
    ]
    path = tmp_path / "export.csv"
    path.write_text(
        "id,deviceSerialNumber,userPrincipalName,enrollmentState,osVersion,_exported\n"
        + "".join(f"{i},{c},{s}\n" for i, c, s in zip(ids, cells, stamps, strict=True)),
        encoding="utf-8",
    )
    rows = [m for _, m in prepare(path, InputOptions()).rows()]
    note = "userPrincipalName emptied: an empty cell changes nothing; write <null> to clear it"
    assert rows[0] == Skipped(2, "e2", note, (note,))
    assert isinstance(rows[1], Update) and rows[1].body == {"osVersion": "10.0"}
    assert rows[1].warnings == (
        "deviceSerialNumber, userPrincipalName emptied: an empty cell changes nothing; "
        "write <null> to clear them",
    )
    assert rows[2] == Skipped(4, "e4", NOT_EDITED)
    assert isinstance(rows[3], Skipped)
    assert rows[3].reason.startswith("deviceSerialNumber, userPrincipalName, enrollmentState ")
    # The token named is the one in use.
    [first, *_] = [m for _, m in prepare(path, InputOptions(null_token="NULL")).rows()]
    assert isinstance(first, Skipped) and first.reason.endswith("write NULL to clear it")
