"""Jobs: the job file, the lock, the drop folder, `job check`, `job run` against the emulator."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from batch.auth import MsalAppTokenProvider, StaticTokenProvider
from batch.cli import app
from batch.emulator import EmulatorServer
from batch.errors import ConfigError, LockHeld
from batch.jobs import (
    FileResult,
    JobLock,
    JobState,
    candidates,
    file_digest,
    input_keys,
    job_exit_code,
    load_job,
    run_keys,
)
from batch.model import Rate
from tests.conftest import EmulatorFactory
from tests.e2e import cli_env, read_csv, seeded_emulator, start_cli, update_rows, write_csv

REPO = Path(__file__).resolve().parent.parent
TOKEN = "test-token"


def _job(tmp_path: Path, text: str, name: str = "job.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_job(_job(tmp_path, text))
    assert caught.value.exit_code == 2
    return str(caught.value)


# --- the job file ------------------------------------------------------------------------------


def test_the_documented_examples_load() -> None:
    one_off = load_job(REPO / "jobs" / "one-off-migration.toml")
    assert one_off.name == "migration-2026"
    assert one_off.input_file == (REPO / "migration" / "autopilot-events.xlsx").resolve()
    assert one_off.columns == {"Serial": "deviceSerialNumber", "Device": "managedDeviceName"}
    assert one_off.credentials.literals == {"AZURE_TENANT_ID": "contoso.onmicrosoft.com"}
    assert one_off.credentials.from_env["AZURE_CLIENT_CERTIFICATE_PASSWORD"] == (
        "AUTOPILOT_CERTIFICATE_PASSWORD"
    )
    options = one_off.run_options(one_off.input_file or Path(), out=None, resume=False)
    assert options.source.reading.sheet == "Updates" and options.judging.only_changed is True
    assert options.sending.write_limit == Rate(100, 20)

    nightly = load_job(REPO / "jobs" / "nightly-drop-folder.toml")
    assert nightly.folder == Path("/srv/autopilot/drop")
    assert nightly.globs == ("*.csv", "*.xlsx") and nightly.settle_seconds == 120
    assert nightly.archive == Path("/srv/autopilot/done")
    assert nightly.state_dir == Path("/var/lib/autopilot-batch/nightly/_job-nightly-autopilot")
    assert nightly.credentials.from_env == {
        "AZURE_TENANT_ID": "AUTOPILOT_TENANT_ID",
        "AZURE_CLIENT_ID": "AUTOPILOT_CLIENT_ID",
        "AZURE_CLIENT_SECRET": "AUTOPILOT_CLIENT_SECRET",
    }
    assert nightly.notify.file == Path("/var/log/autopilot-batch/nightly-summary.log")


def test_relative_paths_and_defaults(tmp_path: Path) -> None:
    job = load_job(_job(tmp_path, '[input]\nfolder = "drop"\n', name="nightly.toml"))
    assert job.name == "nightly"
    assert job.folder == tmp_path / "drop"
    assert job.output_root == tmp_path / "runs" / "nightly"
    assert job.state_dir == tmp_path / "runs" / "nightly" / "_job-nightly"
    assert job.log_file == job.state_dir / "job.log"
    assert job.archive is None and job.notify.stdout is True
    assert job.endpoints.graph_root == "https://graph.microsoft.com"
    assert not job.credentials.declared


# CLI parameters of `run` that a job sets elsewhere than [run]/[input] under the same name.
_RUN_PARAMS_ELSEWHERE = {
    "input": "[input] file / folder",
    "out": "[output] root (one run folder per file)",
    "resume": "automatic",
    "map_file": "[input] map",
    "cloud": "[graph] cloud",
    "graph_url": "[graph] graph_url",
    "authority_host": "[graph] authority_host",
    "device_code": "[credentials] device_code",
    "token_cache": "[credentials] token_cache",
    "managed_identity": "[credentials] managed_identity",
    "managed_identity_client_id": "[credentials] managed_identity_client_id",
    "azure_cli": "[credentials] azure_cli",
    "as_json": "job run --json",
    "quiet": "job run --quiet",
}


def test_every_option_of_run_can_come_from_a_job_file(tmp_path: Path) -> None:
    """CONTRACT.md: every option of `run` can come from a job file (kept honest here)."""
    command = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
    names = {p.name for p in command.params}
    keys = set(run_keys()) | set(input_keys())
    missing = sorted(n for n in names if n not in keys and n not in _RUN_PARAMS_ELSEWHERE)
    assert not missing, f"run options a job file cannot set: {missing}"

    # Every [run] key set to a value that is not its default reaches RunOptions.
    samples: dict[str, Any] = {
        "mode": "single",
        "batch_size": 7,
        "write_limit": "50/10",
        "read_limit": "500/10",
        "concurrency": 3,
        "max_retries": 2,
        "pick": "latest",
    }
    from batch.options import RunOptions, Source

    defaults = RunOptions(source=Source(file=Path("x"))).flat()
    lines = ["[input]", 'file = "in.csv"', 'key = "deviceSerialNumber"', "[run]"]
    for key, hint in run_keys().items():
        value = samples.get(key, not defaults[key] if hint is bool else None)
        assert value is not None, f"add a sample value for the new [run] key {key!r}"
        lines.append(f"{key} = {json.dumps(value)}")
    job = load_job(_job(tmp_path, "\n".join(lines)))
    options = job.run_options(tmp_path / "in.csv", out=None, resume=False)
    flat = options.flat()
    for key in run_keys():
        value = flat[key]
        expected = samples.get(key, not defaults[key])
        assert (str(value) if isinstance(value, Rate) else value) == expected, key


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            '[input]\nfile = "a.csv"\n[run]\nconcurency = 4',
            "[run]: unknown key 'concurency' (did you mean 'concurrency'?)",
            id="misspelt",
        ),
        pytest.param(
            'mode = "single"\n[input]\nfile = "a.csv"',
            "unknown key 'mode' (did you mean [run] mode?)",
            id="wrong-table",
        ),
        pytest.param(
            '[inputs]\nfile = "a.csv"', "unknown key 'inputs' (did you mean 'input'?)", id="table"
        ),
        pytest.param(
            '[input]\nfile = "a.csv"\n[graph]\ngraph_uri = "https://x"',
            "did you mean 'graph_url'?",
            id="graph",
        ),
        pytest.param(
            '[input]\nfile = "a.csv"\n[run]\ncloud = "usgov"',
            "did you mean [graph] cloud?",
            id="run-vs-graph",
        ),
        pytest.param('[input]\nfile = "a.csv"\nfolder = "d"', "either file or folder", id="both"),
        pytest.param("[run]\nmode = 'batch'", "[input]: needs file", id="no-input"),
        pytest.param(
            '[input]\nfile = "a.csv"\n[run]\nwrite_limit = "fast"',
            "[run] write_limit: 'fast' is not a rate like 100/20",
            id="rate",
        ),
        pytest.param(
            '[input]\nfile = "a.csv"\n[run]\nmode = "turbo"',
            "[run] mode: must be one of 'single', 'batch'",
            id="literal",
        ),
        pytest.param(
            '[input]\nfile = "a.csv"\n[run]\nconcurrency = "4"',
            "[run] concurrency: must be a whole number",
            id="int",
        ),
        pytest.param(
            '[input]\nfile = "a.csv"\n[run]\nbatch_size = 50',
            "--batch-size must be between 1 and 20",
            id="checked",
        ),
        pytest.param(
            '[input]\nfile = "a.csv"\n[columns]\n"Serial" = "serialNumber"',
            "[columns] 'Serial': 'serialNumber' is not a property (did you mean",
            id="columns",
        ),
        pytest.param(
            '[input]\nfolder = "d"\nglob = "../*.csv"', "patterns are relative", id="glob"
        ),
        pytest.param('name = "a b"\n[input]\nfile = "a.csv"', "name: must be", id="name"),
        pytest.param("[input\n", "not valid TOML", id="toml"),
    ],
)
def test_a_bad_job_file_is_a_config_error_naming_the_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    message = _config_error(tmp_path, text)
    assert expected in message
    assert str(tmp_path / "job.toml") in message


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param('secret = "Sup3r~Secret.Value"', id="secret"),
        pytest.param('client_secret = "Sup3r~Secret.Value"', id="client_secret"),
        pytest.param('certificate_password = "Sup3r~Secret.Value"', id="password"),
        pytest.param('access_token = "Sup3r~Secret.Value"', id="token"),
        pytest.param('secret_env = "Sup3r~Secret.Value"', id="secret-as-name"),
    ],
)
def test_a_literal_secret_is_refused_without_repeating_it(tmp_path: Path, credentials: str) -> None:
    message = _config_error(tmp_path, f'[input]\nfile = "a.csv"\n[credentials]\n{credentials}\n')
    assert "Sup3r" not in message
    assert "secret" in message.lower() and "environment variable" in message


def test_a_secret_outside_credentials_is_refused_too(tmp_path: Path) -> None:
    message = _config_error(tmp_path, '[input]\nfile = "a.csv"\n[run]\nclient_secret = "Sup3r"\n')
    assert "must not hold secrets" in message and "Sup3r" not in message


def test_credentials_come_from_the_named_variables_only(tmp_path: Path) -> None:
    job = load_job(
        _job(
            tmp_path,
            '[input]\nfile = "a.csv"\n[credentials]\ntenant_id = "contoso.onmicrosoft.com"\n'
            'client_id_env = "JOB_CLIENT"\nsecret_env = "JOB_SECRET"\n',
        )
    )
    env = {
        "JOB_CLIENT": "client-1",
        "JOB_SECRET": "s3cret",
        "AZURE_CLIENT_SECRET": "ambient",
        "GRAPH_ACCESS_TOKEN": "ambient-token",
        "HOME": "/home/x",
    }
    mapped = job.credentials.environment(env)
    assert mapped["AZURE_TENANT_ID"] == "contoso.onmicrosoft.com"
    assert mapped["AZURE_CLIENT_ID"] == "client-1"
    assert mapped["AZURE_CLIENT_SECRET"] == "s3cret"
    assert "GRAPH_ACCESS_TOKEN" not in mapped and mapped["HOME"] == "/home/x"
    tokens = job.tokens(env)
    assert isinstance(tokens, MsalAppTokenProvider) and tokens.credential == "client secret"

    with pytest.raises(ConfigError, match="secret_env names JOB_SECRET, which is not set"):
        job.tokens({"JOB_CLIENT": "client-1"})


def test_without_a_credentials_table_the_standard_variables_count(tmp_path: Path) -> None:
    job = load_job(_job(tmp_path, '[input]\nfile = "a.csv"\n'))
    assert isinstance(job.tokens({"GRAPH_ACCESS_TOKEN": "t"}), StaticTokenProvider)
    dry = load_job(_job(tmp_path, '[input]\nfile = "a.csv"\n[run]\ndry_run = true\n'))
    assert dry.tokens({}) is None  # a plain dry run signs in nowhere


# --- the lock and the state --------------------------------------------------------------------


def test_the_lock_refuses_a_second_holder_and_names_the_first(tmp_path: Path) -> None:
    path = tmp_path / "state" / "job.lock"
    with JobLock(path, "nightly"):
        record = json.loads(path.read_text())
        assert record["pid"] == os.getpid()
        with pytest.raises(LockHeld) as caught:
            JobLock(path, "nightly").acquire()
        assert caught.value.exit_code == 75
        assert f"job nightly is already running by pid {os.getpid()}" in str(caught.value)
    assert path.read_text() == ""  # released: the record is cleared, the file stays
    with JobLock(path, "nightly") as again:
        assert again.taken_over is None


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "job.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from batch.jobs import JobLock\n"
            f"JobLock(Path({str(path)!r}), 'j').acquire(); print('locked', flush=True); "
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockHeld, match=f"pid {holder.pid}"):
            JobLock(path, "j").acquire()
    finally:
        holder.kill()
        holder.communicate()
    lock = JobLock(path, "j")
    lock.acquire()  # the kernel released the dead holder's flock
    try:
        assert lock.taken_over is not None and lock.taken_over["pid"] == holder.pid
    finally:
        lock.release()


def test_state_remembers_files_by_content_per_mode(tmp_path: Path) -> None:
    state = JobState(tmp_path / "files.sqlite", dry_run=False)
    state.start("abc", tmp_path / "a.csv", tmp_path / "run-a")
    assert [r.sha256 for r in state.resumable()] == ["abc"]
    state.finish("abc", "done", exit_code=0, counts={"updated": 3})
    record = state.get("abc")
    assert record is not None and record.state == "done" and state.resumable() == []
    state.close()
    dry = JobState(tmp_path / "files.sqlite", dry_run=True, readonly=True)
    assert dry.get("abc") is None  # a dry run does not count as processed for a real one
    dry.close()


def test_drop_folder_order_settling_and_ignored_files(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    (drop / "done").mkdir(parents=True)
    now = time.time()
    for name, age in [
        ("b.csv", 300),
        ("c.csv", 100),
        ("a.csv", 100),
        ("fresh.csv", 1),
        ("~$book.xlsx", 300),
        (".hidden.csv", 300),
        ("upload.csv.part", 300),
        ("notes.txt", 300),
        ("done/old.csv", 300),
        ("sub.xlsx", 200),
    ]:
        path = drop / name
        path.write_text("id\n", encoding="utf-8")
        os.utime(path, (now - age, now - age))
    job = load_job(
        _job(
            tmp_path,
            '[input]\nfolder = "drop"\nglob = ["**/*.csv", "*.xlsx"]\nsettle_seconds = 60\n'
            '[output]\narchive = "drop/done"\n',
        )
    )
    ready, settling = candidates(job, now=now)
    assert [p.name for p in ready] == ["b.csv", "sub.xlsx", "a.csv", "c.csv"]
    assert [p.name for p in settling] == ["fresh.csv"]


def test_job_exit_code_summarises_the_files() -> None:
    def f(status: Any) -> FileResult:
        return FileResult(Path("x"), "", status, 0)

    assert job_exit_code([]) == 0
    assert job_exit_code([f("ok"), f("ok")]) == 0
    assert job_exit_code([f("ok"), f("rows_failed")]) == 1
    assert job_exit_code([f("rejected")]) == 1
    assert job_exit_code([f("rows_failed"), f("aborted")]) == 3
    assert job_exit_code([f("aborted"), f("interrupted")]) == 130
    assert job_exit_code([f("ok")], interrupted=True) == 130


# --- job run in-process (dry runs: no Graph) ---------------------------------------------------


def _dry_job(tmp_path: Path, inputs: str, extra: str = "") -> Path:
    return _job(
        tmp_path,
        f'name = "dry"\n{inputs}\n[run]\ndry_run = true\n[output]\nroot = "out"\n'
        f'archive = "done"\n{extra}',
    )


def _ids(n: int, start: int = 0) -> list[str]:
    return [f"00000000-0000-4000-8000-{i:012d}" for i in range(start, start + n)]


def test_a_dry_run_job_plans_each_file_once_and_reports_unusable_files(tmp_path: Path) -> None:
    from batch.jobs import run_job

    drop = tmp_path / "drop"
    drop.mkdir()
    bad_rows = update_rows(_ids(3, 10))
    bad_rows[1]["enrollmentState"] = "Enroled"
    _drop(drop / "a-good.csv", update_rows(_ids(4)), age=30)
    _drop(drop / "b-bad-rows.csv", bad_rows, age=20)
    (drop / "c-broken.csv").write_text("serial\n1\n", encoding="utf-8")
    job = load_job(_dry_job(tmp_path, '[input]\nfolder = "drop"\nsettle_seconds = 0'))
    assert job.tokens({}) is None

    report = run_job(job, env={})
    assert [(f.path.name, f.status) for f in report.files] == [
        ("a-good.csv", "ok"),
        ("b-bad-rows.csv", "rows_failed"),
        ("c-broken.csv", "rejected"),
    ]
    assert report.exit_code == 1
    assert "unknown column 'serial'" in report.files[2].error
    planned = (report.files[0].run_dir or Path()) / "requests.jsonl"
    assert len(planned.read_text(encoding="utf-8").splitlines()) == 4
    bad_dir = report.files[1].run_dir
    assert bad_dir is not None
    # The line cron mails names where the bad rows are.
    assert report.line() == (
        "job dry: 3 files (1 ok, 1 with failed or invalid rows, 1 unreadable); "
        f"rows: invalid 1, planned 6; failures in {bad_dir / 'failures.csv'}; exit 1"
    )
    page = (job.log_file.parent / "job.html").read_text(encoding="utf-8")
    assert "b-bad-rows.csv" in page and "with failed or invalid rows" in page
    assert f'href="../{bad_dir.name}/report.html"' in page
    assert "rows_failed" not in page  # an internal word, not for people
    assert sorted(p.name for p in drop.iterdir()) == [
        "a-good.csv",
        "b-bad-rows.csv",
        "c-broken.csv",
    ]
    assert not (tmp_path / "done").exists()  # a dry run moves nothing

    # Next run: planned files are not planned again; the unusable one is reported until fixed.
    again = run_job(job, env={})
    assert [(f.path.name, f.status) for f in again.files] == [("c-broken.csv", "rejected")]
    assert again.skipped == 2 and again.exit_code == 1

    (drop / "c-broken.csv").write_text("id,userPrincipalName\nx1,a@b.c\n", encoding="utf-8")
    fixed = run_job(job, env={})
    assert [(f.path.name, f.status) for f in fixed.files] == [("c-broken.csv", "ok")]
    assert fixed.exit_code == 0 and fixed.counts() == {"planned": 1}
    # One run folder per file that was read (the broken one's first attempt never got one).
    runs = sorted(p.name.split("-", 1)[1] for p in (tmp_path / "out").iterdir())
    assert runs == ["a-good", "b-bad-rows", "c-broken", "dry"]  # and _job-dry


def test_a_one_off_job_with_inline_columns_and_a_notify_file(tmp_path: Path) -> None:
    from batch.jobs import run_job

    rows = [
        {"Event": i, "Serial": f"000{n}", "userPrincipalName": f"u{n}@x.com"}
        for n, i in enumerate(_ids(3))
    ]
    write_csv(tmp_path / "migration.csv", rows)
    job = load_job(
        _dry_job(
            tmp_path,
            '[input]\nfile = "migration.csv"\n[columns]\n"Event" = "id"\n'
            '"Serial" = "deviceSerialNumber"',
            '[notify]\nstdout = false\nfile = "summary.log"\n',
        )
    )
    report = run_job(job, env={})
    assert [f.status for f in report.files] == ["ok"]
    run_dir = report.files[0].run_dir
    assert run_dir is not None
    bodies = [json.loads(x)["body"] for x in (run_dir / "requests.jsonl").read_text().splitlines()]
    assert bodies[0] == {"deviceSerialNumber": "0000", "userPrincipalName": "u0@x.com"}
    assert (job.state_dir / "columns.toml").exists()
    assert run_job(job, env={}).line() == "job dry: no new files, 1 already processed; exit 0"
    lines = (tmp_path / "summary.log").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and lines[0].endswith("job dry: 1 file (1 ok); rows: planned 3; exit 0")

    (tmp_path / "migration.csv").unlink()  # processed (and, in a real run, archived): fine
    assert run_job(job, env={}).exit_code == 0
    other = load_job(_dry_job(tmp_path, '[input]\nfile = "missing.csv"'))
    with pytest.raises(ConfigError, match=r"missing\.csv does not exist"):
        run_job(other, env={})


# --- job check (in-process) --------------------------------------------------------------------


def _folder_job(tmp_path: Path, graph_url: str, extra: str = "") -> Path:
    # No before-images: what is tested here is the job, not the reads (tests/test_changes.py).
    return _job(
        tmp_path,
        f'name = "nightly"\n[input]\nfolder = "drop"\nsettle_seconds = 0\n'
        f'[run]\nwrite_limit = "200/1"\nconcurrency = 4\nbackup = false\n'
        f'[graph]\ngraph_url = "{graph_url}"\n'
        f'[credentials]\naccess_token_env = "JOB_TOKEN"\n'
        f'[output]\nroot = "out"\narchive = "done"\n{extra}',
    )


def test_job_check_reads_the_inputs_and_sends_nothing(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(6)]
    rows = update_rows(ids)
    rows[2]["enrollmentState"] = "Enroled"
    write_csv(drop / "a.csv", rows)
    (drop / "b.csv").write_text("serial\n1\n", encoding="utf-8")
    job_file = _folder_job(tmp_path, "http://127.0.0.1:9")
    runner = CliRunner()

    result = runner.invoke(app, ["job", "check", str(job_file)], env={"JOB_TOKEN": "t"})
    assert result.exit_code == 1, result.output
    assert "a.csv row 4: enrollmentState" in result.stderr
    assert "b.csv:" in result.stderr and "unknown column 'serial'" in result.stderr
    assert "new     " in result.stdout and "6 rows: 5 valid, 1 invalid, 0 skipped" in result.stdout
    assert "access token (GRAPH_ACCESS_TOKEN from $JOB_TOKEN)" in result.stdout
    assert "lock:        free" in result.stdout
    assert not (tmp_path / "out").exists()  # check writes nothing

    as_json = runner.invoke(app, ["job", "check", str(job_file), "--json"], env={"JOB_TOKEN": "t"})
    data = json.loads(as_json.stdout)
    assert data["exit_code"] == 1 and [f["action"] for f in data["files"]] == ["new", "new"]

    missing = runner.invoke(app, ["job", "check", str(job_file)], env={"JOB_TOKEN": ""})
    assert missing.exit_code == 2
    assert "access_token_env names JOB_TOKEN, which is not set" in missing.stderr

    bad = _job(tmp_path, '[input]\nfolder = "drop"\n[run]\nconcurency = 2\n', "bad.toml")
    result = runner.invoke(app, ["job", "check", str(bad)])
    assert result.exit_code == 2 and "Error:" in result.stderr and "concurrency" in result.stderr


# --- job run against the emulator (real CLI) ---------------------------------------------------


def _job_proc(job_file: Path, *args: str) -> subprocess.Popen[str]:
    return start_cli(["job", "run", str(job_file), *args], cli_env(None, {"JOB_TOKEN": TOKEN}))


def _job_run(job_file: Path, *args: str) -> tuple[int, str, str]:
    proc = _job_proc(job_file, *args)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def _patches(server: EmulatorServer) -> Counter[str]:
    patches = server.stats()["patches"]
    assert isinstance(patches, dict)
    return Counter({str(k): int(v) for k, v in patches.items()})  # type: ignore[arg-type]


def _log(job_file: Path) -> list[dict[str, Any]]:
    path = job_file.parent / "out" / "_job-nightly" / "job.log"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _drop(path: Path, rows: list[dict[str, str]], age: float = 0) -> Path:
    write_csv(path, rows)
    if age:
        stamp = time.time() - age
        os.utime(path, (stamp, stamp))
    return path


@pytest.mark.e2e
def test_overlapping_starts_run_once_and_each_file_is_processed_once(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    # The first file takes about three seconds, so the two starts surely overlap.
    server, ids = seeded_emulator(emulator_factory, 700, seed=21)
    drop = tmp_path / "drop"
    drop.mkdir()
    first_rows = update_rows(ids[:600])
    _drop(drop / "monday.csv", first_rows)
    job_file = _folder_job(tmp_path, server.url)

    # Two cron starts at once: exactly one runs, the other leaves at once with 75.
    procs = [_job_proc(job_file), _job_proc(job_file)]
    outcomes = [(p, *p.communicate(timeout=120)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in outcomes)
    assert codes == [0, 75], [err[-1000:] for _, _, err in outcomes]
    loser = next(err for p, _, err in outcomes if p.returncode == 75)
    assert "job nightly is already running by pid" in loser
    winner = next(out for p, out, _ in outcomes if p.returncode == 0)
    assert winner.strip() == "job nightly: 1 file (1 ok); rows: updated 600; exit 0"
    assert set(_patches(server)) == set(ids[:600]) and set(_patches(server).values()) == {1}
    assert (tmp_path / "done" / "monday.csv").exists() and not (drop / "monday.csv").exists()

    # The same file dropped again under another name, and a new file: only the new one is sent.
    shutil.copy(tmp_path / "done" / "monday.csv", drop / "monday-again.csv")
    _drop(drop / "tuesday.csv", update_rows(ids[600:], seed=3), age=5)
    code, out, err = _job_run(job_file, "--json")
    assert code == 0, err[-2000:]
    report = json.loads(out)
    assert [Path(f["file"]).name for f in report["files"]] == ["tuesday.csv"]
    assert report["skipped"] == 1 and report["counts"] == {"updated": 100}
    patches = _patches(server)
    assert set(patches) == set(ids) and set(patches.values()) == {1}
    results = read_csv(Path(report["files"][0]["run_dir"]) / "results.csv")
    assert len(results) == 100 and {r["outcome"] for r in results} == {"updated"}
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == [
        "monday-again.csv",
        "monday.csv",
        "tuesday.csv",
    ]
    messages = [line["msg"] for line in _log(job_file)]
    assert any("already running" in m for m in messages)  # the refused start is logged
    assert sum(m.startswith("job nightly: ") for m in messages) == 2  # one summary per run

    # Nothing new: nothing is sent.
    code, out, _ = _job_run(job_file)
    assert (code, out.strip()) == (0, "job nightly: no new files; exit 0")
    assert _patches(server) == patches


@pytest.mark.e2e
def test_an_interrupted_file_is_resumed_first_by_the_next_start(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    server, ids = seeded_emulator(emulator_factory, 550, seed=22)
    drop = tmp_path / "drop"
    drop.mkdir()
    _drop(drop / "big.csv", update_rows(ids[:500]), age=60)
    job_file = _folder_job(tmp_path, server.url)

    proc = _job_proc(job_file, "--json")
    deadline = time.monotonic() + 60
    while sum(_patches(server).values()) < 100 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    first = json.loads(out)
    assert first["interrupted"] is True
    assert [f["status"] for f in first["files"]] == ["interrupted"]
    run_dir = Path(first["files"][0]["run_dir"])
    done_before = {r["id"] for r in read_csv(run_dir / "results.csv") if r["outcome"] == "updated"}
    assert done_before and (drop / "big.csv").exists()  # not archived: not finished

    # A newer file arrives; the interrupted one goes first, in its own run folder.
    _drop(drop / "small.csv", update_rows(ids[500:], seed=4))
    code, out, err = _job_run(job_file, "--json")
    assert code == 0, err[-2000:]
    second = json.loads(out)
    assert [(Path(f["file"]).name, f["resumed"]) for f in second["files"]] == [
        ("big.csv", True),
        ("small.csv", False),
    ]
    assert Path(second["files"][0]["run_dir"]) == run_dir
    results = read_csv(run_dir / "results.csv")
    assert [int(r["row"]) for r in results] == list(range(2, 502))
    assert {r["outcome"] for r in results} == {"updated"}
    patches = _patches(server)
    assert set(patches) == set(ids)
    assert all(patches[i] == 1 for i in done_before)
    assert not (drop / "big.csv").exists() and not (drop / "small.csv").exists()


@pytest.mark.e2e
def test_a_job_killed_with_sigkill_leaves_a_lock_the_next_start_takes_over(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    server, ids = seeded_emulator(emulator_factory, 400, seed=23)
    drop = tmp_path / "drop"
    drop.mkdir()
    _drop(drop / "wed.csv", update_rows(ids))
    job_file = _folder_job(tmp_path, server.url)

    proc = _job_proc(job_file)
    deadline = time.monotonic() + 60
    while sum(_patches(server).values()) < 100 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    proc.kill()
    proc.communicate(timeout=30)
    lock = json.loads((tmp_path / "out" / "_job-nightly" / "job.lock").read_text())
    assert lock["pid"] == proc.pid  # the dead process's record is still there

    code, out, err = _job_run(job_file)
    assert code == 0, err[-2000:]
    assert out.strip() == "job nightly: 1 file (1 ok); rows: updated 400; exit 0"
    assert any(m["msg"].startswith(f"took over the lock of pid {proc.pid}") for m in _log(job_file))
    patches = _patches(server)
    assert set(patches) == set(ids)
    # Only the requests in flight at the kill can have been sent twice.
    assert sum(patches.values()) - len(ids) <= 4 * 20


# --- a drop folder takes only regular files really in it (issue 19) -----------------------------


def _secret(tmp_path: Path) -> Path:
    """A file only the job's account may read, whose first line must never be echoed."""
    secret = tmp_path / "private" / "secret.csv"
    secret.parent.mkdir()
    secret.write_text("TOPSECRET-hunter2,x\n1,2\n", encoding="utf-8")
    secret.chmod(0o600)
    return secret


