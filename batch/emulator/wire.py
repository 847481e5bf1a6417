"""Graph's wire conventions for the emulator: error bodies, PATCH checks, OData query options.

Pure functions; the HTTP layer (`graph_api`, `app`) turns their verdicts into responses.
Shapes follow GRAPH.md ("Errors and request ids", "The resource", "How Intune really answers").

Error styles. Every refusal is an `ODataError` that says which layer refuses it (`source`),
because the real service answers differently per layer:

* "graph": Graph's own front door (unknown segment, bad query option, malformed `$batch`, bad
  token). Always Graph's plain body: `{"error": {"code", "message", "innerError": {"date",
  "request-id", "client-request-id"}}}`.
* "model": Intune's OData model validation of a body (unknown property, bad value, bad type).
  Intune style: code `ModelValidationFailure`, a *plain* message repeated in
  `innerError.message`, the type named in Intune's namespace — as public reports show it
  (Intune-PowerShell-SDK#98, OpenIntuneBaseline#207, Win32App-Migration-Tool#23).
* "intune": Intune's services (not found, rights, their 429s). Intune style: `error.message` is
  a JSON *document* (CRLF-indented, `_version` 3) whose `Message` ends in " - Operation ID (for
  customer support): 00000000-… - Activity ID: <client-request-id> - Url: https://fef…" with the
  text "An error has occurred" for not-found and throttling (IntuneDocumentation#39,
  IntuneCD#217, microsoft-graph-docs-contrib#4603/#4157), and `innerError` without
  `client-request-id` when the client sent none.

With `style="graph"` (the friendly default) every layer answers Graph's plain body.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
import uuid
from collections.abc import Mapping
from typing import Final, Literal

from batch.model import JSON
from batch.resources import DEVICES
from batch.schema import PROPERTIES, EdmType, check_wire

__all__ = [
    "AUTOPILOT_TYPE",
    "GRAPH_CONTENT_TYPE",
    "MAX_TOP",
    "ODataError",
    "check_patch_body",
    "dump_json",
    "error_body",
    "intune_document",
    "known_property",
    "parse_filter",
    "parse_select",
    "parse_skiptoken",
    "parse_top",
    "permission_denied_body",
    "render_error",
    "shape_event",
    "skiptoken",
]

Source = Literal["graph", "model", "intune"]

AUTOPILOT_TYPE: Final = "#microsoft.graph.deviceManagementAutopilotEvent"
# What Graph sends for JSON bodies; clients must not insist on a bare `application/json`.
GRAPH_CONTENT_TYPE: Final = (
    "application/json;odata.metadata=minimal;odata.streaming=true;"
    "IEEE754Compatible=false;charset=utf-8"
)
MAX_TOP: Final = 999


# Intune's Operation ID is all zeros in every public report; the Url is illustrative (the real
# host names a scale unit, e.g. fef.msub06, and the path a service and its api-version).
_OPERATION_ID: Final = "00000000-0000-0000-0000-000000000000"
_FEF_ROOT: Final = "https://fef.msua06.manage.microsoft.com/DeviceFE/StatelessDeviceFEService"
_FEF_API_VERSION: Final = "5025-11-03"
GENERIC_INTUNE_MESSAGE: Final = "An error has occurred"


class ODataError(Exception):
    """A request Graph would refuse: HTTP status, Graph error code, message, refusing layer.

    `source` says which layer refuses (see the module docstring); `intune_message`, when set,
    is the text Intune's style uses instead of `message` (Intune words some errors its own way).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        source: Source = "graph",
        intune_message: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.source = source
        self.intune_message = intune_message
        super().__init__(f"{status} {code}: {message}")


def dump_json(value: object) -> bytes:
    """Compact UTF-8 JSON, as Graph sends it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def utc_now_text() -> str:
    """The `innerError.date` format Graph uses (UTC, no fraction)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def error_body(
    code: str,
    message: str,
    *,
    request_id: str,
    client_request_id: str | None,
    status: int | None = None,
) -> dict[str, JSON]:
    """Graph's error body: {"error": {"code", "message", "innerError": {...}}}."""
    inner: dict[str, JSON] = {"date": utc_now_text(), "request-id": request_id}
    inner["client-request-id"] = client_request_id or request_id
    if status == 429:
        # Throttling errors carry the status in innerError as well (GRAPH.md, "Throttling").
        inner["code"] = "429"
        inner["status"] = "429"
    return {"error": {"code": code, "message": message, "innerError": inner}}


