"""report.html: one self-contained page that shows what a run did, for a person to look at.

Written at the end of every run (and every part of a resumed one), and again by
`autopilot-batch report RUN_DIR`, from what the run folder holds: summary.json (every figure on
the page is one of its values), results.csv (the first `FAILURES_SHOWN` problem rows) and the
ledger's timeline (`batch.ledger.read_timeline`: writes per second, 429s, pauses, parts).

Decisions:

- **Plain f-strings and `html.escape`, no template engine.** The page is one function per
  section; every value from the run (file names, Graph's messages, cell values) passes through
  `escape`, and a test feeds it markup to prove it. A template language would add a dependency
  and a second syntax for a page this small.
- **Self-contained.** Inline CSS and inline SVG (`batch.report.svg`), no script, no web font (the
  system's sans-serif), no image: it opens from a file share or an e-mail attachment, offline.
  A Content-Security-Policy meta tag (`default-src 'none'`) makes the browser refuse anything
  the page might still try to load. Links point only to the run folder's own files.
- **Checkable.** Figures carry `data-key`/`data-value` (the summary.json key and its value), the
  outcome bar and the chart carry their numbers in `data-` attributes (see `batch.report.svg`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any, Final

from batch.errors import EXIT_CODES, UsageError
from batch.ledger import read_timeline
from batch.model import Rate
from batch.report.problems import ProblemRow, first_problems
from batch.report.svg import OUTCOME_COLOURS, bar_widths, duration_label, outcome_bar, rate_chart
from batch.report.timeline import PartTimeline, rate_series, split_parts

__all__ = ["FAILURES_SHOWN", "REPORT_FILE", "render_report", "write_report"]

REPORT_FILE: Final = "report.html"
#: Problem rows listed at most; failures.csv has all of them.
FAILURES_SHOWN: Final = 50

# The run folder's files the page links to, with what each holds.
_FILES: Final = (
    ("results.csv", "one line per input row: outcome, status, error, ids"),
    (
        "failures.csv",
        "the failed, invalid and conflict rows in the input's columns: fix, run again",
    ),
    ("changes.csv", "one line per changed field: old and new value"),
    ("summary.json", "every figure on this page, for scripts"),
    ("run.log", "JSON lines: every 429, retry, pause and rate change"),
    ("before.jsonl", "the values before the run (what revert restores)"),
    ("requests.jsonl", "dry run: the requests that would have been sent"),
    ("keys.json", "--key: the ids found for each serial or device name"),
)

# (summary.json key, label) of the figures box.
_FIGURES: Final = (
    ("rows", "rows"),
    ("elapsed_seconds", "seconds"),
    ("rows_per_second", "rows per second"),
    ("requests_sent", "requests"),
    ("writes_sent", "writes"),
    ("reads_sent", "reads"),
    ("throttled_429", "429 answers"),
    ("retries", "retries"),
    ("values_trimmed", "values trimmed"),
)

_CSS: Final = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
margin:0 auto;max-width:960px;padding:16px 24px 48px;color:#212121;line-height:1.4}
h1{font-size:1.5em;margin:.4em 0 .2em}h2{font-size:1.15em;margin:1.6em 0 .5em;
border-bottom:1px solid #e0e0e0;padding-bottom:.2em}
.verdict{display:inline-block;padding:.25em .7em;border-radius:4px;color:#fff;font-weight:600}
.exit-0{background:#2e7d32}.exit-1{background:#ef6c00}.exit-other{background:#c62828}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.25em .5em;
vertical-align:top;border-bottom:1px solid #eeeeee}th{font-weight:600;color:#455a64}
table.facts th{width:11em}
.figures{display:flex;flex-wrap:wrap;gap:8px}.figure{border:1px solid #e0e0e0;border-radius:6px;
padding:.4em .8em;min-width:7.5em}.figure .value{display:block;font-size:1.35em;font-weight:600}
.figure .label{color:#607d8b;font-size:.85em}
.legend span{display:inline-block;margin:.3em 1em 0 0}.swatch{display:inline-block;width:.8em;
height:.8em;margin-right:.3em;vertical-align:-.05em}
.bar{background:#90caf9;height:.8em;display:inline-block;vertical-align:middle}
td.num,th.num{text-align:right;white-space:nowrap}code{font-size:.9em;word-break:break-all}
svg{max-width:100%;height:auto;display:block}svg.outcomes,svg.timeline{width:100%}
svg text{font-family:inherit;font-size:11px}
svg .axis{fill:#607d8b}svg .grid{stroke:#eceff1}svg .tick,svg .axis-line{stroke:#90a4ae}
svg .rate{fill:none;stroke:#1565c0;stroke-width:1.6}svg .limit{stroke:#c62828;
stroke-dasharray:6 4;stroke-width:1.2}svg .limit-label{fill:#c62828}
svg .pause{fill:#ffcdd2;fill-opacity:.7}svg .throttled{fill:#c62828}
.note{color:#607d8b;font-size:.9em}.part{margin:1em 0 1.5em}
"""


