"""Export stamps: what `export` saw in every cell of a row, carried by the row itself.

`export` adds one last column, `_exported`, holding a short text per row (the *stamp*):

    x1.<base64url( n | mask[n] | digest(id) | digest(p) for every exported property p )>

* `digest(p, v)` is the first 6 bytes of SHA-256 of `p + "\\0" + meaning(v)`, where `meaning`
  is the value's wire meaning (`batch.schema.canonical`: the same instant in another offset, a
  duration in another spelling, an enum in another case are one meaning; strings trimmed, as the
  reader trims them). A later `run` compares meanings, not spellings, so an untouched cell that
  Excel or a person re-typed in another spelling still counts as not edited.
* `mask` marks which properties were exported, as bits over `STAMP_PROPERTIES` (a frozen,
  append-only list: a property's bit never moves, so stamps of older exports stay readable and
  a newer property simply is not covered by an older stamp); `n` is the mask's length in bytes.
  The columns can therefore be reordered, removed or added in the file: each digest belongs to a
  property name, never to a column position.
* `digest(id)` ties the stamp to its event: a stamp on a row whose id was changed is refused.

Why a column of stamps and not a sidecar file naming the export: the file gets renamed, moved,
mailed and saved again as .xlsx; rows get sorted, filtered, deleted and copied into other files
(and into `failures.csv`, which keeps every input column). A stamp travels with its row through
all of that; a sidecar would be lost or, worse, matched to the wrong file.

The text is safe in spreadsheets: it starts with a letter (never `= + - @`, so never a formula
and never neutralised), is not numeric- or date-looking, and uses only `A-Z a-z 0-9 - _ .`, which
Excel, LibreOffice and every CSV encoding keep as they are. It holds digests of values that are
in the file anyway, never a secret. 6 bytes (48 bits) per cell make a false "not edited" for an
edited cell about one chance in 2.8e14.

**Each resource has its own table and prefix** (issue 16): `x1.` stamps are the events'
(`STAMP_PROPERTIES`, as they always were), `d1.` stamps the Autopilot devices'
(`DEVICE_STAMP_PROPERTIES`). The prefix records the resource, so a device export run as events
(or the other way round) is refused per row instead of compared against the wrong table. A
device's absent value reads as `""` and is cleared with `""`, so for devices null and `""` have
one meaning (`Resource.wire_null`); a secret (`deviceAccountPassword`) is never exported, so
never stamped.

`stamp_row` applies a stamp to a mapped row (cells that still hold the exported value are taken
out of the body; a row with none left is skipped); `batch.changes.judge` does the three-way
comparison with the tenant's current values.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Final

from batch.model import JSON, NOTHING_TO_CHANGE, Invalid, Problem, Skipped, Update
from batch.resources import DEVICES, EVENTS, Resource
from batch.schema import canonical

__all__ = [
    "DEVICE_STAMP_PROPERTIES",
    "STAMP_COLUMN",
    "STAMP_PROPERTIES",
    "ExportStamp",
    "Stamper",
    "find_stamp_column",
    "parse_stamp",
    "stamp_row",
    "value_digest",
]

#: The header of the stamp column `export` writes (last column; ignored as a property: `_`).
STAMP_COLUMN: Final = "_exported"
#: What a row whose cells all still hold the exported values reports (outcome `skipped`).
NOT_EDITED: Final = "not edited since the export (_exported)"

_PREFIX: Final = "x1."
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
_DIGEST_BYTES: Final = 6
# Restoring lost leading zeros is tried up to this many zeros (serials are at most ~30 chars).
_MAX_ZEROS: Final = 16

#: The properties a version-1 stamp can cover, in bit order. Append only: never reorder or remove
#: (a test checks that every property of the schema is here).
STAMP_PROPERTIES: Final[tuple[str, ...]] = (
    "deviceId",
    "eventDateTime",
    "deviceRegisteredDateTime",
    "enrollmentStartDateTime",
    "enrollmentType",
    "deviceSerialNumber",
    "managedDeviceName",
    "userPrincipalName",
    "userId",
    "windowsAutopilotDeploymentProfileDisplayName",
    "enrollmentState",
    "windows10EnrollmentCompletionPageConfigurationDisplayName",
    "windows10EnrollmentCompletionPageConfigurationId",
    "deploymentState",
    "deviceSetupStatus",
    "accountSetupStatus",
    "osVersion",
    "deploymentDuration",
    "deploymentTotalDuration",
    "devicePreparationDuration",
    "deviceSetupDuration",
    "accountSetupDuration",
    "deploymentStartDateTime",
    "deploymentEndDateTime",
    "targetedAppCount",
    "targetedPolicyCount",
    "enrollmentFailureDetails",
)
#: The device properties a `d1.` stamp can cover, in bit order; append only, like
#: `STAMP_PROPERTIES` (a test checks that every non-secret device property is here).
DEVICE_STAMP_PROPERTIES: Final[tuple[str, ...]] = (
    "serialNumber",
    "groupTag",
    "userPrincipalName",
    "addressableUserName",
    "displayName",
    "deviceAccountUpn",
    "deviceFriendlyName",
    "purchaseOrderIdentifier",
    "productKey",
    "manufacturer",
    "model",
    "enrollmentState",
    "lastContactedDateTime",
    "deploymentProfileAssignmentStatus",
    "deploymentProfileAssignmentDetailedStatus",
    "deploymentProfileAssignedDateTime",
    "resourceName",
    "skuNumber",
    "systemFamily",
    "azureActiveDirectoryDeviceId",
    "azureAdDeviceId",
    "managedDeviceId",
    "remediationState",
    "remediationStateLastModifiedDateTime",
    "userlessEnrollmentStatus",
)


@dataclass(frozen=True, slots=True)
class _Table:
    """One resource's stamp format: its prefix and the properties its mask's bits stand for."""

    resource: Resource
    prefix: str
    properties: tuple[str, ...]

    @property
    def bits(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.properties)}


_TABLES: Final = {
    EVENTS.name: _Table(EVENTS, _PREFIX, STAMP_PROPERTIES),
    DEVICES.name: _Table(DEVICES, "d1.", DEVICE_STAMP_PROPERTIES),
}
_ID: Final = "id"


def _meaning(name: str, value: JSON, resource: Resource = EVENTS) -> str:
    """The text a digest is taken of: equal for values with the same wire meaning."""
    value = resource.wire_null(value)
    prop = resource.properties.get(name)
    form: object = value if prop is None else canonical(prop, value)
    if isinstance(form, str):
        # The reader trims cells, so surrounding spaces cannot be told apart in the file.
        return "s:" + (form.strip().casefold() if name == _ID else form.strip())
    if isinstance(form, tuple) and len(form) == 2 and isinstance(form[0], dt.datetime):
        return f"t:{form[0].isoformat()}|{form[1]}"
    if isinstance(form, Decimal):
        return "d:" + format(form.normalize(), "f")
    return "j:" + json.dumps(form, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def value_digest(name: str, value: JSON, resource: Resource = EVENTS) -> bytes:
    """The 6-byte digest of property `name` holding `value` (see the module docstring).

    About 5 µs a cell, mostly reading instants and durations: an export of 100,000 events spends
    some 12 s stamping, in the thread that writes the file while the next page is fetched.
    """
    text = f"{name}\0{_meaning(name, value, resource)}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:_DIGEST_BYTES]


class Stamper:
    """Makes the stamps of one export: built once for its columns, called once per event."""

    def __init__(self, columns: Iterable[str], resource: Resource = EVENTS) -> None:
        chosen = set(columns)
        table = _TABLES[resource.name]
        bits = table.bits
        self._resource = resource
        self._prefix = table.prefix
        # Bit order, not column order: the digests follow the mask.
        self._names = tuple(n for n in table.properties if n in chosen)
        mask = bytearray((len(table.properties) + 7) // 8)
        for name in self._names:
            mask[bits[name] // 8] |= 1 << (bits[name] % 8)
        self._head = bytes([len(mask)]) + bytes(mask)

    def __call__(self, event: Mapping[str, JSON]) -> str:
        """The stamp of one entity as Graph sent it."""
        resource = self._resource
        parts = [self._head, value_digest(_ID, event.get(_ID), resource)]
        parts.extend(value_digest(name, event.get(name), resource) for name in self._names)
        encoded = base64.urlsafe_b64encode(b"".join(parts)).rstrip(b"=").decode("ascii")
        return self._prefix + encoded


@dataclass(frozen=True, slots=True)
class ExportStamp:
    """A row's stamp, read back: the digests of what `export` saw, by property."""

    id_digest: bytes
    digests: Mapping[str, bytes]
    #: The resource the export read (the stamp's prefix says which).
    resource: Resource = EVENTS

    def covers(self, name: str) -> bool:
        """Whether the export recorded property `name` (it was one of its columns)."""
        return name in self.digests

    def holds(self, name: str, value: JSON) -> bool:
        """Whether `value` means what the export saw in `name` (False if not covered)."""
        found = self.digests.get(name)
        return found is not None and found == value_digest(name, value, self.resource)

    def of_event(self, event_id: str) -> bool:
        """Whether the stamp was made for the entity `event_id`."""
        return self.id_digest == value_digest(_ID, event_id, self.resource)

    def lost_zeros(self, name: str, value: JSON) -> str | None:
        """The exported value if `value` is it without its leading zeros (Excel's doing)."""
        if not (isinstance(value, str) and value.isascii() and value.isdigit()):
            return None
        if name not in self.digests:
            return None
        for zeros in range(1, _MAX_ZEROS + 1):
            padded = "0" * zeros + value
            if self.holds(name, padded):
                return padded
        return None


