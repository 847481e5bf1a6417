"""Credential sources, certificates, single-flight tokens, the token cache, token claims, whoami."""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio
import jwt
import msal
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from typer.testing import CliRunner

from batch import auth
from batch.auth import (
    REQUIRED_PERMISSION,
    DeviceCodeTokenProvider,
    MsalAppTokenProvider,
    StaticTokenProvider,
    build_token_provider,
    credential_name,
    describe_token,
    load_certificate,
    token_cache_path,
)
from batch.cli import app
from batch.clouds import resolve_endpoints
from batch.emulator import EmulatorConfig, EmulatorServer
from batch.errors import AuthError, ConfigError
from tests.conftest import EmulatorFactory
from tests.e2e import make_certificate

SECRET = "s3cr3t-~value-that-must-never-leak"
PASSWORD = "pfx-passw0rd-never-shown"
TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
GLOBAL = resolve_endpoints()
HMAC_KEY = "k" * 64


# --- helpers ------------------------------------------------------------------------------


def key_pem(key: Any, password: str | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    pem: bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, encryption
    )
    return pem


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def spki(key: Any) -> bytes:
    """The public half of a private key, to compare keys."""
    der: bytes = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def sha1(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA1()).hex().upper()


def make_jwt(**claims: Any) -> str:
    return jwt.encode(claims, HMAC_KEY, algorithm="HS256")


@pytest.fixture(scope="module")
def leaf() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    return make_certificate()


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeMsal:
    """Stands in for msal.ConfidentialClientApplication / PublicClientApplication."""

    results: list[dict[str, Any]] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    built: list[dict[str, Any]] = field(default_factory=list)
    acquired: int = 0
    removed: int = 0
    error: Exception | None = None

    def __post_init__(self) -> None:
        self.gate.set()

    def __call__(self, client_id: str, **kwargs: Any) -> FakeMsal:
        self.built.append({"client_id": client_id, **kwargs})
        return self

    def acquire_token_for_client(self, scopes: list[str]) -> dict[str, Any]:
        self.acquired += 1
        assert self.gate.wait(timeout=10)
        if self.error is not None:
            raise self.error
        if self.results:
            return self.results.pop(0)
        return {"access_token": f"token-{self.acquired}", "expires_in": 3600}

    def remove_tokens_for_client(self) -> None:
        self.removed += 1


def app_provider(
    fake: FakeMsal, clock: Callable[[], float] | None = None, **kwargs: Any
) -> MsalAppTokenProvider:
    return MsalAppTokenProvider(
        GLOBAL,
        tenant=TENANT,
        client_id=CLIENT,
        credential=kwargs.pop("credential", SECRET),
        clock=clock or Clock(),
        app_factory=fake,
        **kwargs,
    )


# --- precedence and missing variables -------------------------------------------------------

FULL_SECRET = {"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_ID": CLIENT, "AZURE_CLIENT_SECRET": SECRET}


def test_graph_access_token_wins_over_everything(tmp_path: Path) -> None:
    env = {**FULL_SECRET, "GRAPH_ACCESS_TOKEN": "opaque", "AZURE_CLIENT_CERTIFICATE_PATH": "x"}
    tokens = build_token_provider(GLOBAL, device_code=True, env=env)
    assert isinstance(tokens, StaticTokenProvider)
    assert anyio.run(tokens.token) == "opaque"
    assert credential_name(tokens) == "GRAPH_ACCESS_TOKEN"


def test_a_pasted_bearer_prefix_is_dropped() -> None:
    tokens = build_token_provider(GLOBAL, env={"GRAPH_ACCESS_TOKEN": " Bearer abc.def.ghi \n"})
    assert anyio.run(tokens.token) == "abc.def.ghi"


def test_client_secret_comes_next() -> None:
    tokens = build_token_provider(GLOBAL, env=FULL_SECRET)
    assert isinstance(tokens, MsalAppTokenProvider)
    assert tokens.authority == f"https://login.microsoftonline.com/{TENANT}"
    assert tokens.scope == "https://graph.microsoft.com/.default"
    assert credential_name(tokens) == "client secret"
    assert SECRET not in repr(tokens)


def test_secret_wins_over_certificate() -> None:
    env = {**FULL_SECRET, "AZURE_CLIENT_CERTIFICATE_PATH": "/does/not/exist.pem"}
    assert credential_name(build_token_provider(GLOBAL, env=env)) == "client secret"


def test_certificate_when_no_secret(tmp_path: Path, leaf: Any) -> None:
    path = tmp_path / "app.pem"
    path.write_bytes(cert_pem(leaf[1]) + key_pem(leaf[0]))
    env = {"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_ID": CLIENT}
    tokens = build_token_provider(GLOBAL, env={**env, "AZURE_CLIENT_CERTIFICATE_PATH": str(path)})
    assert isinstance(tokens, MsalAppTokenProvider)
    assert credential_name(tokens) == f"certificate {sha1(leaf[1])} ({path})"


def test_device_code_last_with_organizations_by_default() -> None:
    tokens = build_token_provider(
        resolve_endpoints("usgov"), device_code=True, env={"AZURE_CLIENT_ID": CLIENT}
    )
    assert isinstance(tokens, DeviceCodeTokenProvider)
    assert tokens.authority == "https://login.microsoftonline.us/organizations"
    assert tokens.scope == "https://graph.microsoft.us/.default"
    assert credential_name(tokens) == "device code"


def test_device_code_uses_the_tenant_when_given() -> None:
    env = {"AZURE_CLIENT_ID": CLIENT, "AZURE_TENANT_ID": TENANT}
    tokens = build_token_provider(GLOBAL, device_code=True, env=env)
    assert isinstance(tokens, DeviceCodeTokenProvider)
    assert tokens.authority.endswith(f"/{TENANT}")


