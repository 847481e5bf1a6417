"""`batch.options`: the parts check themselves, flat names round-trip, one `touches_graph`."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from typer.testing import CliRunner

from batch.cli import app
from batch.errors import InputFileError, UsageError
from batch.mapper import InputOptions, Prepared
from batch.model import Rate
from batch.options import (
    FLAT_FIELDS,
    Judging,
    RunOptions,
    Sending,
    Source,
    Target,
    flat_field_types,
    key_choice,
)

SERIAL = "deviceSerialNumber"


@pytest.mark.parametrize("part", [Sending, Target, Judging])
def test_parts_are_frozen_and_keyword_only(part: type[Any]) -> None:
    value = part()
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.x = 1
    first = dataclasses.fields(part)[0]
    with pytest.raises(TypeError):
        part(getattr(value, first.name))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"batch_size": 21}, "--batch-size must be between 1 and 20", id="batch"),
        pytest.param({"batch_size": 0}, "--batch-size must be between 1 and 20", id="zero"),
        pytest.param({"concurrency": 0}, "--concurrency must be at least 1", id="concurrency"),
        pytest.param({"max_retries": -1}, "--max-retries must be 0 or more", id="retries"),
        pytest.param({"mode": "turbo"}, "--mode must be single or batch", id="mode"),
    ],
)
def test_sending_refuses_impossible_values_when_built(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Sending(**fields)


def test_the_read_budget_defaults_to_ten_times_the_write_budget() -> None:
    assert Sending(write_limit=Rate(50, 10)).reads == Rate(500, 10)
    assert Sending(read_limit=Rate(7, 3)).reads == Rate(7, 3)


@pytest.mark.parametrize(
    ("key", "pick", "expected"),
    [
        pytest.param(None, None, None, id="neither"),
        pytest.param("serial", None, SERIAL, id="spelling"),
        pytest.param("Device Serial Number", "latest", SERIAL, id="with-pick"),
        pytest.param("managed_device_name", None, "managedDeviceName", id="name"),
    ],
)
def test_key_choice_names_the_key_property(
    key: str | None, pick: str | None, expected: str | None
) -> None:
    assert key_choice(key, pick) == expected


@pytest.mark.parametrize(
    ("key", "pick", "message"),
    [
        pytest.param(None, "latest", "--pick chooses among events with the same --key", id="alone"),
        pytest.param(SERIAL, "first", "--pick must be latest, not 'first'", id="pick"),
        pytest.param("id", None, "--key must be deviceSerialNumber or managedDeviceName", id="key"),
        # A bad --pick is named before a bad --key, as the CLI always did.
        pytest.param("id", "first", "--pick must be latest", id="both"),
    ],
)
def test_key_choice_refuses(key: str | None, pick: str | None, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        key_choice(key, pick)


def test_a_source_judges_its_pick_against_its_key() -> None:
    with pytest.raises(UsageError, match="pass --key too"):
        Source(file=Path("a.csv"), pick="latest")
    source = Source(file=Path("a.csv"), reading=InputOptions(key=SERIAL), pick="latest")
    assert source.pick == "latest"


@pytest.mark.parametrize(
    ("dry_run", "only_changed", "key", "expected"),
    [
        pytest.param(False, False, None, True, id="write"),
        pytest.param(True, False, None, False, id="plain-dry-run"),
        pytest.param(True, True, None, True, id="dry-run-reads-values"),
        pytest.param(True, False, SERIAL, True, id="dry-run-finds-ids"),
        pytest.param(False, True, SERIAL, True, id="all"),
    ],
)
def test_touches_graph(dry_run: bool, only_changed: bool, key: str | None, expected: bool) -> None:
    options = RunOptions(
        source=Source(file=Path("a.csv"), reading=InputOptions(key=key)),
        judging=Judging(only_changed=only_changed),
        dry_run=dry_run,
    )
    assert options.touches_graph is expected


def test_flat_names_round_trip_through_the_parts() -> None:
    flat = {
        "mode": "single",
        "batch_size": 5,
        "write_limit": Rate(10, 2),
        "read_limit": Rate(90, 2),
        "concurrency": 2,
        "max_retries": 1,
        "graph_root": "http://127.0.0.1:1",
        "cloud": "usgov",
        "only_changed": True,
        "backup": False,
        "force": True,
        "accept_lost_zeros": True,
        "verify": True,
        "pick": "latest",
        "out": Path("o"),
        "resume": True,
        "dry_run": True,
        "runs_root": Path("r"),
    }
    assert set(flat) == set(FLAT_FIELDS), "a new option needs a sample value here"
    options = RunOptions.from_flat(input=Path("in.csv"), reading=InputOptions(key=SERIAL), **flat)
    assert options.flat() == flat
    assert options.sending == Sending(
        mode="single",
        batch_size=5,
        write_limit=Rate(10, 2),
        read_limit=Rate(90, 2),
        concurrency=2,
        max_retries=1,
    )
    assert options.target == Target(graph_root="http://127.0.0.1:1", cloud="usgov")
    assert options.source.file == Path("in.csv") and options.source.reading.key == SERIAL
    assert set(flat_field_types()) == set(FLAT_FIELDS)
    assert flat_field_types()["write_limit"] is Rate


def test_from_flat_refuses_names_that_are_no_option() -> None:
    with pytest.raises(TypeError, match="unknown run options: concurency"):
        RunOptions.from_flat(input=Path("a.csv"), concurency=4)


def test_recorded_options_keep_their_flat_keys() -> None:
    # summary.json and the ledger record these; scripts read them by these names.
    recorded = RunOptions(source=Source(file=Path("a.csv"))).recorded()
    assert recorded == {
        "resource": "events",
        "mode": "batch",
        "batch_size": 20,
        "write_limit": "100/20",
        "concurrency": 4,
        "max_retries": 8,
        "dry_run": False,
        "graph_root": "https://graph.microsoft.com",
        "cloud": "global",
        "only_changed": False,
        "backup": True,
        "key": None,
        "pick": None,
        "force": False,
        "accept_lost_zeros": False,
        "verify": False,
    }


# --- the CLI's one error handler ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["run", "x.csv", "--pick", "latest"],
            "Error: --pick chooses among events with the same --key: pass --key too",
            id="run-pick",
        ),
        pytest.param(
            ["run", "x.csv", "--batch-size", "30"],
            "Error: --batch-size must be between 1 and 20",
            id="run-batch-size",
        ),
        pytest.param(
            ["validate", "x.csv", "--key", "id"],
            "Error: --key must be deviceSerialNumber or managedDeviceName, not 'id'",
            id="validate-key",
        ),
        pytest.param(
            ["revert", "no-such-run", "--concurrency", "0"],
            "Error: ",
            id="revert",
        ),
    ],
)
def test_a_domain_error_is_one_line_and_its_exit_code(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
    as_json = CliRunner().invoke(app, [*args, "--json"])
    assert as_json.exit_code == 2
    answer = json.loads(as_json.stdout)
    assert answer["ok"] is False and answer["exit_code"] == 2
    assert f"Error: {answer['error']}\n" == as_json.stderr


def test_validate_json_closes_its_open_object_with_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An error while rows stream (after the head object was begun) must leave stdout one JSON
    # object: the head, the rows so far, then the error's fields.
    src = tmp_path / "in.csv"
    src.write_text("id,enrollmentState\na1,bogus\na2,bogus\n", encoding="utf-8")
    rows = Prepared.rows

    def failing(self: Prepared) -> Iterator[Any]:
        for n, row in enumerate(rows(self)):
            if n == 1:
                raise InputFileError("in.csv", "the disk went away")
            yield row

    monkeypatch.setattr(Prepared, "rows", failing)
    result = CliRunner().invoke(app, ["validate", str(src), "--json"])
    assert result.exit_code == 2
    answer = json.loads(result.stdout)
    assert answer["ok"] is False and answer["exit_code"] == 2
    assert answer["error"] == "in.csv: the disk went away"
    assert [item["row"] for item in answer["invalid_rows"]] == [2]
    assert result.stderr == "Error: in.csv: the disk went away\n"


def test_the_options_module_leaves_the_graph_client_unloaded() -> None:
    # `validate` judges --key/--pick here; it must not pay for httpx and MSAL to do so.
    code = (
        "import sys, batch.options; "
        "print(sorted(m for m in ('httpx', 'msal', 'batch.graph') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("mode", "concurrency", "senders"),
    [("batch", None, 4), ("single", None, 16), ("single", 3, 3), ("batch", 9, 9)],
)
def test_senders_default_by_mode_and_an_explicit_concurrency_wins(
    mode: Literal["single", "batch"], concurrency: int | None, senders: int
) -> None:
    # A single sender carries one write, a $batch sender up to 20: the defaults keep about as
    # many writes in flight in both modes (issue 14), and what the user asked for is kept.
    sending = Sending(mode=mode, concurrency=concurrency)
    assert sending.senders == senders
    options = RunOptions(source=Source(file=Path("in.csv")), sending=sending)
    assert options.recorded()["concurrency"] == senders