def parse_stamp(text: str) -> ExportStamp:
    """Read a stamp cell; raises ValueError saying why it is not one."""
    text = text.strip()
    table = next((t for t in _TABLES.values() if text.startswith(t.prefix)), None)
    if table is None:
        raise ValueError("not a stamp written by `autopilot-batch export`")
    properties = table.properties
    body = text[len(table.prefix) :]
    # The decoder skips characters outside the alphabet; a damaged stamp must not pass as one.
    if not _BASE64URL.fullmatch(body):
        raise ValueError("damaged (not base64url text)")
    try:
        data = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("damaged (not base64url text)") from None
    if not data or len(data) < 1 + data[0] + _DIGEST_BYTES:
        raise ValueError("damaged (too short)")
    size = data[0]
    mask = data[1 : 1 + size]
    names = [
        properties[i] for i in range(min(size * 8, len(properties))) if mask[i // 8] >> (i % 8) & 1
    ]
    # A bit beyond the properties this version knows: a newer export; its digests cannot be placed.
    if any(mask[i // 8] >> (i % 8) & 1 for i in range(len(properties), size * 8)):
        raise ValueError("written by a newer autopilot-batch (update this one)")
    start = 1 + size + _DIGEST_BYTES
    if len(data) != start + _DIGEST_BYTES * len(names):
        raise ValueError("damaged (wrong length)")
    digests = {
        name: data[start + i * _DIGEST_BYTES : start + (i + 1) * _DIGEST_BYTES]
        for i, name in enumerate(names)
    }
    return ExportStamp(data[1 + size : start], digests, table.resource)


def find_stamp_column(headers: Sequence[str]) -> str | None:
    """The header of the stamp column (`_exported`, case and surrounding spaces ignored)."""
    return next((h for h in headers if h.strip().casefold() == STAMP_COLUMN), None)


def stamp_row(
    mapped: Update | Invalid | Skipped,
    text: str,
    column: str = STAMP_COLUMN,
    resource: Resource = EVENTS,
    *,
    emptied: Sequence[tuple[str, str]] = (),
    null_token: str = "<null>",
) -> Update | Invalid | Skipped:
    """Apply a row's stamp cell (`text`, may be empty) to what the mapper made of the row.

    Cells that still mean what the export saw leave the body (never written); a row left with
    none is skipped. A malformed stamp, or one made for another event (the id was changed after
    the export), makes the row invalid, naming the column. An empty cell changes nothing: rows
    added to the file after the export are sent as they are.

    `emptied`: the row's empty cells (header, property). One that held a value in the export
    was emptied by the admin, who likely meant to clear it; an empty cell still changes
    nothing, so the row says so (a warning, or the reason it is skipped) instead of calling
    itself "not edited".
    """
    if not text or text.isspace():
        return mapped
    try:
        stamp = parse_stamp(text)
    except ValueError as error:
        problem = Problem(
            column, text, f"{error}; clear the cell to send the row without the export's checks"
        )
        return _invalid(mapped, problem)
    if stamp.resource is not resource:
        problem = Problem(
            column,
            "",
            f"this row comes from an export of {stamp.resource.name}, not {resource.name}: "
            f"run the file with --resource {stamp.resource.name}",
        )
        return _invalid(mapped, problem)
    if mapped.event_id and not stamp.of_event(mapped.event_id):
        problem = Problem(
            column,
            "",
            "this stamp belongs to another event (the id was changed after the export); "
            "clear the cell to send the row without the export's checks",
        )
        return _invalid(mapped, problem)
    cleared = [
        header
        for header, name in emptied
        if stamp.covers(name) and not (stamp.holds(name, None) or stamp.holds(name, ""))
    ]
    note = _emptied_note(cleared, null_token) if cleared else None
    if isinstance(mapped, Skipped):
        # Only the mapper's "nothing to change" (every cell empty); a hidden row keeps its reason.
        if note is None or mapped.reason != NOTHING_TO_CHANGE:
            return mapped
        return replace(mapped, reason=note, warnings=(note,))
    if not isinstance(mapped, Update):
        return mapped
    body = {k: v for k, v in mapped.body.items() if not stamp.holds(k, v)}
    if not body:
        if note is not None:
            return Skipped(mapped.number, mapped.event_id, note, (note,))
        return Skipped(mapped.number, mapped.event_id, NOT_EDITED)
    warnings = mapped.warnings if note is None else (*mapped.warnings, note)
    return replace(mapped, body=body, exported=stamp, warnings=warnings)


def _emptied_note(headers: Sequence[str], null_token: str) -> str:
    """What a row says about cells emptied since the export (`stamp_row`)."""
    it = "it" if len(headers) == 1 else "them"
    return (
        f"{', '.join(headers)} emptied: an empty cell changes nothing; "
        f"write {null_token} to clear {it}"
    )


def _invalid(mapped: Update | Invalid | Skipped, problem: Problem) -> Invalid:
    if isinstance(mapped, Invalid):
        return replace(mapped, problems=(*mapped.problems, problem))
    return Invalid(mapped.number, mapped.event_id, (problem,))
