"""Sign-in through real MSAL against the emulator's identity platform, served with TLS.

MSAL talks to the emulator with `requests`, which trusts the emulator's test CA through
REQUESTS_CA_BUNDLE; Graph requests here use httpx with the same CA.
"""

from __future__ import annotations

import json
import os
import ssl
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from typer.testing import CliRunner

from batch.auth import (
    REQUIRED_PERMISSION,
    DeviceCodeTokenProvider,
    MsalAppTokenProvider,
    TokenProvider,
    build_token_provider,
    describe_token,
)
from batch.cli import app
from batch.clouds import Endpoints, resolve_endpoints
from batch.emulator import EmulatorConfig, EmulatorServer
from batch.errors import AuthError
from tests.e2e import make_certificate

pytestmark = pytest.mark.e2e

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
CERT_CLIENT = "cccccccc-bbbb-cccc-dddd-eeeeeeeeeeee"
PUBLIC_CLIENT = "dddddddd-bbbb-cccc-dddd-eeeeeeeeeeee"
SECRET = "e2e-s3cr3t~that.must-never-leak"
PASSWORD = "e2e-pfx-passw0rd"
_ENV_NAMES = (
    "GRAPH_ACCESS_TOKEN",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD",
)


@pytest.fixture(scope="module")
def certificate() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A self-signed app certificate made for this test run."""
    return make_certificate("autopilot-batch e2e", valid_days=7)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No credentials from the developer's shell; the config directory inside tmp_path."""
    for name in _ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return monkeypatch


def trusted_emulator(
    emulator_factory: Any, clean_env: pytest.MonkeyPatch, **config: Any
) -> EmulatorServer:
    """A TLS emulator with the secret app registered, whose CA MSAL (requests) trusts."""
    server: EmulatorServer = emulator_factory(EmulatorConfig(tls=True, **config), events=3)
    assert server.ca_path is not None
    server.register_app(CLIENT, secret=SECRET, tenant=TENANT)
    clean_env.setenv("REQUESTS_CA_BUNDLE", str(server.ca_path))
    return server


@pytest.fixture
def idp(
    emulator_factory: Any,
    clean_env: pytest.MonkeyPatch,
    certificate: tuple[rsa.RSAPrivateKey, x509.Certificate],
) -> EmulatorServer:
    """The emulator with a secret app and a certificate app."""
    server = trusted_emulator(emulator_factory, clean_env)
    cert_pem = certificate[1].public_bytes(serialization.Encoding.PEM)
    server.register_app(CERT_CLIENT, certificate_pem=cert_pem, tenant=TENANT)
    return server


def endpoints_of(server: EmulatorServer) -> Endpoints:
    return resolve_endpoints(graph_url=server.url, authority_host=server.url)


def secret_env() -> dict[str, str]:
    return {"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_ID": CLIENT, "AZURE_CLIENT_SECRET": SECRET}


def graph_status(server: EmulatorServer, token: str) -> int:
    """What the emulator's Graph answers to a list request with this bearer token."""
    assert server.ca_path is not None
    context = ssl.create_default_context(cafile=str(server.ca_path))
    with httpx.Client(verify=context) as client:
        response = client.get(
            f"{server.url}/beta/deviceManagement/autopilotEvents",
            headers={"Authorization": f"Bearer {token}"},
        )
    return response.status_code


def get(tokens: TokenProvider, *, force_refresh: bool = False) -> str:
    async def main() -> str:
        return await tokens.token(force_refresh=force_refresh)

    return anyio.run(main)


def test_client_secret_gets_a_token_graph_accepts(idp: EmulatorServer) -> None:
    tokens = build_token_provider(endpoints_of(idp), env=secret_env())
    token = get(tokens)
    info = describe_token(token)
    assert (info.tenant, info.app_id) == (TENANT, CLIENT)
    assert info.grants() is True
    assert info.expires_at is not None and info.expires_at > datetime.now(UTC)
    assert graph_status(idp, token) == 200


