"""Running a suite's experiments: two backends (this machine, Slurm) behind one call.

    from perl_cli.scheduler import RunOptions, run_suite
    code = run_suite(RunOptions(suite="demo", experiments=exps, output=Path("output")))

`run_suite` returns the exit code (0 all completed, 1 some failed, 130 interrupted) and
raises `RunError` (a ConfigError: exit 2) when it refuses to start. session.py is the run
session both backends share (lock, hand-off, plan, run_status.json, exit code, summary);
local.py (worker processes here) and slurm_backend.py (array tasks) are its backends, behind
jobs.Backend. The module map is in docs/architecture.md. What an ending means:
perl_cli/outcomes.py.
"""

from perl_cli.scheduler.aggregate import build_run_status, write_run_status
from perl_cli.scheduler.cancel import cancel_suite
from perl_cli.scheduler.jobs import (
    DEFAULT_STALL_TIMEOUT_S,
    DEFAULT_WORKER_CMD,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    RunError,
    RunOptions,
)
from perl_cli.scheduler.session import run_suite
from perl_cli.scheduler.slurm import SlurmOptions
from perl_cli.scheduler.slurm import options_from as slurm_options
from perl_cli.state import RUNTIME_KEY

BACKENDS = ("local", "slurm")

__all__ = [
    "BACKENDS",
    "DEFAULT_STALL_TIMEOUT_S",
    "DEFAULT_WORKER_CMD",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "RUNTIME_KEY",
    "RunError",
    "RunOptions",
    "SlurmOptions",
    "cancel_suite",
    "slurm_options",
    "build_run_status",
    "run_suite",
    "write_run_status",
]
