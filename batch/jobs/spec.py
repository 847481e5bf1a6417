"""The job file: parsing and validating JOB.toml into a `Job` (settings, credentials, columns)."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from batch.errors import BatchError, ConfigError, UsageError
from batch.mapper import InputOptions, resolve_header, suggest_property
from batch.model import Rate

if typing.TYPE_CHECKING:
    from batch.auth import TokenProvider
    from batch.clouds import Endpoints
    from batch.engine import RunOptions


#: Patterns a drop folder is searched with when the job names none.
DEFAULT_GLOBS: Final = ("*.csv", "*.xlsx", "*.xlsm")
#: A drop-folder file modified less than this many seconds ago may still be being written.
DEFAULT_SETTLE_SECONDS: Final = 30.0

# RunOptions fields a job sets from elsewhere than its [run] table (input, output, graph).
# (`force` is a [run] key: `run --force` overrides the conflicts of an exported file.)
_RUN_FIELDS_ELSEWHERE: Final = frozenset(
    {"input", "out", "resume", "input_options", "graph_root", "cloud", "runs_root"}
)
# InputOptions fields under another name in [input] (the CLI's spelling: --map).
_INPUT_RENAMES: Final = {"map_file": "map"}
_INPUT_OWN_KEYS: Final = ("file", "folder", "glob", "settle_seconds")
_GRAPH_KEYS: Final = ("cloud", "graph_url", "authority_host")
_OUTPUT_KEYS: Final = ("root", "archive", "state_dir", "log")
_NOTIFY_KEYS: Final = ("stdout", "file", "webhook_env", "webhook_format", "notify_on")
_TOP_KEYS: Final = ("name", "parallel_tenants", "tenants")
# The tables a [[tenants]] entry may carry ([tenants.input], ...), overriding the top level's.
_TENANT_TABLES: Final = ("input", "columns", "run", "graph", "credentials", "output")
#: How many tenants of a job run at once unless `parallel_tenants` says otherwise.
DEFAULT_PARALLEL_TENANTS: Final = 4
_TABLES: Final = ("input", "columns", "run", "graph", "credentials", "output", "notify")

# [credentials]: environment variable names mapped onto what `build_token_provider` reads.
_ENV_KEYS: Final = {
    "access_token_env": "GRAPH_ACCESS_TOKEN",
    "tenant_id_env": "AZURE_TENANT_ID",
    "client_id_env": "AZURE_CLIENT_ID",
    "secret_env": "AZURE_CLIENT_SECRET",
    "certificate_path_env": "AZURE_CLIENT_CERTIFICATE_PATH",
    "certificate_password_env": "AZURE_CLIENT_CERTIFICATE_PASSWORD",
    "federated_token_file_env": "AZURE_FEDERATED_TOKEN_FILE",
}
# Not secrets: identifiers and a file path may be written in the job file as they are.
_LITERAL_KEYS: Final = {
    "tenant_id": "AZURE_TENANT_ID",
    "client_id": "AZURE_CLIENT_ID",
    "certificate_path": "AZURE_CLIENT_CERTIFICATE_PATH",
    "federated_token_file": "AZURE_FEDERATED_TOKEN_FILE",
}
_LITERAL_PATHS: Final = ("certificate_path", "federated_token_file")
# Settings, not variables: the source flags and a user-assigned managed identity's client id.
_CREDENTIAL_FLAGS: Final = (
    "device_code",
    "token_cache",
    "managed_identity",
    "managed_identity_client_id",
    "azure_cli",
)
_CREDENTIAL_VARIABLES: Final = (*_ENV_KEYS.values(),)
_SECRET_WORDS: Final = re.compile(r"secret|password|passphrase|token|credential|key", re.I)
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_JOB_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True, kw_only=True)
class Credentials:
    """Where the job's token comes from: environment variable names (and non-secret literals)."""

    #: Standard variable (GRAPH_ACCESS_TOKEN, AZURE_*) → the variable holding it, from `*_env`.
    from_env: Mapping[str, str] = field(default_factory=dict)
    #: Standard variable → its value, for the non-secret literals (tenant, client id, cert path).
    literals: Mapping[str, str] = field(default_factory=dict)
    device_code: bool = False
    token_cache: bool = False
    managed_identity: bool = False
    managed_identity_client_id: str | None = None
    azure_cli: bool = False
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
        if self.managed_identity:
            client = self.managed_identity_client_id
            parts.append(f"managed identity {client}" if client else "managed identity")
        if self.azure_cli:
            parts.append("Azure CLI")
        return ", ".join(parts) or "none"


