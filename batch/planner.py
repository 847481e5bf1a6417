"""Valid rows → Graph requests: one PATCH per row, or `$batch` items (GRAPH.md, "JSON batching")."""

from __future__ import annotations

from collections.abc import Sequence

from batch.graph import MAX_BATCH, BatchRequest, event_path
from batch.model import Update

# MAX_BATCH is Graph's, defined in `batch.graph`; re-exported for the engine's imports.
__all__ = ["MAX_BATCH", "batch_requests", "patch_url"]


def patch_url(graph_root: str, event_id: str, *, version: str = "beta") -> str:
    """The absolute URL of one event's PATCH."""
    return f"{graph_root.rstrip('/')}/{version}{event_path(event_id)}"


def batch_requests(items: Sequence[tuple[str, Update]]) -> list[BatchRequest]:
    """`$batch` items for (item id, update) pairs; ids must be unique within one batch."""
    if len(items) > MAX_BATCH:
        raise ValueError(f"a $batch holds at most {MAX_BATCH} requests, not {len(items)}")
    return [
        BatchRequest(id=item_id, method="PATCH", url=event_path(u.event_id), body=u.body)
        for item_id, u in items
    ]
