"""`--key deviceSerialNumber|managedDeviceName`: event ids from the tenant for files without ids.

Admins know serial numbers and device names, not event GUIDs. With `--key`, the run reads the
tenant's events once (one paged walk, `$select=id,<key>,eventDateTime`, under the read budget,
retried like every read: `batch.listing.ListWalker`) and resolves each row's key cell:

* keys compare ignoring case and surrounding spaces, never leading zeros (`0012` is not `12`);
* no event with the key → the row is invalid ("no event with serial '…'"); when the key is
  digits that match a key of the tenant once its leading zeros are put back (`24486700` and
  `0024486700`), the message says that Excel looks to have dropped them. Such a row stays
  invalid even with `--accept-lost-zeros`: guessing which event a damaged key meant is not
  sending a value as the file says, and the file's other serials are as damaged;
* several events with the key → the row is invalid, listing the candidate ids and their
  eventDateTime, unless `--pick latest`: the newest eventDateTime wins (a tie stays invalid).

Only the keys that occur in the input are kept, so memory follows the input, not the tenant. The
matches are saved in the run folder (`keys.json`, for people) and in the ledger's cache (for
`--resume`, which then does not read the tenant again and resolves exactly as the first run did).

The resource (`batch.resources`) says which keys exist, which collection is walked and by what a
newest match is picked: devices (`--key serialNumber`) have no `newest_by`, so several devices
with one serial are always invalid (`--pick` is refused for them, `batch.options.key_choice`),
and the walk reads whole entities (no `$select` on devices, `batch.listing`). 300 devices are
six pages of 50.

The engine builds a `KeyResolver`, hands `resolver.resolve` to `batch.mapper.prepare`, calls
`resolver.want(prepared)` (the keys the input holds) and `await resolver.load(...)` before the
first row is mapped.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import httpx

from batch.auth import TokenProvider
from batch.errors import GraphError, UsageError
from batch.export import fold_key
from batch.graph import GraphClient
from batch.ledger import Ledger
from batch.limiter import Clock, Limiter, SystemClock
from batch.listing import ListWalker, collection_of
from batch.mapper import Prepared
from batch.model import JSON, Problem, Rate
from batch.report import write_json_atomic
from batch.resources import EVENTS, Resource
from batch.schema import PROPERTIES, canonical

__all__ = ["KEYS_FILE", "PICKS", "KeyResolver"]

log = logging.getLogger("batch.resolve")

KEYS_FILE: Final = "keys.json"
# `--pick` choices: how to choose among several events with the same key.
PICKS: Final = ("latest",)
_LABELS: Final = {
    "deviceSerialNumber": "serial",
    "managedDeviceName": "device name",
    "serialNumber": "serial",
}
_CACHE_VERSION: Final = 1
# How many candidates an ambiguous-key message lists before it says "and N more".
_SHOWN_CANDIDATES: Final = 5
_EVENT_DATE: Final = PROPERTIES["eventDateTime"]
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

_Candidate = tuple[str, str]  # (event id, eventDateTime as Graph sent it, "" when absent)


def _instant(text: str) -> tuple[dt.datetime, str] | None:
    found = canonical(_EVENT_DATE, text) if text else None
    if isinstance(found, tuple) and isinstance(found[0], dt.datetime):
        return found[0], str(found[1])
    return None


class KeyResolver:
    """Resolves `--key` cells to event ids; `load` fills it, `resolve` answers (see module)."""

    def __init__(self, key: str, *, pick: str | None = None, resource: Resource = EVENTS) -> None:
        if key not in resource.keys:
            raise UsageError(f"--key must be {' or '.join(resource.keys)}, not {key!r}")
        if pick is not None and pick not in PICKS:
            raise UsageError(f"--pick must be {' or '.join(PICKS)}, not {pick!r}")
        if pick is not None and resource.newest_by is None:
            raise UsageError(f"--pick {pick}: {resource.noun}s have nothing to pick the newest by")
        self.key = key
        self.pick = pick
        self.resource = resource
        self.label = _LABELS.get(key, key)
        self._noun = resource.noun
        self.events_read = 0
        self.from_cache = False
        # The tenant read's requests, 429s and retries, for the run's summary (0 from cache).
        self.requests = 0
        self.throttled = 0
        self.retries = 0
        self.retry_reasons: Counter[str] = Counter()
        self._matches: dict[str, list[_Candidate]] = {}
        # Key without its leading zeros → the tenant's keys that have them (Excel's damage).
        self._padded: dict[str, list[str]] = {}
        self._wanted: set[str] | None = None
        self._loaded = False

    @property
    def cache_key(self) -> str:
        """The ledger cache entry that holds this key's matches."""
        return f"keys:{self.key}"

    # --- resolving ------------------------------------------------------------------------

    def resolve(self, text: str) -> str | Problem:
        """The event id for a (trimmed) key cell, or the `Problem` that makes the row invalid."""
        if not self._loaded:
            raise RuntimeError("KeyResolver.resolve() called before load()")
        folded = fold_key(text)
        candidates = self._matches.get(folded, [])
        if not candidates:
            return Problem("", "", self._no_match(text, folded))
        if len(candidates) == 1:
            return candidates[0][0]
        ordered = sorted(candidates, key=_sort_key)
        if self.pick == "latest":
            newest = _instant(ordered[0][1])
            tied = [c for c in ordered if _instant(c[1]) == newest]
            if newest is not None and len(tied) == 1:
                return ordered[0][0]
            when = ordered[0][1] or "(none)"
            return Problem(
                "",
                "",
                f"{len(tied)} events with {self.label} {text!r} share the newest eventDateTime "
                f"{when}: {_listing(tied)}; --pick latest cannot choose between them",
            )
        if self.resource.newest_by is None:
            # Nothing to pick by: the tenant itself holds the mistake (a device twice).
            return Problem(
                "",
                "",
                f"{len(candidates)} {self._noun}s with {self.label} {text!r}: "
                f"{', '.join(c[0] for c in ordered)}; give the row the id of the one to change",
            )
        return Problem(
            "",
            "",
            f"{len(candidates)} events with {self.label} {text!r}: {_listing(ordered)}; "
            "pass --pick latest to take the newest",
        )

    def _no_match(self, text: str, folded: str) -> str:
        unknown = f"no {self._noun} with {self.label} {text!r}"
        padded = self._padded.get(folded.lstrip("0"), []) if _digits(folded) else []
        padded = [p for p in padded if len(p) > len(folded)]
        if not padded:
            return unknown
        shown = " or ".join(sorted(set(padded))[:_SHOWN_CANDIDATES])
        return (
            f"{unknown}, but the tenant has {shown}: looks like Excel dropped the leading zeros "
            "(format the column as Text and type the keys again)"
        )

    def add(self, event: Mapping[str, JSON], wanted: set[str] | None = None) -> None:
        """Index one event (from Graph) under its key, if it has one (and it is `wanted`)."""
        value = event.get(self.key)
        event_id = event.get("id")
        if not isinstance(value, str) or not isinstance(event_id, str) or not event_id:
            return
        folded = fold_key(value)
        if folded.startswith("0") and _digits(folded):
            stripped = folded.lstrip("0")
            if wanted is None or stripped in wanted:
                self._padded.setdefault(stripped, []).append(value.strip())
        if not folded or (wanted is not None and folded not in wanted):
            return
        newest_by = self.resource.newest_by
        when = event.get(newest_by) if newest_by is not None else None
        self._matches.setdefault(folded, []).append(
            (event_id, when if isinstance(when, str) else "")
        )

    def mark_loaded(self) -> None:
        """Declare the index complete (after `add`ing every event of the tenant)."""
        self._loaded = True

    # --- cache ----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The matches as stored in `keys.json` and in the ledger's cache."""
        return {
            "version": _CACHE_VERSION,
            "key": self.key,
            "events_read": self.events_read,
            "matches": {k: [list(c) for c in v] for k, v in sorted(self._matches.items())},
            "padded": {k: sorted(v) for k, v in sorted(self._padded.items())},
        }

    def restore(self, data: object) -> bool:
        """Load matches saved by `to_json`; False (and nothing loaded) if they do not fit."""
        if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION:
            return False
        matches = data.get("matches")
        if data.get("key") != self.key or not isinstance(matches, dict):
            return False
        restored: dict[str, list[_Candidate]] = {}
        for folded, candidates in matches.items():
            if not isinstance(candidates, list):
                return False
            pairs: list[_Candidate] = []
            for candidate in candidates:
                if not (
                    isinstance(candidate, list)
                    and len(candidate) == 2
                    and all(isinstance(part, str) for part in candidate)
                ):
                    return False
                pairs.append((candidate[0], candidate[1]))
            restored[str(folded)] = pairs
        padded = data.get("padded", {})  # absent from caches written before it existed
        if not isinstance(padded, dict) or not all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in padded.values()
        ):
            return False
        self._matches = restored
        self._padded = {str(k): list(v) for k, v in padded.items()}
        read = data.get("events_read")
        self.events_read = read if isinstance(read, int) else 0
        self._loaded = True
        return True

    # --- loading --------------------------------------------------------------------------

    def want(self, prepared: Prepared) -> None:
        """Note the keys the input holds: only their events are kept when the tenant is read."""
        # As the rows look them up: the text Excel displays (`000456`), not the stored number.
        self._wanted = {k for _, text in prepared.key_cells() if (k := fold_key(text))}

    async def load(
        self,
        *,
        out_dir: Path,
        ledger: Ledger | None,
        resume: bool,
        tokens: TokenProvider | None,
        graph_root: str,
        read_limit: Rate,
        max_retries: int,
        clock: Clock | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        """Fill the index: from the ledger's cache on `--resume`, else from one read of the tenant.

        Saves the matches to `out_dir/keys.json` and the ledger. Raises `UsageError` without a
        token, `AuthError`/`RunAborted` when the tenant cannot be read.
        """
        if resume and ledger is not None and self.restore(ledger.get_cache(self.cache_key)):
            self.from_cache = True
            log.info(
                "--key %s: ids from this run's cache (%s), the tenant is not read again",
                self.key,
                _count(len(self._matches), "key"),
            )
            return
        if tokens is None:
            raise UsageError(
                f"--key {self.key} reads the tenant's {self._noun}s to find the ids (also with "
                "--dry-run): set GRAPH_ACCESS_TOKEN or the AZURE_* credentials"
            )
        wanted = self._wanted
        log.info(
            "--key %s: reading the tenant's %ss to find the ids of %s",
            self.key,
            self._noun,
            "every key" if wanted is None else _count(len(wanted), "key"),
        )
        clock = clock or SystemClock()
        # Reads only: the write budget is there only because a Limiter needs one.
        limiter = Limiter(write=read_limit, read=read_limit, clock=clock)
        async with GraphClient(graph_root, tokens, http=http) as client:
            newest_by = self.resource.newest_by
            reader = ListWalker(
                client,
                limiter,
                collection_of(self.resource),
                select=("id", self.key, *((newest_by,) if newest_by else ())),
                max_retries=max_retries,
                clock=clock,
            )
            try:
                async for page in reader.walk():
                    self.events_read += len(page)
                    for event in page:
                        self.add(event, wanted)
            except GraphError as error:
                raise reader.failure(error) from None
            finally:
                self.requests = reader.requests
                self.throttled = reader.throttled
                self.retries = reader.retries
                self.retry_reasons = reader.retry_reasons
        self.mark_loaded()
        log.info(
            "--key %s: %s read, %s found",
            self.key,
            _count(self.events_read, self._noun),
            _count(len(self._matches), "key"),
        )
        data = self.to_json()
        write_json_atomic(out_dir / KEYS_FILE, data)
        if ledger is not None:
            ledger.set_cache(self.cache_key, data)


def _count(n: int, noun: str) -> str:
    """`1 key`, `2 keys`."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _digits(text: str) -> bool:
    """Plain ASCII digits: the only text Excel reads as a number and strips of leading zeros."""
    return text.isascii() and text.isdigit()


def _sort_key(candidate: _Candidate) -> tuple[int, int, str, str]:
    """Newest readable eventDateTime first, unreadable ones last; ties by id (deterministic)."""
    instant = _instant(candidate[1])
    if instant is None:
        return (1, 0, "", candidate[0])
    when, beyond = instant
    # Descending by time: negate the exact microseconds since the epoch. Digits beyond the
    # microsecond break ties; their descending order is the ascending order of their 9s' complement.
    micros = (when - _EPOCH) // dt.timedelta(microseconds=1)
    complement = "".join(str(9 - int(d)) for d in beyond.ljust(12, "0"))
    return (0, -micros, complement, candidate[0])


def _listing(candidates: list[_Candidate]) -> str:
    shown = ", ".join(
        f"{event_id} ({when or 'no eventDateTime'})"
        for event_id, when in candidates[:_SHOWN_CANDIDATES]
    )
    more = len(candidates) - _SHOWN_CANDIDATES
    return f"{shown} and {more} more" if more > 0 else shown
