"""The public API stays honest (httpx's `tests/test_exported_members.py`, for a lazy package).

`batch.__all__` is what a library user or a job script imports; each module's `__all__` is what
it offers the rest of the package. These tests fail when a name is exported that does not
exist, when `batch`'s list and its typed imports drift apart, or when `import batch` starts
pulling in the heavy dependencies the CLI loads only when a command runs.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import batch

PACKAGE = Path(batch.__file__).parent


def _modules() -> list[ModuleType]:
    names = [m.name for m in pkgutil.walk_packages([str(PACKAGE)], prefix="batch.")]
    return [importlib.import_module(n) for n in ["batch", *names] if n != "batch.__main__"]


def test_all_has_no_duplicates() -> None:
    # (Its order is ruff's RUF022, checked by `ruff check`.)
    assert len(set(batch.__all__)) == len(batch.__all__)


@pytest.mark.parametrize("name", [n for n in batch.__all__ if n != "__version__"])
def test_every_exported_name_is_its_home_modules_own(name: str) -> None:
    value = getattr(batch, name)
    home = importlib.import_module(batch._HOMES[name])
    assert value is getattr(home, name)
    assert name in home.__all__, f"{home.__name__} does not export {name}"


def test_the_exported_names_are_the_typed_imports() -> None:
    # mypy and editors see the TYPE_CHECKING imports; users get `_HOMES`: the same names.
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    typed: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for statement in node.body:
                assert isinstance(statement, ast.ImportFrom) and statement.module
                typed.update({alias.name: statement.module for alias in statement.names})
    assert typed == batch._HOMES
    assert set(batch.__all__) == {*batch._HOMES, "__version__"}


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'FakeClock'"):
        _ = batch.FakeClock


@pytest.mark.parametrize("module", _modules(), ids=lambda m: m.__name__)
def test_every_module_exports_only_what_it_has(module: ModuleType) -> None:
    exported = getattr(module, "__all__", None)
    if exported is None:
        # A subpackage's modules may leave exporting to their package (`batch.jobs`).
        assert module.__name__.count(".") > 1, f"{module.__name__} has no __all__"
        return
    assert len(set(exported)) == len(exported)
    missing = [name for name in exported if not hasattr(module, name)]
    assert not missing, f"{module.__name__}.__all__ names what it lacks: {missing}"
    private = [n for n in exported if n.startswith("_") and n != "__version__"]
    assert not private


def test_test_doubles_live_in_batch_testing() -> None:
    owners = [m.__name__ for m in _modules() if "FakeClock" in getattr(m, "__all__", ())]
    assert owners == ["batch.testing"]


def test_import_batch_stays_light() -> None:
    # The CLI imports `batch` for `__version__`; `--help` must not load these.
    code = (
        "import sys, batch; "
        "print(sorted(m for m in ('pandas', 'httpx', 'msal', 'anyio') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
