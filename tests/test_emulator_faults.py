"""The emulator's fault mix, drops after the work, per-app counters, another app's load."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from batch.emulator import EmulatorConfig, EmulatorServer
from batch.errors import ConfigError
from batch.model import Rate

EmulatorFactory = Callable[..., EmulatorServer]
EVENTS = "/beta/deviceManagement/autopilotEvents"


def client(server: EmulatorServer, token: str = "t") -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"})


def test_fault_mix_of_503s_only_with_a_chosen_retry_after(
    emulator_factory: EmulatorFactory,
) -> None:
    server = emulator_factory(
        token="t",
        fault_rate=1.0,
        fault_mix=(("503", 1.0),),
        fault_retry_after=1.0,
        write_limit=Rate(100, 4),  # the scaled default would be 0.2 s
        seed=5,
    )
    with client(server) as c:
        answers = [c.get(EVENTS) for _ in range(12)]
    assert {a.status_code for a in answers} == {503}
    assert {a.headers["Retry-After"] for a in answers} == {"1"}
    assert server.stats()["faults"] == {"503": 12, "504": 0, "drop": 0}


def test_a_drop_after_the_work_applies_the_write(emulator_factory: EmulatorFactory) -> None:
    server = emulator_factory(
        token="t", fault_rate=1.0, fault_mix=(("drop", 1.0),), drop_applied=1.0, events=3
    )
    event_id = str(server.store.list()[0]["id"])
    with client(server) as c, pytest.raises(httpx.RemoteProtocolError):
        c.patch(f"{EVENTS}/{event_id}", json={"userPrincipalName": "after@drop.example"})
    stats = server.stats()
    assert stats["faults"] == {"503": 0, "504": 0, "drop": 1}
    assert stats["faults_applied"] == 1
    assert stats["writes"] == 1 and stats["patches"] == {event_id: 1}
    assert server.store.get(event_id)["userPrincipalName"] == "after@drop.example"  # type: ignore[index]


def test_half_of_the_drops_applied_is_a_seeded_draw(emulator_factory: EmulatorFactory) -> None:
    def applied(seed: int) -> int:
        server = emulator_factory(
            token="t",
            fault_rate=1.0,
            fault_mix=(("drop", 1.0),),
            drop_applied=0.5,
            seed=seed,
            events=1,
        )
        event_id = str(server.store.list()[0]["id"])
        with client(server) as c:
            for _ in range(40):
                with pytest.raises(httpx.RemoteProtocolError):
                    c.patch(f"{EVENTS}/{event_id}", json={"userPrincipalName": "x@y.example"})
        stats = server.stats()
        assert stats["writes"] == stats["faults_applied"]
        return int(stats["faults_applied"])  # type: ignore[call-overload]

    first = applied(9)
    assert 8 <= first <= 32
    assert applied(9) == first


def test_stats_per_app_in_open_mode(emulator_factory: EmulatorFactory) -> None:
    """Without a static token any bearer names its app: two apps of one tenant, told apart."""
    server = emulator_factory(write_limit=Rate(3, 60), events=1)
    event_id = str(server.store.list()[0]["id"])
    body = {"userPrincipalName": "a@b.example"}
    with client(server, "ours") as ours, client(server, "theirs") as theirs:
        # The tenant's write budget is 200/20 s by default: "theirs" is refused by its own.
        assert [theirs.patch(f"{EVENTS}/{event_id}", json=body).status_code for _ in range(4)] == [
            204,
            204,
            204,
            429,
        ]
        assert ours.patch(f"{EVENTS}/{event_id}", json=body).status_code == 204
        assert ours.get(EVENTS).status_code == 200
    apps = server.stats()["apps"]
    assert apps == {
        "ours": {"reads": 1, "writes": 1, "throttled": 0, "during_retry_after": 0},
        "theirs": {"reads": 0, "writes": 3, "throttled": 1, "during_retry_after": 0},
    }


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"fault_mix": (("500", 1.0),)}, id="unknown-kind"),
        pytest.param({"fault_mix": (("503", -1.0),)}, id="negative-weight"),
        pytest.param({"fault_rate": 0.1, "fault_mix": (("503", 0.0),)}, id="no-kind-left"),
        pytest.param({"fault_retry_after": -1.0}, id="negative-retry-after"),
        pytest.param({"drop_applied": 1.5}, id="share-above-one"),
    ],
)
def test_fault_settings_are_checked(fields: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        EmulatorConfig(**fields)  # type: ignore[arg-type]


def test_background_writes_of_another_app_take_the_tenants_budget(
    emulator_factory: EmulatorFactory,
) -> None:
    """Another app's load always gets through; the client under test gets what is left."""
    server = emulator_factory(
        write_limit=Rate(3, 60), tenant_write_limit=Rate(5, 60), retry_after_format="int", events=1
    )
    event_id = str(server.store.list()[0]["id"])
    server.background_writes("other", 4)
    with client(server, "ours") as ours:
        answers = [
            ours.patch(f"{EVENTS}/{event_id}", json={"userPrincipalName": "a@b.example"})
            for _ in range(2)
        ]
    # The tenant's 5 writes a minute, less the other app's 4, leave one (not the app's 3).
    assert [a.status_code for a in answers] == [204, 429]
    assert float(answers[1].headers["Retry-After"]) > 50
    apps = server.stats()["apps"]
    assert apps["other"]["writes"] == 4  # type: ignore[index,call-overload]
    assert apps["ours"]["writes"] == 1  # type: ignore[index,call-overload]
