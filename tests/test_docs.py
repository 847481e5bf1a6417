"""Every command has help with an example and is documented in README (sqlite-utils' habit)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from batch import __version__
from batch.cli import app

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def _commands() -> list[tuple[str, Any]]:
    # Typer may bring its own click, so groups are recognised by their `commands`, not by class.
    root: Any = typer.main.get_command(app)
    found: list[tuple[str, Any]] = []
    for name, command in root.commands.items():
        if hasattr(command, "commands"):
            found.extend((f"{name} {sub}", c) for sub, c in command.commands.items())
        else:
            found.append((name, command))
    return found


COMMANDS = [name for name, _ in _commands()]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_with_an_example(name: str) -> None:
    result = CliRunner().invoke(app, [*name.split(), "--help"])
    assert result.exit_code == 0
    assert re.search(r"Examples?:", result.stdout), f"{name} --help shows no example"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_is_in_the_readme(name: str) -> None:
    assert f"autopilot-batch {name}" in README


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_of_every_command_is_documented_in_help(name: str) -> None:
    command = dict(_commands())[name]
    for param in command.params:
        if param.param_type_name == "option" and not param.hidden:
            assert param.help, f"{name} {param.opts[0]} has no help text"


def test_readme_starts_with_a_pitch_and_two_setup_commands() -> None:
    lines = README.splitlines()
    assert lines[0] == "# autopilot-batch"
    block = README.split("```sh\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(block) == 2
    assert block[0].endswith("autopilot-batch demo")
    assert "pytest" in block[1]


def test_version_and_python_dash_m() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "batch", "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"autopilot-batch {__version__}"
