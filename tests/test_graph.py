"""The Graph client over httpx.MockTransport: headers, success, errors, 401, $batch, paging."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import cast

import httpx
import pytest

from batch import __version__
from batch.auth import REQUIRED_PERMISSION
from batch.errors import AuthError, GraphError, PermissionDenied, RunAborted
from batch.graph import (
    BatchItemResponse,
    BatchRequest,
    GraphClient,
    event_path,
    parse_retry_after,
)
from batch.model import JSON

pytestmark = pytest.mark.anyio

ROOT = "https://graph.example.test"
BASE = f"{ROOT}/beta"
TOKEN = "eyJ0eXAiOiJKV1QiLCJub25jZSI6ImZha2UifQ.secret-token-value"

Handler = Callable[[httpx.Request], httpx.Response]


class Tokens:
    """A token provider that hands out a new token on every forced refresh."""

    def __init__(self) -> None:
        self.calls: list[bool] = []

    async def token(self, *, force_refresh: bool = False) -> str:
        self.calls.append(force_refresh)
        return f"{TOKEN}-{sum(self.calls)}"


@asynccontextmanager
async def graph(handler: Handler, tokens: Tokens | None = None) -> AsyncIterator[GraphClient]:
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http,
        GraphClient(ROOT, tokens or Tokens(), http=http) as client,
    ):
        yield client


def graph_error(code: str, message: str, **inner: str) -> dict[str, object]:
    error: dict[str, object] = {"code": code, "message": message}
    if inner:
        error["innerError"] = inner
    return {"error": error}


# -- requests and success ----------------------------------------------------------------------


async def test_patch_sends_headers_body_and_a_fresh_client_request_id() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204, headers={"request-id": "rid-1"})

    async with graph(handler) as client:
        first = await client.patch_event("abc", {"deviceSerialNumber": "007"})
        await client.patch_event("abc", {"deviceSerialNumber": "007"})

    request = seen[0]
    assert request.method == "PATCH"
    assert str(request.url) == f"{BASE}/deviceManagement/autopilotEvents/abc"
    assert request.headers["authorization"] == f"Bearer {TOKEN}-0"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept"] == "application/json"
    assert request.headers["return-client-request-id"] == "true"
    assert request.headers["user-agent"] == f"autopilot-batch/{__version__}"
    assert json.loads(request.content) == {"deviceSerialNumber": "007"}
    ids = [r.headers["client-request-id"] for r in seen]
    assert all(uuid.UUID(i).version == 4 for i in ids)
    assert ids[0] != ids[1]
    assert first.status == 204
    assert first.body is None
    assert first.request_id == "rid-1"
    assert first.client_request_id == ids[0]  # not echoed: the one we sent


async def test_200_with_the_updated_object_is_success() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json={"id": "abc", "osVersion": "10"},
            headers={"Request-Id": "rid-2", "client-request-id": "echoed"},
        )

    async with graph(handler) as client:
        response = await client.patch_event("abc", {"osVersion": "10"})
    assert response.status == 200
    assert response.body == {"id": "abc", "osVersion": "10"}
    assert response.headers["request-id"] == "rid-2"  # lower-case names
    assert response.request_id == "rid-2"
    assert response.client_request_id == "echoed"


async def test_get_event_with_select_and_quoted_id() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "a/b c"})

    async with graph(handler) as client:
        response = await client.get_event("a/b c", select=["id", "osVersion"])
    request = seen[0]
    assert request.method == "GET"
    assert request.url.raw_path.startswith(b"/beta/deviceManagement/autopilotEvents/a%2Fb%20c?")
    assert request.url.params["$select"] == "id,osVersion"
    assert "content-type" not in request.headers
    assert response.body == {"id": "a/b c"}


def test_event_path_quotes_everything() -> None:
    assert event_path("3e45-77") == "/deviceManagement/autopilotEvents/3e45-77"
    assert event_path("a/b?c#d") == "/deviceManagement/autopilotEvents/a%2Fb%3Fc%23d"


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        pytest.param(
            400,
            graph_error("BadRequest", "Invalid enum", **{"request-id": "r-in", "date": "x"}),
            {},
            ("BadRequest", "Invalid enum", "r-in"),
            id="inner-error",
        ),
        pytest.param(
            404,
            {
                "error": {
                    "code": "ResourceNotFound",
                    "message": "gone",
                    "InnerError": {"Request-Id": "r2"},
                }
            },
            {},
            ("ResourceNotFound", "gone", "r2"),
            id="inner-error-other-case",
        ),
        pytest.param(
            403,
            graph_error("Forbidden", "no permission"),
            {"request-id": "r-head"},
            ("Forbidden", "no permission", "r-head"),
            id="no-inner-error",
        ),
        pytest.param(
            502,
            "<html><body>\n  Bad   gateway " + "x" * 1000 + "</body></html>",
            {},
            ("HTTP502", "Bad gateway " + "x" * 288, ""),
            id="html-body",
        ),
        pytest.param(500, "", {}, ("HTTP500", "Internal Server Error", ""), id="empty-body"),
        pytest.param(
            409, {"error": "flat"}, {}, ("HTTP409", "Conflict", ""), id="error-not-an-object"
        ),
    ],
)
async def test_error_bodies_become_graph_errors(
    status: int, body: object, headers: dict[str, str], expected: tuple[str, str, str]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    async with graph(handler) as client:
        with pytest.raises(GraphError) as caught:
            await client.patch_event("abc", {"osVersion": "1"})
    error = caught.value
    assert (error.status, error.code, error.message, error.request_id) == (status, *expected)
    assert uuid.UUID(error.client_request_id)
    assert error.retry_after is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param("7", 7.0, id="int"),
        pytest.param("2.128", 2.128, id="decimal"),
        pytest.param(None, None, id="missing"),
    ],
)
async def test_retry_after_of_errors(header: str | None, expected: float | None) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"Retry-After": header} if header is not None else {}
        return httpx.Response(
            429, json=graph_error("TooManyRequests", "slow down"), headers=headers
        )

    async with graph(handler) as client:
        with pytest.raises(GraphError) as caught:
            await client.patch_event("abc", {"osVersion": "1"})
    assert caught.value.status == 429
    assert caught.value.transient
    assert caught.value.retry_after == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2.0),
        ("2.128", 2.128),
        (" 3 ", 3.0),
        ("0", 0.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("-1", None),
        ("nan", None),
        ("inf", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: no wait left
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date_in_the_future() -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    seconds = parse_retry_after(format_datetime(when, usegmt=True))
    assert seconds is not None
    assert 25 <= seconds <= 31


async def test_the_token_never_reaches_a_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        echoed = request.headers["authorization"]
        return httpx.Response(400, json=graph_error("BadRequest", f"bad header {echoed}"))

    async with graph(handler) as client:
        with pytest.raises(GraphError) as caught:
            await client.patch_event("abc", {"osVersion": "1"})
    assert TOKEN not in caught.value.message
    assert "***" in caught.value.message


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        pytest.param(httpx.ConnectError("connection refused"), "ConnectionError", id="connect"),
        pytest.param(httpx.ReadError("reset by peer"), "ConnectionError", id="read"),
        pytest.param(httpx.WriteError("broken pipe"), "ConnectionError", id="write"),
        pytest.param(
            httpx.RemoteProtocolError("server disconnected"), "ConnectionError", id="protocol"
        ),
        pytest.param(httpx.ReadTimeout("timed out"), "Timeout", id="read-timeout"),
        pytest.param(httpx.ConnectTimeout(""), "Timeout", id="connect-timeout-no-text"),
    ],
)
async def test_transport_errors_are_status_0(exc: httpx.TransportError, code: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    async with graph(handler) as client:
        with pytest.raises(GraphError) as caught:
            await client.patch_event("abc", {"osVersion": "1"})
    error = caught.value
    assert (error.status, error.code) == (0, code)
    assert error.transient
    assert type(exc).__name__ in error.message
    assert TOKEN not in error.message
    assert uuid.UUID(error.client_request_id)


# -- 401 ---------------------------------------------------------------------------------------


async def test_401_refreshes_the_token_once_and_resends() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            return httpx.Response(401, json=graph_error("InvalidAuthenticationToken", "expired"))
        return httpx.Response(204)

    tokens = Tokens()
    async with graph(handler, tokens) as client:
        response = await client.patch_event("abc", {"osVersion": "1"})
    assert response.status == 204
    assert tokens.calls == [False, True]
    assert [r.headers["authorization"] for r in seen] == [
        f"Bearer {TOKEN}-0",
        f"Bearer {TOKEN}-1",
    ]
    assert seen[0].headers["client-request-id"] != seen[1].headers["client-request-id"]
    assert seen[0].content == seen[1].content


async def test_401_twice_is_an_auth_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            401,
            json=graph_error("InvalidAuthenticationToken", "Access token validation failure."),
            headers={"request-id": "r401"},
        )

    tokens = Tokens()
    async with graph(handler, tokens) as client:
        with pytest.raises(AuthError) as caught:
            await client.get_event("abc")
    assert tokens.calls == [False, True]
    message = str(caught.value)
    assert "InvalidAuthenticationToken" in message and "r401" in message
    assert TOKEN not in message
    assert caught.value.exit_code == 3


# -- $batch ------------------------------------------------------------------------------------


def batch_handler(
    answer: Callable[[list[dict[str, object]]], httpx.Response], seen: list[httpx.Request]
) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer(json.loads(request.content)["requests"])

    return handler


async def test_batch_request_shape() -> None:
    seen: list[httpx.Request] = []

    def answer(requests: list[dict[str, object]]) -> httpx.Response:
        return httpx.Response(
            200, json={"responses": [{"id": r["id"], "status": 204} for r in requests]}
        )

    requests = [
        BatchRequest("1", "patch", event_path("e/1"), {"osVersion": "10"}),
        BatchRequest("2", "GET", event_path("e2")),
    ]
    async with graph(batch_handler(answer, seen)) as client:
        envelope, items = await client.batch(requests)

    request = seen[0]
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/$batch"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "requests": [
            {
                "id": "1",
                "method": "PATCH",
                "url": "/deviceManagement/autopilotEvents/e%2F1",
                "headers": {"Content-Type": "application/json"},
                "body": {"osVersion": "10"},
            },
            {"id": "2", "method": "GET", "url": "/deviceManagement/autopilotEvents/e2"},
        ]
    }
    assert envelope.status == 200
    assert {k: v.status for k, v in items.items()} == {"1": 204, "2": 204}


async def test_batch_answers_in_any_order_are_matched_by_id_and_missing_ones_flagged() -> None:
    seen: list[httpx.Request] = []

    def answer(requests: list[dict[str, object]]) -> httpx.Response:
        return httpx.Response(
            200,
            headers={"request-id": "env"},
            json={
                "responses": [
                    {
                        "id": "3",
                        "status": 429,
                        "headers": {"Retry-After": "2.5"},
                        "body": graph_error("TooManyRequests", "throttled"),
                    },
                    {
                        "id": "1",
                        "status": 400,
                        "headers": {"Request-Id": "r1", "client-request-id": "c1"},
                        "body": graph_error("BadRequest", "bad enum"),
                    },
                    {"id": "2", "status": 200, "body": {"id": "e2"}},
                    {"id": "99", "status": 204},  # not ours: ignored
                    "garbage",
                ]
            },
        )

    requests = [BatchRequest(str(i), "PATCH", event_path(f"e{i}"), {"x": i}) for i in range(1, 5)]
    async with graph(batch_handler(answer, seen)) as client:
        envelope, items = await client.batch(requests)

    assert envelope.request_id == "env"
    assert list(items) == ["1", "2", "3", "4"]
    assert items["2"].status == 200 and items["2"].error() is None
    assert items["2"].body == {"id": "e2"}

    bad = items["1"].error()
    assert bad is not None
    assert (bad.status, bad.code, bad.message) == (400, "BadRequest", "bad enum")
    assert (bad.request_id, bad.client_request_id) == ("r1", "c1")
    assert not bad.transient

    throttled = items["3"]
    assert throttled.retry_after == 2.5
    assert throttled.headers["retry-after"] == "2.5"
    error = throttled.error()
    assert error is not None and error.status == 429 and error.retry_after == 2.5

    missing = items["4"]
    assert missing.status == 0
    error = missing.error()
    assert error is not None
    assert (error.status, error.code) == (0, "MissingResponse")
    assert error.transient


async def test_batch_ids_are_matched_case_insensitively() -> None:
    def answer(requests: list[dict[str, object]]) -> httpx.Response:
        return httpx.Response(200, json={"responses": [{"id": "ab", "status": 204}]})

    async with graph(batch_handler(answer, [])) as client:
        _, items = await client.batch([BatchRequest("AB", "PATCH", event_path("e"), {})])
    assert items["AB"].status == 204


async def test_a_malformed_batch_answer_leaves_every_item_to_resend() -> None:
    def answer(requests: list[dict[str, object]]) -> httpx.Response:
        return httpx.Response(200, text="not json")

    async with graph(batch_handler(answer, [])) as client:
        _, items = await client.batch([BatchRequest("1", "PATCH", event_path("e"), {"a": 1})])
    assert items["1"].status == 0


@pytest.mark.parametrize(
    ("status", "headers", "code", "retry_after"),
    [
        pytest.param(400, {}, "BadRequest", None, id="malformed-400"),
        pytest.param(503, {"Retry-After": "4"}, "ServiceUnavailable", 4.0, id="unavailable-503"),
        pytest.param(429, {"Retry-After": "1.5"}, "TooManyRequests", 1.5, id="throttled-429"),
    ],
)
async def test_batch_envelope_errors_raise(
    status: int, headers: dict[str, str], code: str, retry_after: float | None
) -> None:
    def answer(requests: list[dict[str, object]]) -> httpx.Response:
        return httpx.Response(status, json=graph_error(code, "envelope"), headers=headers)

    async with graph(batch_handler(answer, [])) as client:
        with pytest.raises(GraphError) as caught:
            await client.batch([BatchRequest("1", "PATCH", event_path("e"), {"a": 1})])
    assert (caught.value.status, caught.value.code) == (status, code)
    assert caught.value.retry_after == retry_after


@pytest.mark.parametrize(
    "requests",
    [
        pytest.param([], id="empty"),
        pytest.param(
            [BatchRequest(str(i), "GET", event_path("e")) for i in range(21)], id="too-many"
        ),
        pytest.param(
            [BatchRequest("a", "GET", event_path("e")), BatchRequest("A", "GET", event_path("f"))],
            id="duplicate-ids",
        ),
        pytest.param(
            [BatchRequest("1", "GET", f"{BASE}{event_path('e')}")],
            id="absolute-url",
        ),
        pytest.param([BatchRequest("1", "GET", "//graph.example.test/x")], id="network-path"),
        pytest.param([BatchRequest("1", "PATCH", event_path("e"))], id="write-without-body"),
    ],
)
async def test_bad_batches_are_refused_before_sending(requests: list[BatchRequest]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing may be sent")

    async with graph(handler) as client:
        with pytest.raises(ValueError):
            await client.batch(requests)


def test_batch_item_response_headers_any_case() -> None:
    item = BatchItemResponse("1", 503, {"RETRY-AFTER": "3"}, None)
    assert item.retry_after == 3.0
    error = item.error()
    assert error is not None and error.retry_after == 3.0 and error.code == "HTTP503"
    assert BatchItemResponse("1", 204, {}, None).error() is None


# -- listing -----------------------------------------------------------------------------------


async def test_list_pages_follow_the_next_link() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if "$skiptoken" not in request.url.params:
            return httpx.Response(
                200,
                json={
                    "value": [{"id": "1"}, {"id": "2"}],
                    "@odata.nextLink": f"{BASE}/deviceManagement/autopilotEvents?$skiptoken=X2",
                },
            )
        return httpx.Response(200, json={"value": [{"id": "3"}, "junk"]})

    async with graph(handler) as client:
        items, link = await client.list_page(top=2, select=["id", "deviceSerialNumber"])
        assert [i["id"] for i in items] == ["1", "2"]
        assert link is not None
        items, link = await client.list_page(link)
        assert [i["id"] for i in items] == ["3"]
        assert link is None

    first, second = seen
    assert first.url.path == "/beta/deviceManagement/autopilotEvents"
    assert first.url.params["$top"] == "2"
    assert first.url.params["$select"] == "id,deviceSerialNumber"
    assert second.url.params["$skiptoken"] == "X2"
    assert "$top" not in second.url.params  # the link is followed as given
    assert second.headers["authorization"].startswith("Bearer ")


async def test_list_default_page_size() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"value": []})

    async with graph(handler) as client:
        assert await client.list_page() == ([], None)
    assert seen[0].url.params["$top"] == "999"
    assert "$select" not in seen[0].url.params


async def test_a_next_link_to_another_host_is_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("the token must not leave for another host")

    async with graph(handler) as client:
        with pytest.raises(RunAborted):
            await client.list_page("https://evil.example/beta/deviceManagement/autopilotEvents")


async def test_a_list_answer_without_value_is_an_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"items": []})

    async with graph(handler) as client:
        with pytest.raises(GraphError) as caught:
            await client.list_page()
    assert caught.value.code == "InvalidResponse"


# -- lifecycle ---------------------------------------------------------------------------------


async def test_a_borrowed_http_client_stays_open() -> None:
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(lambda r: httpx.Response(204))
    ) as http:
        async with GraphClient(ROOT + "/", Tokens(), http=http, version="/v1.0/") as client:
            assert client.base_url == f"{ROOT}/v1.0"
        assert not http.is_closed


async def test_an_own_http_client_is_closed() -> None:
    client = GraphClient(ROOT, Tokens(), timeout=5.0, max_connections=4)
    async with client:
        pass
    assert client._http.is_closed


# -- Intune's answers (issue 13) ---------------------------------------------------------------

ACTIVITY = "63425837-1eb9-456b-ac28-6ee81d0627f5"
INTUNE_URL = (
    "https://fef.msub06.manage.microsoft.com/DeviceFE/StatelessDeviceFEService/"
    "deviceManagement/autopilotEvents('x')?api-version=2018-05-24"
)


def intune_document(text: str, *, activity: str = ACTIVITY) -> str:
    """Intune's `error.message` document, CRLF-indented as the service writes it."""
    document = {
        "_version": 3,
        "Message": f"{text} - Operation ID (for customer support): "
        f"00000000-0000-0000-0000-000000000000 - Activity ID: {activity} - Url: {INTUNE_URL}",
        "CustomApiErrorPhrase": "",
        "RetryAfter": None,
        "ErrorSourceService": "",
        "HttpHeaders": "{}",
    }
    return json.dumps(document, indent=2).replace("\n", "\r\n")


