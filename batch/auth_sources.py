"""Token sources that need no secret of ours: managed identity and the Azure CLI.

Both renew their tokens before they expire through `auth._RenewingTokenProvider` (single
flight, in a worker thread, the current token kept when a renewal fails while it still works).

Decisions worth knowing:

- Managed identity is MSAL's `ManagedIdentityClient`, which finds the host from the environment
  it reads itself: `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` (App Service, Functions, Azure
  Automation), `MSI_ENDPOINT` + `MSI_SECRET` (Azure ML), Azure Arc's `IMDS_ENDPOINT`, Service
  Fabric, else the VM's IMDS at 169.254.169.254 (`AZURE_POD_IDENTITY_AUTHORITY_HOST` moves it).
  The resource is the cloud's Graph root even when `--graph-url` points elsewhere: a managed
  identity only gets tokens for real resources. Its HTTP calls ignore proxy variables: the
  endpoints are local or link-local, and the identity header must not pass through a proxy.
- The Azure CLI is run as a program, never through a shell, with its arguments as a list;
  its token is read from `accessToken` and `expires_on` (epoch seconds, az 2.54+) or
  `expiresOn` (local time, older az). What `az` prints on stdout is never logged.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final

import msal

from batch.auth import _one_line, _OneShotHttp, _RenewingTokenProvider
from batch.clouds import CLOUDS, Endpoints
from batch.errors import AuthError

__all__ = ["AzureCliTokenProvider", "ManagedIdentityTokenProvider"]

#: Connect and read timeouts for managed identity endpoints: IMDS answers in well under a
#: second where it exists, and a machine without one should not hang for long.
_MI_TIMEOUT: Final = (5.0, 30.0)
#: Seconds `az account get-access-token` may take (it may refresh its own token first).
_AZ_TIMEOUT: Final = 60.0
_AZ_LOGIN_HINT: Final = "run `az login`"

# MSAL names the hosts with sentinel objects (`msal.managed_identity.APP_SERVICE`, ...).
_MI_HOSTS: Final = {
    "APP_SERVICE": "App Service/Functions/Automation endpoint",
    "MACHINE_LEARNING": "Azure ML endpoint",
    "SERVICE_FABRIC": "Service Fabric endpoint",
    "AZURE_ARC": "Azure Arc endpoint",
    "CLOUD_SHELL": "Cloud Shell",
}


def _host() -> str:
    found = msal.managed_identity.get_managed_identity_source()
    for name, label in _MI_HOSTS.items():
        if found is getattr(msal.managed_identity, name, None):
            return label
    return "IMDS"


def _resource(endpoints: Endpoints) -> str:
    """The cloud's Graph root: the resource tokens are asked for, whatever `--graph-url` says."""
    return CLOUDS[endpoints.cloud].graph_root


class ManagedIdentityTokenProvider(_RenewingTokenProvider):
    """Tokens of the host's managed identity (system-assigned, or user-assigned by client id)."""

    def __init__(
        self,
        endpoints: Endpoints,
        *,
        client_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        client_factory: Callable[..., Any] | None = None,
    ) -> None:
        self.resource = _resource(endpoints)
        self.client_id = client_id or None
        host = _host()
        kind = f"user-assigned {client_id}" if client_id else "system-assigned"
        # The identity header is as good as a token on its host: never in a message.
        secrets = tuple(os.environ.get(name, "") for name in ("IDENTITY_HEADER", "MSI_SECRET"))
        super().__init__(
            where=f"the managed identity ({host})",
            scope=f"{self.resource}/.default",
            secrets=secrets,
            clock=clock,
        )
        self.credential = f"managed identity ({kind}, {host})"
        self._factory = client_factory or msal.ManagedIdentityClient

    def __repr__(self) -> str:
        return f"{type(self).__name__}(client_id={self.client_id!r}, resource={self.resource!r})"

    def _acquire(self, force_refresh: bool) -> dict[str, Any]:
        if self._app is None or force_refresh:
            # The client's cache has no "force": a new client asks the endpoint again.
            identity = (
                msal.UserAssignedManagedIdentity(client_id=self.client_id)
                if self.client_id
                else msal.SystemAssignedManagedIdentity()
            )
            self._app = self._factory(
                identity, http_client=_OneShotHttp(timeout=_MI_TIMEOUT, trust_env=False)
            )
        result: dict[str, Any] = self._app.acquire_token_for_client(resource=self.resource)
        return result


