"""Credential sources without a secret of ours, in process: precedence, managed identity against
a stand-in IMDS on 127.0.0.1 (MSAL honours AZURE_POD_IDENTITY_AUTHORITY_HOST), the Azure CLI's
output, handed-in tokens that expire, and the job file's [credentials] keys."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import jwt
import pytest

from batch.auth import (
    RENEWING_SOURCES,
    FederatedTokenFile,
    MsalAppTokenProvider,
    StaticTokenProvider,
    build_token_provider,
    credential_name,
    token_lifetime_warning,
)
from batch.auth_sources import AzureCliTokenProvider, ManagedIdentityTokenProvider, _cli_answer
from batch.clouds import resolve_endpoints
from batch.errors import AuthError, ConfigError
from batch.jobs.spec import load_job
from batch.model import Rate

GLOBAL = resolve_endpoints("global")
TENANT = "7e5a1b2c-3d4e-4f60-8a9b-0c1d2e3f4a5b"
CLIENT = "3a9e0c11-0000-4000-8000-00000000c001"
_MI_VARIABLES = (
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "IMDS_ENDPOINT",
)


def jwt_expiring_in(seconds: float) -> str:
    claims = {"exp": time.time() + seconds, "tid": TENANT, "appid": CLIENT}
    return jwt.encode(claims, "k" * 32, algorithm="HS256")


def get(tokens: Any, *, force_refresh: bool = False) -> str:
    async def one() -> str:
        token: str = await tokens.token(force_refresh=force_refresh)
        return token

    return anyio.run(one)


# --- precedence -------------------------------------------------------------------------------

_ALL = {
    "GRAPH_ACCESS_TOKEN": "handed-in",
    "AZURE_TENANT_ID": TENANT,
    "AZURE_CLIENT_ID": CLIENT,
    "AZURE_CLIENT_SECRET": "s3cret",
    "AZURE_FEDERATED_TOKEN_FILE": "/var/run/token",
}


@pytest.mark.parametrize(
    ("drop", "flags", "expected"),
    [
        pytest.param((), {"azure_cli": True}, "GRAPH_ACCESS_TOKEN", id="token-first"),
        pytest.param(("GRAPH_ACCESS_TOKEN",), {}, "client secret", id="then-secret"),
        pytest.param(
            ("GRAPH_ACCESS_TOKEN", "AZURE_CLIENT_SECRET"),
            {"managed_identity": True},
            "federated token file (/var/run/token)",
            id="then-federated",
        ),
        pytest.param(
            ("GRAPH_ACCESS_TOKEN", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE"),
            {"managed_identity": True},
            "managed identity (user-assigned " + CLIENT + ", IMDS)",
            id="then-managed-identity",
        ),
        pytest.param(
            ("GRAPH_ACCESS_TOKEN", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE"),
            {"azure_cli": True},
            "Azure CLI",
            id="then-azure-cli",
        ),
        pytest.param(
            ("GRAPH_ACCESS_TOKEN", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE"),
            {"device_code": True},
            "device code",
            id="then-device-code",
        ),
    ],
)
def test_precedence_of_the_sources(
    monkeypatch: pytest.MonkeyPatch, drop: tuple[str, ...], flags: dict[str, bool], expected: str
) -> None:
    for name in _MI_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    env = {k: v for k, v in _ALL.items() if k not in drop}
    tokens = build_token_provider(GLOBAL, env=env, **flags)
    assert credential_name(tokens) == expected


def test_a_flag_an_environment_source_overrides_is_named(caplog: pytest.LogCaptureFixture) -> None:
    env = {k: _ALL[k] for k in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_FEDERATED_TOKEN_FILE")}
    tokens = build_token_provider(GLOBAL, env=env, azure_cli=True)
    assert isinstance(tokens, MsalAppTokenProvider)
    assert "AZURE_FEDERATED_TOKEN_FILE is set and takes precedence: --azure-cli is not used" in (
        caplog.text
    )


def test_flags_conflict_and_a_client_id_needs_managed_identity() -> None:
    with pytest.raises(ConfigError, match="--managed-identity and --azure-cli were both given"):
        build_token_provider(GLOBAL, env={}, managed_identity=True, azure_cli=True)
    with pytest.raises(ConfigError, match="--managed-identity-client-id needs --managed-identity"):
        build_token_provider(GLOBAL, env={}, managed_identity_client_id=CLIENT)


def test_a_user_assigned_identity_by_option_wins_over_azure_client_id() -> None:
    tokens = build_token_provider(
        GLOBAL, env={"AZURE_CLIENT_ID": "other"}, managed_identity=True,
        managed_identity_client_id=CLIENT,
    )  # fmt: skip
    assert isinstance(tokens, ManagedIdentityTokenProvider) and tokens.client_id == CLIENT


# --- a handed-in token ------------------------------------------------------------------------


def test_an_expired_handed_in_token_stops_with_the_renewing_sources() -> None:
    token = jwt_expiring_in(-5)
    tokens = StaticTokenProvider(token)
    assert get(tokens) == token  # Graph decides; only the refresh after its 401 stops
    with pytest.raises(AuthError) as caught:
        get(tokens, force_refresh=True)
    assert RENEWING_SOURCES in str(caught.value) and "--resume" in str(caught.value)
    assert token not in str(caught.value)
    assert caught.value.exit_code == 3


def test_a_valid_or_opaque_handed_in_token_is_served_as_it_is() -> None:
    valid = jwt_expiring_in(600)
    assert get(StaticTokenProvider(valid), force_refresh=True) == valid
    assert get(StaticTokenProvider("opaque"), force_refresh=True) == "opaque"
    assert StaticTokenProvider("opaque").seconds_left() is None


def test_the_start_warning_compares_the_run_with_the_token_life() -> None:
    tokens = StaticTokenProvider(jwt_expiring_in(600))  # 10 minutes
    assert token_lifetime_warning(tokens, 100, Rate(100, 20)) is None  # 20 s
    warning = token_lifetime_warning(tokens, 10_000, Rate(100, 20))  # about 33 min
    assert warning is not None
    assert warning.startswith("GRAPH_ACCESS_TOKEN expires in 10 min (")
    assert "takes about 33 min" in warning and RENEWING_SOURCES in warning
    assert token_lifetime_warning(StaticTokenProvider("opaque"), 10_000, Rate(1, 1)) is None
    expired = token_lifetime_warning(StaticTokenProvider(jwt_expiring_in(-1)), 1, Rate(1, 1))
    assert expired is not None and "expired at" in expired


# --- managed identity against a stand-in IMDS --------------------------------------------------


class _Imds(BaseHTTPRequestHandler):
    server: _ImdsServer

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.server.requests.append((parts.path, query, self.headers.get("Metadata")))
        self.server.issued += 1
        body = json.dumps(
            {
                "access_token": f"imds-token-{self.server.issued}",
                "expires_in": "3",
                "resource": query.get("resource"),
                "token_type": "Bearer",
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ImdsServer(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Imds)
        self.requests: list[tuple[str, dict[str, str], str | None]] = []
        self.issued = 0


@pytest.fixture
def imds(monkeypatch: pytest.MonkeyPatch) -> Iterator[_ImdsServer]:
    server = _ImdsServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for name in _MI_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST", f"http://127.0.0.1:{server.server_address[1]}"
    )
    yield server
    server.shutdown()
    server.server_close()


def test_managed_identity_on_a_vm_asks_imds_for_the_cloud_graph(imds: _ImdsServer) -> None:
    # --graph-url elsewhere: the resource stays the cloud's Graph root.
    endpoints = resolve_endpoints("usgov", graph_url="http://127.0.0.1:9")
    tokens = ManagedIdentityTokenProvider(endpoints, client_id=CLIENT)
    assert tokens.credential == f"managed identity (user-assigned {CLIENT}, IMDS)"
    assert get(tokens) == "imds-token-1"
    assert get(tokens) == "imds-token-1"  # fresh for three quarters of its 3 s
    assert get(tokens, force_refresh=True) == "imds-token-2"
    path, query, metadata = imds.requests[0]
    assert path == "/metadata/identity/oauth2/token" and metadata == "true"
    assert query["resource"] == "https://graph.microsoft.us"
    assert query["client_id"] == CLIENT


def test_managed_identity_renews_before_expiry(imds: _ImdsServer) -> None:
    now = [0.0]
    tokens = ManagedIdentityTokenProvider(GLOBAL, clock=lambda: now[0])
    assert get(tokens) == "imds-token-1"
    now[0] = 2.5  # past three quarters of 3 s
    assert get(tokens) == "imds-token-2"
    assert "client_id" not in imds.requests[0][1]  # system-assigned


def test_a_managed_identity_error_names_the_host_not_the_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in _MI_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", "http://127.0.0.1:9/msi/token")  # nothing listens
    monkeypatch.setenv("IDENTITY_HEADER", "header-value-never-shown")
    tokens = ManagedIdentityTokenProvider(GLOBAL)
    with pytest.raises(AuthError) as caught:
        get(tokens)
    text = str(caught.value)
    assert "App Service/Functions/Automation endpoint" in text
    assert "header-value-never-shown" not in text


# --- the Azure CLI ----------------------------------------------------------------------------


def test_azure_cli_output_old_and_new() -> None:
    new = _cli_answer(json.dumps({"accessToken": "t", "expires_on": int(time.time()) + 600}))
    assert new["access_token"] == "t" and 590 < new["expires_in"] <= 600
    local = time.strftime("%Y-%m-%d %H:%M:%S.000000", time.localtime(time.time() + 600))
    old = _cli_answer(json.dumps({"accessToken": "t", "expiresOn": local}))
    assert 590 < old["expires_in"] <= 600
    with pytest.raises(AuthError) as caught:
        _cli_answer('{"token": "looks-like-a-secret"}')
    assert "looks-like-a-secret" not in str(caught.value)


def test_azure_cli_for_a_national_cloud_and_without_a_shell(tmp_path: Path) -> None:
    seen: list[Any] = []
    (tmp_path / "az").write_text("#!/bin/sh\n", encoding="utf-8")
    (tmp_path / "az").chmod(0o755)

    def run(argv: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
        seen.append((argv, options))
        out = json.dumps({"accessToken": "cli-token", "expires_on": int(time.time()) + 3600})
        return subprocess.CompletedProcess(argv, 0, out, "")

    tokens = AzureCliTokenProvider(
        resolve_endpoints("china"), tenant=TENANT, env={"PATH": str(tmp_path)}, run=run
    )
    assert get(tokens) == "cli-token"
    argv, options = seen[0]
    assert argv[0] == str(tmp_path / "az")
    assert argv[1:] == [
        "account", "get-access-token", "--output", "json",
        "--resource", "https://microsoftgraph.chinacloudapi.cn", "--tenant", TENANT,
    ]  # fmt: skip
    assert "shell" not in options and options["stdin"] == subprocess.DEVNULL


# --- federated token file and job files ---------------------------------------------------------


def test_the_federated_token_file_is_read_at_every_request(tmp_path: Path) -> None:
    path = tmp_path / "token"
    source = FederatedTokenFile(str(path))
    with pytest.raises(AuthError, match="cannot be read"):
        source.read()
    path.write_text("first\n", encoding="utf-8")
    assertion = source.for_msal()["client_assertion"]
    assert assertion() == "first"
    path.write_text("second", encoding="utf-8")
    assert assertion() == "second"
    path.write_text("  ", encoding="utf-8")
    with pytest.raises(AuthError, match="is empty"):
        assertion()


def test_job_files_accept_the_new_credential_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in _MI_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    job_file = tmp_path / "job.toml"
    job_file.write_text(
        '[input]\nfile = "a.csv"\n[credentials]\nmanaged_identity = true\n'
        f'managed_identity_client_id = "{CLIENT}"\n',
        encoding="utf-8",
    )
    job = load_job(job_file)
    assert job.credentials.describe() == f"managed identity {CLIENT}"
    tokens = job.tokens({"AZURE_CLIENT_SECRET": "ambient"})
    assert isinstance(tokens, ManagedIdentityTokenProvider) and tokens.client_id == CLIENT

    job_file.write_text(
        '[input]\nfile = "a.csv"\n[credentials]\nazure_cli = true\n', encoding="utf-8"
    )
    assert isinstance(load_job(job_file).tokens({}), AzureCliTokenProvider)

    job_file.write_text(
        '[input]\nfile = "a.csv"\n[credentials]\ntenant_id = "t"\nclient_id = "c"\n'
        'federated_token_file = "fed/token"\n',
        encoding="utf-8",
    )
    federated = load_job(job_file).tokens({})
    assert credential_name(federated) == f"federated token file ({tmp_path / 'fed' / 'token'})"


def test_the_emulator_checks_a_federated_assertion() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from batch.emulator.oauth import (
        CLIENT_ASSERTION_TYPE,
        FEDERATED_AUDIENCE,
        AadError,
        FederatedCredential,
        IdentityProvider,
    )

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    idp = IdentityProvider()
    idp.register_app(CLIENT, federated=[FederatedCredential("https://issuer", "repo:a", public)])

    def ask(subject: str, audience: str = FEDERATED_AUDIENCE) -> dict[str, Any]:
        claims = {"iss": "https://issuer", "sub": subject, "aud": audience, "jti": subject}
        claims["exp"] = int(time.time()) + 60
        form = {
            "grant_type": "client_credentials",
            "client_id": CLIENT,
            "scope": "https://graph.microsoft.com/.default",
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": jwt.encode(claims, key, algorithm="RS256"),
        }
        return idp.token_response("t", form, audiences={"https://login/t/oauth2/v2.0/token"})

    assert "access_token" in ask("repo:a") and idp.federated_seen == ["repo:a"]
    with pytest.raises(AadError, match="AADSTS70021"):
        ask("repo:other")
    with pytest.raises(AadError, match="AADSTS700211"):
        ask("repo:a", audience="api://somewhere-else")
