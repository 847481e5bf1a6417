"""`run` end to end: the real CLI (a subprocess) against the emulator on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batch.emulator import EmulatorConfig, EmulatorServer, EventStore
from batch.model import Rate
from tests.conftest import EmulatorFactory
from tests.e2e import (
    cli,
    cli_env,
    emulator_config,
    expected_body,
    read_csv,
    start_cli,
    update_rows,
    write_csv,
)

pytestmark = pytest.mark.e2e

TOKEN = "test-token"


def _seeded(n: int) -> tuple[EventStore, list[str]]:
    store = EventStore()
    ids = store.seed(n, seed=11)
    return store, ids


def _assert_tenant_holds(server: EmulatorServer, rows: list[dict[str, str]]) -> None:
    for row in rows:
        event = server.store.get(row["id"])
        assert event is not None
        for name, value in expected_body(row).items():
            assert event[name] == value, (row["id"], name)


def _assert_one_line_per_row(results: list[dict[str, str]], first_row: int, n: int) -> None:
    assert [int(r["row"]) for r in results] == list(range(first_row, first_row + n))


def test_2000_rows_with_faults_in_both_modes(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    """The issue's acceptance run: faults at 5 %, throttle at 100/2, both modes side by side."""
    limit = Rate(100, 2)
    procs = {}
    servers = {}
    inputs = {}
    for i, mode in enumerate(("single", "batch")):
        store, ids = _seeded(2000)
        servers[mode] = emulator_factory(
            EmulatorConfig(
                token=TOKEN,
                write_limit=limit,
                tenant_write_limit=Rate(400, 2),
                read_limit=Rate(1000, 2),
                tenant_read_limit=Rate(2000, 2),
                fault_rate=0.05,
                seed=100 + i,
            ),
            store=store,
        )
        inputs[mode] = update_rows(ids, seed=i)
        src = write_csv(tmp_path / f"{mode}.csv", inputs[mode])
        # Both runs go at once: each has its own emulator (its own app budget).
        procs[mode] = start_cli(
            [
                "run",
                str(src),
                "--graph-url",
                servers[mode].url,
                "--mode",
                mode,
                "--write-limit",
                str(limit),
                "--concurrency",
                "6",
                "--out",
                str(tmp_path / f"run-{mode}"),
                "--json",
            ],
            cli_env(TOKEN),
        )
    for mode, proc in procs.items():
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, (mode, err[-2000:])
        summary = json.loads(out)
        assert summary["counts"]["updated"] == 2000, mode
        stats = servers[mode].stats()
        assert stats["during_retry_after"] == 0, mode
        faults = stats["faults"]
        assert isinstance(faults, dict) and sum(faults.values()) > 0, mode  # faults did happen
        _assert_tenant_holds(servers[mode], inputs[mode])
        results = read_csv(tmp_path / f"run-{mode}" / "results.csv")
        _assert_one_line_per_row(results, 2, 2000)
        assert {r["outcome"] for r in results} == {"updated"}
        assert all(r["client_request_id"] and r["request_id"] for r in results)
        assert read_csv(tmp_path / f"run-{mode}" / "failures.csv") == []


