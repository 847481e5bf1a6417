"""Jobs over [[tenants]] and webhook notifications: the job file, payloads, real job runs."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from batch.cli import app
from batch.emulator import EmulatorServer, EventStore
from batch.errors import ConfigError
from batch.jobs import load_job, run_job, worst_exit_code
from batch.model import Rate
from batch.notify import NotifyError, build_payload, post_webhook, wants_notification
from tests.conftest import EmulatorFactory
from tests.e2e import cli_env, emulator_config, start_cli, update_rows, write_csv

REPO = Path(__file__).resolve().parent.parent
SECRET_SIG = "sig-SECRET-0123456789"


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


def test_the_msp_example_loads_with_tenant_tables_overriding_key_by_key() -> None:
    job = load_job(REPO / "jobs" / "msp-nightly-tenants.toml")
    assert job.name == "msp-nightly" and job.parallel_tenants == 4
    assert [t.tenant for t in job.tenants] == ["contoso", "fabrikam", "tailspin"]
    assert job.notify.webhook_env == "MSP_TEAMS_WEBHOOK"
    assert (job.notify.webhook_format, job.notify.notify_on) == ("teams", "problems")
    root = Path("/var/lib/autopilot-batch/msp")
    assert job.state_dir == root / "_job-msp-nightly"
    contoso, fabrikam, tailspin = job.tenants
    assert contoso.output_root == root / "contoso"
    assert contoso.state_dir == root / "contoso" / "_job-msp-nightly"
    assert contoso.folder == Path("/srv/autopilot/drop/contoso")
    assert contoso.globs == ("*.csv", "*.xlsx") and contoso.settle_seconds == 120
    assert contoso.credentials.literals == {"AZURE_TENANT_ID": "contoso.onmicrosoft.com"}
    assert contoso.credentials.from_env["AZURE_CLIENT_ID"] == "MSP_CLIENT_ID"
    # [tenants.run] write_limit overrides only that key; only_changed stays from the top.
    assert fabrikam.run_fields["write_limit"] == Rate(50, 20)
    assert fabrikam.run_fields["only_changed"] is True
    assert contoso.run_fields["write_limit"] == Rate(100, 20)
    # A literal certificate_path replaces the top level's certificate_path_env.
    assert tailspin.credentials.from_env == {
        "AZURE_CLIENT_ID": "TAILSPIN_CLIENT_ID",
        "AZURE_CLIENT_CERTIFICATE_PASSWORD": "TAILSPIN_CERTIFICATE_PASSWORD",
    }
    assert tailspin.credentials.literals["AZURE_CLIENT_CERTIFICATE_PATH"] == (
        "/etc/autopilot-batch/tailspin.pem"
    )


_TWO = '[[tenants]]\nname = "a"\n[tenants.input]\nfolder = "a"\n[[tenants]]\nname = "b"\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param('parallel_tenants = 2\n[input]\nfolder = "d"\n', "only applies", id="no-t"),
        pytest.param(f"parallel_tenants = 0\n{_TWO}", "must be 1 or more", id="parallel-0"),
        pytest.param('tenants = ["a"]\n', "must be [[tenants]] tables", id="not-tables"),
        pytest.param('[[tenants]]\nname = "../x"\n', "every tenant needs a name", id="bad-name"),
        pytest.param(
            '[input]\nfolder = "d"\n[[tenants]]\nname = "a"\n[[tenants]]\nname = "A"\n',
            "'A' is given twice",
            id="twice",
        ),
        pytest.param(
            '[input]\nfolder = "d"\n[[tenants]]\nname = "a"\n[tenants.notify]\nstdout = false\n',
            "applies to the whole job",
            id="notify-in-tenant",
        ),
        pytest.param(
            '[input]\nfolder = "d"\n[[tenants]]\nname = "a"\n[tenants.run]\nconcurency = 2\n',
            "tenant a: [run]: unknown key 'concurency' (did you mean 'concurrency'?)",
            id="typo-in-tenant",
        ),
        pytest.param(_TWO, "tenant b: [input]: needs file", id="tenant-without-input"),
        pytest.param(
            '[input]\nfolder = "d"\n[output]\narchive = "done"\n'
            '[[tenants]]\nname = "a"\n[[tenants]]\nname = "b"\n',
            "read the same folder",
            id="shared-drop-with-archive",
        ),
    ],
)
def test_a_bad_tenants_table_is_a_config_error(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in _config_error(tmp_path, text)


@pytest.mark.parametrize(
    "table",
    [
        pytest.param('[tenants.credentials]\nclient_secret = "hunter2-VALUE"\n', id="credentials"),
        pytest.param('[tenants.credentials]\nsecret_env = "hunter2-VALUE"\n', id="env-not-a-name"),
        pytest.param('[tenants.graph]\napi_token = "hunter2-VALUE"\n', id="graph"),
        pytest.param('password = "hunter2-VALUE"\n', id="tenant-level"),
    ],
)
def test_secrets_in_a_tenant_table_are_refused_without_repeating_them(
    tmp_path: Path, table: str
) -> None:
    message = _config_error(tmp_path, f'[input]\nfolder = "d"\n[[tenants]]\nname = "a"\n{table}')
    assert "hunter2" not in message
    assert "tenant a" in message


def test_a_webhook_url_in_the_file_is_refused_without_repeating_it(tmp_path: Path) -> None:
    message = _config_error(
        tmp_path,
        f'[input]\nfolder = "d"\n[notify]\nwebhook_env = "https://x.example/h?{SECRET_SIG}"\n',
    )
    assert SECRET_SIG not in message and "NAME of an environment variable" in message
    assert "webhook_format" in _config_error(
        tmp_path, '[input]\nfolder = "d"\n[notify]\nwebhook_format = "teams"\n'
    )
    assert "must be one of" in _config_error(
        tmp_path, '[input]\nfolder = "d"\n[notify]\nwebhook_env = "H"\nwebhook_format = "irc"\n'
    )


def test_the_worst_tenant_decides_the_exit_code() -> None:
    assert worst_exit_code([]) == 0
    assert worst_exit_code([0, 1, 0]) == 1
    assert worst_exit_code([1, 3, 0]) == 3
    assert worst_exit_code([75, 0]) == 75
    assert worst_exit_code([75, 1]) == 1
    assert worst_exit_code([3, 130, 1]) == 130


def test_one_tenant_is_one_tenant_in_every_summary(tmp_path: Path) -> None:
    from batch.jobs.tenants import RollUp, TenantResult
    from batch.report.job_html import render_tenants_report

    job = load_job(_tenants_job(tmp_path, {"alpha": "https://graph.example.test"}, ""))
    rollup = RollUp(job, [TenantResult(t, exit_code=3, error="sign-in") for t in job.tenants])
    assert rollup.line().startswith("job msp: 1 tenant (1 exit 3);")
    assert "Job msp: 1 tenant</h1>" in render_tenants_report(tmp_path / "job.html", rollup)
    checked = CliRunner().invoke(app, ["job", "check", str(job.path)])
    assert f"job msp ({job.path}): 1 tenant\n" in checked.stdout + checked.stderr


# --- payloads and delivery ---------------------------------------------------------------------

_ROLLUP: dict[str, Any] = {
    "job": "msp",
    "started": "2026-12-06T02:15:00Z",
    "ended": "2026-12-06T02:16:00Z",
    "exit_code": 3,
    "counts": {"updated": 300},
    "summary": "job msp: 2 tenants (1 exit 0, 1 exit 3); rows: updated 300; exit 3 | ...",
    "tenants": [
        {"tenant": "alpha", "exit_code": 0, "files": [{}], "counts": {"updated": 300}},
        {"tenant": "beta", "exit_code": 3, "files": [], "counts": {}, "error": "sign-in"},
    ],
}


def test_payload_shapes() -> None:
    teams = build_payload("teams", _ROLLUP)
    assert teams["type"] == "message"
    (attachment,) = teams["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    assert card["body"][0]["text"] == "autopilot-batch job msp: needs attention (exit 3)"
    facts = next(b for b in card["body"] if b["type"] == "FactSet")["facts"]
    assert [f["title"] for f in facts] == ["alpha", "beta"]
    assert facts[0]["value"] == "exit 0: 1 file; rows: updated 300"
    assert facts[1]["value"] == "exit 3: 0 files; rows: no rows; sign-in"

    slack = build_payload("slack", _ROLLUP)
    assert slack["text"] == _ROLLUP["summary"]
    assert [b["type"] for b in slack["blocks"]] == ["header", "section", "section"]
    assert slack["blocks"][2]["fields"][1]["text"].startswith("*beta*\nexit 3")

    assert build_payload("json", _ROLLUP) == _ROLLUP

    assert wants_notification("problems", _ROLLUP)
    clean = {"exit_code": 0, "counts": {"updated": 3}}
    assert not wants_notification("problems", clean)
    assert wants_notification("problems", {"exit_code": 0, "counts": {"conflict": 1}})
    assert wants_notification("always", clean)


def test_delivery_retries_then_gives_up_without_naming_the_url() -> None:
    answers = iter([503, 429, 200])
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(next(answers))

    sleeps: list[float] = []
    url = f"https://hooks.example/h?{SECRET_SIG}"
    status = post_webhook(
        url, {"a": 1}, sleep=sleeps.append, transport=httpx.MockTransport(handler)
    )
    assert status == 200 and len(seen) == 3 and len(sleeps) == 2
    assert json.loads(seen[0].content) == {"a": 1}

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot connect to {request.url}")

    with pytest.raises(NotifyError) as caught:
        post_webhook(url, {}, sleep=sleeps.append, transport=httpx.MockTransport(down))
    assert SECRET_SIG not in str(caught.value) and "ConnectError" in str(caught.value)
    with pytest.raises(NotifyError, match="HTTP 400"):
        post_webhook(url, {}, transport=httpx.MockTransport(lambda r: httpx.Response(400)))


# --- a webhook receiver ------------------------------------------------------------------------


class _Receiver:
    """A webhook receiver on 127.0.0.1 that records every POST."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.posts.append((self.path, json.loads(body)))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?{SECRET_SIG}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    hook = _Receiver()
    yield hook
    hook.stop()


