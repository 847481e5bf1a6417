"""Change safety: what an event holds now, what a row would really change, and the record of it.

Before a row is written, the engine reads the event's current values of the properties the row
sets (GET items in `$batch`, see `read_request`) and asks `judge` what to do:

* compare every given value with the current one by *wire meaning* (`same_value`, through
  `batch.schema.canonical`): an enum in another case, a duration as TimeSpan or ISO 8601, the
  same instant in another offset are all equal;
* `--only-changed`: a row whose values all match is `unchanged` (not written); otherwise only the
  differing properties are sent;
* a change that looks like Excel's damage to the current value (`excel_damage`: its leading
  zeros stripped, or the digits in scientific notation) makes the row `invalid`, unless
  `--accept-lost-zeros`; Excel only ever damages what a file says, so a revert row is exempt;
* a row of an export (`Update.exported`, `batch.stamp`) is compared three ways per cell: what the
  export saw (E, as a digest), what the file says (F), what the tenant holds now (T). A cell
  still meaning E is never written; an edited cell the tenant also changed since (T is not E, and
  not F either) is a conflict; every other cell goes on as in any file;
* a revert row (`Restore`) conflicts per field: a field that no longer holds what the run wrote
  is left alone and reported, the other fields are restored;
* conflicting fields are never written (unless `--force`), but they do not hold back the row's
  other fields: the verdict then writes the rest and still carries the `conflicts` (the row's
  outcome is `conflict`, its `changed_fields` what was written);
* the before-image is the current value of every property about to be sent: the engine stores it
  (ledger and `before.jsonl`, `BeforeImages`) and commits it before the PATCH may leave.

`ListWalk` reads the whole tenant in pages instead, when that is cheaper (see its docstring for
the rule). `render_diff` prints what a dry run would change, row by row.

Every function takes the resource (`batch.resources`; events by default): its property table
decides what "the same value" means, and its `null_value` too — for devices an absent value
reads as `""` and is cleared by sending `""`, so `None` and `""` compare equal there
(`Resource.wire_null` folds both sides). The before-image GET is built with `entity_path` and
carries `$select` only where the resource allows it (devices answer 500 to any `$select`).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Context, Decimal, InvalidOperation
from pathlib import Path
from typing import Final, Literal
from urllib.parse import quote

from batch.errors import GraphError
from batch.graph import BatchRequest, GraphClient, entity_path
from batch.limiter import Clock, Limiter
from batch.listing import ListWalker, collection_of
from batch.model import JSON, Update
from batch.resources import EVENTS, Resource
from batch.schema import EdmType, canonical
from batch.stamp import ExportStamp

__all__ = [
    "LIST_MAX_EVENTS",
    "LIST_MIN_ROWS",
    "BeforeImages",
    "Change",
    "Conflict",
    "ListWalk",
    "Restore",
    "Verdict",
    "conflicts_from_json",
    "conflicts_to_json",
    "current_values",
    "describe_conflicts",
    "excel_damage",
    "judge",
    "lost_zeros",
    "read_request",
    "render_diff",
    "resumed_verdict",
    "same_value",
    "scientific_form",
    "use_list_walk",
]

log = logging.getLogger("batch.changes")

#: A file needs at least this many rows before walking the tenant's list can pay (see ListWalk).
LIST_MIN_ROWS: Final = 500
#: The walk keeps the selected values of every event it sees: this many at most (memory).
LIST_MAX_EVENTS: Final = 100_000
# A number as Excel shows it in scientific notation (also with a decimal comma): 9.36382E+11.
_SCIENTIFIC: Final = re.compile(r"[+]?(\d+)(?:[.,](\d*))?[eE]([+-]?\d{1,3})")
# What lets a row through that looks like Excel's damage (one option for both kinds).
_ACCEPT: Final = "--accept-lost-zeros sends it anyway"


# --- comparing ----------------------------------------------------------------------------------


def same_value(name: str, a: JSON, b: JSON, resource: Resource = EVENTS) -> bool:
    """Whether two wire values of property `name` mean the same (see `batch.schema.canonical`).

    A resource whose `null_value` is not null (devices: `""`) holds no null: `None` and that
    value are one meaning.
    """
    a, b = resource.wire_null(a), resource.wire_null(b)
    prop = resource.properties.get(name)
    if prop is None:
        return a == b
    return bool(canonical(prop, a) == canonical(prop, b))


def current_values(body: JSON) -> dict[str, JSON]:
    """An event as Graph returned it, without annotations (`@odata.type`, `@odata.context`...)."""
    if not isinstance(body, dict):
        return {}
    return {k: v for k, v in body.items() if not k.startswith("@")}


# --- Excel's damage -----------------------------------------------------------------------------


def lost_zeros(original: str, given: str) -> bool:
    """Whether `given` is the digits `original` without (some of) its leading zeros.

    Excel reads `0024486700` as the number 24486700 unless the cell is text; only all-digit text
    is ever read that way, so both must be plain digits.
    """
    return (
        len(given) < len(original)
        and original.isascii()
        and original.isdigit()
        and given.isascii()
        and given.isdigit()
        and original.lstrip("0") == given.lstrip("0")
    )


def scientific_form(original: str, given: str) -> bool:
    """Whether `given` is the digits `original` as Excel shows a big number (`9.36382E+11`).

    Excel shows as many significant digits as the column is wide, rounded: `given` matches when
    `original`, rounded to the digits `given` shows, is the same number.
    """
    m = _SCIENTIFIC.fullmatch(given)
    if m is None or not (original.isascii() and original.isdigit()):
        return False
    shown = (m[1] + (m[2] or "")).lstrip("0") or "0"
    try:
        value = Decimal(f"{m[1]}.{m[2] or '0'}E{m[3]}")
        for rounding in (ROUND_HALF_UP, ROUND_HALF_EVEN):
            rounded = Context(prec=max(len(shown), 1), rounding=rounding).create_decimal(original)
            if rounded == value:
                return True
    except InvalidOperation:
        return False
    return False


def excel_damage(name: str, current: JSON, given: JSON, resource: Resource = EVENTS) -> str | None:
    """Why changing text property `name` from `current` to `given` looks like Excel's damage.

    None when it does not: other types, values that are not text, or a real change.
    """
    prop = resource.properties.get(name)
    if prop is None or prop.edm != EdmType.STRING:
        return None
    if not isinstance(current, str) or not isinstance(given, str):
        return None
    old, new = current.strip(), given.strip()
    if lost_zeros(old, new):
        return _lost_zeros_message(name, old, new)
    if scientific_form(old, new):
        return (
            f"{name}: looks like Excel turned {old} into scientific notation (file has {new}); "
            f"{_ACCEPT}"
        )
    return None


def _lost_zeros_message(name: str, original: str, given: str) -> str:
    return (
        f"{name}: looks like Excel dropped the leading zeros of {original} (file has {given}); "
        f"{_ACCEPT}"
    )


# --- verdicts -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Restore(Update):
    """A revert row: put `body` (before-image values) back where the event still holds `expected`.

    `expected` maps each property to what the reverted run wrote; a property missing from it
    cannot be checked, and counts as a conflict.
    """

    expected: dict[str, JSON] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Change:
    """One property whose given value differs from the event's (`present`: Graph returned it)."""

    name: str
    old: JSON
    new: JSON
    present: bool = True


