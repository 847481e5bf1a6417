"""`whoami`: prove the token with one cheap Graph read, and say what it carries.

A token's claims are what it says about itself; only Graph can say whether it works. So
`whoami` reads one event id (`GET /deviceManagement/autopilotEvents?$top=1&$select=id`, one
request against the read budget) and judges, in this order:

1. Graph refused the request: a 401 twice (the token is not accepted), Intune's 401 for missing
   rights, or a 403 → exit 3 with Graph's message and what to grant;
2. Graph could not be reached or kept failing (after two retries) → exit 3;
3. the token has expired (said as `expired 11 minutes ago`) → exit 3;
4. the token's claims lack the permission (a JWT listing other roles or scopes) → exit 3.

Otherwise exit 0: the read worked, and the claims grant the permission or (an opaque token) do
not say. A cron job runs `whoami` first to learn that a run would fail, before it starts.

`whoami --resource devices` asks the same of the resource named (`batch.resources`): one read of
its collection (`…/windowsAutopilotDeviceIdentities?$top=1`, no `$select`: devices answer 500
to it) and its write permission (`DeviceManagementServiceConfig.ReadWrite.All`).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any, Final

import httpx

from batch.auth import (
    TokenInfo,
    TokenProvider,
    credential_name,
    describe_token,
)
from batch.clouds import Endpoints
from batch.errors import AuthError, BatchError, GraphError, PermissionDenied, RunAborted
from batch.graph import GraphClient
from batch.limiter import Limiter, SystemClock
from batch.listing import collection_of
from batch.model import Rate
from batch.resources import EVENTS, Resource
from batch.retry import graph_retrying

__all__ = ["GraphCheck", "Identity", "check_identity", "expiry_text"]

#: Retries of the one read for 429/503/504/no answer: enough for a blip, short for a pre-flight.
_RETRIES: Final = 2
_QUERY: Final = "?$top=1"
_SELECT: Final = "&$select=id"


@dataclass(frozen=True, slots=True)
class GraphCheck:
    """What Graph answered to the one read: `status` 0 when it did not answer at all."""

    ok: bool
    status: int
    message: str
    request_id: str
    elapsed_ms: int
    url: str

    def to_json(self) -> dict[str, Any]:
        """The check as `whoami --json` reports it."""
        return {
            "ok": self.ok,
            "status": self.status,
            "message": self.message,
            "request_id": self.request_id,
            "elapsed_ms": self.elapsed_ms,
            "url": self.url,
        }


@dataclass(frozen=True, slots=True)
class Identity:
    """The token, what Graph said to it, and the verdict (`problem` None: ready to run)."""

    info: TokenInfo
    credential: str
    endpoints: Endpoints
    graph: GraphCheck
    checked_at: dt.datetime
    problem: BatchError | None
    resource: Resource = EVENTS

    @property
    def permission(self) -> str:
        """The permission a run of the resource needs."""
        return self.resource.permission

    @property
    def granted(self) -> bool | None:
        """Whether the claims grant the permission (None: an opaque token does not say)."""
        return self.info.grants(self.permission)

    @property
    def expires_in(self) -> float | None:
        """Seconds until the token expires (negative: expired that long ago; None: unknown)."""
        at = self.info.expires_at
        return None if at is None else (at - self.checked_at).total_seconds()

    def to_json(self) -> dict[str, Any]:
        """The whole answer as `whoami --json` prints it."""
        expires_in = self.expires_in
        data: dict[str, Any] = {
            "ok": self.problem is None,
            **self.info.to_json(),
            "cloud": self.endpoints.cloud,
            "graph_root": self.endpoints.graph_root,
            "authority_host": self.endpoints.authority_host,
            "credential": self.credential,
            "expires_in_seconds": None if expires_in is None else int(expires_in),
            "expired": expires_in is not None and expires_in <= 0,
            "expires": expiry_text(self.info.expires_at, self.checked_at),
            "permission": self.permission,
            "permission_granted": self.granted,
            "graph": self.graph.to_json(),
        }
        if self.problem is not None:
            data["error"] = str(self.problem)
            data["exit_code"] = self.problem.exit_code
        return data


def _ago(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 1:
        return f"{round(seconds)} seconds"
    if minutes < 120:
        return f"{minutes} minute{'' if minutes == 1 else 's'}"
    hours = round(seconds / 3600)
    if hours < 48:
        return f"{hours} hours"
    return f"{round(seconds / 86400)} days"


def expiry_text(expires_at: dt.datetime | None, now: dt.datetime) -> str:
    """`2026-03-01 10:15:00 UTC (in 49 min)`, or `… (expired 11 minutes ago)`, or `unknown`."""
    if expires_at is None:
        return "unknown"
    stamp = f"{expires_at:%Y-%m-%d %H:%M:%S} UTC"
    left = (expires_at - now).total_seconds()
    if left <= 0:
        return f"{stamp} (expired {_ago(-left)} ago)"
    return f"{stamp} (in {int(left // 60)} min)"


def _grant_hint(info: TokenInfo, what: str) -> str:
    kind = "a delegated" if info.is_jwt and info.delegated else "an application"
    return f"grant {what} to the app as {kind} permission and give admin consent"


async def _read_one(client: GraphClient, url: str, resource: Resource) -> GraphCheck:
    limiter = Limiter(write=Rate(100, 20), clock=SystemClock())
    started = time.monotonic()
    async for attempt in graph_retrying(limiter, max_retries=_RETRIES, clock=SystemClock()):
        with attempt:
            await limiter.acquire_reads(1)
            await client.list_page(top=1, select=("id",), resource=resource)
    elapsed = int((time.monotonic() - started) * 1000)
    return GraphCheck(True, 200, "OK", "", elapsed, url)


async def check_identity(
    endpoints: Endpoints,
    tokens: TokenProvider,
    *,
    http: httpx.AsyncClient | None = None,
    now: dt.datetime | None = None,
    resource: Resource = EVENTS,
) -> Identity:
    """Get a token, read one id of `resource` with it, and judge (see the module docstring).

    Raises `AuthError` when no token can be had at all (sign-in failed); every answer from
    Graph, refusals included, is in the returned `Identity`.
    """
    token = await tokens.token()
    info = describe_token(token)
    select = _SELECT if resource.select_safe else ""
    root = endpoints.graph_root.rstrip("/")
    url = f"{root}/{resource.version}{resource.collection}{_QUERY}{select}"
    problem: BatchError | None = None
    started = time.monotonic()
    try:
        async with GraphClient(endpoints.graph_root, tokens, http=http) as client:
            graph = await _read_one(client, url, resource)
    except GraphError as error:
        elapsed = int((time.monotonic() - started) * 1000)
        graph = GraphCheck(False, error.status, error.message, error.request_id, elapsed, url)
        problem = _refusal(error, info, resource)
    except PermissionDenied as error:
        elapsed = int((time.monotonic() - started) * 1000)
        answer = error.error
        graph = GraphCheck(False, answer.status, answer.message, answer.request_id, elapsed, url)
        problem = error
    except AuthError as error:
        # A 401 to a fresh token too: Graph does not accept it (wrong tenant, audience, revoked).
        elapsed = int((time.monotonic() - started) * 1000)
        graph = GraphCheck(False, 401, str(error), "", elapsed, url)
        problem = AuthError(f"Graph does not accept the token: {error}")
    checked = now or dt.datetime.now(dt.UTC)
    if problem is None:
        problem = _claims_problem(info, checked, resource.permission)
    return Identity(info, credential_name(tokens), endpoints, graph, checked, problem, resource)


def _refusal(error: GraphError, info: TokenInfo, resource: Resource) -> BatchError:
    request = f"; request-id {error.request_id}" if error.request_id else ""
    if error.status == 403:
        return AuthError(
            f"Graph refused to read the {collection_of(resource).items} ({error.status} "
            f"{error.code}: {error.message}{request}): {_grant_hint(info, resource.permission)}"
        )
    if error.status == 0:
        return RunAborted(f"Graph did not answer: {error.message}")
    return RunAborted(
        f"Graph could not be read ({error.status} {error.code}: {error.message}{request})"
    )


def _claims_problem(info: TokenInfo, now: dt.datetime, permission: str) -> BatchError | None:
    if info.expires_at is not None and info.expires_at <= now:
        ago = _ago((now - info.expires_at).total_seconds())
        return AuthError(
            f"the token expired {ago} ago ({info.expires_at:%Y-%m-%d %H:%M:%S} UTC): get a new one"
        )
    if info.grants(permission) is False:
        return AuthError(f"the token lacks {permission}: {_grant_hint(info, 'it')}")
    return None
