"""Credential sources turned into a token provider for the Graph client.

Where tokens come from, in order of precedence (CONTRACT.md "Credentials and clouds")::

    GRAPH_ACCESS_TOKEN                                  StaticTokenProvider
    AZURE_TENANT_ID + AZURE_CLIENT_ID + AZURE_CLIENT_SECRET
                                                        MsalAppTokenProvider (client secret)
    AZURE_TENANT_ID + AZURE_CLIENT_ID + AZURE_CLIENT_CERTIFICATE_PATH [+ _PASSWORD]
                                                        MsalAppTokenProvider (certificate)
    AZURE_TENANT_ID + AZURE_CLIENT_ID + AZURE_FEDERATED_TOKEN_FILE
                                                        MsalAppTokenProvider (federated token)
    --managed-identity [AZURE_CLIENT_ID / --managed-identity-client-id]
                                                        auth_sources.ManagedIdentityTokenProvider
    --azure-cli [+ AZURE_TENANT_ID]                     auth_sources.AzureCliTokenProvider
    --device-code + AZURE_CLIENT_ID [+ AZURE_TENANT_ID] DeviceCodeTokenProvider

MSAL does the token work (its cache, its refresh before expiry). It is synchronous and uses
`requests`, so every MSAL call runs in a worker thread, one at a time: many senders asking at
once share a single acquisition (single-flight) instead of each fetching its own token.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import stat
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import anyio
import jwt
import msal
import platformdirs
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from batch import runlog
from batch.clouds import Endpoints
from batch.errors import AuthError, ConfigError
from batch.model import JSON, Rate

__all__ = [
    "RENEWING_SOURCES",
    "REQUIRED_PERMISSION",
    "CertificateCredential",
    "DeviceCodeTokenProvider",
    "FederatedTokenFile",
    "MsalAppTokenProvider",
    "StaticTokenProvider",
    "TokenInfo",
    "TokenProvider",
    "build_token_provider",
    "credential_name",
    "describe_token",
    "load_certificate",
    "token_cache_path",
    "token_lifetime_warning",
    "token_tenant",
]

log = logging.getLogger(__name__)

#: The Graph permission that updating Autopilot events needs (application role or delegated scope).
REQUIRED_PERMISSION: Final = "DeviceManagementManagedDevices.ReadWrite.All"

#: MSAL treats a cached token with less than this many seconds left as expired.
_MSAL_EXPIRY_MARGIN: Final = 300.0
#: After a failed renewal, keep serving a still-valid token and try again this much later.
_RENEW_RETRY_DELAY: Final = 10.0
#: A token this close to its real expiry is never served as a fallback.
_FALLBACK_MIN_LEFT: Final = 60.0
#: Seconds MSAL's HTTP calls may take (connect, read); `requests` waits forever otherwise.
_HTTP_TIMEOUT: Final = (10.0, 30.0)


class TokenProvider(Protocol):
    """Something that hands out bearer tokens for Graph, refreshing them when asked."""

    async def token(self, *, force_refresh: bool = False) -> str:
        """A valid access token; `force_refresh` after Graph answered 401 to the last one."""
        ...


#: The sources that renew their tokens themselves, for the message when a handed-in one expires.
RENEWING_SOURCES: Final = (
    "AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH, AZURE_FEDERATED_TOKEN_FILE, "
    "--managed-identity, --azure-cli or --device-code"
)


class StaticTokenProvider:
    """A token obtained elsewhere (`GRAPH_ACCESS_TOKEN`): it cannot be refreshed.

    A JWT's `exp` is read (not verified): once it has passed, the refresh Graph's 401 asks for
    is an `AuthError` (exit 3, resumable) naming the sources that renew themselves.
    """

    credential = "GRAPH_ACCESS_TOKEN"

    def __init__(self, token: str, *, clock: Callable[[], float] = time.time) -> None:
        self._token = token
        self._clock = clock
        self.expires_at = describe_token(token).expires_at

    async def token(self, *, force_refresh: bool = False) -> str:
        """The same token every time (a forced refresh cannot produce a new one)."""
        if force_refresh:
            left = self.seconds_left()
            if left is not None and left <= 0:
                raise AuthError(self.expired_message())
        return self._token

    def seconds_left(self) -> float | None:
        """Seconds until the token's `exp` (negative once past); None for an opaque token."""
        if self.expires_at is None:
            return None
        return self.expires_at.timestamp() - self._clock()

    def expired_message(self) -> str:
        """Why the run stops when the token has expired, and what to use instead."""
        return (
            f"GRAPH_ACCESS_TOKEN expired at {_utc(self.expires_at)} and cannot be renewed; "
            f"run again with --resume and a source that renews itself: {RENEWING_SOURCES}"
        )

    def lifetime_warning(self, estimated_seconds: float) -> str | None:
        """A warning when a run of about `estimated_seconds` outlives the token, else None."""
        left = self.seconds_left()
        if left is None or left >= estimated_seconds:
            return None
        if left <= 0:
            return f"GRAPH_ACCESS_TOKEN expired at {_utc(self.expires_at)}: Graph will refuse it"
        return (
            f"GRAPH_ACCESS_TOKEN expires in {_duration(left)} ({_utc(self.expires_at)}) but this "
            f"run takes about {_duration(estimated_seconds)}: it will stop with exit 3 when the "
            f"token expires (then --resume). Sources that renew themselves: {RENEWING_SOURCES}"
        )

    @property
    def current(self) -> str | None:
        """The token in hand (never signs in)."""
        return self._token