def _everything_written(root: Path, *texts: str) -> str:
    found = [*texts]
    found.extend(
        path.read_text(encoding="utf-8", errors="replace")
        for path in root.rglob("*")
        if path.is_file() and path.suffix in (".log", ".json", ".html", ".csv", ".jsonl")
    )
    return "\n".join(found)


def test_a_dry_run_job_notifies_json_and_a_receiver_that_is_down_changes_nothing(
    tmp_path: Path, receiver: _Receiver
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(3)]
    write_csv(drop / "a.csv", update_rows(ids))
    job_file = _job(
        tmp_path,
        'name = "dry"\n[input]\nfolder = "drop"\nsettle_seconds = 0\n[run]\ndry_run = true\n'
        '[output]\nroot = "out"\n[notify]\nstdout = false\nwebhook_env = "HOOK"\n',
    )
    report = run_job(load_job(job_file), env={"HOOK": receiver.url}, quiet=True)
    assert report.exit_code == 0
    ((path, body),) = receiver.posts
    assert path == f"/hook?{SECRET_SIG}"
    assert body["job"] == "dry" and body["counts"] == {"planned": 3} and body["exit_code"] == 0
    summary = json.loads((tmp_path / "out" / "_job-dry" / "job.summary.json").read_text())
    assert summary["counts"] == {"planned": 3}

    # The receiver is down: logged (without the URL), and the exit code does not change.
    receiver.stop()
    write_csv(drop / "b.csv", update_rows(ids, seed=9))
    report = run_job(load_job(job_file), env={"HOOK": receiver.url}, quiet=True)
    assert report.exit_code == 0
    log = (tmp_path / "out" / "_job-dry" / "job.log").read_text(encoding="utf-8")
    assert "webhook notification ($HOOK, json) failed: ConnectError" in log
    assert SECRET_SIG not in _everything_written(tmp_path / "out")

    # `job check` says whether the variable is set, never what it holds.
    runner = CliRunner()
    ok = runner.invoke(app, ["job", "check", str(job_file)], env={"HOOK": receiver.url})
    assert ok.exit_code == 0 and "webhook:     json to $HOOK" in ok.stdout
    assert SECRET_SIG not in ok.output
    bad = runner.invoke(app, ["job", "check", str(job_file)], env={"HOOK": ""})
    assert bad.exit_code == 2 and "webhook_env names HOOK, which is not set" in bad.stderr


