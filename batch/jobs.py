"""Declarative jobs: `job run JOB.toml` and `job check JOB.toml`, made for cron and systemd timers.

A job file names its input (one file, or a drop folder and glob patterns), every option of `run`,
the cloud, where credentials come from (environment variable *names*, never secrets), an output
root, an archive folder and how to report. A job run:

1. takes the job's lock (`<state dir>/job.lock`, `fcntl.flock`, released by the kernel when the
   process dies, so a lock left by a dead process is simply taken over); an overlapping start
   exits at once with `LockHeld` (exit 75);
2. resumes an interrupted file first (its run folder is continued with `--resume`), then processes
   each new input file once, oldest first (modification time, then name), each in its own run
   folder under the output root; files are remembered by content SHA-256 in
   `<state dir>/files.sqlite`, so a file dropped twice, renamed or copied back is not sent again;
3. archives each finished file, logs JSON lines to the job log and prints one summary line.

The exit code summarises the files (`job_exit_code`): 0 all rows fine, 1 some rows failed or were
invalid (or a file could not be read), 3 a file's run aborted (resumable), 130 interrupted
(resumable), 2 the job file or its settings are wrong, 75 another run of the job holds the lock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sqlite3
import tempfile
import tomllib
import types
import typing
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import anyio

from batch.errors import (
    AuthError,
    BatchError,
    ConfigError,
    InputFileError,
    Interrupted,
    LockHeld,
    RunAborted,
    UsageError,
)
from batch.mapper import InputOptions, resolve_header, suggest_property
from batch.model import Rate

if typing.TYPE_CHECKING:
    from batch.auth import TokenProvider
    from batch.clouds import Endpoints
    from batch.engine import RunOptions, RunSummary
    from batch.mapper import Prepared

__all__ = [
    "CheckReport",
    "FileCheck",
    "FileResult",
    "Job",
    "JobLock",
    "JobReport",
    "JobState",
    "check_job",
    "job_exit_code",
    "load_job",
    "run_job",
]

log = logging.getLogger("batch.jobs")

#: Patterns a drop folder is searched with when the job names none.
DEFAULT_GLOBS: Final = ("*.csv", "*.xlsx", "*.xlsm")
#: A drop-folder file modified less than this many seconds ago may still be being written.
DEFAULT_SETTLE_SECONDS: Final = 30.0

# RunOptions fields a job sets from elsewhere than its [run] table (input, output, graph), or
# that belong to other commands (`revert --force`).
_RUN_FIELDS_ELSEWHERE: Final = frozenset(
    {"input", "out", "resume", "input_options", "graph_root", "cloud", "runs_root", "force"}
)
# InputOptions fields under another name in [input] (the CLI's spelling: --map).
_INPUT_RENAMES: Final = {"map_file": "map"}
_INPUT_OWN_KEYS: Final = ("file", "folder", "glob", "settle_seconds")
_GRAPH_KEYS: Final = ("cloud", "graph_url", "authority_host")
_OUTPUT_KEYS: Final = ("root", "archive", "state_dir", "log")
_NOTIFY_KEYS: Final = ("stdout", "file")
_TOP_KEYS: Final = ("name",)
_TABLES: Final = ("input", "columns", "run", "graph", "credentials", "output", "notify")

# [credentials]: environment variable names mapped onto what `build_token_provider` reads.
_ENV_KEYS: Final = {
    "access_token_env": "GRAPH_ACCESS_TOKEN",
    "tenant_id_env": "AZURE_TENANT_ID",
    "client_id_env": "AZURE_CLIENT_ID",
    "secret_env": "AZURE_CLIENT_SECRET",
    "certificate_path_env": "AZURE_CLIENT_CERTIFICATE_PATH",
    "certificate_password_env": "AZURE_CLIENT_CERTIFICATE_PASSWORD",
}
# Not secrets: identifiers and a file path may be written in the job file as they are.
_LITERAL_KEYS: Final = {
    "tenant_id": "AZURE_TENANT_ID",
    "client_id": "AZURE_CLIENT_ID",
    "certificate_path": "AZURE_CLIENT_CERTIFICATE_PATH",
}
_CREDENTIAL_FLAGS: Final = ("device_code", "token_cache")
_CREDENTIAL_VARIABLES: Final = (*_ENV_KEYS.values(),)
_SECRET_WORDS: Final = re.compile(r"secret|password|passphrase|token|credential|key", re.I)
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_JOB_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# --- the job file --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Credentials:
    """Where the job's token comes from: environment variable names (and non-secret literals)."""

    #: Standard variable (GRAPH_ACCESS_TOKEN, AZURE_*) → the variable holding it, from `*_env`.
    from_env: Mapping[str, str] = field(default_factory=dict)
    #: Standard variable → its value, for the non-secret literals (tenant, client id, cert path).
    literals: Mapping[str, str] = field(default_factory=dict)
    device_code: bool = False
    token_cache: bool = False
    #: False when the job file has no [credentials] table: the standard variables are used.
    declared: bool = False

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """The environment `build_token_provider` should see; raises ConfigError for a gap.

        With a [credentials] table only what it names counts: credentials that happen to be in
        cron's or the admin's environment under the standard names are dropped, so the job signs
        in exactly as its file says.
        """
        if not self.declared:
            return dict(env)
        mapped = {k: v for k, v in env.items() if k not in _CREDENTIAL_VARIABLES}
        mapped.update(self.literals)
        for standard, name in self.from_env.items():
            value = env.get(name, "")
            if not value.strip():
                key = next(k for k, v in _ENV_KEYS.items() if v == standard)
                raise ConfigError(
                    f"[credentials] {key} names {name}, which is not set in this environment "
                    "(cron and systemd start with an almost empty one: set it in the unit's "
                    "EnvironmentFile or the crontab)"
                )
            mapped[standard] = value
        return mapped

    def describe(self) -> str:
        """Where the credential comes from, without any value."""
        if not self.declared:
            return "the standard variables (GRAPH_ACCESS_TOKEN or AZURE_*)"
        parts = [f"{std} from ${name}" for std, name in self.from_env.items()]
        parts += [f"{std} from the job file" for std in self.literals]
        if self.device_code:
            parts.append("device code" + (" with token cache" if self.token_cache else ""))
        return ", ".join(parts) or "none"


@dataclass(frozen=True, kw_only=True)
class Notify:
    """How the summary line is reported besides the job log."""

    stdout: bool = True
    file: Path | None = None


