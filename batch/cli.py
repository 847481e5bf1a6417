"""The `autopilot-batch` command line: a thin layer over the library.

Each command parses its options, calls into the library, and turns domain errors (`batch.errors`)
into one-line messages and the exit codes of CONTRACT.md. Nothing else lives here. That turning
happens in one place, `_domain_errors`, the block every command runs in; `main` says it the same
way (`_say`) for what escapes a command: a domain error wrapped in a task group's exception group.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import anyio
import typer
from typer.core import TyperGroup

from batch import __version__
from batch.errors import EXIT_CODES, BatchError, UsageError
from batch.logs import setup_console
from batch.model import Rate

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from batch.auth import TokenProvider
    from batch.engine import RunSummary
    from batch.mapper import InputOptions, Prepared
    from batch.options import RunOptions, Sending
    from batch.resources import Resource


# Commands import the heavy modules (pandas, httpx, msal) when they run, so `--help` stays quick.

__all__ = ["app", "main"]

# `--help` lists commands as a user meets them. Typer keeps registration order but always puts
# sub-apps (`job`) after plain commands, so the order is stated once here.
_COMMAND_ORDER = (
    "validate", "run", "revert", "report", "export", "job", "whoami", "schema", "template",
    "emulator", "demo",
)  # fmt: skip


class _CommandOrder(TyperGroup):
    # `ctx` is typer's vendored click Context, which typer does not export: typed Any.
    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        # A command missing from _COMMAND_ORDER still shows, after the ordered ones.
        return sorted(names, key=lambda n: (*_COMMAND_ORDER, n).index(n))


app = typer.Typer(
    name="autopilot-batch",
    cls=_CommandOrder,
    help="Bulk-update Windows Autopilot events in Intune through Microsoft Graph from CSV/Excel.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


# Options shared by several commands (one definition, one help text).
EncodingOpt = Annotated[
    str | None, typer.Option(help="CSV text encoding (default UTF-8, with or without BOM).")
]
SheetOpt = Annotated[str | None, typer.Option(help="Excel sheet name (default: the first).")]
MapOpt = Annotated[
    Path | None,
    typer.Option("--map", help='TOML column map: [columns] "Serial" = "deviceSerialNumber".'),
]
NullTokenOpt = Annotated[str, typer.Option(help="Cell text that sends JSON null.")]
AssumeTzOpt = Annotated[
    str | None,
    typer.Option(help="Time zone for date-times without offset, e.g. Europe/Berlin or UTC."),
]
IgnoreUnknownOpt = Annotated[
    bool, typer.Option(help="Skip columns that are not properties instead of failing.")
]
HeaderRowOpt = Annotated[
    int | None,
    typer.Option(
        metavar="N",
        help="The header is row N (rows above it are a title); default: the first row.",
    ),
]
AllowNumericTextOpt = Annotated[
    bool,
    typer.Option(
        help="Send a General-format number in a text column (e.g. a serial typed as a number) "
        "as its digits; otherwise such rows are invalid, as Excel may have dropped zeros.",
    ),
]
SkipHiddenRowsOpt = Annotated[
    bool,
    typer.Option(help="Leave out rows hidden in the sheet (by a filter); they are 'skipped'."),
]
CloudOpt = Annotated[str, typer.Option(help="global, usgov, usgovdod or china.")]
GraphUrlOpt = Annotated[
    str | None, typer.Option(help="Graph root override, e.g. http://127.0.0.1:8765.")
]
AuthorityHostOpt = Annotated[str | None, typer.Option(help="Sign-in authority host override.")]
DeviceCodeOpt = Annotated[
    bool, typer.Option(help="Delegated sign-in with a device code (an admin at a terminal).")
]
TokenCacheOpt = Annotated[
    bool, typer.Option(help="Keep the sign-in cache in the user's config directory (0600).")
]
ManagedIdentityOpt = Annotated[
    bool,
    typer.Option(help="Sign in as the host's managed identity (Automation, Functions, VMs, Arc)."),
]
ManagedIdentityClientIdOpt = Annotated[
    str | None,
    typer.Option(help="Client id of a user-assigned managed identity (else AZURE_CLIENT_ID)."),
]
AzureCliOpt = Annotated[
    bool, typer.Option(help="Use the Azure CLI's sign-in (`az login`), renewed before expiry.")
]
InputArg = Annotated[Path, typer.Argument(help="The CSV or Excel file of updates.")]
ModeOpt = Annotated[str, typer.Option(help="single (one PATCH per row) or batch ($batch).")]
BatchSizeOpt = Annotated[int, typer.Option(help="Requests per $batch, 1-20.")]
WriteLimitOpt = Annotated[
    str | None,
    typer.Option(
        help="Write budget N/SECONDS, never exceeded (default: the resource's documented "
        "per-app limit, 100/20 for events and devices)."
    ),
]
ResourceOpt = Annotated[
    str,
    typer.Option(
        "--resource",
        metavar="events|devices",
        help="What the rows update: events (autopilot events, PATCH) or devices (Autopilot "
        "device identities: group tag, assigned user, display name; POST updateDeviceProperties).",
    ),
]
ReadLimitOpt = Annotated[
    str | None, typer.Option(help="Read budget N/SECONDS (default: 10x the write budget).")
]
ConcurrencyOpt = Annotated[
    int | None,
    typer.Option(
        help="Requests in flight at most (default: 4 in batch mode, 16 in single mode).",
        show_default=False,
    ),
]
MaxRetriesOpt = Annotated[
    int, typer.Option(help="Retries per row for 429/503/504/connection errors.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        metavar="PROPERTY",
        help="The file has no id column: find each row's event by deviceSerialNumber or "
        "managedDeviceName, or each device by serialNumber (--resource devices); case and "
        "surrounding spaces ignored, leading zeros kept.",
    ),
]
PickOpt = Annotated[
    str | None,
    typer.Option(
        metavar="latest",
        help="With --key: when several events share a key, take the newest eventDateTime "
        "(otherwise such rows are invalid). Not for devices: serials are unique.",
    ),
]


def _resource(name: str) -> Resource:
    """`--resource NAME` as its description; `UsageError` naming the choices."""
    from batch.resources import resource

    try:
        return resource(name)
    except ValueError as error:
        raise UsageError(f"--resource: {error}") from None


def _input_options(
    encoding: str | None,
    sheet: str | None,
    map_file: Path | None,
    null_token: str,
    assume_tz: str | None,
    ignore_unknown_columns: bool,
    key: str | None,
    pick: str | None,
    excel: tuple[int | None, bool, bool] = (None, False, False),
    resource: str = "events",
) -> InputOptions:
    """The reading options `run` and `validate` share, checked (`--key`, `--pick`).

    `excel` is (`--header-row`, `--allow-numeric-text`, `--skip-hidden-rows`).
    """
    from batch.mapper import InputOptions
    from batch.options import key_choice

    header_row, allow_numeric_text, skip_hidden_rows = excel
    what = _resource(resource)
    return InputOptions(
        resource=what,
        encoding=encoding,
        sheet=sheet,
        map_file=map_file,
        null_token=null_token,
        assume_tz=assume_tz,
        ignore_unknown_columns=ignore_unknown_columns,
        key=key_choice(key, pick, what),
        header_row=header_row,
        allow_numeric_text=allow_numeric_text,
        skip_hidden_rows=skip_hidden_rows,
    )


def _sending(
    mode: str,
    batch_size: int,
    write_limit: str | None,
    read_limit: str | None,
    concurrency: int | None,
    max_retries: int,
    resource: Resource,
) -> Sending:
    """How `run` and `revert` send, from the options they share, parsed and checked.

    No `--write-limit`: the resource's documented budget (`Resource.write_limit`).
    """
    from batch.options import Sending

    return Sending(
        mode=_mode(mode),
        batch_size=batch_size,
        write_limit=(
            _parse_rate(write_limit, "--write-limit") if write_limit else resource.write_limit
        ),
        read_limit=_parse_rate(read_limit, "--read-limit") if read_limit else None,
        concurrency=concurrency,
        max_retries=max_retries,
    )


def _version(value: bool) -> None:
    if value:
        typer.echo(f"autopilot-batch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Bulk-update Windows Autopilot events in Intune through Microsoft Graph from CSV/Excel."""


