"""`run` with a real sign-in: the CLI as a subprocess, MSAL against the TLS emulator.

The credentials come from AZURE_* environment variables only. `--graph-url` and
`--authority-host` point at the emulator; its test CA is trusted through SSL_CERT_FILE (httpx,
the Graph requests) and REQUESTS_CA_BUNDLE (requests, MSAL's sign-in). Every test also checks
that no secret, private key, password or issued access token reaches the run folder or the
console.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from batch.emulator import EmulatorConfig, EmulatorServer, EventStore
from batch.model import Rate
from tests.conftest import EmulatorFactory
from tests.e2e import (
    cli,
    cli_env,
    expected_body,
    make_certificate,
    read_csv,
    start_cli,
    update_rows,
    write_csv,
)

pytestmark = pytest.mark.e2e

TENANT = "7e5a1b2c-3d4e-4f60-8a9b-0c1d2e3f4a5b"
SECRET_APP = "5ec7e7a9-0000-4000-8000-00000000a991"
CERT_APP = "ce7c1e47-0000-4000-8000-00000000a992"
SECRET = "runs-e2e~Sup3r.s3cret_value-that-must-never-leak"
PASSWORD = "runs-e2e-key-passw0rd"
# Generous tenant and read budgets: the per-app write limit is the one each test sets.
_TENANT_WRITES = Rate(1000, 1)
_READS = Rate(2000, 1)
_PROCESS_TIMEOUT = 120.0


# --- set-up -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, list[bytes]]:
    """An app certificate made for this test run.

    Returns the PEM file (certificate and encrypted key), the certificate alone, and lines of the
    key's base64 in both the file's encrypted and the unencrypted form the tool holds in memory.
    """
    key, cert = make_certificate("autopilot-batch runs e2e", valid_days=7)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    path = tmp_path_factory.mktemp("cert") / "app.pem"
    path.write_bytes(
        cert_pem
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSWORD.encode()),
        )
    )
    plain = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    encrypted = path.read_bytes()[len(cert_pem) :]
    key_lines = [
        line for pem in (plain, encrypted) for line in pem.splitlines()[3:-3] if len(line) == 64
    ]
    return path, cert_pem, key_lines


def tls_emulator(
    factory: EmulatorFactory,
    n: int,
    *,
    write_limit: Rate,
    token_ttl: float = 3600.0,
    cert_pem: bytes | None = None,
) -> tuple[EmulatorServer, list[str]]:
    """A TLS emulator with `n` events, the secret app and (optionally) the certificate app."""
    store = EventStore()
    ids = store.seed(n, seed=23)
    server = factory(
        EmulatorConfig(
            tls=True,
            token_ttl=token_ttl,
            write_limit=write_limit,
            tenant_write_limit=_TENANT_WRITES,
            read_limit=_READS,
            tenant_read_limit=_READS,
            seed=5,
        ),
        store=store,
    )
    server.register_app(SECRET_APP, secret=SECRET, tenant=TENANT)
    if cert_pem is not None:
        server.register_app(CERT_APP, certificate_pem=cert_pem, tenant=TENANT)
    return server, ids


def run_env(server: EmulatorServer, tmp_path: Path, **credentials: str) -> dict[str, str]:
    """The subprocess environment: the given AZURE_* credentials and the emulator's CA only."""
    assert server.ca_path is not None
    ca = str(server.ca_path)
    return cli_env(
        None,
        {
            "AZURE_TENANT_ID": TENANT,
            **credentials,
            "SSL_CERT_FILE": ca,
            "REQUESTS_CA_BUNDLE": ca,
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "NO_COLOR": "1",
        },
    )


def secret_credentials() -> dict[str, str]:
    return {"AZURE_CLIENT_ID": SECRET_APP, "AZURE_CLIENT_SECRET": SECRET}


def run_args(src: Path, server: EmulatorServer, out: Path, *extra: str) -> list[str]:
    return [
        "run", str(src), "--graph-url", server.url, "--authority-host", server.url,
        "--out", str(out), *extra,
    ]  # fmt: skip


def issued_tokens(server: EmulatorServer) -> list[str]:
    """Every access token the emulator handed out (read once the runs are over: no race)."""
    # The emulator exposes no accessor for this; its identity provider keeps them by value.
    return list(server.state.identity._issued)