def _utc(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else "an unknown time"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# --- certificates -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertificateCredential:
    """A certificate credential as MSAL takes it: PKCS#8 key PEM (unencrypted), SHA-1 thumbprint."""

    path: str
    thumbprint: str
    private_key_pem: str = field(repr=False)

    def for_msal(self) -> dict[str, str]:
        """The `client_credential` dict of `msal.ConfidentialClientApplication`."""
        return {"private_key": self.private_key_pem, "thumbprint": self.thumbprint}


@dataclass(frozen=True, slots=True)
class FederatedTokenFile:
    """Workload identity federation: the client assertion is the token in `path`.

    The file is read again for every request to the token endpoint, because its writer
    (Kubernetes, a CI runner) replaces it before the token in it expires.
    """

    path: str

    def read(self) -> str:
        """The file's token; an `AuthError` naming the file (never its content) otherwise."""
        try:
            text = Path(self.path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or type(error).__name__
            raise AuthError(
                f"AZURE_FEDERATED_TOKEN_FILE {self.path!r} cannot be read: {reason}"
            ) from None
        if not text:
            raise AuthError(f"AZURE_FEDERATED_TOKEN_FILE {self.path!r} is empty")
        return text

    def for_msal(self) -> dict[str, Any]:
        """The `client_credential` dict: MSAL calls `read` whenever it builds a token request."""
        return {"client_assertion": self.read}


_PEM_SUFFIXES: Final = frozenset({".pem", ".crt", ".cer", ".key"})
_PFX_SUFFIXES: Final = frozenset({".pfx", ".p12"})
_PrivateKey = rsa.RSAPrivateKey


def load_certificate(path: Path, password: str | None = None) -> CertificateCredential:
    """Read a PEM (key + certificate) or PFX file into what MSAL needs.

    The format follows the extension (`.pem/.crt/.cer/.key`, `.pfx/.p12`), else the content. The
    key is re-encoded unencrypted in memory only, so MSAL needs no passphrase and no PFX support of
    its own. Any problem is a `ConfigError` naming the file, never the password.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(
            f"AZURE_CLIENT_CERTIFICATE_PATH {str(path)!r} cannot be read: "
            f"{error.strerror or type(error).__name__}"
        ) from None
    if not data.strip():
        raise ConfigError(f"AZURE_CLIENT_CERTIFICATE_PATH {str(path)!r} is empty")
    suffix = path.suffix.lower()
    is_pem = suffix in _PEM_SUFFIXES or (
        suffix not in _PFX_SUFFIXES and b"-----BEGIN " in data[:4096]
    )
    secret = password.encode() if password else None
    key, cert = _read_pem(path, data, secret) if is_pem else _read_pfx(path, data, secret)
    thumbprint = cert.fingerprint(hashes.SHA1()).hex().upper()  # Entra's x5t
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    return CertificateCredential(str(path), thumbprint, pem)


def _bad_cert(path: Path, reason: str) -> ConfigError:
    return ConfigError(f"AZURE_CLIENT_CERTIFICATE_PATH {str(path)!r}: {reason}")


def _read_pem(
    path: Path, data: bytes, password: bytes | None
) -> tuple[_PrivateKey, x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise _bad_cert(
            path, "no certificate in the PEM file (it needs the certificate and its key)"
        )
    if b"PRIVATE KEY-----" not in data:
        raise _bad_cert(
            path, "no private key in the PEM file (it needs the key and the certificate)"
        )
    try:
        try:
            key = serialization.load_pem_private_key(data, password)
        except TypeError:
            if password is None:
                raise _bad_cert(
                    path, "the private key is encrypted; set AZURE_CLIENT_CERTIFICATE_PASSWORD"
                ) from None
            # A password meant for a PFX, left set after switching to a plain PEM: not needed.
            key = serialization.load_pem_private_key(data, None)
    except ValueError:
        raise _bad_cert(
            path, "the private key cannot be read (wrong AZURE_CLIENT_CERTIFICATE_PASSWORD?)"
        ) from None
    except ConfigError:
        raise
    except Exception as error:  # UnsupportedAlgorithm and friends for exotic keys
        raise _bad_cert(path, f"unsupported private key ({type(error).__name__})") from None
    checked = _check_key(path, key)
    return checked, _matching_cert(path, checked, certs)


def _read_pfx(
    path: Path, data: bytes, password: bytes | None
) -> tuple[_PrivateKey, x509.Certificate]:
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password)
    except ValueError:
        raise _bad_cert(
            path,
            "not a PFX/PKCS#12 file, or AZURE_CLIENT_CERTIFICATE_PASSWORD is wrong or missing",
        ) from None
    if key is None:
        raise _bad_cert(path, "the PFX file holds no private key")
    certs = [c for c in (cert, *extra) if c is not None]
    if not certs:
        raise _bad_cert(path, "the PFX file holds no certificate")
    checked = _check_key(path, key)
    return checked, _matching_cert(path, checked, certs)


def _check_key(path: Path, key: object) -> _PrivateKey:
    # Entra accepts RSA client-assertion keys; MSAL signs with RS256/PS256 only.
    if isinstance(key, rsa.RSAPrivateKey):
        return key
    raise _bad_cert(path, f"the private key must be RSA, not {type(key).__name__}")


def _matching_cert(path: Path, key: _PrivateKey, certs: list[x509.Certificate]) -> x509.Certificate:
    # A chain file lists issuers too: the thumbprint must be the one of the key's own certificate.
    mine = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for cert in certs:
        theirs = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if theirs == mine:
            return cert
    raise _bad_cert(path, "no certificate in the file matches its private key")


# --- the persisted token cache --------------------------------------------------------------


def token_cache_path(env: Mapping[str, str] = os.environ, *, platform: str = sys.platform) -> Path:
    """Where `--token-cache` keeps tokens: `$XDG_CONFIG_HOME/autopilot-batch/token_cache.json`.

    Without (an absolute) `XDG_CONFIG_HOME`, `~/.config` as the XDG spec says. Never a run folder.
    On Windows, platformdirs' per-user local folder: `%LOCALAPPDATA%\\autopilot-batch\\`, which
    the user profile's ACL keeps to its user (and SYSTEM and administrators); POSIX modes mean
    nothing there.
    """
    if platform == "win32":
        local = platformdirs.user_data_path(_APP_DIR, appauthor=False, roaming=False)
        return local / "token_cache.json"
    base = env.get("XDG_CONFIG_HOME", "").strip()
    root = Path(base) if base and Path(base).is_absolute() else _home(env) / ".config"
    return root / _APP_DIR / "token_cache.json"


_APP_DIR = "autopilot-batch"


def _home(env: Mapping[str, str]) -> Path:
    home = env.get("HOME", "").strip()
    return Path(home) if home else Path.home()


class _CacheFile:
    """An MSAL `SerializableTokenCache` persisted to a file only its owner can read (0600)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cache = msal.SerializableTokenCache()
        # A missing, unreadable or damaged cache costs one sign-in, never the run.
        try:
            text = path.read_text(encoding="utf-8")
            if os.name == "posix" and stat.S_IMODE(path.stat().st_mode) & 0o077:
                path.chmod(0o600)  # tokens are credentials: tighten a file loosened by hand
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not UTF-8"
            log.warning("cannot read the token cache %s: %s; starting empty", path, reason)
            return
        try:
            self.cache.deserialize(text)
        except ValueError:
            log.warning("token cache %s is not valid JSON; starting with an empty cache", path)

    def save_if_changed(self) -> None:
        """Write the cache back if MSAL changed it, atomically, created 0600 whatever the umask."""
        if not self.cache.has_state_changed:
            return
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)  # mkdir's mode is filtered by the umask, and may pre-exist
        temporary = directory / f".{self.path.name}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if hasattr(os, "fchmod"):  # POSIX; on Windows the profile folder's ACL protects it
                os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as stream:
                stream.write(self.cache.serialize())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise


# --- MSAL plumbing ----------------------------------------------------------------------------


class _OneShotHttp:
    """MSAL's HTTP client: `requests` with a session per call.

    Token traffic is a handful of requests an hour, so nothing is lost by not pooling, and no
    socket outlives its call (no provider needs closing). `requests` honours REQUESTS_CA_BUNDLE
    and HTTPS_PROXY/NO_PROXY from the environment; TLS verification stays on. `trust_env=False`
    (managed identity: a local endpoint or the link-local IMDS) keeps proxies out of the way.
    """

    def __init__(
        self, *, timeout: tuple[float, float] = _HTTP_TIMEOUT, trust_env: bool = True
    ) -> None:
        self._timeout = timeout
        self._trust_env = trust_env

    def post(self, url: str, **kwargs: Any) -> Any:
        """POST as MSAL asks for it."""
        return self._request("POST", url, **kwargs)

    def get(self, url: str, **kwargs: Any) -> Any:
        """GET as MSAL asks for it."""
        return self._request("GET", url, **kwargs)

    def close(self) -> None:
        """Nothing to close: every call used and closed its own session."""

    def _request(self, method: str, url: str, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self._timeout)
        with requests.Session() as session:
            session.trust_env = self._trust_env
            return session.request(method, url, **kwargs)


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    fresh_until: float  # on the provider's clock: serve without asking MSAL until then
    expires_at: float  # on the provider's clock: the token's real end


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _error_detail(result: Mapping[str, Any]) -> str:
    error = _one_line(result.get("error") or "no access token in the answer")
    description = _one_line(result.get("error_description") or "")
    return f"{error}: {description}" if description else error


class _RenewingTokenProvider:
    """Single-flight token acquisition through a synchronous call in a worker thread.

    Subclasses implement `_acquire` (in the worker thread), answering like MSAL does: a dict
    with `access_token` and `expires_in`, or `error` and `error_description`.
    """

    credential = "renewing"
    #: Whether a cancelled caller stops waiting for the worker thread (see DeviceCodeTokenProvider).
    _abandon_on_cancel = False

    def __init__(
        self,
        *,
        where: str,
        scope: str,
        token_cache: Path | None = None,
        secrets: tuple[str, ...] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scope = scope
        self._where = where
        self._cache_file = _CacheFile(token_cache) if token_cache else None
        self._secrets = tuple(s for s in secrets if s)
        self._clock = clock
        self._lock = anyio.Lock()
        self._current: _Token | None = None
        self._app: Any = None
        #: How many tokens MSAL handed out (from its cache or the authority): for tests and stats.
        self.acquisitions = 0

    async def token(self, *, force_refresh: bool = False) -> str:
        """A valid access token; `force_refresh=True` after Graph rejected the last one (401).

        Callers that arrive while an acquisition runs wait for it and share its token; a forced
        refresh that finds the token already replaced since it asked takes the new one.
        """
        seen = self._current
        if not force_refresh and seen is not None and self._clock() < seen.fresh_until:
            return seen.value
        async with self._lock:
            latest = self._current
            if (
                latest is not None
                and self._clock() < latest.fresh_until
                and (not force_refresh or seen is None or latest.value != seen.value)
            ):
                return latest.value
            try:
                result = await self._run(force_refresh)
            except AuthError:
                fallback = self._fallback(latest, force_refresh)
                if fallback is None:
                    raise
                log.warning("token renewal failed; using the current token until it expires")
                return fallback
            self._current = self._remember(result)
            self.acquisitions += 1
            runlog.token(
                self.credential,
                renewal=latest is not None,
                forced=force_refresh,
                expires_in=self._current.expires_at - self._clock(),
            )
            return self._current.value

    @property
    def current(self) -> str | None:
        """The token in hand, if any (never signs in: for reports, not for requests)."""
        return None if self._current is None else self._current.value

    async def _run(self, force_refresh: bool) -> dict[str, Any]:
        try:
            result = await anyio.to_thread.run_sync(
                self._acquire_and_save, force_refresh, abandon_on_cancel=self._abandon_on_cancel
            )
        except AuthError:
            raise
        except Exception as error:
            # Network trouble, TLS trust, an authority that is not one: MSAL raises them as-is.
            raise AuthError(
                self._redact(
                    f"cannot get a token from {self._where}: {type(error).__name__}: "
                    f"{_one_line(error)}"
                )
            ) from None
        if "access_token" not in result:
            raise AuthError(self._redact(self._failure(result)))
        return result

    def _acquire_and_save(self, force_refresh: bool) -> dict[str, Any]:
        try:
            return self._acquire(force_refresh)
        finally:
            if self._cache_file is not None:
                try:
                    self._cache_file.save_if_changed()
                except OSError as error:
                    # The token in hand is good; an unwritable cache only costs a later sign-in.
                    log.warning(
                        "cannot save the token cache %s: %s",
                        self._cache_file.path,
                        error.strerror or error,
                    )

    def _acquire(self, force_refresh: bool) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _failure(self, result: Mapping[str, Any]) -> str:
        return f"no token from {self._where}: {_error_detail(result)}"

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _remember(self, result: Mapping[str, Any]) -> _Token:
        now = self._clock()
        try:
            lifetime = max(0.0, float(result.get("expires_in", 0)))
        except (TypeError, ValueError):
            lifetime = 0.0
        # Serve the token ourselves exactly as long as MSAL's cache would: it calls a token with
        # under 5 minutes left expired. A token shorter-lived than that (test authorities) is kept
        # for three quarters of its life instead of being fetched again for every request.
        fresh_until = now + lifetime - min(_MSAL_EXPIRY_MARGIN, lifetime / 4)
        refresh_on = result.get("refresh_on")
        if isinstance(refresh_on, int | float) and math.isfinite(refresh_on):
            fresh_until = min(fresh_until, now + (float(refresh_on) - time.time()))
        return _Token(str(result["access_token"]), fresh_until, now + lifetime)

    def _fallback(self, latest: _Token | None, force_refresh: bool) -> str | None:
        # A renewal that fails while the current token still works must not stop a long run:
        # keep using it (unless Graph already rejected it) and try again a little later.
        now = self._clock()
        if force_refresh or latest is None or latest.expires_at - now < _FALLBACK_MIN_LEFT:
            return None
        self._current = replace(
            latest,
            fresh_until=min(now + _RENEW_RETRY_DELAY, latest.expires_at - _FALLBACK_MIN_LEFT),
        )
        return latest.value


class _MsalTokenProvider(_RenewingTokenProvider):
    """A renewing provider whose tokens come from an MSAL client application."""

    credential = "msal"

    def __init__(
        self,
        endpoints: Endpoints,
        *,
        tenant: str,
        client_id: str,
        token_cache: Path | None,
        secrets: tuple[str, ...] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client_id = client_id
        self.authority = endpoints.authority(tenant)
        super().__init__(
            where=self.authority,
            scope=endpoints.scope,
            token_cache=token_cache,
            secrets=secrets,
            clock=clock,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(client_id={self.client_id!r}, authority={self.authority!r})"

    def _failure(self, result: Mapping[str, Any]) -> str:
        detail = _error_detail(result)
        return f"sign-in failed for client {self.client_id} at {self.authority}: {detail}"

    def _msal_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"authority": self.authority, "http_client": _OneShotHttp()}
        # Microsoft's own sign-in hosts are known to MSAL. Any other (a test authority, the
        # emulator) would be "validated" by asking login.microsoftonline.com: switch that off.
        if urlsplit(self.authority).hostname not in msal.authority.WELL_KNOWN_AUTHORITY_HOSTS:
            options["instance_discovery"] = False
        if self._cache_file is not None:
            options["token_cache"] = self._cache_file.cache
        return options


class MsalAppTokenProvider(_MsalTokenProvider):
    """App-only tokens (client credentials) from a client secret or a certificate."""

    def __init__(
        self,
        endpoints: Endpoints,
        *,
        tenant: str,
        client_id: str,
        credential: str | CertificateCredential | FederatedTokenFile,
        token_cache: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        app_factory: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(
            endpoints,
            tenant=tenant,
            client_id=client_id,
            token_cache=token_cache,
            secrets=(credential,) if isinstance(credential, str) else (),
            clock=clock,
        )
        self._credential = credential
        self._factory = app_factory or msal.ConfidentialClientApplication
        if isinstance(credential, str):
            self.credential = "client secret"
        elif isinstance(credential, FederatedTokenFile):
            self.credential = f"federated token file ({credential.path})"
        else:
            self.credential = f"certificate {credential.thumbprint} ({credential.path})"

    def _acquire(self, force_refresh: bool) -> dict[str, Any]:
        if self._app is None:
            # Building the app fetches the authority's metadata: it belongs in this thread too.
            secret = self._credential
            self._app = self._factory(
                self.client_id,
                client_credential=secret if isinstance(secret, str) else secret.for_msal(),
                **self._msal_options(),
            )
        if force_refresh:
            # acquire_token_for_client refuses force_refresh; dropping its cached tokens is the
            # documented way to make it ask the authority again.
            self._app.remove_tokens_for_client()
        result: dict[str, Any] = self._app.acquire_token_for_client(scopes=[self.scope])
        return result


class DeviceCodeTokenProvider(_MsalTokenProvider):
    """Delegated tokens for an admin at a terminal: device-code sign-in, then refresh tokens.

    An account already in the token cache (`--token-cache`) is used silently first, so the
    admin signs in once, not on every run.
    """

    credential = "device code"
    # Waiting for a person can take 15 minutes: Ctrl-C must not wait with it. The abandoned
    # worker stops at its next poll, because `_run` expires the flow.
    _abandon_on_cancel = True

    def __init__(
        self,
        endpoints: Endpoints,
        *,
        client_id: str,
        tenant: str = "organizations",
        token_cache: Path | None = None,
        prompt: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        app_factory: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(
            endpoints,
            tenant=tenant,
            client_id=client_id,
            token_cache=token_cache,
            clock=clock,
        )
        self._prompt = prompt or _print_to_stderr
        self._factory = app_factory or msal.PublicClientApplication
        self._flow: dict[str, Any] | None = None

    async def _run(self, force_refresh: bool) -> dict[str, Any]:
        try:
            return await super()._run(force_refresh)
        except anyio.get_cancelled_exc_class():
            # The worker may be polling for the sign-in: MSAL stops when the flow has expired.
            if self._flow is not None:
                self._flow["expires_at"] = 0
            raise

    def _acquire(self, force_refresh: bool) -> dict[str, Any]:
        if self._app is None:
            self._app = self._factory(self.client_id, **self._msal_options())
        scopes = [self.scope]
        for account in self._app.get_accounts():
            silent = self._app.acquire_token_silent_with_error(
                scopes, account=account, force_refresh=force_refresh
            )
            if silent and "access_token" in silent:
                result: dict[str, Any] = silent
                return result
        flow: dict[str, Any] = self._app.initiate_device_flow(scopes=scopes)
        if "user_code" not in flow:
            return flow  # an error answer: `error` / `error_description`
        self._flow = flow
        try:
            self._prompt(str(flow.get("message") or f"Enter the code {flow['user_code']}"))
            result = self._app.acquire_token_by_device_flow(flow)
        finally:
            self._flow = None
        return result


def _print_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- choosing the credential ------------------------------------------------------------------


def _get(env: Mapping[str, str], name: str) -> str:
    return env.get(name, "").strip()


def build_token_provider(
    endpoints: Endpoints,
    *,
    device_code: bool = False,
    token_cache: Path | bool | None = None,
    managed_identity: bool = False,
    managed_identity_client_id: str | None = None,
    azure_cli: bool = False,
    env: Mapping[str, str] = os.environ,
) -> TokenProvider:
    """The token provider for the first complete credential source (README "Credentials").

    Precedence, first complete one wins:

    1. `GRAPH_ACCESS_TOKEN` (not renewable; a JWT's `exp` is read);
    2. `AZURE_TENANT_ID` + `AZURE_CLIENT_ID` + `AZURE_CLIENT_SECRET`;
    3. the same with `AZURE_CLIENT_CERTIFICATE_PATH` (PEM or PFX,
       `AZURE_CLIENT_CERTIFICATE_PASSWORD`);
    4. `AZURE_FEDERATED_TOKEN_FILE` + `AZURE_TENANT_ID` + `AZURE_CLIENT_ID` (workload identity
       federation: the file is read at every token request);
    5. `managed_identity` (`managed_identity_client_id`, else `AZURE_CLIENT_ID`, for a
       user-assigned identity);
    6. `azure_cli` (`az account get-access-token`; `AZURE_TENANT_ID` becomes `--tenant`);
    7. `device_code` with `AZURE_CLIENT_ID` (a public client app; `AZURE_TENANT_ID` defaults to
       "organizations").

    The environment sources come first, as in azure-identity: a flag they override is named in a
    warning. At most one of the three flags may be given. Nothing touches the network or runs a
    program here. Raises `ConfigError` naming what is missing when no source is complete, or
    naming the certificate file when it cannot be used.

    `token_cache` (`--token-cache`: True means `token_cache_path()`) persists the device-code
    sign-in, so an admin signs in once, not on every run. App-only tokens stay in memory: getting
    one needs no person, and a cached one would let `whoami` pass for a revoked secret.
    """
    flags = [
        name
        for name, on in (
            ("--managed-identity", managed_identity),
            ("--azure-cli", azure_cli),
            ("--device-code", device_code),
        )
        if on
    ]
    if len(flags) > 1:
        raise ConfigError(f"choose one credential source: {' and '.join(flags)} were both given")
    flag = flags[0] if flags else None
    if managed_identity_client_id and not managed_identity:
        raise ConfigError("--managed-identity-client-id needs --managed-identity")
    cache_file = token_cache_path(env) if token_cache is True else token_cache or None
    static = _get(env, "GRAPH_ACCESS_TOKEN")
    if static:
        _ignored(flag, "GRAPH_ACCESS_TOKEN")
        if static.lower().startswith("bearer "):
            static = static[len("bearer ") :].strip()
        return StaticTokenProvider(static)
    tenant, client_id = _get(env, "AZURE_TENANT_ID"), _get(env, "AZURE_CLIENT_ID")
    secret = _get(env, "AZURE_CLIENT_SECRET")
    cert_path = _get(env, "AZURE_CLIENT_CERTIFICATE_PATH")
    federated = _get(env, "AZURE_FEDERATED_TOKEN_FILE")
    if (secret or cert_path) and tenant and client_id:
        _ignored(flag, "AZURE_CLIENT_SECRET" if secret else "AZURE_CLIENT_CERTIFICATE_PATH")
        if cache_file is not None:
            log.debug("--token-cache keeps device-code sign-ins only; app tokens stay in memory")
        credential: str | CertificateCredential = secret or load_certificate(
            Path(cert_path).expanduser(),
            env.get("AZURE_CLIENT_CERTIFICATE_PASSWORD") or None,
        )
        return MsalAppTokenProvider(
            endpoints,
            tenant=tenant,
            client_id=client_id,
            credential=credential,
        )
    if federated and tenant and client_id:
        _ignored(flag, "AZURE_FEDERATED_TOKEN_FILE")
        return MsalAppTokenProvider(
            endpoints,
            tenant=tenant,
            client_id=client_id,
            credential=FederatedTokenFile(str(Path(federated).expanduser())),
        )
    if managed_identity:
        from batch.auth_sources import ManagedIdentityTokenProvider

        return ManagedIdentityTokenProvider(
            endpoints, client_id=(managed_identity_client_id or "").strip() or client_id or None
        )
    if azure_cli:
        from batch.auth_sources import AzureCliTokenProvider

        return AzureCliTokenProvider(endpoints, tenant=tenant or None, env=env)
    if device_code:
        if not client_id:
            raise ConfigError(
                "--device-code needs AZURE_CLIENT_ID: the application (client) id of an app "
                "registration that allows public client flows"
            )
        return DeviceCodeTokenProvider(
            endpoints,
            client_id=client_id,
            tenant=tenant or "organizations",
            token_cache=cache_file,
        )
    raise ConfigError(_missing_message(tenant, client_id, secret, cert_path, federated))


def _ignored(flag: str | None, source: str) -> None:
    if flag:
        log.warning("%s is set and takes precedence: %s is not used", source, flag)


def _missing_message(
    tenant: str, client_id: str, secret: str, cert_path: str, federated: str = ""
) -> str:
    kind = (
        "AZURE_CLIENT_SECRET"
        if secret
        else "AZURE_CLIENT_CERTIFICATE_PATH"
        if cert_path
        else "AZURE_FEDERATED_TOKEN_FILE"
        if federated
        else "AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH"
    )
    missing = [
        name
        for name, value in (
            ("AZURE_TENANT_ID", tenant),
            ("AZURE_CLIENT_ID", client_id),
            (
                "AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH",
                secret or cert_path or federated,
            ),
        )
        if not value
    ]
    if tenant or client_id or secret or cert_path or federated:
        return (
            f"incomplete app credentials: {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set "
            f"(app-only sign-in needs AZURE_TENANT_ID, AZURE_CLIENT_ID and {kind}); "
            "or set GRAPH_ACCESS_TOKEN, or use --managed-identity, --azure-cli or --device-code"
        )
    return (
        "no credentials: set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET "
        "(or AZURE_CLIENT_CERTIFICATE_PATH, or AZURE_FEDERATED_TOKEN_FILE), or GRAPH_ACCESS_TOKEN, "
        "or use --managed-identity, --azure-cli, or --device-code with AZURE_CLIENT_ID"
    )


def token_lifetime_warning(tokens: TokenProvider, rows: int, write_limit: Rate) -> str | None:
    """A warning when a run of `rows` writes at `write_limit` outlives a handed-in token."""
    if not isinstance(tokens, StaticTokenProvider) or rows <= 0:
        return None
    return tokens.lifetime_warning(rows * write_limit.seconds / max(1, write_limit.count))


def credential_name(tokens: TokenProvider) -> str:
    """A short, secret-free description of where a provider's tokens come from."""
    return str(getattr(tokens, "credential", type(tokens).__name__))


# --- reading a token --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What an access token says about itself (read, not verified: Graph verifies it)."""

    tenant: str
    app_id: str
    expires_at: datetime | None
    roles: tuple[str, ...]
    scopes: tuple[str, ...]
    user: str | None = None
    audience: str = "unknown"
    is_jwt: bool = True

    @property
    def delegated(self) -> bool:
        """Whether the token acts for a signed-in user (`scp`) rather than as the app (`roles`)."""
        return bool(self.scopes) and not self.roles

    def grants(self, permission: str = REQUIRED_PERMISSION) -> bool | None:
        """Whether the roles (app-only) or scopes (delegated) hold `permission`; None if opaque."""
        if not self.is_jwt:
            return None
        return permission.lower() in {p.lower() for p in (*self.roles, *self.scopes)}

    def to_json(self) -> dict[str, JSON]:
        """The claims as a JSON object (for `whoami --json`)."""
        return {
            "tenant": self.tenant,
            "app_id": self.app_id,
            "user": self.user,
            "audience": self.audience,
            "expires_at": self.expires_at.isoformat().replace("+00:00", "Z")
            if self.expires_at
            else None,
            "roles": list(self.roles),
            "scopes": list(self.scopes),
            "delegated": self.delegated,
        }


def token_tenant(tokens: TokenProvider) -> str | None:
    """The tenant id the provider's current token names, without signing in (None: no token)."""
    current = getattr(tokens, "current", None)
    if not isinstance(current, str):
        return None
    return describe_token(current).tenant


def describe_token(token: str) -> TokenInfo:
    """Decode a JWT access token's claims without verifying it; "unknown" for opaque tokens."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return TokenInfo("unknown", "unknown", None, (), (), is_jwt=False)
    if not isinstance(claims, dict):  # pragma: no cover - PyJWT only returns dicts
        return TokenInfo("unknown", "unknown", None, (), (), is_jwt=False)
    exp = claims.get("exp")
    expires_at = (
        datetime.fromtimestamp(exp, UTC)
        if isinstance(exp, int | float) and not isinstance(exp, bool) and math.isfinite(exp)
        else None
    )
    roles = claims.get("roles")
    scp = claims.get("scp")
    user = claims.get("upn") or claims.get("preferred_username") or claims.get("unique_name")
    return TokenInfo(
        tenant=str(claims.get("tid") or "unknown"),
        app_id=str(claims.get("appid") or claims.get("azp") or "unknown"),
        expires_at=expires_at,
        roles=tuple(str(r) for r in roles) if isinstance(roles, list) else (),
        scopes=tuple(scp.split()) if isinstance(scp, str) else (),
        user=str(user) if user else None,
        audience=str(claims.get("aud") or "unknown"),
    )