# --- many tenants against several emulators (real CLI) ------------------------------------------


def _tenants_job(tmp_path: Path, urls: dict[str, str], notify: str, run: str = "") -> Path:
    lines = [
        'name = "msp"',
        "[input]",
        "settle_seconds = 0",
        "[run]",
        "backup = false",
        run,
        "[output]",
        'root = "out"',
        "[notify]",
        notify,
    ]
    for name, url in urls.items():
        lines += [
            "[[tenants]]",
            f'name = "{name}"',
            "[tenants.input]",
            f'folder = "drop-{name}"',
            "[tenants.graph]",
            f'graph_url = "{url}"',
            "[tenants.credentials]",
            f'access_token_env = "TOKEN_{name.upper()}"',
            "[tenants.output]",
            f'archive = "done-{name}"',
        ]
    return _job(tmp_path, "\n".join(lines) + "\n")


def _patches(server: EmulatorServer) -> Counter[str]:
    patches = server.stats()["patches"]
    assert isinstance(patches, dict)
    return Counter({str(k): int(v) for k, v in patches.items()})  # type: ignore[arg-type]


def _run(job_file: Path, env: dict[str, str]) -> tuple[int, str, str]:
    proc = start_cli(["job", "run", str(job_file), "--json"], cli_env(None, env))
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, out, err