@dataclass(frozen=True, kw_only=True)
class Job:
    """A validated job file; paths are absolute (relative ones are taken from the file's folder)."""

    path: Path
    name: str
    input_file: Path | None
    folder: Path | None
    globs: tuple[str, ...]
    settle_seconds: float
    input_fields: Mapping[str, Any]
    columns: Mapping[str, str] | None
    run_fields: Mapping[str, Any]
    endpoints: Endpoints
    credentials: Credentials
    output_root: Path
    archive: Path | None
    state_dir: Path
    log_file: Path
    notify: Notify

    @property
    def dry_run(self) -> bool:
        """Whether the job only plans (writes requests.jsonl) and sends nothing."""
        return bool(self.run_fields.get("dry_run", False))

    @property
    def needs_token(self) -> bool:
        """Whether a run touches Graph (a plain dry run does not; reads for --only-changed do)."""
        return (
            not self.dry_run
            or bool(self.run_fields.get("only_changed", False))
            or self.input_fields.get("key") is not None
        )

    def input_options(self, map_file: Path | None = None) -> InputOptions:
        """The input options of every file; `map_file` holds the inline [columns] table."""
        fields = dict(self.input_fields)
        if map_file is not None:
            fields["map_file"] = map_file
        return InputOptions(**fields)

    def run_options(
        self, input: Path, *, out: Path | None, resume: bool, map_file: Path | None = None
    ) -> RunOptions:
        """The `run` options for one input file of this job."""
        from batch.engine import RunOptions

        return RunOptions(
            input=input,
            out=out,
            resume=resume,
            input_options=self.input_options(map_file),
            graph_root=self.endpoints.graph_root,
            cloud=self.endpoints.cloud,
            runs_root=self.output_root,
            **self.run_fields,
        )

    def tokens(self, env: Mapping[str, str] = os.environ) -> TokenProvider | None:
        """The token provider of the job's credentials (no network), or None when not needed."""
        if not self.needs_token:
            return None
        from batch.auth import build_token_provider

        return build_token_provider(
            self.endpoints,
            device_code=self.credentials.device_code,
            token_cache=self.credentials.token_cache,
            env=self.credentials.environment(env),
        )


def run_keys() -> dict[str, Any]:
    """The [run] keys: every `RunOptions` field a job sets there, with its type."""
    from batch import engine

    hints = typing.get_type_hints(engine.RunOptions, vars(engine))
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(engine.RunOptions)
        if f.name not in _RUN_FIELDS_ELSEWHERE
    }


def input_keys() -> dict[str, Any]:
    """The [input] keys that are `InputOptions` fields (job spelling → type)."""
    import batch.mapper

    hints = typing.get_type_hints(InputOptions, vars(batch.mapper))
    return {
        _INPUT_RENAMES.get(f.name, f.name): hints[f.name] for f in dataclasses.fields(InputOptions)
    }