@pytest.mark.parametrize("retry_after", ["int", "decimal", "none"])
def test_throttled_batch_items_are_resent(
    emulator_factory: EmulatorFactory, tmp_path: Path, retry_after: str
) -> None:
    """The tool believes in twice the real limit: Graph throttles items, the tool re-sends them."""
    store, ids = _seeded(240)
    server = emulator_factory(
        EmulatorConfig(
            token=TOKEN,
            write_limit=Rate(40, 1),
            tenant_write_limit=Rate(400, 1),
            read_limit=Rate(1000, 1),
            tenant_read_limit=Rate(2000, 1),
            retry_after_format=retry_after,  # type: ignore[arg-type]
            seed=3,
        ),
        store=store,
    )
    rows = update_rows(ids)
    src = write_csv(tmp_path / "in.csv", rows)
    result = cli(
        "run", src, "--graph-url", server.url, "--write-limit", "80/1", "--out", tmp_path / "r",
        "--concurrency", "4", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    stats = server.stats()
    assert stats["throttled"] > 0  # the scenario really throttled
    assert summary["throttled_429"] == stats["throttled"]
    assert stats["during_retry_after"] == 0
    assert summary["counts"]["updated"] == 240
    _assert_tenant_holds(server, rows)


def test_batch_envelope_503_is_retried(emulator_factory: EmulatorFactory, tmp_path: Path) -> None:
    store, ids = _seeded(120)
    server = emulator_factory(emulator_config(seed=5, fault_rate=0.3), store=store)
    rows = update_rows(ids)
    src = write_csv(tmp_path / "in.csv", rows)
    result = cli(
        "run", src, "--graph-url", server.url, "--write-limit", "200/1", "--out", tmp_path / "r",
        "--batch-size", "10", "--json",
        # At a 30 % fault rate one of 120 rows now and then meets 9 faults in a row (seen about
        # once in 15 runs on a loaded machine); more retries keep this test about retrying.
        "--max-retries", "20",
    )  # fmt: skip
    assert result.returncode == 0, [
        r for r in read_csv(tmp_path / "r" / "results.csv") if r["outcome"] != "updated"
    ]
    faults = server.stats()["faults"]
    assert isinstance(faults, dict) and sum(faults.values()) > 0
    assert json.loads(result.stdout)["retries"] > 0
    _assert_tenant_holds(server, rows)


@pytest.mark.parametrize("mode", ["single", "batch"])
def test_rejected_rows_fail_with_graphs_error_and_can_be_fed_back(
    emulator_factory: EmulatorFactory, tmp_path: Path, mode: str
) -> None:
    """400 (a legacy property today's Graph rejects) and 404 rows: failed, then fixed and re-run."""
    store, ids = _seeded(30)
    server = emulator_factory(EmulatorConfig(token=TOKEN, schema="current", seed=1), store=store)
    rows = [{**r, "targetedAppCount": ""} for r in update_rows(ids)]
    rows[3]["targetedAppCount"] = "4"  # 400 from Graph: no longer in the schema
    rows[7]["id"] = "00000000-0000-4000-8000-000000000404"  # 404: no such event
    rows[9]["enrollmentState"] = "Enroled"  # invalid before sending
    src = write_csv(tmp_path / "in.csv", rows)
    first = cli("run", src, "--graph-url", server.url, "--mode", mode, "--out", tmp_path / "r1")
    assert first.returncode == 1, first.stderr[-2000:]
    results = read_csv(tmp_path / "r1" / "results.csv")
    _assert_one_line_per_row(results, 2, 30)
    by_row = {int(r["row"]): r for r in results}
    assert by_row[5]["outcome"] == "failed" and by_row[5]["status"] == "400"
    assert (
        by_row[5]["error_code"] == "BadRequest" and "targetedAppCount" in by_row[5]["error_message"]
    )
    assert by_row[9]["outcome"] == "failed" and by_row[9]["status"] == "404"
    assert by_row[9]["error_code"] and by_row[9]["request_id"]
    assert by_row[11]["outcome"] == "invalid" and "Enroled" in by_row[11]["error_message"]
    assert sum(r["outcome"] == "updated" for r in results) == 27

    failures = read_csv(tmp_path / "r1" / "failures.csv")
    assert [f["_row"] for f in failures] == ["5", "9", "11"]
    assert [f["_outcome"] for f in failures] == ["failed", "failed", "invalid"]
    assert failures[0]["Device Serial Number"] == rows[3]["Device Serial Number"]  # zeros kept

    # The admin fixes the three rows in failures.csv and feeds the file back as it is.
    failures[0]["targetedAppCount"] = ""
    failures[1]["id"] = ids[7]
    failures[2]["enrollmentState"] = "enrolled"
    fixed = write_csv(tmp_path / "fixed.csv", failures)
    second = cli("run", fixed, "--graph-url", server.url, "--mode", mode, "--out", tmp_path / "r2")
    assert second.returncode == 0, second.stderr[-2000:]
    assert [r["outcome"] for r in read_csv(tmp_path / "r2" / "results.csv")] == ["updated"] * 3
    rows[3]["targetedAppCount"] = ""
    rows[7]["id"] = ids[7]
    rows[9]["enrollmentState"] = "enrolled"
    _assert_tenant_holds(server, rows)


def test_dry_run_sends_nothing_and_writes_the_planned_bodies(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    ids = [e["id"] for e in emulator.store.list()][:10]
    rows = update_rows(ids)
    src = write_csv(tmp_path / "in.csv", rows)
    before = emulator.store.digest()
    result = cli("run", src, "--dry-run", "--graph-url", emulator.url, "--out", tmp_path / "d")
    assert result.returncode == 0, result.stderr
    assert emulator.stats()["requests"] == 0
    assert emulator.store.digest() == before
    planned = [
        json.loads(line) for line in (tmp_path / "d" / "requests.jsonl").read_text().splitlines()
    ]
    assert [p["row"] for p in planned] == list(range(2, 12))
    for p, row in zip(planned, rows, strict=True):
        assert p["method"] == "PATCH"
        assert p["url"] == f"{emulator.url}/beta/deviceManagement/autopilotEvents/{row['id']}"
        assert p["body"] == expected_body(row)
    results = read_csv(tmp_path / "d" / "results.csv")
    assert {r["outcome"] for r in results} == {"planned"}
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["counts"]["planned"] == 10 and summary["requests_sent"] == 0
    assert not (tmp_path / "d" / "state.sqlite").exists()


def test_graph_unreachable_aborts_with_exit_3(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rows = update_rows([f"00000000-0000-4000-8000-{i:012d}" for i in range(5)])
    src = write_csv(tmp_path / "in.csv", rows)
    result = cli(
        "run", src, "--graph-url", f"http://127.0.0.1:{port}", "--max-retries", "1",
        "--out", tmp_path / "r", "--mode", "single",
    )  # fmt: skip
    assert result.returncode == 3, result.stderr[-2000:]
    assert "unreachable" in result.stdout + result.stderr
    results = read_csv(tmp_path / "r" / "results.csv")
    _assert_one_line_per_row(results, 2, 5)
    assert {r["outcome"] for r in results} <= {"not_attempted", "failed"}
    assert "not_attempted" in {r["outcome"] for r in results}


def test_rejected_token_aborts_with_exit_3(emulator: EmulatorServer, tmp_path: Path) -> None:
    ids = [e["id"] for e in emulator.store.list()][:5]
    src = write_csv(tmp_path / "in.csv", update_rows(ids))
    result = cli("run", src, "--graph-url", emulator.url, "--out", tmp_path / "r", token="wrong")
    assert result.returncode == 3, result.stderr[-2000:]
    results = read_csv(tmp_path / "r" / "results.csv")
    assert {r["outcome"] for r in results} == {"not_attempted"}
    assert "wrong" not in (tmp_path / "r" / "run.log").read_text()


def test_results_and_summary_shape(emulator: EmulatorServer, tmp_path: Path) -> None:
    ids = [e["id"] for e in emulator.store.list()][:5]
    rows = update_rows(ids)
    rows.append({"id": ids[0].upper(), **{k: "" for k in rows[0] if k != "id"}})  # duplicate
    src = write_csv(tmp_path / "in.csv", rows)
    result = cli("run", src, "--graph-url", emulator.url, "--out", tmp_path / "r")
    assert result.returncode == 1
    raw = (tmp_path / "r" / "results.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfrow,id,outcome,status,error_code,error_message,")
    results = read_csv(tmp_path / "r" / "results.csv")
    assert [r["outcome"] for r in results] == ["invalid", *["updated"] * 4, "invalid"]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    for key in ("counts", "started", "ended", "elapsed_seconds", "rows_per_second",
                "requests_sent", "throttled_429", "retries", "mode", "input_sha256",
                "tool_version"):  # fmt: skip
        assert key in summary
    log_lines = [json.loads(x) for x in (tmp_path / "r" / "run.log").read_text().splitlines()]
    assert log_lines[0]["msg"].startswith("run started: in.csv -> ")
    assert log_lines[0]["mode"] == "batch"  # the options travel as fields of the JSON line
    assert "run folder" in result.stdout


def test_report_key_columns_are_trimmed_like_the_values(tmp_path: Path) -> None:
    # ` SN1 ` is sent as SN1; results.csv and changes.csv name the device the same way.
    src = write_csv(
        tmp_path / "in.csv",
        [
            {
                "id": "e1",
                "deviceSerialNumber": "  SN1 ",
                "managedDeviceName": "PC1 ",
                "osVersion": "10",
            }
        ],
    )
    result = cli("run", src, "--dry-run", "--out", tmp_path / "d", "--quiet")
    assert result.returncode == 0, result.stderr
    [line] = read_csv(tmp_path / "d" / "results.csv")
    assert (line["deviceSerialNumber"], line["managedDeviceName"]) == ("SN1", "PC1")
    assert {c["key"] for c in read_csv(tmp_path / "d" / "changes.csv")} == {"SN1"}
