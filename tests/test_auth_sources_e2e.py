"""`run` signing in without a secret of ours: managed identity, the Azure CLI, federation, and a
handed-in token that expires. The CLI runs as a subprocess against the TLS emulator.

Stand-ins on 127.0.0.1: an App Service style managed identity endpoint (`IDENTITY_ENDPOINT` +
`IDENTITY_HEADER`, which MSAL reads itself), a fake `az` first on PATH, and the emulator's token
endpoint with a federated identity credential. They all hand out the emulator's own 3-second
tokens, so Graph refuses a token the tool failed to renew. No token, identity header or
federated assertion may reach the run folder or the console.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from batch.emulator import EmulatorConfig, EmulatorServer, EventStore
from batch.emulator.oauth import FEDERATED_AUDIENCE, FederatedCredential
from batch.model import Rate
from tests.conftest import EmulatorFactory
from tests.e2e import cli, cli_env, expected_body, read_csv, start_cli, update_rows, write_csv

pytestmark = pytest.mark.e2e

TENANT = "7e5a1b2c-3d4e-4f60-8a9b-0c1d2e3f4a5b"
MI_APP = "3a9e0c11-0000-4000-8000-00000000b001"
CLI_APP = "3a9e0c11-0000-4000-8000-00000000b002"
FED_APP = "3a9e0c11-0000-4000-8000-00000000b003"
SECRET_APP = "3a9e0c11-0000-4000-8000-00000000b004"
SECRET = "sources-e2e~S3cret.value-never-to-be-seen"
IDENTITY_HEADER = "identity-header-7f3c9b2a-never-to-be-seen"
GITHUB = "https://token.actions.githubusercontent.com"
SUBJECT = "repo:contoso/autopilot:ref:refs/heads/main"
TTL = 3.0
_TIMEOUT = 120.0


# --- set-up -----------------------------------------------------------------------------------


def tls_emulator(
    factory: EmulatorFactory, n: int, write_limit: Rate
) -> tuple[EmulatorServer, list[str]]:
    store = EventStore()
    ids = store.seed(n, seed=31)
    generous = Rate(5000, 1)
    server = factory(
        EmulatorConfig(
            tls=True,
            token_ttl=TTL,
            write_limit=write_limit,
            tenant_write_limit=generous,
            read_limit=generous,
            tenant_read_limit=generous,
            seed=5,
        ),
        store=store,
    )
    for app in (MI_APP, CLI_APP):
        # Issued without a credential (`issue_token`), as a managed identity endpoint does.
        server.register_app(app, secret=f"unused-{app}", tenant=TENANT)
    server.register_app(SECRET_APP, secret=SECRET, tenant=TENANT)
    return server, ids


def env_for(server: EmulatorServer, tmp_path: Path, **extra: str) -> dict[str, str]:
    assert server.ca_path is not None
    ca = str(server.ca_path)
    base = cli_env(None, {"SSL_CERT_FILE": ca, "REQUESTS_CA_BUNDLE": ca, "NO_COLOR": "1"})
    for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET"):
        base.pop(name, None)
    base["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    base.update(extra)
    return base


def run_args(src: Path, server: EmulatorServer, out: Path, *extra: str) -> list[str]:
    return [
        "run", str(src), "--graph-url", server.url, "--authority-host", server.url,
        "--out", str(out), *extra,
    ]  # fmt: skip


def patches(server: EmulatorServer) -> dict[str, int]:
    counted = server.stats()["patches"]
    assert isinstance(counted, dict)
    return {str(k): int(str(v)) for k, v in counted.items()}


def issued(server: EmulatorServer) -> list[str]:
    return list(server.state.identity._issued)


def assert_run_complete(server: EmulatorServer, out: Path, rows: list[dict[str, str]]) -> None:
    results = read_csv(out / "results.csv")
    assert [int(r["row"]) for r in results] == list(range(2, 2 + len(rows)))
    assert {r["outcome"] for r in results} == {"updated"}
    for row in rows:
        event = server.store.get(row["id"])
        assert event is not None
        for name, value in expected_body(row).items():
            assert event[name] == value, (row["id"], name)
    assert patches(server) == dict.fromkeys((r["id"] for r in rows), 1)


def assert_nothing_leaks(secrets: Iterable[str], *, out: Path, consoles: Iterable[str]) -> None:
    needles = [s.encode() for s in secrets if s]
    # A token cut short still leaks: its signature alone counts too.
    needles += [t.rsplit(b".", 1)[-1] for t in list(needles) if t.count(b".") == 2]
    files = [p for p in sorted(out.rglob("*")) if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"a secret leaked into {path}"
    for text in consoles:
        for needle in needles:
            assert needle not in text.encode(), "a secret leaked to the console"


class _Endpoint(BaseHTTPRequestHandler):
    """App Service's managed identity endpoint: GET ?resource=...&api-version=2019-08-01."""

    server: _IdentityServer

    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        if self.headers.get("X-IDENTITY-HEADER") != IDENTITY_HEADER:
            self._answer(401, {"statusCode": 401, "message": "bad identity header"})
            return
        resource = query.get("resource", [""])[0]
        body = self.server.emulator.state.identity.issue_token(
            MI_APP, tenant=TENANT, resource=resource
        )
        self.server.resources.append(resource)
        self._answer(
            200,
            {
                "access_token": body["access_token"],
                "expires_on": str(int(time.time() + TTL)),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": MI_APP,
            },
        )

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _IdentityServer(ThreadingHTTPServer):
    def __init__(self, emulator: EmulatorServer) -> None:
        super().__init__(("127.0.0.1", 0), _Endpoint)
        self.emulator = emulator
        self.resources: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/msi/token"


