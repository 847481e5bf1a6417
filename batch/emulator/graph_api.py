"""Graph's autopilot-event API over the emulator state (no HTTP here: `app` does that).

One code path serves single requests and `$batch` items, so an item behaves exactly as the same
request sent alone: throttled on its own (GRAPH.md: "every request inside a `$batch` counts
individually"), its own status, headers and body. Order for one request: the throttle (every
request reaching Graph costs budget, whatever its answer), then the route, the permission and
the operation itself.

Error bodies are rendered in the configured style (`wire.render_error`): a refusal says which
layer refuses it, and Intune's layers answer in Intune's envelope. Two refusals depend on the
profile: `deny_permission` answers Intune's 401 for a missing permission
(`wire.permission_denied_body`), and `batch_refusal="whole"` refuses a whole `$batch` that holds
an absolute item URL or a write without a body, with 400 "Invalid batch payload format."
(microsoft-graph-docs-contrib#8576, ms-365-mcp-server#683) instead of failing that item alone.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from batch.emulator.oauth import READ_PERMISSION, WRITE_PERMISSION, Principal
from batch.emulator.state import EmulatorState
from batch.emulator.wire import (
    GENERIC_INTUNE_MESSAGE,
    GRAPH_CONTENT_TYPE,
    ODataError,
    check_patch_body,
    parse_filter,
    parse_select,
    parse_skiptoken,
    parse_top,
    permission_denied_body,
    render_error,
    shape_event,
    skiptoken,
)
from batch.model import JSON

__all__ = ["MAX_BATCH", "Answer", "Context", "GraphApi"]

MAX_BATCH: Final = 20
WRITE_METHODS: Final = frozenset({"PATCH", "POST", "PUT", "DELETE"})
_COLLECTION: Final = ("deviceManagement", "autopilotEvents")
_SUPPORTED_OPTIONS: Final = frozenset({"$top", "$skiptoken", "$select", "$filter"})
BAD_BATCH_PAYLOAD: Final = "Invalid batch payload format."


@dataclass(slots=True)
class Answer:
    """One response: status, headers (besides request ids), JSON body (None: no body)."""

    status: int
    body: JSON = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Context:
    """Where a request came from: the caller, the URL base for links, the request ids."""

    principal: Principal
    base_url: str
    request_id: str
    client_request_id: str | None


def _path_of(target: str) -> str:
    """The resource path of a request target (no query), for Intune's error Url."""
    return urlsplit(target).path or "/"


def _segments(path: str) -> list[str]:
    return [unquote(part) for part in path.strip("/").split("/")] if path.strip("/") else []


def _bad_segment(segments: list[str]) -> str | None:
    """The segment that leaves the autopilot-event routes (names are case-insensitive)."""
    for i, want in enumerate(_COLLECTION):
        if i >= len(segments):
            return segments[-1] if segments else ""
        if segments[i].casefold() != want.casefold():
            return segments[i]
    return segments[3] if len(segments) > 3 else None