def patches(server: EmulatorServer) -> dict[str, int]:
    """Successful PATCHes per event id, as the emulator counted them."""
    counted = server.stats()["patches"]
    assert isinstance(counted, dict)
    return {str(k): int(str(v)) for k, v in counted.items()}


# --- checks -----------------------------------------------------------------------------------


def assert_tenant_holds(server: EmulatorServer, rows: list[dict[str, str]]) -> None:
    for row in rows:
        event = server.store.get(row["id"])
        assert event is not None
        for name, value in expected_body(row).items():
            assert event[name] == value, (row["id"], name)


def assert_one_line_per_row(results: list[dict[str, str]], n: int) -> None:
    assert [int(r["row"]) for r in results] == list(range(2, 2 + n))


def assert_nothing_leaks(
    secrets: Iterable[str | bytes], *, folders: Iterable[Path], consoles: Iterable[str]
) -> None:
    """No secret in any file under `folders` (binary ones too) nor in any console text."""
    needles = [s.encode() if isinstance(s, str) else s for s in secrets]
    assert all(needles)
    seen_files = 0
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if not path.is_file():
                continue
            seen_files += 1
            data = path.read_bytes()
            for needle in needles:
                assert needle not in data, f"a secret leaked into {path}"
    assert seen_files  # the folders really held the run's files
    for text in consoles:
        data = text.encode()
        for needle in needles:
            assert needle not in data, "a secret leaked to the console"


def token_needles(tokens: Iterable[str]) -> list[str]:
    """Each token, and its signature alone (a token cut short in a message still leaks it)."""
    found = []
    for token in tokens:
        found += [token, token.rsplit(".", 1)[-1]]
    return found