def intune_document(text: str, *, activity_id: str, path: str, http_headers: str = "{}") -> str:
    """The JSON document Intune puts in `error.message` (CRLF-indented, as .NET writes it)."""
    url = f"{_FEF_ROOT}{path}?api-version={_FEF_API_VERSION}"
    document = {
        "_version": 3,
        "Message": f"{text} - Operation ID (for customer support): {_OPERATION_ID} - "
        f"Activity ID: {activity_id} - Url: {url}",
        "CustomApiErrorPhrase": "",
        "RetryAfter": None,
        "ErrorSourceService": "",
        "HttpHeaders": http_headers,
    }
    return json.dumps(document, indent=2).replace("\n", "\r\n")


def _intune_inner(request_id: str, client_request_id: str | None) -> dict[str, JSON]:
    inner: dict[str, JSON] = {"date": utc_now_text(), "request-id": request_id}
    if client_request_id:  # Intune leaves it out when the client sent none
        inner["client-request-id"] = client_request_id
    return inner


def render_error(
    error: ODataError,
    *,
    style: str,
    request_id: str,
    client_request_id: str | None,
    path: str,
) -> dict[str, JSON]:
    """The body of `error` in `style` ("graph" or "intune"); `path` names the Graph resource."""
    if style != "intune" or error.source == "graph":
        return error_body(
            error.code,
            error.message,
            request_id=request_id,
            client_request_id=client_request_id,
            status=error.status,
        )
    text = error.intune_message or error.message
    inner = _intune_inner(request_id, client_request_id)
    if error.source == "model":
        inner["message"] = text
        return {"error": {"code": "ModelValidationFailure", "message": text, "innerError": inner}}
    # Intune's Activity ID is the client-request-id (or the request-id when none was sent).
    activity = client_request_id or request_id
    document = intune_document(text, activity_id=activity, path=path)
    return {"error": {"code": error.code, "message": document, "innerError": inner}}


def permission_denied_body(
    *, request_id: str, client_request_id: str | None, path: str
) -> dict[str, JSON]:
    """Intune's 401 for an app that lacks the permission (not a token problem).

    Based on the bodies quoted in msgraph-sdk-powershell#1257 (GET windowsAutopilotDeviceIdentities,
    2022) and microsoft-authentication-library-for-js#7007 (GET managedDevices, 2024): code
    `UnknownError`, and a message that is a JSON object `{"ErrorCode": "Forbidden", "Message":
    <Intune's _version-3 document, text "An error has occurred">, "Target": null, "Details": null,
    "InnerError": null, "InstanceAnnotations": []}` — two documents deep, the inner one's
    `HttpHeaders` naming a `WWW-Authenticate: Bearer realm="urn:intune:service,…"`. It never
    names the permission; only the status and the inner `Forbidden` tell it from a bad token.
    """
    realm = f"urn:intune:service,{uuid.uuid4()},{uuid.uuid4()}"
    http_headers = json.dumps({"WWW-Authenticate": f'Bearer realm="{realm}"'})
    inner_document = intune_document(
        GENERIC_INTUNE_MESSAGE,
        activity_id=client_request_id or request_id,
        path=path,
        http_headers=http_headers,
    )
    wrapper: dict[str, JSON] = {
        "ErrorCode": "Forbidden",
        "Message": inner_document,
        "Target": None,
        "Details": None,
        "InnerError": None,
        "InstanceAnnotations": [],
    }
    message = json.dumps(wrapper, separators=(",", ":"))
    inner = _intune_inner(request_id, client_request_id)
    return {"error": {"code": "UnknownError", "message": message, "innerError": inner}}


