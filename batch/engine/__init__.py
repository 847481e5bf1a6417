"""The sending engine: input → validation → reads → throttled senders → ledger and reports.

One anyio task group holds a producer (reads and validates rows, streaming), `--concurrency`
senders, and one reporter that owns the output files and the ledger writes. Per-row trouble is a
`RowResult`, never an exception leaving a worker; only whole-run conditions (authentication lost,
Graph unreachable, a signal) stop the run, and even then every input row gets exactly one result.

Unless `--no-backup` (without `--only-changed`) says otherwise, `--concurrency` readers sit between
the producer and the senders: they read each row's current values (`$batch` GETs under the read
budget), let `batch.changes.judge` decide (unchanged, conflict, or what to send), and commit the
row's before-image before handing it to the senders, so no PATCH ever leaves without one.

The rooms, from the bottom up (a module imports only those above it in this list):

- `options` — `RunOptions`, `RunSummary`, `RowPlan`: what shapes a run and what it returns.
- `work` — `Work` (a row in flight) and the `ResultStream` every stage hands results to.
- `stats` — `RunStats`, the one counter object every stage holds by reference.
- `stop` — `StopControl`: stop reasons, signals, the grace for requests in flight.
- `throttle` — what a 429 does: the limiter's pause for writes, a hold for reads.
- `outcomes` — pure builders: a `RowResult` from a row's work and Graph's answer.
- `producer`, `readers`, `readback`, `senders`, `verify`, `reporter` — the stages (`verify`
  holds written rows until they are read back, with `--verify`).
- `summary` — summary.json and the exit code; `run` — `execute`, which wires the stages.

Cut so that stages talk through values (queues, the result stream, stats, stop control, and
`batch.retry.classify` for what an answer means), never through each other's methods: a
newcomer changes one stage without reading the others.
"""

from batch.engine.options import RowPlan, RunOptions, RunSummary, default_out_dir
from batch.engine.run import execute
from batch.engine.work import Work
from batch.stop import signal_receiver

# The name the engine used before it was a package; tests and helpers may still say it.
_Work = Work

__all__ = [
    "RowPlan",
    "RunOptions",
    "RunSummary",
    "Work",
    "default_out_dir",
    "execute",
    "signal_receiver",
]
