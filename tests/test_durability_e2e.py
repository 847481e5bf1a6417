"""Durability end to end: `kill -9`, SIGTERM and `--resume` with the real CLI and the emulator.

Limits are scaled down (200 writes per second) so a 1,000-row run takes about five seconds.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from batch.emulator import EmulatorServer
from tests.conftest import EmulatorFactory
from tests.e2e import (
    cli,
    cli_env,
    expected_body,
    read_csv,
    seeded_emulator,
    start_cli,
    update_rows,
    write_csv,
)

pytestmark = pytest.mark.e2e

TOKEN = "test-token"
ROWS = 1000
TOOL_LIMIT = "200/1"
# With the concurrency, the batch size bounds how many writes can be in flight at a kill.
BATCH_SIZE = 20


def _run_args(
    src: Path, server: EmulatorServer, out: Path, mode: str, *extra: str, concurrency: int = 4
) -> list[str]:
    return [
        "run", str(src), "--graph-url", server.url, "--mode", mode, "--write-limit", TOOL_LIMIT,
        "--concurrency", str(concurrency), "--batch-size", str(BATCH_SIZE), "--out", str(out),
        "--json", "--quiet", *extra,
    ]  # fmt: skip


def _patches(server: EmulatorServer) -> Counter[str]:
    patches = server.stats()["patches"]
    assert isinstance(patches, dict)
    return Counter({str(k): int(v) for k, v in patches.items()})  # type: ignore[arg-type]


def _wait_for_writes(
    server: EmulatorServer, proc: subprocess.Popen[str], at_least: int, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while sum(_patches(server).values()) < at_least:
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before the kill point: {err}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail(f"fewer than {at_least} writes after {timeout} s")
        time.sleep(0.01)


def _ledger_finished(out: Path) -> dict[int, str]:
    """Row number → event id of every row the ledger holds as finished successfully."""
    db = sqlite3.connect(out / "state.sqlite")
    try:
        return {
            int(n): str(i)
            for n, i in db.execute(
                "SELECT number, event_id FROM rows WHERE state IN ('updated', 'unchanged')"
            )
        }
    finally:
        db.close()


def _results_rows(out: Path) -> list[dict[str, str]]:
    path = out / "results.csv"
    return read_csv(path) if path.exists() else []


def _assert_complete(out: Path, server: EmulatorServer, rows: list[dict[str, str]]) -> None:
    results = read_csv(out / "results.csv")
    assert [int(r["row"]) for r in results] == list(range(2, 2 + len(rows)))
    assert {r["outcome"] for r in results} == {"updated"}
    for row in rows:
        event = server.store.get(row["id"])
        assert event is not None
        for name, value in expected_body(row).items():
            assert event[name] == value, (row["id"], name)


# Single mode without before-images (one PATCH per row, nothing read), batch mode with them
# (the default: a read, the before-image committed, then the write): both resume paths.
@pytest.mark.parametrize(
    ("mode", "extra", "concurrency"),
    [
        pytest.param("single", ("--no-backup",), 8, id="single"),
        pytest.param("batch", (), 4, id="batch-with-backup"),
    ],
)
def test_kill_9_at_random_points_then_resume(
    emulator_factory: EmulatorFactory,
    tmp_path: Path,
    mode: str,
    extra: tuple[str, ...],
    concurrency: int,
) -> None:
    """Three `kill -9`s (in the first run and in resumed ones), then `--resume` to the end."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    server, ids = seeded_emulator(emulator_factory, ROWS, seed=5 if mode == "single" else 6)
    rows = update_rows(ids, seed=seed % 1000)
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "run"
    args = _run_args(src, server, out, mode, *extra, concurrency=concurrency)
    spans = ((0.05, 0.3), (0.35, 0.6), (0.65, 0.9))
    kill_points = [int(ROWS * rng.uniform(lo, hi)) for lo, hi in spans]
    snapshots: list[tuple[dict[int, str], Counter[str]]] = []
    for i, point in enumerate(kill_points):
        proc = start_cli([*args, "--resume"] if i else args, cli_env(TOKEN))
        _wait_for_writes(server, proc, point)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        finished = _ledger_finished(out)
        at_kill = _patches(server)
        # results.csv is written after the ledger commit: it never shows a row the ledger lacks.
        written = {int(r["row"]) for r in _results_rows(out) if r["outcome"] == "updated"}
        assert written <= set(finished), f"seed {seed}"
        snapshots.append((finished, at_kill))
    assert snapshots[-1][0], f"seed {seed}: nothing finished before the last kill"

    final = cli(*args, "--resume", timeout=120)
    assert final.returncode == 0, final.stderr[-2000:]
    summary = json.loads(final.stdout)
    assert summary["counts"]["updated"] == ROWS and summary["resumed"] is True
    _assert_complete(out, server, rows)

    patches = _patches(server)
    first_finished = snapshots[0][0]
    assert all(patches[event_id] == 1 for event_id in first_finished.values()), f"seed {seed}"
    for finished, at_kill in snapshots:
        # A row finished before a kill is never sent again afterwards.
        resent = [i for i in finished.values() if patches[i] != at_kill[i]]
        assert not resent, f"seed {seed}: {len(resent)} finished rows were sent again"
    # Only requests in flight at a kill can be sent twice.
    in_flight_max = concurrency * (BATCH_SIZE if mode == "batch" else 1)
    assert set(patches) == set(ids)
    assert sum(patches.values()) - ROWS <= len(kill_points) * in_flight_max, f"seed {seed}"


