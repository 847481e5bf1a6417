"""One paged walk of a Graph collection: `@odata.nextLink` pages under the read budget, retried.

`export`, `--key` resolution (`batch.resolve`) and the `--only-changed` prefilter
(`batch.changes.ListWalk`) all read a whole collection the same way, and all use `ListWalker`:

* each page takes one slot of the limiter's read budget (`Limiter.acquire_reads`) before it
  leaves, and a success is `note_success` for the adaptive rate;
* a 429, 503, 504 or lost answer is retried by the one policy (`batch.retry.graph_retrying`):
  a 429 closes the limiter's gate for its Retry-After (or a backoff), the others delay only this
  page; every such answer is a `batch.runlog` event of kind `list`, and counted on the walker
  (`requests`, `answers`, `throttled`, `retries`, `retry_reasons`) for the caller's progress line
  and summary;
* when the retries are spent, or Graph answers something final (400, 403, ...), the last
  `GraphError` is raised as it is: what that means is the caller's decision (the prefilter falls
  back to reads by id, `export` and `--key` stop with `failure(error)`, which names the collection
  and the permission it needs);
* `walk(stopping)` asks `stopping()` before every page: a stop ends the walk between pages,
  never with a page half read, and `stopped` says so.

Decisions:

- **Its own module, not `graph.py`.** `batch.graph` sends one request and knows nothing of
  budgets or retries; the walker is the layer above it that paces and retries, as the engine's
  senders are for writes. Kept apart from `export` so that `resolve` and `changes` need not import
  the exporter.
- **The collection is data** (`Collection`: its path, its resource and the words its messages
  use), not an assumption about events: Autopilot device identities (issue 16) are
  `AUTOPILOT_DEVICES`, not a new walker; `collection_of(resource)` finds a resource's. The walk
  passes the resource to `GraphClient.list_page`, so `$select` is left out where the resource
  says it is unsafe (devices answer 500 to it).
- **Pull, not push.** `next_page()` returns one page at a time, so `export` can write one page in
  a thread while the next is on its way; `walk()` is the plain loop for the other callers.
- **Constants live where they are defined once:** the page size and `MAX_BATCH` in
  `batch.graph` (they are Graph's), the default read budget in `batch.limiter`
  (`DEFAULT_READ_RATE`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Final

from batch import retry, runlog
from batch.errors import AuthError, BatchError, GraphError, RunAborted
from batch.graph import PAGE_SIZE, GraphClient
from batch.limiter import Clock, Limiter, SystemClock
from batch.model import JSON
from batch.resources import DEVICES, EVENTS, Resource
from batch.retry import graph_retrying

__all__ = [
    "AUTOPILOT_DEVICES",
    "AUTOPILOT_EVENTS",
    "Collection",
    "ListWalker",
    "Page",
    "collection_of",
]

#: One page of a collection: its items as Graph sent them.
Page = list[dict[str, JSON]]


@dataclass(frozen=True, slots=True)
class Collection:
    """A Graph collection a walk reads, and how messages name it.

    `path` is relative to the version (`/deviceManagement/autopilotEvents`); `items` names what
    it holds ("autopilot events"), `listing` the list itself ("event list"); `permission` is what
    the app needs to read it, named when Graph answers 403; `resource` describes its entities.
    """

    path: str
    items: str
    listing: str
    permission: str
    resource: Resource = EVENTS


def _read_permission(resource: Resource) -> str:
    return f"{resource.read_permission} (or ReadWrite.All)"


#: The autopilot events (GRAPH.md).
AUTOPILOT_EVENTS: Final = Collection(
    path=EVENTS.collection,
    items="autopilot events",
    listing="event list",
    permission=_read_permission(EVENTS),
    resource=EVENTS,
)

#: The Autopilot device identities (GRAPH.md, issue 16).
AUTOPILOT_DEVICES: Final = Collection(
    path=DEVICES.collection,
    items="Autopilot devices",
    listing="device list",
    permission=_read_permission(DEVICES),
    resource=DEVICES,
)

_COLLECTIONS: Final = {c.resource.name: c for c in (AUTOPILOT_EVENTS, AUTOPILOT_DEVICES)}


def collection_of(resource: Resource) -> Collection:
    """The collection that holds `resource`'s entities."""
    return _COLLECTIONS[resource.name]


