"""What shapes one run: `RunOptions`, composed of small keyword-only parts.

The CLI, job files, `revert` and library callers all build a `RunOptions`; the engine only reads
it. Decisions worth knowing:

* **Small parts, as httpx's `Timeout` and `Limits`.** `Sending` (how requests go out), `Source`
  (the input file and how to read it), `Target` (which Graph) and `Judging` (what to do with
  the tenant's current values) are frozen, keyword-only and check themselves when built, so an
  impossible combination never reaches the engine. The run-level switches (`dry_run`, `resume`,
  where the run folder goes) stay on `RunOptions` itself.
* **One flat spelling outside.** Job files' `[run]` table, `summary.json`'s recorded options and
  the resume command line speak the flat names of the CLI (`batch_size`, `only_changed`, `pick`);
  `FLAT_FIELDS` maps each to its part, and `RunOptions.from_flat`/`flat` translate, so the files
  a user sees did not change when the parts came.
* **One answer to "does this run talk to Graph?"** `RunOptions.touches_graph`: a write run
  does, a dry run does only to read (`--only-changed`) or to find ids (`--key`). The CLI and job
  files ask it whether a token is needed; the engine asks it whether to open a Graph client.
* **`--key` and `--pick` are judged together in one place**, `key_choice`: the CLI, job files
  and `Source` (so library callers too) all go through it, with the resource: its `keys`, and
  `--pick latest` only where it has a `newest_by` (devices have none: serials are unique).
* **The resource is part of reading** (`InputOptions.resource`, `--resource`): it decides what
  a header means, so `validate` (which builds no `RunOptions`) gets it too; `Source.resource`
  and `RunOptions.resource` read it from there. The default write budget is the resource's
  documented one (`Resource.write_limit`): `from_flat` and the CLI take it when none is given.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from batch.errors import UsageError
from batch.mapper import InputOptions, key_property
from batch.model import Rate
from batch.resources import EVENTS, Resource

__all__ = [
    "FLAT_FIELDS",
    "PICKS",
    "Judging",
    "RunOptions",
    "Sending",
    "Source",
    "Target",
    "flat_field_types",
    "key_choice",
]

#: `--pick` choices: how to choose among several events with the same `--key`.
PICKS: Final = ("latest",)


def key_choice(key: str | None, pick: str | None, resource: Resource = EVENTS) -> str | None:
    """`--key` (any header spelling) as its property name, judged together with `--pick`.

    Raises `UsageError` naming the option at fault: `--pick` without `--key`, a `--pick` other
    than `latest`, `--pick` for a resource with nothing to pick by (`newest_by` None), or a
    `--key` that names no key property of `resource`.
    """
    if key is None:
        if pick is not None:
            raise UsageError(
                f"--pick chooses among {resource.noun}s with the same --key: pass --key too"
            )
        return None
    if pick is not None and pick not in PICKS:
        raise UsageError(f"--pick must be {' or '.join(PICKS)}, not {pick!r}")
    if pick is not None and resource.newest_by is None:
        raise UsageError(
            f"--pick {pick} cannot be used with --resource {resource.name}: {resource.noun}s "
            f"have no date to pick the newest by, so several {resource.noun}s with one "
            f"--key value are always invalid"
        )
    return key_property(key, resource)


#: Default senders per mode (`Sending.senders`).
BATCH_SENDERS: Final = 4
SINGLE_SENDERS: Final = 16


def _default_write_limit() -> Rate:
    return Rate(100, 20)


def _max_batch() -> int:
    # Imported when a `Sending` is built, not with this module: the planner pulls in the Graph
    # client (httpx, MSAL), which `validate` (it uses `key_choice`) never needs.
    from batch.planner import MAX_BATCH

    return MAX_BATCH


@dataclass(frozen=True, kw_only=True)
class Sending:
    """How requests go out: mode, `$batch` size, budgets, senders in flight, retries."""

    mode: Literal["single", "batch"] = "batch"
    # Default: the most requests one `$batch` may hold (`batch.planner.MAX_BATCH`).
    batch_size: int = field(default_factory=_max_batch)
    write_limit: Rate = field(default_factory=_default_write_limit)
    # None: ten times the write budget over the same window, as Graph's limits are (1000 vs 100).
    read_limit: Rate | None = None
    # Requests in flight at most; None: the mode's default (`senders`).
    concurrency: int | None = None
    max_retries: int = 8

    def __post_init__(self) -> None:
        most = _max_batch()
        if not 1 <= self.batch_size <= most:
            raise UsageError(f"--batch-size must be between 1 and {most}")
        if self.concurrency is not None and self.concurrency < 1:
            raise UsageError("--concurrency must be at least 1")
        if self.max_retries < 0:
            raise UsageError("--max-retries must be 0 or more")
        if self.mode not in ("single", "batch"):
            raise UsageError("--mode must be single or batch")

    @property
    def reads(self) -> Rate:
        """The read (any request) budget in effect."""
        return self.read_limit or Rate(self.write_limit.count * 10, self.write_limit.seconds)

    @property
    def senders(self) -> int:
        """The senders (and before-image readers) in effect: `concurrency`, or the mode's default.

        Decision (issue 14): a `$batch` sender carries up to 20 writes per request and a single
        sender one, so the same default would leave single mode a fifth of the writes in flight.
        The window's first burst then takes 25 round trips instead of 5, and every later window
        inherits that spread (its slots free one window after those answers): 4.5 % of a
        600-row run with 30 ms answers, ~6 % at Graph's real ~250 ms. 16 single senders keep
        about as many writes in flight as 4 batch senders do under the limiter's in-flight cap.
        """
        if self.concurrency is not None:
            return self.concurrency
        return SINGLE_SENDERS if self.mode == "single" else BATCH_SENDERS


@dataclass(frozen=True, kw_only=True)
class Source:
    """The input file and how to read it (sheet, header row, column map, `--key`, flags).

    `file` is a revert's run folder when the rows come from a `revert.RevertPlan`.
    """

    file: Path
    reading: InputOptions = field(default_factory=InputOptions)
    # With `reading.key` (--key): how to choose among several events with one key.
    pick: str | None = None

    def __post_init__(self) -> None:
        key_choice(self.reading.key, self.pick, self.reading.resource)

    @property
    def resource(self) -> Resource:
        """What the rows update (`--resource`; `InputOptions.resource`)."""
        return self.reading.resource


@dataclass(frozen=True, kw_only=True)
class Target:
    """Which Graph the run talks to: its root URL and the national cloud it belongs to.

    The credentials are not here: the caller passes a `TokenProvider` to `execute`, built for
    the same cloud (`batch.auth.build_token_provider`).
    """

    graph_root: str = "https://graph.microsoft.com"
    cloud: str = "global"


@dataclass(frozen=True, kw_only=True)
class Judging:
    """What the run does with the tenant's current values before it writes (`batch.changes`)."""

    # Read the current values first; rows already holding the given values are `unchanged`.
    only_changed: bool = False
    # Keep before-images (read before writing, stored before the PATCH); drives `revert`.
    backup: bool = True
    # Write fields someone else changed since the reverted run (revert) or since the export
    # (a file from `export`, batch.stamp); otherwise such fields are a `conflict`.
    force: bool = False
    # Send changes that look like Excel's damage to the current value (leading zeros stripped,
    # digits in scientific notation); otherwise such rows are `invalid` (batch.changes).
    accept_lost_zeros: bool = False
    # Read every written row back; a write accepted but not applied is sent once more, then
    # `failed` (batch.engine.verify).
    verify: bool = False