MODEL_MESSAGE = (
    "The property 'targetedAppCount' does not exist on type "
    "'microsoft.management.services.api.deviceManagementAutopilotEvent'."
)


def rights_401_message() -> str:
    """The 401 message of msgraph-sdk-powershell#1257: a document wrapping a document."""
    wrapper: dict[str, object] = {
        "ErrorCode": "Forbidden",
        "Message": intune_document("An error has occurred"),
        "Target": None,
        "Details": None,
        "InnerError": None,
        "InstanceAnnotations": [],
    }
    return json.dumps(wrapper, separators=(",", ":"))


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        pytest.param(
            404,
            graph_error(
                "ResourceNotFound",
                intune_document("An error has occurred"),
                **{"request-id": "r-404", "date": "2026-01-01T00:00:00"},
            ),
            {},
            ("ResourceNotFound", "An error has occurred", "r-404"),
            id="intune-404",
        ),
        pytest.param(
            400,
            graph_error(
                "BadRequest", intune_document("Invalid Device Identifier parameter found!")
            ),
            {},
            ("BadRequest", "Invalid Device Identifier parameter found!", ACTIVITY),
            id="activity-id-stands-in-for-request-id",
        ),
        pytest.param(
            400,
            graph_error("BadRequest", intune_document("Bad value")),
            {"request-id": "r-head"},
            ("BadRequest", "Bad value", "r-head"),
            id="graph-request-id-wins",
        ),
        pytest.param(
            400,
            {
                "error": {
                    "code": "ModelValidationFailure",
                    "message": MODEL_MESSAGE,
                    "innerError": {"message": MODEL_MESSAGE, "request-id": "r-m"},
                }
            },
            {},
            ("ModelValidationFailure", MODEL_MESSAGE, "r-m"),
            id="model-validation-plain",
        ),
        pytest.param(
            400,
            graph_error("BadRequest", intune_document("Cut short")[:120]),
            {},
            ("BadRequest", "Bad Request", ""),
            id="document-cut-before-its-message-ends",
        ),
        pytest.param(
            400,
            graph_error("BadRequest", '{"_version": 3, "Message": "Half a message - Operation'),
            {},
            ("BadRequest", "Bad Request", ""),
            id="document-cut-inside-its-message",
        ),
        pytest.param(
            400,
            graph_error(
                "BadRequest",
                '{"_version": 3, "Message": "Readable - Operation ID'
                ' (for customer support): 0 - Activity ID: a-1 - Url: u", "RetryAfter": nul',
            ),
            {},
            ("BadRequest", "Readable", "a-1"),
            id="damaged-document-salvaged",
        ),
        pytest.param(
            400,
            graph_error("BadRequest", "{id} is not a GUID"),
            {},
            ("BadRequest", "{id} is not a GUID", ""),
            id="prose-in-braces-stays",
        ),
        pytest.param(
            500,
            graph_error("UnknownError", "[1, 2]"),
            {},
            ("UnknownError", "[1, 2]", ""),
            id="not-an-object",
        ),
    ],
)
async def test_intune_error_documents_become_their_human_text(
    status: int, body: object, headers: dict[str, str], expected: tuple[str, str, str]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers=headers)

    async with graph(handler) as client:
        with pytest.raises(GraphError) as caught:
            await client.patch_event("abc", {"osVersion": "1"})
    error = caught.value
    assert (error.code, error.message, error.request_id) == expected
    for boilerplate in ("_version", "Operation ID", "Activity ID", "Url:", "\r"):
        assert boilerplate not in error.message
    assert not error.permission_denied