class _Reader:
    """Validates one job file's tables; every error names the file, table and key."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.base = path.parent
        self.data = data
        self.all_keys: dict[str, tuple[str, ...]] = {
            "run": tuple(run_keys()),
            "input": (*_INPUT_OWN_KEYS, *input_keys()),
            "graph": _GRAPH_KEYS,
            "credentials": (*_ENV_KEYS, *_LITERAL_KEYS, *_CREDENTIAL_FLAGS),
            "output": _OUTPUT_KEYS,
            "notify": _NOTIFY_KEYS,
        }

    def error(self, where: str, message: str) -> ConfigError:
        return ConfigError(
            f"{self.path}: {where}: {message}" if where else f"{self.path}: {message}"
        )

    def unknown(self, table: str, key: str) -> ConfigError:
        where = f"[{table}]" if table else "top level"
        # A key in the wrong table (`mode` at the top, `cloud` under [run]): say where it goes.
        for other, keys in self.all_keys.items():
            if other != table and key in keys:
                return self.error(where, f"unknown key {key!r} (did you mean [{other}] {key}?)")
        # Never echo the value: it may be a secret pasted into the file.
        if table == "credentials" or _SECRET_WORDS.search(key):
            return self.error(
                f"[{table}] {key}" if table else key,
                "a job file must not hold secrets; put the secret in an environment variable "
                'and name that variable, e.g. [credentials] secret_env = "AUTOPILOT_SECRET" '
                f"(known keys: {', '.join(self.all_keys['credentials'])})",
            )
        valid = self.all_keys.get(table, ()) if table else (*_TOP_KEYS, *_TABLES)
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(valid)}"
        return self.error(where, f"unknown key {key!r} ({hint})")

    def table(self, name: str) -> dict[str, Any]:
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            raise self.error(name, f"must be a table ([{name}]), not a single value")
        # TOML allows either spelling; the CLI's dashes and Python's underscores both work.
        out: dict[str, Any] = {}
        for key, item in value.items():
            norm = key if name == "columns" else key.replace("-", "_")
            if norm in out:
                raise self.error(f"[{name}] {norm}", "given twice")
            out[norm] = item
        if name in self.all_keys:
            for key in out:
                if key not in self.all_keys[name]:
                    raise self.unknown(name, key)
        return out

    def convert(self, where: str, value: object, hint: Any) -> Any:
        """A TOML value as the Python type `hint` (bool, int, float, str, Path, Rate, Literal)."""
        origin = typing.get_origin(hint)
        if origin in (typing.Union, types.UnionType):
            options = [a for a in typing.get_args(hint) if a is not type(None)]
            errors: list[ConfigError] = []
            for option in options:
                try:
                    return self.convert(where, value, option)
                except ConfigError as error:
                    errors.append(error)
            raise errors[0]
        if origin is Literal:
            allowed = typing.get_args(hint)
            if value in allowed and type(value) is type(allowed[0]):
                return value
            raise self.error(where, f"must be one of {', '.join(map(repr, allowed))}")
        if hint is bool:
            if isinstance(value, bool):
                return value
            raise self.error(where, "must be true or false")
        if hint is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            raise self.error(where, "must be a whole number")
        if hint is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            raise self.error(where, "must be a number")
        if hint is str:
            if isinstance(value, str):
                return value
            raise self.error(where, "must be text in quotes")
        if hint is Path:
            if isinstance(value, str) and value.strip():
                return self.path_of(value)
            raise self.error(where, "must be a path in quotes")
        if hint is Rate:
            if isinstance(value, str):
                try:
                    return Rate.parse(value)
                except ValueError as error:
                    raise self.error(where, str(error)) from None
            raise self.error(where, 'must be a rate in quotes, like "100/20"')
        raise self.error(where, "cannot be set from a job file")  # pragma: no cover - a new type

    def path_of(self, text: str) -> Path:
        return (self.base / Path(text).expanduser()).resolve()

    def text(self, where: str, value: object) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(where, "must be non-empty text in quotes")
        return value.strip()


def load_job(path: Path) -> Job:
    """Read and validate a job file; raises `ConfigError` naming the file, table and key.

    Unknown keys are errors naming the closest valid key; a secret written into the file is
    refused (only environment variable names may be given for secrets).
    """
    path = Path(path).expanduser().resolve()
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: job file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a job file") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the job file: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: the file is not UTF-8 text") from None
    reader = _Reader(path, data)
    for key in data:
        if key not in (*_TOP_KEYS, *_TABLES):
            raise reader.unknown("", key)
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not _JOB_NAME.fullmatch(name):
        raise reader.error(
            "name", "must be 1-100 letters, digits, '.', '_' or '-' (it names the lock and state)"
        )

    # [input]
    raw_input = reader.table("input")
    input_file = folder = None
    if "file" in raw_input and "folder" in raw_input:
        raise reader.error("[input]", "give either file or folder, not both")
    if "file" in raw_input:
        input_file = reader.path_of(reader.text("[input] file", raw_input["file"]))
        for key in ("glob", "settle_seconds"):
            if key in raw_input:
                raise reader.error(f"[input] {key}", "only applies to a drop folder")
    elif "folder" in raw_input:
        folder = reader.path_of(reader.text("[input] folder", raw_input["folder"]))
    else:
        raise reader.error(
            "[input]", 'needs file = "updates.csv" or folder = "drop" (with glob = "*.csv")'
        )
    globs = DEFAULT_GLOBS
    if "glob" in raw_input:
        value = raw_input["glob"]
        patterns = [value] if isinstance(value, str) else value
        if (
            not isinstance(patterns, list)
            or not patterns
            or not all(isinstance(p, str) and p.strip() for p in patterns)
        ):
            raise reader.error("[input] glob", 'must be a pattern or a list, e.g. ["*.csv"]')
        if any(Path(p).is_absolute() or ".." in Path(p).parts for p in patterns):
            raise reader.error("[input] glob", "patterns are relative to the folder")
        globs = tuple(p.strip() for p in patterns)
    settle = DEFAULT_SETTLE_SECONDS
    if "settle_seconds" in raw_input:
        settle = reader.convert("[input] settle_seconds", raw_input["settle_seconds"], float)
        if settle < 0:
            raise reader.error("[input] settle_seconds", "must be 0 or more")
    typed_inputs = input_keys()
    input_fields: dict[str, Any] = {}
    for key, value in raw_input.items():
        if key in _INPUT_OWN_KEYS:
            continue
        field_name = next((f for f, k in _INPUT_RENAMES.items() if k == key), key)
        input_fields[field_name] = reader.convert(f"[input] {key}", value, typed_inputs[key])
    if input_fields.get("key") is not None:
        from batch.mapper import key_property

        try:
            input_fields["key"] = key_property(input_fields["key"])
        except BatchError as error:
            raise reader.error("[input] key", str(error)) from None

    # [columns]: an inline column map, the same as a --map file's [columns] table.
    columns = _columns(reader, input_fields)

    # [run]
    typed_run = run_keys()
    run_fields = {
        key: reader.convert(f"[run] {key}", value, typed_run[key])
        for key, value in reader.table("run").items()
    }
    if run_fields.get("pick") not in (None, "latest"):
        raise reader.error("[run] pick", "must be 'latest'")

    # [graph]
    graph = reader.table("graph")
    graph_text = {k: reader.text(f"[graph] {k}", v) for k, v in graph.items()}
    from batch.clouds import resolve_endpoints

    try:
        endpoints = resolve_endpoints(
            graph_text.get("cloud", "global"),
            graph_url=graph_text.get("graph_url"),
            authority_host=graph_text.get("authority_host"),
        )
    except ConfigError as error:
        raise reader.error("[graph]", str(error)) from None

    credentials = _credentials(reader)

    # [output]
    output = reader.table("output")
    root = reader.path_of(
        reader.text("[output] root", output["root"]) if "root" in output else f"runs/{name}"
    )
    archive = (
        reader.path_of(reader.text("[output] archive", output["archive"]))
        if "archive" in output
        else None
    )
    state_dir = (
        reader.path_of(reader.text("[output] state_dir", output["state_dir"]))
        if "state_dir" in output
        else root / f"_job-{name}"
    )
    log_file = (
        reader.path_of(reader.text("[output] log", output["log"]))
        if "log" in output
        else state_dir / "job.log"
    )
    if folder is not None and archive is not None and archive == folder:
        raise reader.error("[output] archive", "must not be the drop folder itself")

    notify_table = reader.table("notify")
    notify = Notify(
        stdout=reader.convert("[notify] stdout", notify_table.get("stdout", True), bool),
        file=(
            reader.path_of(reader.text("[notify] file", notify_table["file"]))
            if "file" in notify_table
            else None
        ),
    )
    job = Job(
        path=path,
        name=name,
        input_file=input_file,
        folder=folder,
        globs=globs,
        settle_seconds=settle,
        input_fields=input_fields,
        columns=columns,
        run_fields=run_fields,
        endpoints=endpoints,
        credentials=credentials,
        output_root=root,
        archive=archive,
        state_dir=state_dir,
        log_file=log_file,
        notify=notify,
    )
    try:
        job.run_options(input_file or Path("job-input"), out=None, resume=False).check()
    except UsageError as error:
        raise reader.error("[run]", str(error)) from None
    if job.input_fields.get("map_file") is not None:
        from batch.mapper import load_column_map

        load_column_map(job.input_fields["map_file"])  # a bad map file fails here, not per file
    return job


def _columns(reader: _Reader, input_fields: Mapping[str, Any]) -> dict[str, str] | None:
    if "columns" not in reader.data:
        return None
    columns = reader.table("columns")
    if "map_file" in input_fields:
        raise reader.error("[columns]", "give either [columns] or [input] map, not both")
    for header, target in columns.items():
        if not isinstance(target, str):
            raise reader.error(f"[columns] {header!r}", "must map to a property name (text)")
        if resolve_header(target) is None:
            hint = suggest_property(target)
            more = f" (did you mean {hint}?)" if hint else ""
            raise reader.error(
                f"[columns] {header!r}",
                f"{target!r} is not a property{more}; `autopilot-batch schema` lists them",
            )
    return columns


def _credentials(reader: _Reader) -> Credentials:
    if "credentials" not in reader.data:
        return Credentials()
    table = reader.table("credentials")
    from_env: dict[str, str] = {}
    literals: dict[str, str] = {}
    for key, value in table.items():
        where = f"[credentials] {key}"
        if key in _ENV_KEYS:
            # Never echo the value: a pasted secret must not end up in cron mail or logs.
            if not isinstance(value, str) or not _ENV_NAME.fullmatch(value.strip()):
                raise reader.error(
                    where,
                    "must be the NAME of an environment variable (letters, digits and _), "
                    "not the secret itself",
                )
            from_env[_ENV_KEYS[key]] = value.strip()
        elif key in _LITERAL_KEYS:
            text = reader.text(where, value)
            if _LITERAL_KEYS[key] in from_env:
                raise reader.error(where, f"give either {key} or {key}_env, not both")
            literals[_LITERAL_KEYS[key]] = (
                str(reader.path_of(text)) if key == "certificate_path" else text
            )
    for standard in literals:
        if standard in from_env:
            key = next(k for k, v in _LITERAL_KEYS.items() if v == standard)
            raise reader.error(f"[credentials] {key}", f"give either {key} or {key}_env, not both")
    return Credentials(
        from_env=from_env,
        literals=literals,
        device_code=reader.convert(
            "[credentials] device_code", table.get("device_code", False), bool
        ),
        token_cache=reader.convert(
            "[credentials] token_cache", table.get("token_cache", False), bool
        ),
        declared=True,
    )


# --- the lock ------------------------------------------------------------------------------------


class JobLock:
    """One running job at a time: `flock` on `<state dir>/job.lock`, holding the PID for messages.

    The kernel releases the lock when its process ends, however it ends, so a lock file left by
    a dead process is taken over without any guessing from PIDs. The file is never deleted:
    deleting it would let two processes lock two different files of the same name.
    """

    def __init__(self, path: Path, job_name: str) -> None:
        self.path = path
        self.job_name = job_name
        self._fd: int | None = None
        #: The previous holder's record when it died without releasing (stale lock taken over).
        self.taken_over: dict[str, Any] | None = None

    def acquire(self) -> None:
        """Take the lock or raise `LockHeld` at once; records this process in the file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ConfigError(f"cannot lock {self.path}: {error.strerror}") from None
            raise LockHeld(self._held_message(read_lock(self.path))) from None
        previous = _parse_lock(os.pread(fd, 4096, 0))
        if previous and previous.get("pid") != os.getpid():
            self.taken_over = previous
        record = {"pid": os.getpid(), "started": _now(), "host": os.uname().nodename}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd

    def _held_message(self, holder: dict[str, Any] | None) -> str:
        who = ""
        if holder:
            who = f" by pid {holder.get('pid', '?')}"
            if holder.get("started"):
                who += f" since {holder['started']}"
        return (
            f"job {self.job_name} is already running{who} (lock {self.path}); "
            "this start does nothing"
        )

    def release(self) -> None:
        """Empty the record and unlock (the kernel would unlock at exit anyway)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> JobLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _parse_lock(data: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(data.decode("utf-8", "replace") or "null")
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def read_lock(path: Path) -> dict[str, Any] | None:
    """The record in a lock file (`pid`, `started`, `host`), or None when it is free or absent."""
    try:
        return _parse_lock(path.read_bytes())
    except OSError:
        return None


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


# --- processed files -----------------------------------------------------------------------------

_STATE_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS files (
    sha256 TEXT NOT NULL,
    dry_run INTEGER NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL,        -- running | stopped | done | rejected | abandoned
    run_dir TEXT NOT NULL DEFAULT '',
    exit_code INTEGER,
    counts TEXT NOT NULL DEFAULT '{}',
    error TEXT NOT NULL DEFAULT '',
    archived_to TEXT NOT NULL DEFAULT '',
    started TEXT NOT NULL,
    finished TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (sha256, dry_run)
);
"""