@pytest.mark.parametrize("form", ["pem", "pem-encrypted", "pfx"])
def test_certificate_gets_a_token_graph_accepts(
    idp: EmulatorServer,
    tmp_path: Path,
    certificate: tuple[rsa.RSAPrivateKey, x509.Certificate],
    form: str,
) -> None:
    key, cert = certificate
    env = {"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_ID": CERT_CLIENT}
    if form == "pfx":
        path = tmp_path / "app.pfx"
        path.write_bytes(
            pkcs12.serialize_key_and_certificates(
                b"app", key, cert, None, serialization.BestAvailableEncryption(PASSWORD.encode())
            )
        )
        env["AZURE_CLIENT_CERTIFICATE_PASSWORD"] = PASSWORD
    else:
        encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
        if form == "pem-encrypted":
            encryption = serialization.BestAvailableEncryption(PASSWORD.encode())
            env["AZURE_CLIENT_CERTIFICATE_PASSWORD"] = PASSWORD
        path = tmp_path / "app.pem"
        path.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
            )
        )
    env["AZURE_CLIENT_CERTIFICATE_PATH"] = str(path)
    tokens = build_token_provider(endpoints_of(idp), env=env)
    token = get(tokens)
    assert describe_token(token).app_id == CERT_CLIENT
    assert graph_status(idp, token) == 200


def test_tokens_are_renewed_after_they_expire(
    emulator_factory: Any, clean_env: pytest.MonkeyPatch
) -> None:
    short = trusted_emulator(emulator_factory, clean_env, token_ttl=1.0)
    tokens = build_token_provider(endpoints_of(short), env=secret_env())
    assert isinstance(tokens, MsalAppTokenProvider)
    seen = []
    for _ in range(3):
        token = get(tokens)
        assert graph_status(short, token) == 200
        seen.append(token)
        time.sleep(1.05)  # past the token's lifetime
        assert graph_status(short, token) == 401  # the emulator really expired it
    assert len(set(seen)) == 3
    assert tokens.acquisitions == 3


def test_concurrent_senders_share_one_sign_in(idp: EmulatorServer) -> None:
    tokens = build_token_provider(endpoints_of(idp), env=secret_env())
    assert isinstance(tokens, MsalAppTokenProvider)
    got: list[str] = []

    async def main() -> None:
        async def sender() -> None:
            got.append(await tokens.token())

        async with anyio.create_task_group() as group:
            for _ in range(30):
                group.start_soon(sender)

    anyio.run(main)
    assert len(got) == 30 and len(set(got)) == 1
    assert tokens.acquisitions == 1


def test_force_refresh_gets_a_new_token_from_the_emulator(idp: EmulatorServer) -> None:
    tokens = build_token_provider(endpoints_of(idp), env=secret_env())
    first = get(tokens)
    assert get(tokens) == first  # from the cache
    second = get(tokens, force_refresh=True)
    assert second != first
    assert graph_status(idp, second) == 200


def test_wrong_secret_is_an_auth_error_without_the_secret(idp: EmulatorServer) -> None:
    wrong = "wrong-" + SECRET
    tokens = build_token_provider(
        endpoints_of(idp), env={**secret_env(), "AZURE_CLIENT_SECRET": wrong}
    )
    with pytest.raises(AuthError) as caught:
        get(tokens)
    message = str(caught.value)
    assert caught.value.exit_code == 3
    assert "invalid_client: AADSTS7000215" in message
    assert SECRET not in message and wrong not in message
    assert "\n" not in message and "\r" not in message


def test_a_disabled_app_gets_no_token(idp: EmulatorServer) -> None:
    tokens = build_token_provider(endpoints_of(idp), env=secret_env())
    token = get(tokens)
    idp.disable_app(CLIENT)
    assert graph_status(idp, token) == 401
    with pytest.raises(AuthError, match="unauthorized_client: AADSTS7000112"):
        get(tokens, force_refresh=True)
    idp.enable_app(CLIENT)
    # A new process (a `--resume`) signs in again once the app is enabled.
    again = build_token_provider(endpoints_of(idp), env=secret_env())
    assert graph_status(idp, get(again)) == 200