async def test_a_401_for_rights_aborts_without_refreshing_the_token() -> None:
    tokens = Tokens()
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        body = graph_error("UnknownError", rights_401_message(), **{"request-id": "r-401"})
        return httpx.Response(401, json=body)

    async with graph(handler, tokens) as client:
        with pytest.raises(PermissionDenied) as caught:
            await client.patch_event("abc", {"osVersion": "1"})
    assert len(sent) == 1 and tokens.calls == [False]  # no refresh, no resend
    denied = caught.value
    assert isinstance(denied, AuthError) and denied.exit_code == 3
    assert denied.permission == REQUIRED_PERMISSION
    assert denied.error.permission_denied
    assert (denied.error.status, denied.error.code) == (401, "UnknownError")
    assert denied.error.message == "An error has occurred"
    text = str(denied)
    assert REQUIRED_PERMISSION in text and "r-401" in text and "not a token problem" in text
    assert "_version" not in text


async def test_a_401_naming_the_scopes_names_them() -> None:
    message = intune_document(
        "Application is not authorized to perform this operation. Application must have one "
        "of the following scopes: DeviceManagementManagedDevices.ReadWrite.All"
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json=graph_error("Forbidden", message))

    async with graph(handler) as client:
        with pytest.raises(PermissionDenied) as caught:
            await client.get_event("abc")
    assert caught.value.permission == "DeviceManagementManagedDevices.ReadWrite.All"
    assert caught.value.error.request_id == ACTIVITY