@pytest.fixture
def identity_endpoint() -> Iterator[type[_IdentityServer]]:
    started: list[_IdentityServer] = []

    class Started(_IdentityServer):
        def __init__(self, emulator: EmulatorServer) -> None:
            super().__init__(emulator)
            started.append(self)
            threading.Thread(target=self.serve_forever, daemon=True).start()

    yield Started
    for server in started:
        server.shutdown()
        server.server_close()


def fake_az(folder: Path) -> Path:
    """An `az` that prints what `az account get-access-token` prints, logging its arguments."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "az"
    script.write_text(
        f"#!{sys.executable}\n"
        + """
import json, os, ssl, sys, time, urllib.parse, urllib.request
with open(os.environ["FAKE_AZ_LOG"], "a", encoding="utf-8") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if os.environ.get("FAKE_AZ_SIGNED_OUT"):
    print("ERROR: Please run 'az login' to setup account.", file=sys.stderr)
    sys.exit(1)
form = urllib.parse.urlencode({
    "grant_type": "client_credentials", "client_id": os.environ["FAKE_AZ_CLIENT"],
    "client_secret": os.environ["FAKE_AZ_SECRET"], "scope": "https://graph.microsoft.com/.default",
}).encode()
context = ssl.create_default_context(cafile=os.environ["REQUESTS_CA_BUNDLE"])
with urllib.request.urlopen(os.environ["FAKE_AZ_URL"], form, context=context) as answer:
    token = json.load(answer)
