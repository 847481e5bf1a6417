"""What `run`, `revert` and `demo` print when they end: the summary a person reads in a terminal.

Decision: the rows that need a person (up to `PROBLEMS_SHOWN` failed, invalid and conflict rows,
each with its row number, serial or id, and reason) belong to that summary, on stdout with it;
the rest are in failures.csv, whose path is printed. A dry run that compared with the tenant
(`--only-changed`, or a revert) adds how many rows each field would change; the per-row diff
itself was printed on stderr as the rows were judged.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from batch.report.problems import first_problems

__all__ = ["PROBLEMS_SHOWN", "summary_lines"]

#: Problem rows printed at most; the others are counted and left to failures.csv.
PROBLEMS_SHOWN: Final = 10
# A reason is cut here on the console (failures.csv and results.csv keep it whole).
_REASON_CHARS: Final = 200


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 1] + "…"


def _problem_lines(data: Mapping[str, Any], out_dir: Path) -> list[str]:
    counts = data.get("counts", {})
    total = sum(int(counts.get(o, 0)) for o in ("failed", "invalid", "conflict"))
    if not total:
        return []
    shown = first_problems(out_dir / "results.csv", PROBLEMS_SHOWN)
    lines = [f"{p.label}: {p.outcome}: {_cut(p.reason)}" for p in shown]
    if total > len(shown):
        lines.append(f"… {total - len(shown):,} more in failures.csv")
    lines.append(f"failed, invalid and conflict rows: {out_dir / 'failures.csv'}")
    return lines


def _field_lines(data: Mapping[str, Any]) -> list[str]:
    fields: Mapping[str, int] = data.get("fields_changed", {})
    if not (data.get("dry_run") and data.get("only_changed") and fields):
        return []
    width = max(len(name) for name in fields)
    return ["fields to change:"] + [
        f"  {name + ':':<{width + 1}} {_plural(n, 'row')}" for name, n in fields.items()
    ]


def summary_lines(data: Mapping[str, Any], out_dir: Path) -> list[str]:
    """The summary of a finished run from its summary.json data (and its results.csv)."""
    counts = ", ".join(f"{k} {v}" for k, v in data.get("counts", {}).items() if v) or "no rows"
    reasons = {k: v for k, v in data.get("retry_reasons", {}).items() if v}
    why = " (" + ", ".join(f"{k}: {v}" for k, v in reasons.items()) + ")" if reasons else ""
    lines = [
        f"{data.get('rows', 0)} rows: {counts}",
        f"elapsed {data.get('elapsed_seconds', 0.0):.1f} s "
        f"({data.get('rows_per_second', 0.0):.1f} rows/s), "
        f"requests {data.get('requests_sent', 0)}, writes {data.get('writes_sent', 0)}, "
        f"reads {data.get('reads_sent', 0)}, "
        f"429s {data.get('throttled_429', 0)}, retries {data.get('retries', 0)}{why}",
    ]
    if data.get("stopped_because"):
        lines.append(f"stopped: {data['stopped_because']}")
    verify = data.get("verify")
    if isinstance(verify, Mapping):
        lines.append(
            f"verify: {verify.get('verified', 0)} read back as sent, {verify.get('resent', 0)} "
            f"sent again, {verify.get('not_applied', 0)} accepted but not applied"
            + (f", {verify['unverified']} not read back" if verify.get("unverified") else "")
        )
    lines += _field_lines(data)
    lines += _problem_lines(data, out_dir)
    lines.append(f"run folder: {out_dir}")
    if (out_dir / "report.html").exists():
        lines.append(f"report: {out_dir / 'report.html'}")
    return lines
