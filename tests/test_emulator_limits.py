"""Throttling and faults of the emulator, end to end on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from batch.emulator import EmulatorConfig, EmulatorServer
from batch.model import Rate

EmulatorFactory = Callable[..., EmulatorServer]
EVENTS = "/beta/deviceManagement/autopilotEvents"


@pytest.fixture
def emulator_factory(emulator_factory: EmulatorFactory) -> EmulatorFactory:
    """The conftest factory, but a config given by fields starts from the friendly profile.

    This module checks the emulator's Graph mechanics where answers carry bodies to compare
    (PATCH 200 with the object, per-item `$batch` failures, whole-second Retry-After);
    tests/test_emulator_realistic.py checks the defaults, Intune's real answers.
    """

    def start(config: EmulatorConfig | None = None, **kwargs: Any) -> EmulatorServer:
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k not in ("store", "events")}
        if config is None:
            config = EmulatorConfig.friendly(**fields)
        return emulator_factory(config, **kwargs)

    return start


def writer(server: EmulatorServer, token: str = "t") -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"})


def test_steady_client_at_twice_the_limit(emulator_factory: EmulatorFactory) -> None:
    """Accepted writes never exceed the limit in any window; every 429 says when to come back."""
    limit = Rate(10, 1.0)
    server = emulator_factory(token="t", write_limit=limit, retry_after_format="decimal", events=5)
    event_id = str(server.store.list()[0]["id"])
    accepted: list[tuple[float, float]] = []  # (sent, answered) of each 200
    retry_afters: list[float] = []
    with writer(server) as c:
        start = time.monotonic()
        for n in range(50):  # 20 per second for 2.5 s, twice the limit
            time.sleep(max(0.0, start + n * 0.05 - time.monotonic()))
            sent = time.monotonic()
            response = c.patch(f"{EVENTS}/{event_id}", json={"osVersion": str(n)})
            answered = time.monotonic()
            if response.status_code == 200:
                accepted.append((sent, answered))
            else:
                assert response.status_code == 429
                retry_afters.append(float(response.headers["Retry-After"]))
        assert retry_afters and all(0 < r <= limit.seconds for r in retry_afters)
        # The server admitted each request between its sending and its answer, so any
        # limit+1 consecutive admissions span at least one window as the client saw them.
        for first, last in zip(accepted, accepted[limit.count :], strict=False):
            assert last[1] - first[0] >= limit.seconds
        assert len(accepted) >= 2 * limit.count  # the budget is used, not wasted
        # Waiting exactly the advertised time is enough.
        while True:
            response = c.patch(f"{EVENTS}/{event_id}", json={"osVersion": "again"})
            if response.status_code == 429:
                time.sleep(float(response.headers["Retry-After"]))
                continue
            assert response.status_code == 200
            break
    stats = server.stats()
    assert stats["throttled"] >= len(retry_afters)
    assert stats["during_retry_after"] > 0  # this client ignored Retry-After


def test_obedient_client_never_sends_during_retry_after(
    emulator_factory: EmulatorFactory,
) -> None:
    server = emulator_factory(
        token="t", write_limit=Rate(3, 0.5), retry_after_format="decimal", events=3
    )
    event_id = str(server.store.list()[0]["id"])
    ok = 0
    with writer(server) as c:
        while ok < 8:
            response = c.patch(f"{EVENTS}/{event_id}", json={"osVersion": str(ok)})
            if response.status_code == 429:
                time.sleep(float(response.headers["Retry-After"]))
            else:
                ok += 1
    stats = server.stats()
    assert stats["throttled"] >= 1
    assert stats["during_retry_after"] == 0


@pytest.mark.parametrize(
    ("fmt", "check"),
    [
        ("int", lambda v: v is not None and v.isdigit()),
        ("decimal", lambda v: v is not None and float(v) > 0),
        ("none", lambda v: v is None),
    ],
)
def test_retry_after_formats(
    emulator_factory: EmulatorFactory, fmt: str, check: Callable[[str | None], bool]
) -> None:
    server = emulator_factory(token="t", write_limit=Rate(1, 2.5), retry_after_format=fmt)
    with writer(server) as c:
        c.patch(f"{EVENTS}/x", json={})
        response = c.patch(f"{EVENTS}/x", json={})
    assert response.status_code == 429
    assert check(response.headers.get("Retry-After"))


def test_reads_have_their_own_larger_budget(emulator_factory: EmulatorFactory) -> None:
    server = emulator_factory(token="t", write_limit=Rate(1, 30), read_limit=Rate(3, 30), events=1)
    with writer(server) as c:
        assert c.patch(f"{EVENTS}/x", json={}).status_code == 404  # costs budget all the same
        assert c.patch(f"{EVENTS}/x", json={}).status_code == 429
    server.reset()
    with writer(server) as c:
        assert [c.get(EVENTS).status_code for _ in range(4)] == [200, 200, 200, 429]


def test_tenant_limit_throttles_a_second_app(emulator_factory: EmulatorFactory) -> None:
    server = emulator_factory(write_limit=Rate(3, 30), tenant_write_limit=Rate(4, 30))
    with writer(server, "app-a") as a, writer(server, "app-b") as b:
        assert [a.patch(f"{EVENTS}/x", json={}).status_code for _ in range(3)] == [404] * 3
        assert [b.patch(f"{EVENTS}/x", json={}).status_code for _ in range(2)] == [404, 429]


# --- faults -------------------------------------------------------------------------------------


def fault_sequence(server: EmulatorServer, n: int) -> list[str]:
    seen = []
    with writer(server) as c:
        for _ in range(n):
            try:
                seen.append(str(c.get(EVENTS).status_code))
            except httpx.RemoteProtocolError:
                seen.append("drop")
    return seen


def test_faults_are_reproducible_with_the_same_seed(emulator_factory: EmulatorFactory) -> None:
    one = fault_sequence(emulator_factory(token="t", fault_rate=0.4, seed=7), 40)
    two = fault_sequence(emulator_factory(token="t", fault_rate=0.4, seed=7), 40)
    other = fault_sequence(emulator_factory(token="t", fault_rate=0.4, seed=8), 40)
    assert one == two
    assert one != other
    assert {"200", "503", "504", "drop"} <= set(one)


def test_fault_answers(emulator_factory: EmulatorFactory) -> None:
    server = emulator_factory(token="t", fault_rate=1.0, seed=3, write_limit=Rate(100, 2))
    before = server.store.digest()
    statuses: dict[str, int] = {}
    with writer(server) as c:
        for _ in range(30):
            try:
                response = c.patch(
                    f"{EVENTS}/x", json={"osVersion": "never"}, headers={"client-request-id": "c"}
                )
            except httpx.RemoteProtocolError:
                statuses["drop"] = statuses.get("drop", 0) + 1
                continue
            statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
            error = response.json()["error"]
            assert response.headers["client-request-id"] == "c"
            assert error["innerError"]["request-id"] == response.headers["request-id"]
            if response.status_code == 503:
                assert error["code"] == "ServiceUnavailable"
                assert response.headers["Retry-After"] == "1"  # 1 s scaled to the 2 s window
            else:
                assert response.status_code == 504 and error["code"] == "GatewayTimeout"
    assert set(statuses) == {"503", "504", "drop"}
    stats = server.stats()
    assert stats["faults"] == {
        "503": statuses["503"],
        "504": statuses["504"],
        "drop": statuses["drop"],
    }
    assert stats["writes"] == 0 and stats["patches"] == {}  # faults come before the write
    assert server.store.digest() == before


def test_reset_restarts_the_fault_sequence(emulator_factory: EmulatorFactory) -> None:
    server = emulator_factory(token="t", fault_rate=0.5, seed=11)
    first = fault_sequence(server, 20)
    server.reset()
    assert fault_sequence(server, 20) == first


def test_admin_and_sign_in_routes_never_fault(emulator_factory: EmulatorFactory) -> None:
    server = emulator_factory(token="t", fault_rate=1.0, seed=1)
    with httpx.Client(base_url=server.url) as c:
        assert all(c.get("/_emulator/stats").status_code == 200 for _ in range(10))
        discovery = "/tenant/v2.0/.well-known/openid-configuration"
        assert all(c.get(discovery).status_code == 200 for _ in range(10))