@dataclass(frozen=True, slots=True)
class Conflict:
    """A property someone else changed since the reverted run (`since="run"`) or the export.

    Revert: the run wrote `expected` (`known`: it was recorded), the event now holds `found`, and
    the revert would have written `wanted` (the before-image). Export: the file asks for `wanted`,
    the event now holds `found`, and neither is what the export saw (which the stamp keeps only as
    a digest, so `expected` is None and `known` False).
    """

    name: str
    expected: JSON
    found: JSON
    known: bool = True  # False: the run's written value was not recorded
    wanted: JSON = None
    since: Literal["run", "export"] = "run"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one row, given the event's current values.

    `write` may still carry `conflicts`: the fields left alone while the others are written.
    `invalid` carries the `problems` (Excel's damage); nothing is written.
    """

    action: Literal["write", "unchanged", "conflict", "invalid"]
    body: dict[str, JSON]  # what to PATCH (action "write")
    before: dict[str, JSON]  # the current values of the properties in `body` (the before-image)
    changes: tuple[Change, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def changed_fields(self) -> tuple[str, ...]:
        """The properties whose value really changes."""
        return tuple(c.name for c in self.changes)


def judge(
    update: Update,
    current: Mapping[str, JSON],
    *,
    only_changed: bool,
    force: bool = False,
    accept_lost_zeros: bool = False,
    resource: Resource = EVENTS,
) -> Verdict:
    """Compare a row with the entity's current values: write, unchanged, conflict or invalid.

    A property Graph did not return counts as changed (it cannot be shown equal). Without
    `only_changed` the whole given body is sent (the caller asked for it), and `changes` still
    names only what differs. In order (the module docstring has the why):

    1. a row of an export (`update.exported`): cells still meaning what the export saw leave the
       body; an edited cell the tenant also changed since is a conflict (unless `force`);
    2. a change that looks like Excel's damage makes the row invalid (unless `accept_lost_zeros`;
       never for a `Restore`, whose values come from Graph);
    3. a `Restore` field no longer holding what the run wrote is a conflict (unless `force`);
    4. conflicting fields leave the body; the rest is written, or the row is `conflict` when
       nothing is left to write, or `unchanged` when nothing was left to change.
    """
    body = dict(update.body)
    conflicts: list[Conflict] = []
    problems: list[str] = []
    if update.exported is not None:
        body = _against_export(
            update.exported, body, current, conflicts, problems, force, accept_lost_zeros, resource
        )
    changes = _changes(body, current, resource)
    if not accept_lost_zeros and not isinstance(update, Restore):
        problems.extend(
            damage
            for c in changes
            if c.present and (damage := excel_damage(c.name, c.old, c.new, resource)) is not None
        )
    if problems:
        return Verdict("invalid", {}, {}, changes, tuple(conflicts), tuple(problems))
    if isinstance(update, Restore) and not force:
        stale = tuple(_conflicts(update, current, changes, resource))
        if stale:
            conflicts.extend(stale)
            names = {c.name for c in stale}
            body = {k: v for k, v in body.items() if k not in names}
            changes = tuple(c for c in changes if c.name not in names)
    if only_changed:
        body = {c.name: c.new for c in changes}
    if not body:
        action: Literal["conflict", "unchanged"] = "conflict" if conflicts else "unchanged"
        return Verdict(action, {}, {}, changes, tuple(conflicts))
    before = {name: current[name] for name in body if name in current}
    return Verdict("write", body, before, changes, tuple(conflicts))


def _against_export(
    stamp: ExportStamp,
    body: Mapping[str, JSON],
    current: Mapping[str, JSON],
    conflicts: list[Conflict],
    problems: list[str],
    force: bool,
    accept_lost_zeros: bool,
    resource: Resource = EVENTS,
) -> dict[str, JSON]:
    """The cells of an export's row that may be written (three-way, see `judge`)."""
    kept: dict[str, JSON] = {}
    for name, new in body.items():
        if not stamp.covers(name):
            kept[name] = new  # a column added after the export: as in any file
            continue
        if stamp.holds(name, new):
            continue  # not edited since the export: never written
        exported = None if accept_lost_zeros else stamp.lost_zeros(name, new)
        if exported is not None:
            # The export saw the zeros: Excel took them, not the admin.
            problems.append(_lost_zeros_message(name, exported, str(new)))
            continue
        found = current.get(name)
        # Both changed it: a conflict, unless both made the same change.
        if (
            not force
            and not stamp.holds(name, found)
            and not same_value(name, found, new, resource)
        ):
            conflicts.append(Conflict(name, None, found, False, wanted=new, since="export"))
            continue
        kept[name] = new
    return kept


