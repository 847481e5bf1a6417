"""The engine package's shape: no import cycle among its rooms, time only through the `Clock`.

DESIGN.md ("Growing") warns that cutting the old `_Run` method by method closes a circle of seven
files; these tests keep the stages talking through values instead.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import batch.engine

PACKAGE = Path(batch.engine.__file__).parent
MODULES = sorted(
    f"batch.engine.{m.name}" for m in pkgutil.iter_modules([str(PACKAGE)]) if not m.ispkg
)


def engine_imports(module: str) -> set[str]:
    """The engine modules `module` imports (`from batch.engine import x` counts as x)."""
    tree = ast.parse((PACKAGE / f"{module.rsplit('.', 1)[1]}.py").read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module == "batch.engine":
                found.update(f"batch.engine.{a.name}" for a in node.names)
            elif node.module.startswith("batch.engine."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("batch.engine"))
    return found


def test_the_package_has_the_rooms_its_docstring_names() -> None:
    doc = batch.engine.__doc__ or ""
    for module in MODULES:
        assert f"`{module.rsplit('.', 1)[1]}`" in doc, f"{module} is not described"


def test_no_import_cycle_among_the_engine_modules() -> None:
    graph = {m: engine_imports(m) for m in MODULES}
    assert all(deps <= set(MODULES) for deps in graph.values()), graph
    # Depth-first search for a back edge.
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in graph[module]:
            if state.get(dep) == "open":
                pytest.fail(f"import cycle: {' -> '.join([*path, module, dep])}")
            if dep not in state:
                visit(dep, [*path, module])
        state[module] = "done"

    for module in MODULES:
        if module not in state:
            visit(module, [])


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_on_its_own(module: str) -> None:
    assert importlib.import_module(module).__doc__, f"{module} has no module docstring"


@pytest.mark.parametrize("module", MODULES)
def test_time_enters_only_through_the_clock(module: str) -> None:
    source = (PACKAGE / f"{module.rsplit('.', 1)[1]}.py").read_text(encoding="utf-8")
    assert not re.search(r"anyio\.sleep\(|time\.monotonic|import time\b|asyncio\.sleep", source)


def test_no_stage_checks_for_a_missing_client() -> None:
    for module in MODULES:
        source = (PACKAGE / f"{module.rsplit('.', 1)[1]}.py").read_text(encoding="utf-8")
        assert "assert self.client" not in source, module


def test_the_old_names_stay_importable() -> None:
    from batch.engine import RowPlan, RunOptions, RunSummary, _Work, default_out_dir, execute
    from batch.engine import signal_receiver as engine_receiver
    from batch.stop import signal_receiver

    assert engine_receiver is signal_receiver
    assert all((RowPlan, RunOptions, RunSummary, _Work, default_out_dir, execute))
