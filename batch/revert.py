"""`revert RUN_DIR`: put back what one run changed, from its before-images, as a run of its own.

The plan comes from the reverted run's ledger (`state.sqlite`): for every row that run wrote
(`updated`, or `conflict` with fields written besides the conflicting ones), the properties it
really changed (`changed_fields`), their before-image values, and what the run wrote (kept by the
engine with each before-image). Each becomes a `Restore` row, and the engine runs them like any
input file, with `--only-changed` semantics: its own run folder, results, ledger, before-images
(so a revert can be reverted) and `--resume`.

Conflicts are per field: a field that no longer holds what the run wrote was changed by someone
else since and is left alone (unless `--force`), while the row's other fields are restored; the
row is then `conflict`, its message lists each such field with the value it holds now, what the
run wrote and what the revert would write, and it goes to `failures.csv` like a failed row. A
property already back at its old value needs nothing (`unchanged`).

The resource comes from the run folder (`recorded_resource`: the ledger's `resource`; a run
folder of a release before device identities has none and is of events). Restored values go
out through the resource's write (`batch.graph.write_request`: a PATCH of an event, a POST to a
device's `updateDeviceProperties`), a null as the resource's `null_value`. A secret property (a
device account password) is never read back, so it has no before-image and is not restored: a
row that changed only secrets is skipped, saying so.

The ledger is read through its API (`batch.ledger.written_rows`, `read_meta`): read-only,
streaming in row order, so a million-row run is never held in memory, and the reverted run's
folder is never changed (a ledger of an earlier release is read as it is).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from batch.changes import Restore
from batch.errors import UsageError
from batch.ledger import read_meta, written_rows
from batch.model import JSON, Invalid, Problem, RawRow, Skipped, Update
from batch.resources import EVENTS, Resource, resource

__all__ = ["RevertPlan", "recorded_endpoint", "recorded_resource", "revert_out_dir"]

_NULL_TEXT: Final = "<null>"


@dataclass(frozen=True, slots=True)
class _Headers:
    headers: list[str]


def _ledger_path(run_dir: Path) -> Path:
    path = run_dir / "state.sqlite"
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such run folder")
    if not path.is_file():
        raise UsageError(
            f"{run_dir}: no state.sqlite, so not a run folder (a dry run changes nothing and "
            "leaves none)"
        )
    return path


def _cell(value: JSON) -> str:
    """A wire value as an input cell (failures.csv of a revert is valid `run` input)."""
    if value is None:
        return _NULL_TEXT
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


class RevertPlan:
    """The restoring rows of one run, streamed like a prepared input file (`engine.RowPlan`).

    Row numbers are the reverted run's own, so the revert's results line up with its results.
    `sha256` digests the whole plan: `--resume` of the revert refuses a plan that changed (the
    reverted run was resumed meanwhile).
    """

    #: Restore rows carry no export stamps (see `engine.RowPlan`).
    stamped = False

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._path = _ledger_path(run_dir)
        #: What the reverted run updated (its ledger says; events for older run folders).
        self.resource = recorded_resource(run_dir)
        digest = hashlib.sha256()
        total = 0
        names: set[str] = set()
        unrestorable = 0
        for row in self._records():
            total += 1
            digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
            digest.update(b"\n")
            _, _, changed, before, _ = row
            names.update(
                n
                for n in changed
                if before is not None and n in before and n not in self.resource.secrets
            )
            if before is None:
                unrestorable += 1
        self.total = total
        self.sha256 = digest.hexdigest()
        properties = sorted(names)
        self.columns = {"id": "id", **{name: name for name in properties}}
        self.source = _Headers(["id", *properties])
        self.warnings: list[str] = []
        if unrestorable:
            self.warnings.append(
                f"{unrestorable} updated row{'s' if unrestorable != 1 else ''} of {run_dir} "
                "have no before-image (the run used --no-backup) and cannot be reverted"
            )

    def _records(
        self,
    ) -> Iterator[tuple[int, str, list[str], dict[str, JSON] | None, dict[str, JSON] | None]]:
        # As tuples of these JSON-able parts: `sha256` digests exactly this shape, so a revert
        # begun by an earlier release still resumes.
        for row in written_rows(self._path):
            yield row.number, row.event_id, list(row.changed_fields), row.before, row.written

    def rows(self) -> Iterator[tuple[RawRow, Update | Invalid | Skipped]]:
        """Every updated row of the run as a `Restore` (or why it cannot be restored)."""
        for number, event_id, changed, before, written in self._records():
            yield self._row(number, event_id, changed, before, written)

    def _row(
        self,
        number: int,
        event_id: str,
        changed: list[str],
        before: dict[str, JSON] | None,
        written: dict[str, JSON] | None,
    ) -> tuple[RawRow, Update | Invalid | Skipped]:
        secrets = self.resource.secrets
        hidden = [n for n in changed if n in secrets]
        changed = [n for n in changed if n not in secrets]
        body = {
            n: self.resource.wire_null(before[n])
            for n in changed
            if before is not None and n in before
        }
        raw = RawRow(number, {"id": event_id, **{n: _cell(v) for n, v in body.items()}})
        if not event_id or event_id.strip(".") == "":
            # Only a hand-edited ledger holds such an id: never a URL path step.
            problem = Problem("id", event_id, "not an event id")
            return raw, Invalid(number, event_id, (problem,))
        if before is None:
            problem = Problem("", "", "no before-image: the run used --no-backup")
            return raw, Invalid(number, event_id, (problem,))
        if not changed and hidden:
            return raw, Skipped(
                number,
                event_id,
                f"{', '.join(hidden)} cannot be read back, so the run's change cannot be undone",
            )
        if not changed:
            return raw, Skipped(
                number, event_id, f"the run changed nothing in this {self.resource.noun}"
            )
        if not body:
            missing = ", ".join(changed)
            problem = Problem("", "", f"the before-image holds no value for {missing}")
            return raw, Invalid(number, event_id, (problem,))
        expected = {n: (written or {})[n] for n in body if n in (written or {})}
        return raw, Restore(number, event_id, body, expected=expected)


def revert_out_dir(
    run_dir: Path, runs_root: Path, *, resume: bool, now: dt.datetime | None = None
) -> Path:
    """`runs/<UTC timestamp>-revert-<run folder name>/`, or the latest such folder to resume."""
    suffix = f"-revert-{run_dir.resolve().name}"
    if resume:
        candidates = sorted(runs_root.glob(f"*{suffix}"))
        if not candidates:
            raise UsageError(f"--resume: no earlier revert of {run_dir.name}; pass --out RUN_DIR")
        return candidates[-1]
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    return runs_root / f"{stamp}{suffix}"


def recorded_resource(run_dir: Path) -> Resource:
    """What the run in `run_dir` updated: its ledger's `resource` (events when it has none)."""
    name = read_meta(_ledger_path(run_dir), "resource")
    if name is None:
        return EVENTS
    try:
        return resource(name)
    except ValueError:
        raise UsageError(
            f"{run_dir}: the run updated {name!r}, which this version cannot revert"
        ) from None


def recorded_endpoint(run_dir: Path) -> tuple[str | None, str | None]:
    """(cloud, Graph root) the reverted run used, as its ledger recorded them (None: unknown)."""
    path = _ledger_path(run_dir)
    return read_meta(path, "cloud"), read_meta(path, "graph_root")