def _special_files(drop: Path, tmp_path: Path) -> dict[str, str]:
    """Links, a FIFO, a device node and a socket in `drop`: name → what the refusal says."""
    expected = {}
    (drop / "evil.csv").symlink_to(_secret(tmp_path))
    expected["evil.csv"] = "a symbolic link"
    (drop / "dangling.csv").symlink_to(tmp_path / "nowhere.csv")
    expected["dangling.csv"] = "a symbolic link"
    os.mkfifo(drop / "pipe.csv")
    expected["pipe.csv"] = "a named pipe (FIFO)"
    try:
        os.mknod(drop / "null.csv", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        expected["null.csv"] = "a device"
    except (PermissionError, OSError):
        pass  # no CAP_MKNOD here: the other kinds still cover the rule
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(drop / "sock.csv"))
        expected["sock.csv"] = "a socket"
    except OSError:
        pass  # the path may be longer than a socket address allows
    finally:
        sock.close()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "linked.csv").write_text("id\n", encoding="utf-8")
    (drop / "sub").symlink_to(outside, target_is_directory=True)
    expected["linked.csv"] = "outside the folder"
    return expected


def test_the_folder_scan_refuses_links_fifos_devices_and_sockets_by_name(tmp_path: Path) -> None:
    from batch.jobs.plan import scan_folder

    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "good.csv").write_text("id\n", encoding="utf-8")
    expected = _special_files(drop, tmp_path)
    job = load_job(
        _job(
            tmp_path, '[input]\nfolder = "drop"\nglob = ["*.csv", "sub/*.csv"]\nsettle_seconds = 0'
        )
    )
    scan = scan_folder(job)
    assert [p.name for p in scan.ready] == ["good.csv"]
    refused = {p.name: why for p, why in scan.refused}
    assert set(refused) == set(expected)
    for name, kind in expected.items():
        assert kind in refused[name]
        assert "not opened" in refused[name]
    assert candidates(job) == (scan.ready, [])