def resumed_verdict(
    written: dict[str, JSON],
    image: dict[str, JSON],
    conflicts: object = None,
    resource: Resource = EVENTS,
) -> Verdict:
    """A resumed row whose body and before-image were committed: write that body again.

    Its PATCH may already have gone out, so the event may hold the new values: what changes is
    told against the committed before-image, not against the event. `conflicts` is what
    `conflicts_to_json` stored for the row (the fields the first verdict left alone), if any.
    """
    return Verdict(
        "write", written, image, _changes(written, image, resource), conflicts_from_json(conflicts)
    )


def conflicts_to_json(conflicts: Iterable[Conflict]) -> list[JSON]:
    """Conflicts as JSON for the ledger (`Ledger.save_before`; see `resumed_verdict`)."""
    return [
        {
            "name": c.name,
            "expected": c.expected,
            "found": c.found,
            "known": c.known,
            "wanted": c.wanted,
            "since": c.since,
        }
        for c in conflicts
    ]


def conflicts_from_json(data: object) -> tuple[Conflict, ...]:
    """What `conflicts_to_json` stored; () for anything else (nothing stored)."""
    if not isinstance(data, list):
        return ()
    found: list[Conflict] = []
    for item in data:
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            since: Literal["run", "export"] = "export" if item.get("since") == "export" else "run"
            found.append(
                Conflict(
                    item["name"],
                    item.get("expected"),
                    item.get("found"),
                    bool(item.get("known", True)),
                    item.get("wanted"),
                    since,
                )
            )
    return tuple(found)