def error_object(message: str, exit_code: int) -> str:
    """The one JSON object a `--json` command prints on stdout when it fails."""
    return json.dumps({"ok": False, "error": message, "exit_code": exit_code}, ensure_ascii=False)


def _say(error: BatchError, *, as_json: bool, open_object: str | None = None) -> None:
    """A domain error as one `Error:` line on stderr (and, with `--json`, a JSON object).

    `open_object`: what closes a JSON object the command already began on stdout; the error's
    fields then complete that object, so stdout still holds exactly one.
    """
    if as_json:
        answer = error_object(str(error), error.exit_code)
        typer.echo(answer if open_object is None else open_object + answer[1:])
    typer.echo(f"Error: {error}", err=True)


def fail(error: BatchError, *, as_json: bool = False) -> NoReturn:
    """Print a domain error as one line on stderr and exit with its code.

    `as_json` (the command's `--json`): stdout also gets one JSON object saying so, since a
    script reading stdout must get an answer whatever happened.
    """
    _say(error, as_json=as_json)
    raise typer.Exit(error.exit_code)


@dataclass
class _Stdout:
    """What a command has begun on stdout, as far as its error handler must know."""

    # Set by a command that streams one JSON object (`validate --json`) once it has begun
    # writing it: the text that closes what is open before the error's fields are added.
    open_object: str | None = None


@contextmanager
def _domain_errors(*, as_json: bool = False) -> Iterator[_Stdout]:
    """Every command's one handler: a `BatchError` becomes `Error: ...` and its exit code.

    The library raises its own errors and knows nothing of terminals (sqlite-utils' split); the
    block a command runs in this turns them into CONTRACT.md's messages and exit codes. Anything
    else passes through to `main`, which reports a bug as one line too.
    """
    stdout = _Stdout()
    try:
        yield stdout
    except BatchError as error:
        _say(error, as_json=as_json, open_object=stdout.open_object)
        raise typer.Exit(error.exit_code) from None


# What the interpreter or the user raise to stop: never a bug, so never reported as one.
_STOPS = (KeyboardInterrupt, SystemExit, GeneratorExit)
# An internal error's message is cut here: it is one line on a terminal, not a dump.
_INTERNAL_ERROR_CHARS = 500


def _first_leaf(error: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups, or `error` itself."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def _internal_error_line(error: BaseException) -> str:
    leaf = _first_leaf(error)
    text = " ".join(str(leaf).split())  # a panic message may span lines
    if len(text) > _INTERNAL_ERROR_CHARS:
        text = text[: _INTERNAL_ERROR_CHARS - 1] + "…"
    return (
        f"Internal error: {type(leaf).__name__}: {text} "
        "(set AUTOPILOT_BATCH_DEBUG=1 for the traceback, and please report it)"
    )


def _main_for_json() -> int:
    """`app()` for a command line with `--json`: a usage error is one JSON object too.

    Click reports a bad option itself and exits 2; in standalone mode nothing reaches stdout.
    Typer vendors click in newer releases (its exception classes moved), so the usage error is
    recognised by what it offers (`exit_code`, `format_message`, `show`), not by its class.
    """
    try:
        code = app(standalone_mode=False)
    except Exception as error:
        exit_code = getattr(error, "exit_code", None)
        show = getattr(error, "show", None)
        message = getattr(error, "format_message", None)
        if isinstance(exit_code, int) and callable(show) and callable(message):
            typer.echo(error_object(str(message()), exit_code))
            show()
            return exit_code
        raise
    return code if isinstance(code, int) else 0


def main() -> None:
    """Console-script entry point: no traceback ever reaches the user for a known error."""
    as_json = "--json" in sys.argv[1:]
    try:
        if as_json:
            sys.exit(_main_for_json())
        app()
    except BatchError as error:
        _say(error, as_json=as_json)
        sys.exit(error.exit_code)
    except BaseException as error:
        # A bug: still one line, the traceback only on request. BaseException, not Exception:
        # libraries raise BaseException subclasses too (a Rust panic in python-calamine is
        # pyo3_runtime.PanicException). Interrupts and exits keep their meaning.
        stops = error.subgroup(_STOPS) if isinstance(error, BaseExceptionGroup) else None
        if isinstance(error, _STOPS) or stops is not None:
            raise
        if isinstance(error, BaseExceptionGroup):
            # A task group's wrapping of a domain error (all its members): as if raised alone.
            errors, rest = error.split(BatchError)
            if errors is not None and rest is None:
                leaf = _first_leaf(errors)
                assert isinstance(leaf, BatchError)
                _say(leaf, as_json=as_json)
                sys.exit(leaf.exit_code)
        if os.environ.get("AUTOPILOT_BATCH_DEBUG"):
            raise
        line = _internal_error_line(error)
        if as_json:
            typer.echo(error_object(line, 1))
        typer.echo(line, err=True)
        sys.exit(1)


# --- run and demo ---------------------------------------------------------------------------

_RUN_EXAMPLE = """
\b
Examples:
  GRAPH_ACCESS_TOKEN=... autopilot-batch run events.csv --dry-run
  autopilot-batch run events.xlsx --sheet Updates --mode single --write-limit 100/20
  autopilot-batch run events.csv --out runs/migration --resume
  autopilot-batch run events.csv --only-changed --dry-run
  autopilot-batch run serials.csv --key deviceSerialNumber --pick latest
  autopilot-batch run devices.csv --resource devices --key serialNumber --only-changed --verify
\b
Exit codes:
""" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items() if code != 75)


def _execute(
    options: RunOptions, tokens: TokenProvider | None, *, quiet: bool, **kw: Any
) -> RunSummary:
    """Run the engine with the progress display `--quiet`/`--json` ask for."""
    from batch.engine import execute
    from batch.progress import make_progress

    return anyio.run(
        lambda: execute(options, tokens=tokens, progress=make_progress(quiet=quiet), **kw)
    )


def _print_summary(summary: RunSummary, *, as_json: bool) -> None:
    from batch.report.console import summary_lines

    if as_json:
        typer.echo(json.dumps(summary.data, ensure_ascii=False))
        return
    for line in summary_lines(summary.data, summary.out_dir):
        typer.echo(line)


def _parse_rate(text: str, option: str) -> Rate:
    try:
        return Rate.parse(text)
    except ValueError as error:
        raise UsageError(f"{option}: {error}") from None