def test_device_code_flag_loses_to_app_credentials_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="batch.auth"):
        tokens = build_token_provider(GLOBAL, device_code=True, env=FULL_SECRET)
    assert isinstance(tokens, MsalAppTokenProvider)
    assert "--device-code is not used" in caplog.text
    assert SECRET not in caplog.text


def test_blank_values_count_as_unset() -> None:
    env = {**FULL_SECRET, "AZURE_CLIENT_SECRET": "  ", "GRAPH_ACCESS_TOKEN": ""}
    with pytest.raises(ConfigError, match="AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH"):
        build_token_provider(GLOBAL, env=env)


@pytest.mark.parametrize(
    ("env", "device_code", "message"),
    [
        pytest.param(
            {},
            False,
            "no credentials: set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET "
            "(or AZURE_CLIENT_CERTIFICATE_PATH, or AZURE_FEDERATED_TOKEN_FILE), or "
            "GRAPH_ACCESS_TOKEN, or use --managed-identity, --azure-cli, or --device-code with "
            "AZURE_CLIENT_ID",
            id="nothing",
        ),
        pytest.param(
            {"AZURE_CLIENT_SECRET": SECRET},
            False,
            "incomplete app credentials: AZURE_TENANT_ID, AZURE_CLIENT_ID are not set "
            "(app-only sign-in needs AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET); "
            "or set GRAPH_ACCESS_TOKEN, or use --managed-identity, --azure-cli or --device-code",
            id="secret-only",
        ),
        pytest.param(
            {"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_CERTIFICATE_PATH": "/x.pem"},
            False,
            "incomplete app credentials: AZURE_CLIENT_ID is not set (app-only sign-in needs "
            "AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_CERTIFICATE_PATH); "
            "or set GRAPH_ACCESS_TOKEN, or use --managed-identity, --azure-cli or --device-code",
            id="certificate-without-client",
        ),
        pytest.param(
            {"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_ID": CLIENT},
            False,
            "incomplete app credentials: AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH "
            "is not set (app-only sign-in needs AZURE_TENANT_ID, AZURE_CLIENT_ID and "
            "AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH); "
            "or set GRAPH_ACCESS_TOKEN, or use --managed-identity, --azure-cli or --device-code",
            id="ids-without-credential",
        ),
        pytest.param(
            {"AZURE_TENANT_ID": TENANT},
            True,
            "--device-code needs AZURE_CLIENT_ID: the application (client) id of an app "
            "registration that allows public client flows",
            id="device-code-without-client",
        ),
    ],
)
def test_missing_variables_are_named(env: dict[str, str], device_code: bool, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_token_provider(GLOBAL, device_code=device_code, env=env)
    assert str(caught.value) == message
    assert caught.value.exit_code == 2
    assert SECRET not in str(caught.value)


# --- certificates ---------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["cert-then-key", "key-then-cert"])
def test_pem_gives_the_sha1_thumbprint_and_a_plain_key(
    tmp_path: Path, leaf: Any, order: str
) -> None:
    key, cert = leaf
    path = tmp_path / "app.pem"
    parts = [cert_pem(cert), key_pem(key)]
    path.write_bytes(b"".join(parts if order == "cert-then-key" else parts[::-1]))
    credential = load_certificate(path)
    assert credential.thumbprint == sha1(cert)
    assert len(credential.thumbprint) == 40
    loaded = serialization.load_pem_private_key(credential.private_key_pem.encode(), None)
    assert spki(loaded) == spki(key)
    assert credential.for_msal() == {
        "private_key": credential.private_key_pem,
        "thumbprint": credential.thumbprint,
    }
    assert "PRIVATE" not in repr(credential)


def test_pem_chain_picks_the_certificate_of_the_key(tmp_path: Path, leaf: Any) -> None:
    issuer = make_certificate("test CA")
    key, cert = make_certificate("app", key=leaf[0], issuer=issuer)
    path = tmp_path / "chain.pem"
    path.write_bytes(cert_pem(issuer[1]) + cert_pem(cert) + key_pem(key))
    assert load_certificate(path).thumbprint == sha1(cert)


def test_encrypted_pem_key_with_password(tmp_path: Path, leaf: Any) -> None:
    path = tmp_path / "app.pem"
    path.write_bytes(cert_pem(leaf[1]) + key_pem(leaf[0], PASSWORD))
    credential = load_certificate(path, PASSWORD)
    assert credential.thumbprint == sha1(leaf[1])
    assert "ENCRYPTED" not in credential.private_key_pem


def test_a_password_left_set_for_a_plain_pem_is_ignored(tmp_path: Path, leaf: Any) -> None:
    path = tmp_path / "app.pem"
    path.write_bytes(cert_pem(leaf[1]) + key_pem(leaf[0]))
    assert load_certificate(path, PASSWORD).thumbprint == sha1(leaf[1])


@pytest.mark.parametrize("suffix", [".pfx", ".p12", ".bin"])
def test_pfx_with_password(tmp_path: Path, leaf: Any, suffix: str) -> None:
    key, cert = leaf
    path = tmp_path / f"app{suffix}"
    path.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"app", key, cert, None, serialization.BestAvailableEncryption(PASSWORD.encode())
        )
    )
    credential = load_certificate(path, PASSWORD)
    assert credential.thumbprint == sha1(cert)
    loaded = serialization.load_pem_private_key(credential.private_key_pem.encode(), None)
    assert spki(loaded) == spki(key)