#: Each flat option name (the CLI's, job files' `[run]` keys, summary.json's) → the `RunOptions`
#: part that holds it (None: `RunOptions` itself); `Source`'s `reading` and `file` are not flat.
FLAT_FIELDS: Final[dict[str, str | None]] = {
    **{f.name: "sending" for f in dataclasses.fields(Sending)},
    **{f.name: "target" for f in dataclasses.fields(Target)},
    **{f.name: "judging" for f in dataclasses.fields(Judging)},
    "pick": "source",
    "out": None,
    "resume": None,
    "dry_run": None,
    "runs_root": None,
}

_PARTS: Final[dict[str, type[Any]]] = {
    "sending": Sending,
    "target": Target,
    "judging": Judging,
    "source": Source,
}


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Everything that shapes one run (the CLI, job files and `revert` build this)."""

    source: Source
    sending: Sending = field(default_factory=Sending)
    target: Target = field(default_factory=Target)
    judging: Judging = field(default_factory=Judging)
    dry_run: bool = False
    # Continue the interrupted run in `out` (or the newest run of this input under `runs_root`).
    resume: bool = False
    out: Path | None = None
    runs_root: Path = Path("runs")

    @classmethod
    def from_flat(
        cls, *, input: Path, reading: InputOptions | None = None, **flat: Any
    ) -> RunOptions:
        """Options from flat names (`FLAT_FIELDS`, as a job file's `[run]` table spells them).

        Raises `TypeError` for a name that is no option, `UsageError` for impossible values.
        """
        unknown = sorted(set(flat) - set(FLAT_FIELDS))
        if unknown:
            raise TypeError(f"unknown run options: {', '.join(unknown)}")
        parts: dict[str, dict[str, Any]] = {name: {} for name in _PARTS}
        own: dict[str, Any] = {}
        for name, value in flat.items():
            part = FLAT_FIELDS[name]
            (own if part is None else parts[part])[name] = value
        # The parts check themselves as they are built, in the order the CLI checks its options.
        reading = reading or InputOptions()
        # No budget given: the resource's documented one (`Resource.write_limit`).
        parts["sending"].setdefault("write_limit", reading.resource.write_limit)
        built = {name: _PARTS[name](**values) for name, values in parts.items() if name != "source"}
        source = Source(file=input, reading=reading, **parts["source"])
        return cls(source=source, **built, **own)

    def flat(self) -> dict[str, Any]:
        """Every flat option (`FLAT_FIELDS`) with its value."""
        return {
            name: getattr(self if part is None else getattr(self, part), name)
            for name, part in FLAT_FIELDS.items()
        }

    @property
    def resource(self) -> Resource:
        """What the run updates (`--resource`, `[input] resource`; events by default)."""
        return self.source.resource

    @property
    def touches_graph(self) -> bool:
        """Whether the run talks to Graph at all, so needs a token.

        A run that writes does; a dry run only reads: the current values for `--only-changed`,
        the ids for `--key`. A plain dry run sends nothing anywhere.
        """
        return not self.dry_run or self.judging.only_changed or self.source.reading.key is not None

    def recorded(self) -> dict[str, Any]:
        """The options as stored in the ledger and summary (no secrets exist here)."""
        sending, target, judging = self.sending, self.target, self.judging
        return {
            "resource": self.resource.name,
            "mode": sending.mode,
            "batch_size": sending.batch_size,
            "write_limit": str(sending.write_limit),
            "concurrency": sending.senders,
            "max_retries": sending.max_retries,
            "dry_run": self.dry_run,
            "graph_root": target.graph_root,
            "cloud": target.cloud,
            "only_changed": judging.only_changed,
            "backup": judging.backup,
            "key": self.source.reading.key,
            "pick": self.source.pick,
            "force": judging.force,
            "accept_lost_zeros": judging.accept_lost_zeros,
            "verify": judging.verify,
        }


def flat_field_types() -> dict[str, Any]:
    """Each flat option (`FLAT_FIELDS`) → its type, as the parts annotate it."""
    own = typing.get_type_hints(RunOptions)
    hints = {name: typing.get_type_hints(part) for name, part in _PARTS.items()}
    return {
        name: own[name] if part is None else hints[part][name] for name, part in FLAT_FIELDS.items()
    }