class ListWalker:
    """Walks one collection page by page under the read budget, retrying transient errors.

    See the module docstring. Counters: `requests` sent (retries included), `answers` Graph
    gave (a lost connection is none), `pages` read, `throttled` (429 answers), `retries` and
    their `retry_reasons`.
    """

    def __init__(
        self,
        client: GraphClient,
        limiter: Limiter,
        collection: Collection,
        *,
        select: Sequence[str] | None = None,
        page_size: int = PAGE_SIZE,
        max_retries: int = 8,
        clock: Clock | None = None,
    ) -> None:
        self.collection = collection
        self._client = client
        self._limiter = limiter
        self._select = tuple(select) if select else None
        self._page_size = page_size
        self._max_retries = max_retries
        self._clock: Clock = clock or SystemClock()
        self._next: str | None = None
        self._started = False
        self.stopped = False
        self.requests = 0
        self.answers = 0
        self.pages = 0
        self.throttled = 0
        self.retries = 0
        self.retry_reasons: Counter[str] = Counter()

    @property
    def done(self) -> bool:
        """Whether the last page has been read."""
        return self._started and self._next is None

    async def next_page(self) -> Page:
        """The next page's items (empty once `done`). Raises the final `GraphError`."""
        if self.done:
            return []
        url, self._started = self._next, True
        items, self._next = await self._fetch(url)
        return items

    async def walk(self, stopping: Callable[[], bool] | None = None) -> AsyncIterator[Page]:
        """Every page, in order, until the last one, or until `stopping()` says so (`stopped`).

        `stopping` is asked before each page, so a stop never leaves a page half read.
        """
        while not self.done:
            if stopping is not None and stopping():
                self.stopped = True
                return
            yield await self.next_page()

    def failure(self, error: GraphError) -> BatchError:
        """What a walk that raised `error` means for a command that needs the whole list.

        `AuthError` for a 403 (the app lacks the permission), `RunAborted` otherwise.
        """
        what = self.collection
        ids = f" (request-id {error.request_id})" if error.request_id else ""
        if error.status == 403:
            return AuthError(
                f"Graph refused to list the {what.items}: {error}{ids}; the app needs "
                f"{what.permission} with admin consent"
            )
        if error.transient:
            return RunAborted(
                f"Graph did not serve the {what.listing} after {self._max_retries} retries: "
                f"{error}{ids}"
            )
        return RunAborted(f"listing the {what.items} failed: {error}{ids}")

    async def _fetch(self, url: str | None) -> tuple[Page, str | None]:
        last: GraphError | None = None
        attempts = 0
        async for attempt in graph_retrying(
            self._limiter, max_retries=self._max_retries, clock=self._clock
        ):
            with attempt:
                await self._limiter.acquire_reads(1)
                attempts += 1
                if attempts > 1:
                    self.retries += 1
                    if last is not None:
                        self.retry_reasons[runlog.retry_reason(last)] += 1
                        runlog.retry(last, kind="list", attempt=attempts)
                self.requests += 1
                try:
                    page = await self._client.list_page(
                        url,
                        path=self.collection.path,
                        top=self._page_size,
                        select=self._select,
                        resource=self.collection.resource,
                    )
                except GraphError as error:
                    last = error
                    if error.status:
                        self.answers += 1
                    # The waits and the gate are graph_retrying's; here only what is counted.
                    match retry.classify(error, attempts):
                        case retry.Throttled():
                            self.throttled += 1
                            runlog.throttled(error, kind="list")
                        case retry.Retry():
                            runlog.transient(error, kind="list")
                        case retry.Final():
                            pass
                    raise
                self.answers += 1
                self.pages += 1
                self._limiter.note_success()
                return page
        raise AssertionError("tenacity stops by raising")  # pragma: no cover