def known_property(name: str, schema: str) -> bool:
    """Whether `name` exists on the resource under this schema ("legacy" or "current")."""
    prop = PROPERTIES.get(name)
    return prop is not None and not (prop.legacy and schema == "current")


def _unknown(name: str) -> ODataError:
    return ODataError(
        400,
        "BadRequest",
        f"The property '{name}' does not exist on type "
        "'microsoft.graph.deviceManagementAutopilotEvent'. Make sure to only use property names "
        "that are defined by the type or mark the type as open type.",
        source="model",
        # Intune-PowerShell-SDK#98: Intune names the type in its own namespace.
        intune_message=f"The property '{name}' does not exist on type "
        "'microsoft.management.services.api.deviceManagementAutopilotEvent'. Make sure to only "
        "use property names that are defined by the type.",
    )


def _model(message: str) -> ODataError:
    """A body Intune's model validation refuses (ModelValidationFailure in Intune's style)."""
    return ODataError(400, "BadRequest", message, source="model")


def check_patch_body(body: object, schema: str) -> dict[str, JSON]:
    """The properties to apply, or `ODataError` for the first thing Graph would reject."""
    if not isinstance(body, dict):
        raise _model("The request body must be a JSON object (a partial update).")
    changes: dict[str, JSON] = {}
    for name, value in body.items():
        if name == "@odata.type":
            if value not in (AUTOPILOT_TYPE, AUTOPILOT_TYPE[1:]):
                raise _model(f"A type named '{value}' could not be resolved by the model.")
            continue
        if name == "id":
            raise _model(
                "The key property 'id' cannot be changed; the id goes in the URL, not the body."
            )
        if not known_property(name, schema):
            raise _unknown(name)
        reason = check_wire(PROPERTIES[name], value)
        if reason:
            raise _model(reason)
        changes[name] = value
    return changes


def shape_event(
    event: Mapping[str, JSON], schema: str, select: tuple[str, ...] | None = None
) -> dict[str, JSON]:
    """An event as Graph returns it: the type annotation, then the properties of this schema."""
    out: dict[str, JSON] = {"@odata.type": AUTOPILOT_TYPE}
    for name, value in event.items():
        if select is not None and name != "id" and name not in select:
            continue
        if name == "id" or known_property(name, schema):
            out[name] = value
    return out


def _check_known(name: str, schema: str) -> None:
    """A property the event type does not have is a 400, worded as Graph words it."""
    if not known_property(name, schema):
        raise ODataError(
            400,
            "BadRequest",
            f"Could not find a property named '{name}' on type "
            "'microsoft.graph.deviceManagementAutopilotEvent'.",
        )


def parse_select(text: str | None, schema: str) -> tuple[str, ...] | None:
    """`$select=a,b` → ("a", "b"); None when absent; unknown names are a 400 like Graph's."""
    if text is None:
        return None
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise ODataError(400, "BadRequest", "$select needs at least one property name.")
    for name in names:
        _check_known(name, schema)
    return names


def parse_top(text: str | None, default: int, *, cap: int | None = None) -> int:
    """`$top`: a whole number 1..999 (Graph's limit for this list).

    With `cap`, a larger `$top` is served as `cap` instead of refused: autopilotEvents pages hold
    at most 50 events since late 2024, whatever the client asks for (GRAPH.md, "Paging").
    """
    if text is None:
        return default if cap is None else min(default, cap)
    if not text.strip().isdigit():
        raise ODataError(400, "BadRequest", f"Invalid value '{text}' for $top query option.")
    top = int(text)
    if cap is not None and top >= 1:
        return min(top, cap)
    if top > MAX_TOP:
        raise ODataError(
            400,
            "BadRequest",
            f"The limit of '{MAX_TOP}' for Top query has been exceeded. "
            f"The value from the incoming request is '{top}'.",
        )
    if top < 1:
        raise ODataError(400, "BadRequest", "$top must be at least 1.")
    return top


def skiptoken(offset: int) -> str:
    """An opaque `$skiptoken` for the page that starts at `offset`."""
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def parse_skiptoken(text: str | None) -> int:
    """The offset inside a `$skiptoken` (0 when absent); a forged one is a 400."""
    if text is None:
        return 0
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    kind, _, number = raw.partition(":")
    if kind != "offset" or not number.isdigit():
        raise ODataError(400, "BadRequest", "The $skiptoken is not valid.")
    return int(number)


