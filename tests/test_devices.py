"""Autopilot device identities through every stage but the engine (issue 16).

Unit tests (pure functions, `httpx.MockTransport`, `FakeClock`) of what `--resource devices`
changes: headers and keys from the resource, portal columns ignored with one warning, the null
token sent as `""`, Excel's damage refused in device columns, `--key serialNumber` matching,
`--pick` refused, `None` and `""` equal when comparing, before-image GETs without `$select`,
device stamps, revert's resource from the run folder, options, job files, whoami and the CLI
commands that send nothing (`validate`, `schema`, `template`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from batch.auth import StaticTokenProvider
from batch.changes import excel_damage, judge, read_request, same_value
from batch.clouds import resolve_endpoints
from batch.errors import ConfigError, InputFileError, UsageError
from batch.export import ExportOptions, parse_columns
from batch.jobs import load_job
from batch.ledger import Ledger
from batch.listing import AUTOPILOT_DEVICES, AUTOPILOT_EVENTS, collection_of
from batch.mapper import InputOptions, key_property, prepare, template_columns
from batch.model import Invalid, Problem, Rate, Skipped, Update
from batch.options import RunOptions, Source, key_choice
from batch.report.commands import resume_command
from batch.resolve import KeyResolver
from batch.resources import DEVICES, EVENTS
from batch.revert import RevertPlan, recorded_resource
from batch.stamp import Stamper, parse_stamp, stamp_row
from batch.testing import FakeClock
from batch.whoami import check_identity
from tests.e2e import cli, write_csv

ROOT = "https://graph.example.test"
DEVICE_ID = "7d3c2b1a-0000-4000-8000-000000000001"


def devices_options(**fields: Any) -> InputOptions:
    return InputOptions(resource=DEVICES, **fields)


def mapped_rows(path: Path, options: InputOptions) -> list[Update | Invalid | Skipped]:
    return [m for _, m in prepare(path, options).rows()]


# --- mapper ------------------------------------------------------------------------------------


def test_portal_headers_map_to_device_properties(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "d.csv",
        [
            {
                "id": DEVICE_ID,
                "Group tag": "Sales",
                "Assigned user": "a@contoso.com",
                "Device name": "PC-1",
            }
        ],
    )
    [row] = mapped_rows(path, devices_options())
    assert isinstance(row, Update)
    assert row.body == {
        "groupTag": "Sales",
        "userPrincipalName": "a@contoso.com",
        "displayName": "PC-1",
    }


def test_columns_that_cannot_be_updated_are_ignored_with_one_warning(tmp_path: Path) -> None:
    """A portal import file is fed back as it is: hash, product id and model are never sent."""
    path = write_csv(
        tmp_path / "import.csv",
        [
            {
                "Device Serial Number": "5CG1234ABC",
                "Windows Product ID": "00330-80000-00000-AA123",
                "Hardware Hash": "T0FBQQ==",
                "Group Tag": "Kiosk",
                "Assigned User": "",
                "Manufacturer": "HP",
            }
        ],
    )
    prepared = prepare(path, devices_options(key="serialNumber"))
    assert prepared.warnings == [
        "columns 'Windows Product ID', 'Hardware Hash', 'Manufacturer' cannot be updated here "
        "(not writable on the device): ignored"
    ]
    [(_, row)] = list(prepared.rows())
    assert isinstance(row, Update) and row.body == {"groupTag": "Kiosk"}


def test_a_serial_column_is_ignored_when_rows_have_ids(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "d.csv", [{"id": DEVICE_ID, "Serial number": "X1", "groupTag": "A"}]
    )
    prepared = prepare(path, devices_options())
    assert prepared.warnings == [
        "column 'Serial number' cannot be updated here (not writable on the device): ignored"
    ]
    [(_, row)] = list(prepared.rows())
    assert isinstance(row, Update) and row.body == {"groupTag": "A"}


def test_event_columns_are_unknown_for_devices_and_named(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [{"id": DEVICE_ID, "osVersion": "10"}])
    with pytest.raises(InputFileError, match="unknown column 'osVersion'"):
        prepare(path, devices_options())


def test_the_null_token_clears_a_device_value_with_an_empty_string(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "d.csv", [{"id": DEVICE_ID, "groupTag": "<null>", "userPrincipalName": "<null>"}]
    )
    [row] = mapped_rows(path, devices_options())
    assert isinstance(row, Update) and row.body == {"groupTag": "", "userPrincipalName": ""}
    # Events keep sending JSON null.
    events = write_csv(tmp_path / "e.csv", [{"id": "e1", "userPrincipalName": "<null>"}])
    [event] = mapped_rows(events, InputOptions())
    assert isinstance(event, Update) and event.body == {"userPrincipalName": None}


def test_the_null_token_clears_in_any_case(tmp_path: Path) -> None:
    # `<NULL>` typed by an admin means what `<null>` means: a clear, never the literal text.
    path = write_csv(
        tmp_path / "d.csv",
        [
            {"id": DEVICE_ID, "groupTag": "<NULL>", "userPrincipalName": "<Null>"},
            {"id": "d2", "groupTag": "NULL", "userPrincipalName": " <nULL> "},
        ],
    )
    first, second = mapped_rows(path, devices_options())
    assert isinstance(first, Update) and first.body == {"groupTag": "", "userPrincipalName": ""}
    # `NULL` without the brackets is not the token: a group tag may well read NULL.
    assert isinstance(second, Update)
    assert second.body == {"groupTag": "NULL", "userPrincipalName": ""}
    events = write_csv(
        tmp_path / "e.csv", [{"id": "e1", "userPrincipalName": "<NULL>", "osVersion": "<Null>"}]
    )
    [event] = mapped_rows(events, InputOptions())
    assert isinstance(event, Update)
    assert event.body == {"userPrincipalName": None, "osVersion": None}


def test_excel_damage_is_refused_in_device_columns(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "d.csv",
        [
            {"Serial number": "9.36382E+11", "groupTag": "A"},
            {"Serial number": "00123", "groupTag": "1.5E+10"},
            {"Serial number": "00124", "groupTag": "=cmd|' /C calc'!A0"},
        ],
    )
    rows = mapped_rows(path, devices_options(key="serialNumber"))
    assert isinstance(rows[0], Invalid)
    assert "scientific notation" in rows[0].problems[0].reason
    assert isinstance(rows[1], Invalid) and rows[1].problems[0].column == "groupTag"
    # Formula-looking text is sent as written, with a warning (as for events).
    assert isinstance(rows[2], Update)
    assert any("Excel runs as a formula" in w for w in rows[2].warnings)


def test_a_change_that_strips_leading_zeros_is_damage_for_devices_too() -> None:
    assert excel_damage("groupTag", "000123", "123", DEVICES) is not None
    assert excel_damage("groupTag", "Sales", "Kiosk", DEVICES) is None


def test_key_serial_number_is_required_and_keeps_its_zeros(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "d.csv",
        [
            {"Device Serial Number": " 0012345 ", "groupTag": "A"},
            {"Device Serial Number": "", "groupTag": "B"},
        ],
    )
    seen: list[str] = []

    def resolve(text: str) -> str:
        seen.append(text)
        return DEVICE_ID

    prepared = prepare(path, devices_options(key="serialNumber"), resolve=resolve)
    rows = [m for _, m in prepared.rows()]
    assert seen == ["0012345"]
    assert isinstance(rows[0], Update) and rows[0].event_id == DEVICE_ID
    assert rows[0].body == {"groupTag": "A"}  # the key is not sent
    assert isinstance(rows[1], Invalid)
    assert rows[1].problems[0].reason.startswith("missing serialNumber")


def test_no_id_column_names_the_device_key(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [{"groupTag": "A"}])
    with pytest.raises(InputFileError, match=r"each device's id \(or pass --key serialNumber"):
        prepare(path, devices_options())


def test_keys_and_pick_come_from_the_resource() -> None:
    assert key_property("Serial number", DEVICES) == "serialNumber"
    assert key_property("serial", DEVICES) == "serialNumber"
    assert key_choice("Device Serial Number", None, DEVICES) == "serialNumber"
    with pytest.raises(UsageError, match="--key must be serialNumber"):
        key_choice("managedDeviceName", None, DEVICES)
    with pytest.raises(UsageError, match="--pick latest cannot be used with --resource devices"):
        key_choice("serialNumber", "latest", DEVICES)
    with pytest.raises(UsageError, match="--pick latest cannot be used"):
        Source(file=Path("d.csv"), reading=devices_options(key="serialNumber"), pick="latest")
    assert key_choice("serial", "latest", EVENTS) == "deviceSerialNumber"


def test_templates_list_the_writable_properties() -> None:
    assert template_columns(resource=DEVICES) == ["id", *DEVICES.writable]
    assert template_columns() == list(EVENTS.export_columns)


# --- judging -----------------------------------------------------------------------------------


def test_none_and_empty_are_one_value_for_devices_only() -> None:
    assert same_value("groupTag", None, "", DEVICES)
    assert same_value("groupTag", "", None, DEVICES)
    assert not same_value("groupTag", "A", "", DEVICES)
    assert not same_value("userPrincipalName", None, "")


def test_only_changed_treats_an_absent_group_tag_as_cleared() -> None:
    update = Update(2, DEVICE_ID, {"groupTag": "", "displayName": "PC-2"})
    verdict = judge(
        update, {"groupTag": None, "displayName": "PC-1"}, only_changed=True, resource=DEVICES
    )
    assert verdict.action == "write"
    assert verdict.body == {"displayName": "PC-2"}
    assert verdict.before == {"displayName": "PC-1"}
    same = judge(
        update, {"groupTag": "", "displayName": "PC-2"}, only_changed=True, resource=DEVICES
    )
    assert same.action == "unchanged"


def test_before_image_reads_carry_no_select_for_devices() -> None:
    update = Update(2, DEVICE_ID, {"groupTag": "A"})
    item = read_request("1", update, DEVICES)
    assert (item.method, item.url) == (
        "GET",
        f"/deviceManagement/windowsAutopilotDeviceIdentities/{DEVICE_ID}",
    )
    event = read_request("1", Update(2, "e1", {"osVersion": "1"}))
    assert event.url == "/deviceManagement/autopilotEvents/e1?$select=osVersion"


# --- resolving ---------------------------------------------------------------------------------


def device(device_id: str, serial: str) -> dict[str, Any]:
    return {"id": device_id, "serialNumber": serial, "groupTag": ""}


def loaded(*devices: dict[str, Any]) -> KeyResolver:
    resolver = KeyResolver("serialNumber", resource=DEVICES)
    for item in devices:
        resolver.add(item)
    resolver.mark_loaded()
    return resolver


def test_serials_match_ignoring_case_and_spaces_never_zeros() -> None:
    resolver = loaded(device("d1", " 5CG1234ABC "), device("d2", "0012345"), device("d3", "12345"))
    assert resolver.resolve("5cg1234abc") == "d1"
    assert resolver.resolve("0012345") == "d2"
    assert resolver.resolve("12345") == "d3"
    assert resolver.resolve("nope") == Problem("", "", "no device with serial 'nope'")


def test_a_serial_on_two_devices_is_invalid_with_both_ids() -> None:
    resolver = loaded(device("d2", "DUP"), device("d1", "dup"))
    assert resolver.resolve("Dup") == Problem(
        "",
        "",
        "2 devices with serial 'Dup': d1, d2; give the row the id of the one to change",
    )


def test_the_resolver_refuses_pick_for_devices() -> None:
    with pytest.raises(UsageError, match="nothing to pick the newest by"):
        KeyResolver("serialNumber", pick="latest", resource=DEVICES)
    with pytest.raises(UsageError, match="--key must be serialNumber"):
        KeyResolver("deviceSerialNumber", resource=DEVICES)


@pytest.mark.anyio
async def test_the_device_walk_sends_no_select(tmp_path: Path) -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json={"value": [device("d1", "S1"), device("d2", "S2")]})

    resolver = KeyResolver("serialNumber", resource=DEVICES)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        await resolver.load(
            out_dir=tmp_path,
            ledger=None,
            resume=False,
            tokens=StaticTokenProvider("t"),
            graph_root=ROOT,
            read_limit=Rate(1000, 20),
            max_retries=0,
            clock=FakeClock(),
            http=http,
        )
    [request] = requests
    assert request.url.path == "/beta/deviceManagement/windowsAutopilotDeviceIdentities"
    assert parse_qs(urlsplit(str(request.url)).query) == {"$top": ["999"]}
    assert resolver.resolve("s2") == "d2"


def test_collections_follow_the_resource() -> None:
    assert collection_of(DEVICES) is AUTOPILOT_DEVICES
    assert collection_of(EVENTS) is AUTOPILOT_EVENTS
    assert AUTOPILOT_DEVICES.permission.startswith("DeviceManagementServiceConfig.Read.All")


# --- stamps ------------------------------------------------------------------------------------


def test_device_stamps_cover_every_readable_device_property() -> None:
    from batch.stamp import DEVICE_STAMP_PROPERTIES

    readable = {n for n, p in DEVICES.properties.items() if not p.key} - DEVICES.secrets
    assert set(DEVICE_STAMP_PROPERTIES) == readable


def test_device_stamps_round_trip_and_fold_null_into_empty() -> None:
    stamp = Stamper(("id", "serialNumber", "groupTag"), DEVICES)(
        {"id": DEVICE_ID, "serialNumber": "S1", "groupTag": None}
    )
    assert stamp.startswith("d1.")
    parsed = parse_stamp(stamp)
    assert parsed.resource is DEVICES
    assert parsed.holds("groupTag", "") and parsed.holds("groupTag", None)
    assert parsed.holds("serialNumber", "S1") and not parsed.holds("serialNumber", "S2")
    assert parsed.of_event(DEVICE_ID)


def test_a_stamp_of_another_resource_makes_the_row_invalid() -> None:
    event_stamp = Stamper(("id", "osVersion"))({"id": DEVICE_ID, "osVersion": "10"})
    row = stamp_row(Update(2, DEVICE_ID, {"groupTag": "A"}), event_stamp, "_exported", DEVICES)
    assert isinstance(row, Invalid)
    assert "export of events, not devices: run the file with --resource events" in (
        row.problems[0].reason
    )


# --- export options ----------------------------------------------------------------------------


def test_export_options_follow_the_resource(tmp_path: Path) -> None:
    options = ExportOptions(out=tmp_path / "d.csv", resource=DEVICES)
    assert options.columns == DEVICES.export_columns
    options.check()
    assert parse_columns("Serial number,Group tag", DEVICES) == ("id", "serialNumber", "groupTag")
    with pytest.raises(UsageError, match="cannot be read back"):
        ExportOptions(
            out=tmp_path / "d.csv", resource=DEVICES, columns=("id", "deviceAccountPassword")
        ).check()
    import datetime as dt

    with pytest.raises(UsageError, match="--since cannot be used with --resource devices"):
        ExportOptions(
            out=tmp_path / "d.csv", resource=DEVICES, since=dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
        ).check()


# --- options, run folder, revert, jobs ---------------------------------------------------------


def test_options_record_the_resource_and_take_its_budget(tmp_path: Path) -> None:
    options = RunOptions.from_flat(input=tmp_path / "d.csv", reading=devices_options())
    assert options.resource is DEVICES
    assert options.sending.write_limit == DEVICES.write_limit
    assert options.recorded()["resource"] == "devices"
    command = resume_command(options, tmp_path / "out", reverting=False)
    assert command is not None and "--resource devices" in command
    events = RunOptions.from_flat(input=tmp_path / "e.csv")
    assert events.resource is EVENTS
    assert "--resource" not in (resume_command(events, tmp_path / "out", reverting=False) or "")


def test_revert_reads_the_resource_from_the_run_folder(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    Ledger(old / "state.sqlite").close()
    assert recorded_resource(old) is EVENTS  # a run folder from before device identities
    new = tmp_path / "new"
    new.mkdir()
    ledger = Ledger(new / "state.sqlite")
    ledger.set_meta(resource="devices")
    ledger.close()
    assert recorded_resource(new) is DEVICES
    assert RevertPlan(new).resource is DEVICES


def test_job_files_take_the_resource(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text(
        '[input]\nfile = "d.csv"\nresource = "devices"\nkey = "Serial number"\n'
        "[run]\ndry_run = true\n",
        encoding="utf-8",
    )
    loaded_job = load_job(job)
    options = loaded_job.run_options(tmp_path / "d.csv", out=None, resume=False)
    assert options.resource is DEVICES
    assert options.source.reading.key == "serialNumber"
    job.write_text('[input]\nfile = "d.csv"\nresource = "printers"\n', encoding="utf-8")
    with pytest.raises(
        ConfigError, match=r"\[input\] resource.*must be one of 'events', 'devices'"
    ):
        load_job(job)


# --- whoami ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_whoami_reads_the_device_list_and_names_its_permission() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"value": []})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        identity = await check_identity(
            resolve_endpoints("global", graph_url=ROOT),
            StaticTokenProvider("opaque"),
            http=http,
            resource=DEVICES,
        )
    [request] = seen
    assert request.url.path == "/beta/deviceManagement/windowsAutopilotDeviceIdentities"
    assert "$select" not in str(request.url)
    assert identity.problem is None
    assert identity.to_json()["permission"] == "DeviceManagementServiceConfig.ReadWrite.All"
    assert identity.graph.url.endswith("windowsAutopilotDeviceIdentities?$top=1")


# --- CLI commands that send nothing -----------------------------------------------------------


def test_validate_a_portal_file_of_devices(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "import.csv",
        [
            {"Device Serial Number": "0012345", "Hardware Hash": "AA==", "Group Tag": "Kiosk"},
            {"Device Serial Number": "1.2E+11", "Hardware Hash": "", "Group Tag": "Kiosk"},
        ],
    )
    result = cli("validate", path, "--resource", "devices", "--key", "serialNumber")
    assert result.returncode == 1
    assert "column 'Hardware Hash' cannot be updated here" in result.stderr
    assert "row 3: Device Serial Number: looks like a number Excel showed" in result.stderr
    assert result.stdout.strip() == "import.csv: 2 rows: 1 valid, 1 invalid, 0 skipped, 1 warning"
    usage = cli("validate", path, "--resource", "printers")
    assert usage.returncode == 2
    assert "--resource: the resource must be events or devices" in usage.stderr


def test_schema_and_template_for_devices(tmp_path: Path) -> None:
    shown = cli("schema", "--resource", "devices", "--json")
    assert shown.returncode == 0
    rows = {row["name"]: row for row in json.loads(shown.stdout)}
    assert "groupTag" in rows and "writable" not in rows["groupTag"]
    assert rows["serialNumber"]["writable"] is False
    out = tmp_path / "devices.csv"
    made = cli("template", out, "--resource", "devices")
    assert made.returncode == 0
    with out.open(encoding="utf-8-sig", newline="") as handle:
        assert next(csv.reader(handle)) == ["id", *DEVICES.writable]


def test_demo_runs_the_device_sample_by_serial(tmp_path: Path) -> None:
    result = cli("demo", "--resource", "devices", "--out", tmp_path / "demo", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["resource"] == "devices"
    assert summary["key"] == "serialNumber"
    assert summary["counts"]["updated"] == 20


def test_emulator_device_options_exclude_each_other(tmp_path: Path) -> None:
    result = cli("emulator", "--devices", tmp_path / "d.csv", "--seed-devices", "3")
    assert result.returncode == 2
    assert "--devices and --seed-devices exclude each other" in result.stderr


def test_job_files_take_verify(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text(
        '[input]\nfile = "d.csv"\nresource = "devices"\n[run]\nverify = true\n', encoding="utf-8"
    )
    options = load_job(job).run_options(tmp_path / "d.csv", out=None, resume=False)
    assert options.judging.verify
    assert options.recorded()["verify"] is True
    command = resume_command(options, tmp_path / "out", reverting=False)
    assert command is not None and command.endswith("--verify")


def test_revert_leaves_secrets_alone(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    ledger = Ledger(run / "state.sqlite")
    ledger.set_meta(resource="devices")
    ledger.close()
    plan = RevertPlan(run)
    _, only_secret = plan._row(2, DEVICE_ID, ["deviceAccountPassword"], {}, {})
    assert isinstance(only_secret, Skipped)
    assert "deviceAccountPassword cannot be read back" in only_secret.reason
    _, both = plan._row(
        3,
        DEVICE_ID,
        ["groupTag", "deviceAccountPassword"],
        {"groupTag": None},
        {"groupTag": "New"},
    )
    # The old (absent) group tag goes back as "", the password is not touched.
    assert isinstance(both, Update) and both.body == {"groupTag": ""}


def test_the_only_changed_list_walk_reads_devices_whole() -> None:
    """The realistic emulator answers 500 to `$select` on devices: the walk must not send it."""
    import anyio

    from batch.changes import ListWalk
    from batch.emulator import EmulatorConfig
    from batch.emulator.app import build_app
    from batch.emulator.devices import DeviceStore
    from batch.emulator.state import EmulatorState
    from batch.emulator.store import EventStore
    from batch.graph import GraphClient
    from batch.limiter import Limiter

    devices = DeviceStore()
    ids = devices.seed(120, seed=4)
    state = EmulatorState(EmulatorConfig(token="t", seed=1), EventStore(), devices=devices)
    urls: list[str] = []

    async def walk() -> dict[str, dict[str, Any]] | None:
        clock = FakeClock()
        inner = httpx.ASGITransport(app=build_app(state))

        class Spy(httpx.AsyncBaseTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                urls.append(str(request.url))
                return await inner.handle_async_request(request)

        async with (
            httpx.AsyncClient(transport=Spy()) as http,
            GraphClient("http://graph.test", StaticTokenProvider("t"), http=http) as client,
        ):
            return await ListWalk(
                client,
                Limiter(write=Rate(100, 20), clock=clock),
                clock,
                select=["id", "groupTag"],
                max_events=1000,
                max_retries=0,
                resource=DEVICES,
            ).run(lambda: False)

    found = anyio.run(walk)
    assert found is not None and set(found) == {i.casefold() for i in ids}
    assert len(urls) == 3 and not any("select" in u for u in urls)
    assert "/beta/deviceManagement/windowsAutopilotDeviceIdentities" in urls[0]