def test_pfx_without_password(tmp_path: Path, leaf: Any) -> None:
    path = tmp_path / "app.pfx"
    path.write_bytes(
        pkcs12.serialize_key_and_certificates(
            None, leaf[0], leaf[1], None, serialization.NoEncryption()
        )
    )
    assert load_certificate(path).thumbprint == sha1(leaf[1])


def test_pem_content_is_recognised_whatever_the_extension(tmp_path: Path, leaf: Any) -> None:
    path = tmp_path / "app.certificate"
    path.write_bytes(cert_pem(leaf[1]) + key_pem(leaf[0]))
    assert load_certificate(path).thumbprint == sha1(leaf[1])


def _pfx(tmp_path: Path, leaf: Any) -> Path:
    path = tmp_path / "app.pfx"
    path.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"app",
            leaf[0],
            leaf[1],
            None,
            serialization.BestAvailableEncryption(PASSWORD.encode()),
        )
    )
    return path


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("make", "password", "reason"),
    [
        pytest.param(lambda d, leaf: d / "missing.pem", None, "cannot be read", id="missing"),
        pytest.param(lambda d, leaf: d, None, "cannot be read", id="a-directory"),
        pytest.param(lambda d, leaf: _write(d, "e.pem", b" \n"), None, "is empty", id="empty"),
        pytest.param(
            lambda d, leaf: _pfx(d, leaf),
            "wrong-" + PASSWORD,
            "AZURE_CLIENT_CERTIFICATE_PASSWORD is wrong or missing",
            id="pfx-wrong-password",
        ),
        pytest.param(
            lambda d, leaf: _pfx(d, leaf),
            None,
            "AZURE_CLIENT_CERTIFICATE_PASSWORD is wrong or missing",
            id="pfx-no-password",
        ),
        pytest.param(
            lambda d, leaf: _write(d, "x.pfx", b"not a pfx at all"),
            None,
            "not a PFX/PKCS#12 file",
            id="pfx-garbage",
        ),
        pytest.param(
            lambda d, leaf: _write(d, "k.pem", cert_pem(leaf[1]) + key_pem(leaf[0], PASSWORD)),
            None,
            "the private key is encrypted; set AZURE_CLIENT_CERTIFICATE_PASSWORD",
            id="pem-encrypted-no-password",
        ),
        pytest.param(
            lambda d, leaf: _write(d, "k.pem", cert_pem(leaf[1]) + key_pem(leaf[0], PASSWORD)),
            "wrong-" + PASSWORD,
            "wrong AZURE_CLIENT_CERTIFICATE_PASSWORD",
            id="pem-wrong-password",
        ),
        pytest.param(
            lambda d, leaf: _write(d, "c.pem", cert_pem(leaf[1])),
            None,
            "no private key in the PEM file",
            id="pem-no-key",
        ),
        pytest.param(
            lambda d, leaf: _write(d, "k.pem", key_pem(leaf[0])),
            None,
            "no certificate in the PEM file",
            id="pem-no-certificate",
        ),
        pytest.param(
            lambda d, leaf: _write(
                d, "o.pem", cert_pem(make_certificate("other")[1]) + key_pem(leaf[0])
            ),
            None,
            "no certificate in the file matches its private key",
            id="pem-foreign-certificate",
        ),
        pytest.param(
            lambda d, leaf: _write(
                d,
                "ec.pem",
                cert_pem(leaf[1]) + key_pem(ec.generate_private_key(ec.SECP256R1())),
            ),
            None,
            "the private key must be RSA",
            id="pem-ec-key",
        ),
    ],
)
def test_unusable_certificates_name_the_file_never_the_password(
    tmp_path: Path,
    leaf: Any,
    make: Callable[[Path, Any], Path],
    password: str | None,
    reason: str,
) -> None:
    path = make(tmp_path, leaf)
    with pytest.raises(ConfigError) as caught:
        load_certificate(path, password)
    message = str(caught.value)
    assert message.startswith(f"AZURE_CLIENT_CERTIFICATE_PATH {str(path)!r}")
    assert reason in message
    assert PASSWORD not in message
    # No chained cryptography exception (whose text could carry details) in a traceback either.
    error = caught.value
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


def test_build_reports_a_bad_certificate_as_config_error(tmp_path: Path, leaf: Any) -> None:
    env = {
        "AZURE_TENANT_ID": TENANT,
        "AZURE_CLIENT_ID": CLIENT,
        "AZURE_CLIENT_CERTIFICATE_PATH": str(_pfx(tmp_path, leaf)),
        "AZURE_CLIENT_CERTIFICATE_PASSWORD": "nope",
    }
    with pytest.raises(ConfigError, match=r"app\.pfx"):
        build_token_provider(GLOBAL, env=env)


def test_certificate_provider_hands_msal_key_and_thumbprint(tmp_path: Path, leaf: Any) -> None:
    path = tmp_path / "app.pem"
    path.write_bytes(cert_pem(leaf[1]) + key_pem(leaf[0]))
    credential = load_certificate(path)
    fake = FakeMsal()
    tokens = app_provider(fake, credential=credential)
    assert anyio.run(tokens.token) == "token-1"
    assert fake.built[0]["client_credential"] == credential.for_msal()


# --- single flight, expiry, forced refresh --------------------------------------------------


