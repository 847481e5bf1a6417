"""The emulator's identity platform: app registrations, the token endpoint, bearer checks.

Enough of Microsoft Entra ID for MSAL Python to sign in against the emulator (over TLS, since
MSAL insists on an https authority): client credentials with a client secret or a client
assertion (a JWT signed with the app certificate's private key, RS256 with `x5t` or PS256 with
`x5t#S256`, as MSAL builds it, or a federated identity credential's token: an external issuer's
JWT for `api://AzureADTokenExchange`, checked against the issuer's public key given at
registration instead of its OIDC discovery document), the device-code flow (approved at once)
and refresh tokens.
Access tokens are JWTs signed with the emulator's own RSA key and carry the claims Graph tokens
carry (`tid`, `appid`, `roles` or `scp`, `aud`, `exp`); clients may decode them.

Graph's side lives here too (`authenticate`): which bearer tokens are accepted, which app and
tenant a request belongs to (the throttle keys), and what that app may do.
"""

from __future__ import annotations

import base64
import functools
import hmac
import json
import math
import secrets
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from batch.model import JSON
from batch.resources import EVENTS, Resource

__all__ = [
    "CLIENT_ASSERTION_TYPE",
    "DEVICE_CODE_GRANT",
    "FEDERATED_AUDIENCE",
    "GRAPH_APP_ID",
    "READ_PERMISSION",
    "WRITE_PERMISSION",
    "AadError",
    "FederatedCredential",
    "IdentityProvider",
    "Principal",
    "TokenRejected",
]

GRAPH_APP_ID: Final = "00000003-0000-0000-c000-000000000000"
WRITE_PERMISSION: Final = "DeviceManagementManagedDevices.ReadWrite.All"
READ_PERMISSION: Final = "DeviceManagementManagedDevices.Read.All"
CLIENT_ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEVICE_CODE_GRANT: Final = "urn:ietf:params:oauth:grant-type:device_code"
#: The audience Entra ID expects in a federated credential's token (workload identity).
FEDERATED_AUDIENCE: Final = "api://AzureADTokenExchange"
STATIC_APP: Final = "static"
DEFAULT_TENANT: Final = "emulator-tenant"
_OIDC_SCOPES: Final = frozenset({"openid", "profile", "offline_access", "email"})
_USER_UPN: Final = "admin@contoso.onmicrosoft.com"


class AadError(Exception):
    """A token-endpoint refusal in Entra ID's shape (`error`, `error_description` with AADSTS)."""

    def __init__(self, status: int, error: str, description: str) -> None:
        self.status = status
        self.error = error
        self.description = description
        super().__init__(f"{error}: {description}")

    def body(self) -> dict[str, JSON]:
        """The JSON body Entra ID answers with."""
        code = self.description.split(":", 1)[0].removeprefix("AADSTS")
        trace = str(uuid.uuid4())
        return {
            "error": self.error,
            "error_description": f"{self.description}\r\nTrace ID: {trace}",
            "error_codes": [int(code)] if code.isdigit() else [],
            "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
            "trace_id": trace,
            "correlation_id": str(uuid.uuid4()),
        }


class TokenRejected(Exception):
    """Graph refuses the bearer token (401 InvalidAuthenticationToken); the message says why."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who sent a Graph request: the app (throttle key), its tenant, what it may do.

    `permissions` None means unrestricted (static and free-form test tokens).
    """

    app_id: str
    tenant_id: str
    permissions: frozenset[str] | None = None

    def may(self, *, write: bool, resource: Resource = EVENTS) -> bool:
        """Whether the token's roles/scopes allow this kind of request on `resource` (autopilot
        events by default; device identities need DeviceManagementServiceConfig.*)."""
        if self.permissions is None:
            return True
        wanted = {resource.permission} if write else {resource.permission, resource.read_permission}
        return bool(self.permissions & wanted)


