"""What a finished run tells: summary.json's figures, the exit code, report.html.

Pure bookkeeping after the stages are done: `summarise` reads the run's `RunStats` and its stop
reason; nothing here touches Graph.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batch import __version__, runlog
from batch.engine.options import RowPlan, RunOptions, RunSummary
from batch.engine.stats import RunStats
from batch.errors import AuthError, Interrupted, RunAborted
from batch.mapper import Prepared
from batch.model import Outcome
from batch.report.commands import report_command, resume_command, revert_command
from batch.report.tally import Tally

__all__ = ["FINAL_FIGURES", "nothing_to_resume", "summarise", "write_report_html"]

log = logging.getLogger("batch.engine")


# The figures run.log's last line repeats from summary.json.
FINAL_FIGURES = (
    "elapsed_seconds",
    "requests_sent",
    "writes_sent",
    "reads_sent",
    "throttled_429",
    "retries",
    "retry_reasons",
    "error_codes",
)


def write_report_html(out_dir: Path) -> None:
    """report.html; a run's outcome never depends on it, so trouble is logged, not raised."""
    from batch.report.html import write_report

    try:
        write_report(out_dir)
    except Exception as error:
        log.error("report.html not written: %s: %s", type(error).__name__, error)


def nothing_to_resume(out_dir: Path, ended: Mapping[str, Any]) -> RunSummary:
    """`--resume` of a run that ran to the end: say so, send nothing, repeat its outcome."""
    exit_code = int(ended.get("exit_code", 0))
    try:
        data: dict[str, Any] = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {"counts": {}, "rows": 0}
    when = dt.datetime.fromtimestamp(float(ended.get("at", 0)), dt.UTC)
    note = (
        f"nothing to resume: the run in {out_dir} finished at {when:%Y-%m-%d %H:%M:%S} UTC "
        f"(exit {exit_code}); nothing was sent"
    )
    if exit_code == 1:
        note += f". Its failed rows are in {out_dir / 'failures.csv'}: fix them and run that file"
    log.info("%s", note)
    data.update(nothing_to_resume=True, note=note, exit_code=exit_code)
    counts = Counter({k: int(v) for k, v in data.get("counts", {}).items() if v})
    return RunSummary(out_dir, counts, int(data.get("rows", 0)), exit_code, data)


def summarise(
    options: RunOptions,
    prepared: RowPlan,
    out_dir: Path,
    stats: RunStats,
    reason: BaseException | None,
    started: dt.datetime,
    elapsed: float,
) -> RunSummary:
    """summary.json's figures and the exit code (CONTRACT.md) of a run that went to its end."""
    counts = stats.counts
    if isinstance(reason, Interrupted):
        exit_code = 130
    elif isinstance(reason, AuthError | RunAborted):
        exit_code = 3
    elif all(Outcome(k).ok for k, v in counts.items() if v):
        exit_code = 0
    else:
        exit_code = 1
    data: dict[str, Any] = {
        "tool_version": __version__,
        # `revert`: the input is the reverted run's folder.
        "command": "revert" if _reverting(prepared) else "run",
        "input": str(options.source.file),
        "input_sha256": prepared.sha256,
        "out_dir": str(out_dir),
        "rows": prepared.total,
        "counts": {o.value: counts.get(o.value, 0) for o in Outcome},
        "started": started.isoformat(),
        "ended": dt.datetime.now(dt.UTC).isoformat(),
        "elapsed_seconds": round(elapsed, 3),
        "rows_per_second": round(sum(counts.values()) / elapsed, 2) if elapsed > 0 else 0.0,
        "requests_sent": stats.requests_sent,
        "writes_sent": stats.writes_sent,
        "reads_sent": stats.reads_sent,
        "throttled_429": stats.throttled,
        "retries": stats.retries,
        "resumed": options.resume,
        # Values that came with surrounding spaces (Excel pastes them): trimmed before sending.
        "values_trimmed": prepared.trimmed if isinstance(prepared, Prepared) else 0,
        "exit_code": exit_code,
        "ok": exit_code == 0,
        "stopped_because": None if reason is None else str(reason),
        # What a script reads when the run itself failed (rows failing is not an error here).
        "error": str(reason) if exit_code in (3, 130) else None,
        **options.recorded(),
        # What changed and what went wrong, over every row (restored rows of a resume too).
        **stats.tally.to_json(),
        "retry_reasons": {
            **dict.fromkeys(runlog.RETRY_REASONS, 0),
            **dict(sorted(stats.retry_reasons.items())),
        },
        "commands": {
            "resume": resume_command(options, out_dir, reverting=_reverting(prepared)),
            "revert": revert_command(out_dir, wrote=_wrote(counts, stats.tally, options)),
            "report": report_command(out_dir),
        },
    }
    return RunSummary(out_dir, counts, prepared.total, exit_code, data)


def _reverting(prepared: RowPlan) -> bool:
    """Whether the run is a `revert` (its rows come from a run folder, not an input file)."""
    return not isinstance(prepared, Prepared)


def _wrote(counts: Counter[str], tally: Tally, options: RunOptions) -> bool:
    """Whether the run changed anything in the tenant (so that there is something to revert)."""
    if options.dry_run:
        return False
    return counts.get(Outcome.UPDATED.value, 0) > 0 or (
        counts.get(Outcome.CONFLICT.value, 0) > 0 and bool(tally.fields)
    )