_RESUMABLE: Final = ("running", "stopped")
# Rejected files are not finished: every run reads them again (see _JobRun._one).


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One input file the job has seen, by content digest."""

    sha256: str
    path: str
    state: str
    run_dir: str
    exit_code: int | None
    started: str
    finished: str
    error: str


class JobState:
    """`<state dir>/files.sqlite`: every input file the job started, by content SHA-256."""

    def __init__(self, path: Path, *, dry_run: bool, readonly: bool = False) -> None:
        self.path = path
        self.dry_run = int(dry_run)
        try:
            if readonly and path.exists():
                # `job check` reads the state a running job may be writing; it never writes.
                self._db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
                self._db.execute("PRAGMA query_only=1")
                self._db.execute("SELECT 1 FROM files LIMIT 1")
                return
            # Read-only without a state yet: an empty one in memory (nothing was processed).
            self._db = sqlite3.connect(":memory:" if readonly else path, isolation_level=None)
            if not readonly:
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_STATE_SCHEMA)
        except sqlite3.Error as error:
            raise ConfigError(f"{path}: cannot use the job's state: {error}") from None

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def get(self, sha256: str) -> FileRecord | None:
        """The record of this content, if the job has seen it (in this dry-run mode)."""
        row = self._db.execute(
            "SELECT sha256, path, state, run_dir, exit_code, started, finished, error"
            " FROM files WHERE sha256 = ? AND dry_run = ?",
            (sha256, self.dry_run),
        ).fetchone()
        return None if row is None else FileRecord(*row)

    def resumable(self) -> list[FileRecord]:
        """Files whose run did not finish, oldest first."""
        rows = self._db.execute(
            "SELECT sha256, path, state, run_dir, exit_code, started, finished, error FROM files"
            f" WHERE dry_run = ? AND state IN {_RESUMABLE!r} ORDER BY started, rowid",
            (self.dry_run,),
        )
        return [FileRecord(*r) for r in rows]

    def start(self, sha256: str, path: Path, run_dir: Path) -> None:
        """Record that this file's run begins (committed before anything is sent)."""
        self._db.execute(
            "INSERT INTO files(sha256, dry_run, path, state, run_dir, started)"
            " VALUES(?, ?, ?, 'running', ?, ?) ON CONFLICT(sha256, dry_run) DO UPDATE SET"
            " path = excluded.path, state = 'running', run_dir = excluded.run_dir,"
            " started = excluded.started, exit_code = NULL, error = '', finished = ''",
            (sha256, self.dry_run, str(path), str(run_dir), _now()),
        )

    def finish(
        self,
        sha256: str,
        state: str,
        *,
        exit_code: int | None = None,
        counts: Mapping[str, int] | None = None,
        error: str = "",
    ) -> None:
        """Record how the file's run ended."""
        self._db.execute(
            "UPDATE files SET state = ?, exit_code = ?, counts = ?, error = ?, finished = ?"
            " WHERE sha256 = ? AND dry_run = ?",
            (state, exit_code, json.dumps(dict(counts or {})), error, _now(), sha256, self.dry_run),
        )

    def reject(self, sha256: str, path: Path, error: str) -> None:
        """Record a file that cannot be used (read again by the next run: nothing was sent)."""
        self._db.execute(
            "INSERT INTO files(sha256, dry_run, path, state, error, exit_code, started, finished)"
            " VALUES(?, ?, ?, 'rejected', ?, 2, ?, ?) ON CONFLICT(sha256, dry_run) DO UPDATE SET"
            " path = excluded.path, state = 'rejected', error = excluded.error, exit_code = 2,"
            " finished = excluded.finished",
            (sha256, self.dry_run, str(path), error, _now(), _now()),
        )

    def processed_path(self, path: Path) -> bool:
        """Whether a file at this path was processed to the end (in this dry-run mode)."""
        row = self._db.execute(
            "SELECT 1 FROM files WHERE path = ? AND dry_run = ? AND state = 'done' LIMIT 1",
            (str(path), self.dry_run),
        ).fetchone()
        return row is not None

    def archived(self, sha256: str, to: Path) -> None:
        """Record where the file was moved."""
        self._db.execute(
            "UPDATE files SET archived_to = ? WHERE sha256 = ? AND dry_run = ?",
            (str(to), sha256, self.dry_run),
        )


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's bytes (the identity of a dropped file)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# --- what to process -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Item:
    path: Path
    sha256: str
    resume_dir: Path | None = None


