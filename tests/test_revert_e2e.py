"""`--only-changed`, before-images and `revert` end to end: the real CLI against the emulator."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from batch.emulator import EmulatorConfig, EmulatorServer, EventStore
from batch.model import JSON, Rate
from tests.conftest import EmulatorFactory
from tests.e2e import (
    cli,
    cli_here,
    in_utc,
    powershell_timespan,
    read_csv,
    update_rows,
    write_csv,
)

pytestmark = pytest.mark.e2e

TOKEN = "test-token"
# Scaled-down limits: the same shape as Graph's (reads 10x writes), fast enough for tests.
FAST = {
    "write_limit": Rate(1000, 1),
    "tenant_write_limit": Rate(2000, 1),
    "read_limit": Rate(10000, 1),
    "tenant_read_limit": Rate(20000, 1),
}
TOOL_LIMIT = ("--write-limit", "1000/1")


def _server(factory: EmulatorFactory, n: int, seed: int = 21) -> tuple[EmulatorServer, list[str]]:
    store = EventStore()
    ids = store.seed(n, seed=seed)
    return factory(EmulatorConfig(token=TOKEN, seed=seed, **FAST), store=store), ids


def _as_admin_would_type(event: dict[str, JSON]) -> dict[str, str]:
    """A row holding the event's own values, spelt differently (enum case, TimeSpan, UTC)."""
    return {
        "id": str(event["id"]),
        "Device Serial Number": str(event["deviceSerialNumber"]),
        "enrollmentState": str(event["enrollmentState"]).upper(),
        "deploymentDuration": powershell_timespan(str(event["deploymentDuration"])),
        "eventDateTime": in_utc(str(event["eventDateTime"])),
        "userPrincipalName": str(event["userPrincipalName"]),
    }