@app.command(epilog=_RUN_EXAMPLE)
def run(
    input: InputArg,
    out: Annotated[
        Path | None,
        typer.Option(help="Run folder (default runs/<UTC timestamp>-<input stem>/)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the interrupted run in --out; sent rows are not resent.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option(help="Validate and plan; write requests.jsonl; send nothing.")
    ] = False,
    resource: ResourceOpt = "events",
    mode: ModeOpt = "batch",
    batch_size: BatchSizeOpt = 20,
    write_limit: WriteLimitOpt = None,
    read_limit: ReadLimitOpt = None,
    concurrency: ConcurrencyOpt = None,
    max_retries: MaxRetriesOpt = 8,
    only_changed: Annotated[
        bool,
        typer.Option(
            help="Read current values first; rows that already hold them are 'unchanged' and "
            "not written; only changed properties are sent. With --dry-run: print the diff."
        ),
    ] = False,
    backup: Annotated[
        bool,
        typer.Option(
            "--backup/--no-backup",
            help="Save each row's current values (before.jsonl) before writing it, for revert.",
        ),
    ] = True,
    force: Annotated[
        bool,
        typer.Option(
            help="A file from export: write the cells you edited even where the tenant changed "
            "them since the export (otherwise they are 'conflict' and not written)."
        ),
    ] = False,
    accept_lost_zeros: Annotated[
        bool,
        typer.Option(
            help="Send changes that only strip the current value's leading zeros or write it "
            "in scientific notation (otherwise such rows are 'invalid': Excel's damage)."
        ),
    ] = False,
    verify: Annotated[
        bool,
        typer.Option(
            help="Read every written row back (read budget); a write Graph accepted but did "
            "not apply is sent once more, then 'failed' (accepted but not applied)."
        ),
    ] = False,
    encoding: EncodingOpt = None,
    sheet: SheetOpt = None,
    map_file: MapOpt = None,
    null_token: NullTokenOpt = "<null>",
    assume_tz: AssumeTzOpt = None,
    ignore_unknown_columns: IgnoreUnknownOpt = False,
    header_row: HeaderRowOpt = None,
    allow_numeric_text: AllowNumericTextOpt = False,
    skip_hidden_rows: SkipHiddenRowsOpt = False,
    key: KeyOpt = None,
    pick: PickOpt = None,
    cloud: CloudOpt = "global",
    graph_url: GraphUrlOpt = None,
    authority_host: AuthorityHostOpt = None,
    device_code: DeviceCodeOpt = False,
    token_cache: TokenCacheOpt = False,
    managed_identity: ManagedIdentityOpt = False,
    managed_identity_client_id: ManagedIdentityClientIdOpt = None,
    azure_cli: AzureCliOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Send the updates in INPUT to Graph and write the run folder."""
    from batch.auth import build_token_provider
    from batch.clouds import resolve_endpoints
    from batch.options import Judging, RunOptions, Source, Target

    setup_console(quiet=quiet or as_json)
    with _domain_errors(as_json=as_json):
        endpoints = resolve_endpoints(cloud, graph_url=graph_url, authority_host=authority_host)
        reading = _input_options(
            encoding,
            sheet,
            map_file,
            null_token,
            assume_tz,
            ignore_unknown_columns,
            key,
            pick,
            (header_row, allow_numeric_text, skip_hidden_rows),
            resource,
        )
        sending = _sending(
            mode,
            batch_size,
            write_limit,
            read_limit,
            concurrency,
            max_retries,
            reading.resource,
        )
        options = RunOptions(
            source=Source(file=input, reading=reading, pick=pick),
            sending=sending,
            target=Target(graph_root=endpoints.graph_root, cloud=endpoints.cloud),
            judging=Judging(
                only_changed=only_changed,
                backup=backup,
                force=force,
                accept_lost_zeros=accept_lost_zeros,
                verify=verify,
            ),
            dry_run=dry_run,
            resume=resume,
            out=out,
        )
        tokens = (
            None
            if not options.touches_graph
            else build_token_provider(
                endpoints,
                device_code=device_code,
                token_cache=token_cache,
                managed_identity=managed_identity,
                managed_identity_client_id=managed_identity_client_id,
                azure_cli=azure_cli,
            )
        )
        summary = _execute(
            options,
            tokens,
            quiet=quiet or as_json,
            on_prepared=_token_lifetime_check(tokens, options.sending.write_limit),
        )
    _print_summary(summary, as_json=as_json)
    raise typer.Exit(summary.exit_code)


def _token_lifetime_check(
    tokens: TokenProvider | None, write_limit: Rate
) -> Callable[[Prepared], None]:
    """Once the rows are counted: warn when a handed-in token will expire before the run ends."""

    def check(prepared: Prepared) -> None:
        from batch.auth import token_lifetime_warning

        warning = token_lifetime_warning(tokens, prepared.total, write_limit) if tokens else None
        if warning:
            logging.getLogger("batch.auth").warning("%s", warning)

    return check


def _mode(text: str) -> Literal["single", "batch"]:
    if text == "single":
        return "single"
    if text == "batch":
        return "batch"
    raise UsageError(f"--mode must be single or batch, not {text!r}")


_DEMO_TOKEN = "demo-token"


@dataclass(frozen=True)
class _Demo:
    """One resource's demo: its bundled sample, the `--key` it is read with, and how the
    emulator's tenant is filled for it (after the sample is prepared)."""

    sample: str
    key: str | None
    fill: Callable[[Any, Prepared], None]


def _fill_events(server: Any, prepared: Prepared) -> None:
    # The emulator's tenant holds an event for every id in the sample, with other values.
    from batch.emulator import generate_event

    rng = random.Random(2026)
    ids = dict.fromkeys(m.event_id for _, m in prepared.rows() if m.event_id)
    server.add_events(generate_event(rng, event_id=i) for i in ids)


def _fill_devices(server: Any, prepared: Prepared) -> None:
    # `sample_data/devices.csv` is made from these devices' serials (make_samples.py).
    from batch.emulator.devices import demo_devices

    server.add_devices(demo_devices())


_DEMOS: dict[str, _Demo] = {
    "events": _Demo("events.csv", None, _fill_events),
    "devices": _Demo("devices.csv", "serialNumber", _fill_devices),
}


@app.command(
    epilog="\b\nExample:\n  autopilot-batch demo\n  autopilot-batch demo --mode single --quiet"
    "\n  autopilot-batch demo --resource devices"
)
def demo(
    input: Annotated[
        Path | None, typer.Option(help="Updates to run (default: the bundled sample).")
    ] = None,
    resource: Annotated[
        str,
        typer.Option(
            "--resource",
            metavar="events|devices",
            help="events, or devices: group tags and users of the bundled devices.csv, "
            "keyed by serial number.",
        ),
    ] = "events",
    mode: Annotated[str, typer.Option(help="single or batch.")] = "batch",
    write_limit: Annotated[
        str, typer.Option(help="The emulator's (and the tool's) write limit, scaled down.")
    ] = "100/5",
    out: Annotated[Path | None, typer.Option(help="Run folder.")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Start the Graph emulator in-process and run the bundled sample through it."""
    from batch.auth import StaticTokenProvider
    from batch.emulator import EmulatorConfig, EmulatorServer
    from batch.mapper import InputOptions
    from batch.options import RunOptions, Sending, Source, Target

    setup_console(quiet=quiet or as_json)
    with _domain_errors(as_json=as_json):
        what = _resource(resource)
        setup = _DEMOS[what.name]
        sample = input or _bundled_sample(setup.sample)
        limit = _parse_rate(write_limit, "--write-limit")
        options = RunOptions(
            source=Source(file=sample, reading=InputOptions(resource=what, key=setup.key)),
            sending=Sending(mode=_mode(mode), write_limit=limit),
            out=out,
        )
        tenant_limit = Rate(limit.count * 2, limit.seconds)
        config = EmulatorConfig(
            write_limit=limit,
            tenant_write_limit=tenant_limit,
            device_write_limit=limit,
            device_tenant_write_limit=tenant_limit,
            token=_DEMO_TOKEN,
            seed=2026,
        )
        with EmulatorServer(config) as server:

            def preload(prepared: Prepared) -> None:
                setup.fill(server, prepared)

            options = replace(options, target=Target(graph_root=server.url))
            if not (quiet or as_json):
                typer.echo(f"Graph emulator listening on {server.url} (limit {limit})", err=True)
            summary = _execute(
                options,
                StaticTokenProvider(_DEMO_TOKEN),
                quiet=quiet or as_json,
                on_prepared=preload,
            )
            stats = server.stats()
    _print_summary(summary, as_json=as_json)
    if not as_json:
        typer.echo(
            f"emulator: {stats['writes']} writes accepted, {stats['throttled']} answered 429, "
            f"{stats['during_retry_after']} sent during a Retry-After"
        )
    raise typer.Exit(summary.exit_code)


def _bundled_sample(name: str = "events.csv") -> Path:
    sample = Path(__file__).resolve().parent.parent / "sample_data" / name
    if not sample.exists():
        raise UsageError(
            f"the bundled sample {sample} is missing (installed without the source tree); "
            "pass --input FILE"
        )
    return sample


# --- revert -----------------------------------------------------------------------------------

_REVERT_EXAMPLE = """
\b
Examples:
  autopilot-batch revert runs/20260301T101500Z-events --dry-run
  autopilot-batch revert runs/20260301T101500Z-events
  autopilot-batch revert runs/20260301T101500Z-events --force --out runs/undo
\b
Every row the run updated gets its before-image back, as a run of its own (default folder
runs/<UTC timestamp>-revert-<run folder name>/, resumable with --resume). A field someone else
changed since the run is left alone unless --force; its row is 'conflict' (in failures.csv with
both values) and its other fields are restored. Exit codes as for run (conflicts: 1). Graph
and cloud default to the ones the run used.
"""


@app.command(epilog=_REVERT_EXAMPLE)
def revert(
    run_dir: Annotated[Path, typer.Argument(help="The run folder whose changes to undo.")],
    out: Annotated[
        Path | None,
        typer.Option(help="Run folder (default runs/<UTC timestamp>-revert-<RUN_DIR name>/)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted revert (in --out, or the latest).")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(help="Read and compare; print the diff, write requests.jsonl; no writes."),
    ] = False,
    force: Annotated[
        bool, typer.Option(help="Restore fields even where someone else changed them since.")
    ] = False,
    mode: ModeOpt = "batch",
    batch_size: BatchSizeOpt = 20,
    write_limit: WriteLimitOpt = None,
    read_limit: ReadLimitOpt = None,
    concurrency: ConcurrencyOpt = None,
    max_retries: MaxRetriesOpt = 8,
    cloud: Annotated[
        str | None, typer.Option(help="global, usgov, usgovdod or china (default: the run's).")
    ] = None,
    graph_url: Annotated[
        str | None, typer.Option(help="Graph root override (default: the run's).")
    ] = None,
    authority_host: AuthorityHostOpt = None,
    device_code: DeviceCodeOpt = False,
    token_cache: TokenCacheOpt = False,
    managed_identity: ManagedIdentityOpt = False,
    managed_identity_client_id: ManagedIdentityClientIdOpt = None,
    azure_cli: AzureCliOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Undo the changes of the run in RUN_DIR from its before-images."""
    from batch.auth import build_token_provider
    from batch.clouds import CLOUDS, resolve_endpoints
    from batch.mapper import InputOptions
    from batch.options import Judging, RunOptions, Source, Target
    from batch.revert import RevertPlan, recorded_endpoint, revert_out_dir

    setup_console(quiet=quiet or as_json)
    with _domain_errors(as_json=as_json):
        plan = RevertPlan(run_dir)
        if cloud is None and graph_url is None:
            recorded_cloud, recorded_root = recorded_endpoint(run_dir)
            cloud = recorded_cloud or "global"
            default = CLOUDS.get(cloud.lower())
            if recorded_root and (default is None or recorded_root != default.graph_root):
                graph_url = recorded_root
        endpoints = resolve_endpoints(
            cloud or "global", graph_url=graph_url, authority_host=authority_host
        )
        options = RunOptions(
            out=out or revert_out_dir(run_dir, Path("runs"), resume=resume),
            # The resource the run updated: its ledger says (`revert.recorded_resource`).
            source=Source(file=run_dir, reading=InputOptions(resource=plan.resource)),
            sending=_sending(
                mode,
                batch_size,
                write_limit,
                read_limit,
                concurrency,
                max_retries,
                plan.resource,
            ),
            target=Target(graph_root=endpoints.graph_root, cloud=endpoints.cloud),
            # A revert reads every row's current values: that is how it finds conflicts.
            judging=Judging(only_changed=True, backup=True, force=force),
            dry_run=dry_run,
            resume=resume,
        )
        if plan.total == 0:
            if as_json:
                typer.echo(json.dumps({"rows": 0, "exit_code": 0, "run_dir": str(run_dir)}))
            else:
                typer.echo(f"nothing to revert: the run in {run_dir} updated no rows")
            raise typer.Exit(0)
        if not (quiet or as_json):
            typer.echo(
                f"reverting {plan.total} rows of {run_dir} at {endpoints.graph_root}", err=True
            )
        tokens = build_token_provider(
            endpoints,
            device_code=device_code,
            token_cache=token_cache,
            managed_identity=managed_identity,
            managed_identity_client_id=managed_identity_client_id,
            azure_cli=azure_cli,
        )
        summary = _execute(options, tokens, quiet=quiet or as_json, plan=plan)
    _print_summary(summary, as_json=as_json)
    raise typer.Exit(summary.exit_code)


# --- report -----------------------------------------------------------------------------------

_REPORT_EXAMPLE = """
\b
Examples:
  autopilot-batch report runs/20260301T101500Z-events
  autopilot-batch report runs/migration && xdg-open runs/migration/report.html
\b
Every run writes report.html at its end (each part of a resumed run too); this writes it again
from the run folder (summary.json, results.csv, the ledger's timeline), e.g. after an upgrade.
It sends nothing. Exit codes: 0 written, 2 not a run folder (or not a finished one).
"""


@app.command(epilog=_REPORT_EXAMPLE)
def report(
    run_dir: Annotated[Path, typer.Argument(help="The run folder to write report.html for.")],
) -> None:
    """(Re)write RUN_DIR/report.html: one page with figures, outcomes, timeline and failures."""
    from batch.report.html import write_report

    with _domain_errors():
        if not run_dir.is_dir():
            raise UsageError(f"{run_dir}: no such run folder")
        target = write_report(run_dir)
    typer.echo(f"wrote {target}")


# --- whoami -----------------------------------------------------------------------------------

_WHOAMI_EXAMPLE = """
\b
Examples:
  AZURE_TENANT_ID=... AZURE_CLIENT_ID=... AZURE_CLIENT_SECRET=... autopilot-batch whoami
  autopilot-batch whoami --cloud usgov --json
  AZURE_CLIENT_ID=... autopilot-batch whoami --device-code --token-cache
  autopilot-batch whoami --resource devices
\b
Gets a token and reads one event id with it (GET .../autopilotEvents?$top=1&$select=id):
only Graph can tell whether a token works and the permission is granted.
With --resource devices it reads one Autopilot device (GET
.../windowsAutopilotDeviceIdentities?$top=1) and checks that resource's permission.
Exit codes: 0 Graph accepted the token and nothing says the permission is missing,
2 credential settings wrong or missing, 3 no token, Graph refused or could not be reached,
the token expired, or it lacks DeviceManagementManagedDevices.ReadWrite.All
(devices: DeviceManagementServiceConfig.ReadWrite.All).
"""


@app.command(epilog=_WHOAMI_EXAMPLE)
def whoami(
    resource: Annotated[
        str,
        typer.Option(
            "--resource",
            metavar="events|devices",
            help="Check the read and the permission a run of this resource needs.",
        ),
    ] = "events",
    cloud: CloudOpt = "global",
    graph_url: GraphUrlOpt = None,
    authority_host: AuthorityHostOpt = None,
    device_code: DeviceCodeOpt = False,
    token_cache: TokenCacheOpt = False,
    managed_identity: ManagedIdentityOpt = False,
    managed_identity_client_id: ManagedIdentityClientIdOpt = None,
    azure_cli: AzureCliOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Prove the token with one cheap Graph read; show tenant, app, cloud, expiry, permission."""
    from batch.auth import build_token_provider
    from batch.clouds import resolve_endpoints
    from batch.whoami import check_identity, expiry_text

    setup_console(quiet=as_json)
    with _domain_errors(as_json=as_json):
        what = _resource(resource)
        endpoints = resolve_endpoints(cloud, graph_url=graph_url, authority_host=authority_host)
        tokens = build_token_provider(
            endpoints,
            device_code=device_code,
            token_cache=token_cache,
            managed_identity=managed_identity,
            managed_identity_client_id=managed_identity_client_id,
            azure_cli=azure_cli,
        )
        identity = anyio.run(lambda: check_identity(endpoints, tokens, resource=what))
    if as_json:
        typer.echo(json.dumps(identity.to_json(), ensure_ascii=False))
    else:
        info = identity.info
        kind = "delegated scope" if info.delegated else "application role"
        verdict = {
            True: f"granted ({kind})",
            False: "MISSING",
            None: "not named in the token (opaque token); Graph's answer above decides",
        }
        graph = identity.graph
        request = f", request-id {graph.request_id}" if graph.request_id else ""
        said = (
            f"read works ({graph.status} {graph.message}, {graph.elapsed_ms} ms)"
            if graph.ok
            else f"REFUSED ({graph.status or 'no answer'}: {graph.message}{request})"
        )
        lines = [
            ("tenant", info.tenant),
            ("app id", info.app_id),
            *([("user", info.user)] if info.user else []),
            ("cloud", f"{endpoints.cloud} ({endpoints.graph_root})"),
            ("credential", identity.credential),
            ("expires", expiry_text(info.expires_at, identity.checked_at)),
            ("graph", said),
            ("permission", f"{identity.permission}: {verdict[identity.granted]}"),
        ]
        for label, value in lines:
            typer.echo(f"{label:<11} {value}")
    if identity.problem is not None:
        # --json already said it in its one object: the error line goes to stderr only.
        fail(identity.problem)


# --- validate, schema, template ---------------------------------------------------------------

_VALIDATE_EXAMPLE = """
\b
Examples:
  autopilot-batch validate events.csv
  autopilot-batch validate events.xlsx --sheet Updates --assume-tz Europe/Berlin
  autopilot-batch validate export.csv --map columns.toml --json > report.json
  autopilot-batch validate serials.csv --key deviceSerialNumber
\b
Bad rows go to stderr, one line per problem: "row 7: enrollmentState: must be one of ...
(got 'x')"; the summary goes to stdout.
Exit codes: 0 every row valid (or skipped), 1 some rows invalid, 2 the file cannot be used.
"""


def _json_line(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


@app.command(epilog=_VALIDATE_EXAMPLE)
def validate(
    input: InputArg,
    encoding: EncodingOpt = None,
    sheet: SheetOpt = None,
    map_file: MapOpt = None,
    null_token: NullTokenOpt = "<null>",
    assume_tz: AssumeTzOpt = None,
    ignore_unknown_columns: IgnoreUnknownOpt = False,
    header_row: HeaderRowOpt = None,
    allow_numeric_text: AllowNumericTextOpt = False,
    skip_hidden_rows: SkipHiddenRowsOpt = False,
    key: KeyOpt = None,
    pick: PickOpt = None,
    resource: ResourceOpt = "events",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Read and check every row of INPUT without touching Graph; list every problem."""
    from batch.mapper import prepare
    from batch.model import Invalid, Skipped, Update

    out, err = sys.stdout, sys.stderr
    counts = {"valid": 0, "invalid": 0, "skipped": 0}
    with _domain_errors(as_json=as_json) as stdout:
        options = _input_options(
            encoding,
            sheet,
            map_file,
            null_token,
            assume_tz,
            ignore_unknown_columns,
            key,
            pick,
            (header_row, allow_numeric_text, skip_hidden_rows),
            resource,
        )
        prepared = prepare(input, options)
        if not quiet and not as_json:
            for warning in prepared.warnings:
                typer.echo(f"warning: {warning}", err=True)
            if options.key:
                # validate never reads Graph: only `run` can tell which entity a key names.
                typer.echo(
                    f"note: rows are checked for a {options.key}; the {options.resource.noun} "
                    "ids are resolved from the tenant when you run the file",
                    err=True,
                )
        if as_json:
            # Streamed, so a million bad rows never sit in memory: counts come last.
            head = {
                "file": str(input),
                "sha256": prepared.sha256,
                "columns": prepared.columns,
                "warnings": prepared.warnings,
            }
            if options.key:
                head["key"] = options.key
            # The head object without its closing brace; the tail closes the list and the object.
            out.write(_json_line(head)[:-1] + ', "invalid_rows": [')
            stdout.open_object = "], "
        first = True
        file_warnings = set(prepared.warnings)
        # The summary counts every warning a row prints, not only the file's (with --quiet and
        # --json too: the count is what there is to see without them).
        row_warnings = 0
        for _raw, mapped in prepared.rows():
            if isinstance(mapped, Update | Skipped):
                counts["valid" if isinstance(mapped, Update) else "skipped"] += 1
                for warning in mapped.warnings:
                    # Legacy-column warnings are file-level ones, already said once.
                    if warning in file_warnings:
                        continue
                    row_warnings += 1
                    if not quiet and not as_json:
                        err.write(f"row {mapped.number}: warning: {warning}\n")
            elif isinstance(mapped, Invalid):
                counts["invalid"] += 1
                if as_json:
                    item = {
                        "row": mapped.number,
                        "id": mapped.event_id,
                        "problems": [
                            {"column": p.column, "value": p.value, "reason": p.reason}
                            for p in mapped.problems
                        ],
                    }
                    out.write(("" if first else ", ") + _json_line(item))
                    first = False
                else:
                    # Plain writes: a file of a million bad rows prints a million lines.
                    for problem in mapped.problems:
                        err.write(f"row {mapped.number}: {problem}\n")
    exit_code = 1 if counts["invalid"] else 0
    rows = sum(counts.values())
    if as_json:
        tail = {
            "rows": rows,
            **counts,
            "trimmed": prepared.trimmed,
            # `warnings` above lists the file's; this counts them and every row's.
            "warning_count": len(prepared.warnings) + row_warnings,
            "exit_code": exit_code,
        }
        out.write("], " + _json_line(tail)[1:] + "\n")
        out.flush()
    else:
        err.flush()
        if prepared.trimmed and not quiet:
            typer.echo(
                f"note: {prepared.trimmed} value(s) had surrounding spaces; they are trimmed",
                err=True,
            )
        warned = len(prepared.warnings) + row_warnings
        warnings = f", {warned} warning{'s' if warned != 1 else ''}" if warned else ""
        typer.echo(
            f"{input.name}: {rows} row{'s' if rows != 1 else ''}: {counts['valid']} valid, "
            f"{counts['invalid']} invalid, {counts['skipped']} skipped{warnings}"
        )
    raise typer.Exit(exit_code)


_SCHEMA_EXAMPLE = """
\b
Examples:
  autopilot-batch schema
  autopilot-batch schema --json | jq '.[] | select(.nullable) | .name'
  autopilot-batch schema --resource devices
"""


@app.command(epilog=_SCHEMA_EXAMPLE)
def schema(resource: ResourceOpt = "events", as_json: JsonOpt = False) -> None:
    """Show the columns an input file may have: property, type, nullable, allowed values."""
    with _domain_errors(as_json=as_json):
        what = _resource(resource)
    rows = [
        {
            "name": p.name,
            "type": p.type_name,
            "edm": p.edm,
            "nullable": p.nullable,
            "legacy": p.legacy,
            "key": p.key,
            "allowed": list(p.members),
            "description": p.description,
            # Read-only properties may be in a file (a device export fed back); never sent.
            **({} if p.writable or p.key else {"writable": False}),
        }
        for p in what.properties.values()
    ]
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return

    def note(row: dict[str, object]) -> str:
        if row["key"]:
            return "key: in the URL, required"
        if row.get("writable") is False:
            return "read-only: ignored in a file" + (
                f" (or --key {row['name']})" if row["name"] in what.keys else ""
            )
        return "legacy: no longer in the beta schema" if row["legacy"] else ""

    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(title=f"{what.type_name} (Graph {what.version})", title_justify="left")
        table.add_column("property", no_wrap=True)  # up to 57 characters: never break a name
        table.add_column("type", overflow="fold")
        table.add_column("nullable", no_wrap=True)
        table.add_column("note", min_width=14)
        for row in rows:
            table.add_row(
                str(row["name"]),
                str(row["type"]),
                "yes" if row["nullable"] else "no",
                note(row),
            )
        console = Console()
        console.print(table)
        # The enum members are long (up to 51 characters) and shared: list them once per type.
        console.print("Allowed values (any case in the file; sent in this spelling):")
        for enum_type, members in what.enums.items():
            console.print(Text.assemble((enum_type, "bold"), ": ", ", ".join(members)))
        return
    width = max(len(str(row["name"])) for row in rows)
    type_width = max(len(str(row["type"])) for row in rows)
    typer.echo(f"{'property':<{width}}  {'type':<{type_width}}  nullable  note / allowed values")
    for row in rows:
        allowed = row["allowed"]
        assert isinstance(allowed, list)
        extra = "; ".join(part for part in (note(row), ", ".join(allowed)) if part)
        nullable = "yes" if row["nullable"] else "no"
        typer.echo(
            f"{row['name']!s:<{width}}  {row['type']!s:<{type_width}}  {nullable:<8}  {extra}"
        )


_TEMPLATE_EXAMPLE = """
\b
Examples:
  autopilot-batch template updates.xlsx
  autopilot-batch template updates.csv --include-legacy --force
  autopilot-batch template devices.xlsx --resource devices
"""


@app.command(epilog=_TEMPLATE_EXAMPLE)
def template(
    out: Annotated[Path, typer.Argument(help="The file to write: .csv or .xlsx.")],
    include_legacy: Annotated[
        bool, typer.Option(help="Add the legacy columns the current beta schema dropped.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Overwrite OUT if it exists.")] = False,
    resource: ResourceOpt = "events",
) -> None:
    """Write an empty input file: the header row only, id first (CSV is UTF-8 with BOM)."""
    from batch.mapper import template_columns

    with _domain_errors():
        what = _resource(resource)
        headers = template_columns(include_legacy=include_legacy, resource=what)
        _write_template(out, headers, force=force, sheet=what.name.capitalize())
    typer.echo(f"wrote {out} ({len(headers)} columns)")


def _write_template(out: Path, headers: list[str], *, force: bool, sheet: str = "Events") -> None:
    import csv

    suffix = out.suffix.lower()
    if suffix not in (".csv", ".xlsx"):
        raise UsageError(f"{out}: the template must be a .csv or .xlsx file")
    if out.is_dir():
        raise UsageError(f"{out} is a directory")
    if out.exists() and not force:
        raise UsageError(f"{out} already exists (pass --force to overwrite it)")
    if not out.parent.is_dir():
        raise UsageError(f"{out}: the folder {out.parent} does not exist")
    try:
        if suffix == ".csv":
            # utf-8-sig writes the BOM that makes Excel read the file as UTF-8.
            with out.open("w", encoding="utf-8-sig", newline="") as handle:
                csv.writer(handle).writerow(headers)
            return
        import pandas as pd

        from batch.reader import column_letter

        with pd.ExcelWriter(out, engine="openpyxl") as writer:
            pd.DataFrame(columns=headers).to_excel(writer, index=False, sheet_name=sheet)
            page = writer.sheets[sheet]
            page.freeze_panes = "A2"
            for index, header in enumerate(headers):
                column = page.column_dimensions[column_letter(index)]
                # Text format, so Excel keeps leading zeros and never turns ids into numbers.
                column.number_format = "@"
                column.width = max(12, min(len(header) + 2, 40))
    except OSError as error:
        raise UsageError(f"{out}: cannot write: {error.strerror or error}") from None


# --- export -----------------------------------------------------------------------------------

_EXPORT_EXAMPLE = """
\b
Examples:
  autopilot-batch export events.xlsx
  autopilot-batch export events.csv --columns id,deviceSerialNumber,osVersion --force
  autopilot-batch export recent.xlsx --since 2024-05-01 --serial-file serials.txt
  autopilot-batch export devices.xlsx --resource devices
\b
Then edit the file and run it: autopilot-batch run events.xlsx --only-changed
(an untouched file writes nothing; an edited cell writes just that cell).
Exit codes: 0 written, 2 bad options or target, 3 Graph could not be read (nothing written).
"""


@app.command(epilog=_EXPORT_EXAMPLE)
def export(
    out: Annotated[Path, typer.Argument(help="The file to write: .csv or .xlsx.")],
    columns: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated properties (default: every current property); id always first."
        ),
    ] = None,
    serial_file: Annotated[
        Path | None,
        typer.Option(
            help="Only these devices: one serial per line, or a CSV/Excel column "
            "deviceSerialNumber (or Serial)."
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            metavar="DATE",
            help="Only events with eventDateTime at or after DATE (2024-05-01 is midnight UTC, "
            "or give a date-time with offset).",
        ),
    ] = None,
    read_limit: Annotated[
        str, typer.Option(help="Read budget N/SECONDS (Graph: 1000/20 per app).")
    ] = "1000/20",
    max_retries: Annotated[
        int, typer.Option(help="Retries per page for 429/503/504/connection errors.")
    ] = 8,
    force: Annotated[bool, typer.Option(help="Overwrite OUT if it exists.")] = False,
    resource: ResourceOpt = "events",
    cloud: CloudOpt = "global",
    graph_url: GraphUrlOpt = None,
    authority_host: AuthorityHostOpt = None,
    device_code: DeviceCodeOpt = False,
    token_cache: TokenCacheOpt = False,
    managed_identity: ManagedIdentityOpt = False,
    managed_identity_client_id: ManagedIdentityClientIdOpt = None,
    azure_cli: AzureCliOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write the tenant's autopilot events (or devices) to OUT as input: edit it, then `run` it."""
    from batch.auth import build_token_provider
    from batch.clouds import resolve_endpoints
    from batch.errors import Interrupted
    from batch.export import (
        ExportOptions,
        export_events,
        load_serials,
        make_export_progress,
        parse_columns,
        parse_since,
    )

    setup_console(quiet=quiet or as_json)
    with _domain_errors(as_json=as_json):
        endpoints = resolve_endpoints(cloud, graph_url=graph_url, authority_host=authority_host)
        what = _resource(resource)
        options = ExportOptions(
            resource=what,
            out=out,
            read_limit=_parse_rate(read_limit, "--read-limit"),
            max_retries=max_retries,
            force=force,
            graph_root=endpoints.graph_root,
            serials=load_serials(serial_file, what) if serial_file is not None else None,
            since=parse_since(since) if since is not None else None,
        )
        if columns is not None:
            options.columns = parse_columns(columns, what)
        options.check()  # a bad target fails before any sign-in
        tokens = build_token_provider(
            endpoints,
            device_code=device_code,
            token_cache=token_cache,
            managed_identity=managed_identity,
            managed_identity_client_id=managed_identity_client_id,
            azure_cli=azure_cli,
        )
        progress = make_export_progress(quiet=quiet or as_json, resource=what)
        try:
            result = anyio.run(lambda: export_events(options, tokens=tokens, progress=progress))
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted: {out} was not written") from None
    if as_json:
        typer.echo(json.dumps(result.data, ensure_ascii=False))
    else:
        kept = "" if result.written == result.read else f" of {result.read} read"
        typer.echo(
            f"wrote {out}: {_count(result.written, what.noun)}{kept}, "
            f"{_count(len(result.columns), 'column')} ({result.elapsed:.1f} s, "
            f"{_count(result.pages, 'page')}, 429s {result.throttled}, retries {result.retries})"
        )


def _count(n: int, noun: str) -> str:
    """`1 page`, `2 pages`: messages count in words a person would use."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


# --- job ------------------------------------------------------------------------------------

job_app = typer.Typer(
    name="job",
    help="Declarative jobs for cron and systemd timers: run or check a JOB.toml (see jobs/).",
    epilog="\b\nExamples:\n  autopilot-batch job check jobs/nightly-drop-folder.toml\n"
    "  autopilot-batch job run jobs/nightly-drop-folder.toml --quiet",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(job_app, name="job")

_JOB_EXIT_CODES = """
\b
Exit codes: 0 every file's rows fine (or nothing new), 1 some rows failed or were invalid
(or a file cannot be read), 2 the job file or its settings are wrong, 3 a file's run aborted,
75 another run of this job holds its lock, 130 interrupted (3 and 130: the next start resumes).
With [[tenants]]: the worst tenant's code (130 > 3 > 1 > 75 > 0).
"""

_JOB_RUN_EXAMPLE = (
    """
\b
Examples:
  autopilot-batch job run jobs/nightly-drop-folder.toml --quiet
  autopilot-batch job run jobs/one-off-migration.toml --json
"""
    + _JOB_EXIT_CODES
)


@job_app.command("run", epilog=_JOB_RUN_EXAMPLE)
def job_run(
    job_file: Annotated[Path, typer.Argument(help="The job file (TOML; see jobs/README.md).")],
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run a job once: resume an interrupted file, then process each new input file once."""
    from batch.jobs import load_job, run_job

    setup_console(quiet=quiet or as_json)
    with _domain_errors(as_json=as_json):
        job = load_job(job_file)
        report = run_job(job, quiet=quiet or as_json)
    if as_json:
        typer.echo(json.dumps(report.to_json(), ensure_ascii=False))
    elif job.notify.stdout:
        typer.echo(report.line())
    raise typer.Exit(report.exit_code)


_JOB_CHECK_EXAMPLE = """
\b
Examples:
  autopilot-batch job check jobs/nightly-drop-folder.toml
  autopilot-batch job check jobs/one-off-migration.toml --json
\b
Checks the job file, that its credential variables are set, that its folders can be written,
and reads every file the next `job run` would process like `validate` does. Sends nothing,
takes no lock, changes nothing. Exit codes: 0 ready, 1 some input is bad, 2 the settings are wrong.
"""


@job_app.command("check", epilog=_JOB_CHECK_EXAMPLE)
def job_check(
    job_file: Annotated[Path, typer.Argument(help="The job file (TOML; see jobs/README.md).")],
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Check a job file and the inputs its next run would process, without sending anything."""
    from batch.jobs import check_job, iter_check_lines, load_job

    setup_console(quiet=quiet or as_json)
    with _domain_errors(as_json=as_json):
        job = load_job(job_file)
        report = check_job(job)
    if as_json:
        typer.echo(json.dumps(report.to_json(), ensure_ascii=False))
    else:
        for to_stderr, line in iter_check_lines(report):
            if to_stderr or not quiet:
                typer.echo(line, err=to_stderr)
    raise typer.Exit(report.exit_code)


# --- emulator ---------------------------------------------------------------------------------

_EMULATOR_EXAMPLE = """
\b
Examples:
  autopilot-batch emulator --seed-events 500 --seed 1 --token local-token
  GRAPH_ACCESS_TOKEN=local-token autopilot-batch run events.csv --graph-url http://127.0.0.1:8765
  autopilot-batch emulator --events export.csv --write-limit 100/2 --fault-rate 0.05
  autopilot-batch emulator --tls --ca-file emulator-ca.pem --app my-client-id=made-up-secret
  autopilot-batch emulator --seed 7 --deny-permission writes
  autopilot-batch emulator --seed-devices 300 --seed 1 --token local-token
  autopilot-batch emulator --profile friendly --patch-status 200 --schema legacy
"""


# The typed values of the emulator's choice options (typed for EmulatorConfig's Literals).
_PATCH_STATUSES: dict[int, Literal[200, 204]] = {200: 200, 204: 204}
_RETRY_AFTER_FORMATS: dict[str, Literal["int", "decimal", "list", "none", "mixed"]] = {
    "int": "int",
    "decimal": "decimal",
    "list": "list",
    "none": "none",
    "mixed": "mixed",
}
_ERROR_STYLES: dict[str, Literal["graph", "intune"]] = {"graph": "graph", "intune": "intune"}
_DENY_PERMISSION: dict[str, Literal["writes", "all"]] = {"writes": "writes", "all": "all"}
_SCHEMAS: dict[str, Literal["legacy", "current"]] = {"legacy": "legacy", "current": "current"}


@app.command(epilog=_EMULATOR_EXAMPLE)
def emulator(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free port).")] = 8765,
    events: Annotated[
        Path | None, typer.Option(help="Load the tenant's events from a CSV, JSONL or JSON file.")
    ] = None,
    seed_events: Annotated[
        int | None,
        typer.Option(min=0, help="Generate N plausible events (default 100 without --events)."),
    ] = None,
    devices: Annotated[
        Path | None,
        typer.Option(
            help="Load the tenant's Autopilot devices from a CSV (property names or the "
            "portal's headers), JSONL or JSON file."
        ),
    ] = None,
    seed_devices: Annotated[
        int | None,
        typer.Option(min=0, help="Generate N plausible Autopilot devices (default none)."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed for generated events, faults and batch order.")
    ] = None,
    write_limit: Annotated[
        str, typer.Option(help="Writes per app N/SECONDS (Graph: 100/20; 100/2 for fast tests).")
    ] = "100/20",
    tenant_write_limit: Annotated[str, typer.Option(help="Writes per tenant N/SECONDS.")] = (
        "200/20"
    ),
    device_write_limit: Annotated[
        str,
        typer.Option(
            help="Device writes per app N/SECONDS (Intune enrollment service: 100/20; "
            "twice that per tenant)."
        ),
    ] = "100/20",
    read_limit: Annotated[
        str, typer.Option(help="Requests of any kind per app N/SECONDS.")
    ] = "1000/20",
    tenant_read_limit: Annotated[
        str, typer.Option(help="Requests of any kind per tenant N/SECONDS.")
    ] = "2000/20",
    latency_ms: Annotated[int, typer.Option(min=0, help="Delay added to every Graph request.")] = 0,
    fault_rate: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Share of Graph requests answered 503/504/dropped."),
    ] = 0.0,
    token: Annotated[
        str | None,
        typer.Option(help="Accept only this bearer token (default: any token, or OAuth apps)."),
    ] = None,
    tls: Annotated[
        bool, typer.Option(help="Serve https with a throwaway CA (needed for MSAL sign-in).")
    ] = False,
    ca_file: Annotated[
        Path | None, typer.Option(help="With --tls: where to write the CA certificate.")
    ] = None,
    token_ttl: Annotated[float, typer.Option(help="Lifetime of issued tokens, seconds.")] = 3600.0,
    profile: Annotated[
        str,
        typer.Option(
            envvar="AUTOPILOT_EMULATOR_PROFILE",
            help="realistic (the default: answers as Intune really does: 204, current schema, "
            "Intune errors, pages of 50, whole-batch 400s, mixed Retry-After, split throttles) "
            "or friendly (forgiving). The flags below override single details.",
        ),
    ] = "realistic",
    patch_status: Annotated[
        int | None, typer.Option(help="Success status of PATCH: 200 or 204 (default: profile's).")
    ] = None,
    retry_after_format: Annotated[
        str | None,
        typer.Option(
            help="Retry-After on 429: int, decimal (2.128), list (30,120), none, or mixed "
            "(a seeded draw, some without the header)."
        ),
    ] = None,
    schema: Annotated[
        str | None,
        typer.Option(
            "--schema", help="legacy (accepts the 3 legacy properties) or current (rejects them)."
        ),
    ] = None,
    error_style: Annotated[
        str | None,
        typer.Option(help="graph (plain messages) or intune (Intune's JSON-document messages)."),
    ] = None,
    page_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=999,
            # The list pages of devices too, not only of events.
            help="Events or devices per list page (realistic: at most, $top capped).",
        ),
    ] = None,
    deny_permission: Annotated[
        str | None,
        typer.Option(
            help="Answer writes or all Graph requests with Intune's 401 for a missing permission."
        ),
    ] = None,
    app_credentials: Annotated[
        list[str] | None,
        typer.Option(
            "--app",
            metavar="CLIENT_ID=SECRET",
            help="Register an OAuth app CLIENT_ID=SECRET (repeatable; a made-up secret for "
            "local rehearsal, never a real one).",
        ),
    ] = None,
) -> None:
    """Serve a local Microsoft Graph emulator to rehearse runs against (Ctrl-C stops it)."""
    from batch.emulator import EmulatorConfig, EventStore, serve
    from batch.emulator.devices import DeviceStore

    with _domain_errors():
        if events is not None and seed_events is not None:
            raise UsageError("--events and --seed-events exclude each other")
        if devices is not None and seed_devices is not None:
            raise UsageError("--devices and --seed-devices exclude each other")
        if profile not in ("friendly", "realistic"):
            raise UsageError(f"--profile must be friendly or realistic, not {profile!r}")
        # Only the flags given override the profile's values.
        details: dict[str, Any] = {}
        if patch_status is not None:
            if patch_status not in _PATCH_STATUSES:
                raise UsageError(f"--patch-status must be 200 or 204, not {patch_status}")
            details["patch_status"] = _PATCH_STATUSES[patch_status]
        if retry_after_format is not None:
            if retry_after_format not in _RETRY_AFTER_FORMATS:
                raise UsageError(
                    "--retry-after-format must be int, decimal, list, none or mixed, "
                    f"not {retry_after_format!r}"
                )
            details["retry_after_format"] = _RETRY_AFTER_FORMATS[retry_after_format]
        if schema is not None:
            if schema not in _SCHEMAS:
                raise UsageError(f"--schema must be legacy or current, not {schema!r}")
            details["schema"] = _SCHEMAS[schema]
        if error_style is not None:
            if error_style not in _ERROR_STYLES:
                raise UsageError(f"--error-style must be graph or intune, not {error_style!r}")
            details["error_style"] = _ERROR_STYLES[error_style]
        if page_size is not None:
            details["page_size"] = page_size
        if deny_permission is not None:
            if deny_permission not in _DENY_PERMISSION:
                raise UsageError(
                    f"--deny-permission must be writes or all, not {deny_permission!r}"
                )
            details["deny_permission"] = _DENY_PERMISSION[deny_permission]
        apps: list[tuple[str, str]] = []
        for text in app_credentials or []:
            client_id, sep, secret = text.partition("=")
            if not sep or not client_id.strip() or not secret:
                raise UsageError(f"--app {text!r} is not CLIENT_ID=SECRET")
            apps.append((client_id.strip(), secret))
        device_limit = _parse_rate(device_write_limit, "--device-write-limit")
        config = EmulatorConfig.for_profile(
            profile,
            host=host,
            port=port,
            write_limit=_parse_rate(write_limit, "--write-limit"),
            tenant_write_limit=_parse_rate(tenant_write_limit, "--tenant-write-limit"),
            device_write_limit=device_limit,
            device_tenant_write_limit=Rate(device_limit.count * 2, device_limit.seconds),
            read_limit=_parse_rate(read_limit, "--read-limit"),
            tenant_read_limit=_parse_rate(tenant_read_limit, "--tenant-read-limit"),
            latency_ms=latency_ms,
            fault_rate=fault_rate,
            seed=seed,
            token=token,
            tls=tls,
            ca_file=ca_file,
            token_ttl=token_ttl,
            apps=tuple(apps),
            **details,
        )
        store = EventStore()
        if events is not None:
            store.load(events)
        else:
            store.seed(100 if seed_events is None else seed_events, seed=seed)
        device_store = DeviceStore()
        if devices is not None:
            device_store.load(devices)
        elif seed_devices:
            device_store.seed(seed_devices, seed=seed)
        serve(config, store=store, devices=device_store, echo=typer.echo)
