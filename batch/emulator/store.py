"""The emulator's tenant: autopilot events in memory, generated, loaded from a file, patched.

Events are plain wire-format dicts (the JSON Graph returns, without `@odata` annotations). Ids are
looked up case-insensitively, as Graph treats GUID keys; the event keeps the spelling it came with.
"""

from __future__ import annotations

import builtins
import copy
import csv
import datetime as dt
import hashlib
import itertools
import json
import random
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from batch.errors import InputFileError
from batch.model import JSON
from batch.schema import (
    ALIASES,
    PROPERTIES,
    ValueProblem,
    check_wire,
    coerce_text,
    normalize_header,
)

__all__ = ["EventStore", "generate_event"]

Event = dict[str, JSON]

_FIRST = ("adele", "alex", "ben", "chloe", "diego", "emma", "farid", "grace", "hana", "ivan")
_LAST = ("vance", "wilber", "smith", "nguyen", "garcia", "mueller", "okafor", "tanaka", "rossi")
_PROFILES = ("Autopilot - User Driven", "Autopilot - Self Deploying", "Autopilot - Pre-provisioned")
_ESP_NAMES = ("All users and all devices", "ESP - Corporate", "ESP - Kiosk")
_OS_VERSIONS = ("10.0.19045.3693", "10.0.19045.4291", "10.0.22631.2861", "10.0.22631.3447")
_OFFSETS = ("Z", "-08:00", "-05:00", "+00:00", "+01:00", "+02:00", "+05:30", "+09:00")
_ALNUM = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
_ENROLLMENT_TYPES = (
    "azureADJoinedWithAutopilotProfile",
    "azureADJoinedWithWhiteGlove",
    "offlineDomainJoined",
)
_FAILURE = "0x80180014: the device is not allowed to enroll"


def _guid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _serial(rng: random.Random) -> str:
    # HP-style serials ("5CG1234XYZ") and, for some vendors, all-digit serials with leading zeros
    # that a careless spreadsheet would turn into numbers.
    if rng.random() < 0.2:
        return "00" + "".join(rng.choice("0123456789") for _ in range(8))
    letters = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(3))
    return f"5CG{rng.randrange(10_000):04d}{letters}"


def _datetime(rng: random.Random, moment: dt.datetime, offset: str) -> str:
    """A wire DateTimeOffset with 7 fractional digits (100 ns ticks), as Graph writes them."""
    if offset == "Z":
        local = moment.astimezone(dt.UTC)
    else:
        sign = 1 if offset[0] == "+" else -1
        delta = dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
        local = moment.astimezone(dt.timezone(sign * delta))
    frac = f"{local.microsecond:06d}{rng.randrange(10)}"
    return f"{local:%Y-%m-%dT%H:%M:%S}.{frac}{offset}"


def _duration(rng: random.Random, low: float, high: float) -> JSON:
    """A canonical ISO 8601 duration (e.g. `PT3M21.5549443S`), built through the schema coercer."""
    ticks = rng.randrange(int(low * 10_000_000), int(high * 10_000_000))
    seconds, frac = divmod(ticks, 10_000_000)
    minutes, secs = divmod(seconds, 60)
    hours, mins = divmod(minutes, 60)
    return coerce_text(
        PROPERTIES["deploymentDuration"], f"{hours:02d}:{mins:02d}:{secs:02d}.{frac:07d}"
    )