def test_many_concurrent_callers_share_one_acquisition() -> None:
    fake = FakeMsal()
    fake.gate.clear()
    tokens = app_provider(fake)
    got: list[str] = []

    async def main() -> None:
        async def ask() -> None:
            got.append(await tokens.token())

        async with anyio.create_task_group() as group:
            for _ in range(50):
                group.start_soon(ask)
            # Every caller is now waiting: one in MSAL (blocked on the gate), 49 on the lock.
            await anyio.wait_all_tasks_blocked()
            fake.gate.set()

    anyio.run(main)
    assert got == ["token-1"] * 50
    assert fake.acquired == 1
    assert len(fake.built) == 1
    assert tokens.acquisitions == 1


def test_msal_app_is_built_with_authority_and_scope() -> None:
    fake = FakeMsal()
    tokens = app_provider(fake)
    anyio.run(tokens.token)
    built = fake.built[0]
    assert built["client_id"] == CLIENT
    assert built["client_credential"] == SECRET
    assert built["authority"] == f"https://login.microsoftonline.com/{TENANT}"
    # Microsoft's own hosts keep MSAL's instance discovery; the token cache is MSAL's default.
    assert "instance_discovery" not in built
    assert "token_cache" not in built


def test_a_foreign_authority_host_switches_instance_discovery_off() -> None:
    fake = FakeMsal()
    endpoints = resolve_endpoints(authority_host="https://127.0.0.1:9443")
    tokens = MsalAppTokenProvider(
        endpoints, tenant=TENANT, client_id=CLIENT, credential=SECRET, app_factory=fake
    )
    anyio.run(tokens.token)
    assert fake.built[0]["instance_discovery"] is False
    assert fake.built[0]["authority"] == f"https://127.0.0.1:9443/{TENANT}"


def test_token_is_reused_until_msal_would_refresh_it() -> None:
    clock = Clock()
    fake = FakeMsal()
    tokens = app_provider(fake, clock)
    assert anyio.run(tokens.token) == "token-1"
    clock.now += 3600 - 300 - 1  # MSAL calls a token with under 5 minutes left expired
    assert anyio.run(tokens.token) == "token-1"
    assert fake.acquired == 1
    clock.now += 2
    assert anyio.run(tokens.token) == "token-2"
    assert fake.acquired == 2


def test_short_lived_tokens_are_kept_for_three_quarters_of_their_life() -> None:
    clock = Clock()
    fake = FakeMsal(results=[{"access_token": "a", "expires_in": 8}])
    tokens = app_provider(fake, clock)
    assert anyio.run(tokens.token) == "a"
    clock.now += 5.9
    assert anyio.run(tokens.token) == "a"
    clock.now += 0.2
    assert anyio.run(tokens.token) == "token-2"


def test_refresh_on_from_the_authority_is_honoured() -> None:
    clock = Clock()
    refresh_on = int(time.time()) + 120
    fake = FakeMsal(results=[{"access_token": "a", "expires_in": 3600, "refresh_on": refresh_on}])
    tokens = app_provider(fake, clock)
    assert anyio.run(tokens.token) == "a"
    clock.now += 60
    assert anyio.run(tokens.token) == "a"
    clock.now += 120
    assert anyio.run(tokens.token) == "token-2"


def test_force_refresh_drops_msal_cached_token_and_fetches_anew() -> None:
    fake = FakeMsal()
    tokens = app_provider(fake)
    assert anyio.run(tokens.token) == "token-1"

    async def forced() -> str:
        return await tokens.token(force_refresh=True)

    assert anyio.run(forced) == "token-2"
    assert fake.removed == 1
    assert fake.acquired == 2


def test_concurrent_forced_refreshes_after_a_401_fetch_once() -> None:
    fake = FakeMsal()
    tokens = app_provider(fake)
    assert anyio.run(tokens.token) == "token-1"
    fake.gate.clear()
    got: list[str] = []

    async def main() -> None:
        async def rejected() -> None:
            got.append(await tokens.token(force_refresh=True))

        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(rejected)
            await anyio.wait_all_tasks_blocked()
            fake.gate.set()

    anyio.run(main)
    assert got == ["token-2"] * 20
    assert fake.removed == 1
    assert fake.acquired == 2


def test_failure_is_auth_error_with_msal_error_and_description_on_one_line() -> None:
    fake = FakeMsal(
        results=[
            {
                "error": "invalid_client",
                "error_description": "AADSTS7000215: Invalid client secret provided.\r\n"
                "Trace ID: 0000\r\nCorrelation ID: 1111",
            }
        ]
    )
    with pytest.raises(AuthError) as caught:
        anyio.run(app_provider(fake).token)
    assert caught.value.exit_code == 3
    assert str(caught.value) == (
        f"sign-in failed for client {CLIENT} at https://login.microsoftonline.com/{TENANT}: "
        "invalid_client: AADSTS7000215: Invalid client secret provided. "
        "Trace ID: 0000 Correlation ID: 1111"
    )


def test_the_secret_is_redacted_even_if_the_authority_echoes_it() -> None:
    fake = FakeMsal(results=[{"error": "invalid_request", "error_description": f"bad {SECRET}"}])
    with pytest.raises(AuthError) as caught:
        anyio.run(app_provider(fake).token)
    assert SECRET not in str(caught.value)
    assert "bad ***" in str(caught.value)


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(requests.ConnectionError("connection refused"), id="network"),
        pytest.param(ValueError("Unable to get authority configuration"), id="authority"),
        pytest.param(requests.exceptions.SSLError("certificate verify failed"), id="tls"),
    ],
)
def test_exceptions_from_msal_become_auth_errors(error: Exception) -> None:
    fake = FakeMsal(error=error)
    with pytest.raises(AuthError) as caught:
        anyio.run(app_provider(fake).token)
    message = str(caught.value)
    assert message.startswith(f"cannot get a token from https://login.microsoftonline.com/{TENANT}")
    assert type(error).__name__ in message
    assert caught.value.__cause__ is None