@dataclass(slots=True)
class _Plan:
    items: list[_Item] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why), logged
    waiting: list[Path] = field(default_factory=list)  # too fresh (settle_seconds)
    abandoned: list[tuple[FileRecord, str]] = field(default_factory=list)
    duplicates: list[tuple[Path, FileRecord]] = field(default_factory=list)  # already done


def _ignored_name(name: str) -> bool:
    # Hidden files, Excel's "~$book.xlsx" owner files and editors' temporary files.
    return name.startswith((".", "~$", "~")) or name.endswith(("~", ".tmp", ".part", ".partial"))


def candidates(job: Job, now: float | None = None) -> tuple[list[Path], list[Path]]:
    """The job's input files, oldest first (mtime, then name), and those still settling."""
    if job.input_file is not None:
        if not job.input_file.is_file():
            return [], []
        return [job.input_file], []
    assert job.folder is not None
    if not job.folder.is_dir():
        raise ConfigError(f"{job.path}: [input] folder {job.folder} does not exist")
    excluded = [p for p in (job.archive, job.output_root, job.state_dir) if p is not None]
    found: dict[Path, os.stat_result] = {}
    for pattern in job.globs:
        for path in job.folder.glob(pattern):
            if path in found or _ignored_name(path.name):
                continue
            if any(path.is_relative_to(ex) for ex in excluded):
                continue
            try:
                st = path.stat()
            except OSError:
                continue  # vanished meanwhile
            if path.is_file():
                found[path] = st
    clock = dt.datetime.now(dt.UTC).timestamp() if now is None else now
    ready = [p for p, st in found.items() if clock - st.st_mtime >= job.settle_seconds]
    settling = sorted(p for p in found if p not in ready)
    ready.sort(key=lambda p: (found[p].st_mtime, p.name))
    return ready, settling


def _plan(job: Job, state: JobState) -> _Plan:
    plan = _Plan()
    shas: set[str] = set()
    for record in state.resumable():
        path = Path(record.path)
        try:
            sha = file_digest(path)
        except OSError:
            plan.abandoned.append((record, "the file is gone"))
            continue
        if sha != record.sha256:
            plan.abandoned.append((record, "the file changed since"))
            continue
        plan.items.append(_Item(path, sha, Path(record.run_dir) if record.run_dir else None))
        shas.add(sha)
    ready, plan.waiting = candidates(job)
    in_plan = {item.path for item in plan.items}
    for path in ready:
        if path in in_plan:
            continue
        try:
            sha = file_digest(path)
        except OSError as error:
            plan.skipped.append((path, f"cannot be read: {error.strerror or error}"))
            continue
        if sha in shas:
            plan.skipped.append((path, "same content as another file of this run"))
            continue
        seen = state.get(sha)
        if seen is not None and seen.state == "done":
            plan.duplicates.append((path, seen))
            continue
        if seen is not None and seen.state in _RESUMABLE:
            plan.skipped.append((path, f"same content as {seen.path}, which is resumed"))
            continue
        plan.items.append(_Item(path, sha))
        shas.add(sha)
    return plan


# --- running -------------------------------------------------------------------------------------

FileStatus = Literal["ok", "rows_failed", "rejected", "aborted", "interrupted"]


@dataclass(slots=True)
class FileResult:
    """What happened to one input file in a job run."""

    path: Path
    sha256: str
    status: FileStatus
    exit_code: int
    run_dir: Path | None = None
    counts: dict[str, int] = field(default_factory=dict)
    resumed: bool = False
    error: str = ""
    archived_to: Path | None = None

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON object (job log, `--json`)."""
        return {
            "file": str(self.path),
            "sha256": self.sha256,
            "status": self.status,
            "exit_code": self.exit_code,
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "counts": self.counts,
            "resumed": self.resumed,
            "error": self.error,
            "archived_to": str(self.archived_to) if self.archived_to else None,
        }


def job_exit_code(files: Sequence[FileResult], *, interrupted: bool = False) -> int:
    """130 interrupted, else 3 if a file's run aborted, else 1 if a row or file was bad, else 0."""
    statuses = {f.status for f in files}
    if interrupted or "interrupted" in statuses:
        return 130
    if "aborted" in statuses:
        return 3
    if statuses & {"rows_failed", "rejected"}:
        return 1
    return 0