def _emulator(factory: EmulatorFactory, n: int, seed: int, **fields: Any) -> tuple[Any, list[str]]:
    store = EventStore()
    ids = store.seed(n, seed=seed)
    return factory(emulator_config(seed, **fields), store=store), ids


@pytest.mark.e2e
def test_two_tenants_run_side_by_side_each_at_its_own_budget(
    emulator_factory: EmulatorFactory, tmp_path: Path, receiver: _Receiver
) -> None:
    # Each emulator (tenant) allows 100 writes / 4 s: one tenant's 300 rows take about 8 s, and
    # two tenants one after the other about 16 s. Side by side they take about the time of one.
    limit = Rate(100, 4)
    servers = {}
    for n, name in enumerate(("alpha", "beta")):
        server, ids = _emulator(emulator_factory, 300, seed=40 + n, write_limit=limit)
        (tmp_path / f"drop-{name}").mkdir()
        write_csv(tmp_path / f"drop-{name}" / f"{name}.csv", update_rows(ids, seed=n))
        servers[name] = (server, ids)
    job_file = _tenants_job(
        tmp_path,
        {name: s.url for name, (s, _) in servers.items()},
        'webhook_env = "HOOK"\nwebhook_format = "teams"\n',
        run='write_limit = "100/4"',
    )
    env = {"TOKEN_ALPHA": "test-token", "TOKEN_BETA": "test-token", "HOOK": receiver.url}
    started = time.monotonic()
    code, out, err = _run(job_file, env)
    elapsed = time.monotonic() - started
    assert code == 0, err[-3000:]
    assert elapsed < 14, f"two tenants took {elapsed:.1f} s: not side by side"
    report = json.loads(out)
    assert [(t["tenant"], t["exit_code"], t["counts"]) for t in report["tenants"]] == [
        ("alpha", 0, {"updated": 300}),
        ("beta", 0, {"updated": 300}),
    ]
    for name, (server, ids) in servers.items():
        patches = _patches(server)
        assert set(patches) == set(ids) and set(patches.values()) == {1}, name
        assert server.stats()["during_retry_after"] == 0, name
        run_dir = Path(report["tenants"][0 if name == "alpha" else 1]["files"][0]["run_dir"])
        assert run_dir.parent == tmp_path / "out" / name
        assert (tmp_path / f"done-{name}" / f"{name}.csv").exists()
    ((_, card),) = receiver.posts
    content = card["attachments"][0]["content"]
    facts = next(b for b in content["body"] if b["type"] == "FactSet")["facts"]
    assert [f["title"] for f in facts] == ["alpha", "beta"]
    assert "msp" in content["body"][0]["text"] and "updated 300" in facts[0]["value"]


