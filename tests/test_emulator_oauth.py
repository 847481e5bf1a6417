"""The emulator's sign-in: real MSAL clients against the TLS emulator, and token edge cases."""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import msal
import pytest
import requests
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from batch.emulator import EmulatorServer
from batch.emulator.oauth import (
    CLIENT_ASSERTION_TYPE,
    READ_PERMISSION,
    WRITE_PERMISSION,
    AadError,
    IdentityProvider,
    TokenRejected,
)

EmulatorFactory = Callable[..., EmulatorServer]
TENANT = "8f2c6b1e-0000-4000-8000-000000000001"
CLIENT = "11111111-2222-4333-8444-555555555555"
SECRET = "emulator-secret-value"
EVENTS = "/beta/deviceManagement/autopilotEvents"


@pytest.fixture(scope="module")
def client_cert() -> tuple[str, str]:
    """An RSA certificate and its private key (PEM), as an app registration would hold."""
    leaf = trustme.CA(key_type=trustme.KeyType.RSA).issue_cert(
        "autopilot-batch-client", key_type=trustme.KeyType.RSA
    )
    return leaf.cert_chain_pems[0].bytes().decode(), leaf.private_key_pem.bytes().decode()


@pytest.fixture
def tls_emulator(emulator_factory: EmulatorFactory) -> EmulatorServer:
    return emulator_factory(tls=True, seed=1, events=3)


@pytest.fixture
def session(tls_emulator: EmulatorServer) -> Iterator[requests.Session]:
    """MSAL's HTTP client, trusting the emulator's CA (closed after the test)."""
    with requests.Session() as s:
        # requests lets REQUESTS_CA_BUNDLE from the environment win over Session.verify.
        s.trust_env = False
        s.verify = str(tls_emulator.ca_path)
        yield s


def confidential(
    server: EmulatorServer, session: requests.Session, credential: Any, **kwargs: Any
) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        CLIENT,
        client_credential=credential,
        authority=f"{server.url}/{TENANT}",
        http_client=session,
        instance_discovery=False,
        **kwargs,
    )


def https(server: EmulatorServer) -> httpx.Client:
    """An httpx client that trusts the emulator's CA."""
    assert server.ca_path is not None
    trust = ssl.create_default_context(cafile=str(server.ca_path))
    return httpx.Client(base_url=server.url, verify=trust)


def graph_get(server: EmulatorServer, token: str) -> httpx.Response:
    with https(server) as c:
        return c.get(EVENTS, headers={"Authorization": f"Bearer {token}"})


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def test_client_secret_through_msal(
    tls_emulator: EmulatorServer, session: requests.Session
) -> None:
    tls_emulator.register_app(CLIENT, secret=SECRET, tenant=TENANT)
    app = confidential(tls_emulator, session, SECRET)
    result = app.acquire_token_for_client(scopes=[f"{tls_emulator.url}/.default"])
    assert "access_token" in result, result
    token = result["access_token"]
    claims = claims_of(token)
    assert claims["tid"] == TENANT and claims["appid"] == CLIENT
    assert claims["roles"] == [WRITE_PERMISSION]
    assert claims["aud"] == tls_emulator.url
    assert claims["exp"] > time.time() + 3000
    assert graph_get(tls_emulator, token).status_code == 200
    # MSAL answers the second call from its cache: no new token.
    again = app.acquire_token_for_client(scopes=[f"{tls_emulator.url}/.default"])
    assert again["access_token"] == token
    assert again["token_source"] == "cache"


@pytest.mark.parametrize("style", ["sha1-thumbprint-rs256", "public-certificate-ps256"])
def test_certificate_client_assertion_through_msal(
    tls_emulator: EmulatorServer,
    session: requests.Session,
    client_cert: tuple[str, str],
    style: str,
) -> None:
    cert_pem, key_pem = client_cert
    tls_emulator.register_app(CLIENT, certificate_pem=cert_pem)
    if style == "sha1-thumbprint-rs256":
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        credential = {"private_key": key_pem, "thumbprint": cert.fingerprint(hashes.SHA1()).hex()}
    else:
        credential = {"private_key": key_pem, "public_certificate": cert_pem}
    app = confidential(tls_emulator, session, credential)
    result = app.acquire_token_for_client(scopes=[f"{tls_emulator.url}/.default"])
    assert "access_token" in result, result
    assert claims_of(result["access_token"])["appidacr"] == "2"  # certificate credential
    assert graph_get(tls_emulator, result["access_token"]).status_code == 200


