"""The emulator as an ASGI application (starlette routing, uvicorn serving).

Routes:

* `/beta/deviceManagement/autopilotEvents[/{id}]` and `POST /beta/$batch`: Graph (bearer needed).
* `/{tenant}/v2.0/.well-known/openid-configuration`, `/{tenant}/oauth2/v2.0/token`,
  `/{tenant}/oauth2/v2.0/devicecode`, `/{tenant}/discovery/v2.0/keys`,
  `/common/discovery/instance`: the sign-in endpoints MSAL uses.
* `/_emulator/stats`, `/_emulator/reset`, `/_emulator/apps/{client_id}/disable|enable`:
  administration, no auth.

Every response carries a fresh `request-id` and echoes `client-request-id` (GRAPH.md, "Errors
and request ids"); with `always_client_request_id` it answers `client-request-id` equal to
`request-id` when the client sent none, as Graph does. uvicorn adds `Date` to every answer.
Graph requests first wait `latency_ms`, then may meet a fault; a fault happens before anything
else (auth, throttle, the write), as a failing gateway would, except a dropped connection drawn
as "applied" (`drop_applied`): that request is carried out first and only its answer is lost.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Final
from urllib.parse import parse_qsl, urlsplit

import anyio
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batch.clouds import CLOUDS
from batch.emulator.faults import Fault
from batch.emulator.graph_api import Answer, Context, GraphApi
from batch.emulator.oauth import GRAPH_APP_ID, AadError, TokenRejected
from batch.emulator.state import EmulatorState
from batch.emulator.throttle import format_retry_after
from batch.emulator.wire import GRAPH_CONTENT_TYPE, dump_json, error_body

__all__ = ["ConnectionDropped", "build_app"]

_AAD_CONTENT_TYPE: Final = "application/json; charset=utf-8"
_WWW_AUTHENTICATE: Final = (
    'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/'
    f'authorize", client_id="{GRAPH_APP_ID}"'
)
_GRAPH_PREFIX: Final = "/beta/"


class ConnectionDropped(Exception):
    """Raised after the status line to break the connection on purpose (a fault)."""


def _base_url(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def _graph_audiences(request: Request) -> set[str]:
    """The `aud` values Graph accepts here: this server (either loopback name) or a real Graph."""
    base = _base_url(request)
    own = {base}
    for a, b in (("127.0.0.1", "localhost"), ("localhost", "127.0.0.1")):
        own.add(base.replace(f"//{a}", f"//{b}"))
    graphs = {cloud.graph_root for cloud in CLOUDS.values()}
    return {*own, *(a + "/" for a in own), *graphs, *(g + "/" for g in graphs), GRAPH_APP_ID}


def _respond(answer: Answer) -> Response:
    content = b"" if answer.body is None else dump_json(answer.body)
    headers = {k: v for k, v in answer.headers.items() if k.lower() != "content-type"}
    media_type = answer.headers.get("Content-Type") if answer.body is not None else None
    return Response(content, answer.status, headers, media_type=media_type)


class _Middleware:
    """Request ids on every response; latency and faults for Graph requests."""

    def __init__(self, app: ASGIApp, state: EmulatorState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = str(uuid.uuid4())
        client_request_id = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"client-request-id"), None
        )
        scope.setdefault("state", {})
        scope["state"]["request_id"] = request_id
        answered_id = client_request_id
        if answered_id is None and self.state.config.always_client_request_id:
            answered_id = request_id

        async def send_with_ids(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["request-id"] = request_id
                if answered_id is not None:
                    headers["client-request-id"] = answered_id
            await send(message)

        if not str(scope["path"]).startswith(_GRAPH_PREFIX):
            await self.app(scope, receive, send_with_ids)
            return
        state = self.state
        state.stats.requests += 1
        if state.config.latency_ms:
            await anyio.sleep(state.config.latency_ms / 1000)
        fault = state.faults.draw()
        if fault is None:
            await self.app(scope, receive, send_with_ids)
            return
        state.stats.faults[fault.value] += 1
        if fault is Fault.DROP:
            if state.faults.applied():
                # The request is carried out (the write applied, the budget used) and only its
                # answer is lost: the app reads the body and answers into the void.
                state.stats.faults_applied += 1
                await self.app(scope, receive, _discard)
            else:
                # The request body is read first; closing on unread data would make the kernel
                # reset the connection instead, which is a different (and rarer) failure.
                message = await receive()
                while message["type"] == "http.request" and message.get("more_body", False):
                    message = await receive()
            # The status line and headers go out, then the connection breaks: the client sees
            # a response that never completes (httpx: RemoteProtocolError).
            await send_with_ids(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", GRAPH_CONTENT_TYPE.encode()),
                        (b"content-length", b"1024"),
                    ],
                }
            )
            raise ConnectionDropped("fault injection: connection dropped mid-response")
        ids = (request_id, client_request_id)
        await self._fault_response(fault, scope, receive, send_with_ids, ids)

    async def _fault_response(
        self,
        fault: Fault,
        scope: Scope,
        receive: Receive,
        send: Send,
        ids: tuple[str, str | None],
    ) -> None:
        headers: dict[str, str] = {}
        if fault is Fault.UNAVAILABLE:
            status, code, message = 503, "ServiceUnavailable", "The service is temporarily busy."
            # 1 s with Graph's 20 s window; scaled down with a scaled-down test window.
            wait = self.state.config.fault_retry_after
            if wait is None:
                wait = min(1.0, self.state.config.write_limit.seconds / 20)
            # A 503 always says how long (the throttle's forms are for 429s): "none" falls back
            # to the decimal form, "mixed" to the whole seconds most answers carry.
            style = {"none": "decimal", "mixed": "int"}.get(
                self.state.config.retry_after_format, self.state.config.retry_after_format
            )
            _, header = format_retry_after(wait, style)
            headers["Retry-After"] = str(header)
        else:
            status, code, message = 504, "GatewayTimeout", "The gateway timed out."
        self.state.stats.statuses[status] += 1
        body = error_body(code, message, request_id=ids[0], client_request_id=ids[1])
        response = Response(dump_json(body), status, headers, media_type=GRAPH_CONTENT_TYPE)
        await response(scope, receive, send)


async def _discard(message: Message) -> None:
    """An ASGI `send` for an answer that never reaches the client (a drop after the work)."""


def build_app(state: EmulatorState) -> ASGIApp:
    """The emulator's ASGI application over `state`."""
    api = GraphApi(state)
    identity = state.identity

    async def graph(request: Request) -> Response:
        ctx_ids = (request.state.request_id, request.headers.get("client-request-id"))
        try:
            principal = identity.authenticate(
                request.headers.get("authorization"), audiences=_graph_audiences(request)
            )
        except TokenRejected as rejected:
            state.stats.statuses[401] += 1
            refusal = error_body(
                "InvalidAuthenticationToken",
                str(rejected),
                request_id=ctx_ids[0],
                client_request_id=ctx_ids[1],
            )
            return Response(
                dump_json(refusal),
                401,
                {"WWW-Authenticate": _WWW_AUTHENTICATE},
                media_type=GRAPH_CONTENT_TYPE,
            )
        ctx = Context(principal, _base_url(request), *ctx_ids)
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        path = raw_path.decode("latin-1").removeprefix("/beta")
        body = await request.body()
        if path.rstrip("/") == "/$batch":
            if request.method != "POST":
                answer = Answer(
                    405,
                    error_body(
                        "BadRequest",
                        "$batch accepts only POST.",
                        request_id=ctx.request_id,
                        client_request_id=ctx.client_request_id,
                    ),
                    {"Content-Type": GRAPH_CONTENT_TYPE},
                )
            else:
                answer = api.batch(body, ctx)
                if answer.status == 200:
                    return _respond(answer)  # the items were counted one by one
        else:
            query = request.url.query
            target = f"{path}?{query}" if query else path
            answer = api.handle(request.method, target, body, ctx)
        state.stats.statuses[answer.status] += 1
        return _respond(answer)

    async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        body = error_body(
            "NotFound",
            f"The emulator has no route for {request.method} {request.url.path}.",
            request_id=request.state.request_id,
            client_request_id=request.headers.get("client-request-id"),
        )
        await Response(dump_json(body), 404, media_type=GRAPH_CONTENT_TYPE)(scope, receive, send)

    # --- administration ------------------------------------------------------------------------

    async def stats(request: Request) -> Response:
        return JSONResponse(state.stats_dict())

    async def reset(request: Request) -> Response:
        # ?store=1 also returns the events to their state at server start.
        state.reset(store=request.query_params.get("store", "") in ("1", "true", "yes"))
        return JSONResponse(state.stats_dict())

    async def disable(request: Request) -> Response:
        client_id = request.path_params["client_id"]
        identity.disable_app(client_id)
        return JSONResponse({"client_id": client_id, "enabled": False})

    async def enable(request: Request) -> Response:
        client_id = request.path_params["client_id"]
        identity.enable_app(client_id)
        return JSONResponse({"client_id": client_id, "enabled": True})

    # --- sign-in --------------------------------------------------------------------------------

    async def openid_configuration(request: Request) -> Response:
        base = _base_url(request)
        tenant = request.path_params["tenant"]
        # MSAL reads authorization_endpoint and token_endpoint (required) and
        # device_authorization_endpoint; the emulator serves no interactive authorize page.
        return JSONResponse(
            {
                "issuer": f"{base}/{tenant}/v2.0",
                "authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/{tenant}/oauth2/v2.0/token",
                "device_authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/devicecode",
                "jwks_uri": f"{base}/{tenant}/discovery/v2.0/keys",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "response_types_supported": ["code", "id_token", "code id_token", "token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "tenant_region_scope": None,
                "cloud_instance_name": request.url.hostname,
            },
            headers={"Content-Type": _AAD_CONTENT_TYPE},
        )

    async def instance_discovery(request: Request) -> Response:
        base = _base_url(request)
        endpoint = request.query_params.get("authorization_endpoint", "")
        segments = [s for s in urlsplit(endpoint).path.split("/") if s]
        tenant = segments[0] if segments else "common"
        host = request.url.netloc
        discovery = f"{base}/{tenant}/v2.0/.well-known/openid-configuration"
        return JSONResponse(
            {
                "tenant_discovery_endpoint": discovery,
                "api-version": "1.1",
                "metadata": [
                    {"preferred_network": host, "preferred_cache": host, "aliases": [host]}
                ],
            }
        )

    async def keys(request: Request) -> Response:
        return JSONResponse(identity.jwks())

    async def _form(request: Request) -> dict[str, str]:
        raw = await request.body()
        return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))

    def _aad_error(error: AadError) -> Response:
        return JSONResponse(error.body(), error.status, {"Content-Type": _AAD_CONTENT_TYPE})

    async def token(request: Request) -> Response:
        tenant = request.path_params["tenant"]
        form = await _form(request)
        base = _base_url(request)
        audiences = {f"{base}/{tenant}/oauth2/v2.0/token"}
        try:
            body = identity.token_response(
                tenant, form, audiences=audiences, basic=_basic_auth(request)
            )
        except AadError as error:
            return _aad_error(error)
        return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    async def devicecode(request: Request) -> Response:
        tenant = request.path_params["tenant"]
        form = await _form(request)
        try:
            body = identity.device_code_response(
                tenant, form, verification_uri=f"{_base_url(request)}/devicelogin"
            )
        except AadError as error:
            return _aad_error(error)
        return JSONResponse(body)

    methods = ["GET", "POST", "PATCH", "PUT", "DELETE"]
    routes = [
        Route("/_emulator/stats", stats, methods=["GET"]),
        Route("/_emulator/reset", reset, methods=["POST"]),
        Route("/_emulator/apps/{client_id}/disable", disable, methods=["POST"]),
        Route("/_emulator/apps/{client_id}/enable", enable, methods=["POST"]),
        Route("/beta/{rest:path}", graph, methods=methods),
        Route("/common/discovery/instance", instance_discovery, methods=["GET"]),
        Route("/{tenant}/v2.0/.well-known/openid-configuration", openid_configuration),
        Route("/{tenant}/discovery/v2.0/keys", keys, methods=["GET"]),
        Route("/{tenant}/oauth2/v2.0/token", token, methods=["POST"]),
        Route("/{tenant}/oauth2/v2.0/devicecode", devicecode, methods=["POST"]),
    ]
    return _Middleware(Router(routes, redirect_slashes=False, default=not_found), state)


def _basic_auth(request: Request) -> tuple[str, str] | None:
    """Client id and secret from `Authorization: Basic` (client_secret_basic), if present."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    return (client_id, secret) if sep else None