@dataclass(slots=True)
class JobReport:
    """A job run's outcome: the files it handled, and the one-line summary it reports."""

    job: Job
    files: list[FileResult] = field(default_factory=list)
    skipped: int = 0
    waiting: int = 0
    interrupted: bool = False
    started: str = field(default_factory=_now)
    ended: str = ""

    @property
    def exit_code(self) -> int:
        """The job's exit code (see `job_exit_code`)."""
        return job_exit_code(self.files, interrupted=self.interrupted)

    def counts(self) -> Counter[str]:
        """Row outcomes over all files."""
        total: Counter[str] = Counter()
        for f in self.files:
            total.update(f.counts)
        return total

    def line(self) -> str:
        """The summary line: files, row outcomes, exit code."""
        statuses = Counter(f.status for f in self.files)
        names = {
            "ok": "ok",
            "rows_failed": "with failed or invalid rows",
            "rejected": "unreadable",
            "aborted": "aborted",
            "interrupted": "interrupted",
        }
        if self.files:
            parts = ", ".join(f"{n} {names[s]}" for s, n in statuses.items())
            noun = "file" if len(self.files) == 1 else "files"
            text = f"{len(self.files)} {noun} ({parts})"
        else:
            text = "no new files"
        extras = []
        if self.skipped:
            extras.append(f"{self.skipped} already processed")
        if self.waiting:
            extras.append(f"{self.waiting} still being written")
        if extras:
            text += f", {', '.join(extras)}"
        rows = ", ".join(f"{k} {v}" for k, v in sorted(self.counts().items()) if v)
        if rows:
            text += f"; rows: {rows}"
        if self.interrupted and not statuses.get("interrupted"):
            text += "; interrupted"
        return f"job {self.job.name}: {text}; exit {self.exit_code}"

    def to_json(self) -> dict[str, Any]:
        """The report as one JSON object (`job run --json`)."""
        return {
            "job": self.job.name,
            "job_file": str(self.job.path),
            "started": self.started,
            "ended": self.ended,
            "files": [f.to_json() for f in self.files],
            "counts": dict(self.counts()),
            "skipped": self.skipped,
            "waiting": self.waiting,
            "interrupted": self.interrupted,
            "exit_code": self.exit_code,
            "summary": self.line(),
        }


class _Stop(Exception):
    """The job was asked to stop between or before files' runs."""


class _JobRun:
    def __init__(self, job: Job, tokens: TokenProvider | None, *, quiet: bool) -> None:
        self.job = job
        self.tokens = tokens
        self.quiet = quiet
        self.report = JobReport(job)
        self.signal_name: str | None = None
        self.map_file: Path | None = None

    # Signals: the engine watches SIGINT/SIGTERM while a file's rows are being sent (and stops
    # that run cleanly, exit 130). Around it (hashing, reading a file, resolving keys) the job
    # watches them itself and cancels the current step; nothing is being written to Graph then.
    @asynccontextmanager
    async def _stoppable(self) -> AsyncIterator[anyio.CancelScope]:
        if self.signal_name is not None:
            raise _Stop()
        error: Exception | None = None
        step = anyio.CancelScope()
        async with anyio.create_task_group() as tg:
            await tg.start(self._watch, step)
            try:
                with step:
                    yield step
            except Exception as exc:
                # Raised after the task group, so callers see it as it is (not in a group).
                error = exc
            finally:
                tg.cancel_scope.cancel()
        if error is not None:
            raise error
        if step.cancelled_caught or self.signal_name is not None:
            raise _Stop()

    async def _watch(
        self, step: anyio.CancelScope, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        try:
            receiver = anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
            with receiver as signals:
                task_status.started()
                async for signum in signals:
                    if self.signal_name is not None:
                        log.error("second interrupt: exiting at once")
                        os._exit(130)
                    self.signal_name = signal.Signals(signum).name
                    log.warning("%s received: stopping the job", self.signal_name)
                    step.cancel()
        except (NotImplementedError, ValueError, RuntimeError):
            # Not the main thread (in-process tests): no signal watch.
            task_status.started()
            await anyio.sleep_forever()

    async def main(self, state: JobState) -> None:
        try:
            async with self._stoppable():
                plan = _plan(self.job, state)
            for record, why in plan.abandoned:
                log.warning(
                    "interrupted run of %s cannot be resumed: %s; its run folder %s keeps what "
                    "was sent, and the file is treated as new",
                    record.path,
                    why,
                    record.run_dir,
                    extra={"file": record.path, "run_dir": record.run_dir},
                )
                state.finish(record.sha256, "abandoned", error=why)
            for path, why in plan.skipped:
                log.warning("skipped %s: %s", path, why, extra={"file": str(path)})
            for path in plan.waiting:
                log.info(
                    "not yet: %s was modified less than %g s ago (settle_seconds)",
                    path,
                    self.job.settle_seconds,
                    extra={"file": str(path)},
                )
            self.report.waiting = len(plan.waiting)
            self.report.skipped = len(plan.duplicates)
            for path, record in plan.duplicates:
                same = "" if record.path == str(path) else f", same content as {record.path}"
                log.info(
                    "already processed: %s (finished %s%s)",
                    path,
                    record.finished,
                    same,
                    extra={"file": str(path), "run_dir": record.run_dir},
                )
                self._archive(state, path, record.sha256)
            for item in plan.items:
                result = await self._one(state, item)
                self.report.files.append(result)
                if result.status in ("aborted", "interrupted"):
                    break  # the next job run resumes it first; other files wait for that
        except _Stop:
            self.report.interrupted = True

    async def _one(self, state: JobState, item: _Item) -> FileResult:
        from batch.engine import execute
        from batch.progress import make_progress

        resume = item.resume_dir is not None and (item.resume_dir / "state.sqlite").exists()
        out = item.resume_dir if resume and item.resume_dir else self._fresh_run_dir(item.path)
        options = self.job.run_options(item.path, out=out, resume=resume, map_file=self.map_file)
        result = FileResult(item.path, item.sha256, "ok", 0, run_dir=out, resumed=resume)

        def started(prepared: Prepared) -> None:
            # Read and checked; nothing sent yet. From here on the file is resumable.
            if self.signal_name is not None:
                raise Interrupted(f"{self.signal_name} received before {item.path.name} started")
            result.sha256 = prepared.sha256
            state.start(prepared.sha256, item.path, out)

        log.info(
            "%s %s",
            "resuming" if resume else "processing",
            item.path,
            extra={"file": str(item.path), "sha256": item.sha256, "run_dir": str(out)},
        )
        try:
            async with self._stoppable():
                summary: RunSummary = await execute(
                    options,
                    tokens=self.tokens,
                    progress=make_progress(quiet=self.quiet),
                    on_prepared=started,
                )
        except InputFileError as error:
            # The file itself cannot be used (unreadable, unknown column, ...). It stays where it
            # is and is read again by every run (nothing is sent): a corrected file, or a job
            # file that now maps its columns, lets it through.
            state.reject(item.sha256, item.path, str(error))
            log.error("rejected: %s", error, extra={"file": str(item.path)})
            result.status, result.exit_code, result.error = "rejected", error.exit_code, str(error)
            result.run_dir = out if out.exists() else None
            return result
        except (AuthError, RunAborted) as error:
            state.finish(result.sha256, "stopped", exit_code=error.exit_code, error=str(error))
            log.error("aborted %s: %s", item.path, error, extra={"file": str(item.path)})
            result.status, result.exit_code, result.error = "aborted", error.exit_code, str(error)
            return result
        except (Interrupted, _Stop) as error:
            state.finish(result.sha256, "stopped", exit_code=130, error=str(error))
            self.report.interrupted = True
            result.status, result.exit_code = "interrupted", 130
            result.error = str(error) or f"{self.signal_name} received"
            return result
        except UsageError as error:
            # Settings, not the file (a map file, the run folder, resume refused): job setup.
            state.finish(result.sha256, "stopped", exit_code=error.exit_code, error=str(error))
            raise ConfigError(f"{item.path}: {error}") from None
        result.counts = {k: v for k, v in summary.data["counts"].items() if v}
        result.exit_code = summary.exit_code
        if summary.exit_code in (0, 1):
            result.status = "ok" if summary.exit_code == 0 else "rows_failed"
            state.finish(result.sha256, "done", exit_code=summary.exit_code, counts=result.counts)
            result.archived_to = self._archive(state, item.path, result.sha256)
        else:
            result.status = "interrupted" if summary.exit_code == 130 else "aborted"
            state.finish(
                result.sha256,
                "stopped",
                exit_code=summary.exit_code,
                counts=result.counts,
                error=str(summary.data.get("stopped_because") or ""),
            )
            if summary.exit_code == 130:
                self.report.interrupted = True
        log.info(
            "finished %s: %s",
            item.path,
            result.status,
            extra={"file": str(item.path), **result.to_json()},
        )
        return result

    def _fresh_run_dir(self, path: Path) -> Path:
        from batch.engine import default_out_dir

        base = default_out_dir(self.job.run_options(path, out=None, resume=False))
        out, n = base, 1
        while out.exists():
            n += 1
            out = base.with_name(f"{base.name}-{n}")
        return out

    def _archive(self, state: JobState, path: Path, sha256: str) -> Path | None:
        archive = self.job.archive
        if archive is None or self.job.dry_run or not path.exists():
            return None
        target = archive / path.name
        if target.exists():
            target = archive / f"{path.stem}-{sha256[:12]}{path.suffix}"
        n = 1
        while target.exists():
            n += 1
            target = archive / f"{path.stem}-{sha256[:12]}-{n}{path.suffix}"
        try:
            archive.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(target))
        except OSError as error:
            # The file is remembered by digest, so it is not sent again even if it stays put.
            log.error(
                "cannot archive %s to %s: %s", path, archive, error.strerror or error,
                extra={"file": str(path)},
            )  # fmt: skip
            return None
        state.archived(sha256, target)
        log.info("archived %s to %s", path, target, extra={"file": str(path), "to": str(target)})
        return target