@pytest.mark.e2e
def test_a_tenant_refused_sign_in_does_not_stop_the_other_and_resumes_next_time(
    emulator_factory: EmulatorFactory, tmp_path: Path, receiver: _Receiver
) -> None:
    servers = {}
    for n, name in enumerate(("alpha", "beta", "gamma")):
        server, ids = _emulator(emulator_factory, 40, seed=50 + n)
        (tmp_path / f"drop-{name}").mkdir()
        write_csv(tmp_path / f"drop-{name}" / f"{name}.csv", update_rows(ids, seed=n))
        servers[name] = (server, ids)
    job_file = _tenants_job(
        tmp_path,
        {name: s.url for name, (s, _) in servers.items()},
        'webhook_env = "HOOK"\nwebhook_format = "slack"\nnotify_on = "problems"\n',
    )
    env = {
        "TOKEN_ALPHA": "test-token",
        "TOKEN_BETA": "not-the-token",  # refused by beta's emulator
        "TOKEN_GAMMA": "test-token",
        "HOOK": receiver.url,
    }
    code, out, err = _run(job_file, env)
    assert code == 3, err[-3000:]
    report = json.loads(out)
    assert [(t["tenant"], t["exit_code"]) for t in report["tenants"]] == [
        ("alpha", 0),
        ("beta", 3),
        ("gamma", 0),
    ]
    assert report["summary"].startswith("job msp: 3 tenants (2 exit 0, 1 exit 3); rows: ")
    assert "| beta: 1 file (1 aborted)" in report["summary"]
    for name in ("alpha", "gamma"):
        server, ids = servers[name]
        assert set(_patches(server)) == set(ids)
    assert not _patches(servers["beta"][0])
    assert (tmp_path / "drop-beta" / "beta.csv").exists()  # not archived: resumable

    # The roll-up: job.summary.json for the job and each tenant, job.html one section each.
    job_dir = tmp_path / "out" / "_job-msp"
    rollup = json.loads((job_dir / "job.summary.json").read_text(encoding="utf-8"))
    assert rollup["exit_code"] == 3 and len(rollup["tenants"]) == 3
    beta_summary = tmp_path / "out" / "beta" / "_job-msp" / "job.summary.json"
    assert json.loads(beta_summary.read_text(encoding="utf-8"))["exit_code"] == 3
    page = (job_dir / "job.html").read_text(encoding="utf-8")
    assert all(f"Tenant {name}</h2>" in page for name in servers)
    # Each tenant's log has only its own records; the job's log has all, each with its tenant.
    beta_log = (tmp_path / "out" / "beta" / "_job-msp" / "job.log").read_text(encoding="utf-8")
    assert "alpha.csv" not in beta_log and "beta.csv" in beta_log
    records = [json.loads(line) for line in (job_dir / "job.log").read_text().splitlines()]
    assert {r.get("tenant") for r in records} >= {"alpha", "beta", "gamma"}

    ((_, slack),) = receiver.posts
    assert slack["text"] == report["summary"]
    assert [f["text"].split("\n")[0] for f in slack["blocks"][2]["fields"]] == [
        "*alpha*",
        "*beta*",
        "*gamma*",
    ]
    assert SECRET_SIG not in _everything_written(tmp_path / "out", out, err)

    # The next start, with beta's token fixed: only beta's file is sent; a clean run with
    # notify_on = "problems" posts nothing.
    before = {name: _patches(s) for name, (s, _) in servers.items()}
    code, out, err = _run(job_file, {**env, "TOKEN_BETA": "test-token"})
    assert code == 0, err[-3000:]
    report = json.loads(out)
    assert [len(t["files"]) for t in report["tenants"]] == [0, 1, 0]
    assert report["tenants"][1]["files"][0]["resumed"] is True
    assert set(_patches(servers["beta"][0])) == set(servers["beta"][1])
    assert _patches(servers["alpha"][0]) == before["alpha"]
    assert len(receiver.posts) == 1
    assert SECRET_SIG not in _everything_written(tmp_path / "out", out, err)