async def test_a_token_401_still_refreshes() -> None:
    tokens = Tokens()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers["authorization"].endswith("-0"):
            body = graph_error("InvalidAuthenticationToken", "Lifetime validation failed.")
            return httpx.Response(401, json=body)
        return httpx.Response(204)

    async with graph(handler, tokens) as client:
        response = await client.patch_event("abc", {"osVersion": "1"})
    assert response.status == 204
    assert tokens.calls == [False, True]


def test_a_batch_item_401_for_rights_is_flagged() -> None:
    item = BatchItemResponse(
        id="1",
        status=401,
        headers={},
        body=cast(JSON, graph_error("UnknownError", rights_401_message())),
    )
    error = item.error()
    assert error is not None and error.permission_denied
    assert error.message == "An error has occurred"
    assert error.request_id == ACTIVITY
    token_problem = BatchItemResponse(
        id="2",
        status=401,
        headers={},
        body=cast(JSON, graph_error("InvalidAuthenticationToken", "expired")),
    )
    flagged = token_problem.error()
    assert flagged is not None and not flagged.permission_denied


ANSWER_DATE = "Wed, 21 Oct 2026 07:28:00 GMT"


@pytest.mark.parametrize(
    ("value", "date", "expected"),
    [
        pytest.param("30,120", None, 30.0, id="list-first-number"),
        pytest.param(" 2.128 , 5", None, 2.128, id="decimal-list"),
        pytest.param("30,", None, None, id="list-cut-short"),
        pytest.param("Wed, 21 Oct 2026 07:28:30 GMT", ANSWER_DATE, 30.0, id="imf-fixdate"),
        pytest.param("Wednesday, 21-Oct-26 07:28:45 GMT", ANSWER_DATE, 45.0, id="rfc850"),
        pytest.param("Wed Oct 21 07:29:00 2026", ANSWER_DATE, 60.0, id="asctime"),
        pytest.param("Wed, 21 Oct 2026 07:27:00 GMT", ANSWER_DATE, 0.0, id="date-already-past"),
    ],
)
def test_parse_retry_after_lists_and_dates(
    value: str, date: str | None, expected: float | None
) -> None:
    assert parse_retry_after(value, date=date) == expected


