"""The exact commands that continue and undo a run, for summary.json and report.html.

`--resume` must be given the options the run started with (the ledger refuses a changed input,
but not, say, another `--mode`), so the resume command spells out every option that differs
from its default, not just `--out`. Secrets never appear: they are never options. Paths are
written as the run was given them, so the command works from the folder the run started in.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from batch.clouds import CLOUDS
from batch.resources import EVENTS

if TYPE_CHECKING:
    from batch.options import RunOptions

__all__ = ["report_command", "resume_command", "revert_command"]

_PROGRAM = "autopilot-batch"


def _join(words: list[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)


def _send_options(options: RunOptions) -> list[str]:
    """The sending options of `run` and `revert` that differ from their defaults."""
    words: list[str] = []
    if options.sending.mode != "batch":
        words += ["--mode", options.sending.mode]
    if options.sending.batch_size != 20:
        words += ["--batch-size", str(options.sending.batch_size)]
    if str(options.sending.write_limit) != "100/20":
        words += ["--write-limit", str(options.sending.write_limit)]
    if options.sending.read_limit is not None:
        words += ["--read-limit", str(options.sending.read_limit)]
    if options.sending.concurrency is not None:
        words += ["--concurrency", str(options.sending.concurrency)]
    if options.sending.max_retries != 8:
        words += ["--max-retries", str(options.sending.max_retries)]
    if options.target.cloud != "global":
        words += ["--cloud", options.target.cloud]
    cloud = CLOUDS.get(options.target.cloud.lower())
    if cloud is None or cloud.graph_root.rstrip("/") != options.target.graph_root.rstrip("/"):
        words += ["--graph-url", options.target.graph_root]
    if options.judging.force:
        words.append("--force")
    return words


def _input_options(options: RunOptions) -> list[str]:
    i = options.source.reading
    words: list[str] = []
    for flag, value in (
        # Only a resource other than the CLI's default is spelt out: a run of events keeps
        # the command it always had.
        ("--resource", None if i.resource is EVENTS else i.resource.name),
        ("--encoding", i.encoding),
        ("--sheet", i.sheet),
        ("--map", None if i.map_file is None else str(i.map_file)),
        ("--assume-tz", i.assume_tz),
        ("--key", i.key),
        ("--pick", options.source.pick),
        ("--header-row", None if i.header_row is None else str(i.header_row)),
    ):
        if value is not None:
            words += [flag, value]
    if i.null_token != "<null>":
        words += ["--null-token", i.null_token]
    for flag, on in (
        ("--ignore-unknown-columns", i.ignore_unknown_columns),
        ("--allow-numeric-text", i.allow_numeric_text),
        ("--skip-hidden-rows", i.skip_hidden_rows),
        ("--only-changed", options.judging.only_changed),
        ("--no-backup", not options.judging.backup),
        ("--accept-lost-zeros", options.judging.accept_lost_zeros),
        ("--verify", options.judging.verify),
    ):
        if on:
            words.append(flag)
    return words


def resume_command(options: RunOptions, out_dir: Path, *, reverting: bool) -> str | None:
    """The command that continues this run (None: a dry run, which leaves nothing to resume).

    `reverting`: the run is a `revert` (its `options.source.file` is the reverted run's folder).
    """
    if options.dry_run:
        return None
    if reverting:
        words = [_PROGRAM, "revert", str(options.source.file), "--out", str(out_dir), "--resume"]
        return _join(words + _send_options(options))
    words = [_PROGRAM, "run", str(options.source.file), "--out", str(out_dir), "--resume"]
    return _join(words + _send_options(options) + _input_options(options))


def revert_command(out_dir: Path, *, wrote: bool) -> str | None:
    """The command that undoes this run (None when it wrote nothing)."""
    return _join([_PROGRAM, "revert", str(out_dir)]) if wrote else None


def report_command(out_dir: Path) -> str:
    """The command that writes the run folder's report.html again."""
    return _join([_PROGRAM, "report", str(out_dir)])
