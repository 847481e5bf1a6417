"""A resume right after an interruption at full speed meets no 429 (the last window carries over).

Graph's window still holds what the interrupted process sent; the resumed process starts its
limiter from the send times the ledger kept. The real CLI runs as a subprocess against the
emulator on 127.0.0.1.

The emulator answers as Intune does (GRAPH.md, "How Intune really answers": PATCH 204, the
current schema, pages of 50, 100 ms of latency), with Graph's four budgets scaled from 20 s to
5 s windows in the same proportions (100 writes per app, 200 per tenant, 1000 and 2000 requests)
so a test takes seconds. The tool runs with the matching `--write-limit 100/5`, as a user runs
with Graph's limit; nothing is softened.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from batch.emulator import EmulatorConfig, EmulatorServer, EventStore
from batch.model import Rate
from tests.conftest import EmulatorFactory
from tests.e2e import cli_env, read_csv, start_cli, update_rows, write_csv

pytestmark = pytest.mark.e2e

TOKEN = "test-token"
WINDOW = 5.0
LIMIT = f"100/{WINDOW:g}"
# Two windows' worth: the interruption comes after the first, the resume must wait for room.
ROWS = 200


def _emulator(
    factory: EmulatorFactory, seed: int, events: int = ROWS
) -> tuple[EmulatorServer, list[str]]:
    store = EventStore()
    ids = store.seed(events, seed=seed)
    config = EmulatorConfig(
        token=TOKEN,
        seed=seed,
        write_limit=Rate(100, WINDOW),
        tenant_write_limit=Rate(200, WINDOW),
        read_limit=Rate(1000, WINDOW),
        tenant_read_limit=Rate(2000, WINDOW),
        # The real service's answers, where the emulator's defaults are friendlier.
        patch_status=204,
        schema="current",
        page_size=50,
        latency_ms=100,
    )
    return factory(config, store=store), ids


def _stats(server: EmulatorServer) -> dict[str, Any]:
    return dict(server.stats())


def _interrupt_at_full_speed(
    server: EmulatorServer, proc: subprocess.Popen[str], signum: int = signal.SIGINT
) -> str:
    """Signal once the first window's budget is spent; returns the interrupted run's stdout."""
    deadline = time.monotonic() + 60
    while _stats(server)["writes"] < 100:
        if proc.poll() is not None:
            pytest.fail(f"ended (exit {proc.returncode}) too early: {proc.communicate()[1]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"fewer than 100 writes after 60 s: {proc.communicate()[1][-2000:]}")
        time.sleep(0.01)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == (-signum if signum == signal.SIGKILL else 130), err[-2000:]
    return out


def _carried(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "run.log").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if str(r.get("msg", "")).startswith("resumed:")]


# SIGKILL too: each grant is committed before its request leaves, so even `kill -9` loses none.
@pytest.mark.parametrize(
    "signum",
    [pytest.param(signal.SIGINT, id="sigint"), pytest.param(signal.SIGKILL, id="kill-9")],
)
def test_run_resume_right_after_an_interruption_meets_no_429(
    emulator_factory: EmulatorFactory, tmp_path: Path, signum: int
) -> None:
    server, ids = _emulator(emulator_factory, seed=41)
    src = write_csv(tmp_path / "in.csv", update_rows(ids))
    out = tmp_path / "run"
    args = [
        "run", str(src), "--graph-url", server.url, "--write-limit", LIMIT, "--out", str(out),
        "--json", "--quiet",
    ]  # fmt: skip
    first = _interrupt_at_full_speed(server, start_cli(args, cli_env(TOKEN)), signum)
    if signum == signal.SIGINT:
        assert json.loads(first)["counts"]["updated"] >= 100
    assert _stats(server)["throttled"] == 0

    resumed = start_cli([*args, "--resume"], cli_env(TOKEN))
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr[-2000:]
    stats = _stats(server)
    assert stats["throttled"] == 0, stats
    assert json.loads(stdout)["throttled_429"] == 0
    assert {r["outcome"] for r in read_csv(out / "results.csv")} == {"updated"}
    assert len(server.stats()["patches"]) == ROWS  # type: ignore[arg-type]
    # The resume did start inside the interrupted run's window (else this proves nothing).
    (carried,) = _carried(out)
    assert carried["writes"] >= 100 - 20, carried


def test_job_run_resume_right_after_sigint_and_the_next_file_meet_no_429(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    """The next `job run` resumes the file first, then takes a new one: one budget for both."""
    server, ids = _emulator(emulator_factory, seed=42, events=ROWS + 50)
    drop = tmp_path / "drop"
    drop.mkdir()
    write_csv(drop / "big.csv", update_rows(ids[:ROWS]))
    job_file = tmp_path / "job.toml"
    job_file.write_text(
        f'name = "nightly"\n[input]\nfolder = "drop"\nsettle_seconds = 0\n'
        f'[run]\nwrite_limit = "{LIMIT}"\n'
        f'[graph]\ngraph_url = "{server.url}"\n'
        f'[credentials]\naccess_token_env = "JOB_TOKEN"\n'
        f'[output]\nroot = "out"\narchive = "done"\n',
        encoding="utf-8",
    )
    env = cli_env(None, {"JOB_TOKEN": TOKEN})
    args = ["job", "run", str(job_file), "--json"]
    first = json.loads(_interrupt_at_full_speed(server, start_cli(args, env)))
    assert [f["status"] for f in first["files"]] == ["interrupted"]
    assert _stats(server)["throttled"] == 0

    write_csv(drop / "small.csv", update_rows(ids[ROWS:], seed=4))
    again = start_cli(args, env)
    stdout, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr[-2000:]
    second = json.loads(stdout)
    assert [(Path(f["file"]).name, f["resumed"]) for f in second["files"]] == [
        ("big.csv", True),
        ("small.csv", False),
    ]
    stats = _stats(server)
    assert stats["throttled"] == 0, stats
    assert len(server.stats()["patches"]) == ROWS + 50  # type: ignore[arg-type]
    (carried,) = _carried(Path(second["files"][0]["run_dir"]))
    assert carried["writes"] >= 100 - 20, carried
