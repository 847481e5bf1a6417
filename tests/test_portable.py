"""Windows paths forced on Linux (issue 20): no `fcntl`, no POSIX-only signals, no signal receiver.

A `sitecustomize` on PYTHONPATH takes away, before anything imports, what Windows lacks: the
`fcntl` module, the `signal` members Windows has not (SIGHUP, SIGKILL, SIGUSR1, ...; it has
SIGINT, SIGTERM and SIGBREAK), `os.pread`/`pwrite`/`fchmod`, and makes
`anyio.open_signal_receiver` raise `NotImplementedError` as asyncio does on Windows. With
`FAKE_MSVCRT=1` it also installs an
`msvcrt` whose `locking` is a POSIX byte-range lock, so the lock's Windows branch runs here.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from batch.auth import token_cache_path
from tests.conftest import EmulatorFactory
from tests.e2e import cli_env, read_csv, seeded_emulator, start_cli, update_rows, write_csv

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_data" / "events.csv"

SITECUSTOMIZE = """
import errno, os, signal, sys, types
import fcntl as _fcntl

sys.modules["fcntl"] = None  # import fcntl -> ImportError, as on Windows
for _name in ("SIGHUP", "SIGQUIT", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGALRM",
              "SIGPIPE", "SIGCHLD"):
    if hasattr(signal, _name):
        delattr(signal, _name)
for _name in ("pread", "pwrite", "fchmod"):  # (not uname: numpy reads it on Linux)
    if hasattr(os, _name):
        delattr(os, _name)

import anyio

def _no_receiver(*signals):
    raise NotImplementedError("signal receivers are not supported (forced, as on Windows)")

anyio.open_signal_receiver = _no_receiver

if os.environ.get("FAKE_MSVCRT") == "1":
    import getpass, subprocess  # they take an importable msvcrt as "this is Windows"

    msvcrt = types.ModuleType("msvcrt")
    msvcrt.LK_UNLCK, msvcrt.LK_NBLCK = 0, 2

    def _locking(fd, mode, nbytes):
        start = os.lseek(fd, 0, os.SEEK_CUR)
        how = _fcntl.LOCK_UN if mode == 0 else _fcntl.LOCK_EX | _fcntl.LOCK_NB
        try:
            _fcntl.lockf(fd, how, nbytes, start, 0)
        except OSError:
            raise OSError(errno.EACCES, "Permission denied") from None

    msvcrt.locking = _locking
    sys.modules["msvcrt"] = msvcrt
"""


@pytest.fixture
def windowsish(tmp_path: Path) -> dict[str, str]:
    """A CLI environment whose Python starts with the POSIX-only parts taken away."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    return cli_env("test-token", {"PYTHONPATH": str(site)})


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
        check=False,
    )


def test_every_module_imports_and_the_cli_works_without_posix_parts(
    windowsish: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "dry"
    code = f"""
import importlib, pkgutil, signal, sys
import batch
assert sys.modules["fcntl"] is None and not hasattr(signal, "SIGKILL")
names = [m.name for m in pkgutil.walk_packages(batch.__path__, "batch.")]
for name in names:
    importlib.import_module(name)
print(len(names), "modules")
from batch.cli import main
for argv in (["--help"], ["validate", {str(SAMPLE)!r}],
             ["run", {str(SAMPLE)!r}, "--dry-run", "--out", {str(out)!r}, "--quiet"]):
    sys.argv = ["autopilot-batch", *argv]
    try:
        main()
    except SystemExit as stop:
        assert stop.code in (0, None), (argv, stop.code)
"""
    result = _python(code, windowsish)
    assert result.returncode == 0, result.stderr[-3000:]
    assert " modules" in result.stdout and "Usage" in result.stdout
    assert (out / "requests.jsonl").exists() and (out / "results.csv").exists()


def test_the_lock_without_fcntl_refuses_a_second_start_and_takes_over_a_dead_one(
    windowsish: dict[str, str], tmp_path: Path
) -> None:
    env = {**windowsish, "FAKE_MSVCRT": "1"}
    path = tmp_path / "state" / "job.lock"
    take = (
        "import sys\nfrom pathlib import Path\nfrom batch.jobs import JobLock\n"
        "from batch.errors import LockHeld\nimport batch.jobs.lock as lock\n"
        "assert lock._backend()[0] == 'msvcrt'\n"
        f"held = JobLock(Path({str(path)!r}), 'nightly')\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", take + "held.acquire(); print('locked', flush=True)\n"
         "import time; time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        second = _python(
            take + "try:\n    held.acquire()\nexcept LockHeld as e:\n"
            "    print(e); sys.exit(e.exit_code)\n",
            env,
        )
        assert second.returncode == 75, second.stderr[-2000:]
        assert f"job nightly is already running by pid {holder.pid}" in second.stdout
        assert json.loads(path.read_text())["pid"] == holder.pid  # the loser erased nothing
    finally:
        holder.kill()
        holder.communicate()
    third = _python(take + "held.acquire(); print(held.taken_over['pid']); held.release()", env)
    assert third.returncode == 0, third.stderr[-2000:]
    assert third.stdout.strip() == str(holder.pid)
    assert path.read_text() == ""  # released: the record is cleared, the file stays


def test_the_token_cache_goes_to_local_app_data_on_windows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[tuple[object, ...]] = []

    def user_data_path(*args: object, **kwargs: object) -> Path:
        asked.append((*args, *sorted(kwargs.items())))
        return Path("LocalAppData") / "autopilot-batch"

    monkeypatch.setattr("platformdirs.user_data_path", user_data_path)
    path = token_cache_path({"XDG_CONFIG_HOME": "/ignored"}, platform="win32")
    assert path == Path("LocalAppData") / "autopilot-batch" / "token_cache.json"
    assert asked == [("autopilot-batch", ("appauthor", False), ("roaming", False))]


@pytest.mark.e2e
def test_sigint_without_a_signal_receiver_stops_with_130_and_resumes(
    emulator_factory: EmulatorFactory, windowsish: dict[str, str], tmp_path: Path
) -> None:
    n = 500
    server, ids = seeded_emulator(emulator_factory, n, seed=31)
    src = write_csv(tmp_path / "in.csv", update_rows(ids))
    out = tmp_path / "run"
    args = [
        "run", str(src), "--graph-url", server.url, "--write-limit", "200/1",
        "--batch-size", "20", "--out", str(out), "--json", "--quiet",
    ]  # fmt: skip
    proc = start_cli(args, windowsish)
    deadline = time.monotonic() + 60
    while sum(server.stats()["patches"].values()) < n // 5:  # type: ignore[union-attr]
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "too few writes"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    summary = json.loads(stdout)
    assert "SIGINT" in summary["stopped_because"]
    results = read_csv(out / "results.csv")
    outcomes = Counter(r["outcome"] for r in results)
    assert set(outcomes) == {"updated", "not_attempted"} and sum(outcomes.values()) == n
    updated_first = {r["id"] for r in results if r["outcome"] == "updated"}

    resumed = start_cli([*args, "--resume"], windowsish)
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err[-2000:]
    assert {r["outcome"] for r in read_csv(out / "results.csv")} == {"updated"}
    patches = server.stats()["patches"]
    assert isinstance(patches, dict) and set(patches) == set(ids)
    assert all(patches[i] == 1 for i in updated_first)
