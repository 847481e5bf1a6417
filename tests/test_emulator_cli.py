"""`autopilot-batch emulator`: help, option checks, and a real foreground server."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from batch.cli import app

runner = CliRunner()


def test_help_has_an_example() -> None:
    result = runner.invoke(app, ["emulator", "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output
    assert "autopilot-batch emulator --seed-events" in result.output
    for option in ("--write-limit", "--fault-rate", "--tls", "--retry-after-format", "--app"):
        assert option in result.output


def test_page_size_help_names_devices_too() -> None:
    # The device list pages at --page-size as the event list does.
    result = runner.invoke(app, ["emulator", "--help"], env={"COLUMNS": "200"})
    line = next(line for line in result.output.splitlines() if "--page-size" in line)
    assert "Events or devices per list page" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--write-limit", "100"], "--write-limit"),
        (["--tenant-write-limit", "0/20"], "--tenant-write-limit"),
        (["--read-limit", "x/y"], "--read-limit"),
        (["--fault-rate", "1.5"], "--fault-rate"),
        (["--latency-ms", "-1"], "--latency-ms"),
        (["--port", "70000"], "--port"),
        (["--patch-status", "201"], "--patch-status"),
        (["--retry-after-format", "float"], "--retry-after-format"),
        (["--schema", "v2"], "--schema"),
        (["--app", "no-secret"], "CLIENT_ID=SECRET"),
        (["--app", "=secret"], "CLIENT_ID=SECRET"),
        (["--token-ttl", "0"], "token lifetime"),
        (["--token", " "], "token cannot be empty"),
        (["--events", "x.csv", "--seed-events", "3"], "exclude each other"),
        (["--events", "/no/such/file.csv"], "no such file"),
        (["--seed-events", "-3"], "--seed-events"),
        (["--profile", "strict"], "--profile must be friendly or realistic"),
        (["--error-style", "xml"], "--error-style"),
        (["--deny-permission", "reads"], "--deny-permission"),
        (["--page-size", "0"], "--page-size"),
        (["--retry-after-format", "sometimes"], "int, decimal, list, none or mixed"),
    ],
)
def test_bad_options_exit_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["emulator", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_bad_events_file_exits_2(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_text("id,enrollmentState\n1,nope\n", encoding="utf-8")
    result = runner.invoke(app, ["emulator", "--events", str(events)])
    assert result.exit_code == 2
    assert "row 2, enrollmentState" in result.output


def start(args: list[str]) -> tuple[subprocess.Popen[str], list[str]]:
    """Run the command; return the process and its startup lines (up to the stats hint)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "batch", "emulator", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("Stats:"):
            break
    else:  # the process ended before it was ready
        proc.wait(timeout=10)
        pytest.fail(f"emulator did not start: {lines} {proc.stderr.read() if proc.stderr else ''}")
    return proc, lines


def stop(proc: subprocess.Popen[str], sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=15)
    return proc.returncode, out + err


def url_of(lines: list[str]) -> str:
    first = lines[0]
    assert first.startswith("Graph emulator listening on ")
    return first.split()[4]


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serves_until_interrupted(sig: int) -> None:
    proc, lines = start(["--seed-events", "3", "--seed", "1", "--token", "t"])
    try:
        url = url_of(lines)
        assert url.startswith("http://127.0.0.1:")
        assert "(3 events)" in lines[0]
        response = httpx.get(
            f"{url}/beta/deviceManagement/autopilotEvents",
            headers={"Authorization": "Bearer t"},
        )
        assert response.status_code == 200
        assert len(response.json()["value"]) == 3
    finally:
        code, output = stop(proc, sig)
    assert code == 0, output
    assert "Graph emulator stopped." in output
    assert "Traceback" not in output


@pytest.mark.e2e
def test_tls_prints_and_writes_the_ca(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca" / "emulator-ca.pem"
    proc, lines = start(
        ["--tls", "--ca-file", str(ca_file), "--seed-events", "1", "--app", "client-1=s3cret"]
    )
    try:
        url = url_of(lines)
        assert url.startswith("https://127.0.0.1:")
        assert f"CA certificate: {ca_file}" in lines
        trust = ssl.create_default_context(cafile=str(ca_file))
        with httpx.Client(base_url=url, verify=trust) as c:
            token = c.post(
                "/tenant-1/oauth2/v2.0/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": "client-1",
                    "client_secret": "s3cret",
                    "scope": f"{url}/.default",
                },
            ).json()["access_token"]
            events = c.get(
                "/beta/deviceManagement/autopilotEvents",
                headers={"Authorization": f"Bearer {token}"},
            )
            assert events.status_code == 200
    finally:
        code, output = stop(proc, signal.SIGINT)
    assert code == 0, output
    assert "s3cret" not in output


@pytest.mark.e2e
def test_loads_an_events_file(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{"id": "only-one", "osVersion": "10.0"}\n', encoding="utf-8")
    proc, lines = start(["--events", str(events)])
    try:
        url = url_of(lines)
        assert "(1 event)" in lines[0]
        assert any("any bearer token" in line for line in lines)
        response = httpx.get(
            f"{url}/beta/deviceManagement/autopilotEvents/only-one",
            headers={"Authorization": "Bearer whatever"},
        )
        assert response.json()["osVersion"] == "10.0"
    finally:
        stop(proc, signal.SIGINT)


def test_the_profile_can_come_from_the_environment() -> None:
    result = runner.invoke(app, ["emulator"], env={"AUTOPILOT_EMULATOR_PROFILE": "strict"})
    assert result.exit_code == 2
    assert "--profile must be friendly or realistic, not 'strict'" in result.output


@pytest.mark.e2e
def test_realistic_profile_with_a_softening_flag() -> None:
    args = ["--profile", "realistic", "--patch-status", "200", "--seed-events", "60"]
    proc, lines = start([*args, "--token", "t", "--deny-permission", "all"])
    try:
        url = url_of(lines)
        answers = next(line for line in lines if line.startswith("Answers: "))
        assert answers.startswith("Answers: custom profile: PATCH 200, current schema, intune")
        assert "pages of 50 ($top capped)" in answers and "401 for missing rights" in answers
        response = httpx.get(
            f"{url}/beta/deviceManagement/autopilotEvents?$top=999",
            headers={"Authorization": "Bearer t"},
        )
        assert response.status_code == 401  # --deny-permission all
        assert response.json()["error"]["code"] == "UnknownError"
        assert response.headers["client-request-id"] == response.headers["request-id"]
    finally:
        code, output = stop(proc, signal.SIGINT)
    assert code == 0, output
