"""The Microsoft Graph client: PATCH, GET, list pages and `$batch` for Autopilot events.

It knows nothing of rows, budgets or retries. Each call sends one HTTP request (two after a
401: one token refresh and a resend) and returns a `GraphResponse`, or raises `GraphError`
carrying Graph's status, code, message, `request-id` and our `client-request-id` — status 0
when no answer came (connection trouble, timeout), so callers can treat it as transient.

Reading Intune's answers (GRAPH.md, "How Intune really answers"; issue 13):

* **Error messages.** Intune puts a JSON *document* in `error.message` (`{"_version": 3,
  "Message": "<text> - Operation ID (for customer support): … - Activity ID: … - Url: …", …}`),
  sometimes wrapped once more (`{"ErrorCode": "Forbidden", "Message": "<that document>", …}`).
  `GraphError.message` is only the human `<text>`; the Activity ID stands in for `request-id`
  when the answer has none. The raw document never reaches a message: a document that does not
  parse yields its `Message` field if one can be found, else the HTTP reason phrase.
* **A 401 for rights.** Intune answers 401 (`UnknownError` wrapping `Forbidden`) when the app
  lacks the permission. That is no token problem: such an answer sets
  `GraphError.permission_denied`, and a single request raises `PermissionDenied` (an
  `AuthError`, exit 3) at once instead of refreshing the token and trying again.
* **Retry-After** (`parse_retry_after`): whole or decimal seconds, a list (`30,120`: the first
  number), or an HTTP-date (RFC 9110), counted from the answer's `Date` when it has one.
* **Whole-batch refusals.** An absolute item URL or a write item without a body makes the real
  service refuse the whole `$batch`; `batch()` refuses to send either (ValueError).

Requests from a resource's description (issue 16, `batch.resources`): `write_request` builds the
write of one entity — a PATCH of `{collection}/{id}` for events, a POST to
`{collection}/{id}/updateDeviceProperties` for devices — and `batch_item` the same as a `$batch`
item; every item with a body carries its own `Content-Type: application/json` (Graph requires
it per item, GRAPH.md "JSON batching"). `GraphClient.write`, `get` and `list_page(resource=...)`
send them. `$select` is never sent for a resource whose description says it is unsafe
(`select_safe`; devices answer 500 to any `$select`, see `batch.resources`): the caller gets the
whole entity and picks what it needs. The events' own functions (`event_path`, `patch_event`,
`get_event`) stay as they were.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import Final, Self
from urllib.parse import quote

import httpx

from batch import __version__
from batch.auth import REQUIRED_PERMISSION, TokenProvider
from batch.errors import AuthError, GraphError, PermissionDenied, RunAborted
from batch.model import JSON
from batch.resources import EVENTS, Resource

__all__ = [
    "EVENTS_PATH",
    "MAX_BATCH",
    "PAGE_SIZE",
    "BatchItemResponse",
    "BatchRequest",
    "GraphClient",
    "GraphResponse",
    "WriteRequest",
    "batch_item",
    "entity_path",
    "event_path",
    "parse_retry_after",
    "write_request",
]

EVENTS_PATH = EVENTS.collection
JSON_CONTENT: Mapping[str, str] = MappingProxyType({"Content-Type": "application/json"})
#: Graph's documented limit of requests in one `$batch` (it answers 400 to more).
MAX_BATCH: Final = 20
#: The largest page a list asks for (`$top`): fewer requests, less of the read budget. Intune
#: serves autopilot events in pages of at most 50 whatever is asked; nothing relies on the size.
PAGE_SIZE: Final = 999
USER_AGENT = f"autopilot-batch/{__version__}"
_MESSAGE_LIMIT = 300  # characters of a non-JSON error body kept as the message
_CONNECT_TIMEOUT = 10.0
_REDACT_MIN = 8
_TAG = re.compile(r"<[^>]*>")
# Retry-After as seconds or a list of them (`30,120`); an HTTP-date has a comma too, hence the
# strict shape.
_SECONDS_LIST = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(?:,\s*[0-9]+(?:\.[0-9]+)?\s*)*$")
# The boilerplate Intune appends to its messages, and the ids in it.
_INTUNE_TAIL = re.compile(r"\s*-\s*Operation ID \(for customer support\):", re.IGNORECASE)
_ACTIVITY_ID = re.compile(r"Activity ID:\s*([0-9A-Za-z-]+)", re.IGNORECASE)
# A `"Message": "..."` field inside a document too damaged to parse (e.g. cut short).
_MESSAGE_FIELD = re.compile(r'"Message"\s*:\s*"((?:[^"\\]|\\.)*)"')
_SCOPES = re.compile(r"following scopes:\s*(.+?)\s*$", re.IGNORECASE | re.DOTALL)
_RIGHTS_TEXT = "not authorized to perform this operation"
_RIGHTS_CODES = frozenset({"forbidden", "authorization_requestdenied", "accessdenied"})
_NESTING_LIMIT = 3  # public reports show documents nested twice; more is not Intune
_WRITE_METHODS = frozenset({"PATCH", "POST", "PUT", "DELETE"})


@dataclass(frozen=True, slots=True)
class GraphResponse:
    """A successful answer: status, parsed body (None when empty), lower-case headers, ids."""

    status: int
    body: JSON
    headers: Mapping[str, str]
    request_id: str
    client_request_id: str


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """One request inside a `$batch`; `url` is relative to the version (see `event_path`)."""

    id: str
    method: str
    url: str
    body: Mapping[str, JSON] | None = None

    def wire(self) -> dict[str, JSON]:
        """The item as it goes into the envelope: a body brings its own Content-Type header."""
        item: dict[str, JSON] = {"id": self.id, "method": self.method.upper(), "url": self.url}
        if self.body is not None:
            item["headers"] = dict(JSON_CONTENT)
            item["body"] = dict(self.body)
        return item


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """The write of one entity: method, version-relative path, body and headers."""

    method: str
    path: str
    body: Mapping[str, JSON]
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class BatchItemResponse:
    """One item's answer inside a `$batch` response; status 0 when Graph left it out."""

    id: str
    status: int
    headers: Mapping[str, str]
    body: JSON

    def error(self) -> GraphError | None:
        """None for a 2xx; otherwise the item's error, with its ids and Retry-After."""
        if 200 <= self.status < 300:
            return None
        if self.status == 0:
            return GraphError(
                0,
                "MissingResponse",
                "the $batch response had no answer for this request",
                retry_after=self.retry_after,
            )
        return _error_from(self.status, self.body, _lower(self.headers), "")

    @property
    def retry_after(self) -> float | None:
        """The item's own Retry-After in seconds, if it carries a usable one."""
        headers = _lower(self.headers)
        return parse_retry_after(headers.get("retry-after"), date=headers.get("date"))