def test_unregistered_certificate_is_refused(
    tls_emulator: EmulatorServer, session: requests.Session, client_cert: tuple[str, str]
) -> None:
    other = trustme.CA(key_type=trustme.KeyType.RSA).issue_cert(
        "other", key_type=trustme.KeyType.RSA
    )
    tls_emulator.register_app(CLIENT, certificate_pem=other.cert_chain_pems[0].bytes())
    cert_pem, key_pem = client_cert
    app = confidential(
        tls_emulator, session, {"private_key": key_pem, "public_certificate": cert_pem}
    )
    result = app.acquire_token_for_client(scopes=[f"{tls_emulator.url}/.default"])
    assert result["error"] == "invalid_client"
    assert "AADSTS700027" in result["error_description"]


def test_wrong_secret_unknown_app_and_wrong_tenant(
    tls_emulator: EmulatorServer, session: requests.Session
) -> None:
    scopes = [f"{tls_emulator.url}/.default"]
    result = confidential(tls_emulator, session, SECRET).acquire_token_for_client(scopes=scopes)
    assert (
        result["error"] == "unauthorized_client" and "AADSTS700016" in result["error_description"]
    )
    tls_emulator.register_app(CLIENT, secret=SECRET, tenant=TENANT)
    result = confidential(tls_emulator, session, "wrong").acquire_token_for_client(scopes=scopes)
    assert result["error"] == "invalid_client" and "AADSTS7000215" in result["error_description"]
    assert "wrong" not in result["error_description"]
    elsewhere = msal.ConfidentialClientApplication(
        CLIENT,
        client_credential=SECRET,
        authority=f"{tls_emulator.url}/another-tenant",
        http_client=session,
        instance_discovery=False,
    )
    result = elsewhere.acquire_token_for_client(scopes=scopes)
    assert result["error"] == "unauthorized_client"


def test_instance_discovery_endpoint(
    tls_emulator: EmulatorServer, session: requests.Session
) -> None:
    """A client that keeps instance discovery on, pointed at the emulator, still signs in."""
    tls_emulator.register_app(CLIENT, secret=SECRET)
    app = msal.ConfidentialClientApplication(
        CLIENT,
        client_credential=SECRET,
        authority=f"{tls_emulator.url}/{TENANT}",
        http_client=session,
        instance_discovery=f"{tls_emulator.url}/common/discovery/instance",
    )
    result = app.acquire_token_for_client(scopes=[f"{tls_emulator.url}/.default"])
    assert "access_token" in result, result


def test_token_expiry(emulator_factory: EmulatorFactory) -> None:
    server = emulator_factory(tls=True, token_ttl=0.5, events=1)
    server.register_app(CLIENT, secret=SECRET)
    with https(server) as c:
        response = c.post(
            f"/{TENANT}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": CLIENT,
                "client_secret": SECRET,
                "scope": f"{server.url}/.default",
            },
        )
        body = response.json()
        assert body["token_type"] == "Bearer" and body["expires_in"] == 1
        token = body["access_token"]
        assert c.get(EVENTS, headers={"Authorization": f"Bearer {token}"}).status_code == 200
        time.sleep(max(0.0, claims_of(token)["exp"] - time.time()) + 0.05)
        expired = c.get(EVENTS, headers={"Authorization": f"Bearer {token}"})
        assert expired.status_code == 401
        assert expired.json()["error"]["code"] == "InvalidAuthenticationToken"
        assert "expired" in expired.json()["error"]["message"]


def test_disabled_app(tls_emulator: EmulatorServer, session: requests.Session) -> None:
    tls_emulator.register_app(CLIENT, secret=SECRET)
    scopes = [f"{tls_emulator.url}/.default"]
    token = confidential(tls_emulator, session, SECRET).acquire_token_for_client(scopes=scopes)[
        "access_token"
    ]
    assert graph_get(tls_emulator, token).status_code == 200
    tls_emulator.disable_app(CLIENT)
    refused = graph_get(tls_emulator, token)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "InvalidAuthenticationToken"
    fresh = confidential(tls_emulator, session, SECRET).acquire_token_for_client(scopes=scopes)
    assert fresh["error"] == "unauthorized_client"
    assert "AADSTS7000112" in fresh["error_description"]
    tls_emulator.enable_app(CLIENT)
    assert graph_get(tls_emulator, token).status_code == 200