def generate_event(rng: random.Random, event_id: str | None = None) -> Event:
    """A plausible autopilot event in wire format, every property present, drawn from `rng`."""
    event_id = event_id or _guid(rng)
    offset = rng.choice(_OFFSETS)
    registered = dt.datetime(2023, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
        seconds=rng.randrange(60 * 60 * 24 * 700), microseconds=rng.randrange(1_000_000)
    )
    enrollment_start = registered + dt.timedelta(days=rng.randrange(1, 60), seconds=rng.random())
    deployment_start = enrollment_start + dt.timedelta(seconds=rng.uniform(5, 120))
    deployment_end = deployment_start + dt.timedelta(seconds=rng.uniform(300, 3600))
    failed = rng.random() < 0.15
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    state = "failure" if failed else rng.choice(("success", "success", "success", "successOnRetry"))
    event: Event = {
        "id": event_id,
        "deviceId": _guid(rng),
        "eventDateTime": _datetime(rng, deployment_end, offset),
        "deviceRegisteredDateTime": _datetime(rng, registered, offset),
        "enrollmentStartDateTime": _datetime(rng, enrollment_start, offset),
        "enrollmentType": rng.choice(
            (
                "azureADJoinedWithAutopilotProfile",
                "azureADJoinedWithWhiteGlove",
                "offlineDomainJoined",
            )
        ),
        "deviceSerialNumber": _serial(rng),
        "managedDeviceName": "DESKTOP-" + "".join(rng.choice(_ALNUM) for _ in range(7)),
        "userPrincipalName": f"{first}.{last}@contoso.com",
        "userId": _guid(rng),
        "windowsAutopilotDeploymentProfileDisplayName": rng.choice(_PROFILES),
        "enrollmentState": "failed" if failed else "enrolled",
        "windows10EnrollmentCompletionPageConfigurationDisplayName": rng.choice(_ESP_NAMES),
        "windows10EnrollmentCompletionPageConfigurationId": _guid(rng),
        "deploymentState": state,
        "deviceSetupStatus": state,
        "accountSetupStatus": rng.choice(("success", "success", "notAttempted", "inProgress")),
        "osVersion": rng.choice(_OS_VERSIONS),
        "deploymentDuration": _duration(rng, 300, 3600),
        "deploymentTotalDuration": _duration(rng, 400, 4000),
        "devicePreparationDuration": _duration(rng, 30, 600),
        "deviceSetupDuration": _duration(rng, 60, 1800),
        "accountSetupDuration": _duration(rng, 30, 900),
        "deploymentStartDateTime": _datetime(rng, deployment_start, offset),
        "deploymentEndDateTime": _datetime(rng, deployment_end, offset),
        "targetedAppCount": rng.randrange(0, 40),
        "targetedPolicyCount": rng.randrange(0, 25),
        "enrollmentFailureDetails": "0x80180014: device is not allowed to enroll"
        if failed
        else None,
    }
    return event


def _key(event_id: str) -> str:
    return event_id.casefold()


def _clone(event: Mapping[str, JSON]) -> Event:
    """A copy that shares nothing mutable (wire values are nearly all immutable scalars)."""
    return {k: copy.deepcopy(v) if isinstance(v, dict | list) else v for k, v in event.items()}