def event_path(event_id: str) -> str:
    """The version-relative path of one event, its id percent-encoded (`/` included).

    `.` and `..` survive percent-encoding and a URL normaliser would take them as path steps
    (`…/autopilotEvents/..` is `…/deviceManagement`): they are refused here too, whatever path
    the id came by (the mapper already makes such rows invalid; revert reads ids from a ledger).
    """
    return entity_path(EVENTS, event_id)


def entity_path(resource: Resource, entity_id: str) -> str:
    """The version-relative path of one entity of `resource`, its id percent-encoded.

    Ids that are empty or only dots are refused (ValueError), as `event_path` explains.
    """
    if not entity_id or entity_id.strip(".") == "":
        article = "an" if resource.noun[:1] in "aeiou" else "a"
        raise ValueError(f"{entity_id!r} is not {article} {resource.noun} id")
    return f"{resource.collection}/{quote(entity_id, safe='')}"


def write_request(resource: Resource, entity_id: str, body: Mapping[str, JSON]) -> WriteRequest:
    """The write of one entity as its description says: PATCH of the entity, or POST to an
    action of it (`…/{id}/updateDeviceProperties`). The body is sent as given."""
    path = entity_path(resource, entity_id)
    if resource.write.action:
        path = f"{path}/{resource.write.action}"
    return WriteRequest(resource.write.method, path, dict(body), JSON_CONTENT)