# --- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("credential", "mode"),
    [
        pytest.param("secret", "batch", id="secret"),
        pytest.param("certificate", "single", id="cert"),
    ],
)
def test_a_run_signs_in_with_the_app_credential(
    emulator_factory: EmulatorFactory,
    tmp_path: Path,
    cert_files: tuple[Path, bytes, list[bytes]],
    credential: str,
    mode: str,
) -> None:
    cert_path, cert_pem, key_lines = cert_files
    # The tool's budget is Graph's: two windows' worth of rows, so the second window shows
    # whether the sign-in delayed sends the limiter had already counted (429s then).
    limit = Rate(10, 3)
    server, ids = tls_emulator(emulator_factory, 20, write_limit=limit, cert_pem=cert_pem)
    if credential == "secret":
        credentials = secret_credentials()
    else:
        credentials = {
            "AZURE_CLIENT_ID": CERT_APP,
            "AZURE_CLIENT_CERTIFICATE_PATH": str(cert_path),
            "AZURE_CLIENT_CERTIFICATE_PASSWORD": PASSWORD,
        }
    rows = update_rows(ids, seed=1)
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "run"
    env = run_env(server, tmp_path, **credentials)
    args = run_args(src, server, out, "--mode", mode, "--write-limit", str(limit), "--json")
    done = cli(*args, token=None, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["counts"]["updated"] == 20
    assert summary["throttled_429"] == 0 and server.stats()["throttled"] == 0
    results = read_csv(out / "results.csv")
    assert_one_line_per_row(results, 20)
    assert {r["outcome"] for r in results} == {"updated"}
    assert_tenant_holds(server, rows)
    assert patches(server) == dict.fromkeys(ids, 1)
    # Four senders, one sign-in: the token is shared, and Graph never had to reject one.
    tokens = issued_tokens(server)
    assert len(tokens) == 1
    statuses = server.stats()["statuses"]
    assert isinstance(statuses, dict) and "401" not in statuses
    assert not (tmp_path / "config").exists()  # app tokens are never persisted
    assert_nothing_leaks(
        [SECRET, PASSWORD, *key_lines, *token_needles(tokens)],
        folders=[out],
        consoles=[done.stdout, done.stderr],
    )


def test_a_run_outlasting_several_token_lifetimes_renews_them(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    ttl = 2.0
    limit = Rate(10, 1)  # 80 rows: about 8 s, four token lifetimes
    server, ids = tls_emulator(emulator_factory, 80, write_limit=limit, token_ttl=ttl)
    rows = update_rows(ids, seed=2)
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "run"
    env = run_env(server, tmp_path, **secret_credentials())
    done = cli(
        *run_args(src, server, out, "--mode", "single", "--write-limit", str(limit), "--json"),
        token=None,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["counts"]["updated"] == 80
    assert summary["elapsed_seconds"] >= 3 * ttl  # the run really outlived several tokens
    results = read_csv(out / "results.csv")
    assert_one_line_per_row(results, 80)
    assert {r["outcome"] for r in results} == {"updated"}
    assert_tenant_holds(server, rows)
    assert patches(server) == dict.fromkeys(ids, 1)
    tokens = issued_tokens(server)
    # Renewed on its own, about every 1.5 s (three quarters of a lifetime): no user action.
    assert len(tokens) >= 4
    assert_nothing_leaks(
        [SECRET, *token_needles(tokens)], folders=[out], consoles=[done.stdout, done.stderr]
    )


@pytest.mark.parametrize("mode", ["single", "batch"])
def test_an_app_disabled_mid_run_aborts_and_the_run_resumes(
    emulator_factory: EmulatorFactory, tmp_path: Path, mode: str
) -> None:
    n = 80
    limit = Rate(20, 1)  # about 4 s for the whole file: time to disable the app mid-run
    server, ids = tls_emulator(emulator_factory, n, write_limit=limit)
    rows = update_rows(ids, seed=3)
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "run"
    env = run_env(server, tmp_path, **secret_credentials())
    args = run_args(src, server, out, "--mode", mode, "--write-limit", str(limit))
    proc = start_cli(args, env)
    try:
        # Disable the app once a quarter of the rows are in the tenant, the run going on.
        deadline = time.monotonic() + _PROCESS_TIMEOUT
        while sum(patches(server).values()) < n // 4:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.02)
        server.disable_app(SECRET_APP)
        stdout, stderr = proc.communicate(timeout=_PROCESS_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 3, stderr[-2000:]
    assert "AADSTS7000112" in stdout  # the summary's "stopped:" names the disabled app
    first = read_csv(out / "results.csv")
    assert_one_line_per_row(first, n)
    outcomes = [r["outcome"] for r in first]
    assert set(outcomes) == {"updated", "not_attempted"}
    updated_before = {r["id"] for r in first if r["outcome"] == "updated"}
    # What the first run reports updated is exactly what reached the tenant, once each.
    assert patches(server) == dict.fromkeys(updated_before, 1)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["exit_code"] == 3 and "AADSTS7000112" in summary["stopped_because"]

    server.enable_app(SECRET_APP)
    again = cli(*args, "--resume", token=None, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    second = read_csv(out / "results.csv")
    assert_one_line_per_row(second, n)
    assert {r["outcome"] for r in second} == {"updated"}
    assert_tenant_holds(server, rows)
    # Every event PATCHed exactly once over both runs: nothing updated before the abort resent.
    assert patches(server) == dict.fromkeys(ids, 1)
    resumed = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    # The resume sent exactly the rows the abort left (re-sends after a 429 aside: the app's
    # budget still held the first run's writes when the new process started).
    assert resumed["writes_sent"] - resumed["retries"] == outcomes.count("not_attempted")
    assert_nothing_leaks(
        [SECRET, *token_needles(issued_tokens(server))],
        folders=[out],
        consoles=[stdout, stderr, again.stdout, again.stderr],
    )


def test_a_wrong_secret_aborts_without_revealing_either_secret(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    server, ids = tls_emulator(emulator_factory, 5, write_limit=Rate(100, 1))
    src = write_csv(tmp_path / "in.csv", update_rows(ids, seed=4))
    out = tmp_path / "run"
    wrong = "wrong~" + SECRET[::-1]
    env = run_env(server, tmp_path, AZURE_CLIENT_ID=SECRET_APP, AZURE_CLIENT_SECRET=wrong)
    done = cli(*run_args(src, server, out), token=None, env=env)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "invalid_client: AADSTS7000215" in done.stdout
    results = read_csv(out / "results.csv")
    assert_one_line_per_row(results, 5)
    assert {r["outcome"] for r in results} == {"not_attempted"}
    assert server.stats()["writes"] == 0
    assert issued_tokens(server) == []
    assert_nothing_leaks([SECRET, wrong], folders=[out], consoles=[done.stdout, done.stderr])