def _write_column_map(columns: Mapping[str, str], folder: Path) -> Path:
    """The inline [columns] table as a `--map` file (the mapper reads column maps from files)."""
    path = folder / "columns.toml"
    lines = ["# Written by `autopilot-batch job` from the job file's [columns]; edit that instead."]
    lines.append("[columns]")
    lines += [f"{json.dumps(header)} = {json.dumps(target)}" for header, target in columns.items()]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def run_job(job: Job, *, env: Mapping[str, str] = os.environ, quiet: bool = False) -> JobReport:
    """Run a job once: lock, resume, process new files, archive, log; returns the report.

    Raises `LockHeld` when another run of the job holds the lock, `ConfigError` for settings
    that are wrong (credentials, folders); everything about the files is in the report.
    """
    tokens = job.tokens(env)
    if job.input_file is not None and not job.input_file.exists():
        _require_processed(job)
    from batch.logs import JsonLinesHandler

    try:
        job.state_dir.mkdir(parents=True, exist_ok=True)
        job.log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = JsonLinesHandler(job.log_file)
    except OSError as error:
        raise ConfigError(
            f"{job.path}: cannot write the job's state or log ({job.state_dir}, {job.log_file}): "
            f"{error.strerror or error}"
        ) from None
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    lock = JobLock(job.state_dir / "job.lock", job.name)
    state: JobState | None = None
    try:
        try:
            lock.acquire()
        except LockHeld as error:
            # In the log too: "why did last night's start do nothing?" is answered there.
            log.warning("%s", error, extra={"job": job.name, "pid": os.getpid()})
            raise
        log.info(
            "job started", extra={"job": job.name, "job_file": str(job.path), "pid": os.getpid()}
        )
        if lock.taken_over is not None:
            log.warning(
                "took over the lock of pid %s (started %s), which is no longer running",
                lock.taken_over.get("pid", "?"),
                lock.taken_over.get("started", "?"),
                extra={"previous": lock.taken_over},
            )
        state = JobState(job.state_dir / "files.sqlite", dry_run=job.dry_run)
        runner = _JobRun(job, tokens, quiet=quiet)
        if job.columns is not None:
            runner.map_file = _write_column_map(job.columns, job.state_dir)
        anyio.run(runner.main, state)
        report = runner.report
        report.ended = _now()
        line = report.line()
        log.info(line, extra=report.to_json())
        _notify_file(job, f"{report.ended} {line}")
        return report
    finally:
        if state is not None:
            state.close()
        lock.release()
        log.removeHandler(handler)
        handler.close()


def _notify_file(job: Job, line: str) -> None:
    if job.notify.file is None:
        return
    try:
        job.notify.file.parent.mkdir(parents=True, exist_ok=True)
        with job.notify.file.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
    except OSError as error:
        log.error("cannot write %s: %s", job.notify.file, error.strerror or error)


def _require_processed(job: Job) -> None:
    """A one-off job whose file is gone: fine once it was processed (and archived)."""
    assert job.input_file is not None
    state_path = job.state_dir / "files.sqlite"
    if state_path.exists():
        state = JobState(state_path, dry_run=job.dry_run, readonly=True)
        try:
            if state.processed_path(job.input_file):
                return
        finally:
            state.close()
    raise ConfigError(f"{job.path}: [input] file {job.input_file} does not exist")


# --- checking ------------------------------------------------------------------------------------


# The files `job check` reads, as the next `job run` would.
_PENDING: Final = ("new", "resume")


@dataclass(slots=True)
class FileCheck:
    """`job check`'s verdict on one input file."""

    path: Path
    action: Literal["new", "resume", "done", "waiting", "skipped"]
    rows: int = 0
    valid: int = 0
    invalid: int = 0
    skipped: int = 0
    error: str = ""
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        """The verdict as a JSON object."""
        return {
            "file": str(self.path),
            "action": self.action,
            "rows": self.rows,
            "valid": self.valid,
            "invalid": self.invalid,
            "skipped": self.skipped,
            "error": self.error,
            "problems": self.problems,
            "warnings": self.warnings,
            "note": self.note,
        }