def test_a_failed_renewal_keeps_the_still_valid_token_then_retries() -> None:
    clock = Clock()
    fake = FakeMsal()
    tokens = app_provider(fake, clock)
    assert anyio.run(tokens.token) == "token-1"
    clock.now += 3400  # inside MSAL's 5-minute window, 200 s before the real expiry
    fake.error = requests.ConnectionError("authority down")
    assert anyio.run(tokens.token) == "token-1"
    assert anyio.run(tokens.token) == "token-1"  # no new attempt during the retry delay
    assert fake.acquired == 2
    clock.now += 11
    fake.error = None
    assert anyio.run(tokens.token) == "token-3"


def test_no_fallback_when_graph_rejected_the_token_or_it_is_nearly_expired() -> None:
    clock = Clock()
    fake = FakeMsal()
    tokens = app_provider(fake, clock)
    anyio.run(tokens.token)
    fake.error = requests.ConnectionError("authority down")

    async def forced() -> str:
        return await tokens.token(force_refresh=True)

    with pytest.raises(AuthError):
        anyio.run(forced)
    clock.now += 3600 - 30
    with pytest.raises(AuthError):
        anyio.run(tokens.token)


# --- device code ----------------------------------------------------------------------------


@dataclass
class FakePublic:
    accounts: list[dict[str, Any]] = field(default_factory=list)
    silent: dict[str, Any] | None = None
    flow: dict[str, Any] = field(
        default_factory=lambda: {
            "user_code": "ABCD-EFGH",
            "message": "To sign in, open https://microsoft.com/devicelogin and enter ABCD-EFGH.",
            "expires_at": time.time() + 900,
        }
    )
    calls: list[str] = field(default_factory=list)
    built: dict[str, Any] = field(default_factory=dict)

    def __call__(self, client_id: str, **kwargs: Any) -> FakePublic:
        self.built = {"client_id": client_id, **kwargs}
        return self

    def get_accounts(self) -> list[dict[str, Any]]:
        return self.accounts

    def acquire_token_silent_with_error(
        self, scopes: list[str], account: dict[str, Any], force_refresh: bool = False
    ) -> dict[str, Any] | None:
        self.calls.append(f"silent force={force_refresh}")
        return self.silent

    def initiate_device_flow(self, scopes: list[str]) -> dict[str, Any]:
        self.calls.append(f"initiate {scopes}")
        return self.flow

    def acquire_token_by_device_flow(self, flow: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("device flow")
        return {"access_token": "delegated", "expires_in": 3600}


def device_provider(fake: FakePublic, prompts: list[str]) -> DeviceCodeTokenProvider:
    return DeviceCodeTokenProvider(
        GLOBAL, client_id=CLIENT, prompt=prompts.append, app_factory=fake, clock=Clock()
    )


def test_device_code_prints_the_sign_in_message_and_waits_for_it() -> None:
    fake, prompts = FakePublic(), list[str]()
    tokens = device_provider(fake, prompts)
    assert anyio.run(tokens.token) == "delegated"
    assert prompts == [fake.flow["message"]]
    assert fake.calls == ["initiate ['https://graph.microsoft.com/.default']", "device flow"]
    assert fake.built["authority"] == "https://login.microsoftonline.com/organizations"
    assert "client_credential" not in fake.built


def test_device_code_prompt_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakePublic()
    tokens = DeviceCodeTokenProvider(GLOBAL, client_id=CLIENT, app_factory=fake)
    anyio.run(tokens.token)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "ABCD-EFGH" in captured.err


def test_device_code_uses_a_cached_account_silently() -> None:
    fake, prompts = FakePublic(accounts=[{"username": "admin@contoso.com"}]), list[str]()
    fake.silent = {"access_token": "from-cache", "expires_in": 3600}
    tokens = device_provider(fake, prompts)
    assert anyio.run(tokens.token) == "from-cache"
    assert prompts == []

    async def forced() -> str:
        return await tokens.token(force_refresh=True)

    anyio.run(forced)
    assert fake.calls == ["silent force=False", "silent force=True"]


def test_device_code_falls_back_to_sign_in_when_the_cached_account_fails() -> None:
    fake, prompts = FakePublic(accounts=[{"username": "admin@contoso.com"}]), list[str]()
    fake.silent = {"error": "invalid_grant"}
    assert anyio.run(device_provider(fake, prompts).token) == "delegated"
    assert len(prompts) == 1


def test_device_flow_that_cannot_start_is_an_auth_error() -> None:
    fake, prompts = FakePublic(), list[str]()
    fake.flow = {"error": "unauthorized_client", "error_description": "not a public client"}
    with pytest.raises(AuthError, match="unauthorized_client: not a public client"):
        anyio.run(device_provider(fake, prompts).token)
    assert prompts == []


class PollingPublic(FakePublic):
    """Polls like MSAL: until the flow's `expires_at` has passed (nobody ever signs in)."""

    def __init__(self) -> None:
        # A short flow, so that a provider that does not stop the polling fails in seconds.
        super().__init__(flow={"user_code": "C", "message": "m", "expires_at": time.time() + 5})
        self.prompted = threading.Event()
        self.stopped = threading.Event()
        self.stopped_by_us = False

    def acquire_token_by_device_flow(self, flow: dict[str, Any]) -> dict[str, Any]:
        self.prompted.set()
        while flow["expires_at"] > time.time():
            time.sleep(0.01)
        self.stopped_by_us = flow["expires_at"] == 0
        self.stopped.set()
        return {"error": "expired_token"}


def test_cancelling_a_device_code_wait_stops_the_polling_thread() -> None:
    fake = PollingPublic()
    tokens = DeviceCodeTokenProvider(
        GLOBAL, client_id=CLIENT, prompt=lambda message: None, app_factory=fake
    )
    outcome: list[str] = []

    async def main() -> None:
        async with anyio.create_task_group() as group:

            async def wait_for_sign_in() -> None:
                outcome.append(await tokens.token())

            group.start_soon(wait_for_sign_in)
            await anyio.to_thread.run_sync(fake.prompted.wait, 10)
            group.cancel_scope.cancel()

    anyio.run(main)
    assert outcome == []
    assert fake.stopped.wait(10)
    assert fake.stopped_by_us  # cancelled while the worker was still polling, and it stopped


# --- a real MSAL app against a fake authority (no network) ----------------------------------


@dataclass
class FakeResponse:
    status_code: int
    text: str
    headers: dict[str, str] = field(default_factory=dict)

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise requests.HTTPError(f"{self.status_code}")


@dataclass
class FakeAuthority:
    """Answers MSAL's discovery and token requests the way Entra does."""

    host: str = "https://login.example.test"
    token_posts: list[dict[str, Any]] = field(default_factory=list)
    lifetime: int = 3600

    def get(self, url: str, **kwargs: Any) -> FakeResponse:
        tenant = url.removeprefix(self.host + "/").split("/")[0]
        config = {
            "issuer": f"{self.host}/{tenant}/v2.0",
            "authorization_endpoint": f"{self.host}/{tenant}/oauth2/v2.0/authorize",
            "token_endpoint": f"{self.host}/{tenant}/oauth2/v2.0/token",
            "device_authorization_endpoint": f"{self.host}/{tenant}/oauth2/v2.0/devicecode",
        }
        return FakeResponse(200, json.dumps(config))

    def post(self, url: str, **kwargs: Any) -> FakeResponse:
        data = kwargs.get("data") or {}
        if isinstance(data, str):
            data = {k: v[0] for k, v in parse_qs(data).items()}
        self.token_posts.append(dict(data))
        body = {
            "token_type": "Bearer",
            "expires_in": self.lifetime,
            "access_token": make_jwt(tid=TENANT, appid=CLIENT, n=len(self.token_posts)),
        }
        return FakeResponse(200, json.dumps(body))

    def close(self) -> None:
        pass


def real_msal(authority: FakeAuthority) -> Callable[..., Any]:
    def factory(client_id: str, **kwargs: Any) -> Any:
        return msal.ConfidentialClientApplication(client_id, **{**kwargs, "http_client": authority})

    return factory


def real_provider(authority: FakeAuthority, cache: Path | None = None) -> MsalAppTokenProvider:
    endpoints = resolve_endpoints(authority_host=authority.host)
    return MsalAppTokenProvider(
        endpoints,
        tenant=TENANT,
        client_id=CLIENT,
        credential=SECRET,
        token_cache=cache,
        app_factory=real_msal(authority),
    )


def test_real_msal_caches_and_force_refresh_really_asks_again() -> None:
    authority = FakeAuthority()
    tokens = real_provider(authority)
    first = anyio.run(tokens.token)
    assert describe_token(first).tenant == TENANT
    assert len(authority.token_posts) == 1
    post = authority.token_posts[0]
    assert post["grant_type"] == "client_credentials"
    assert post["scope"] == f"{authority.host}/.default".replace(
        authority.host, "https://graph.microsoft.com"
    )

    async def forced() -> str:
        return await tokens.token(force_refresh=True)

    second = anyio.run(forced)
    assert second != first
    assert len(authority.token_posts) == 2


@pytest.fixture
def loose_umask() -> Iterator[None]:
    # Prove the cache file mode does not depend on the umask.
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_token_cache_file_is_0600_in_a_0700_directory(tmp_path: Path, loose_umask: None) -> None:
    cache = token_cache_path({"XDG_CONFIG_HOME": str(tmp_path / "config")})
    authority = FakeAuthority()
    token = anyio.run(real_provider(authority, cache).token)
    assert cache == tmp_path / "config" / "autopilot-batch" / "token_cache.json"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o700
    assert SECRET not in cache.read_text()
    assert [p.name for p in cache.parent.iterdir()] == ["token_cache.json"]
    # A second process with the same cache gets the token without asking the authority.
    again = FakeAuthority()
    assert anyio.run(real_provider(again, cache).token) == token
    assert again.token_posts == []


def test_token_cache_tightens_a_loosened_file(tmp_path: Path) -> None:
    cache = tmp_path / "autopilot-batch" / "token_cache.json"
    anyio.run(real_provider(FakeAuthority(), cache).token)
    cache.chmod(0o644)
    real_provider(FakeAuthority(), cache)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600


def test_a_damaged_token_cache_is_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "autopilot-batch" / "token_cache.json"
    cache.parent.mkdir()
    cache.write_text("{not json", encoding="utf-8")
    authority = FakeAuthority()
    with caplog.at_level(logging.WARNING, logger="batch.auth"):
        anyio.run(real_provider(authority, cache).token)
    assert "not valid JSON" in caplog.text
    assert len(authority.token_posts) == 1
    assert "AccessToken" in json.loads(cache.read_text())


def test_an_unwritable_token_cache_does_not_fail_the_sign_in(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    cache = blocker / "autopilot-batch" / "token_cache.json"
    with caplog.at_level(logging.WARNING, logger="batch.auth"):
        token = anyio.run(real_provider(FakeAuthority(), cache).token)
    assert describe_token(token).tenant == TENANT
    assert "cannot read the token cache" in caplog.text
    assert "cannot save the token cache" in caplog.text


def test_token_cache_path_follows_xdg(tmp_path: Path) -> None:
    assert token_cache_path({"XDG_CONFIG_HOME": "/etc/xdg-home"}) == Path(
        "/etc/xdg-home/autopilot-batch/token_cache.json"
    )
    home = {"HOME": str(tmp_path)}
    expected = tmp_path / ".config" / "autopilot-batch" / "token_cache.json"
    assert token_cache_path(home) == expected
    assert token_cache_path({**home, "XDG_CONFIG_HOME": "relative/dir"}) == expected


def test_token_cache_true_persists_device_code_sign_ins_in_the_config_directory(
    tmp_path: Path,
) -> None:
    env = {"AZURE_CLIENT_ID": CLIENT, "XDG_CONFIG_HOME": str(tmp_path)}
    tokens = build_token_provider(GLOBAL, device_code=True, token_cache=True, env=env)
    assert isinstance(tokens, DeviceCodeTokenProvider)
    cache_file = tokens._cache_file
    assert cache_file is not None
    assert cache_file.path == tmp_path / "autopilot-batch" / "token_cache.json"
    off = build_token_provider(GLOBAL, device_code=True, token_cache=False, env=env)
    assert isinstance(off, DeviceCodeTokenProvider)
    assert off._cache_file is None


def test_app_only_tokens_are_never_persisted(tmp_path: Path) -> None:
    env = {**FULL_SECRET, "XDG_CONFIG_HOME": str(tmp_path)}
    tokens = build_token_provider(GLOBAL, token_cache=True, env=env)
    assert isinstance(tokens, MsalAppTokenProvider)
    assert tokens._cache_file is None


# --- token claims ---------------------------------------------------------------------------


def test_describe_an_app_token() -> None:
    exp = int(time.time()) + 3600
    info = describe_token(
        make_jwt(tid=TENANT, appid=CLIENT, roles=[REQUIRED_PERMISSION], exp=exp, aud="g")
    )
    assert (info.tenant, info.app_id, info.audience) == (TENANT, CLIENT, "g")
    assert info.expires_at == datetime.fromtimestamp(exp, UTC)
    assert info.roles == (REQUIRED_PERMISSION,)
    assert info.grants() is True
    assert info.delegated is False
    assert info.to_json()["expires_at"] == datetime.fromtimestamp(exp, UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


def test_describe_a_delegated_token() -> None:
    token = make_jwt(
        tid=TENANT,
        azp=CLIENT,
        scp="User.Read deviceManagementManagedDevices.readWrite.all",
        upn="admin@contoso.com",
    )
    info = describe_token(token)
    assert info.app_id == CLIENT
    assert info.user == "admin@contoso.com"
    assert info.delegated is True
    assert info.grants() is True
    assert info.expires_at is None


def test_describe_a_token_without_the_permission() -> None:
    info = describe_token(make_jwt(tid=TENANT, appid=CLIENT, roles=["User.Read.All"]))
    assert info.grants() is False


@pytest.mark.parametrize("token", ["opaque-token", "", "a.b.c", "eyJhbGciOiJub25lIn0.e30"])
def test_opaque_tokens_are_unknown(token: str) -> None:
    info = describe_token(token)
    assert (info.tenant, info.app_id, info.is_jwt) == ("unknown", "unknown", False)
    assert info.grants() is None


def test_odd_claim_types_are_tolerated() -> None:
    info = describe_token(make_jwt(exp="soon", roles="Not.A.List", scp=5))
    assert info.expires_at is None
    assert info.roles == ()
    assert info.scopes == ()


# --- whoami ---------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in [*FULL_SECRET, "GRAPH_ACCESS_TOKEN", "AZURE_CLIENT_CERTIFICATE_PATH"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return monkeypatch


@pytest.fixture
def graph(emulator_factory: EmulatorFactory) -> EmulatorServer:
    """Graph for `whoami`'s one read: the emulator (realistic), any bearer token accepted."""
    return emulator_factory(EmulatorConfig(), events=3)


def whoami(graph: EmulatorServer | None, *args: str) -> Any:
    where = ["--graph-url", graph.url] if graph is not None else []
    return CliRunner().invoke(app, ["whoami", *where, *args])


def test_whoami_prints_tenant_app_cloud_expiry_graph_and_permission(
    clean_env: pytest.MonkeyPatch, graph: EmulatorServer
) -> None:
    exp = int(time.time()) + 3000
    token = make_jwt(tid=TENANT, appid=CLIENT, roles=[REQUIRED_PERMISSION], exp=exp)
    clean_env.setenv("GRAPH_ACCESS_TOKEN", token)
    result = whoami(graph)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"tenant      {TENANT}"
    assert lines[1] == f"app id      {CLIENT}"
    assert lines[2] == f"cloud       global ({graph.url})"
    assert lines[3] == "credential  GRAPH_ACCESS_TOKEN"
    assert lines[4].startswith("expires     ") and lines[4].endswith("(in 49 min)")
    assert lines[5].startswith("graph       read works (200 OK, ")
    assert lines[6] == f"permission  {REQUIRED_PERMISSION}: granted (application role)"
    assert result.stderr == ""
    assert token not in result.output
    # The one read went to Graph: the proof is Graph's answer, not the token's claims.
    assert graph.stats()["requests"] == 1


def test_whoami_json(clean_env: pytest.MonkeyPatch, graph: EmulatorServer) -> None:
    token = make_jwt(tid=TENANT, appid=CLIENT, scp=REQUIRED_PERMISSION, upn="a@b.example")
    clean_env.setenv("GRAPH_ACCESS_TOKEN", token)
    result = whoami(graph, "--json", "--cloud", "china")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True
    assert data["tenant"] == TENANT
    assert data["user"] == "a@b.example"
    assert data["cloud"] == "china"
    assert data["graph_root"] == graph.url
    assert data["authority_host"] == "https://login.chinacloudapi.cn"
    assert data["permission_granted"] is True
    assert data["delegated"] is True
    assert data["expires_at"] is None
    assert data["graph"]["ok"] is True and data["graph"]["status"] == 200
    assert data["graph"]["url"].endswith("/beta/deviceManagement/autopilotEvents?$top=1&$select=id")


def test_whoami_fails_a_cron_preflight_without_the_permission(
    clean_env: pytest.MonkeyPatch, graph: EmulatorServer
) -> None:
    clean_env.setenv("GRAPH_ACCESS_TOKEN", make_jwt(tid=TENANT, appid=CLIENT, roles=["X.Read"]))
    result = whoami(graph)
    assert result.exit_code == 3
    assert f"permission  {REQUIRED_PERMISSION}: MISSING" in result.stdout
    assert result.stderr.strip() == (
        f"Error: the token lacks {REQUIRED_PERMISSION}: grant it to the app as an application "
        "permission and give admin consent"
    )


def test_whoami_says_how_long_ago_a_token_expired(
    clean_env: pytest.MonkeyPatch, graph: EmulatorServer
) -> None:
    exp = int(time.time()) - 11 * 60 - 5
    token = make_jwt(tid=TENANT, appid=CLIENT, roles=[REQUIRED_PERMISSION], exp=exp)
    clean_env.setenv("GRAPH_ACCESS_TOKEN", token)
    result = whoami(graph)
    assert result.exit_code == 3
    assert "(expired 11 minutes ago)" in result.stdout and "in -" not in result.stdout
    assert result.stderr.startswith("Error: the token expired 11 minutes ago (")
    as_json = whoami(graph, "--json")
    assert as_json.exit_code == 3
    data = json.loads(as_json.stdout)  # one object, the error in it
    assert data["ok"] is False and data["expired"] is True and data["exit_code"] == 3
    assert data["error"].startswith("the token expired 11 minutes ago")


def test_whoami_with_an_opaque_token_takes_graphs_word(
    clean_env: pytest.MonkeyPatch, graph: EmulatorServer
) -> None:
    clean_env.setenv("GRAPH_ACCESS_TOKEN", "opaque")
    result = whoami(graph)
    assert result.exit_code == 0
    assert "tenant      unknown" in result.stdout
    assert "graph       read works (200 OK" in result.stdout
    assert "not named in the token (opaque token)" in result.stdout


def test_whoami_exits_3_when_graph_refuses_the_token(
    clean_env: pytest.MonkeyPatch, emulator_factory: EmulatorFactory
) -> None:
    strict = emulator_factory(EmulatorConfig(token="the-right-token"), events=3)
    clean_env.setenv("GRAPH_ACCESS_TOKEN", "a-wrong-token")
    result = whoami(strict)
    assert result.exit_code == 3
    assert "graph       REFUSED (401: " in result.stdout
    assert result.stderr.startswith("Error: Graph does not accept the token")
    as_json = whoami(strict, "--json")
    data = json.loads(as_json.stdout)
    assert as_json.exit_code == 3 and data["ok"] is False and data["graph"]["status"] == 401
    clean_env.setenv("GRAPH_ACCESS_TOKEN", "the-right-token")
    assert whoami(strict).exit_code == 0


def test_whoami_exits_3_with_what_to_grant_when_intune_denies_the_app(
    clean_env: pytest.MonkeyPatch, emulator_factory: EmulatorFactory
) -> None:
    denying = emulator_factory(EmulatorConfig(deny_permission="all"), events=3)
    clean_env.setenv("GRAPH_ACCESS_TOKEN", "opaque")
    result = whoami(denying)
    assert result.exit_code == 3
    assert "REFUSED (401" in result.stdout
    assert "Grant " in result.stderr and "this is not a token problem" in result.stderr


def test_whoami_without_credentials_is_a_config_error(clean_env: pytest.MonkeyPatch) -> None:
    result = whoami(None, "--json")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: no credentials")
    assert json.loads(result.stdout) == {
        "ok": False,
        "error": result.stderr.strip().removeprefix("Error: "),
        "exit_code": 2,
    }


def test_whoami_rejects_a_bad_cloud(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("GRAPH_ACCESS_TOKEN", "opaque")
    result = whoami(None, "--cloud", "mars")
    assert result.exit_code == 2
    assert "unknown cloud 'mars'" in result.stderr


def test_whoami_sign_in_failure_exits_3_and_never_shows_the_secret(
    clean_env: pytest.MonkeyPatch,
) -> None:
    for name, value in FULL_SECRET.items():
        clean_env.setenv(name, value)
    failure = {"error": "invalid_client", "error_description": f"no {SECRET}"}
    fake = FakeMsal(results=[failure, failure])
    clean_env.setattr(msal, "ConfidentialClientApplication", fake)
    for args in ([], ["--json"]):
        result = whoami(None, *args)
        assert result.exit_code == 3
        assert "invalid_client: no ***" in result.stderr
        assert SECRET not in result.output
    assert json.loads(result.stdout)["exit_code"] == 3  # --json: one object even so
    assert fake.built[0]["client_credential"] == SECRET  # it did reach MSAL, and only MSAL


def test_every_exported_name_exists() -> None:
    assert all(hasattr(auth, name) for name in auth.__all__)
    assert "CertificateCredential" in auth.__all__
