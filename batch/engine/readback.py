"""Read-back: did a write whose answer was lost (504, no answer) land after all?

The write may have landed, and Graph counted it then: sending it again would spend a second
write slot (the scarce budget) on a row that is done. One `$batch` of GETs (the read budget is
ten times larger) tells. Its own room because it is a read the senders do, with a read's
budget and a read's 429 handling, and it knows nothing of grants or queues.
"""

from __future__ import annotations

from batch import runlog
from batch.changes import current_values, read_request, same_value
from batch.engine.outcomes import BatchAnswers
from batch.engine.stats import RunStats
from batch.engine.stop import StopControl
from batch.engine.throttle import Throttle
from batch.engine.work import Work
from batch.errors import AuthError, GraphError
from batch.graph import GraphClient
from batch.limiter import Limiter
from batch.resources import EVENTS, Resource
from batch.retry import Throttled, classify

__all__ = ["ReadBack"]


class ReadBack:
    """Reads rows' events back to see whether their writes landed (see the module docstring)."""

    def __init__(
        self,
        *,
        client: GraphClient,
        limiter: Limiter,
        stats: RunStats,
        stop: StopControl,
        throttle: Throttle,
        resource: Resource = EVENTS,
    ) -> None:
        self.resource = resource
        self.client = client
        self.limiter = limiter
        self.stats = stats
        self.stop = stop
        self.throttle = throttle

    async def landed(self, works: list[Work]) -> dict[int, bool] | None:
        """Whether each row's event holds the values its write sent (one `$batch` of GETs).

        Keyed by `seq`; a row the read could not answer is missing. None when the read failed
        as a whole (the rows are then simply sent again) or the run stops.
        """

        async def reads(n: int) -> int:
            return await self.limiter.acquire_reads(n, at_least=n)

        if not await self.stop.acquire(reads, len(works)) or self.stop.stopping:
            return None
        self.stats.requests_sent += 1
        self.stats.reads_sent += len(works)
        try:
            envelope, responses = await self.client.batch(
                [read_request(str(w.seq), w.update, self.resource) for w in works]
            )
        except AuthError as error:
            await self.stop.stop(error)
            return None
        except GraphError as error:
            rows = [w.raw.number for w in works]
            if error.status:
                self.stats.answers += 1
            answer = classify(error, 1)
            if isinstance(answer, Throttled):
                self.stats.note_429(error, "read", rows)
                self.throttle.throttled(answer.retry_after)
            else:
                runlog.transient(error, kind="read", rows=rows)
            return None
        self.stats.answers += 1
        answers = BatchAnswers.read({str(w.seq): w for w in works}, envelope, responses, _first)
        if answers.throttled is not None:
            # A 429 item is Graph's word that the app's budget is spent, whatever request it
            # answers: the gate closes for everyone, as for the readers' and senders' items.
            rows = answers.throttled_rows
            self.stats.note_429(answers.throttled, "read", rows, len(rows))
            self.throttle.throttled(answers.retry_after)
        landed: dict[int, bool] = {}
        for w in works:
            body = answers.bodies.get(w.seq)
            if body is None:
                continue
            current = current_values(body)
            # A secret (a device account password) is never read back: it cannot be shown.
            landed[w.seq] = all(
                name in current and same_value(name, current[name], value, self.resource)
                for name, value in w.update.body.items()
                if name not in self.resource.secrets
            )
        return landed


def _first(work: Work) -> int:
    # A read-back is one attempt; its items' retry waits are not used here.
    return 1