def _e(value: object) -> str:
    return escape(str(value))


def _time(text: object) -> str:
    """An ISO timestamp from summary.json as `2026-12-06 05:42:51 UTC`."""
    try:
        stamp = dt.datetime.fromisoformat(str(text)).astimezone(dt.UTC)
    except ValueError:
        return str(text)
    return f"{stamp:%Y-%m-%d %H:%M:%S} UTC"


def _unix(seconds: float) -> str:
    return f"{dt.datetime.fromtimestamp(seconds, dt.UTC):%Y-%m-%d %H:%M:%S} UTC"


def _number(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _e(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}".rstrip("0").rstrip(".")


def _exit_class(code: int) -> str:
    return "exit-0" if code == 0 else "exit-1" if code == 1 else "exit-other"


def _header(s: Mapping[str, Any]) -> str:
    code = int(s.get("exit_code", 1))
    kind = "Revert" if s.get("command") == "revert" else "Run"
    kind = f"Dry {kind.lower()}" if s.get("dry_run") else kind
    meaning = EXIT_CODES.get(code, "unknown exit code")
    return (
        f"<h1>{kind} of {_e(Path(str(s.get('input', '?'))).name)}</h1>"
        f'<p><span class="verdict {_exit_class(code)}" data-key="exit_code" '
        f'data-value="{code}">exit {code}</span> {_e(meaning)}</p>'
    )


def _facts(s: Mapping[str, Any]) -> str:
    tenant = s.get("tenant") or "unknown (the token does not say)"
    options = [f"{s.get('mode', '?')} mode"]
    if s.get("mode") == "batch":
        options.append(f"$batch of up to {s.get('batch_size', 20)}")
    options.append(f"concurrency {s.get('concurrency', '?')}")
    options.extend(
        "--" + flag.replace("_", "-")
        for flag in ("only_changed", "force", "accept_lost_zeros")
        if s.get(flag)
    )
    if s.get("backup") is False:
        options.append("--no-backup")
    if s.get("key"):
        options.append(f"--key {s['key']}")
    rows = [
        ("input", f"<code>{_e(s.get('input', ''))}</code>"),
        ("input sha256", f"<code>{_e(s.get('input_sha256', ''))}</code>"),
        ("run folder", f"<code>{_e(s.get('out_dir', ''))}</code>"),
        ("tenant", _e(tenant)),
        ("cloud", f"{_e(s.get('cloud', ''))} (<code>{_e(s.get('graph_root', ''))}</code>)"),
        ("write limit", _e(_limit_text(str(s.get("write_limit", ""))))),
        ("options", _e(", ".join(options))),
        ("started", _e(_time(s.get("started", "")))),
        ("ended", _e(_time(s.get("ended", "")))),
        ("parts", _e(_parts_line(s))),
    ]
    if s.get("stopped_because"):
        rows.append(("stopped because", _e(s["stopped_because"])))
    rows.append(("tool", _e(f"autopilot-batch {s.get('tool_version', '?')}")))
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<h2>What ran</h2><table class="facts">{body}</table>'


def _limit_text(text: str) -> str:
    limit = _rate(text)
    if limit is None:
        return text
    return f"{limit.count:,} writes per {limit.seconds:g} s ({limit.per_second:.3g} per second)"


def _parts_line(s: Mapping[str, Any]) -> str:
    parts = s.get("parts") or []
    if len(parts) <= 1:
        return "one (never interrupted)" if parts else "none (nothing was sent)"
    return f"{len(parts)}: interrupted and resumed {len(parts) - 1} time(s)"


def _figures(s: Mapping[str, Any]) -> str:
    cells = []
    for key, label in _FIGURES:
        value = s.get(key, 0)
        cells.append(
            f'<div class="figure" data-key="{key}" data-value="{_e(json.dumps(value))}">'
            f'<span class="value">{_number(value)}</span><span class="label">{label}</span></div>'
        )
    reasons = {k: v for k, v in (s.get("retry_reasons") or {}).items() if v}
    extra = ""
    if reasons:
        said = ", ".join(f"{_e(k)}: {v:,}" for k, v in reasons.items())
        extra = f'<p class="note">retries by reason: {said}</p>'
    return f'<h2>Figures</h2><div class="figures">{"".join(cells)}</div>{extra}'


def _outcomes(s: Mapping[str, Any]) -> str:
    counts: Mapping[str, int] = s.get("counts") or {}
    legend = "".join(
        f'<span data-key="counts.{o}" data-value="{counts.get(o, 0)}">'
        f'<i class="swatch" style="background:{colour}"></i>'
        f"{_e(o.replace('_', ' '))} {counts.get(o, 0):,}</span>"
        for o, colour in OUTCOME_COLOURS.items()
        if counts.get(o, 0)
    )
    codes = s.get("error_codes") or {}
    by_code = ""
    if codes:
        items = ", ".join(f"{_e(k)}: {v:,}" for k, v in codes.items())
        by_code = f'<p class="note">by error code: {items}</p>'
    return (
        f"<h2>Outcomes</h2>{outcome_bar(counts)}"
        f'<div class="legend">{legend or "no rows"}</div>{by_code}'
    )


def _gap(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _timeline(s: Mapping[str, Any], parts: Sequence[PartTimeline]) -> str:
    head = "<h2>Writes per second</h2>"
    if s.get("dry_run"):
        return head + '<p class="note">A dry run sends no writes: there is no timeline.</p>'
    if not parts:
        return head + '<p class="note">No timeline was recorded for this run.</p>'
    fallback = _rate(str(s.get("write_limit", "")))
    sections = []
    previous: PartTimeline | None = None
    for part in parts:
        limit = part.write_limit or fallback
        window = limit.seconds if limit is not None else 20.0
        series = rate_series(part, window)
        title = f"Part {part.number}" if len(parts) > 1 else "The run"
        said = [
            f"{_unix(part.started)} → {_unix(part.ended)}",
            duration_label(part.ended - part.started),
            f"{part.writes:,} writes",
            f"429 answers: {part.throttled:,}",
            f"{len(part.pauses):,} pause{'' if len(part.pauses) == 1 else 's'}",
        ]
        if part.exit_code is not None:
            said.append(f"exit {part.exit_code}")
        elif part.killed:
            said.append("ended without closing (killed?): its last send marks the end")
        if previous is not None:
            said.append(
                f"resumed {_gap(part.started - previous.ended)} after part {previous.number}"
            )
        sections.append(
            f'<div class="part" data-part="{part.number}"><p><b>{title}</b>: '
            f"{_e(' · '.join(said))}</p>{rate_chart(part, series, limit)}</div>"
        )
        previous = part
    average = max((rate_series(p, _window(p, fallback)).average for p in parts), default=0)
    note = (
        f'<p class="note">Each point: writes in the {average} s before it, per second; the '
        "dashed line is the write limit, shaded bands are pauses after 429s, red marks are "
        "seconds with 429 answers.</p>"
    )
    return head + note + "".join(sections)


def _window(part: PartTimeline, fallback: Rate | None) -> float:
    limit = part.write_limit or fallback
    return limit.seconds if limit is not None else 20.0


def _rate(text: str) -> Rate | None:
    try:
        return Rate.parse(text)
    except ValueError:
        return None


def _fields(s: Mapping[str, Any]) -> str:
    fields: Mapping[str, int] = s.get("fields_changed") or {}
    verb = "would change" if s.get("dry_run") else "changed"
    if not fields:
        return f'<h2>Fields {verb}</h2><p class="note">none</p>'
    widths = bar_widths(list(fields.values()))
    rows = "".join(
        f'<tr data-field="{_e(name)}" data-count="{n}"><td>{_e(name)}</td>'
        f'<td class="num">{n:,}</td><td><span class="bar" style="width:{w:.1f}%"></span></td></tr>'
        for (name, n), w in zip(fields.items(), widths, strict=True)
    )
    return (
        f'<h2>Fields {verb}</h2><table><tr><th>field</th><th class="num">rows</th>'
        f'<th style="width:50%"></th></tr>{rows}</table>'
        '<p class="note">One line per row and field in <a href="changes.csv">changes.csv</a>, '
        "with the old and the new value.</p>"
    )


def _problems(s: Mapping[str, Any], problems: Sequence[ProblemRow]) -> str:
    counts = s.get("counts") or {}
    total = sum(int(counts.get(o, 0)) for o in ("failed", "invalid", "conflict"))
    head = "<h2>Rows that need a look</h2>"
    if not total:
        return head + '<p class="note">none: no row failed, was invalid or conflicted.</p>'
    rows = "".join(
        f'<tr class="problem" data-row="{p.row}"><td class="num">{p.row}</td>'
        f"<td><code>{_e(p.key or p.event_id)}</code></td><td>{_e(p.outcome)}</td>"
        f"<td>{_e(p.reason)}</td></tr>"
        for p in problems
    )
    more = total - len(problems)
    tail = (
        f'<p class="note">… {more:,} more in <a href="failures.csv">failures.csv</a>.</p>'
        if more > 0
        else ""
    )
    return (
        f'{head}<p class="note">The first {len(problems):,} of {total:,}, in input order; all of '
        'them, in the input\'s own columns, are in <a href="failures.csv">failures.csv</a>.</p>'
        '<table><tr><th class="num">row</th><th>serial, device or id</th><th>outcome</th>'
        f"<th>reason</th></tr>{rows}</table>{tail}"
    )


def _files(run_dir: Path | None, s: Mapping[str, Any]) -> str:
    present = [
        (name, what) for name, what in _FILES if run_dir is None or (run_dir / name).exists()
    ]
    items = "".join(f'<li><a href="{_e(n)}">{_e(n)}</a>: {_e(w)}</li>' for n, w in present)
    commands = s.get("commands") or {}
    said = [
        f"<li>{label}: <code>{_e(commands[key])}</code></li>"
        for key, label in (
            ("resume", "continue it, if it was interrupted"),
            ("revert", "undo it"),
            ("report", "write this page again"),
        )
        if commands.get(key)
    ]
    more = f"<h2>Commands</h2><ul>{''.join(said)}</ul>" if said else ""
    return f"<h2>Files</h2><ul>{items}</ul>{more}"


def render_report(
    summary: Mapping[str, Any],
    problems: Sequence[ProblemRow],
    parts: Sequence[PartTimeline],
    *,
    run_dir: Path | None = None,
) -> str:
    """The whole page (`run_dir`: only files present there are linked; None links all)."""
    title = f"autopilot-batch: {Path(str(summary.get('input', 'run'))).name}"
    csp = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        + _header(summary)
        + _facts(summary)
        + _figures(summary)
        + _outcomes(summary)
        + _timeline(summary, parts)
        + _fields(summary)
        + _problems(summary, problems)
        + _files(run_dir, summary)
        + f'<p class="note">Written {_unix(dt.datetime.now(dt.UTC).timestamp())} by '
        f"autopilot-batch {_e(summary.get('tool_version', ''))}.</p>" + "</body></html>\n"
    )


def write_report(run_dir: Path) -> Path:
    """(Re)write `run_dir/report.html` from the run folder; returns its path.

    Raises `UsageError` when `run_dir` holds no finished part of a run (no summary.json).
    """
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(
            f"{run_dir}: no summary.json, so no finished run (a run killed before its end "
            "writes none: resume it with --resume, and the report is written at its end)"
        ) from None
    except (OSError, ValueError) as error:
        raise UsageError(f"{run_dir}/summary.json cannot be read: {error}") from None
    if not isinstance(summary, dict):
        raise UsageError(f"{run_dir}/summary.json is not a run summary")
    counts = summary.get("counts") or {}
    wanted = any(counts.get(o) for o in ("failed", "invalid", "conflict"))
    # A clean million-row results.csv need not be read to find that nothing failed.
    problems = first_problems(run_dir / "results.csv", FAILURES_SHOWN) if wanted else []
    parts = split_parts(read_timeline(run_dir / "state.sqlite"))
    page = render_report(summary, problems, parts, run_dir=run_dir)
    target = run_dir / REPORT_FILE
    tmp = target.with_name(target.name + ".tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, target)
    except OSError as error:
        raise UsageError(f"cannot write {target}: {error.strerror or error}") from None
    return target