def _changes(
    body: Mapping[str, JSON], current: Mapping[str, JSON], resource: Resource = EVENTS
) -> tuple[Change, ...]:
    # A property Graph did not return counts as changed: it cannot be shown equal.
    return tuple(
        Change(name, current.get(name), new, name in current)
        for name, new in body.items()
        if name not in current or not same_value(name, current[name], new, resource)
    )


def _conflicts(
    update: Restore,
    current: Mapping[str, JSON],
    changes: Iterable[Change],
    resource: Resource = EVENTS,
) -> Iterable[Conflict]:
    # Only properties that still need restoring: one already back at its old value is no conflict.
    for change in changes:
        found = current.get(change.name)
        wanted = update.body.get(change.name)
        if change.name not in update.expected:
            yield Conflict(change.name, None, found, known=False, wanted=wanted)
        elif not change.present or not same_value(
            change.name, found, update.expected[change.name], resource
        ):
            yield Conflict(change.name, update.expected[change.name], found, wanted=wanted)


def describe_conflicts(conflicts: Iterable[Conflict]) -> str:
    """One line for results.csv and failures.csv: each conflicting field with both values."""
    since_run: list[str] = []
    since_export: list[str] = []
    for c in conflicts:
        if c.since == "export":
            since_export.append(
                f"{c.name} is {_show(c.found)} in the tenant, {_show(c.wanted)} in the file"
            )
        elif c.known:
            since_run.append(
                f"{c.name} is {_show(c.found)} (the run wrote {_show(c.expected)}, "
                f"the revert would write {_show(c.wanted)})"
            )
        else:
            since_run.append(
                f"{c.name} is {_show(c.found)} (what the run wrote is not recorded; "
                f"the revert would write {_show(c.wanted)})"
            )
    parts = []
    if since_export:
        parts.append(
            "changed in the tenant since the export, not written: "
            + "; ".join(since_export)
            + " (--force writes the file's values)"
        )
    if since_run:
        parts.append(
            "changed since the run, not restored: " + "; ".join(since_run) + " (--force overwrites)"
        )
    return "; ".join(parts)


# --- showing ------------------------------------------------------------------------------------


def _show(value: JSON) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        # Quote only when the bare text would mislead (empty, padded, or the word null).
        return (
            json.dumps(value, ensure_ascii=False)
            if value in ("", "null") or (value != value.strip())
            else value
        )
    return json.dumps(value, ensure_ascii=False)


def render_diff(number: int, event_id: str, changes: Iterable[Change]) -> str:
    """A readable diff of one row: a heading, then `property  old → new` per changed property."""
    items = list(changes)
    width = max((len(c.name) for c in items), default=0)
    noun = "change" if len(items) == 1 else "changes"
    lines = [f"row {number} ({event_id}): {len(items)} {noun}"]
    for c in items:
        old = _show(c.old) if c.present else "(not returned)"
        lines.append(f"  {c.name:<{width}}  {old} → {_show(c.new)}")
    return "\n".join(lines)


# --- reading ------------------------------------------------------------------------------------


def read_request(item_id: str, update: Update, resource: Resource = EVENTS) -> BatchRequest:
    """The `$batch` GET item that reads the current values of the properties `update` sets.

    `$select` only where the resource allows it; otherwise the whole entity is read.
    """
    path = entity_path(resource, update.event_id)
    if not resource.select_safe:
        return BatchRequest(id=item_id, method="GET", url=path)
    select = ",".join(quote(name, safe="") for name in update.body)
    return BatchRequest(id=item_id, method="GET", url=f"{path}?$select={select}")