def _patch_directly(server: EmulatorServer, event_id: str, body: dict[str, JSON]) -> None:
    """Another writer changes an event (a plain PATCH, as the Intune portal would)."""
    response = httpx.patch(
        f"{server.url}/beta/deviceManagement/autopilotEvents/{event_id}",
        json=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 204, response.text  # Intune's answer to a PATCH


def _lines(path: Path) -> list[dict[str, JSON]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- --only-changed -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "reads_at_most", "run_cli"),
    [
        pytest.param(60, 60, cli_here, id="reads-by-id"),
        # The list in Intune's pages of 50 (12), then the 60 rows to write; as a real process.
        pytest.param(600, 72, cli, id="list-walk"),
    ],
)
def test_only_changed_writes_only_the_rows_that_differ(
    emulator_factory: EmulatorFactory,
    tmp_path: Path,
    rows: int,
    reads_at_most: int,
    run_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    server, ids = _server(emulator_factory, rows)
    lines = [_as_admin_would_type(e) for e in server.store.list()]
    differ = {i for n, i in enumerate(ids) if n % 10 == 3}  # 10 %
    for line in lines:
        if line["id"] in differ:
            line["userPrincipalName"] = f"new.{line['id'][:8]}@contoso.com"
    src = write_csv(tmp_path / "in.csv", lines)
    result = run_cli(
        "run", src, "--graph-url", server.url, *TOOL_LIMIT, "--only-changed",
        "--out", tmp_path / "r", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    stats = server.stats()
    assert stats["patches"] == dict.fromkeys(sorted(differ), 1)
    assert stats["reads"] <= reads_at_most
    results = read_csv(tmp_path / "r" / "results.csv")
    by_outcome: dict[str, set[str]] = {}
    for r in results:
        by_outcome.setdefault(r["outcome"], set()).add(r["id"])
    assert by_outcome == {"updated": differ, "unchanged": set(ids) - differ}
    assert {r["changed_fields"] for r in results if r["outcome"] == "updated"} == {
        "userPrincipalName"
    }
    images = _lines(tmp_path / "r" / "before.jsonl")
    assert {i["id"] for i in images} == differ
    assert all(list(i["before"]) == ["userPrincipalName"] for i in images)  # type: ignore[arg-type]
    summary = json.loads(result.stdout)
    assert summary["counts"]["unchanged"] == rows - len(differ)
    assert summary["only_changed"] is True and summary["writes_sent"] == len(differ)


def test_dry_run_only_changed_prints_the_diff_and_writes_nothing(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    server, _ = _server(emulator_factory, 20)
    events = server.store.list()
    lines = [_as_admin_would_type(e) for e in events]
    lines[4]["userPrincipalName"] = "moved@contoso.com"
    lines[7]["enrollmentState"] = (
        "blocked" if events[7]["enrollmentState"] != "blocked" else "unknown"
    )
    lines[7]["deploymentDuration"] = "1.00:00:00"
    src = write_csv(tmp_path / "in.csv", lines)
    before = server.store.digest()
    result = cli_here(
        "run", src, "--graph-url", server.url, "--dry-run", "--only-changed",
        "--out", tmp_path / "d",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert server.store.digest() == before and server.stats()["writes"] == 0
    assert f"row 6 ({events[4]['id']}): 1 change" in result.stderr
    old_upn = events[4]["userPrincipalName"]
    assert f"userPrincipalName  {old_upn} → moved@contoso.com" in result.stderr
    assert f"row 9 ({events[7]['id']}): 2 changes" in result.stderr
    assert f"deploymentDuration  {events[7]['deploymentDuration']} → P1D" in result.stderr
    assert result.stdout.splitlines()[0] == "20 rows: unchanged 18, planned 2"
    planned = _lines(tmp_path / "d" / "requests.jsonl")
    assert sorted((p["row"], json.dumps(p["body"], sort_keys=True)) for p in planned) == [
        (6, json.dumps({"userPrincipalName": "moved@contoso.com"})),
        (
            9,
            json.dumps(
                {"deploymentDuration": "P1D", "enrollmentState": lines[7]["enrollmentState"]},
                sort_keys=True,
            ),
        ),
    ]
    outcomes = {int(r["row"]): r["outcome"] for r in read_csv(tmp_path / "d" / "results.csv")}
    assert outcomes == {n: "planned" if n in (6, 9) else "unchanged" for n in range(2, 22)}
    assert not (tmp_path / "d" / "state.sqlite").exists()


# --- revert ---------------------------------------------------------------------------------------


def test_run_then_revert_restores_the_tenant_and_spares_what_others_changed(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    server, ids = _server(emulator_factory, 80)
    original = server.store.digest()
    src = write_csv(tmp_path / "in.csv", update_rows(ids))
    run = cli("run", src, "--graph-url", server.url, *TOOL_LIMIT, "--out", tmp_path / "run")
    assert run.returncode == 0, run.stderr[-2000:]
    assert server.store.digest() != original

    # Another writer changes row 5's event after the run; someone puts row 9's back by hand.
    _patch_directly(server, ids[3], {"userPrincipalName": "someone.else@contoso.com"})
    image = next(i for i in _lines(tmp_path / "run" / "before.jsonl") if i["row"] == 9)
    _patch_directly(server, ids[7], image["before"])  # type: ignore[arg-type]
    first = cli("revert", tmp_path / "run", *TOOL_LIMIT, "--out", tmp_path / "rv", "--json")
    assert first.returncode == 1, first.stderr[-2000:]  # a conflict
    results = {int(r["row"]): r for r in read_csv(tmp_path / "rv" / "results.csv")}
    assert len(results) == 80
    assert results[5]["outcome"] == "conflict" and results[5]["error_code"] == "Conflict"
    assert "userPrincipalName is someone.else@contoso.com" in results[5]["error_message"]
    assert results[9]["outcome"] == "unchanged"
    assert {r["outcome"] for n, r in results.items() if n not in (5, 9)} == {"updated"}
    assert server.store.get(ids[3])["userPrincipalName"] == "someone.else@contoso.com"  # type: ignore[index]
    summary = json.loads(first.stdout)
    assert summary["counts"]["conflict"] == 1 and summary["input"] == str(tmp_path / "run")

    # --force puts the conflicting row back too: the tenant is as it was before the run.
    forced = cli_here("revert", tmp_path / "run", *TOOL_LIMIT, "--force", "--out", tmp_path / "rv2")
    assert forced.returncode == 0, forced.stderr[-2000:]
    outcomes = [r["outcome"] for r in read_csv(tmp_path / "rv2" / "results.csv")]
    assert outcomes.count("updated") == 1 and outcomes.count("unchanged") == 79
    assert server.store.digest() == original
    # Graph defaulted to the one the run used (recorded in its ledger).
    assert f"at {server.url}" in forced.stderr


def test_resumed_rows_keep_their_first_before_image(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    """Killed after PATCHes left but before their answers were recorded, then resumed."""
    server, ids = _server(emulator_factory, 30)
    original = server.store.digest()
    src = write_csv(tmp_path / "in.csv", update_rows(ids))
    out = tmp_path / "run"
    assert (
        cli_here("run", src, "--graph-url", server.url, *TOOL_LIMIT, "--out", out).returncode == 0
    )
    first = {r["row"]: r["changed_fields"] for r in read_csv(out / "results.csv")}
    with closing(sqlite3.connect(out / "state.sqlite")) as db, db:
        db.execute("UPDATE rows SET state = 'in_flight' WHERE number BETWEEN 2 AND 6")
    reads = server.stats()["reads"]
    resumed = cli_here("run", src, "--graph-url", server.url, *TOOL_LIMIT, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert server.stats()["reads"] == reads  # judged on the stored images, not read again
    again = {r["row"]: r["changed_fields"] for r in read_csv(out / "results.csv")}
    assert again == first  # not "nothing changed", although the event already held the values
    patches = server.stats()["patches"]
    assert isinstance(patches, dict)
    assert [patches[i] for i in ids[:6]] == [2, 2, 2, 2, 2, 1]
    assert cli_here("revert", out, *TOOL_LIMIT, "--out", tmp_path / "rv").returncode == 0
    assert server.store.digest() == original


def _as_version_0(ledger: Path) -> None:
    """Rewrite a run's ledger as releases before issue 14 left it (ledger version 0).

    The written bodies go back into `cache` rows keyed `written:N`, `before` loses its
    `written` and `conflicts` columns, and `user_version` is 0 again.
    """
    with closing(sqlite3.connect(ledger)) as db, db:
        db.execute(
            "INSERT INTO cache(key, value) SELECT 'written:' || number, written FROM before"
            " WHERE written IS NOT NULL"
        )
        db.execute("ALTER TABLE before RENAME TO before_new")
        db.execute(
            "CREATE TABLE before (number INTEGER PRIMARY KEY, event_id TEXT NOT NULL,"
            " body TEXT NOT NULL)"
        )
        db.execute("INSERT INTO before SELECT number, event_id, body FROM before_new")
        db.execute("DROP TABLE before_new")
        db.execute("PRAGMA user_version = 0")


def _user_version(ledger: Path) -> int:
    with closing(sqlite3.connect(ledger)) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def test_a_run_folder_of_an_earlier_release_still_reverts_and_resumes(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    """Its ledger holds the written bodies as `written:N` cache rows (ledger version 0)."""
    server, ids = _server(emulator_factory, 30)
    original = server.store.digest()
    src = write_csv(tmp_path / "in.csv", update_rows(ids))
    out = tmp_path / "run"
    assert (
        cli_here("run", src, "--graph-url", server.url, *TOOL_LIMIT, "--out", out).returncode == 0
    )
    first = {r["row"]: r["changed_fields"] for r in read_csv(out / "results.csv")}
    ledger = out / "state.sqlite"
    _as_version_0(ledger)

    # Revert reads the old file as it is (read-only), written bodies included: no field is a
    # conflict for want of the run's values, and the reverted run's folder is left as it was.
    old_file = ledger.read_bytes()
    reverted = cli_here("revert", out, *TOOL_LIMIT, "--out", tmp_path / "rv")
    assert reverted.returncode == 0, reverted.stderr[-2000:]
    outcomes = {r["outcome"] for r in read_csv(tmp_path / "rv" / "results.csv")}
    assert outcomes == {"updated"} and server.store.digest() == original
    assert ledger.read_bytes() == old_file and _user_version(ledger) == 0

    # Resume after a kill that left rows in flight after their bodies were committed: the old
    # file is migrated on open, and those rows are sent again from their committed bodies.
    with closing(sqlite3.connect(ledger)) as db, db:
        db.execute("UPDATE rows SET state = 'in_flight' WHERE number BETWEEN 2 AND 6")
    reads = server.stats()["reads"]
    resumed = cli_here("run", src, "--graph-url", server.url, *TOOL_LIMIT, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert server.stats()["reads"] == reads  # judged on the stored images, not read again
    assert {r["row"]: r["changed_fields"] for r in read_csv(out / "results.csv")} == first
    assert _user_version(ledger) == 1
    with closing(sqlite3.connect(ledger)) as db:
        assert db.execute("SELECT count(*) FROM cache WHERE key LIKE 'written:%'").fetchone() == (
            0,
        )

    # The resumed rows were written again; the migrated run reverts them.
    assert server.store.digest() != original
    again = cli_here("revert", out, *TOOL_LIMIT, "--out", tmp_path / "rv2")
    assert again.returncode == 0, again.stderr[-2000:]
    outcomes_again = [r["outcome"] for r in read_csv(tmp_path / "rv2" / "results.csv")]
    assert outcomes_again.count("updated") == 5 and outcomes_again.count("unchanged") == 25
    assert server.store.digest() == original


def test_no_backup_reads_nothing_and_cannot_be_reverted(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    server, ids = _server(emulator_factory, 10)
    src = write_csv(tmp_path / "in.csv", update_rows(ids))
    out = tmp_path / "run"
    run = cli_here("run", src, "--graph-url", server.url, *TOOL_LIMIT, "--no-backup", "--out", out)
    assert run.returncode == 0, run.stderr[-2000:]
    assert server.stats()["reads"] == 0 and not (out / "before.jsonl").exists()
    digest = server.store.digest()
    revert = cli_here("revert", out, "--graph-url", server.url, "--out", tmp_path / "rv")
    assert revert.returncode == 1
    assert "cannot be reverted" in revert.stderr
    results = read_csv(tmp_path / "rv" / "results.csv")
    assert {r["outcome"] for r in results} == {"invalid"}
    assert "--no-backup" in results[0]["error_message"]
    assert server.store.digest() == digest


def test_revert_of_a_dry_run_or_nothing(emulator: EmulatorServer, tmp_path: Path) -> None:
    ids = [str(e["id"]) for e in emulator.store.list()][:3]
    src = write_csv(tmp_path / "in.csv", update_rows(ids))
    assert cli_here("run", src, "--dry-run", "--out", tmp_path / "d").returncode == 0
    refused = cli_here("revert", tmp_path / "d", "--graph-url", emulator.url)
    assert refused.returncode == 2
    assert refused.stderr.startswith("Error: ") and "dry run" in refused.stderr
    help_text = cli_here("revert", "--help").stdout
    assert "--force" in help_text and "Examples:" in help_text
