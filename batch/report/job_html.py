"""job.html: what a `job run` did, next to the job log, with a link to each file's report.html.

One page per job (rewritten by every job run): this run's files with their figures, then the
job's recent files from its state (`JobState.recent`), so the page still answers "what happened
last night?" after a later run found nothing new. Self-contained like report.html (inline CSS, no
script); links are relative, so the job's output folder can be moved or shared as a whole.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from batch.errors import EXIT_CODES

if TYPE_CHECKING:
    from batch.jobs.run import JobReport
    from batch.jobs.tenants import RollUp

__all__ = ["render_job_report", "render_tenants_report", "write_job_report", "write_tenants_report"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:0 auto;
max-width:1000px;padding:16px 24px 48px;color:#212121;line-height:1.4}
h1{font-size:1.45em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #e0e0e0}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.25em .5em;
border-bottom:1px solid #eeeeee;vertical-align:top}th{color:#455a64}
.ok{color:#2e7d32}.bad{color:#c62828;font-weight:600}.note{color:#607d8b;font-size:.9em}
code{font-size:.9em;word-break:break-all}
"""


def _e(value: object) -> str:
    return escape(str(value))


def _link(page: Path, target: Path, text: str) -> str:
    """A relative link from `page` to `target`, or the plain path if none can be made."""
    try:
        relative = os.path.relpath(target, page.parent)
    except ValueError:  # another drive (Windows): no relative path exists
        return f"<code>{_e(target)}</code>"
    return f'<a href="{_e(quote(Path(relative).as_posix()))}">{_e(text)}</a>'


def _counts(counts: Mapping[str, Any]) -> str:
    return ", ".join(f"{_e(k)} {int(v):,}" for k, v in sorted(counts.items()) if v) or "—"


def _run_links(page: Path, run_dir: object) -> str:
    if not run_dir:
        return "—"
    folder = Path(str(run_dir))
    links = [_link(page, folder, folder.name)]
    if (folder / "report.html").exists():
        links.append(_link(page, folder / "report.html", "report"))
    if (folder / "failures.csv").exists():
        links.append(_link(page, folder / "failures.csv", "failures.csv"))
    return " · ".join(links)


def _sections(
    page: Path, report: JobReport, recent: Sequence[Mapping[str, Any]], h: str = "h2"
) -> str:
    """This run's files and the job's recent files (headings at level `h`)."""
    from batch.jobs.run import STATUS_WORDS

    rows = "".join(
        f"<tr><td><code>{_e(f.path.name)}</code></td>"
        f'<td class="{"ok" if f.status == "ok" else "bad"}">{_e(STATUS_WORDS[f.status])}'
        f"{' (resumed)' if f.resumed else ''}</td><td>{f.exit_code}</td>"
        f"<td>{_counts(f.counts)}</td><td>{_run_links(page, f.run_dir)}</td>"
        f"<td>{_e(f.error)}</td></tr>"
        for f in report.files
    )
    this_run = (
        "<table><tr><th>file</th><th>status</th><th>exit</th><th>rows</th><th>run folder</th>"
        f"<th>error</th></tr>{rows}</table>"
        if report.files
        else '<p class="note">No new files in this run.</p>'
    )
    history = "".join(
        f"<tr><td><code>{_e(Path(str(r.get('path', ''))).name)}</code></td>"
        f"<td>{_e(r.get('state', ''))}</td><td>{_e(r.get('exit_code', ''))}</td>"
        f"<td>{_counts(r.get('counts') or {})}</td>"
        f"<td>{_run_links(page, r.get('run_dir'))}</td>"
        f"<td>{_e(r.get('started', ''))}</td><td>{_e(r.get('finished', ''))}</td></tr>"
        for r in recent
    )
    recent_table = (
        f"<{h}>Recent files of this {'tenant' if h == 'h3' else 'job'}</{h}>"
        "<table><tr><th>file</th><th>state</th><th>exit</th>"
        "<th>rows</th><th>run folder</th><th>started</th><th>finished</th></tr>"
        f"{history}</table>"
        if recent
        else ""
    )
    return f"<{h}>This run</{h}>{this_run}{recent_table}"


