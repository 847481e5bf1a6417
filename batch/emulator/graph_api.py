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

Two collections are served (issue 16): `autopilotEvents` (GET, PATCH) and
`windowsAutopilotDeviceIdentities` (GET one and list, `POST {id}/updateDeviceProperties`
answering 204, a PATCH of a device refused with Intune's 400 "No method match route template",
`$select` answering 500 unless `device_select_fails` is off, `$filter=contains(serialNumber,'…')`).
Each collection is throttled in its own Intune service's budgets (`throttle`), and a write of
either may be answered but not applied (`EmulatorState.applies`, the `--verify` hook).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from batch.emulator.oauth import Principal
from batch.emulator.state import EmulatorState
from batch.emulator.wire import (
    DEVICE_ACTION,
    GENERIC_INTUNE_MESSAGE,
    GRAPH_CONTENT_TYPE,
    ODataError,
    check_device_action_body,
    check_patch_body,
    device_select_error,
    no_route,
    parse_filter,
    parse_select,
    parse_skiptoken,
    parse_top,
    permission_denied_body,
    render_error,
    shape_device,
    shape_event,
    skiptoken,
)
from batch.model import JSON
from batch.resources import DEVICES, EVENTS, Resource

__all__ = ["MAX_BATCH", "Answer", "Context", "GraphApi"]

MAX_BATCH: Final = 20
WRITE_METHODS: Final = frozenset({"PATCH", "POST", "PUT", "DELETE"})
_COLLECTIONS: Final = {"autopilotevents": EVENTS, "windowsautopilotdeviceidentities": DEVICES}
# The action as a path segment, plain or namespace-qualified (Graph takes both).
_DEVICE_ACTIONS: Final = frozenset(
    {DEVICE_ACTION.casefold(), f"microsoft.graph.{DEVICE_ACTION}".casefold()}
)
# `contains(serialNumber,'text')`: how device identities are looked up by serial number.
_CONTAINS: Final = re.compile(
    r"^\s*contains\(\s*serialNumber\s*,\s*'(?P<text>(?:[^']|'')*)'\s*\)\s*$"
)
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


def _resource_of(segments: list[str]) -> Resource | None:
    """The collection a path names (`deviceManagement/<collection>/...`), or None."""
    if len(segments) >= 2 and segments[0].casefold() == "devicemanagement":
        return _COLLECTIONS.get(segments[1].casefold())
    return None


