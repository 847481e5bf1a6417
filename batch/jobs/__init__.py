"""Declarative jobs: `job run JOB.toml` and `job check JOB.toml`, made for cron and systemd timers.

A job file names its input (one file, or a drop folder and glob patterns), every option of `run`,
the cloud, where credentials come from (environment variable *names*, never secrets), an output
root, an archive folder and how to report. A job run:

1. takes the job's lock (`<state dir>/job.lock`, `fcntl.flock` or Windows' `msvcrt.locking`,
   released by the OS when the process dies, so a lock left by a dead process is simply taken
   over); an overlapping start exits at once with `LockHeld` (exit 75);
2. resumes an interrupted file first (its run folder is continued with `--resume`), then processes
   each new input file once, oldest first (modification time, then name), each in its own run
   folder under the output root; files are remembered by content SHA-256 in
   `<state dir>/files.sqlite`, so a file dropped twice, renamed or copied back is not sent again;
   a drop folder gives only regular files really in it: symbolic links, FIFOs, devices, sockets
   and files reached through a linked subfolder are refused by name and never opened (a drop
   folder is often a share others can write to);
3. archives each finished file, logs JSON lines to the job log and prints one summary line.

The exit code summarises the files (`job_exit_code`): 0 all rows fine, 1 some rows failed or were
invalid (or a file could not be read), 3 a file's run aborted (resumable), 130 interrupted
(resumable), 2 the job file or its settings are wrong, 75 another run of the job holds the lock.

A job file with `[[tenants]]` runs each tenant as such a job of its own (own limiter, state,
lock and run folders under `<root>/<tenant>/`), `parallel_tenants` at once, and reports one
roll-up (`tenants`); `[notify] webhook_env` posts it to Teams, Slack or any JSON receiver
(`batch.notify`).

Modules: `spec` (the job file), `lock`, `state` (files seen), `plan` (what to handle next),
`run` (`job run`), `tenants` (many tenants) and `check` (`job check`); every public name is
re-exported here.
"""

from batch.jobs.check import CheckReport, FileCheck, check_job, iter_check_lines
from batch.jobs.lock import JobLock, read_lock
from batch.jobs.plan import candidates
from batch.jobs.run import FileResult, FileStatus, JobReport, job_exit_code, run_job
from batch.jobs.spec import (
    DEFAULT_GLOBS,
    DEFAULT_PARALLEL_TENANTS,
    DEFAULT_SETTLE_SECONDS,
    Credentials,
    Job,
    Notify,
    input_keys,
    load_job,
    run_keys,
)
from batch.jobs.state import FileRecord, JobState, file_digest
from batch.jobs.tenants import RollUp, TenantResult, run_tenants, worst_exit_code

__all__ = [
    "DEFAULT_GLOBS",
    "DEFAULT_PARALLEL_TENANTS",
    "DEFAULT_SETTLE_SECONDS",
    "CheckReport",
    "Credentials",
    "FileCheck",
    "FileRecord",
    "FileResult",
    "FileStatus",
    "Job",
    "JobLock",
    "JobReport",
    "JobState",
    "Notify",
    "RollUp",
    "TenantResult",
    "candidates",
    "check_job",
    "file_digest",
    "input_keys",
    "iter_check_lines",
    "job_exit_code",
    "load_job",
    "read_lock",
    "run_job",
    "run_keys",
    "run_tenants",
    "worst_exit_code",
]
