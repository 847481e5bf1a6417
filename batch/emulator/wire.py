"""Graph's wire conventions for the emulator: error bodies, PATCH checks, OData query options.

Pure functions; the HTTP layer (`graph_api`, `app`) turns their verdicts into responses.
Shapes follow GRAPH.md ("Errors and request ids", "The resource").
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from collections.abc import Mapping
from typing import Final

from batch.model import JSON
from batch.schema import PROPERTIES, EdmType, check_wire

__all__ = [
    "AUTOPILOT_TYPE",
    "GRAPH_CONTENT_TYPE",
    "MAX_TOP",
    "ODataError",
    "check_patch_body",
    "dump_json",
    "error_body",
    "known_property",
    "parse_filter",
    "parse_select",
    "parse_skiptoken",
    "parse_top",
    "shape_event",
    "skiptoken",
]

AUTOPILOT_TYPE: Final = "#microsoft.graph.deviceManagementAutopilotEvent"
# What Graph sends for JSON bodies; clients must not insist on a bare `application/json`.
GRAPH_CONTENT_TYPE: Final = (
    "application/json;odata.metadata=minimal;odata.streaming=true;"
    "IEEE754Compatible=false;charset=utf-8"
)
MAX_TOP: Final = 999


class ODataError(Exception):
    """A request Graph would refuse: HTTP status, Graph error code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
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
    )


def check_patch_body(body: object, schema: str) -> dict[str, JSON]:
    """The properties to apply, or `ODataError` for the first thing Graph would reject."""
    if not isinstance(body, dict):
        raise ODataError(
            400, "BadRequest", "The request body must be a JSON object (a partial update)."
        )
    changes: dict[str, JSON] = {}
    for name, value in body.items():
        if name == "@odata.type":
            if value not in (AUTOPILOT_TYPE, AUTOPILOT_TYPE[1:]):
                raise ODataError(
                    400, "BadRequest", f"A type named '{value}' could not be resolved by the model."
                )
            continue
        if name == "id":
            raise ODataError(
                400,
                "BadRequest",
                "The key property 'id' cannot be changed; the id goes in the URL, not the body.",
            )
        if not known_property(name, schema):
            raise _unknown(name)
        reason = check_wire(PROPERTIES[name], value)
        if reason:
            raise ODataError(400, "BadRequest", reason)
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


def parse_top(text: str | None, default: int) -> int:
    """`$top`: a whole number 1..999 (Graph's limit for this list)."""
    if text is None:
        return default
    if not text.strip().isdigit():
        raise ODataError(400, "BadRequest", f"Invalid value '{text}' for $top query option.")
    top = int(text)
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
