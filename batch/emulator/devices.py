"""The emulator's Autopilot device identities: generated, loaded from a file, updated (issue 16).

Devices are wire-format dicts of `windowsAutopilotDeviceIdentity` (beta), every property of
`batch.resources.DEVICES` present, as the service returns them: strings the service has no
value for are `""` (an unset group tag reads as `""`, and the portal clears one by sending
`""`), a never-contacted device's dates are `0001-01-01T00:00:00Z`. `DeviceStore` is the event
store's storage (ids case-insensitive, copies out, a digest of the state) with a generator and
a file loader of its own.

`demo_devices()` is the tenant the demo and `sample_data/devices.csv` are made for: the first
devices of the seeded draw with `DEMO_SEED` (sample_data/make_samples.py takes its serials from
here, so the sample always matches).
"""

from __future__ import annotations

import builtins
import csv
import datetime as dt
import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from batch.emulator.store import EventStore, read_store_file
from batch.errors import InputFileError
from batch.model import JSON
from batch.resources import DEVICES
from batch.schema import ValueProblem, check_wire, coerce_text

__all__ = ["DEMO_DEVICES", "DEMO_SEED", "DeviceStore", "demo_devices", "generate_device"]

Device = dict[str, JSON]

DEMO_SEED: Final = 2026
DEMO_DEVICES: Final = 40

_FIRST = ("adele", "alex", "ben", "chloe", "diego", "emma", "farid", "grace", "hana", "ivan")
_LAST = ("vance", "wilber", "smith", "nguyen", "garcia", "mueller", "okafor", "tanaka", "rossi")
# (manufacturer, model, system family, SKU): what OEMs register; Microsoft's own SKUs are text.
_HARDWARE: Final = (
    ("HP", "HP EliteBook 840 G9 Notebook PC", "103C_5336AN HP EliteBook", "6F6K2EA#ABD"),
    ("HP", "HP ProBook 450 G10 Notebook PC", "103C_5336AN HP ProBook", "85B04EA#ABD"),
    ("Dell Inc.", "Latitude 5440", "Latitude", "0C0B"),
    ("Dell Inc.", "OptiPlex 7010", "OptiPlex", "0B1A"),
    ("LENOVO", "21HDS0J300", "ThinkPad T14 Gen 4", "LENOVO_MT_21HD_BU_Think_FM_ThinkPad T14"),
    ("Microsoft Corporation", "Surface Laptop 5", "Surface", "Surface_Laptop_5_1950"),
)
_GROUP_TAGS: Final = ("", "Sales", "Engineering", "Kiosk", "FrontDesk", "Shared-Lab")
_SITES: Final = ("BER", "LON", "NYC", "SEA")
_NEVER: Final = "0001-01-01T00:00:00Z"


def _guid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _serial(rng: random.Random, manufacturer: str) -> str:
    """A serial in the OEM's style; some all-digit ones with leading zeros (Excel's victims)."""
    if rng.random() < 0.2:
        return "0" + "".join(rng.choice("0123456789") for _ in range(11))
    letters = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(3))
    if manufacturer == "HP":
        return f"5CG{rng.randrange(10_000):04d}{letters}"
    if manufacturer == "LENOVO":
        return f"PF{rng.randrange(100_000):05d}{letters[0]}"
    return "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(7))


def _when(rng: random.Random) -> str:
    moment = dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
        seconds=rng.randrange(60 * 60 * 24 * 700)
    )
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{rng.randrange(10_000_000):07d}Z"


def generate_device(rng: random.Random, device_id: str | None = None) -> Device:
    """A plausible Autopilot device identity in wire format, every property present."""
    device_id = device_id or _guid(rng)
    manufacturer, model, family, sku = rng.choice(_HARDWARE)
    serial = _serial(rng, manufacturer)
    tag = rng.choice(_GROUP_TAGS)
    enrolled = rng.random() < 0.8
    assigned = rng.random() < 0.5
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    contacted = _when(rng) if enrolled else _NEVER
    entra_id = _guid(rng)
    return {
        "id": device_id,
        "serialNumber": serial,
        "groupTag": tag,
        "userPrincipalName": f"{first}.{last}@contoso.com" if assigned else "",
        "addressableUserName": f"{first.title()} {last.title()}" if assigned else "",
        # Display names are set for some devices only (the profile's naming template applies
        # otherwise), in the usual SITE-serial style.
        "displayName": f"{rng.choice(_SITES)}-{serial[-7:]}" if rng.random() < 0.4 else "",
        "deviceAccountUpn": "",
        "deviceAccountPassword": "",
        "deviceFriendlyName": "",
        "purchaseOrderIdentifier": f"PO-{rng.randrange(10**6):06d}" if rng.random() < 0.3 else "",
        "productKey": "",
        "manufacturer": manufacturer,
        "model": model,
        "enrollmentState": "enrolled" if enrolled else "notContacted",
        "lastContactedDateTime": contacted,
        "deploymentProfileAssignmentStatus": rng.choice(
            ("assignedInSync", "assignedInSync", "assignedUnkownSyncState", "notAssigned")
        ),
        "deploymentProfileAssignmentDetailedStatus": "none",
        "deploymentProfileAssignedDateTime": _when(rng),
        "resourceName": "",
        "skuNumber": sku,
        "systemFamily": family,
        "azureActiveDirectoryDeviceId": entra_id,
        "azureAdDeviceId": entra_id,
        "managedDeviceId": _guid(rng) if enrolled else "00000000-0000-0000-0000-000000000000",
        "remediationState": "noRemediationRequired",
        "remediationStateLastModifiedDateTime": _NEVER,
        "userlessEnrollmentStatus": "allowed",
    }