@dataclass(frozen=True, kw_only=True)
class Notify:
    """How the summary line is reported besides the job log."""

    stdout: bool = True
    file: Path | None = None
    #: The NAME of the environment variable holding the webhook URL (a secret).
    webhook_env: str | None = None
    webhook_format: Literal["teams", "slack", "json"] = "json"
    notify_on: Literal["always", "problems"] = "always"


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
    #: The tenant this job is, in a job file with [[tenants]] ("" for a single-tenant job).
    tenant: str = ""
    #: A multi-tenant job's tenants (each a complete job); empty for a single-tenant job.
    tenants: tuple[Job, ...] = ()
    parallel_tenants: int = DEFAULT_PARALLEL_TENANTS

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
            managed_identity=self.credentials.managed_identity,
            managed_identity_client_id=self.credentials.managed_identity_client_id,
            azure_cli=self.credentials.azure_cli,
            env=self.credentials.environment(env),
        )


def run_keys() -> dict[str, Any]:
    """The [run] keys: every `RunOptions` field a job sets there, with its type."""
    from batch import engine

    hints = typing.get_type_hints(engine.RunOptions)
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

    def __init__(self, path: Path, data: dict[str, Any], *, tenant: str = "") -> None:
        self.path = path
        self.tenant = tenant
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
        prefix = f"{self.path}: tenant {self.tenant}" if self.tenant else f"{self.path}"
        return ConfigError(f"{prefix}: {where}: {message}" if where else f"{prefix}: {message}")

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

    def table(self, name: str, value: object = None) -> dict[str, Any]:
        """Table `name` of the file (or `value`), keys normalised and checked."""
        if value is None:
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
    notify = _notify(reader)
    if "tenants" in data:
        return _load_tenants(reader, name, notify)
    if "parallel_tenants" in data:
        raise reader.error("parallel_tenants", "only applies to a job file with [[tenants]]")
    return _build(reader, name, notify)


def _build(reader: _Reader, name: str, notify: Notify, tenant: str = "") -> Job:
    """One tenant's job from `reader`'s tables (the file's own, or a tenant's merged ones)."""
    path = reader.path
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
        tenant=tenant,
    )
    try:
        job.run_options(input_file or Path("job-input"), out=None, resume=False).check()
    except UsageError as error:
        raise reader.error("[run]", str(error)) from None
    if job.input_fields.get("map_file") is not None:
        from batch.mapper import load_column_map

        load_column_map(job.input_fields["map_file"])  # a bad map file fails here, not per file
    return job


def _notify(reader: _Reader) -> Notify:
    table = reader.table("notify")
    webhook_env = None
    if "webhook_env" in table:
        value = table["webhook_env"]
        # Never echo the value: a pasted webhook URL is a secret.
        if not isinstance(value, str) or not _ENV_NAME.fullmatch(value.strip()):
            raise reader.error(
                "[notify] webhook_env",
                "must be the NAME of an environment variable holding the webhook URL "
                "(letters, digits and _), not the URL itself: the URL is a secret",
            )
        webhook_env = value.strip()
    for key in ("webhook_format", "notify_on"):
        if key in table and webhook_env is None:
            raise reader.error(f"[notify] {key}", "needs webhook_env (the URL's variable)")
    return Notify(
        stdout=reader.convert("[notify] stdout", table.get("stdout", True), bool),
        file=(
            reader.path_of(reader.text("[notify] file", table["file"])) if "file" in table else None
        ),
        webhook_env=webhook_env,
        webhook_format=reader.convert(
            "[notify] webhook_format",
            table.get("webhook_format", "json"),
            Literal["teams", "slack", "json"],
        ),
        notify_on=reader.convert(
            "[notify] notify_on", table.get("notify_on", "always"), Literal["always", "problems"]
        ),
    )