@dataclass(slots=True)
class CheckReport:
    """`job check`: the job's settings and every input file it would handle next."""

    job: Job
    credentials: str = ""
    problems: list[str] = field(default_factory=list)  # settings: exit 2
    files: list[FileCheck] = field(default_factory=list)
    lock: str = "free"

    @property
    def exit_code(self) -> int:
        """2 a setting is wrong, 1 an input file or row is bad, 0 ready to run."""
        if self.problems:
            return 2
        if any(f.error or f.invalid for f in self.files if f.action in _PENDING):
            return 1
        return 0

    def to_json(self) -> dict[str, Any]:
        """The report as one JSON object (`job check --json`)."""
        job = self.job
        return {
            "job": job.name,
            "job_file": str(job.path),
            "input": str(job.input_file or job.folder),
            "globs": list(job.globs) if job.folder else [],
            "cloud": job.endpoints.cloud,
            "graph_root": job.endpoints.graph_root,
            "credentials": self.credentials,
            "output_root": str(job.output_root),
            "archive": str(job.archive) if job.archive else None,
            "state_dir": str(job.state_dir),
            "lock": self.lock,
            "problems": self.problems,
            "files": [f.to_json() for f in self.files],
            "exit_code": self.exit_code,
        }


def check_job(job: Job, *, env: Mapping[str, str] = os.environ) -> CheckReport:
    """Validate a job's settings and its current inputs like `validate`, sending nothing.

    Changes nothing on disk: no lock is taken and the state is read only.
    """
    report = CheckReport(job)
    try:
        tokens = job.tokens(env)
        if tokens is None:
            report.credentials = "none needed (dry run)"
        else:
            from batch.auth import credential_name

            kind = credential_name(tokens)
            kind = "access token" if kind == "GRAPH_ACCESS_TOKEN" else kind
            report.credentials = f"{kind} ({job.credentials.describe()})"
    except ConfigError as error:
        report.problems.append(f"credentials: {error}")
    for what, folder in (
        ("[output] root", job.output_root),
        ("[output] state_dir", job.state_dir),
        ("[output] archive", job.archive),
    ):
        if folder is not None and (problem := _unwritable(folder)):
            report.problems.append(f"{what} {folder}: {problem}")
    holder = read_lock(job.state_dir / "job.lock")
    if holder:
        alive = "running" if _pid_alive(holder.get("pid")) else "not running: will be taken over"
        report.lock = f"last taken by pid {holder.get('pid')} at {holder.get('started')} ({alive})"
    try:
        state = JobState(job.state_dir / "files.sqlite", dry_run=job.dry_run, readonly=True)
    except ConfigError as error:
        report.problems.append(str(error))
        return report
    try:
        plan = _plan(job, state)
    except ConfigError as error:
        report.problems.append(str(error))
        return report
    finally:
        state.close()
    if job.input_file is not None and not job.input_file.exists():
        try:
            _require_processed(job)
            report.files.append(FileCheck(job.input_file, "done", note="processed and archived"))
        except ConfigError as error:
            report.problems.append(str(error))
    for path, record in plan.duplicates:
        report.files.append(FileCheck(path, "done", note=f"{record.finished} {record.run_dir}"))
    for path in plan.waiting:
        report.files.append(FileCheck(path, "waiting", note="modified within settle_seconds"))
    for path, why in plan.skipped:
        report.files.append(FileCheck(path, "skipped", note=why))
    map_dir = tempfile.TemporaryDirectory(prefix="autopilot-batch-job-") if job.columns else None
    try:
        map_file = (
            _write_column_map(job.columns, Path(map_dir.name)) if map_dir and job.columns else None
        )
        for item in plan.items:
            action: Literal["new", "resume"] = "resume" if item.resume_dir else "new"
            report.files.append(_check_file(job, item.path, action, map_file))
    finally:
        if map_dir is not None:
            map_dir.cleanup()
    return report


def _unwritable(folder: Path) -> str:
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            return "no existing parent folder"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return ""


def _check_file(
    job: Job, path: Path, action: Literal["new", "resume"], map_file: Path | None
) -> FileCheck:
    from batch.mapper import prepare
    from batch.model import Invalid, Skipped, Update

    check = FileCheck(path, action)
    try:
        prepared = prepare(path, job.input_options(map_file))
    except (InputFileError, UsageError) as error:
        check.error = str(error)
        return check
    check.warnings = list(prepared.warnings)
    for _raw, mapped in prepared.rows():
        check.rows += 1
        if isinstance(mapped, Update):
            check.valid += 1
        elif isinstance(mapped, Skipped):
            check.skipped += 1
        elif isinstance(mapped, Invalid):
            check.invalid += 1
            check.problems.extend(f"row {mapped.number}: {p}" for p in mapped.problems)
    return check


def iter_check_lines(report: CheckReport) -> Iterator[tuple[bool, str]]:
    """`job check`'s text output as (to_stderr, line) pairs."""
    job = report.job
    where = (
        f"file {job.input_file}"
        if job.input_file
        else (f"folder {job.folder} ({', '.join(job.globs)})")
    )
    yield False, f"job {job.name} ({job.path})"
    yield False, f"  input:       {where}"
    yield False, f"  graph:       {job.endpoints.cloud} {job.endpoints.graph_root}"
    if report.credentials:
        yield False, f"  credentials: {report.credentials}"
    archive = f", archive {job.archive}" if job.archive else ""
    yield False, f"  output:      {job.output_root}{archive}"
    yield False, f"  lock:        {report.lock}"
    for problem in report.problems:
        yield True, f"error: {problem}"
    for f in report.files:
        if f.action in _PENDING:
            if f.error:
                yield True, f"{f.path.name}: {f.error}"
                yield False, f"  {f.action:<7} {f.path}: cannot be used"
                continue
            for warning in f.warnings:
                yield True, f"{f.path.name}: warning: {warning}"
            for problem in f.problems:
                yield True, f"{f.path.name} {problem}"
            counts = f"{f.valid} valid, {f.invalid} invalid, {f.skipped} skipped"
            yield False, f"  {f.action:<7} {f.path}: {f.rows} rows: {counts}"
        else:
            yield False, f"  {f.action:<7} {f.path}: {f.note}"
    pending = sum(f.action in ("new", "resume") for f in report.files)
    verdict = {0: "ready", 1: "some input is bad", 2: "the job's settings are wrong"}
    yield (
        False,
        (
            f"job {job.name}: {pending} file{'s' if pending != 1 else ''} to process; "
            f"{verdict[report.exit_code]} (exit {report.exit_code})"
        ),
    )
