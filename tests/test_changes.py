"""Change safety piece by piece: equality rules, verdicts, diffs, reads, revert plans, engine."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from batch.auth import StaticTokenProvider
from batch.changes import (
    BeforeImages,
    Change,
    Conflict,
    ListWalk,
    Restore,
    conflicts_from_json,
    conflicts_to_json,
    current_values,
    describe_conflicts,
    excel_damage,
    judge,
    lost_zeros,
    read_request,
    render_diff,
    resumed_verdict,
    same_value,
    scientific_form,
    use_list_walk,
)
from batch.emulator import EmulatorConfig, EventStore
from batch.emulator.app import build_app
from batch.emulator.state import EmulatorState
from batch.engine import RunOptions, execute
from batch.errors import UsageError
from batch.graph import GraphClient
from batch.ledger import Ledger
from batch.limiter import Limiter
from batch.model import JSON, Invalid, Outcome, Rate, RowResult, Skipped, Update
from batch.revert import RevertPlan, revert_out_dir
from batch.schema import PROPERTIES, coerce_text
from batch.stamp import Stamper, parse_stamp
from batch.testing import FakeClock
from tests.e2e import read_csv, write_csv

TOKEN = "test-token"


def cell(name: str, text: str) -> JSON:
    """What the mapper sends for a cell typed as `text`."""
    return coerce_text(PROPERTIES[name], text)


# --- the equality rules (each one on its own) ---------------------------------------------------


@pytest.mark.parametrize(
    ("name", "current", "given"),
    [
        pytest.param(
            "enrollmentState", "enrolled", cell("enrollmentState", "ENROLLED"), id="enum-case"
        ),
        pytest.param("deploymentState", "successOnRetry", "SUCCESSONRETRY", id="enum-raw-case"),
        pytest.param(
            "deploymentDuration", "PT5M", cell("deploymentDuration", "00:05:00"), id="timespan"
        ),
        pytest.param(
            "deploymentDuration",
            "PT1H2M3.5S",
            cell("deploymentDuration", "01:02:03.5000000"),
            id="timespan-ticks",
        ),
        pytest.param("deviceSetupDuration", "PT300S", "PT5M", id="iso-spellings"),
        pytest.param(
            "accountSetupDuration",
            "P1DT0S",
            cell("accountSetupDuration", "1.00:00:00"),
            id="timespan-days",
        ),
        pytest.param(
            "eventDateTime",
            "2024-05-01T07:30:00Z",
            cell("eventDateTime", "2024-05-01T09:30:00+02:00"),
            id="offset",
        ),
        pytest.param(
            "eventDateTime",
            "2024-05-01T07:30:00.0000000Z",
            "2024-05-01T07:30:00Z",
            id="zero-fraction",
        ),
        pytest.param(
            "deploymentEndDateTime",
            "2024-04-30T23:30:00.1234567-08:00",
            "2024-05-01T07:30:00.1234567Z",
            id="offset-ticks",
        ),
        pytest.param("targetedAppCount", 3, cell("targetedAppCount", "3.0"), id="int32"),
        pytest.param("userPrincipalName", "a@contoso.com", "a@contoso.com", id="string"),
        pytest.param("managedDeviceName", None, None, id="null"),
    ],
)
def test_equal_by_wire_meaning(name: str, current: JSON, given: JSON) -> None:
    assert same_value(name, current, given)
    update = Update(2, "e1", {name: given})
    assert judge(update, {name: current}, only_changed=True).action == "unchanged"


@pytest.mark.parametrize(
    ("name", "current", "given"),
    [
        pytest.param("userPrincipalName", "A@contoso.com", "a@contoso.com", id="string-case"),
        pytest.param("deviceSerialNumber", "0012345", "12345", id="leading-zeros"),
        pytest.param(
            "eventDateTime", "2024-05-01T07:30:00Z", "2024-05-01T07:30:00+02:00", id="instant"
        ),
        pytest.param(
            "eventDateTime",
            "2024-05-01T07:30:00.1234567Z",
            "2024-05-01T07:30:00.1234568Z",
            id="tick",
        ),
        pytest.param("deploymentDuration", "PT5M", "-PT5M", id="sign"),
        pytest.param("enrollmentState", "enrolled", "failed", id="enum"),
        pytest.param("managedDeviceName", None, "PC-1", id="null-vs-text"),
        pytest.param("managedDeviceName", "", None, id="empty-vs-null"),
        pytest.param("targetedAppCount", 3, 4, id="int32"),
    ],
)
def test_different_values_are_changes(name: str, current: JSON, given: JSON) -> None:
    assert not same_value(name, current, given)
    # Different values; stripping leading zeros is refused by default (test_excel_damage_*).
    verdict = judge(
        Update(2, "e1", {name: given}), {name: current}, only_changed=True, accept_lost_zeros=True
    )
    assert verdict.action == "write"
    assert verdict.body == {name: given}
    assert verdict.before == {name: current}


# --- verdicts -------------------------------------------------------------------------------------


CURRENT: dict[str, JSON] = {
    "id": "e1",
    "enrollmentState": "enrolled",
    "deploymentDuration": "PT5M",
    "userPrincipalName": "a@contoso.com",
}


def test_only_changed_sends_only_what_differs() -> None:
    update = Update(
        7, "e1", {"enrollmentState": "enrolled", "deploymentDuration": "PT6M", "osVersion": "10"}
    )
    verdict = judge(update, CURRENT, only_changed=True)
    assert verdict.action == "write"
    assert verdict.body == {"deploymentDuration": "PT6M", "osVersion": "10"}
    # osVersion was not returned: it cannot be shown equal, and has no before value.
    assert verdict.before == {"deploymentDuration": "PT5M"}
    assert verdict.changed_fields == ("deploymentDuration", "osVersion")
    assert verdict.changes[1] == Change("osVersion", None, "10", present=False)


def test_without_only_changed_everything_is_sent_but_changes_are_exact() -> None:
    update = Update(7, "e1", {"enrollmentState": "enrolled", "deploymentDuration": "PT6M"})
    verdict = judge(update, CURRENT, only_changed=False)
    assert verdict.action == "write"
    assert verdict.body == update.body
    assert verdict.before == {"enrollmentState": "enrolled", "deploymentDuration": "PT5M"}
    assert verdict.changed_fields == ("deploymentDuration",)
    # Nothing differs and --only-changed is off: the caller asked for the write.
    same = judge(Update(7, "e1", {"enrollmentState": "ENROLLED"}), CURRENT, only_changed=False)
    assert (same.action, same.changed_fields) == ("write", ())


def test_restore_conflicts_unchanged_and_force() -> None:
    # The run wrote deploymentDuration PT6M over PT5M; the revert puts PT5M back.
    restore = Restore(
        3, "e1", {"deploymentDuration": "PT5M"}, expected={"deploymentDuration": "PT6M"}
    )
    holds_written = {"deploymentDuration": "PT360S"}  # PT6M in another spelling
    verdict = judge(restore, holds_written, only_changed=True)
    assert (verdict.action, verdict.body, verdict.before) == (
        "write",
        {"deploymentDuration": "PT5M"},
        {"deploymentDuration": "PT360S"},
    )
    assert judge(restore, {"deploymentDuration": "PT5M"}, only_changed=True).action == "unchanged"
    someone_else = {"deploymentDuration": "PT9M"}
    conflict = judge(restore, someone_else, only_changed=True)
    assert conflict.action == "conflict"
    assert conflict.conflicts == (Conflict("deploymentDuration", "PT6M", "PT9M", wanted="PT5M"),)
    forced = judge(restore, someone_else, only_changed=True, force=True)
    assert (forced.action, forced.body) == ("write", {"deploymentDuration": "PT5M"})
    unknown = Restore(3, "e1", {"deploymentDuration": "PT5M"})
    assert judge(unknown, holds_written, only_changed=True).conflicts == (
        Conflict("deploymentDuration", None, "PT360S", known=False, wanted="PT5M"),
    )


def test_conflict_and_diff_text() -> None:
    text = describe_conflicts(
        [
            Conflict("enrollmentState", "enrolled", "failed", wanted="notContacted"),
            Conflict("osVersion", None, "", False, wanted=None),
        ]
    )
    assert text == (
        "changed since the run, not restored: enrollmentState is failed (the run wrote "
        'enrolled, the revert would write notContacted); osVersion is "" (what the run wrote '
        "is not recorded; the revert would write null) (--force overwrites)"
    )
    exported = describe_conflicts(
        [Conflict("userPrincipalName", None, "b@x.com", False, "a@x.com", since="export")]
    )
    assert exported == (
        "changed in the tenant since the export, not written: userPrincipalName is b@x.com in "
        "the tenant, a@x.com in the file (--force writes the file's values)"
    )
    diff = render_diff(
        9,
        "e9",
        [
            Change("enrollmentState", "enrolled", "failed"),
            Change("managedDeviceName", None, "PC-1"),
            Change("osVersion", None, " 10", present=False),
        ],
    )
    assert diff.splitlines() == [
        "row 9 (e9): 3 changes",
        "  enrollmentState    enrolled → failed",
        "  managedDeviceName  null → PC-1",
        '  osVersion          (not returned) → " 10"',
    ]


# --- Excel's damage (issue 12, item 2) ----------------------------------------------------------

SERIAL_NOW = {"deviceSerialNumber": "0024486700", "managedDeviceName": "936382000000"}


@pytest.mark.parametrize(
    ("name", "given", "message"),
    [
        pytest.param(
            "deviceSerialNumber",
            "24486700",
            "deviceSerialNumber: looks like Excel dropped the leading zeros of 0024486700 "
            "(file has 24486700); --accept-lost-zeros sends it anyway",
            id="lost-zeros",
        ),
        pytest.param(
            "deviceSerialNumber",
            "024486700",
            "deviceSerialNumber: looks like Excel dropped the leading zeros of 0024486700 "
            "(file has 024486700); --accept-lost-zeros sends it anyway",
            id="some-zeros",
        ),
        pytest.param(
            "managedDeviceName",
            "9.36382E+11",
            "managedDeviceName: looks like Excel turned 936382000000 into scientific notation "
            "(file has 9.36382E+11); --accept-lost-zeros sends it anyway",
            id="scientific",
        ),
        pytest.param(
            "managedDeviceName",
            "9,36E+11",
            "managedDeviceName: looks like Excel turned 936382000000 into scientific notation "
            "(file has 9,36E+11); --accept-lost-zeros sends it anyway",
            id="scientific-rounded-decimal-comma",
        ),
    ],
)
@pytest.mark.parametrize("only_changed", [True, False])
def test_excel_damage_makes_the_row_invalid(
    name: str, given: str, message: str, only_changed: bool
) -> None:
    update = Update(4, "e1", {name: given, "osVersion": "10"})
    verdict = judge(update, SERIAL_NOW, only_changed=only_changed)
    assert (verdict.action, verdict.body, verdict.problems) == ("invalid", {}, (message,))
    accepted = judge(update, SERIAL_NOW, only_changed=only_changed, accept_lost_zeros=True)
    assert accepted.action == "write" and accepted.body[name] == given


@pytest.mark.parametrize(
    ("name", "current", "given"),
    [
        pytest.param("deviceSerialNumber", "0024486700", "124486700", id="other-digits"),
        pytest.param("deviceSerialNumber", "00AB12", "AB12", id="not-digits"),
        pytest.param("deviceSerialNumber", "24486700", "0024486700", id="zeros-added"),
        pytest.param("managedDeviceName", "936382000001", "9.36383E+11", id="other-number"),
        pytest.param("managedDeviceName", "5CG0501UDL", "9.36382E+11", id="not-a-number-before"),
        pytest.param("targetedAppCount", 7, 8, id="int32"),
        pytest.param("deviceSerialNumber", None, "24486700", id="was-null"),
    ],
)
def test_real_changes_are_not_taken_for_damage(name: str, current: JSON, given: JSON) -> None:
    verdict = judge(Update(4, "e1", {name: given}), {name: current}, only_changed=True)
    assert (verdict.action, verdict.body) == ("write", {name: given})


def test_a_revert_may_put_back_a_value_without_zeros() -> None:
    # The run padded the serial; the before-image (from Graph, not Excel) has no zeros.
    restore = Restore(
        2,
        "e1",
        {"deviceSerialNumber": "24486700"},
        expected={"deviceSerialNumber": "0024486700"},
    )
    verdict = judge(restore, SERIAL_NOW, only_changed=True)
    assert (verdict.action, verdict.body) == ("write", {"deviceSerialNumber": "24486700"})


def test_damage_helpers() -> None:
    assert lost_zeros("0024486700", "24486700")
    assert lost_zeros("000", "0")
    assert not lost_zeros("24486700", "24486700")
    assert not lost_zeros("0024486700", "24486701")
    assert not lost_zeros("0\uff1012", "12")  # a full-width zero is no digit Excel reads
    assert scientific_form("1200000000000000", "1.2E+15")
    assert scientific_form("936382000000", "9.36382e11")
    assert not scientific_form("936382000000", "9.36382E+10")
    assert not scientific_form("930004000000", "9.30000E+11")  # shown digits must all agree
    assert not scientific_form("93", "93")
    assert excel_damage("enrollmentState", "0012", "12") is None  # only text properties


# --- three values per cell: export, file, tenant (issue 12, item 6) ------------------------------

EXPORTED: dict[str, JSON] = {
    "id": "e1",
    "userPrincipalName": "adele@contoso.com",
    "osVersion": "10.0.1",
    "deviceSerialNumber": "0024486700",
    "enrollmentState": "enrolled",
    "eventDateTime": "2024-05-01T07:30:00.1234567+02:00",
    "managedDeviceName": None,
}
EXPORT_COLUMNS = tuple(EXPORTED)


def exported_row(body: dict[str, JSON], event_id: str = "e1") -> Update:
    """A row of an export of EXPORTED, the file holding `body`, as the mapper hands it on."""
    stamp = parse_stamp(Stamper(EXPORT_COLUMNS)(EXPORTED))
    return Update(9, event_id, body, exported=stamp)


def test_cells_not_edited_since_the_export_are_never_written() -> None:
    # The tenant changed everything since; the file still says what the export saw (spelt
    # differently: the same instant in UTC, the enum in capitals).
    update = exported_row(
        {
            "userPrincipalName": "adele@contoso.com",
            "enrollmentState": "ENROLLED",
            "eventDateTime": "2024-05-01T05:30:00.1234567Z",
            "managedDeviceName": None,
        }
    )
    tenant: dict[str, JSON] = {
        "userPrincipalName": "new.owner@contoso.com",
        "enrollmentState": "failed",
        "eventDateTime": "2025-01-01T00:00:00Z",
        "managedDeviceName": "PC-9",
    }
    for only_changed in (True, False):
        verdict = judge(update, tenant, only_changed=only_changed)
        assert (verdict.action, verdict.body, verdict.conflicts) == ("unchanged", {}, ())


def test_an_edited_cell_is_written_when_the_tenant_kept_the_exported_value() -> None:
    update = exported_row({"userPrincipalName": "b@contoso.com", "osVersion": "10.0.1"})
    tenant: dict[str, JSON] = {"userPrincipalName": "adele@contoso.com", "osVersion": "11"}
    verdict = judge(update, tenant, only_changed=True)
    assert (verdict.action, verdict.body) == ("write", {"userPrincipalName": "b@contoso.com"})
    assert verdict.before == {"userPrincipalName": "adele@contoso.com"}
    assert verdict.conflicts == ()


def test_a_cell_edited_in_both_places_is_a_conflict_the_rest_is_written() -> None:
    update = exported_row(
        {"userPrincipalName": "b@contoso.com", "osVersion": "10.0.2", "enrollmentState": "failed"}
    )
    tenant: dict[str, JSON] = {
        "userPrincipalName": "new.owner@contoso.com",  # changed since the export: conflict
        "osVersion": "10.0.1",
        "enrollmentState": "failed",  # the same change in both places: no conflict
    }
    verdict = judge(update, tenant, only_changed=True)
    assert verdict.action == "write"
    assert verdict.body == {"osVersion": "10.0.2"}
    assert verdict.changed_fields == ("osVersion",)
    assert verdict.conflicts == (
        Conflict(
            "userPrincipalName",
            None,
            "new.owner@contoso.com",
            False,
            wanted="b@contoso.com",
            since="export",
        ),
    )
    # Without --only-changed the same-change cell is sent again (harmless), the conflict is not.
    full = judge(update, tenant, only_changed=False)
    assert full.body == {"osVersion": "10.0.2", "enrollmentState": "failed"}
    assert [c.name for c in full.conflicts] == ["userPrincipalName"]
    # Only conflicting cells: nothing to write, the row is a conflict.
    alone = judge(exported_row({"userPrincipalName": "b@contoso.com"}), tenant, only_changed=True)
    assert (alone.action, alone.body, len(alone.conflicts)) == ("conflict", {}, 1)
    # --force writes the file's value.
    forced = judge(update, tenant, only_changed=True, force=True)
    assert forced.body == {"userPrincipalName": "b@contoso.com", "osVersion": "10.0.2"}
    assert forced.conflicts == ()


def test_an_export_cell_that_lost_its_zeros_is_invalid_even_if_the_tenant_changed() -> None:
    update = exported_row({"deviceSerialNumber": "24486700"})
    message = (
        "deviceSerialNumber: looks like Excel dropped the leading zeros of 0024486700 "
        "(file has 24486700); --accept-lost-zeros sends it anyway"
    )
    for tenant in ("0024486700", "5CG0000001"):
        verdict = judge(update, {"deviceSerialNumber": tenant}, only_changed=True)
        assert (verdict.action, verdict.problems) == ("invalid", (message,))
    accepted = judge(
        update, {"deviceSerialNumber": "0024486700"}, only_changed=True, accept_lost_zeros=True
    )
    assert (accepted.action, accepted.body) == ("write", {"deviceSerialNumber": "24486700"})


def test_columns_the_export_did_not_have_behave_as_in_any_file() -> None:
    update = exported_row({"deploymentDuration": "PT9M"})
    verdict = judge(update, {"deploymentDuration": "PT5M"}, only_changed=True)
    assert (verdict.action, verdict.body, verdict.conflicts) == (
        "write",
        {"deploymentDuration": "PT9M"},
        (),
    )


def test_a_revert_restores_the_fields_nobody_changed_and_reports_the_others() -> None:
    restore = Restore(
        3,
        "e1",
        {"osVersion": "10", "userPrincipalName": "a@contoso.com"},
        expected={"osVersion": "11", "userPrincipalName": "b@contoso.com"},
    )
    tenant: dict[str, JSON] = {"osVersion": "11", "userPrincipalName": "c@contoso.com"}
    verdict = judge(restore, tenant, only_changed=True)
    assert (verdict.action, verdict.body, verdict.before) == (
        "write",
        {"osVersion": "10"},
        {"osVersion": "11"},
    )
    assert verdict.changed_fields == ("osVersion",)
    assert verdict.conflicts == (
        Conflict("userPrincipalName", "b@contoso.com", "c@contoso.com", wanted="a@contoso.com"),
    )


def test_conflicts_survive_the_ledger_for_a_resume() -> None:
    conflicts = (
        Conflict("osVersion", "11", "12", wanted="10"),
        Conflict("userPrincipalName", None, "b@x.com", False, "a@x.com", since="export"),
    )
    stored = json.loads(json.dumps(conflicts_to_json(conflicts)))
    assert conflicts_from_json(stored) == conflicts
    assert conflicts_from_json(None) == () == conflicts_from_json([{"no": "name"}])
    verdict = resumed_verdict({"osVersion": "10"}, {"osVersion": "11"}, stored)
    assert (verdict.action, verdict.changed_fields, verdict.conflicts) == (
        "write",
        ("osVersion",),
        conflicts,
    )


def test_read_request_and_annotations() -> None:
    request = read_request("4", Update(2, "a/b", {"enrollmentState": "enrolled", "osVersion": "1"}))
    assert (request.id, request.method, request.body) == ("4", "GET", None)
    assert request.url == (
        "/deviceManagement/autopilotEvents/a%2Fb?$select=enrollmentState,osVersion"
    )
    assert current_values({"@odata.type": "x", "id": "e", "osVersion": None}) == {
        "id": "e",
        "osVersion": None,
    }
    assert current_values("not an object") == {}


def test_before_images_append(tmp_path: Path) -> None:
    path = tmp_path / "before.jsonl"
    for number in (2, 3):
        images = BeforeImages(path)
        images.write(number, f"e{number}", {"osVersion": None, "targetedAppCount": number})
        images.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [
        {"row": 2, "id": "e2", "before": {"osVersion": None, "targetedAppCount": 2}},
        {"row": 3, "id": "e3", "before": {"osVersion": None, "targetedAppCount": 3}},
    ]


def test_list_walk_is_chosen_by_size() -> None:
    assert not use_list_walk(10_000, only_changed=False)
    assert not use_list_walk(499, only_changed=True)
    assert use_list_walk(500, only_changed=True)


# --- the list walk, against the emulator in-process -----------------------------------------------


def _emulator(events: int, **config: Any) -> tuple[EmulatorState, list[str]]:
    store = EventStore()
    ids = store.seed(events, seed=5)
    return EmulatorState(EmulatorConfig(token=TOKEN, seed=1, **config), store), ids


def _transport(
    state: EmulatorState, spy: Callable[[httpx.Request], None] | None = None
) -> httpx.AsyncBaseTransport:
    inner = httpx.ASGITransport(app=build_app(state))

    class Spy(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if spy is not None:
                spy(request)
            return await inner.handle_async_request(request)

    return Spy()


async def _walk(state: EmulatorState, max_events: int, select: list[str]) -> tuple[Any, ListWalk]:
    clock = FakeClock()
    async with (
        httpx.AsyncClient(transport=_transport(state)) as http,
        GraphClient("http://graph.test", StaticTokenProvider(TOKEN), http=http) as client,
    ):
        walk = ListWalk(
            client,
            Limiter(write=Rate(100, 20), clock=clock),
            clock,
            select=select,
            max_events=max_events,
            max_retries=2,
        )
        return await walk.run(lambda: False), walk


def test_list_walk_reads_every_page() -> None:
    state, ids = _emulator(250)
    events, walk = anyio.run(_walk, state, 1000, ["id", "enrollmentState", "osVersion"])
    assert walk.pages == 5  # $top=999 is capped to Intune's pages of 50: opaque tokens followed
    assert set(events) == {i.casefold() for i in ids}
    first = events[ids[0].casefold()]
    assert set(first) == {"id", "enrollmentState", "osVersion"}


def test_list_walk_gives_up_on_a_big_tenant_or_an_error() -> None:
    state, _ = _emulator(1200)
    events, walk = anyio.run(_walk, state, 1000, ["enrollmentState"])
    assert events is None and walk.pages == 21  # gave up past 1,000 events, 50 a page
    current, _ = _emulator(10)
    # A legacy property in $select: today's Graph answers 400, so rows are read by id instead.
    events, walk = anyio.run(_walk, current, 1000, ["targetedAppCount"])
    assert events is None and walk.pages == 1


# --- revert plans from a ledger ---------------------------------------------------------------


def _ledger_run(run_dir: Path) -> None:
    run_dir.mkdir()
    ledger = Ledger(run_dir / "state.sqlite")
    ledger.set_meta(input_sha256="x", graph_root="http://127.0.0.1:9", cloud="global")
    ledger.record(
        [
            RowResult(2, "e2", Outcome.UPDATED, changed_fields=("osVersion", "enrollmentState")),
            RowResult(3, "e3", Outcome.UNCHANGED),
            RowResult(4, "e4", Outcome.UPDATED, changed_fields=("osVersion",)),  # --no-backup
            RowResult(5, "e5", Outcome.UPDATED),  # written, but nothing differed
            RowResult(6, "e6", Outcome.FAILED),
            RowResult(7, "e7", Outcome.UPDATED, changed_fields=("managedDeviceName",)),
        ]
    )
    ledger.save_before(
        2,
        "e2",
        {"osVersion": None, "enrollmentState": "enrolled", "userId": "u"},
        written={"osVersion": "11", "enrollmentState": "failed"},
    )
    ledger.save_before(5, "e5", {"osVersion": "10"})
    ledger.save_before(6, "e6", {"osVersion": "10"})
    ledger.save_before(7, "e7", {})  # Graph did not return the property
    ledger.close()


def test_revert_plan_from_the_ledger(tmp_path: Path) -> None:
    _ledger_run(tmp_path / "run")
    plan = RevertPlan(tmp_path / "run")
    assert plan.total == 4
    assert plan.source.headers == ["id", "enrollmentState", "osVersion"]
    assert plan.warnings and "--no-backup" in plan.warnings[0]
    rows = {raw.number: (raw, mapped) for raw, mapped in plan.rows()}
    raw, restore = rows[2]
    assert isinstance(restore, Restore)
    assert restore.body == {"osVersion": None, "enrollmentState": "enrolled"}
    assert restore.expected == {"osVersion": "11", "enrollmentState": "failed"}
    assert raw.cells == {"id": "e2", "osVersion": "<null>", "enrollmentState": "enrolled"}
    assert isinstance(rows[4][1], Invalid) and "--no-backup" in rows[4][1].message
    assert isinstance(rows[5][1], Skipped)
    assert isinstance(rows[7][1], Invalid) and "managedDeviceName" in rows[7][1].message
    assert RevertPlan(tmp_path / "run").sha256 == plan.sha256


def test_revert_refuses_what_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such run folder"):
        RevertPlan(tmp_path / "missing")
    (tmp_path / "dry").mkdir()
    with pytest.raises(UsageError, match="dry run"):
        RevertPlan(tmp_path / "dry")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "state.sqlite").write_text("not a database")
    with pytest.raises(UsageError, match="cannot read"):
        RevertPlan(tmp_path / "junk")


def test_revert_out_dir(tmp_path: Path) -> None:
    import datetime as dt

    run_dir = tmp_path / "20260101T000000Z-events"
    now = dt.datetime(2026, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
    out = revert_out_dir(run_dir, tmp_path / "runs", resume=False, now=now)
    assert out == tmp_path / "runs" / "20260203T040506Z-revert-20260101T000000Z-events"
    with pytest.raises(UsageError, match="no earlier revert"):
        revert_out_dir(run_dir, tmp_path / "runs", resume=True)
    out.mkdir(parents=True)
    assert revert_out_dir(run_dir, tmp_path / "runs", resume=True) == out


# --- the engine: before-images are committed before the PATCH leaves ---------------------------


def test_no_patch_leaves_before_its_before_image_is_committed(tmp_path: Path) -> None:
    state, ids = _emulator(60)
    rows = [
        {"id": i, "osVersion": f"10.0.{n}", "enrollmentState": "FAILED"} for n, i in enumerate(ids)
    ]
    rows.append(
        {"id": "00000000-0000-4000-8000-000000000404", "osVersion": "1", "enrollmentState": ""}
    )
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "run"
    checked: list[str] = []
    was_failed = {i for i in ids if (state.store.get(i) or {}).get("enrollmentState") == "failed"}

    def spy(request: httpx.Request) -> None:
        if request.method != "POST":
            return
        items = json.loads(request.content)["requests"]
        patched = [i["url"].rsplit("/", 1)[-1] for i in items if i["method"] == "PATCH"]
        if not patched:
            return
        # A separate connection sees only what is committed.
        with closing(sqlite3.connect(out / "state.sqlite")) as db:
            saved = {r[0]: r[1] for r in db.execute("SELECT event_id, written FROM before")}
        for event_id in patched:
            assert event_id in saved
            assert saved[event_id] is not None  # the body it sends, committed with the image
            checked.append(event_id)

    async def main() -> Any:
        async with httpx.AsyncClient(transport=_transport(state, spy)) as http:
            return await execute(
                RunOptions.from_flat(
                    input=src, out=out, graph_root="http://graph.test", batch_size=7
                ),
                tokens=StaticTokenProvider(TOKEN),
                http=http,
            )

    summary = anyio.run(main)
    assert summary.exit_code == 1  # the unknown id
    assert sorted(checked) == sorted(ids)
    results = {int(r["row"]): r for r in read_csv(out / "results.csv")}
    missing = results[62]
    assert (missing["outcome"], missing["status"], missing["attempts"]) == ("failed", "404", "1")
    assert state.stats.patches[missing["id"]] == 0
    for n, event_id in enumerate(ids):
        changed = "osVersion" if event_id in was_failed else "osVersion;enrollmentState"
        assert results[n + 2]["changed_fields"] == changed
    assert 0 < len(was_failed) < len(ids)
    images = [json.loads(line) for line in (out / "before.jsonl").read_text().splitlines()]
    assert sorted(i["row"] for i in images) == list(range(2, 62))
    assert summary.data["reads_sent"] == 61 and summary.data["backup"] is True