class BeforeImages:
    """`before.jsonl`: one line `{"row","id","before":{...}}` per row about to be written.

    Appended (a resumed run adds to it) and flushed per call; the ledger's `before` table holds
    the same images and is what `revert` reads.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("a", encoding="utf-8")

    def write(self, number: int, event_id: str, before: Mapping[str, JSON]) -> None:
        """Append one row's before-image (call `flush` after a group of them)."""
        line = {"row": number, "id": event_id, "before": dict(before)}
        self._file.write(json.dumps(line, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        """Push the lines to the file."""
        self._file.flush()

    def close(self) -> None:
        """Flush and close."""
        self._file.close()


def use_list_walk(rows: int, *, only_changed: bool) -> bool:
    """Whether to try `ListWalk` before reading by id (the rule is in `ListWalk`'s docstring)."""
    return only_changed and rows >= LIST_MIN_ROWS


class ListWalk:
    """Read every event's current values from the paged list, while that is cheaper than by id.

    The rule. Reading by id costs one unit of the read budget per row (Graph counts every item of
    a `$batch`), in requests of 20 that run just ahead of the writes. The list costs one unit per
    page, but reads every event of the tenant, page after page. It asks for 999 events a page;
    Intune serves autopilot events in pages of at most 50 (since late 2024), so a page is worth
    50 reads by id, and nothing here relies on the size a page really has.

    * Without `--only-changed` every row is written anyway, and reads by id (budget: 1000 per
      20 s) stay hidden behind the ten times slower writes (100 per 20 s): the list never pays.
    * With `--only-changed` most rows may need no write at all; then the reads are the slow part.
      For a file of at least `LIST_MIN_ROWS` rows the tool walks the list, as long as the tenant
      turns out to hold at most twice as many events as the file has rows (the file covers most
      of the tenant) and at most `LIST_MAX_EVENTS` (the walk keeps what it reads in memory). A
      bigger tenant stops the walk after about 2 x rows / 50 pages, a small price, and every row
      is read by id instead.

    The walk only filters: a row it shows as already equal is `unchanged`; every other row still
    gets its own read just before its write, so before-images and `changed_fields` never come
    from list data that may have aged during a long run.
    """

    def __init__(
        self,
        client: GraphClient,
        limiter: Limiter,
        clock: Clock,
        *,
        select: Iterable[str],
        max_events: int,
        max_retries: int,
        resource: Resource = EVENTS,
    ) -> None:
        self._select = sorted(set(select) - {"id"})
        self._max_events = max_events
        # The paging, pacing and retrying are `ListWalker`'s; this class only decides.
        self._walker = ListWalker(
            client,
            limiter,
            collection_of(resource),
            select=self._select,
            max_retries=max_retries,
            clock=clock,
        )

    @property
    def pages(self) -> int:
        """List requests sent (retries included)."""
        return self._walker.requests

    @property
    def answers(self) -> int:
        """List requests Graph answered."""
        return self._walker.answers

    @property
    def throttled(self) -> int:
        """429 answers to list requests."""
        return self._walker.throttled

    @property
    def retries(self) -> int:
        """List requests sent again."""
        return self._walker.retries

    @property
    def retry_reasons(self) -> Counter[str]:
        """The retries by reason (`batch.runlog.RETRY_REASONS`)."""
        return self._walker.retry_reasons

    async def run(self, stopping: Callable[[], bool]) -> dict[str, dict[str, JSON]] | None:
        """Every event's selected values keyed by case-folded id; None when the walk gave up."""
        if not self._select:
            return None
        events: dict[str, dict[str, JSON]] = {}
        try:
            async for items in self._walker.walk(stopping):
                for item in items:
                    event_id = item.get("id")
                    if isinstance(event_id, str):
                        events[event_id.casefold()] = current_values(item)
                if len(events) > self._max_events:
                    log.info(
                        "the tenant holds more than %d events: reading rows by id instead",
                        self._max_events,
                    )
                    return None
        except GraphError as error:
            log.warning(
                "reading the event list failed (%s: %s); reading rows by id instead",
                error.status or error.code,
                error.message,
            )
            return None
        if self._walker.stopped:
            return None
        log.info(
            "read %d event%s in %d list page%s",
            len(events),
            "" if len(events) == 1 else "s",
            self.pages,
            "" if self.pages == 1 else "s",
        )
        return events