class AzureCliTokenProvider(_RenewingTokenProvider):
    """The Azure CLI's token (`az account get-access-token`), fetched again before it expires."""

    credential = "Azure CLI"

    def __init__(
        self,
        endpoints: Endpoints,
        *,
        tenant: str | None = None,
        env: Mapping[str, str] = os.environ,
        clock: Callable[[], float] = time.monotonic,
        run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
    ) -> None:
        resource = _resource(endpoints)
        super().__init__(where="the Azure CLI", scope=f"{resource}/.default", clock=clock)
        self.tenant = tenant or None
        self._env = dict(env)
        self._run_process = run
        target = (
            ["--resource-type", "ms-graph"]
            if endpoints.cloud == "global"
            else ["--resource", resource]
        )
        self.arguments = [
            "account", "get-access-token", "--output", "json", *target,
            *(["--tenant", self.tenant] if self.tenant else []),
        ]  # fmt: skip
        #: How many times `az` was run (for tests and stats).
        self.calls = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tenant={self.tenant!r})"

    def _acquire(self, force_refresh: bool) -> dict[str, Any]:
        program = shutil.which("az", path=self._env.get("PATH"))
        if program is None:
            raise AuthError(
                f"the Azure CLI (`az`) is not on PATH: install it and {_AZ_LOGIN_HINT}, "
                "or choose another credential source"
            )
        self.calls += 1
        try:
            done = self._run_process(
                [program, *self.arguments],
                capture_output=True,
                text=True,
                encoding="utf-8",
                errors="replace",
                stdin=subprocess.DEVNULL,
                timeout=_AZ_TIMEOUT,
                env=self._env,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise AuthError(
                f"`az account get-access-token` did not answer within {_AZ_TIMEOUT:.0f} s"
            ) from None
        except OSError as error:
            raise AuthError(
                f"cannot run the Azure CLI ({program}): {error.strerror or error}"
            ) from None
        if done.returncode != 0:
            said = next((line for line in done.stderr.splitlines() if line.strip()), "")
            raise AuthError(
                f"the Azure CLI gave no token (exit {done.returncode}: {_one_line(said)[:300]}); "
                f"{_AZ_LOGIN_HINT}" + (f" --tenant {self.tenant}" if self.tenant else "")
            )
        return _cli_answer(done.stdout)


def _cli_answer(stdout: str) -> dict[str, Any]:
    """`az account get-access-token` output as an OAuth answer (`access_token`, `expires_in`)."""
    try:
        answer = json.loads(stdout)
    except json.JSONDecodeError:
        answer = None
    token = answer.get("accessToken") if isinstance(answer, dict) else None
    if not isinstance(token, str) or not token:
        # Never quote stdout: it may hold a token in a shape we did not expect.
        raise AuthError(
            "the Azure CLI printed no accessToken (an old or unexpected `az`?); "
            f"update it and {_AZ_LOGIN_HINT}"
        )
    assert isinstance(answer, dict)
    expires_at = _expiry(answer)
    return {"access_token": token, "expires_in": max(0.0, expires_at - time.time())}


def _expiry(answer: Mapping[str, Any]) -> float:
    epoch = answer.get("expires_on")
    if isinstance(epoch, int | float | str):
        try:
            return float(epoch)
        except ValueError:
            pass
    local = answer.get("expiresOn")
    if isinstance(local, str):
        try:
            return datetime.fromisoformat(local).timestamp()  # naive: the machine's local time
        except ValueError:
            pass
    raise AuthError("the Azure CLI's answer has no readable expires_on or expiresOn")
