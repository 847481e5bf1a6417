"""Issue 16's must-hold runs: Autopilot device identities through the real CLI and the emulator.

The emulator answers as Intune does by default (204 for the action, PATCH refused, pages of 50,
`$select` on devices answering 500, Intune's error envelope); only its budgets are scaled down
(per 2 s instead of per 20 s) so the runs take seconds. Its device write budget is below the
tool's, so 429s are certain and the "nothing sent during a Retry-After" promise is tested.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batch.emulator import EmulatorConfig, EmulatorServer
from batch.emulator.devices import DeviceStore
from batch.model import Rate
from tests.e2e import TOKEN, cli, cli_env, read_csv, start_cli, write_csv

DEVICES = 300
UNKNOWN = "NOSUCHSERIAL1"


@pytest.fixture
def tenant() -> Iterator[EmulatorServer]:
    """300 seeded devices plus one whose serial another device shares (an ambiguous serial)."""
    store = DeviceStore()
    store.seed(DEVICES, seed=16)
    twin = dict(store.list()[0])
    twin["id"] = "00000000-0000-4000-8000-000000000016"
    store.add(twin)
    config = EmulatorConfig(
        token=TOKEN,
        seed=16,
        # Below the tool's 100/2: the tool meets 429s with Retry-After, as a busy tenant's does.
        device_write_limit=Rate(80, 2),
        device_tenant_write_limit=Rate(160, 2),
        read_limit=Rate(2000, 2),
        tenant_read_limit=Rate(4000, 2),
    )
    with EmulatorServer(config, devices=store) as server:
        yield server


def by_id(server: EmulatorServer) -> dict[str, dict[str, Any]]:
    return {str(d["id"]): dict(d) for d in server.devices.list()}


def run_json(*args: str | Path) -> dict[str, Any]:
    result = cli(*args, "--json")
    assert result.stdout, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    data["_exit"] = result.returncode
    data["_stderr"] = result.stderr
    return data


def test_group_tags_for_300_devices_by_serial(tenant: EmulatorServer, tmp_path: Path) -> None:
    before = by_id(tenant)
    twin_serial = str(before["00000000-0000-4000-8000-000000000016"]["serialNumber"])
    rng = random.Random(5)
    wanted: dict[str, str] = {}
    rows: list[dict[str, str]] = []
    for device in before.values():
        serial = str(device["serialNumber"])
        if serial == twin_serial:
            continue
        tag = f"EMEA-{rng.choice(['Sales', 'Kiosk', 'Lab'])}-{rng.randrange(100)}"
        wanted[str(device["id"])] = tag
        # The portal's headers; serials as admins paste them (case and spaces vary).
        rows.append({"Device Serial Number": f" {serial.lower()} ", "Group Tag": tag})
    rows.append({"Device Serial Number": twin_serial, "Group Tag": "Twin"})
    rows.append({"Device Serial Number": UNKNOWN, "Group Tag": "Nobody"})
    source = write_csv(tmp_path / "tags.csv", rows)
    url = tenant.url

    first = run_json(
        "run", source, "--resource", "devices", "--key", "serialNumber",
        "--graph-url", url, "--write-limit", "100/2", "--out", tmp_path / "run1",
    )  # fmt: skip
    assert first["_exit"] == 1, first["_stderr"]
    assert first["counts"]["updated"] == len(wanted) == DEVICES - 1
    assert first["counts"]["invalid"] == 2
    assert first["resource"] == "devices"
    stats = tenant.stats()
    # Only POSTs to updateDeviceProperties: no PATCH at all, one write per device.
    assert stats["patches"] == {}
    assert stats["device_writes"] == dict.fromkeys(stats["device_writes"], 1)
    assert len(stats["device_writes"]) == len(wanted)
    assert stats["throttled"] > 0 and stats["during_retry_after"] == 0
    after = by_id(tenant)
    for device_id, device in after.items():
        expected = {
            **before[device_id],
            "groupTag": wanted.get(device_id, before[device_id]["groupTag"]),
        }
        assert device == expected, device_id
    problems = {r["_row"]: r["_error"] for r in read_csv(tmp_path / "run1" / "failures.csv")}
    assert any(f"2 devices with serial '{twin_serial}'" in e for e in problems.values())
    assert any(f"no device with serial '{UNKNOWN}'" in e for e in problems.values())
    requests_sent = stats["writes"]

    # The same file again with --only-changed: every device already holds its tag.
    again = run_json(
        "run", source, "--resource", "devices", "--key", "serialNumber", "--only-changed",
        "--graph-url", url, "--write-limit", "100/2", "--out", tmp_path / "run2",
    )  # fmt: skip
    assert again["counts"]["unchanged"] == len(wanted)
    assert again["writes_sent"] == 0
    assert tenant.stats()["writes"] == requests_sent

    # revert: every device gets its group tag back, through the action again.
    undone = run_json(
        "revert", tmp_path / "run1", "--write-limit", "100/2", "--out", tmp_path / "undo"
    )
    assert undone["_exit"] == 0, undone["_stderr"]
    assert undone["counts"]["updated"] == len(wanted)
    assert undone["resource"] == "devices"
    assert by_id(tenant) == before
    assert tenant.stats()["patches"] == {}

    # export → run --only-changed of the untouched file: nothing is written.
    exported = tmp_path / "devices.csv"
    made = run_json("export", exported, "--resource", "devices", "--graph-url", url)
    assert made["events_written"] == DEVICES + 1
    writes = tenant.stats()["writes"]
    fed = run_json(
        "run", exported, "--resource", "devices", "--only-changed",
        "--graph-url", url, "--write-limit", "100/2", "--out", tmp_path / "run3",
    )  # fmt: skip
    assert fed["_exit"] == 0, fed["_stderr"]
    assert fed["writes_sent"] == 0
    assert fed["counts"]["skipped"] == DEVICES + 1
    assert tenant.stats()["writes"] == writes
    assert by_id(tenant) == before


def test_verify_catches_a_write_accepted_but_not_applied(tmp_path: Path) -> None:
    store = DeviceStore()
    ids = store.seed(30, seed=3)
    config = EmulatorConfig(token=TOKEN, seed=3, device_write_limit=Rate(100, 2))
    with EmulatorServer(config, devices=store) as server:
        # One device takes effect only on the second call (microsoft-graph-docs#11620), one never.
        server.skip_writes(ids[0], 1)
        server.skip_writes(ids[1], 5)
        rows = [{"id": i, "groupTag": f"Tag-{n}"} for n, i in enumerate(ids)]
        source = write_csv(tmp_path / "tags.csv", rows)
        plain = run_json(
            "run", source, "--resource", "devices", "--graph-url", server.url,
            "--out", tmp_path / "plain",
        )  # fmt: skip
        # Without --verify both "succeed": that is the trap.
        assert plain["counts"]["updated"] == 30
        assert server.devices.get(ids[1])["groupTag"] != "Tag-1"  # type: ignore[index]
        server.skip_writes(ids[0], 1)
        rows = [{"id": i, "groupTag": f"New-{n}"} for n, i in enumerate(ids)]
        source = write_csv(tmp_path / "again.csv", rows)
        checked = run_json(
            "run", source, "--resource", "devices", "--verify", "--graph-url", server.url,
            "--out", tmp_path / "verified",
        )  # fmt: skip
        assert checked["_exit"] == 1
        assert checked["counts"]["updated"] == 29 and checked["counts"]["failed"] == 1
        assert checked["verify"] == {"verified": 29, "resent": 2, "not_applied": 1, "unverified": 0}
        assert checked["error_codes"] == {"NotApplied": 1}
        # A resend is no retry of an error: the retries still add up to their reasons.
        assert sum(checked["retry_reasons"].values()) == checked["retries"]
        assert server.devices.get(ids[0])["groupTag"] == "New-0"  # type: ignore[index]
        results = {r["id"]: r for r in read_csv(tmp_path / "verified" / "results.csv")}
        assert results[ids[1]]["outcome"] == "failed"
        assert "accepted but not applied" in results[ids[1]]["error_message"]
        assert results[ids[0]]["outcome"] == "updated"
        assert results[ids[0]]["last_error"] == "accepted but not applied"
        failures = read_csv(tmp_path / "verified" / "failures.csv")
        assert [f["id"] for f in failures] == [ids[1]]


@pytest.mark.parametrize("mode", ["single", "batch"])
def test_missing_rights_name_the_devices_permission(mode: str, tmp_path: Path) -> None:
    store = DeviceStore()
    ids = store.seed(5, seed=1)
    config = EmulatorConfig(token=TOKEN, deny_permission="writes")
    with EmulatorServer(config, devices=store) as server:
        source = write_csv(tmp_path / "d.csv", [{"id": i, "groupTag": "X"} for i in ids])
        result = run_json(
            "run", source, "--resource", "devices", "--mode", mode, "--graph-url", server.url,
            "--out", tmp_path / "run",
        )  # fmt: skip
    assert result["_exit"] == 3
    assert "lacks the permission DeviceManagementServiceConfig.ReadWrite.All" in result["error"]


def test_a_device_run_interrupted_at_full_speed_resumes_to_the_exact_state(
    tmp_path: Path,
) -> None:
    """Resume (issue 16's "same guarantees"): SIGINT after the first window, then `--resume`.

    Every device ends with its group tag, none is written twice (the ledger knows what went
    out), and the resumed process starts from the interrupted one's window: no 429.
    """
    store = DeviceStore()
    ids = store.seed(200, seed=61)
    config = EmulatorConfig(
        token=TOKEN,
        seed=61,
        device_write_limit=Rate(100, 5),
        device_tenant_write_limit=Rate(200, 5),
        read_limit=Rate(1000, 5),
        tenant_read_limit=Rate(2000, 5),
        latency_ms=50,
    )
    with EmulatorServer(config, devices=store) as server:
        devices = by_id(server)
        wanted = {i: f"RESUME-{n:03d}" for n, i in enumerate(ids)}
        rows = [
            {"Device Serial Number": str(devices[i]["serialNumber"]), "Group Tag": tag}
            for i, tag in wanted.items()
        ]
        source = write_csv(tmp_path / "tags.csv", rows)
        out = tmp_path / "run"
        args = [
            "run", str(source), "--resource", "devices", "--key", "serialNumber",
            "--graph-url", server.url, "--write-limit", "100/5", "--out", str(out),
            "--json", "--quiet",
        ]  # fmt: skip
        first = start_cli(args, cli_env(TOKEN))
        deadline = time.monotonic() + 60
        while sum(server.stats()["device_writes"].values()) < 100:  # type: ignore[union-attr]
            assert first.poll() is None, first.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "fewer than 100 device writes after 60 s"
            time.sleep(0.01)
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=60)
        assert first.returncode == 130, err[-2000:]

        resumed = start_cli([*args, "--resume"], cli_env(TOKEN))
        stdout, stderr = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, stderr[-2000:]
        stats = server.stats()
        assert stats["throttled"] == 0, stats
        assert json.loads(stdout)["counts"]["updated"] == 200
        assert {i: d["groupTag"] for i, d in by_id(server).items()} == wanted
        writes = stats["device_writes"]
        assert isinstance(writes, dict)
        assert sorted(writes) == sorted(ids) and set(writes.values()) == {1}, writes
    assert {r["outcome"] for r in read_csv(out / "results.csv")} == {"updated"}