def _bad_segment(segments: list[str]) -> str | None:
    """The segment that leaves the served routes (names are case-insensitive)."""
    if not segments:
        return ""
    if segments[0].casefold() != "devicemanagement":
        return segments[0]
    if len(segments) < 2:
        return segments[-1]
    resource = _resource_of(segments)
    if resource is None:
        return segments[1]
    if resource is DEVICES and len(segments) == 4 and segments[3].casefold() in _DEVICE_ACTIONS:
        return None
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
        # Each collection is one Intune service with budgets of its own (unknown routes: the
        # events' service, whose front door answers them).
        service = (_resource_of(_segments(path)) or EVENTS).name
        decision = state.throttle.admit(
            ctx.principal.app_id, ctx.principal.tenant_id, write=write, service=service
        )
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
        resource = _resource_of(segments)
        assert resource is not None  # _bad_segment let only served routes through
        self._check_method(method, resource, segments)
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
        permission = resource.permission if write else resource.read_permission
        if not ctx.principal.may(write=write, resource=resource):
            raise ODataError(
                403,
                "Forbidden",
                "Application is not authorized to perform this operation. Application must "
                f"have one of the following scopes: {permission}",
                source="intune",
            )
        if resource is DEVICES:
            return self._devices(method, segments, query, body, ctx)
        if len(segments) == 2:
            return self._list(query, ctx)
        event_id = segments[2]
        if method == "GET":
            return self._get(event_id, query, ctx)
        return self._patch(event_id, body, ctx)

    def _check_method(self, method: str, resource: Resource, segments: list[str]) -> None:
        """405 for a verb a route does not take; Intune's route refusals for device writes."""
        if resource is DEVICES:
            if method == "PATCH" and len(segments) == 3:
                # msgraph-sdk-powershell#892: the entity is written through the action only.
                where = f"{resource.collection}('{segments[2]}')"
                raise no_route("PATCH", "~/singleton/navigation/key", where)
            if method == "POST" and len(segments) == 2:
                raise no_route("POST", "~/singleton/navigation", resource.collection)
            allowed: tuple[str, ...] = ("POST",) if len(segments) == 4 else ("GET",)
        else:
            allowed = ("GET", "PATCH") if len(segments) == 3 else ("GET",)
        if method not in allowed:
            raise ODataError(
                405,
                "BadRequest",
                f"The requested resource does not support http method '{method}'.",
            )

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
        changes = check_patch_body(_json_body(body), state.config.schema)
        if event_id not in state.store:
            raise _not_found(event_id)
        if state.applies(EVENTS.name, event_id):
            updated = state.store.patch(event_id, changes)
        else:
            updated = state.store.get(event_id) or {}
        state.stats.patches[str(updated["id"])] += 1
        if state.config.patch_status == 204:
            return Answer(204)
        return Answer(
            200, shape_event(updated, state.config.schema), {"Content-Type": GRAPH_CONTENT_TYPE}
        )

    # --- device identities ----------------------------------------------------------------------

    def _devices(
        self,
        method: str,
        segments: list[str],
        query: Mapping[str, str],
        body: bytes | JSON | None,
        ctx: Context,
    ) -> Answer:
        """GET one device or the list, or the updateDeviceProperties action (`_route` checked
        the verb)."""
        config = self.state.config
        if "$select" in query:
            if config.device_select_fails:
                raise device_select_error()
            select = _device_select(query["$select"])
        else:
            select = None
        if len(segments) == 2:
            return self._list_devices(query, select, ctx)
        device_id = segments[2]
        if len(segments) == 4:
            return self._update_device(device_id, body)
        device = self.state.devices.get(device_id)
        if device is None:
            raise _not_found(device_id, DEVICES)
        answer: dict[str, JSON] = {
            "@odata.context": f"{ctx.base_url}/beta/$metadata#deviceManagement/"
            "windowsAutopilotDeviceIdentities/$entity"
        }
        answer.update(_selected(shape_device(device), select))
        return Answer(200, answer, {"Content-Type": GRAPH_CONTENT_TYPE})

    def _list_devices(
        self, query: Mapping[str, str], select: tuple[str, ...] | None, ctx: Context
    ) -> Answer:
        state = self.state
        cap = state.config.page_size if state.config.cap_top else None
        top = parse_top(query.get("$top"), state.config.page_size, cap=cap)
        offset = parse_skiptoken(query.get("$skiptoken"))
        where = query.get("$filter")
        if where is None:
            devices = state.devices.page(offset, top + 1)
        else:
            found = _CONTAINS.match(where)
            if found is None:
                raise ODataError(
                    400,
                    "BadRequest",
                    f"Invalid filter clause '{where}': the emulator filters devices by "
                    "contains(serialNumber,'text').",
                )
            text = found["text"].replace("''", "'").casefold()
            devices = [
                d for d in state.devices.list() if text in str(d.get("serialNumber", "")).casefold()
            ][offset : offset + top + 1]
        collection = f"{ctx.base_url}/beta/deviceManagement/windowsAutopilotDeviceIdentities"
        body: dict[str, JSON] = {
            "@odata.context": f"{ctx.base_url}/beta/$metadata#deviceManagement/"
            "windowsAutopilotDeviceIdentities",
            "value": [_selected(shape_device(d), select) for d in devices[:top]],
        }
        if len(devices) > top:
            keep = {k: v for k, v in query.items() if k != "$skiptoken"}
            keep["$top"] = str(top)
            keep["$skiptoken"] = skiptoken(offset + top)
            link_query = "&".join(f"{k}={_quote_option(v)}" for k, v in keep.items())
            body["@odata.nextLink"] = f"{collection}?{link_query}"
        return Answer(200, body, {"Content-Type": GRAPH_CONTENT_TYPE})

    def _update_device(self, device_id: str, body: bytes | JSON | None) -> Answer:
        state = self.state
        changes = check_device_action_body(_json_body(body))
        stored_id = state.devices.stored_id(device_id)
        if stored_id is None:
            raise _not_found(device_id, DEVICES)
        if state.applies(DEVICES.name, device_id):
            state.devices.update(device_id, changes)
        state.stats.device_writes[stored_id] += 1
        return Answer(204)

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


def _json_body(body: bytes | JSON | None) -> JSON:
    """A request body as JSON: raw bytes parsed (400 when empty or not JSON), an item's as is."""
    if isinstance(body, bytes):
        if not body.strip():
            raise ODataError(400, "BadRequest", "Empty Payload. JSON content expected.")
        try:
            parsed: JSON = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ODataError(
                400,
                "BadRequest",
                "Unable to read JSON request payload. Please ensure Content-Type header is "
                "set and payload is of valid JSON format.",
            ) from None
        return parsed
    if body is None:
        raise ODataError(400, "BadRequest", "Empty Payload. JSON content expected.")
    return body


def _device_select(text: str) -> tuple[str, ...]:
    """`$select` on devices where it is served (friendly): known names only, like Graph."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise ODataError(400, "BadRequest", "$select needs at least one property name.")
    for name in names:
        if name not in DEVICES.properties:
            raise ODataError(
                400,
                "BadRequest",
                f"Could not find a property named '{name}' on type "
                "'microsoft.graph.windowsAutopilotDeviceIdentity'.",
            )
    return names


def _selected(shaped: dict[str, JSON], select: tuple[str, ...] | None) -> dict[str, JSON]:
    if select is None:
        return shaped
    return {k: v for k, v in shaped.items() if k in ("@odata.type", "id") or k in select}


def _not_found(entity_id: str, resource: Resource = EVENTS) -> ODataError:
    return ODataError(
        404,
        "ResourceNotFound",
        f"No {resource.type_name} with id '{entity_id}'.",
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
