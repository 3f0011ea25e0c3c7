"""The words the run session and its backends share: the options of a run, a job, and the two
small interfaces between them (see docs/architecture.md, "The run session and its backends").

    session (session.py)  ──Backend──▶  local.LocalBackend   (worker processes on this machine)
                          ◀──Session──  slurm_backend.SlurmBackend (array tasks through submitit)

`Backend` is what the session asks of a backend; `Session` is what a backend may use of the
session. Neither backend imports the other, nor the session module (no import circle).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from perl_cli.config import ConfigError, ConfigFile, Experiment
from perl_cli.scheduler import jobkinds
from perl_cli.scheduler.handles import AdoptedHandle, ChildHandle
from perl_cli.scheduler.slurm import SlurmOptions

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130  # perl run's own exit codes
DEFAULT_WORKER_CMD: tuple[str, ...] = (sys.executable, "-m", "perl_cli.train")
# A worker whose heartbeat (every 5 s, from a thread) is older than this is frozen
# (SIGSTOP, a hung collective, a dead NFS mount): killed, recorded `stalled`, retried.
# 600 s = 120 missed heartbeats, the same threshold at which `perl status` flags it.
DEFAULT_STALL_TIMEOUT_S = 600.0


class RunError(ConfigError):
    """`perl run` refuses to start; the message says why and what to do (exit 2)."""


@dataclass
class RunOptions:
    suite: str
    experiments: list[Experiment]  # the chosen ones (after --only/--exclude/--set)
    output: Path = Path("output")
    suite_experiments: list[Experiment] | None = None  # the whole suite, for run_status.json
    gpus: list[int] | None = None  # --gpus
    jobs_per_gpu: int = 1
    jobs: int | None = None  # CPU: concurrent jobs (default 1); GPU: a cap on the total
    retries: int = 1
    fresh: bool = False
    dry_run: bool = False
    settle_seconds: float = 60.0
    grace_seconds: float = 30.0
    stall_timeout: float = DEFAULT_STALL_TIMEOUT_S
    cpu: bool = False  # --cpu: run on the CPU (ignoring GPUs), large models included
    worker_cmd: Sequence[str] = DEFAULT_WORKER_CMD
    tty: bool | None = None  # progress bars; None = when stdout is a terminal
    environ: dict[str, str] | None = None  # the workers' base environment (default: ours)
    overrides: tuple[str, ...] = ()  # --set, recorded in each config.json it writes
    config_file: ConfigFile | None = None  # resolves the overrides an experiment ran with
    slurm: SlurmOptions | None = None  # --backend slurm: submit array tasks instead of running workers here
    explicit: frozenset[str] = frozenset()  # the flags given on the command line (a running run keeps its own)
    notify: str | None = None  # --notify: a shell command run with the end-of-run summary
    # `perl eval`: the jobs evaluate completed experiments instead of training (jobkinds.py).
    kind: str = jobkinds.TRAIN
    eval_benchmarks: dict[str, dict[str, Any]] | None = None  # --benchmarks specs; None: each experiment's own
    eval_worker_cmd: Sequence[str] = jobkinds.DEFAULT_EVAL_WORKER_CMD


@dataclass
class Job:
    """One experiment in one `perl run`: what to do with it, and, while it runs, how to reach it."""

    exp: Experiment
    dir: Path
    estimate_mb: int
    action: str = "run"  # run | resume | fresh | adopt
    runtime: dict[str, Any] = field(default_factory=dict)
    tries_left: int = 0
    attempt: int = 0
    handle: ChildHandle | AdoptedHandle | None = None  # while it runs (handles.py)
    pid: int | None = None
    pid_start_time: float | None = None
    gpu: int | None = None  # None = CPU
    started: float = 0.0
    started_mono: float = 0.0
    stop_sent: bool = False
    killed: bool = False
    stall_killed: bool = False  # killed by the scheduler for a heartbeat older than the stall timeout
    kill_at: float | None = None  # monotonic time to SIGKILL a worker cancelled by `perl cancel --only`
    kind: str = jobkinds.TRAIN  # what the worker does: train, or eval (its command and input files)
    benchmarks: dict[str, dict[str, Any]] = field(default_factory=dict)  # eval jobs: the specs to evaluate

    @property
    def name(self) -> str:
        return self.exp.name

    @property
    def gpu_label(self) -> str:
        return "cpu" if self.gpu is None else f"gpu {self.gpu}"


@dataclass
class Activity:
    """What a backend is doing, for run_status.json's `scheduler` section."""

    running: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)
    stopping: bool = False


class Backend(Protocol):
    """What the run session asks of a backend, once it has planned the jobs."""

    def describe(self, jobs: list[Job], *, refused: int) -> list[str]:
        """--dry-run: what would be run where, and how (`refused`: how many the plan refused); nothing
        is started or submitted."""

    def refuse_unfit(self, jobs: list[Job]) -> None:
        """--dry-run: RunError for a job this backend could never run (asks no one)."""

    def run(self, jobs: list[Job]) -> int:
        """Start (submit) the jobs and follow them as asked, recording each ending; the exit code."""

    def activity(self) -> Activity:
        """What runs and waits now (run_status.json)."""

    def stop_launching(self) -> None:
        """The disk is full: launch nothing more (the queued jobs are left for the next `perl run`)."""


class Session(Protocol):
    """What a backend may use of the run session (session.RunSession)."""

    opts: RunOptions
    suite_dir: Path
    reporter: Any  # progress.PlainReporter | progress.RichReporter, once the run has started
    stop_requests: int
    results: dict[str, str]
    skipped: list[str]
    watched: list[tuple[Job, str]]
    run_names: list[str]
    run_experiments: dict[str, Experiment]
    disk_full: str | None
    aggregate_dirty: bool
    all_experiments: list[Experiment]  # the suite, for run_status.json (a hand-off may replace one)
    planner: Any  # planner.Planner: a hand-off is planned like the run's own experiments

    def kept_lines(self) -> list[str]: ...
    def prepare_dir(self, job: Job) -> None: ...
    def start_fresh(self, job: Job) -> None: ...
    def progress_of(self, rows: list[tuple[str, str, Path]]) -> None: ...
    def write_aggregate(self, force: bool = False, backend: dict[str, Any] | None = None) -> None: ...
    def on_disk_full(self, exc: OSError) -> None: ...
    def wait(self, timeout: float) -> None: ...
    def exit_code(self) -> int: ...
    def summarize(self, code: int) -> None: ...
