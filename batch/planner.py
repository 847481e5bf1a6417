"""Valid rows → Graph requests: one write per row, or `$batch` items (GRAPH.md, "JSON batching").

The write is the resource's (`batch.resources`, issue 16): a PATCH of an event, a POST to a
device's `updateDeviceProperties`. Events are the default, so callers that name no resource
plan exactly what they always did.
"""

from __future__ import annotations

from collections.abc import Sequence

from batch.graph import MAX_BATCH, BatchRequest, batch_item, write_request
from batch.model import Update
from batch.resources import EVENTS, Resource

# MAX_BATCH is Graph's, defined in `batch.graph`; re-exported for the engine's imports.
__all__ = ["MAX_BATCH", "batch_requests", "patch_url", "write_url"]


def patch_url(graph_root: str, event_id: str, *, version: str = "beta") -> str:
    """The absolute URL of one event's PATCH."""
    return write_url(graph_root, EVENTS, event_id, version=version)


def write_url(
    graph_root: str, resource: Resource, entity_id: str, *, version: str | None = None
) -> str:
    """The absolute URL of one entity's write (`requests.jsonl` of a dry run shows it)."""
    path = write_request(resource, entity_id, {}).path
    return f"{graph_root.rstrip('/')}/{version or resource.version}{path}"


def batch_requests(
    items: Sequence[tuple[str, Update]], *, resource: Resource = EVENTS
) -> list[BatchRequest]:
    """`$batch` items for (item id, update) pairs; ids must be unique within one batch."""
    if len(items) > MAX_BATCH:
        raise ValueError(f"a $batch holds at most {MAX_BATCH} requests, not {len(items)}")
    return [batch_item(resource, item_id, u.event_id, u.body) for item_id, u in items]
