"""Generate the sample inputs in this folder, deterministically (stdlib + pandas).

    python sample_data/make_samples.py

* `events.csv` — 300 plausible updates: GUID ids, serial numbers (some with leading zeros),
  UPNs like first.last@contoso.com, device names, profile names, date-times with offsets,
  durations in ISO 8601 and in .NET TimeSpan text, enums in mixed case, a few `<null>`s and
  empty cells (left unchanged). Every row is valid: `validate` exits 0.
* `events.xlsx` — the same rows as text cells (real Excel date cells carry no offset, so they
  would need `--assume-tz`; text keeps the offsets). Byte-for-byte reproducible.
* `bad_rows.csv` — one row per kind of row error, each explained in its `_note` column (ignored
  by the tool because it starts with `_`). `validate` exits 1.
* `devices.csv` — 20 Autopilot device identity updates (issue 16) with the Intune portal's
  headers (`Device Serial Number`, `Group Tag`, `Assigned User`, `Display name`), keyed by
  serial number: a retag for every row, new assigned users and names for some, one group tag
  cleared with `<null>`, empty cells left unchanged. The serials are those of the emulator's
  demo tenant (`batch.emulator.devices.demo_devices()`, the first 20 of its 40 devices, some
  with leading zeros), so `--key serialNumber` finds every row there.

The ids are reproducible on their own: the first 300 draws of
`uuid.UUID(int=rng.getrandbits(128), version=4)` with `rng = random.Random(2026)`, so the demo
and tests can preload the Graph emulator with exactly these events.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import random
import re
import uuid
import zipfile
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
ROWS = 300
SEED = 2026

COLUMNS = [
    "id",
    "deviceSerialNumber",
    "managedDeviceName",
    "userPrincipalName",
    "windowsAutopilotDeploymentProfileDisplayName",
    "enrollmentState",
    "deploymentState",
    "deviceSetupStatus",
    "accountSetupStatus",
    "eventDateTime",
    "deploymentStartDateTime",
    "deploymentEndDateTime",
    "deploymentDuration",
    "deviceSetupDuration",
    "accountSetupDuration",
    "osVersion",
    "enrollmentFailureDetails",
]

FIRST = [
    "adele",
    "alex",
    "ben",
    "chloe",
    "diego",
    "emma",
    "farid",
    "grace",
    "hana",
    "ivan",
    "jonas",
    "kira",
    "lena",
    "mateo",
    "nora",
]
LAST = [
    "vance",
    "wilber",
    "smith",
    "nguyen",
    "garcia",
    "mueller",
    "okafor",
    "tanaka",
    "rossi",
    "dubois",
    "jensen",
    "silva",
]
PROFILES = ["Autopilot - User Driven", "Autopilot - Self Deploying", "Autopilot - Pre-provisioned"]
OS_VERSIONS = ["10.0.19045.3693", "10.0.19045.4291", "10.0.22631.2861", "10.0.22631.3447"]
# (offset as written, minutes east of UTC)
OFFSETS = [("Z", 0), ("+01:00", 60), ("+02:00", 120), ("-05:00", -300), ("-08:00", -480)]
# The spellings admins type; the tool sends the canonical member.
SUCCESS = ["success", "Success", "SUCCESS", "success"]
FAILURE = ["failure", "Failure"]
IN_PROGRESS = ["inProgress", "InProgress", "inprogress"]
ENROLLED = ["enrolled", "Enrolled", "ENROLLED"]


def event_ids(count: int = ROWS, seed: int = SEED) -> list[str]:
    """The sample's event ids, in file order (what the emulator preload needs)."""
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]