def _head(title: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
    )


def render_job_report(
    page: Path, report: JobReport, recent: Sequence[Mapping[str, Any]] = ()
) -> str:
    """The page for one job run (`page`: where it will be written, for relative links)."""
    code = report.exit_code
    return (
        _head(f"job {report.job.name}") + f"<h1>Job {_e(report.job.name)}</h1>"
        f'<p data-key="exit_code" data-value="{code}"><b>exit {code}</b>: '
        f"{_e(EXIT_CODES.get(code, 'see the job log'))}</p>"
        f"<p>{_e(report.line())}</p>"
        f'<p class="note">job file <code>{_e(report.job.path)}</code> · started '
        f"{_e(report.started)} · ended {_e(report.ended)} · log "
        f"{_link(page, report.job.log_file, report.job.log_file.name)}</p>"
        f"{_sections(page, report, recent)}</body></html>\n"
    )


def render_tenants_report(page: Path, rollup: RollUp) -> str:
    """The page for a job run over [[tenants]]: the verdict, then one section per tenant."""
    code = rollup.exit_code
    job = rollup.job
    overview = "".join(
        f'<tr><td><a href="#tenant-{_e(quote(t.name))}">{_e(t.name)}</a></td>'
        f'<td class="{"ok" if t.exit_code == 0 else "bad"}">{t.exit_code}</td>'
        f"<td>{len(t.report.files) if t.report else 0}</td>"
        f"<td>{_counts(t.report.counts() if t.report else {})}</td><td>{_e(t.error)}</td></tr>"
        for t in rollup.tenants
    )
    sections = []
    for t in rollup.tenants:
        body = (
            _sections(page, t.report, t.recent, h="h3")
            if t.report is not None
            else f'<p class="bad">not run: {_e(t.error)}</p>'
        )
        sections.append(
            f'<h2 id="tenant-{_e(quote(t.name))}">Tenant {_e(t.name)}</h2>'
            f'<p data-key="tenant_exit_code" data-value="{t.exit_code}"><b>exit {t.exit_code}'
            f"</b>: {_e(EXIT_CODES.get(t.exit_code, 'see the log'))}</p>"
            f"<p>{_e(t.line())}</p>"
            f'<p class="note">run folders <code>{_e(t.job.output_root)}</code> · log '
            f"{_link(page, t.job.log_file, t.job.log_file.name)}</p>{body}"
        )
    count = len(rollup.tenants)
    return (
        _head(f"job {job.name}")
        + f"<h1>Job {_e(job.name)}: {count} tenant{'' if count == 1 else 's'}</h1>"
        f'<p data-key="exit_code" data-value="{code}"><b>exit {code}</b>: '
        f"{_e(EXIT_CODES.get(code, 'see the job log'))}</p>"
        f'<p class="note">job file <code>{_e(job.path)}</code> · started '
        f"{_e(rollup.started)} · ended {_e(rollup.ended)} · log "
        f"{_link(page, job.log_file, job.log_file.name)}</p>"
        "<h2>Tenants</h2><table><tr><th>tenant</th><th>exit</th><th>files</th><th>rows</th>"
        f"<th>error</th></tr>{overview}</table>{''.join(sections)}</body></html>\n"
    )


def write_tenants_report(page: Path, rollup: RollUp) -> Path:
    """Write a multi-tenant job's job.html at `page` (through a temporary file)."""
    tmp = page.with_name(page.name + ".tmp")
    tmp.write_text(render_tenants_report(page, rollup), encoding="utf-8")
    os.replace(tmp, page)
    return page


def write_job_report(
    page: Path, report: JobReport, recent: Sequence[Mapping[str, Any]] = ()
) -> Path:
    """Write job.html at `page` (through a temporary file: readers never see half a page)."""
    tmp = page.with_name(page.name + ".tmp")
    tmp.write_text(render_job_report(page, report, recent), encoding="utf-8")
    os.replace(tmp, page)
    return page