def test_file_digest_refuses_what_was_swapped_in_after_the_scan(tmp_path: Path) -> None:
    target = _secret(tmp_path)
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    with pytest.raises(OSError):
        file_digest(link, follow_symlinks=False)
    assert file_digest(link) == file_digest(target)  # a one-off job's own path may be a link
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        file_digest(fifo)  # opened non-blocking: no hang, and not read


def test_a_job_refuses_a_linked_secret_without_reading_it(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    write_csv(drop / "good.csv", update_rows(_ids(2)))
    expected = _special_files(drop, tmp_path)
    job_file = _dry_job(
        tmp_path, '[input]\nfolder = "drop"\nglob = ["*.csv", "sub/*.csv"]\nsettle_seconds = 0'
    )
    for command in ("run", "check"):
        proc = start_cli(["job", command, str(job_file)], cli_env(None))
        try:
            out, err = proc.communicate(timeout=60)  # a FIFO that was opened would hang here
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"job {command} hung on the drop folder")
        # A refused entry needs someone to look: `job run` exits 1 (like a rejected file).
        assert proc.returncode == (1 if command == "run" else 0), err
        assert "Traceback" not in out + err
        for name in expected:
            assert name in out + err, (command, name)
        assert "TOPSECRET" not in out + err
        if command == "run":
            assert f"{len(expected)} refused (not regular files in the folder)" in out
    state_files = list(tmp_path.rglob("job.log")) + list(tmp_path.rglob("files.sqlite*"))
    assert any(p.name == "job.log" for p in state_files)
    assert any(p.name == "files.sqlite" for p in state_files)
    for path in state_files:
        assert b"TOPSECRET" not in path.read_bytes(), path
    log = next(p for p in state_files if p.name == "job.log").read_text(encoding="utf-8")
    assert all(name in log for name in expected)
    run_dirs = [p for p in (tmp_path / "out").iterdir() if not p.name.startswith("_job")]
    assert [p.name.split("-", 1)[1] for p in run_dirs] == ["good"]
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert b"TOPSECRET" not in path.read_bytes(), path