def _serial(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:  # Surface: 12 digits, often with a leading zero
        return f"0{rng.randrange(10**11):011d}"
    if kind == 1:  # Dell service tag
        return "".join(rng.choice("0123456789BCDFGHJKLMNPQRSTVWXYZ") for _ in range(7))
    if kind == 2:  # HP
        suffix = "".join(rng.choice("ABCDEFGHJKLMNPQRSTVWXYZ") for _ in range(3))
        return f"5CG{rng.randrange(10**4):04d}{suffix}"
    return f"PF{''.join(rng.choice('0123456789ABCDEFGHJKLMNPQRSTVWXYZ') for _ in range(6))}"


def _stamp(moment: dt.datetime, offset: str, minutes: int, fraction: bool) -> str:
    local = moment + dt.timedelta(minutes=minutes)
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    if fraction:
        text += f".{local.microsecond:06d}{moment.microsecond % 10}"
    return text + offset


def _duration(seconds: float, timespan: bool) -> str:
    ticks = round(seconds * 10_000_000)
    whole, frac = divmod(ticks, 10_000_000)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if timespan:  # as PowerShell prints a TimeSpan
        return f"{hours:02d}:{minutes:02d}:{secs:02d}.{frac:07d}"
    text = "PT" + (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    return text + f"{secs}.{frac:07d}".rstrip("0").rstrip(".") + "S"


def sample_rows() -> list[dict[str, str]]:
    """The rows of events.csv / events.xlsx, deterministic."""
    rng = random.Random(SEED)
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(ROWS)]
    base = dt.datetime(2025, 9, 1, 7, 0, tzinfo=dt.UTC)
    rows = []
    for n, event_id in enumerate(ids):
        serial = _serial(rng)
        first, last = rng.choice(FIRST), rng.choice(LAST)
        profile = rng.choice(PROFILES)
        self_deploying = profile.endswith("Self Deploying")
        outcome = rng.choices(["success", "failure", "inProgress"], weights=[85, 10, 5])[0]
        start = base + dt.timedelta(
            minutes=rng.randrange(0, 60 * 24 * 90), microseconds=rng.randrange(10**6)
        )
        device_setup = rng.uniform(120, 1500)
        account_setup = 0.0 if self_deploying else rng.uniform(60, 900)
        total = device_setup + account_setup + rng.uniform(30, 300)
        end = start + dt.timedelta(seconds=total)
        offset, minutes = rng.choice(OFFSETS)
        timespan = n % 3 == 0  # every third row pastes PowerShell TimeSpan text
        states = {"success": SUCCESS, "failure": FAILURE, "inProgress": IN_PROGRESS}[outcome]
        row = {
            "id": event_id,
            "deviceSerialNumber": serial,
            "managedDeviceName": f"CONTOSO-{serial[-7:]}",
            "userPrincipalName": "<null>" if self_deploying else f"{first}.{last}@contoso.com",
            "windowsAutopilotDeploymentProfileDisplayName": profile,
            "enrollmentState": rng.choice(ENROLLED) if outcome != "failure" else "failed",
            "deploymentState": rng.choice(states),
            "deviceSetupStatus": rng.choice(SUCCESS) if outcome != "failure" else "failure",
            "accountSetupStatus": (
                "notAttempted" if self_deploying or outcome == "failure" else rng.choice(states)
            ),
            "eventDateTime": _stamp(end, offset, minutes, fraction=True),
            "deploymentStartDateTime": _stamp(start, offset, minutes, fraction=n % 2 == 0),
            "deploymentEndDateTime": _stamp(end, offset, minutes, fraction=n % 2 == 0),
            "deploymentDuration": _duration(total, timespan),
            "deviceSetupDuration": _duration(device_setup, timespan),
            "accountSetupDuration": _duration(account_setup, timespan),
            "osVersion": rng.choice(OS_VERSIONS),
            "enrollmentFailureDetails": (
                "0x80180014: the device is not allowed to enroll"
                if outcome == "failure"
                else "<null>"
            ),
        }
        # Real update files touch a few fields per row: leave some cells empty (unchanged).
        for column in ("osVersion", "deploymentStartDateTime", "managedDeviceName"):
            if rng.random() < 0.2:
                row[column] = ""
        rows.append(row)
    return rows


# One row per kind of row error; `_note` says what validate reports for it.
# fmt: off
BAD_ROWS: list[dict[str, str]] = [
    {"_note": "valid: sent as it is (for contrast)", "id": "b1e6a0c4-0d3f-4f6e-9a51-2f0c7d2e1a01",
     "enrollmentState": "Enrolled", "eventDateTime": "2025-10-01T09:30:00+02:00",
     "deploymentDuration": "00:21:03.5000000"},
    {"_note": "id: missing id", "id": "", "deviceSerialNumber": "0123456789012"},
    {"_note": "id: the id cannot be <null>", "id": "<null>", "deviceSerialNumber": "PF3ABCDE"},
    {"_note": "id: not a valid event id (contains / and a space)",
     "id": "b1e6a0c4/0d3f 4f6e", "deploymentState": "success"},
    {"_note": "id: id also on the next row (duplicate ids are never sent)",
     "id": "B1E6A0C4-0D3F-4F6E-9A51-2F0C7D2E1A02", "deploymentState": "success"},
    {"_note": "id: id also on the previous row (same id, other case and spaces)",
     "id": " b1e6a0c4-0d3f-4f6e-9a51-2f0c7d2e1a02 ", "deploymentState": "failure"},
    {"_note": "enrollmentState: must be one of the enrollmentState members (misspelt)",
     "id": "b1e6a0c4-0d3f-4f6e-9a51-2f0c7d2e1a03", "enrollmentState": "Enroled"},
    {"_note": "deploymentState: not nullable, so <null> is not allowed",
     "id": "b1e6a0c4-0d3f-4f6e-9a51-2f0c7d2e1a04", "deploymentState": "<null>"},
    {"_note": "eventDateTime: has no UTC offset (or pass --assume-tz)",
     "id": "b1e6a0c4-0d3f-4f6e-9a51-2f0c7d2e1a05", "eventDateTime": "2025-10-01 09:30:00"},
    {"_note": "eventDateTime: not a real calendar date (30 February)",
     "id": "b1e6a0c4-0d3f-4f6e-9a51-2f0c7d2e1a06", "eventDateTime": "2025-02-30T09:30:00Z"},
    {"_note": "eventDateTime: offset out of range",
     "id": "b1e6a0c4-0d3f-4f6e-9a51-2f0c7d2e1a07", "eventDateTime": "2025-10-01T09:30:00+15:00"},
    {"_note": "eventDateTime: not an ISO 8601 date and time",
     "id": "b1e6a0c4-0d3f-4f6e-9a51-2f0c7d2e1a08", "eventDateTime": "01/10/2025 09:30"},
    {"_note": "deploymentDuration: not a duration",
     "id": "b1e6a0c4-0d3f-4f6e-9a51-2f0c7d2e1a09", "deploymentDuration": "21 minutes"},
    {"_note": "deploymentDuration: TimeSpan minutes must be 0-59",
     "id": "b1e6a0c4-0d3f-4f6e-9a51-2f0c7d2e1a10", "deploymentDuration": "00:75:00"},
    {"_note": "targetedAppCount: not a whole number (legacy column, also warned about)",
     "id": "b1e6a0c4-0d3f-4f6e-9a51-2f0c7d2e1a11", "targetedAppCount": "3.5"},
    {"_note": "targetedAppCount: out of the Int32 range",
     "id": "b1e6a0c4-0d3f-4f6e-9a51-2f0c7d2e1a12", "targetedAppCount": "99999999999"},
    {"_note": "three problems in one row: every one is reported",
     "id": "b1e6a0c4-0d3f-4f6e-9a51-2f0c7d2e1a13", "enrollmentState": "done",
     "eventDateTime": "2025-10-01T25:00:00Z", "deploymentDuration": "-"},
    {"_note": "skipped, not invalid: nothing to change (only the id)",
     "id": "b1e6a0c4-0d3f-4f6e-9a51-2f0c7d2e1a14"},
]
# fmt: on
BAD_COLUMNS = [
    "id",
    "deviceSerialNumber",
    "enrollmentState",
    "deploymentState",
    "eventDateTime",
    "deploymentDuration",
    "targetedAppCount",
    "_note",
]

# Fixed zip entry times, so regenerating events.xlsx does not change its bytes.
_ZIP_TIME = (2026, 1, 1, 0, 0, 0)


def write_csv(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    """UTF-8 with BOM and CRLF, as Excel writes and reads CSV."""
    with path.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def write_xlsx(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    """Every cell as text (format `@`), header frozen; reproducible bytes."""
    frame = pd.DataFrame(rows, columns=columns, dtype=str)
    buffer = io.BytesIO()
    with pd.ExcelWriter(buffer, engine="openpyxl") as writer:
        frame.to_excel(writer, index=False, sheet_name="Events")
        book = writer.book
        # openpyxl stores naive UTC times.
        book.properties.created = dt.datetime(2026, 1, 1)  # noqa: DTZ001
        book.properties.creator = "autopilot-batch make_samples.py"
        sheet = writer.sheets["Events"]
        sheet.freeze_panes = "A2"
        for cells in sheet.iter_cols(min_row=2):
            for cell in cells:
                cell.number_format = "@"
    # openpyxl stamps zip entries with the current time; rewrite them with a fixed one.
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source:
        entries = [(info, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        for info, data in entries:
            fixed_info = zipfile.ZipInfo(info.filename, date_time=_ZIP_TIME)
            fixed_info.compress_type = zipfile.ZIP_DEFLATED
            fixed_info.external_attr = 0o644 << 16
            if info.filename == "docProps/core.xml":
                # openpyxl sets "modified" to the time of saving, whatever the workbook says.
                data = re.sub(
                    rb"(<dcterms:modified[^>]*>)[^<]*", rb"\g<1>2026-01-01T00:00:00Z", data
                )
            target.writestr(fixed_info, data)


DEVICE_ROWS = 20
DEVICE_COLUMNS = ["Device Serial Number", "Group Tag", "Assigned User", "Display name"]
# The retag of a site rollout: every device gets its site's tag (dynamic groups key on it).
DEVICE_TAGS = ["EMEA-Sales", "EMEA-Engineering", "EMEA-Kiosk", "AMER-Sales", "AMER-Shared"]


def device_rows() -> list[dict[str, str]]:
    """The devices.csv rows, drawn from the emulator's demo tenant (see the module docstring)."""
    from batch.emulator.devices import demo_devices

    rng = random.Random(SEED + 16)
    rows = []
    for number, device in enumerate(demo_devices()[:DEVICE_ROWS]):
        serial = str(device["serialNumber"])
        tag = rng.choice(DEVICE_TAGS)
        # Row 9 takes its device out of every tag-based group.
        row = {"Device Serial Number": serial, "Group Tag": "<null>" if number == 7 else tag}
        if rng.random() < 0.5:
            row["Assigned User"] = f"{rng.choice(FIRST)}.{rng.choice(LAST)}@contoso.com"
        if rng.random() < 0.4:
            row["Display name"] = f"{tag.split('-')[0]}-{serial[-7:]}"
        rows.append(row)
    return rows


def main() -> None:
    """Write events.csv, events.xlsx, bad_rows.csv and devices.csv next to this script."""
    rows = sample_rows()
    write_csv(HERE / "events.csv", COLUMNS, rows)
    write_xlsx(HERE / "events.xlsx", COLUMNS, rows)
    write_csv(HERE / "bad_rows.csv", BAD_COLUMNS, BAD_ROWS)
    devices = device_rows()
    write_csv(HERE / "devices.csv", DEVICE_COLUMNS, devices)
    print(
        f"wrote {len(rows)} rows to events.csv and events.xlsx, {len(BAD_ROWS)} to bad_rows.csv, "
        f"{len(devices)} to devices.csv"
    )


if __name__ == "__main__":
    main()