@dataclass(frozen=True, slots=True)
class FederatedCredential:
    """A federated identity credential: tokens of `issuer` about `subject` sign the app in."""

    issuer: str
    subject: str
    #: The issuer's public signing key (PEM), standing in for its JWKS.
    public_key_pem: str | bytes
    audience: str = FEDERATED_AUDIENCE


@dataclass(slots=True)
class _App:
    client_id: str
    secret: str | None
    certificates: list[x509.Certificate]
    tenant: str | None
    roles: tuple[str, ...]
    federated: tuple[FederatedCredential, ...] = ()

    def certificate(self, header: Mapping[str, Any]) -> x509.Certificate | None:
        # MSAL pads its base64url thumbprints ("...="); RFC 7515 does not. Accept both.
        sha256 = str(header.get("x5t#S256", "")).rstrip("=")
        sha1 = str(header.get("x5t", "")).rstrip("=")
        for cert in self.certificates:
            if sha256 and sha256 == _b64url(cert.fingerprint(hashes.SHA256())):
                return cert
            if sha1 and sha1 == _b64url(cert.fingerprint(hashes.SHA1())):
                return cert
        return None


@dataclass(slots=True)
class _Grant:
    """What a device code or refresh token stands for."""

    client_id: str
    tenant: str
    scopes: tuple[str, ...]
    expires_at: float


