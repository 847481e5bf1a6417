"""The `autopilot-batch` command line: a thin layer over the library.

Each command parses its options, calls into the library, and turns domain errors (`batch.errors`)
into one-line messages and the exit codes of CONTRACT.md. Nothing else lives here.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, NoReturn

import typer

from batch import __version__
from batch.errors import BatchError

__all__ = ["app", "main"]

app = typer.Typer(
    name="autopilot-batch",
    help="Bulk-update Windows Autopilot events in Intune through Microsoft Graph from CSV/Excel.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
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


def fail(error: BatchError) -> NoReturn:
    """Print a domain error as one line on stderr and exit with its code."""
    typer.echo(f"Error: {error}", err=True)
    raise typer.Exit(error.exit_code)


def main() -> None:
    """Console-script entry point: no traceback ever reaches the user for a known error."""
    try:
        app()
    except BatchError as error:
        typer.echo(f"Error: {error}", err=True)
        sys.exit(error.exit_code)
    except Exception as error:  # a bug: still one line, the traceback only on request
        if os.environ.get("AUTOPILOT_BATCH_DEBUG"):
            raise
        typer.echo(
            f"Internal error: {type(error).__name__}: {error} "
            "(set AUTOPILOT_BATCH_DEBUG=1 for the traceback, and please report it)",
            err=True,
        )
        sys.exit(1)