def demo_devices(n: int = DEMO_DEVICES, seed: int = DEMO_SEED) -> builtins.list[Device]:
    """The demo tenant's devices: `n` generated with `seed` (`DeviceStore.seed` draws these)."""
    rng = random.Random(seed)
    return [generate_device(rng) for _ in range(n)]


class DeviceStore(EventStore):
    """The tenant's Autopilot device identities, keyed by id (case-insensitively)."""

    def seed(self, n: int, seed: int | None = None) -> builtins.list[str]:
        """Add `n` generated devices (deterministic for a given `seed`); returns their ids."""
        if n < 0:
            raise ValueError("the number of devices cannot be negative")
        rng = random.Random(seed)
        return [str(self.add(generate_device(rng))["id"]) for _ in range(n)]

    def load(self, path: str | Path) -> int:
        """Add the devices of a CSV file (property names or the portal's headers, so a device
        export loads as it is) or a JSONL/JSON file (a Graph list answer too). Returns how
        many; a bad file raises `InputFileError`. Columns that are no property are refused,
        except the portal's import columns the tool ignores (`Hardware Hash`, ...)."""
        path = Path(path)
        text = read_store_file(path)
        suffix = path.suffix.lower()
        if suffix == ".csv":
            devices = list(_from_csv(path, text))
        elif suffix in (".jsonl", ".ndjson", ".json"):
            devices = list(_from_json(path, text, lines=suffix != ".json"))
        else:
            raise InputFileError(path, "the emulator loads .csv, .jsonl or .json device files")
        seen: set[str] = set()
        for where, device in devices:
            folded = str(device["id"]).casefold()
            if folded in seen:
                raise InputFileError(path, f"{where}: id {device['id']} appears twice")
            seen.add(folded)
        for _, device in devices:
            self.add(device)
        return len(devices)


def _complete(device: Device) -> Device:
    """A loaded device with every property the file left out, as the service has it."""
    filled: Device = {}
    for name, prop in DEVICES.properties.items():
        if name in device:
            filled[name] = device[name]
        elif prop.edm == "DateTimeOffset":
            filled[name] = _NEVER
        elif prop.members:
            filled[name] = prop.members[0]
        else:
            filled[name] = ""
    return filled


def _from_csv(path: Path, text: str) -> Iterator[tuple[str, Device]]:
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise InputFileError(path, "no header row")
    columns: list[str | None] = []
    for cell in header:
        wanted = bool(cell.strip()) and not cell.startswith("_")
        prop = DEVICES.property_for(cell) if wanted else None
        if wanted and prop is None and not DEVICES.ignored(cell):
            raise InputFileError(
                path, f"column {cell!r} is not an Autopilot device identity property"
            )
        columns.append(prop.name if prop is not None else None)
    if "id" not in columns:
        raise InputFileError(path, "no id column")
    for number, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        device: Device = {}
        for name, cell in zip(columns, row, strict=False):
            if name is None or cell == "":
                continue
            try:
                value = coerce_text(DEVICES.properties[name], cell)
            except ValueProblem as problem:
                raise InputFileError(path, f"row {number}, {name}: {problem}") from None
            device[name] = DEVICES.wire_null(value)
        if not isinstance(device.get("id"), str) or not device["id"]:
            raise InputFileError(path, f"row {number}: no id")
        yield f"row {number}", _complete(device)


def _from_json(path: Path, text: str, *, lines: bool) -> Iterator[tuple[str, Device]]:
    where = "line" if lines else "item"
    items: list[tuple[int, object]] = []
    if lines:
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
        if isinstance(document, dict) and isinstance(document.get("value"), list):
            document = document["value"]
        if not isinstance(document, list):
            raise InputFileError(path, "expected a JSON array of devices or {'value': [...]}")
        items = list(enumerate(document, start=1))
    for number, item in items:
        if not isinstance(item, dict):
            raise InputFileError(path, f"{where} {number}: not a JSON object")
        device: Device = {}
        for name, value in item.items():
            if name.startswith("@"):
                continue
            prop = DEVICES.properties.get(name)
            if prop is None:
                raise InputFileError(path, f"{where} {number}: unknown property {name!r}")
            reason = check_wire(prop, value)
            if reason:
                raise InputFileError(path, f"{where} {number}: {reason}")
            device[name] = value
        if not isinstance(device.get("id"), str) or not device["id"]:
            raise InputFileError(path, f"{where} {number}: no id")
        yield f"{where} {number}", _complete(device)