@dataclass(frozen=True, slots=True)
class _Issued:
    claims: dict[str, Any]
    expires_at: float


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@functools.cache
def _process_signing_key() -> rsa.RSAPrivateKey:
    """One RSA key per process, made on first use: generating one takes a noticeable moment,
    and most emulators in a test run never issue a token. Sharing it lets no emulator accept
    another's tokens: a token counts only if this emulator issued it (see `authenticate`)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _load_certificates(pem: str | bytes) -> list[x509.Certificate]:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ValueError("certificate_pem holds no PEM certificate")
    return certs


class IdentityProvider:
    """App registrations, token issuing and bearer-token checks for one emulator."""

    def __init__(
        self,
        *,
        token_ttl: float = 3600.0,
        static_token: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.token_ttl = token_ttl
        self.static_token = static_token
        self._clock = clock
        self._apps: dict[str, _App] = {}
        self._disabled: set[str] = set()
        self._issued: dict[str, _Issued] = {}
        self._device_codes: dict[str, _Grant] = {}
        self._refresh_tokens: dict[str, _Grant] = {}
        self._key: rsa.RSAPrivateKey | None = None
        self._kid = secrets.token_hex(8)
        #: The `jti` (else the subject) of every federated token accepted, in order.
        self.federated_seen: list[str] = []

    # --- registrations ---------------------------------------------------------------------

    def register_app(
        self,
        client_id: str,
        *,
        secret: str | None = None,
        certificate_pem: str | bytes | None = None,
        tenant: str | None = None,
        roles: Sequence[str] = (WRITE_PERMISSION,),
        federated: Sequence[FederatedCredential] = (),
    ) -> None:
        """Register (or replace) a confidential client with a secret, certificate or federation.

        `tenant` pins the app to one tenant (other tenants do not know it); `roles` are the
        application permissions its tokens carry.
        """
        if not client_id:
            raise ValueError("client_id cannot be empty")
        if secret is None and certificate_pem is None and not federated:
            raise ValueError(
                "register_app needs a secret or a certificate_pem (or federated credentials)"
            )
        certs = _load_certificates(certificate_pem) if certificate_pem is not None else []
        self._apps[client_id] = _App(
            client_id, secret, certs, tenant, tuple(roles), tuple(federated)
        )

    def issue_token(self, client_id: str, *, tenant: str, resource: str) -> dict[str, JSON]:
        """An app token for a registered app without any credential: what a managed identity
        endpoint (which vouches for its host itself) hands out. `resource` becomes `aud`."""
        app = self._known_app(tenant, client_id)
        return self._token_body(
            self._app_claims(app, tenant, resource, method="2"), app.tenant or tenant
        )

    def disable_app(self, client_id: str) -> None:
        """Refuse tokens to this app, and refuse its existing tokens (any app id works)."""
        self._disabled.add(client_id)

    def enable_app(self, client_id: str) -> None:
        """Undo `disable_app`."""
        self._disabled.discard(client_id)

    @property
    def has_apps(self) -> bool:
        """Whether any OAuth app is registered (then free-form bearer tokens are refused)."""
        return bool(self._apps)

    # --- keys ---------------------------------------------------------------------------------

    def _signing_key(self) -> rsa.RSAPrivateKey:
        if self._key is None:
            self._key = _process_signing_key()
        return self._key

    def jwks(self) -> dict[str, JSON]:
        """The public signing key as a JSON Web Key Set."""
        jwk: dict[str, JSON] = json.loads(
            jwt.algorithms.RSAAlgorithm.to_jwk(self._signing_key().public_key())
        )
        jwk.update({"kid": self._kid, "use": "sig", "alg": "RS256"})
        return {"keys": [jwk]}

    def _sign(self, claims: Mapping[str, Any]) -> str:
        return jwt.encode(
            dict(claims), self._signing_key(), algorithm="RS256", headers={"kid": self._kid}
        )

    # --- token endpoint -----------------------------------------------------------------------

    def token_response(
        self,
        tenant: str,
        form: Mapping[str, str],
        *,
        audiences: Collection[str],
        basic: tuple[str, str] | None = None,
    ) -> dict[str, JSON]:
        """Answer `POST /{tenant}/oauth2/v2.0/token`; raises `AadError` like Entra ID.

        `audiences`: the values a client assertion's `aud` may have (the token endpoint URL).
        `basic`: client id and secret from an HTTP Basic header (client_secret_basic).
        """
        grant = form.get("grant_type", "")
        if grant == "client_credentials":
            return self._client_credentials(tenant, form, audiences, basic)
        if grant == DEVICE_CODE_GRANT:
            return self._redeem(self._device_codes, form.get("device_code", ""), form, once=True)
        if grant == "refresh_token":
            return self._redeem(self._refresh_tokens, form.get("refresh_token", ""), form)
        if not grant:
            raise AadError(
                400,
                "invalid_request",
                "AADSTS900144: The request body must contain the following parameter: "
                "'grant_type'.",
            )
        raise AadError(
            400,
            "unsupported_grant_type",
            f"AADSTS70003: The app requested an unsupported grant type '{grant}'.",
        )

    def _client_credentials(
        self,
        tenant: str,
        form: Mapping[str, str],
        audiences: Collection[str],
        basic: tuple[str, str] | None,
    ) -> dict[str, JSON]:
        client_id = form.get("client_id") or (basic[0] if basic else "")
        app = self._known_app(tenant, client_id)
        scope = form.get("scope", "").strip()
        if len(scope.split()) != 1 or not scope.endswith("/.default"):
            raise AadError(
                400,
                "invalid_scope",
                f"AADSTS1002012: The provided value for scope {scope or '(none)'} is not valid. "
                "Client credential flows must have a scope value with /.default suffixed to the "
                "resource identifier (application ID URI).",
            )
        assertion = form.get("client_assertion")
        secret = form.get("client_secret") or (basic[1] if basic else None)
        if assertion:
            self._check_assertion(app, assertion, form.get("client_assertion_type"), audiences)
            method = "2"
        elif secret:
            if app.secret is None or not hmac.compare_digest(app.secret.encode(), secret.encode()):
                raise AadError(
                    401,
                    "invalid_client",
                    "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent "
                    f"in the request is the client secret value, not the client secret ID, for a "
                    f"secret added to app '{client_id}'.",
                )
            method = "1"
        else:
            raise AadError(
                401,
                "invalid_client",
                "AADSTS7000218: The request body must contain the following parameter: "
                "'client_assertion' or 'client_secret'.",
            )
        if client_id in self._disabled:
            raise AadError(
                400,
                "unauthorized_client",
                f"AADSTS7000112: Application '{client_id}' is disabled.",
            )
        tid = app.tenant or tenant
        return self._token_body(
            self._app_claims(app, tenant, scope.removesuffix("/.default"), method=method), tid
        )

    @staticmethod
    def _app_claims(app: _App, tenant: str, audience: str, *, method: str) -> dict[str, Any]:
        return {
            "aud": audience,
            "appid": app.client_id,
            "azp": app.client_id,
            "appidacr": method,
            "idtyp": "app",
            "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"app:{app.client_id}")),
            "roles": list(app.roles),
            "tid": app.tenant or tenant,
            "ver": "1.0",
        }

    def _known_app(self, tenant: str, client_id: str) -> _App:
        if not client_id:
            raise AadError(
                400,
                "invalid_request",
                "AADSTS900144: The request body must contain the following parameter: 'client_id'.",
            )
        app = self._apps.get(client_id)
        if app is None or (app.tenant and app.tenant.casefold() != tenant.casefold()):
            raise AadError(
                400,
                "unauthorized_client",
                f"AADSTS700016: Application with identifier '{client_id}' was not found in the "
                f"directory '{tenant}'.",
            )
        return app

    def _check_assertion(
        self,
        app: _App,
        assertion: str,
        assertion_type: str | None,
        audiences: Collection[str],
    ) -> None:
        if assertion_type != CLIENT_ASSERTION_TYPE:
            raise AadError(
                400,
                "invalid_request",
                f"AADSTS90014: client_assertion_type must be '{CLIENT_ASSERTION_TYPE}'.",
            )
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            raise AadError(
                401, "invalid_client", "AADSTS50027: JWT token is invalid or malformed."
            ) from None
        algorithm = header.get("alg")
        if algorithm not in ("RS256", "PS256"):
            raise AadError(
                401,
                "invalid_client",
                f"AADSTS5002730: The client assertion uses an unsupported algorithm {algorithm!r}.",
            )
        cert = app.certificate(header)
        if cert is None and app.federated:
            self._check_federated(app, assertion, algorithm)
            return
        if cert is None:
            raise AadError(
                401,
                "invalid_client",
                "AADSTS700027: The certificate with identifier used to sign the client assertion "
                f"is not registered on application '{app.client_id}'.",
            )
        try:
            claims = jwt.decode(
                assertion,
                cert.public_key(),  # type: ignore[arg-type]
                algorithms=[algorithm],
                audience=list(audiences),
                issuer=app.client_id,
                options={"require": ["exp", "aud", "iss", "sub"]},
                leeway=60,
            )
        except jwt.InvalidSignatureError:
            raise AadError(
                401,
                "invalid_client",
                "AADSTS700027: Client assertion failed signature validation.",
            ) from None
        except jwt.ExpiredSignatureError:
            raise AadError(
                401,
                "invalid_client",
                "AADSTS700024: Client assertion is not within its valid time range.",
            ) from None
        except jwt.InvalidAudienceError:
            raise AadError(
                401,
                "invalid_client",
                "AADSTS700021: Client assertion audience claim does not match the token endpoint.",
            ) from None
        except jwt.InvalidIssuerError:
            raise AadError(
                401,
                "invalid_client",
                "AADSTS700023: Client assertion issuer does not match the client id.",
            ) from None
        except jwt.PyJWTError as error:
            raise AadError(
                401, "invalid_client", f"AADSTS50027: JWT token is invalid or malformed: {error}"
            ) from None
        if claims.get("sub") != app.client_id:
            raise AadError(
                401,
                "invalid_client",
                "AADSTS700023: Client assertion subject does not match the client id.",
            )

    def _check_federated(self, app: _App, assertion: str, algorithm: str) -> None:
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AadError(
                401, "invalid_client", "AADSTS50027: JWT token is invalid or malformed."
            ) from None
        issuer = unverified.get("iss") if isinstance(unverified, dict) else None
        subject = unverified.get("sub") if isinstance(unverified, dict) else None
        for credential in app.federated:
            if credential.issuer != issuer or credential.subject != subject:
                continue
            key = serialization.load_pem_public_key(
                credential.public_key_pem.encode()
                if isinstance(credential.public_key_pem, str)
                else credential.public_key_pem
            )
            try:
                claims = jwt.decode(
                    assertion,
                    key,  # type: ignore[arg-type]
                    algorithms=[algorithm],
                    audience=credential.audience,
                    issuer=credential.issuer,
                    options={"require": ["exp", "aud", "iss", "sub"]},
                )
            except jwt.ExpiredSignatureError:
                raise AadError(
                    400,
                    "invalid_client",
                    "AADSTS700024: Client assertion is not within its valid time range.",
                ) from None
            except jwt.PyJWTError as error:
                raise AadError(
                    401,
                    "invalid_client",
                    f"AADSTS700211: The federated token cannot be validated: {error}",
                ) from None
            self.federated_seen.append(str(claims.get("jti") or subject))
            return
        raise AadError(
            400,
            "invalid_client",
            f"AADSTS70021: No matching federated identity record found for presented assertion "
            f"issuer '{issuer}' with subject '{subject}' on application '{app.client_id}'.",
        )

    def device_code_response(
        self, tenant: str, form: Mapping[str, str], *, verification_uri: str
    ) -> dict[str, JSON]:
        """Answer `POST /{tenant}/oauth2/v2.0/devicecode`; the code is approved at once."""
        client_id = form.get("client_id", "")
        if not client_id:
            raise AadError(
                400,
                "invalid_request",
                "AADSTS900144: The request body must contain the following parameter: 'client_id'.",
            )
        if client_id in self._disabled:
            raise AadError(
                400, "unauthorized_client", f"AADSTS7000112: Application '{client_id}' is disabled."
            )
        scopes = tuple(form.get("scope", "").split())
        if not [s for s in scopes if s not in _OIDC_SCOPES]:
            raise AadError(
                400, "invalid_scope", "AADSTS70011: The provided request must include a scope."
            )
        device_code = secrets.token_urlsafe(32)
        user_code = "-".join(secrets.token_hex(2).upper() for _ in range(2))
        expires_in = 900
        self._device_codes[device_code] = _Grant(
            client_id, tenant, scopes, self._clock() + expires_in
        )
        return {
            "user_code": user_code,
            "device_code": device_code,
            "verification_uri": verification_uri,
            "expires_in": expires_in,
            "interval": 1,
            "message": (
                f"To sign in, use a web browser to open the page {verification_uri} and enter "
                f"the code {user_code} to authenticate. (The emulator approves it at once.)"
            ),
        }

    def _redeem(
        self,
        grants: dict[str, _Grant],
        code: str,
        form: Mapping[str, str],
        *,
        once: bool = False,
    ) -> dict[str, JSON]:
        grant = grants.pop(code, None) if once else grants.get(code)
        if grant is None or grant.expires_at <= self._clock():
            raise AadError(
                400,
                "invalid_grant",
                "AADSTS70000: The provided value for the code or token is invalid or expired.",
            )
        if form.get("client_id") and form["client_id"] != grant.client_id:
            raise AadError(
                400,
                "invalid_grant",
                "AADSTS70000: The code or token was issued to a different client.",
            )
        if grant.client_id in self._disabled:
            raise AadError(
                400,
                "unauthorized_client",
                f"AADSTS7000112: Application '{grant.client_id}' is disabled.",
            )
        resource_scopes = [s for s in grant.scopes if s not in _OIDC_SCOPES]
        audience, _, _ = resource_scopes[0].rpartition("/")
        permissions = sorted(
            {
                WRITE_PERMISSION if s.endswith("/.default") else s.rpartition("/")[2]
                for s in resource_scopes
            }
        )
        user_oid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"user:{_USER_UPN}"))
        claims: dict[str, Any] = {
            "aud": audience or resource_scopes[0],
            "appid": grant.client_id,
            "azp": grant.client_id,
            "idtyp": "user",
            "oid": user_oid,
            "scp": " ".join(permissions),
            "tid": grant.tenant,
            "upn": _USER_UPN,
            "name": "Emulator Admin",
            "ver": "1.0",
        }
        body = self._token_body(claims, grant.tenant)
        refresh_token = secrets.token_urlsafe(32)
        self._refresh_tokens[refresh_token] = _Grant(
            grant.client_id, grant.tenant, grant.scopes, self._clock() + 90 * 86400
        )
        now = int(self._clock())
        id_claims = {
            "iss": f"https://login.microsoftonline.com/{grant.tenant}/v2.0",
            "aud": grant.client_id,
            "sub": user_oid,
            "oid": user_oid,
            "tid": grant.tenant,
            "preferred_username": _USER_UPN,
            "name": "Emulator Admin",
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "ver": "2.0",
        }
        body.update(
            {
                "scope": " ".join(grant.scopes),
                "refresh_token": refresh_token,
                "id_token": self._sign(id_claims),
                "client_info": _b64url(
                    json.dumps({"uid": user_oid, "utid": grant.tenant}).encode()
                ),
            }
        )
        return body

    def _token_body(self, claims: dict[str, Any], tenant: str) -> dict[str, JSON]:
        now = self._clock()
        expires_at = now + self.token_ttl
        claims.update(
            {
                "iss": f"https://sts.windows.net/{tenant}/",
                "iat": int(now),
                "nbf": int(now),
                # Fractional, so a short test TTL expires when it says (RFC 7519 NumericDate).
                "exp": round(expires_at, 3),
                "sub": claims["oid"],
                "uti": secrets.token_urlsafe(16),
            }
        )
        token = self._sign(claims)
        self._issued[token] = _Issued(claims, expires_at)
        expires_in = max(1, math.ceil(self.token_ttl))
        return {
            "token_type": "Bearer",
            "expires_in": expires_in,
            "ext_expires_in": expires_in,
            "access_token": token,
        }

    # --- Graph's side ---------------------------------------------------------------------------

    def authenticate(self, authorization: str | None, *, audiences: Collection[str]) -> Principal:
        """The principal behind an `Authorization` header, or `TokenRejected` (Graph's 401).

        Accepted: tokens this emulator issued (until they expire), the static token, and, when
        neither a static token nor an OAuth app is configured, any non-empty bearer (its text
        names the app, so two tokens play two apps of one tenant).
        """
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise TokenRejected("Access token is empty.")
        issued = self._issued.get(token)
        if issued is not None:
            if issued.expires_at <= self._clock():
                raise TokenRejected("Lifetime validation failed, the token is expired.")
            if issued.claims["aud"] not in audiences:
                raise TokenRejected("Access token validation failure. Invalid audience.")
            claims = issued.claims
            roles = claims.get("roles") or str(claims.get("scp", "")).split()
            principal = Principal(str(claims["appid"]), str(claims["tid"]), frozenset(roles))
        elif self.static_token is not None and hmac.compare_digest(
            token.encode(), self.static_token.encode()
        ):
            principal = Principal(STATIC_APP, DEFAULT_TENANT)
        elif self.static_token is None and not self._apps:
            principal = Principal(token, DEFAULT_TENANT)
        else:
            raise TokenRejected("Access token validation failure.")
        if principal.app_id in self._disabled:
            raise TokenRejected(
                f"Access token validation failure: application '{principal.app_id}' is disabled."
            )
        return principal