class GraphApi:
    """GET (one and list), PATCH and `$batch` on /beta/deviceManagement/autopilotEvents."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    # --- one request -------------------------------------------------------------------------

    def handle(self, method: str, target: str, body: bytes | JSON | None, ctx: Context) -> Answer:
        """Answer one request; `target` is the path (percent-encoded) and query after /beta.

        `body` is raw bytes for a single request, or the decoded JSON of a batch item.
        """
        state = self.state
        write = method in WRITE_METHODS
        path = _path_of(target)
        decision = state.throttle.admit(ctx.principal.app_id, ctx.principal.tenant_id, write=write)
        app = state.stats.app(ctx.principal.app_id)
        if not decision.admitted:
            state.stats.throttled += 1
            state.stats.during_retry_after += decision.during_retry_after
            app.throttled += 1
            app.during_retry_after += decision.during_retry_after
            if decision.header is not None:
                headers = {"Retry-After": decision.header}
                throttled = ODataError(
                    429,
                    "TooManyRequests",
                    "Too many requests from this application; retry after the time in Retry-After.",
                )
            else:
                # Graph's gateway always says how long; the 429s without Retry-After come from
                # Intune itself, in its envelope (IntuneCD#217).
                headers = {}
                throttled = ODataError(
                    429,
                    "TooManyRequests",
                    "Too many requests from this application.",
                    source="intune",
                    intune_message=GENERIC_INTUNE_MESSAGE,
                )
            return self.error(throttled, ctx, path, **headers)
        if write:
            state.stats.writes += 1
            app.writes += 1
        else:
            state.stats.reads += 1
            app.reads += 1
        try:
            return self._route(method, target, body, ctx)
        except ODataError as error:
            return self.error(error, ctx, path)
        except _Denied as denied:
            return denied.answer

    def error(self, error: ODataError, ctx: Context, path: str, **headers: str) -> Answer:
        """The answer for a refusal, in the configured error style; `path` for Intune's Url."""
        body = render_error(
            error,
            style=self.state.config.error_style,
            request_id=ctx.request_id,
            client_request_id=ctx.client_request_id,
            path=path,
        )
        return Answer(error.status, body, {"Content-Type": GRAPH_CONTENT_TYPE, **headers})

    def _route(self, method: str, target: str, body: bytes | JSON | None, ctx: Context) -> Answer:
        parts = urlsplit(target)
        segments = _segments(parts.path)
        bad = _bad_segment(segments)
        if bad is not None:
            raise ODataError(400, "BadRequest", f"Resource not found for the segment '{bad}'.")
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        for option in query:
            if option.startswith("$") and option not in _SUPPORTED_OPTIONS:
                raise ODataError(400, "BadRequest", f"Query option '{option}' is not allowed here.")
        allowed = ("GET", "PATCH") if len(segments) == 3 else ("GET",)
        if method not in allowed:
            raise ODataError(
                405,
                "BadRequest",
                f"The requested resource does not support http method '{method}'.",
            )
        write = method in WRITE_METHODS
        deny = self.state.config.deny_permission
        if deny == "all" or (deny == "writes" and write):
            self.state.stats.denied += 1
            refusal = permission_denied_body(
                request_id=ctx.request_id,
                client_request_id=ctx.client_request_id,
                path=parts.path,
            )
            raise _Denied(Answer(401, refusal, {"Content-Type": GRAPH_CONTENT_TYPE}))
        permission = WRITE_PERMISSION if write else READ_PERMISSION
        if not ctx.principal.may(write=write):
            raise ODataError(
                403,
                "Forbidden",
                "Application is not authorized to perform this operation. Application must "
                f"have one of the following scopes: {permission}",
                source="intune",
            )
        if len(segments) == 2:
            return self._list(query, ctx)
        event_id = segments[2]
        if method == "GET":
            return self._get(event_id, query, ctx)
        return self._patch(event_id, body, ctx)

    def _get(self, event_id: str, query: Mapping[str, str], ctx: Context) -> Answer:
        schema = self.state.config.schema
        select = parse_select(query.get("$select"), schema)
        event = self.state.store.get(event_id)
        if event is None:
            raise _not_found(event_id)
        body: dict[str, JSON] = {
            "@odata.context": f"{ctx.base_url}/beta/$metadata#deviceManagement/autopilotEvents"
            "/$entity"
        }
        body.update(shape_event(event, schema, select))
        return Answer(200, body, {"Content-Type": GRAPH_CONTENT_TYPE})

    def _list(self, query: Mapping[str, str], ctx: Context) -> Answer:
        state = self.state
        schema = state.config.schema
        select = parse_select(query.get("$select"), schema)
        cap = state.config.page_size if state.config.cap_top else None
        top = parse_top(query.get("$top"), state.config.page_size, cap=cap)
        offset = parse_skiptoken(query.get("$skiptoken"))
        where = parse_filter(query.get("$filter"), schema)
        if where is None:
            events = state.store.page(offset, top + 1)
        else:
            events = state.store.find(*where)[offset : offset + top + 1]
        body: dict[str, JSON] = {
            "@odata.context": f"{ctx.base_url}/beta/$metadata#deviceManagement/autopilotEvents",
            "value": [shape_event(e, schema, select) for e in events[:top]],
        }
        if len(events) > top:
            # The next link repeats the query (like Graph) with a token for the next page.
            keep = {k: v for k, v in query.items() if k != "$skiptoken"}
            keep["$top"] = str(top)
            keep["$skiptoken"] = skiptoken(offset + top)
            link_query = "&".join(f"{k}={_quote_option(v)}" for k, v in keep.items())
            body["@odata.nextLink"] = (
                f"{ctx.base_url}/beta/deviceManagement/autopilotEvents?{link_query}"
            )
        return Answer(200, body, {"Content-Type": GRAPH_CONTENT_TYPE})

    def _patch(self, event_id: str, body: bytes | JSON | None, ctx: Context) -> Answer:
        state = self.state
        if isinstance(body, bytes):
            if not body.strip():
                raise ODataError(400, "BadRequest", "Empty Payload. JSON content expected.")
            try:
                body = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ODataError(
                    400,
                    "BadRequest",
                    "Unable to read JSON request payload. Please ensure Content-Type header is "
                    "set and payload is of valid JSON format.",
                ) from None
        elif body is None:
            raise ODataError(400, "BadRequest", "Empty Payload. JSON content expected.")
        changes = check_patch_body(body, state.config.schema)
        if event_id not in state.store:
            raise _not_found(event_id)
        updated = state.store.patch(event_id, changes)
        state.stats.patches[str(updated["id"])] += 1
        if state.config.patch_status == 204:
            return Answer(204)
        return Answer(
            200, shape_event(updated, state.config.schema), {"Content-Type": GRAPH_CONTENT_TYPE}
        )

    # --- $batch ------------------------------------------------------------------------------

    def batch(self, raw: bytes, ctx: Context) -> Answer:
        """Answer `POST /beta/$batch`: 400 when malformed, else 200 with every item's answer."""
        self.state.stats.batches += 1
        try:
            items = _parse_batch(raw, whole=self.state.config.batch_refusal == "whole")
        except ODataError as error:
            return self.error(error, ctx, "/$batch")
        self.state.stats.batch_items += len(items)
        responses: list[JSON] = []
        statuses: dict[str, int] = {}
        for item in items:
            answer = self._item(item, statuses, ctx)
            statuses[str(item["id"]).casefold()] = answer.status
            self.state.stats.statuses[answer.status] += 1
            response: dict[str, JSON] = {
                "id": item["id"],
                "status": answer.status,
                "headers": dict(answer.headers),
            }
            if answer.body is not None:
                response["body"] = answer.body
            responses.append(response)
        # Graph answers batch items in any order (GRAPH.md, "JSON batching").
        self.state.shuffle.shuffle(responses)
        return Answer(200, {"responses": responses}, {"Content-Type": GRAPH_CONTENT_TYPE})

    def _item(self, item: Mapping[str, JSON], statuses: Mapping[str, int], ctx: Context) -> Answer:
        headers = item.get("headers")
        item_crid = None
        if isinstance(headers, dict):
            item_crid = next(
                (str(v) for k, v in headers.items() if k.lower() == "client-request-id"), None
            )
        item_ctx = Context(
            ctx.principal, ctx.base_url, str(uuid.uuid4()), item_crid or ctx.client_request_id
        )
        depends = item.get("dependsOn") or []
        assert isinstance(depends, list)  # checked by _parse_batch
        url = str(item["url"])
        target = url if url.startswith("/") else "/" + url
        if any(not 200 <= statuses[str(d).casefold()] < 300 for d in depends):
            failed = ODataError(424, "FailedDependency", "A request this one depends on failed.")
            return self.error(failed, item_ctx, _path_of(target))
        if _absolute(url):
            relative = ODataError(
                400,
                "BadRequest",
                "Batch request URLs must be relative to the batch's version, e.g. "
                "/deviceManagement/autopilotEvents/{id}.",
            )
            return self.error(relative, item_ctx, "/")
        return self.handle(str(item["method"]).upper(), target, item.get("body"), item_ctx)