def batch_item(
    resource: Resource, item_id: str, entity_id: str, body: Mapping[str, JSON]
) -> BatchRequest:
    """The write of one entity as a `$batch` item with id `item_id` (see `write_request`)."""
    request = write_request(resource, entity_id, body)
    return BatchRequest(item_id, request.method, request.path, request.body)


def parse_retry_after(
    value: str | None, *, date: str | None = None, now: datetime | None = None
) -> float | None:
    """Seconds to wait from a Retry-After value; None when absent or unusable.

    Accepted: `2`, `2.128`, a list `30,120` (the first number; seen on Graph, msgraph-sdk-python
    #1159), or an HTTP-date (RFC 9110 §10.2.3). A date is counted from the answer's `Date`
    header (`date`) when that parses — both come from the server's clock, so a skewed local clock
    does not matter — else from `now` (default: the current time); a date already past is 0.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    listed = _SECONDS_LIST.match(text)
    if listed:
        seconds = float(listed.group(1))
        return seconds if math.isfinite(seconds) else None
    when = _http_date(text)
    if when is None:
        return None
    sent = _http_date(date) if date else None
    origin = sent or now or datetime.now(UTC)
    return max((when - origin).total_seconds(), 0.0)


def _http_date(text: str) -> datetime | None:
    """An RFC 9110 HTTP-date (IMF-fixdate or the obsolete forms) as an aware datetime."""
    try:
        when = email.utils.parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC without claiming a zone
        when = when.replace(tzinfo=UTC)
    return when


class GraphClient:
    """Async Graph client for the Autopilot endpoints, on one pooled `httpx.AsyncClient`.

    Use as `async with GraphClient(root, tokens) as client: ...`. A client passed as `http` is
    borrowed and left open; one created here (HTTP/2, pooled, honouring proxy and CA settings
    from the environment, never without TLS verification) is closed by `aclose()`.
    """

    def __init__(
        self,
        graph_root: str,
        tokens: TokenProvider,
        *,
        version: str = "beta",
        timeout: float = 60.0,
        http: httpx.AsyncClient | None = None,
        max_connections: int = 32,
    ) -> None:
        self._base = f"{graph_root.rstrip('/')}/{version.strip('/')}"
        self._tokens = tokens
        self._owns_http = http is None
        self._http = http if http is not None else _new_http(timeout, max_connections)

    @property
    def base_url(self) -> str:
        """`{graph_root}/{version}`, the prefix of every request."""
        return self._base

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owns_http:
            await self._http.aclose()

    async def ensure_token(self) -> None:
        """Have a valid access token at hand (signing in or renewing if needed); send nothing.

        Senders call this before they take write budget: a sign-in that takes a second must not
        sit between the moment the limiter counts a request and the moment it is sent, or Graph's
        window holds the request later than the limiter thinks and the next window gets 429s.
        Raises `AuthError` when no token can be had.
        """
        await self._tokens.token()

    async def patch_event(self, event_id: str, body: Mapping[str, JSON]) -> GraphResponse:
        """PATCH one event with a partial body; 200 and 204 are both success."""
        return await self._send("PATCH", self._base + event_path(event_id), body=body)

    async def get_event(
        self, event_id: str, *, select: Sequence[str] | None = None
    ) -> GraphResponse:
        """GET one event (optionally only the `select`ed properties)."""
        params = {"$select": ",".join(select)} if select else None
        return await self._send("GET", self._base + event_path(event_id), params=params)

    async def write(
        self, resource: Resource, entity_id: str, body: Mapping[str, JSON]
    ) -> GraphResponse:
        """Write one entity of `resource` (`write_request`); any 2xx is success."""
        request = write_request(resource, entity_id, body)
        return await self._send(request.method, self._base + request.path, body=request.body)

    async def get(
        self, resource: Resource, entity_id: str, *, select: Sequence[str] | None = None
    ) -> GraphResponse:
        """GET one entity of `resource`; `select` only where the resource allows `$select`."""
        params = {"$select": ",".join(select)} if select and resource.select_safe else None
        return await self._send("GET", self._base + entity_path(resource, entity_id), params=params)

    async def list_page(
        self,
        url: str | None = None,
        *,
        path: str | None = None,
        top: int = PAGE_SIZE,
        select: Sequence[str] | None = None,
        resource: Resource = EVENTS,
    ) -> tuple[list[dict[str, JSON]], str | None]:
        """One page of a collection (the resource's list by default): (items, next link or None).

        `url=None` asks for the first page of `path` (default: the resource's collection,
        relative to the version; `$top`, and `$select` where the resource allows it); otherwise
        `url` is the previous page's `@odata.nextLink`, followed as given. The caller paces the
        pages (`batch.listing.ListWalker`).
        """
        if url is None:
            first = {"$top": str(top)}
            if select and resource.select_safe:
                first["$select"] = ",".join(select)
            params: dict[str, str] | None = first
            path = path if path is not None else resource.collection
            target = self._base + path
        else:
            params = None
            target = self._checked_next_link(url)
        response = await self._send("GET", target, params=params)
        body = response.body
        values = body.get("value") if isinstance(body, dict) else None
        if not isinstance(values, list):
            raise GraphError(
                response.status,
                "InvalidResponse",
                f"the list answer of {path or resource.collection} has no 'value' array",
                request_id=response.request_id,
                client_request_id=response.client_request_id,
            )
        items = [item for item in values if isinstance(item, dict)]
        next_link = body.get("@odata.nextLink") if isinstance(body, dict) else None
        return items, next_link if isinstance(next_link, str) and next_link else None

    async def batch(
        self, requests: Sequence[BatchRequest]
    ) -> tuple[GraphResponse, dict[str, BatchItemResponse]]:
        """POST one `$batch` of 1 to 20 requests; answers keyed by request id.

        Graph answers items in any order, so they are matched by id. A request with no answer
        gets a synthetic status-0 item (so the caller re-sends it). The envelope's own non-2xx
        answer raises `GraphError` like any request.
        """
        if not 1 <= len(requests) <= MAX_BATCH:
            raise ValueError(f"a $batch holds 1 to {MAX_BATCH} requests, got {len(requests)}")
        folded = {r.id.casefold() for r in requests}
        if len(folded) != len(requests):
            raise ValueError("request ids in a $batch must be unique (case-insensitively)")
        for r in requests:
            # Either fault makes the real service refuse the whole batch (400 "Invalid batch
            # payload format."), failing every row in it: never send one.
            if "://" in r.url or r.url.startswith("//"):
                raise ValueError(f"$batch request {r.id}: the url must be version-relative")
            if r.method.upper() in _WRITE_METHODS and r.body is None:
                raise ValueError(f"$batch request {r.id}: a {r.method.upper()} needs a body")
        payload: list[JSON] = [r.wire() for r in requests]
        envelope = await self._send("POST", self._base + "/$batch", body={"requests": payload})
        answers = _batch_items(envelope.body)
        results: dict[str, BatchItemResponse] = {}
        for r in requests:
            found = answers.get(r.id) or answers.get(r.id.casefold())
            results[r.id] = found or BatchItemResponse(id=r.id, status=0, headers={}, body=None)
        return envelope, results

    # -- plumbing --------------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        url: str,
        *,
        body: Mapping[str, JSON] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> GraphResponse:
        content = None
        if body is not None:
            content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        for refreshed in (False, True):
            token = await self._tokens.token(force_refresh=refreshed)
            client_request_id = str(uuid.uuid4())
            headers = {
                "Authorization": f"Bearer {token}",
                "client-request-id": client_request_id,
                "return-client-request-id": "true",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            }
            if content is not None:
                headers["Content-Type"] = "application/json"
            try:
                answer = await self._http.request(
                    method, url, content=content, params=params, headers=headers
                )
            except httpx.TimeoutException as exc:
                raise GraphError(
                    0, "Timeout", _describe(exc, token), client_request_id=client_request_id
                ) from exc
            except httpx.RequestError as exc:
                raise GraphError(
                    0, "ConnectionError", _describe(exc, token), client_request_id=client_request_id
                ) from exc
            response = _response(answer, client_request_id)
            if 200 <= response.status < 300:
                return response
            error = _error_from(
                response.status, response.body, response.headers, client_request_id, token=token
            )
            if response.status != 401:
                raise error
            if error.permission_denied:
                # A missing permission: a fresh token carries the same rights. Stop here.
                raise PermissionDenied(error, error.permission or REQUIRED_PERMISSION)
            if refreshed:
                raise AuthError(
                    f"Graph rejected a freshly obtained access token ({error.code}: "
                    f"{error.message}; request-id {error.request_id or 'none'})"
                )
        raise AssertionError("unreachable: the second 401 raises AuthError")

    def _checked_next_link(self, url: str) -> str:
        """A nextLink must stay on our Graph host: the bearer token goes with it."""
        base = httpx.URL(self._base)
        link = base.join(url)
        if (link.scheme, link.host, link.port) != (base.scheme, base.host, base.port):
            raise RunAborted(
                f"Graph returned a next-page link to another host ({link.scheme}://{link.host});"
                " refusing to send the access token there"
            )
        return str(link)


def _new_http(timeout: float, max_connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        http2=True,
        timeout=httpx.Timeout(timeout, connect=_CONNECT_TIMEOUT),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        # trust_env (proxies, SSL_CERT_FILE) and verify=True are httpx defaults; kept on purpose.
        follow_redirects=False,
    )


def _response(answer: httpx.Response, client_request_id: str) -> GraphResponse:
    headers = {name.lower(): value for name, value in answer.headers.items()}
    return GraphResponse(
        status=answer.status_code,
        body=_parse_body(answer.content),
        headers=headers,
        request_id=headers.get("request-id", ""),
        client_request_id=headers.get("client-request-id", client_request_id),
    )


def _parse_body(content: bytes) -> JSON:
    """JSON when it parses; otherwise the text (e.g. an HTML error page); None when empty."""
    if not content.strip():
        return None
    text = content.decode("utf-8", errors="replace")
    try:
        parsed: JSON = json.loads(text)
    except ValueError:
        return text
    return parsed


def _batch_items(body: JSON) -> dict[str, BatchItemResponse]:
    """Items of a `$batch` answer keyed by id (and by case-folded id); malformed items skipped."""
    found: dict[str, BatchItemResponse] = {}
    responses = body.get("responses") if isinstance(body, dict) else None
    if not isinstance(responses, list):
        return found
    for raw in responses:
        if not isinstance(raw, dict) or raw.get("id") is None:
            continue
        status = raw.get("status")
        raw_headers = raw.get("headers")
        headers = (
            {str(k).lower(): str(v) for k, v in raw_headers.items()}
            if isinstance(raw_headers, dict)
            else {}
        )
        item = BatchItemResponse(
            id=str(raw["id"]),
            status=status if isinstance(status, int) and not isinstance(status, bool) else 0,
            headers=headers,
            body=raw.get("body"),
        )
        found.setdefault(item.id, item)
        found.setdefault(item.id.casefold(), item)
    return found


def _error_from(
    status: int,
    body: JSON,
    headers: Mapping[str, str],
    client_request_id: str,
    *,
    token: str = "",
) -> GraphError:
    """A `GraphError` from an error answer; tolerant of missing fields and non-JSON bodies."""
    code = f"HTTP{status}"
    read = _Message("")
    inner: dict[str, JSON] = {}
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        if isinstance(error.get("code"), str) and error["code"]:
            code = str(error["code"])
        if error.get("message") is not None:
            read = _read_message(str(error["message"]))
        for key, value in error.items():
            if key.casefold() == "innererror" and isinstance(value, dict):
                inner = {_fold(k): v for k, v in value.items()}
    elif isinstance(body, str):
        # Proxies and gateways answer with HTML pages: keep the words, drop the markup.
        read = _Message(" ".join(_TAG.sub(" ", body).split())[:_MESSAGE_LIMIT])
    message = read.text or httpx.codes.get_reason_phrase(status) or "no error message"
    denied = status == 401 and (
        read.inner_code.casefold() in _RIGHTS_CODES
        or code.casefold() in _RIGHTS_CODES
        or _RIGHTS_TEXT in message.casefold()
    )
    scopes = _SCOPES.search(message)
    return GraphError(
        status,
        code,
        _redact(message, token),
        request_id=headers.get("request-id") or _text(inner.get("requestid")) or read.activity_id,
        client_request_id=headers.get("client-request-id")
        or _text(inner.get("clientrequestid"))
        or client_request_id,
        retry_after=parse_retry_after(headers.get("retry-after"), date=headers.get("date")),
        permission_denied=denied,
        permission=scopes.group(1).rstrip(".") if scopes else "",
    )


@dataclass(frozen=True, slots=True)
class _Message:
    """What an `error.message` says: the human text, an inner error code, Intune's Activity ID."""

    text: str
    inner_code: str = ""
    activity_id: str = ""


def _read_message(raw: str) -> _Message:
    """The human text of an `error.message`, unwrapping Intune's JSON documents.

    Graph's own messages are plain text and come back as they are (stripped).
    """
    text = raw
    inner_code = ""
    for _ in range(_NESTING_LIMIT):
        candidate = text.strip()
        if not _looks_like_document(candidate):
            break
        try:
            document = json.loads(candidate)
        except ValueError:
            text = _salvage(candidate)
            break
        if not isinstance(document, dict):
            text = ""
            break
        wrapped = document.get("ErrorCode")
        if isinstance(wrapped, str) and not inner_code:
            inner_code = wrapped
        inner = document.get("Message", document.get("message"))
        text = inner if isinstance(inner, str) else ""
    else:
        if _looks_like_document(text.strip()):
            text = ""  # nested deeper than Intune nests: never show a document raw
    activity = _ACTIVITY_ID.search(text)
    cut = _INTUNE_TAIL.search(text)
    if cut:
        text = text[: cut.start()]
    return _Message(" ".join(text.split()), inner_code, activity.group(1) if activity else "")


def _looks_like_document(text: str) -> bool:
    """A JSON object, or what is left of one (`{` then a quoted key), not prose in braces."""
    return text.startswith("{") and ('":' in text or '" :' in text or text == "{}")


def _salvage(document: str) -> str:
    """The `Message` of a JSON document too damaged to parse, or "" (never the raw text)."""
    found = _MESSAGE_FIELD.search(document)
    if found is None:
        return ""
    try:
        text = json.loads(f'"{found.group(1)}"')
    except ValueError:
        return ""
    # The field may hold another (escaped) document: one more round of salvage.
    return _salvage(text) if _looks_like_document(str(text).strip()) else str(text)


def _fold(key: str) -> str:
    """`request-id`, `requestId`, `Request_ID` → `requestid`."""
    return re.sub(r"[-_]", "", key).casefold()


def _text(value: JSON) -> str:
    return value if isinstance(value, str) else ""


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _describe(exc: httpx.RequestError, token: str) -> str:
    detail = str(exc).strip()
    text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return _redact(text, token)


def _redact(text: str, token: str) -> str:
    """Never let the bearer token reach a message, a log or a report."""
    # Real tokens are long; a very short test token would blank out ordinary words.
    return text.replace(token, "***") if len(token) >= _REDACT_MIN else text