def test_parse_retry_after_date_without_answer_date_counts_from_now() -> None:
    now = datetime(2026, 10, 21, 7, 28, tzinfo=UTC)
    assert parse_retry_after("Wed, 21 Oct 2026 07:28:12 GMT", now=now) == 12.0
    # An unreadable Date header falls back to now as well.
    assert parse_retry_after("Wed, 21 Oct 2026 07:28:12 GMT", date="garbage", now=now) == 12.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param("30,120", 30.0, id="list"),
        pytest.param("Wed, 21 Oct 2026 07:28:09 GMT", 9.0, id="http-date"),
    ],
)
async def test_retry_after_forms_of_errors_and_batch_items(header: str, expected: float) -> None:
    headers = {"Retry-After": header, "Date": ANSWER_DATE}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json=graph_error("TooManyRequests", "slow"), headers=headers)

    async with graph(handler) as client:
        with pytest.raises(GraphError) as caught:
            await client.patch_event("abc", {"osVersion": "1"})
    assert caught.value.retry_after == expected
    item = BatchItemResponse(id="1", status=429, headers=headers, body=None)
    assert item.retry_after == expected


@pytest.mark.parametrize("bad", [".", "..", "...", ""])
def test_event_path_refuses_path_steps(bad: str) -> None:
    from batch.graph import event_path

    with pytest.raises(ValueError, match="not an event id"):
        event_path(bad)
    assert event_path("a/b").endswith("/autopilotEvents/a%2Fb")