def test_permissions_are_enforced(tls_emulator: EmulatorServer, session: requests.Session) -> None:
    tls_emulator.register_app(CLIENT, secret=SECRET, roles=[READ_PERMISSION])
    token = confidential(tls_emulator, session, SECRET).acquire_token_for_client(
        scopes=[f"{tls_emulator.url}/.default"]
    )["access_token"]
    assert graph_get(tls_emulator, token).status_code == 200
    event_id = str(tls_emulator.store.list()[0]["id"])
    with https(tls_emulator) as c:
        response = c.patch(
            f"{EVENTS}/{event_id}",
            json={"osVersion": "x"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "Forbidden"
    assert WRITE_PERMISSION in response.json()["error"]["message"]


def test_a_token_for_another_resource_is_refused(
    tls_emulator: EmulatorServer, session: requests.Session
) -> None:
    tls_emulator.register_app(CLIENT, secret=SECRET)
    result = confidential(tls_emulator, session, SECRET).acquire_token_for_client(
        scopes=["api://some-other-api/.default"]
    )
    refused = graph_get(tls_emulator, result["access_token"])
    assert refused.status_code == 401
    assert "audience" in refused.json()["error"]["message"]
    # Only emulator-issued tokens count once apps are registered.
    assert graph_get(tls_emulator, "made-up-token").status_code == 401


def test_device_code_flow_through_msal(
    tls_emulator: EmulatorServer, session: requests.Session
) -> None:
    app = msal.PublicClientApplication(
        CLIENT,
        authority=f"{tls_emulator.url}/organizations",
        http_client=session,
        instance_discovery=False,
    )
    scopes = [f"{tls_emulator.url}/{WRITE_PERMISSION}"]
    flow = app.initiate_device_flow(scopes=scopes)
    assert "user_code" in flow and tls_emulator.url in flow["message"]
    result = app.acquire_token_by_device_flow(flow)
    assert "access_token" in result, result
    claims = claims_of(result["access_token"])
    assert claims["scp"] == WRITE_PERMISSION and claims["idtyp"] == "user"
    assert graph_get(tls_emulator, result["access_token"]).status_code == 200
    # The account is cached, and its refresh token renews the access token.
    accounts = app.get_accounts()
    assert accounts
    renewed = app.acquire_token_silent(scopes, account=accounts[0], force_refresh=True)
    assert renewed and renewed["access_token"] != result["access_token"]


def test_openid_configuration_and_signing_keys(tls_emulator: EmulatorServer) -> None:
    tls_emulator.register_app(CLIENT, secret=SECRET)
    with https(tls_emulator) as c:
        config = c.get(f"/{TENANT}/v2.0/.well-known/openid-configuration").json()
        assert config["token_endpoint"] == f"{tls_emulator.url}/{TENANT}/oauth2/v2.0/token"
        assert config["issuer"] and config["device_authorization_endpoint"]
        keys = c.get(config["jwks_uri"]).json()["keys"]
        token = c.post(
            config["token_endpoint"],
            data={
                "grant_type": "client_credentials",
                "client_id": CLIENT,
                "client_secret": SECRET,
                "scope": "https://graph.microsoft.com/.default",
            },
        ).json()["access_token"]
    key = jwt.PyJWK(keys[0])
    claims = jwt.decode(token, key, algorithms=["RS256"], audience="https://graph.microsoft.com")
    assert claims["appid"] == CLIENT
    assert jwt.get_unverified_header(token)["kid"] == keys[0]["kid"]


@pytest.mark.parametrize(
    ("form", "error", "code"),
    [
        ({}, "invalid_request", "AADSTS900144"),
        ({"grant_type": "password"}, "unsupported_grant_type", "AADSTS70003"),
        ({"grant_type": "client_credentials"}, "invalid_request", "AADSTS900144"),
        (
            {"grant_type": "client_credentials", "client_id": CLIENT, "client_secret": SECRET},
            "invalid_scope",
            "AADSTS1002012",
        ),
        (
            {"grant_type": "client_credentials", "client_id": CLIENT, "scope": "x/.default"},
            "invalid_client",
            "AADSTS7000218",
        ),
        (
            {"grant_type": "client_credentials", "client_id": CLIENT, "scope": "x/User.Read"},
            "invalid_scope",
            "AADSTS1002012",
        ),
        (
            {"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "device_code": "x"},
            "invalid_grant",
            "AADSTS70000",
        ),
    ],
)
def test_token_endpoint_errors(
    emulator_factory: EmulatorFactory, form: dict[str, str], error: str, code: str
) -> None:
    server = emulator_factory()
    server.register_app(CLIENT, secret=SECRET)
    with httpx.Client(base_url=server.url) as c:
        response = c.post(f"/{TENANT}/oauth2/v2.0/token", data=form)
    assert response.status_code in (400, 401)
    body = response.json()
    assert body["error"] == error and body["error_description"].startswith(code)
    assert body["error_codes"] == [int(code.removeprefix("AADSTS"))]


def test_client_secret_basic(emulator_factory: EmulatorFactory) -> None:
    server = emulator_factory()
    server.register_app(CLIENT, secret=SECRET)
    with httpx.Client(base_url=server.url) as c:
        response = c.post(
            f"/{TENANT}/oauth2/v2.0/token",
            data={"grant_type": "client_credentials", "scope": f"{server.url}/.default"},
            auth=(CLIENT, SECRET),
        )
    assert response.status_code == 200 and response.json()["access_token"]


# --- client assertions, unit level --------------------------------------------------------------

ENDPOINT = f"https://login.example/{TENANT}/oauth2/v2.0/token"


@pytest.fixture
def provider(client_cert: tuple[str, str]) -> IdentityProvider:
    idp = IdentityProvider()
    idp.register_app(CLIENT, certificate_pem=client_cert[0])
    return idp


def assertion(
    client_cert: tuple[str, str], *, algorithm: str = "RS256", key: str | None = None, **claims: Any
) -> str:
    cert_pem, key_pem = client_cert
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    thumb = base64.urlsafe_b64encode(cert.fingerprint(hashes.SHA1())).decode().rstrip("=")
    payload = {"aud": ENDPOINT, "iss": CLIENT, "sub": CLIENT, "exp": time.time() + 600}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key or key_pem, algorithm=algorithm, headers={"x5t": thumb})


def token_form(signed: str, **extra: str) -> dict[str, str]:
    form = {
        "grant_type": "client_credentials",
        "client_id": CLIENT,
        "scope": "https://graph.microsoft.com/.default",
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": signed,
    }
    form.update(extra)
    return form


def test_a_good_assertion_gets_a_token(
    provider: IdentityProvider, client_cert: tuple[str, str]
) -> None:
    body = provider.token_response(TENANT, token_form(assertion(client_cert)), audiences={ENDPOINT})
    principal = provider.authenticate(
        f"Bearer {body['access_token']}", audiences={"https://graph.microsoft.com"}
    )
    assert principal.app_id == CLIENT and principal.tenant_id == TENANT
    assert principal.may(write=True)


@pytest.mark.parametrize(
    ("make", "code"),
    [
        pytest.param(
            lambda c: assertion(c, aud="https://elsewhere/token"), "AADSTS700021", id="aud"
        ),
        pytest.param(lambda c: assertion(c, iss="someone-else"), "AADSTS700023", id="iss"),
        pytest.param(lambda c: assertion(c, sub="someone-else"), "AADSTS700023", id="sub"),
        pytest.param(lambda c: assertion(c, exp=time.time() - 3600), "AADSTS700024", id="exp"),
        pytest.param(lambda c: assertion(c, exp=None), "AADSTS50027", id="no-exp"),
        pytest.param(
            lambda c: assertion(c, algorithm="HS256", key="k" * 32), "AADSTS5002730", id="hs256"
        ),
        pytest.param(lambda c: "not.a.jwt", "AADSTS50027", id="garbage"),
        pytest.param(
            lambda c: assertion(
                c,
                key=trustme.CA(key_type=trustme.KeyType.RSA)
                .issue_cert("x", key_type=trustme.KeyType.RSA)
                .private_key_pem.bytes()
                .decode(),
            ),
            "AADSTS700027",
            id="signed-by-another-key",
        ),
    ],
)
def test_bad_assertions_are_refused(
    provider: IdentityProvider,
    client_cert: tuple[str, str],
    make: Callable[[tuple[str, str]], str],
    code: str,
) -> None:
    with pytest.raises(AadError) as caught:
        provider.token_response(TENANT, token_form(make(client_cert)), audiences={ENDPOINT})
    assert caught.value.status == 401 and caught.value.error == "invalid_client"
    assert caught.value.description.startswith(code)


def test_wrong_assertion_type(provider: IdentityProvider, client_cert: tuple[str, str]) -> None:
    form = token_form(assertion(client_cert), client_assertion_type="jwt")
    with pytest.raises(AadError, match="AADSTS90014"):
        provider.token_response(TENANT, form, audiences={ENDPOINT})


def test_bearer_modes() -> None:
    graph = {"https://graph.microsoft.com"}
    open_mode = IdentityProvider()
    assert open_mode.authenticate("Bearer anything", audiences=graph).app_id == "anything"
    assert open_mode.authenticate("bearer other", audiences=graph).app_id == "other"
    static = IdentityProvider(static_token="tok")
    assert static.authenticate("Bearer tok", audiences=graph).app_id == "static"
    with pytest.raises(TokenRejected):
        static.authenticate("Bearer nope", audiences=graph)
    with pytest.raises(TokenRejected, match="empty"):
        static.authenticate(None, audiences=graph)


def test_register_app_needs_a_credential() -> None:
    idp = IdentityProvider()
    with pytest.raises(ValueError, match="secret or a certificate"):
        idp.register_app(CLIENT)
    with pytest.raises(ValueError, match="no PEM certificate"):
        idp.register_app(CLIENT, certificate_pem="-----BEGIN NOTHING-----")
    (key,) = idp.jwks()["keys"]  # type: ignore[misc]
    assert key["kty"] == "RSA" and key["alg"] == "RS256"