def test_sigterm_stops_with_130_and_resume_completes_but_not_after_an_edit(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    n = 600
    server, ids = seeded_emulator(emulator_factory, n, seed=8)
    rows = update_rows(ids)
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "run"
    args = _run_args(src, server, out, "batch")
    proc = start_cli(args, cli_env(TOKEN))
    _wait_for_writes(server, proc, n // 4)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    took = time.monotonic() - signalled
    assert proc.returncode == 130, stderr[-2000:]
    assert took < 20, f"took {took:.1f} s to stop"  # STOP_GRACE_SECONDS is 10

    summary = json.loads(stdout)
    assert summary == json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["exit_code"] == 130 and "SIGTERM" in summary["stopped_because"]
    results = read_csv(out / "results.csv")
    assert [int(r["row"]) for r in results] == list(range(2, 2 + n))
    outcomes = Counter(r["outcome"] for r in results)
    assert set(outcomes) == {"updated", "not_attempted"}
    assert summary["counts"]["updated"] == outcomes["updated"]
    assert summary["counts"]["not_attempted"] == outcomes["not_attempted"]
    assert read_csv(out / "failures.csv") == []
    for line in (out / "run.log").read_text(encoding="utf-8").splitlines():
        json.loads(line)
    updated_first = {r["id"] for r in results if r["outcome"] == "updated"}

    # The input edited meanwhile: --resume refuses, and sends nothing.
    original = src.read_bytes()
    edited = [dict(r) for r in rows]
    edited[5]["userPrincipalName"] = "someone.else@contoso.com"
    write_csv(src, edited)
    requests_before = server.stats()["requests"]
    refused = cli(*args, "--resume")
    assert refused.returncode == 2
    assert "input file changed" in refused.stderr
    assert server.stats()["requests"] == requests_before

    src.write_bytes(original)
    resumed = cli(*args, "--resume", timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_complete(out, server, rows)
    patches = _patches(server)
    assert all(patches[i] == 1 for i in updated_first)


def test_resume_after_a_kill_before_the_ledger_had_its_metadata(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    """A run killed between creating state.sqlite and recording the input: resume starts over."""
    from batch.ledger import Ledger

    server, ids = seeded_emulator(emulator_factory, 20, seed=10)
    rows = update_rows(ids)
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "run"
    out.mkdir()
    Ledger(out / "state.sqlite").close()  # what such a kill leaves behind
    resumed = cli(*_run_args(src, server, out, "batch"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_complete(out, server, rows)


def test_sigterm_while_senders_wait_for_budget_stops_at_once(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    """At Graph's pace senders mostly wait for budget: a stop must not wait for it (both modes)."""
    runs = {}
    for mode in ("single", "batch"):
        server, ids = seeded_emulator(emulator_factory, 200, seed=11)
        src = write_csv(tmp_path / f"{mode}.csv", update_rows(ids))
        args = _run_args(src, server, tmp_path / mode, mode)
        args[args.index("--write-limit") + 1] = "40/30"  # the budget is spent in the first second
        runs[mode] = (server, start_cli(args, cli_env(TOKEN)))
    for server, proc in runs.values():
        _wait_for_writes(server, proc, 40)
        proc.send_signal(signal.SIGTERM)
    for mode, (_, proc) in runs.items():
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, (mode, stderr[-2000:])
        log = (tmp_path / mode / "run.log").read_text(encoding="utf-8")
        # Nothing was left for the grace period (STOP_GRACE_SECONDS) to cut off.
        assert "abandoning" not in log, mode
        results = read_csv(tmp_path / mode / "results.csv")
        outcomes = Counter(r["outcome"] for r in results)
        assert outcomes == {"updated": 40, "not_attempted": 160}, mode


def test_batch_mode_aborts_when_graph_is_unreachable_and_resumes_later(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    """Nothing answers: exit 3 with every row not_attempted (not failed), then --resume works."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server, ids = seeded_emulator(emulator_factory, 60, seed=12)
    rows = update_rows(ids)
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "run"
    args = _run_args(src, server, out, "batch", "--no-backup", "--max-retries", "1")
    args[args.index("--graph-url") + 1] = f"http://127.0.0.1:{port}"
    aborted = cli(*args)
    assert aborted.returncode == 3, aborted.stderr[-2000:]
    assert "unreachable" in json.loads(aborted.stdout)["stopped_because"]
    assert {r["outcome"] for r in read_csv(out / "results.csv")} == {"not_attempted"}

    args[args.index("--graph-url") + 1] = server.url  # Graph is back
    resumed = cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_complete(out, server, rows)