expires = time.time() + token["expires_in"]
print(json.dumps({
    "accessToken": token["access_token"],
    "expiresOn": time.strftime("%Y-%m-%d %H:%M:%S.000000", time.localtime(expires)),
    "expires_on": int(expires),
    "subscription": "00000000-0000-0000-0000-000000000000",
    "tenant": os.environ.get("FAKE_AZ_TENANT", ""),
    "tokenType": "Bearer",
}, indent=2))
""",
        encoding="utf-8",
    )
    script.chmod(0o755)
    return folder


def issuer_key() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, public


def github_token(key: rsa.RSAPrivateKey, jti: str) -> str:
    now = int(time.time())
    claims = {
        "iss": GITHUB, "sub": SUBJECT, "aud": FEDERATED_AUDIENCE,
        "iat": now, "nbf": now, "exp": now + 300, "jti": jti,
    }  # fmt: skip
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "github"})


def wait_for_patches(server: EmulatorServer, proc: Any, at_least: int) -> None:
    deadline = time.monotonic() + _TIMEOUT
    while sum(patches(server).values()) < at_least:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.02)


# --- tests ------------------------------------------------------------------------------------


def test_managed_identity_app_service_endpoint_renews_3_second_tokens(
    emulator_factory: EmulatorFactory,
    identity_endpoint: type[_IdentityServer],
    tmp_path: Path,
) -> None:
    n = 300
    limit = Rate(60, 1)  # about 5 s: more than one token lifetime
    server, ids = tls_emulator(emulator_factory, n, limit)
    endpoint = identity_endpoint(server)
    rows = update_rows(ids, seed=11)
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "run"
    env = env_for(server, tmp_path, IDENTITY_ENDPOINT=endpoint.url, IDENTITY_HEADER=IDENTITY_HEADER)
    args = run_args(src, server, out, "--managed-identity", "--write-limit", str(limit))
    done = cli(*args, "--json", token=None, env=env, timeout=_TIMEOUT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["counts"]["updated"] == n
    assert_run_complete(server, out, rows)
    # The resource is the cloud's Graph, not the --graph-url the run wrote to.
    assert set(endpoint.resources) == {"https://graph.microsoft.com"}
    assert len(endpoint.resources) > 1
    assert_nothing_leaks(
        [IDENTITY_HEADER, *issued(server)], out=out, consoles=[done.stdout, done.stderr]
    )

    who = cli(
        "whoami", "--graph-url", server.url, "--managed-identity", "--json",
        token=None, env=env, timeout=_TIMEOUT,
    )  # fmt: skip
    assert who.returncode == 0, who.stderr[-2000:]
    assert "managed identity (system-assigned, App Service/Functions/Automation endpoint)" in (
        who.stdout
    )
    assert_nothing_leaks([IDENTITY_HEADER, *issued(server)], out=out, consoles=[who.stdout])


def test_azure_cli_is_run_again_before_its_token_expires(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    n = 200
    limit = Rate(40, 1)  # about 5 s
    server, ids = tls_emulator(emulator_factory, n, limit)
    server.register_app(CLI_APP, secret=SECRET, tenant=TENANT)
    rows = update_rows(ids, seed=12)
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "run"
    calls = tmp_path / "az-calls.jsonl"
    env = env_for(
        server,
        tmp_path,
        PATH=f"{fake_az(tmp_path / 'bin')}{os.pathsep}{os.environ.get('PATH', '')}",
        FAKE_AZ_LOG=str(calls),
        FAKE_AZ_URL=f"{server.url}/{TENANT}/oauth2/v2.0/token",
        FAKE_AZ_CLIENT=CLI_APP,
        FAKE_AZ_SECRET=SECRET,
        AZURE_TENANT_ID=TENANT,
    )
    args = run_args(
        src, server, out, "--azure-cli", "--mode", "single", "--write-limit", str(limit)
    )
    done = cli(*args, token=None, env=env, timeout=_TIMEOUT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_run_complete(server, out, rows)
    argv = [json.loads(line) for line in calls.read_text(encoding="utf-8").splitlines()]
    assert len(argv) > 1
    assert argv[0] == [
        "account", "get-access-token", "--output", "json",
        "--resource-type", "ms-graph", "--tenant", TENANT,
    ]  # fmt: skip
    assert_nothing_leaks([SECRET, *issued(server)], out=out, consoles=[done.stdout, done.stderr])


@pytest.mark.parametrize("signed_out", [False, True], ids=["az-missing", "az-signed-out"])
def test_azure_cli_missing_or_signed_out_is_exit_3_with_the_hint(
    emulator_factory: EmulatorFactory, tmp_path: Path, signed_out: bool
) -> None:
    server, ids = tls_emulator(emulator_factory, 3, Rate(100, 1))
    src = write_csv(tmp_path / "in.csv", update_rows(ids, seed=13))
    out = tmp_path / "run"
    folder = fake_az(tmp_path / "bin") if signed_out else tmp_path / "empty"
    folder.mkdir(exist_ok=True)
    env = env_for(
        server,
        tmp_path,
        PATH=str(folder),
        FAKE_AZ_LOG=str(tmp_path / "az-calls.jsonl"),
        FAKE_AZ_SIGNED_OUT="1",
    )
    done = cli(*run_args(src, server, out, "--azure-cli"), token=None, env=env, timeout=_TIMEOUT)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "run `az login`" in done.stdout + done.stderr
    if not signed_out:
        assert "not on PATH" in done.stdout + done.stderr
    assert server.stats()["writes"] == 0


def test_a_federated_token_file_is_read_again_when_rotated(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    n = 240
    limit = Rate(40, 1)  # about 6 s: two or more tokens, the file rotated in between
    server, ids = tls_emulator(emulator_factory, n, limit)
    key, public = issuer_key()
    server.state.identity.register_app(
        FED_APP, tenant=TENANT, federated=[FederatedCredential(GITHUB, SUBJECT, public)]
    )
    token_file = tmp_path / "federated" / "token"
    token_file.parent.mkdir()
    first, second = github_token(key, "first"), github_token(key, "second")
    token_file.write_text(first, encoding="utf-8")
    rows = update_rows(ids, seed=14)
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "run"
    env = env_for(
        server,
        tmp_path,
        AZURE_TENANT_ID=TENANT,
        AZURE_CLIENT_ID=FED_APP,
        AZURE_FEDERATED_TOKEN_FILE=str(token_file),
    )
    args = run_args(src, server, out, "--write-limit", str(limit))
    proc = start_cli(args, env)
    try:
        wait_for_patches(server, proc, n // 4)
        # The way Kubernetes and the runners rotate it: a new file moved over the old one.
        (token_file.parent / "token.new").write_text(second, encoding="utf-8")
        (token_file.parent / "token.new").replace(token_file)
        stdout, stderr = proc.communicate(timeout=_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr[-2000:]
    assert_run_complete(server, out, rows)
    seen = server.state.identity.federated_seen
    assert seen[0] == "first" and seen[-1] == "second", seen
    assert_nothing_leaks([first, second, *issued(server)], out=out, consoles=[stdout, stderr])


def test_an_expiring_handed_in_token_warns_stops_with_3_and_resumes(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    n = 160
    limit = Rate(40, 1)  # about 4 s: longer than the 3-second token
    server, ids = tls_emulator(emulator_factory, n, limit)
    handed_in = server.state.identity.issue_token(
        SECRET_APP, tenant=TENANT, resource="https://graph.microsoft.com"
    )["access_token"]
    assert isinstance(handed_in, str)
    rows = update_rows(ids, seed=15)
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "run"
    args = run_args(src, server, out, "--mode", "single", "--write-limit", str(limit))
    env = env_for(server, tmp_path, GRAPH_ACCESS_TOKEN=handed_in)
    done = cli(*args, token=None, env=env, timeout=_TIMEOUT)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "GRAPH_ACCESS_TOKEN expires in" in done.stderr  # the warning at the start
    assert "cannot be renewed" in done.stdout
    assert "--managed-identity, --azure-cli" in done.stdout
    first = read_csv(out / "results.csv")
    assert {r["outcome"] for r in first} == {"updated", "not_attempted"}
    updated = {r["id"] for r in first if r["outcome"] == "updated"}
    assert updated and patches(server) == dict.fromkeys(updated, 1)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["exit_code"] == 3

    renewing = env_for(server, tmp_path, AZURE_TENANT_ID=TENANT, AZURE_CLIENT_ID=SECRET_APP)
    renewing["AZURE_CLIENT_SECRET"] = SECRET
    again = cli(*args, "--resume", token=None, env=renewing, timeout=_TIMEOUT)
    assert again.returncode == 0, again.stderr[-2000:]
    assert_run_complete(server, out, rows)  # every event PATCHed exactly once over both runs
    assert_nothing_leaks(
        [handed_in, SECRET, *issued(server)],
        out=out,
        consoles=[done.stdout, done.stderr, again.stdout, again.stderr],
    )