class EventStore:
    """The tenant's autopilot events, keyed by id (case-insensitively)."""

    def __init__(self, events: Iterable[Mapping[str, JSON]] = ()) -> None:
        self._events: dict[str, Event] = {}
        self._digest: str | None = None  # cached until the next change
        for event in events:
            self.add(event)

    def __len__(self) -> int:
        return len(self._events)

    def __contains__(self, event_id: object) -> bool:
        return isinstance(event_id, str) and _key(event_id) in self._events

    def add(self, event: Mapping[str, JSON]) -> Event:
        """Add (or replace) an event; any dict with a non-empty string `id` is accepted."""
        event_id = event.get("id")
        if not isinstance(event_id, str) or not event_id:
            raise ValueError("an event needs a non-empty string 'id'")
        stored = _clone({k: v for k, v in event.items() if not k.startswith("@")})
        self._events[_key(event_id)] = stored
        self._digest = None
        return _clone(stored)

    def seed(self, n: int, seed: int | None = None) -> builtins.list[str]:
        """Add `n` generated events (deterministic for a given `seed`); returns their ids."""
        if n < 0:
            raise ValueError("the number of events cannot be negative")
        rng = random.Random(seed)
        ids = []
        for _ in range(n):
            event = generate_event(rng)
            self._events[_key(str(event["id"]))] = event  # fresh: no copy needed
            ids.append(str(event["id"]))
        self._digest = None
        return ids

    def load(self, path: str | Path) -> int:
        """Add the events of a CSV (property headers, cell values) or JSONL/JSON file.

        CSV cells follow the input-file rules (ISO or TimeSpan durations, enums in any case,
        `<null>` for null, empty cell = property absent), so a file written by `export` loads
        as it is. Returns the number of events read; a bad file raises `InputFileError`.
        """
        path = Path(path)
        text = read_store_file(path)
        suffix = path.suffix.lower()
        if suffix == ".csv":
            events = list(_events_from_csv(path, text))
        elif suffix in (".jsonl", ".ndjson", ".json"):
            events = list(_events_from_json(path, text, lines=suffix != ".json"))
        else:
            raise InputFileError(path, "the emulator loads .csv, .jsonl or .json event files")
        seen: set[str] = set()
        for number, event in events:
            event_id = str(event["id"])
            if _key(event_id) in seen:
                raise InputFileError(path, f"{_where(suffix, number)}: id {event_id} appears twice")
            seen.add(_key(event_id))
        for _, event in events:
            self.add(event)
        return len(events)

    def get(self, event_id: str) -> Event | None:
        """A copy of the event, or None when there is no such id."""
        event = self._events.get(_key(event_id))
        return _clone(event) if event is not None else None

    def patch(self, event_id: str, body: Mapping[str, JSON]) -> Event:
        """Apply a (validated) partial update; raises KeyError for an unknown id."""
        event = self._events[_key(event_id)]
        event.update(_clone(body))
        self._digest = None
        return _clone(event)

    def stored_id(self, event_id: str) -> str | None:
        """The id as stored (its own spelling), or None when there is no such id."""
        event = self._events.get(_key(event_id))
        return str(event["id"]) if event is not None else None

    def update(self, event_id: str, body: Mapping[str, JSON]) -> None:
        """`patch` without returning a copy (the write answers 204, nothing to show)."""
        self._events[_key(event_id)].update(_clone(body))
        self._digest = None

    def list(self) -> builtins.list[Event]:
        """Copies of all events, in insertion order (the order list paging walks)."""
        return [_clone(e) for e in self._events.values()]

    def page(self, offset: int, limit: int) -> builtins.list[Event]:
        """Copies of `limit` events from position `offset` (insertion order)."""
        return [
            copy.deepcopy(e)
            for e in itertools.islice(self._events.values(), offset, offset + limit)
        ]

    def find(self, name: str, value: JSON) -> builtins.list[Event]:
        """Copies of the events whose property `name` equals `value` exactly."""
        return [_clone(e) for e in self._events.values() if e.get(name) == value]

    def snapshot(self) -> builtins.list[Event]:
        """A deep copy of every event, for `restore`."""
        return self.list()

    def restore(self, events: Iterable[Mapping[str, JSON]]) -> None:
        """Replace the whole store by `events` (a `snapshot`)."""
        self._events.clear()
        self._digest = None
        for event in events:
            self.add(event)

    def digest(self) -> str:
        """sha256 of the canonical JSON of all events sorted by id: equal state, equal digest."""
        if self._digest is None:
            events = sorted(self._events.values(), key=lambda e: str(e["id"]))
            text = json.dumps(events, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            self._digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return self._digest


def read_store_file(path: Path) -> str:
    """A store file's text (UTF-8, a BOM allowed); `InputFileError` saying why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputFileError(path, "no such file") from None
    except UnicodeDecodeError:
        raise InputFileError(path, "not UTF-8 text") from None
    except OSError as error:
        raise InputFileError(path, error.strerror or str(error)) from None


def _where(suffix: str, number: int) -> str:
    kind = {".csv": "row", ".json": "item"}.get(suffix, "line")
    return f"{kind} {number}"


def _events_from_csv(path: Path, text: str) -> Iterator[tuple[int, Event]]:
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise InputFileError(path, "no header row")
    by_folded = {normalize_header(name): name for name in PROPERTIES}
    by_folded.update(ALIASES)
    columns: list[str | None] = []
    for cell in header:
        if not cell.strip() or cell.startswith("_"):
            columns.append(None)
            continue
        name = by_folded.get(normalize_header(cell))
        if name is None:
            raise InputFileError(path, f"column {cell!r} is not an autopilot event property")
        columns.append(name)
    if "id" not in columns:
        raise InputFileError(path, "no id column")
    for number, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        event: Event = {}
        for name, cell in zip(columns, row, strict=False):
            if name is None or cell == "":
                continue
            try:
                event[name] = coerce_text(PROPERTIES[name], cell)
            except ValueProblem as problem:
                raise InputFileError(path, f"row {number}, {name}: {problem}") from None
        if not isinstance(event.get("id"), str) or not event["id"]:
            raise InputFileError(path, f"row {number}: no id")
        yield number, event


def _events_from_json(path: Path, text: str, *, lines: bool) -> Iterator[tuple[int, Event]]:
    if lines:
        items: list[tuple[int, object]] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise InputFileError(path, f"line {number}: not JSON ({error.msg})") from None
    else:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputFileError(path, f"not JSON ({error.msg} at line {error.lineno})") from None
        # A Graph list response (`{"value": [...]}`) or a plain array of events.
        if isinstance(document, dict) and isinstance(document.get("value"), list):
            document = document["value"]
        if not isinstance(document, list):
            raise InputFileError(path, "expected a JSON array of events or {'value': [...]}")
        items = list(enumerate(document, start=1))
    where = "line" if lines else "item"
    for number, item in items:
        if not isinstance(item, dict):
            raise InputFileError(path, f"{where} {number}: not a JSON object")
        event: Event = {}
        for name, value in item.items():
            if name.startswith("@"):
                continue
            prop = PROPERTIES.get(name)
            if prop is None:
                raise InputFileError(path, f"{where} {number}: unknown property {name!r}")
            reason = check_wire(prop, value)
            if reason:
                raise InputFileError(path, f"{where} {number}: {reason}")
            event[name] = value
        if not isinstance(event.get("id"), str) or not event["id"]:
            raise InputFileError(path, f"{where} {number}: no id")
        yield number, event