# `property eq 'text'` or `property eq null`: enough to look events up by serial number or name.
_FILTER = re.compile(r"^\s*(?P<name>\w+)\s+eq\s+(?:'(?P<text>(?:[^']|'')*)'|(?P<null>null))\s*$")


def parse_filter(text: str | None, schema: str) -> tuple[str, JSON] | None:
    """`$filter=name eq 'value'` → (name, value); other expressions are refused with a 400."""
    if text is None:
        return None
    m = _FILTER.match(text)
    if not m:
        raise ODataError(
            400,
            "BadRequest",
            f"Invalid filter clause '{text}': the emulator understands property eq 'value'.",
        )
    name = m["name"]
    _check_known(name, schema)
    prop = PROPERTIES[name]
    if prop.edm not in (EdmType.STRING, EdmType.ENUM):
        raise ODataError(
            400, "BadRequest", f"The emulator filters only text and enum properties, not {name}."
        )
    return name, None if m["null"] else m["text"].replace("''", "'")


# --- Autopilot device identities (issue 16) -----------------------------------------------------

DEVICE_TYPE: Final = "#microsoft.graph.windowsAutopilotDeviceIdentity"
# The parameters of updateDeviceProperties (learn.microsoft.com
# intune-enrollment-windowsautopilotdeviceidentity-updatedeviceproperties, beta): all strings.
DEVICE_ACTION: Final = "updateDeviceProperties"
DEVICE_ACTION_PARAMETERS: Final = (
    "userPrincipalName",
    "addressableUserName",
    "groupTag",
    "displayName",
    "deviceAccountUpn",
    "deviceAccountPassword",
    "deviceFriendlyName",
)


def check_device_action_body(body: object) -> dict[str, JSON]:
    """The device properties an updateDeviceProperties body sets, or `ODataError` (400, in
    Intune's model-validation style) for an unknown parameter or a value that is no string.

    A null is taken as the empty string, which is how the service stores "no value".
    """
    if not isinstance(body, dict):
        raise _model("The request body must be a JSON object of action parameters.")
    changes: dict[str, JSON] = {}
    for name, value in body.items():
        if name not in DEVICE_ACTION_PARAMETERS:
            raise ODataError(
                400,
                "BadRequest",
                f"The parameter '{name}' in the request payload is not a valid parameter for "
                f"the operation '{DEVICE_ACTION}'.",
                source="model",
            )
        if value is not None and not isinstance(value, str):
            raise _model(
                f"Cannot convert the literal '{value}' to the expected type 'Edm.String' "
                f"(parameter '{name}')."
            )
        changes[name] = "" if value is None else value
    return changes


def shape_device(device: Mapping[str, JSON]) -> dict[str, JSON]:
    """A device as Graph returns it: the type annotation, then its properties (write-only
    ones read back empty)."""
    out: dict[str, JSON] = {"@odata.type": DEVICE_TYPE}
    for name, value in device.items():
        out[name] = "" if name in DEVICES.secrets else value
    return out


def no_route(method: str, template: str, path: str) -> ODataError:
    """Intune's answer to a verb its routes do not take (a PATCH of a device identity):
    400 "No method match route template" (msgraph-sdk-powershell#892,
    microsoft-graph-docs-contrib#4235), a plain Graph-style body."""
    return ODataError(
        400,
        "No method match route template",
        f"No OData route exists that match template {template} with http verb {method} for "
        f"request /DeviceEnrollmentFE/StatelessDeviceEnrollmentFEService{path}.",
    )


def device_select_error() -> ODataError:
    """What `$select` on windowsAutopilotDeviceIdentities answers: 500 in Intune's envelope
    (microsoft-graph-docs-contrib#2756, #5193; DeviceOffboardingManager#65, 2026)."""
    return ODataError(
        500,
        "InternalServerError",
        "An internal server error has occurred",
        source="intune",
    )