class _Denied(Exception):
    """Carries a finished answer (Intune's 401 for rights) out of the routing."""

    def __init__(self, answer: Answer) -> None:
        super().__init__("permission denied")
        self.answer = answer


def _absolute(url: str) -> bool:
    return "://" in url or url.startswith("//")


def _not_found(event_id: str) -> ODataError:
    return ODataError(
        404,
        "ResourceNotFound",
        f"No deviceManagementAutopilotEvent with id '{event_id}'.",
        source="intune",
        # What Intune says for a missing object (ThomasKur/IntuneDocumentation#39).
        intune_message=GENERIC_INTUNE_MESSAGE,
    )


def _quote_option(value: str) -> str:
    return quote(value, safe=",'$")


def _parse_batch(raw: bytes, *, whole: bool) -> list[dict[str, JSON]]:
    """The batch's items, checked as Graph checks the envelope (any fault fails it all).

    With `whole`, an item with an absolute URL or a write item without a body fails it all too,
    as the real service does; otherwise those fail only their item (see `GraphApi._item`).
    """
    try:
        document = json.loads(raw) if raw.strip() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        document = None
    if not isinstance(document, dict) or not isinstance(document.get("requests"), list):
        raise ODataError(
            400,
            "BadRequest",
            "Invalid batch payload format: expected a JSON object with a 'requests' array.",
        )
    items = document["requests"]
    assert isinstance(items, list)
    if not items:
        raise ODataError(400, "BadRequest", "The batch must contain at least one request.")
    if len(items) > MAX_BATCH:
        raise ODataError(
            400,
            "BadRequest",
            f"The batch holds {len(items)} requests; the limit is {MAX_BATCH}.",
        )
    seen: set[str] = set()
    checked: list[dict[str, JSON]] = []
    for position, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise ODataError(400, "BadRequest", f"Batch request {position} is not a JSON object.")
        for key in ("id", "method", "url"):
            value = item.get(key)
            if not isinstance(value, str) or not value.strip():
                raise ODataError(
                    400,
                    "BadRequest",
                    f"Batch request {position} needs a non-empty string '{key}'.",
                )
        item_id = str(item["id"])
        # Ids are compared case-insensitively (GRAPH.md, "JSON batching").
        if item_id.casefold() in seen:
            raise ODataError(400, "BadRequest", f"The batch request id '{item_id}' is not unique.")
        headers = item.get("headers")
        if headers is not None and not (
            isinstance(headers, dict) and all(isinstance(v, str) for v in headers.values())
        ):
            raise ODataError(
                400, "BadRequest", f"Batch request '{item_id}': headers must map names to strings."
            )
        if "body" in item and not (
            isinstance(headers, dict) and any(k.lower() == "content-type" for k in headers)
        ):
            raise ODataError(
                400,
                "BadRequest",
                f"Write request id : {item_id} does not contain Content-Type header or body.",
            )
        if whole and (
            _absolute(str(item["url"]))
            or (str(item["method"]).upper() in WRITE_METHODS and item.get("body") is None)
        ):
            raise ODataError(400, "BadRequest", BAD_BATCH_PAYLOAD)
        depends = item.get("dependsOn")
        earlier = isinstance(depends, list) and all(
            isinstance(d, str) and d.casefold() in seen for d in depends
        )
        if depends is not None and not earlier:
            raise ODataError(
                400,
                "BadRequest",
                f"Batch request '{item_id}': dependsOn must list ids of earlier requests.",
            )
        seen.add(item_id.casefold())
        checked.append(item)
    return checked