def test_an_untrusted_authority_is_an_auth_error(
    idp: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.setenv("CURL_CA_BUNDLE", "")
    tokens = build_token_provider(endpoints_of(idp), env=secret_env())
    with pytest.raises(AuthError, match=r"SSLError.*certificate verify failed"):
        get(tokens)


def test_device_code_with_a_persisted_cache(idp: EmulatorServer, tmp_path: Path) -> None:
    cache = tmp_path / "config" / "autopilot-batch" / "token_cache.json"
    prompts: list[str] = []
    endpoints = endpoints_of(idp)
    tokens = DeviceCodeTokenProvider(
        endpoints, client_id=PUBLIC_CLIENT, tenant=TENANT, token_cache=cache, prompt=prompts.append
    )
    info = describe_token(get(tokens))
    assert info.delegated and info.grants() is True
    assert info.user
    assert len(prompts) == 1 and "enter the code" in prompts[0]
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o700
    # The next run finds the account in the cache: no second sign-in.
    later = DeviceCodeTokenProvider(
        endpoints, client_id=PUBLIC_CLIENT, tenant=TENANT, token_cache=cache, prompt=prompts.append
    )
    token = get(later)
    assert len(prompts) == 1
    assert graph_status(idp, token) == 200
    # A forced refresh uses the refresh token, still without a prompt.
    assert get(later, force_refresh=True) != token
    assert len(prompts) == 1


def test_whoami_against_the_emulator(idp: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in secret_env().items():
        monkeypatch.setenv(name, value)
    # whoami reads from Graph (httpx), which trusts the emulator's CA through SSL_CERT_FILE.
    assert idp.ca_path is not None
    monkeypatch.setenv("SSL_CERT_FILE", str(idp.ca_path))
    args = ["whoami", "--graph-url", idp.url, "--authority-host", idp.url]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"tenant      {TENANT}" in result.stdout
    assert f"app id      {CLIENT}" in result.stdout
    assert "credential  client secret" in result.stdout
    assert f"permission  {REQUIRED_PERMISSION}: granted (application role)" in result.stdout
    assert "graph       read works (200 OK" in result.stdout
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True and data["permission_granted"] is True
    assert 0 < data["expires_in_seconds"] <= 3600
    assert SECRET not in result.output


def test_whoami_fails_for_an_app_without_the_permission(
    idp: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    idp.register_app("read-only-app", secret=SECRET, tenant=TENANT, roles=["User.Read.All"])
    for name, value in {**secret_env(), "AZURE_CLIENT_ID": "read-only-app"}.items():
        monkeypatch.setenv(name, value)
    assert idp.ca_path is not None
    monkeypatch.setenv("SSL_CERT_FILE", str(idp.ca_path))
    result = CliRunner().invoke(
        app, ["whoami", "--graph-url", idp.url, "--authority-host", idp.url]
    )
    assert result.exit_code == 3
    assert "MISSING" in result.stdout
    # Graph's answer decides first: it refuses the read, and the error says what to grant.
    assert "graph       REFUSED (403: " in result.stdout
    assert "Error: Graph refused to read the autopilot events (403 Forbidden" in result.stderr
    assert f"grant {REQUIRED_PERMISSION} to the app as an application permission" in result.stderr


def test_whoami_as_a_process_never_prints_the_secret(idp: EmulatorServer, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in _ENV_NAMES}
    assert idp.ca_path is not None
    env.update(
        secret_env(),
        REQUESTS_CA_BUNDLE=str(idp.ca_path),
        SSL_CERT_FILE=str(idp.ca_path),
        NO_COLOR="1",
    )
    args = ["whoami", "--graph-url", idp.url, "--authority-host", idp.url, "--token-cache"]
    outputs = []
    for extra, secret in (([], SECRET), (["--json"], SECRET), ([], "wrong-" + SECRET)):
        env["AZURE_CLIENT_SECRET"] = secret
        done = subprocess.run(
            [sys.executable, "-m", "batch", *args, *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        outputs.append(done)
        assert SECRET not in done.stdout + done.stderr
    assert [done.returncode for done in outputs] == [0, 0, 3]
    assert "invalid_client: AADSTS7000215" in outputs[2].stderr
    assert json.loads(outputs[1].stdout)["credential"] == "client secret"
    # --token-cache persists device-code sign-ins only: nothing of an app's lands on disk.
    assert not (tmp_path / "config").exists()