def _merged_table(table: str, top: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """A tenant's table: the top level's keys, overridden key by key by the tenant's."""
    base = dict(top)
    if table == "input" and ("file" in own or "folder" in own):
        # The tenant names its own input: the top level's file or folder does not apply.
        for key in ("file", "folder", *(("glob", "settle_seconds") if "file" in own else ())):
            base.pop(key, None)
    if table == "credentials":
        # `tenant_id` here replaces `tenant_id_env` there, and the other way round.
        for key in own:
            base.pop(key.removesuffix("_env") if key.endswith("_env") else f"{key}_env", None)
    return {**base, **own}


def _load_tenants(reader: _Reader, name: str, notify: Notify) -> Job:
    """A job file with [[tenants]]: one complete `Job` per tenant, under one top-level job."""
    data = reader.data
    entries = data["tenants"]
    if (
        not isinstance(entries, list)
        or not entries
        or not all(isinstance(e, dict) for e in entries)
    ):
        raise reader.error("tenants", 'must be [[tenants]] tables, each with name = "..."')
    parallel = reader.convert(
        "parallel_tenants", data.get("parallel_tenants", DEFAULT_PARALLEL_TENANTS), int
    )
    if parallel < 1:
        raise reader.error("parallel_tenants", "must be 1 or more")
    top_output = reader.table("output")
    root = reader.path_of(
        reader.text("[output] root", top_output["root"]) if "root" in top_output else f"runs/{name}"
    )
    top_state = (
        reader.path_of(reader.text("[output] state_dir", top_output["state_dir"]))
        if "state_dir" in top_output
        else None
    )
    state_dir = top_state or root / f"_job-{name}"
    log_file = (
        reader.path_of(reader.text("[output] log", top_output["log"]))
        if "log" in top_output
        else state_dir / "job.log"
    )
    top_tables = {t: reader.table(t) for t in _TENANT_TABLES if t in data}
    seen: set[str] = set()
    tenants: list[Job] = []
    for entry in entries:
        tenant = entry.get("name")
        if not isinstance(tenant, str) or not _JOB_NAME.fullmatch(tenant):
            raise reader.error(
                "[[tenants]] name",
                "every tenant needs a name of 1-100 letters, digits, '.', '_' or '-' "
                "(it names the tenant's folder)",
            )
        if tenant.lower() in seen:
            raise reader.error("[[tenants]] name", f"{tenant!r} is given twice")
        seen.add(tenant.lower())
        own_reader = _Reader(reader.path, entry, tenant=tenant)
        for key in entry:
            if key == "name" or key in _TENANT_TABLES:
                continue
            if key in (*_TOP_KEYS, *_TABLES):
                raise own_reader.error(key, "applies to the whole job: give it at the top level")
            raise own_reader.unknown("", key)
        own = {t: own_reader.table(t) for t in _TENANT_TABLES if t in entry}
        merged: dict[str, Any] = {"name": name}
        for table in _TENANT_TABLES:
            if table in top_tables or table in own:
                merged[table] = _merged_table(table, top_tables.get(table, {}), own.get(table, {}))
        # [columns] and [input] map exclude each other: the tenant's choice wins.
        if "columns" in own:
            merged.get("input", {}).pop("map", None)
        elif "map" in own.get("input", {}):
            merged.pop("columns", None)
        own_output = own.get("output", {})
        t_root = (
            own_reader.path_of(own_reader.text("[output] root", own_output["root"]))
            if "root" in own_output
            else root / tenant
        )
        if "state_dir" in own_output:
            t_state = own_reader.path_of(
                own_reader.text("[output] state_dir", own_output["state_dir"])
            )
        else:
            t_state = top_state / tenant if top_state else t_root / f"_job-{name}"
        output = dict(merged.get("output", {}))
        output.update(root=str(t_root), state_dir=str(t_state))
        if "log" not in own_output:
            output["log"] = str(t_state / "job.log")
        merged["output"] = output
        tenants.append(_build(_Reader(reader.path, merged, tenant=tenant), name, notify, tenant))
    _check_tenants_apart(reader, tenants, state_dir)
    from batch.clouds import resolve_endpoints

    return Job(
        path=reader.path,
        name=name,
        input_file=None,
        folder=None,
        globs=DEFAULT_GLOBS,
        settle_seconds=DEFAULT_SETTLE_SECONDS,
        input_fields={},
        columns=None,
        run_fields={},
        endpoints=resolve_endpoints(),
        credentials=Credentials(),
        output_root=root,
        archive=None,
        state_dir=state_dir,
        log_file=log_file,
        notify=notify,
        tenants=tuple(tenants),
        parallel_tenants=parallel,
    )


def _check_tenants_apart(reader: _Reader, tenants: list[Job], job_state: Path) -> None:
    """Tenants must not share what one of them changes: state, run folders, an archived input."""
    for i, one in enumerate(tenants):
        for other in tenants[i + 1 :]:
            if one.state_dir == other.state_dir or one.state_dir == job_state:
                raise reader.error(
                    "[output] state_dir",
                    f"tenants {one.tenant} and {other.tenant} would share {one.state_dir}",
                )
            same_input = (one.folder or one.input_file) == (other.folder or other.input_file)
            if same_input and (one.archive or other.archive):
                raise reader.error(
                    "[input]",
                    f"tenants {one.tenant} and {other.tenant} read the same "
                    f"{'folder' if one.folder else 'file'} and [output] archive moves what is "
                    "processed: give each tenant its own input ([tenants.input]) or no archive",
                )


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
                str(reader.path_of(text)) if key in _LITERAL_PATHS else text
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
        managed_identity=reader.convert(
            "[credentials] managed_identity", table.get("managed_identity", False), bool
        ),
        managed_identity_client_id=(
            reader.text(
                "[credentials] managed_identity_client_id", table["managed_identity_client_id"]
            )
            if "managed_identity_client_id" in table
            else None
        ),
        azure_cli=reader.convert("[credentials] azure_cli", table.get("azure_cli", False), bool),
        declared=True,
    )
