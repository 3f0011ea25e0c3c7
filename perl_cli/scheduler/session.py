"""The local backend: run a suite's experiments on this machine's GPUs (or its CPU).

One worker subprocess per experiment, in its own session and process group, with
stdout+stderr appended to `train.log`. The scheduler

- decides what to run from the experiment directories, read through the read model
  (perl_cli.experiments_view): completed with the same fingerprint is skipped; completed
  with the `--set` overrides recorded in its config.json is skipped by a run without
  `--set` when those overrides still resolve to its fingerprint (it is complete under
  them); completed with other settings is `stale`, and an `unreadable` one (malformed
  status.json or config.json) is never redone on a guess: both are refused without
  `--fresh`; interrupted/failed/pending are (re)started and resume from their last
  checkpoint,
- adopts workers left running by a scheduler that was killed (pid + process start
  time, and a scan of the process table for workers on the suite's directories), so
  there are never two workers on one experiment directory,
- places each job on a GPU with a free slot whose free memory, minus what jobs started
  within the settle period have reserved, fits the job's estimate (memory.py),
- reaps workers as soon as they exit (SIGCHLD wakes the loop), records a final state
  when the worker did not, retries CUDA out-of-memory failures with half the batch and
  twice the accumulation, and
- on Ctrl+C/SIGTERM stops launching, SIGTERMs every worker's process group, waits a
  grace period for checkpoints, SIGKILLs the rest, and exits 130.

Writing rules (perl_cli/state.py): the scheduler writes an experiment's status.json before it
launches a worker and after it has reaped one; the worker writes it in between.
`run_status.json` is derived from the experiment directories and rewritten atomically.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perl_cli import outcomes, state
from perl_cli.config import ConfigError, ConfigFile, Experiment, matching
from perl_cli.experiments_view import OVERRIDES_KEY, Expectations, read_records
from perl_cli.logtail import tail_bytes
from perl_cli.scheduler import endings, handoff, jobkinds, planning, requests
from perl_cli.scheduler import gpus as gpulib
from perl_cli.scheduler.aggregate import write_run_status
from perl_cli.scheduler.handles import AdoptedHandle, ChildHandle
from perl_cli.scheduler.lock import LockHeld, RunLock
from perl_cli.scheduler.lock import holder as lock_holder
from perl_cli.scheduler.memory import CPU_MAX_PARAMS, estimate_mb, too_big_for_cpu
from perl_cli.scheduler.processes import find_live_workers, kill_leftover_group
from perl_cli.scheduler.progress import PlainReporter, RichReporter, make_reporter, read_progress
from perl_cli.scheduler.slots import Placed, choose_slot
from perl_cli.scheduler.slurm import SlurmBackend, SlurmOptions, slurm_tasks_in_flight
from perl_cli.ui import human_bytes, human_seconds

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130  # perl run's own exit codes
DEFAULT_WORKER_CMD: tuple[str, ...] = (sys.executable, "-m", "perl_cli.train")
POLL_S = 0.25  # loop wake-up when no child exits: adopted workers, progress, deadlines
PROGRESS_EVERY_S = 1.0
AGGREGATE_EVERY_S = 10.0  # progress-only refresh; events refresh it within AGGREGATE_EVENT_S
AGGREGATE_EVENT_S = 0.5
INVENTORY_EVERY_S = 1.0
LOG_TAIL_BYTES = 65536
# A worker whose heartbeat (every 5 s, from a thread) is older than this is frozen
# (SIGSTOP, a hung collective, a dead NFS mount): killed, recorded `stalled`, retried.
# 600 s = 120 missed heartbeats, the same threshold at which `perl status` flags it.
DEFAULT_STALL_TIMEOUT_S = 600.0
STALL_CHECK_EVERY_S = 1.0
DISK_LOW_BYTES = 16 * 1024 * 1024  # a failure with less free than this is blamed on the disk
HANDOVER_ATTEMPTS = 3  # a holder that ends before taking the hand-off: take the lock and run it ourselves
HANDOVER_FIND_S = 10.0  # a run that holds the lock writes run_status.json within a tick; wait that long for it


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


def run_suite(opts: RunOptions) -> int:
    """Run (or, with dry_run, describe) the chosen experiments; the exit code (0/1/130).

    Raises RunError (a ConfigError) when it refuses to start: exit 2.
    """
    return LocalRunner(opts).run()


# --- the suite's directories ------------------------------------------------------


def _old_dir_name(exp_dir: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = exp_dir.with_name(f"{exp_dir.name}{state.OLD_DIR_MARK}{stamp}")
    n = 2
    while target.exists():
        target = exp_dir.with_name(f"{exp_dir.name}{state.OLD_DIR_MARK}{stamp}-{n}")
        n += 1
    return target


def _log_tail_since_launch(exp_dir: Path) -> str:
    """The end of train.log from the scheduler's last launch mark on (this attempt only)."""
    text = tail_bytes(exp_dir / state.LOG_FILE, LOG_TAIL_BYTES).decode("utf-8", "replace")
    mark = text.rfind(state.LOG_MARK)
    return text[mark:] if mark >= 0 else text




# --- the scheduler ------------------------------------------------------------------


class LocalRunner:
    def __init__(self, opts: RunOptions) -> None:
        self.opts = opts
        self.suite_dir = Path(opts.output).resolve() / opts.suite
        self.all_experiments = opts.suite_experiments or opts.experiments
        self.environ = dict(os.environ if opts.environ is None else opts.environ)
        self.inventory: gpulib.Inventory | None = None
        self.gpus: dict[int, gpulib.GPU] = {}
        self.queue: deque[Job] = deque()
        self.running: dict[str, Job] = {}
        self.results: dict[str, str] = {}
        self.skipped: list[str] = []
        self.watched: list[tuple[Job, str]] = []  # (job, Slurm task id) already queued or running in Slurm
        self.kept: dict[tuple[str, ...], list[str]] = {}  # completed under other --set overrides, by overrides
        self.run_names: list[str] = []
        self.run_experiments: dict[str, Experiment] = {}  # what this run covers, handed-over ones included
        self.expectations = Expectations(opts.config_file, opts.suite) if opts.config_file is not None else None
        self.stop_requests = 0
        self.stopping = False
        self.kill_deadline = 0.0
        self.reporter: PlainReporter | RichReporter | None = None
        self.started = state.now()
        self._wake_r: int | None = None
        self._last_inventory = 0.0
        self._last_aggregate = 0.0
        self._last_progress = 0.0
        self._aggregate_dirty = False
        self._said_waiting = False
        self._last_stall_check = 0.0
        self.disk_full: str | None = None  # what could not be written, once the disk is full

    # -- setup ------------------------------------------------------------------

    def run(self) -> int:
        self._load_gpus()
        if self.opts.dry_run:
            return self._dry_run()
        self._check_output()
        lock = RunLock(self.suite_dir)
        for attempt in range(HANDOVER_ATTEMPTS):
            try:
                lock.acquire()
                break
            except LockHeld as exc:
                if self.opts.slurm is not None or self.opts.kind != jobkinds.TRAIN or attempt == HANDOVER_ATTEMPTS - 1:
                    raise RunError(str(exc)) from None
                code = self._hand_over(exc)
                if code is not None:
                    return code
                # The run ended before it took the request (nothing was done): run them ourselves.
        try:
            with self._signals():
                return self._run_locked()
        finally:
            lock.release()
            if self.inventory is not None:
                self.inventory.close()

    def _check_output(self) -> None:
        """Exit-2 errors up front for an output we cannot use (never a traceback mid-run)."""
        out = Path(self.opts.output)
        try:
            self.suite_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"cannot create the suite's output directory {self.suite_dir}: {exc.strerror or exc}. "
                           f"Choose another --output (now {out}) or fix its permissions.") from None
        if not os.access(self.suite_dir, os.W_OK | os.X_OK):
            raise RunError(f"cannot write in {self.suite_dir} (read-only, or not yours). Choose another --output "
                           f"(now {out}) or fix its permissions.")
        run_status = self.suite_dir / state.RUN_STATUS_FILE
        if os.path.lexists(run_status) and (run_status.is_symlink() or not run_status.is_file()):
            raise RunError(f"{run_status} is not a regular file: remove it (perl rebuilds it from the experiment "
                           "directories).")
        try:
            requests.check_spool(self.suite_dir)
        except requests.SpoolError as exc:
            raise RunError(str(exc)) from None

    def _hand_over(self, held: LockHeld) -> int | None:
        """Another local `perl run` holds the suite: hand it the chosen experiments and print its answer.

        None when it ended without taking them (the caller then runs them itself).
        """
        deadline = time.monotonic() + HANDOVER_FIND_S
        scheduler = handoff.running_scheduler(self.suite_dir)
        while scheduler is None and lock_holder(self.suite_dir) and time.monotonic() < deadline:
            time.sleep(0.1)  # it holds the lock but has not written run_status.json yet
            scheduler = handoff.running_scheduler(self.suite_dir)
        if scheduler is None:
            if lock_holder(self.suite_dir) is None:
                return None
            raise RunError(str(held))
        problems = handoff.conflicts(scheduler, overrides=tuple(self.opts.overrides), fresh=self.opts.fresh,
                                     explicit=self.opts.explicit)
        if problems:
            raise RunError(
                f"suite '{self.opts.suite}' is being run by `perl run` (pid {scheduler['pid']}), which can take "
                f"more experiments, but not these as asked: {'; '.join(problems)}. Leave those out to hand the "
                f"experiments to it, or wait for it to end (or stop it with `perl cancel {self.opts.suite}`)."
            )
        try:
            reply = handoff.hand_over(self.suite_dir, self.opts.suite, self.opts.experiments, scheduler,
                                      overrides=tuple(self.opts.overrides))
        except requests.SpoolError as exc:
            raise RunError(str(exc)) from None
        if reply is None:
            return None
        out, err = handoff.describe(reply, scheduler["pid"], self.opts.suite)
        for line in out:
            print(line)
        for line in err:
            print(f"perl: error: {line}", file=sys.stderr)
        return reply.exit_code

    # -- requests from other commands (requests.py) -----------------------------------------

    def _serve_requests(self) -> None:
        """Answer the hand-off and cancel requests waiting in the suite's spool."""
        handlers = requests.Handlers(add=self._take_handed, cancel=self._cancel_named, overrides=tuple(self.opts.overrides))
        if requests.serve(self.suite_dir, self.opts.suite, handlers):
            self._aggregate_dirty = True

    def _take_handed(self, handed: list[Experiment]) -> list[requests.Result]:
        """Experiments handed over by a second `perl run`: planned as our own, queued, each answered."""
        assert self.reporter is not None
        results: list[requests.Result] = []
        candidates = []
        for exp in handed:
            queued = next((j for j in self.queue if j.name == exp.name), None)
            if exp.name in self.running:
                results.append(requests.Result(exp.name, requests.RUNNING, f"pid {self.running[exp.name].pid}"))
            elif queued is not None:
                results.append(requests.Result(exp.name, requests.WAITING))
            elif self.stopping:
                results.append(requests.Result.refused(exp.name, "the run is stopping (Ctrl+C or `perl cancel`); run "
                                                       f"`perl run {self.opts.suite}` again once it has ended", code=1))
            elif self.disk_full:
                results.append(requests.Result.refused(exp.name, f"the disk is full ({self.disk_full}); the run launches "
                                                       "nothing more", code=1))
            else:
                candidates.append(exp)
        if not candidates:
            return results
        jobs, refusals = self._classify(find_live_workers(self.suite_dir), candidates, fresh=False)
        results += [requests.Result.refused(name, reason) for name, reason in refusals]
        for name, reason in refusals:
            self.reporter.info(f"not added: {name}: {reason}")
        planned = {j.name for j in jobs} | {n for n, _ in refusals}
        results += [requests.Result(e.name, requests.SKIPPED) for e in candidates if e.name not in planned]
        for job in jobs:
            before = self.results.pop(job.name, None)
            self.run_experiments[job.name] = job.exp
            self.all_experiments = [e for e in self.all_experiments if e.name != job.name] + [job.exp]
            if job.name not in self.run_names:
                self.run_names.append(job.name)
            if job.action == "adopt":
                self._adopt(job)
                results.append(requests.Result(job.name, requests.RUNNING, f"adopted: pid {job.pid}, left by an earlier run"))
                continue
            self.queue.append(job)
            again = f"it had {'failed' if before == state.FAILED else 'been ' + before} in this run; " if before else ""
            results.append(requests.Result(job.name, requests.QUEUED, again + (
                "resumes from its last checkpoint" if state.last_checkpoint(job.dir) else "starts from the beginning")))
        self.reporter.grow(len(jobs))
        if jobs:
            self.reporter.info(f"added {len(jobs)} experiment(s) handed over by another `perl run`: "
                               f"{', '.join(j.name for j in jobs)}")
        return results

    def _cancel_named(self, patterns: list[str]) -> list[requests.Result]:
        """`perl cancel --only A,B` while we run: queued ones leave the queue, running ones save a checkpoint
        and exit (`interrupted`, no retry); anything else is answered with what it is."""
        assert self.reporter is not None
        known = list(dict.fromkeys([*self.running, *(j.name for j in self.queue), *self.run_names,
                                    *state.experiment_dirs(self.suite_dir)]))
        unknown = [p for p in patterns if not matching(known, p)]
        if unknown:  # a usage error, as in the readers' --only: nothing is cancelled
            return [requests.Result.refused(p, f"no experiment of suite {self.opts.suite} is named or matches it")
                    for p in unknown]
        results: list[requests.Result] = []
        names = list(dict.fromkeys(n for p in patterns for n in matching(known, p)))
        for name in names:
            job = next((j for j in self.queue if j.name == name), None)
            if job is not None:
                self.queue.remove(job)
                self.results[name] = state.INTERRUPTED
                self.reporter.finished(name, state.INTERRUPTED, "cancelled by perl cancel before it started")
                results.append(requests.Result(name, requests.CANCELLED, "it was queued and had not started"))
                continue
            job = self.running.get(name)
            if job is not None:
                if job.stop_sent or job.handle is None:
                    results.append(requests.Result(name, requests.CANCELLED, "it was already stopping"))
                    continue
                job.stop_sent = True
                job.kill_at = time.monotonic() + self.opts.grace_seconds
                job.handle.terminate()
                self.reporter.info(f"{name}: cancelled by perl cancel; asked it to save a checkpoint and exit")
                results.append(requests.Result(name, requests.CANCELLED, "it was running: it saves a checkpoint and exits"))
                continue
            now = state.effective_state(state.read_status(self.suite_dir / name))
            results.append(requests.Result(name, requests.ENDED, f"it is {now}: nothing to cancel"))
        self._aggregate_dirty = True
        return results

    def _load_gpus(self) -> None:
        try:
            self.inventory = gpulib.load_inventory(self.environ)
        except gpulib.GPUInventoryError as exc:
            raise RunError(str(exc)) from None
        available = self.inventory.by_index()
        if self.opts.cpu:
            if self.opts.gpus is not None:
                raise RunError("--cpu and --gpus contradict each other: leave out one of them.")
            self.gpus = {}
            self.inventory.reason = "--cpu"
            return
        if self.opts.gpus is not None:
            if not available:
                raise RunError(
                    f"--gpus {','.join(map(str, self.opts.gpus))}: this machine has no GPU "
                    f"({self.inventory.reason}). Leave out --gpus to run on the CPU."
                )
            unknown = [i for i in self.opts.gpus if i not in available]
            if unknown:
                raise RunError(
                    f"--gpus: no GPU with index {', '.join(map(str, unknown))}. "
                    f"This machine has: {', '.join(map(str, sorted(available)))}."
                )
            self.gpus = {i: available[i] for i in self.opts.gpus}
        else:
            self.gpus = available

    @property
    def cpu_mode(self) -> bool:
        return not self.gpus

    def _capacity(self) -> int:
        if self.cpu_mode:
            return max(1, self.opts.jobs or 1)
        slots = len(self.gpus) * self.opts.jobs_per_gpu
        return min(slots, self.opts.jobs) if self.opts.jobs else slots

    def _threads_per_job(self) -> str:
        return str(max(1, (os.cpu_count() or 1) // self._capacity()))

    def _command(self, job: Job) -> list[str]:
        return jobkinds.command(job.kind, job.dir, self.opts.worker_cmd, self.opts.eval_worker_cmd)

    def _env_overrides(self, gpu: int | None) -> dict[str, str]:
        env = {
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "CUDA_VISIBLE_DEVICES": "" if gpu is None else str(gpu),
            "PERL_GPU": "cpu" if gpu is None else str(gpu),
        }
        env["OMP_NUM_THREADS"] = self.environ.get("OMP_NUM_THREADS") or self._threads_per_job()
        return env

    # -- deciding what to run -------------------------------------------------------

    def _classify(self, live: dict[Path, tuple[int, float | None]], experiments: list[Experiment] | None = None,
                  *, fresh: bool | None = None) -> tuple[list[Job], list[tuple[str, str]]]:
        """Jobs to start or adopt, and the refusals as (name, reason): planning.decide per experiment."""
        jobs: list[Job] = []
        refusals: list[tuple[str, str]] = []
        asked = tuple(self.opts.overrides)
        experiments = self.opts.experiments if experiments is None else experiments
        in_slurm = slurm_tasks_in_flight(self.suite_dir, [e.name for e in experiments])
        for exp in experiments:
            exp_dir = self.suite_dir / exp.name
            facts, running = self._facts(exp, exp_dir, live, in_slurm.get(exp.name), asked)
            decision = planning.decide(facts, fresh=self.opts.fresh if fresh is None else fresh, asked=asked,
                                       slurm=self.opts.slurm is not None)
            job = Job(exp, exp_dir, estimate_mb(exp.config), action=decision.action, runtime=decision.runtime,
                      tries_left=self.opts.retries)
            if decision.action == planning.REFUSE:
                refusals.append((exp.name, decision.reason))
            elif decision.action == planning.SKIP:
                self.skipped.append(exp.name)
            elif decision.action == planning.KEEP:
                self.kept.setdefault(facts.overrides, []).append(exp.name)
            elif decision.action == planning.WATCH:
                assert facts.slurm_task is not None
                self.watched.append((job, facts.slurm_task))  # submitted by an earlier run: never twice
            else:
                if running is not None:  # adopted, or stopped first by --fresh
                    (job.pid, job.pid_start_time), job.gpu = running
                jobs.append(job)
        return jobs, refusals

    def _facts(self, exp: Experiment, exp_dir: Path, live: dict[Path, tuple[int, float | None]],
               slurm_task: str | None, asked: tuple[str, ...]) -> tuple[planning.Facts, tuple[tuple[int, float | None], int | None] | None]:
        """What the directory, the process table and Slurm say about one experiment (all the I/O of planning).

        Also returns its live worker, if any: ((pid, start time), gpu).
        """
        records = read_records(exp_dir)
        if records.problem:
            worker = live.get(exp_dir)
            return planning.Facts(exp.fingerprint, state.UNREADABLE, exists=True, problem=records.problem,
                                  live_pid=worker[0] if worker else None), ((worker, None) if worker else None)
        status, here = records.status, state.hostname()
        worker: tuple[int, float | None] | None = None
        if status.get("host") in (None, here) and state.process_alive(status.get("pid"), status.get("pid_start_time")):
            worker = (status["pid"], status.get("pid_start_time"))
        elif exp_dir in live:
            worker = live[exp_dir]
        other_host = None
        if status.get("state") == state.RUNNING and status.get("host") not in (None, here) and not state.is_stalled(status):
            other_host = f"{status['host']} (pid {status.get('pid')})"
        current = state.effective_state(status, exp.fingerprint)
        runtime = records.config.get(state.RUNTIME_KEY)
        facts = planning.Facts(
            exp.fingerprint, current, exists=exp_dir.exists(), recorded_fingerprint=records.fingerprint,
            overrides=records.overrides, runtime=runtime if isinstance(runtime, dict) else None,
            has_checkpoint=state.last_checkpoint(exp_dir) is not None, live_pid=worker[0] if worker else None,
            other_host=other_host, slurm_task=slurm_task,
            complete_under_own_overrides=current == state.STALE and self._complete_under_own_overrides(
                exp.name, records.overrides, records.fingerprint, asked),
        )
        gpu = status.get("gpu") if isinstance(status.get("gpu"), int) and not isinstance(status.get("gpu"), bool) else None
        return facts, ((worker, gpu) if worker else None)

    def _complete_under_own_overrides(self, name: str, ran_with: tuple[str, ...], fingerprint: str | None, asked: tuple[str, ...]) -> bool:
        """A run without --set keeps an experiment completed with --set whose overrides still resolve to what ran."""
        if asked or not ran_with or self.expectations is None:
            return False
        return self.expectations.fingerprint(name, ran_with) == fingerprint

    def _refusal_message(self, refusals: list[tuple[str, str]]) -> str:
        by_reason: dict[str, list[str]] = {}
        for name, reason in refusals:
            by_reason.setdefault(reason, []).append(name)
        suite = self.opts.suite
        lines = [f"suite '{suite}': {len(refusals)} of the chosen experiments cannot be run as asked:"]
        lines += [f"  {len(names)} {reason}: {_some(names)}" for reason, names in by_reason.items()]
        in_slurm = [name for name, reason in refusals if reason.startswith(planning.IN_SLURM)]
        if in_slurm:  # --fresh is refused the same way: only cancelling the tasks lifts it
            lines.append(f"Slurm still has tasks for {_some(in_slurm)}: `perl cancel {suite} --only "
                         f"{','.join(in_slurm)}` first (they resume from their checkpoints when run again).")
            refusals = [(name, reason) for name, reason in refusals if name not in in_slurm]
            if not refusals:
                return "\n".join(lines)
        names = [name for name, _ in refusals]
        only = "" if set(names) == {e.name for e in self.all_experiments} else f" --only {','.join(names)}"
        sets = "".join(f" --set {shlex.quote(o)}" for o in self.opts.overrides)
        if self.opts.slurm is not None:  # the same backend and options, or it would run here
            sets += " " + shlex.join(self.opts.slurm.rerun_args())
        lines.append(
            f"To start them over with this command's settings: `perl run {suite}{only}{sets} --fresh` (the old "
            f"directories are kept as <name>{state.OLD_DIR_MARK}<timestamp>). To keep them, leave them out with "
            "--exclude, or repeat the --set they ran with."
        )
        return "\n".join(lines)

    def _check_fit(self, jobs: list[Job]) -> None:
        """Refuse up front a job that no chosen GPU could ever hold, or a large model on a CPU unasked."""
        if self.cpu_mode:
            big = too_big_for_cpu([j.exp for j in jobs if j.action != "adopt"])
            if big and not self.opts.cpu:
                raise RunError(
                    f"no GPU ({self.inventory.reason if self.inventory else 'none found'}), and {len(big)} experiment(s) "
                    f"use a model of more than {CPU_MAX_PARAMS / 1e9:g}B parameters, far too slow to train on a CPU: "
                    f"{', '.join(big[:5])}{' ...' if len(big) > 5 else ''}. Run on a GPU machine (or with "
                    "--backend slurm), try the `demo` suite, or pass --cpu to run them on the CPU anyway."
                )
            return
        assert self.inventory is not None

        def capacity(g: gpulib.GPU) -> int:  # inline fake GPUs never free their "used" memory
            return g.memory_free_mb if self.inventory.static else g.memory_total_mb

        best = max(capacity(g) for g in self.gpus.values())
        too_big = [j for j in jobs if j.action != "adopt" and j.estimate_mb > best]
        if too_big:
            listed = ", ".join(f"{j.name} ({j.estimate_mb:,} MB)" for j in too_big)
            raise RunError(
                f"{len(too_big)} experiment(s) can never fit on the chosen GPUs (largest: {best:,} MB): {listed}. "
                "Lower the memory need (e.g. --set training.per_device_train_batch_size=N, or "
                "training.gradient_checkpointing=true), choose bigger GPUs with --gpus, or, if the estimate "
                "is wrong, set resources.memory_mb for the suite (see perl_cli/scheduler/memory.py)."
            )

    # -- the run ------------------------------------------------------------------------

    def _run_locked(self) -> int:
        requests.sweep(self.suite_dir)  # what an ended run took and never answered, requests nobody waits for
        live = find_live_workers(self.suite_dir) if self.suite_dir.exists() else {}
        if self.opts.kind == jobkinds.EVAL:
            jobs, refusals = self._classify_eval(live), []
        else:
            jobs, refusals = self._classify(live)
        if refusals:
            self._write_aggregate(force=True)
            raise RunError(self._refusal_message(refusals))
        if self.opts.slurm is not None:
            # The run answers for every experiment asked for (submitted now, in flight or done).
            self.run_experiments = {e.name: e for e in self.opts.experiments}
            return self._run_slurm(jobs)
        self._check_fit(jobs)
        self.run_names = [j.name for j in jobs]
        self.run_experiments = {j.name: j.exp for j in jobs}
        total = len(jobs)
        self.reporter = make_reporter(total, tty=self.opts.tty)
        try:
            self._announce(jobs)
            for job in jobs:
                if job.action == "adopt":
                    self._adopt(job)
                elif self.stop_requests:
                    break
                else:
                    if job.action == "fresh":
                        self._start_fresh(job)
                    self.queue.append(job)
            self._write_aggregate(force=True)
            self._loop()
        finally:
            self._write_aggregate(force=True)
            self.reporter.close()
        if self.disk_full:
            print(
                f"perl: error: the disk is full ({self.disk_full}); stopped launching. `perl diagnose "
                f"{self.opts.suite}` says how much space is needed and where; after freeing it, "
                f"`perl run {self.opts.suite}` resumes.",
                file=sys.stderr,
            )
        code = self._exit_code()
        self._summarize(code)
        return code

    def _summarize(self, code: int) -> None:
        """The end-of-run table, then --notify (run_summary.py); neither changes the exit code."""
        from perl_cli import run_summary
        from perl_cli.ui import console, output_width

        summary = run_summary.build(self.opts.output, self.opts.suite, self.opts.config_file, self.run_names, code,
                                    width=output_width() or 100)
        console().print(summary.renderable)
        if self.opts.notify:
            problem = run_summary.notify(self.opts.notify, summary, exit_code=code, suite=self.opts.suite,
                                         output=self.opts.output)
            if problem:
                print(f"perl: warning: {problem}", file=sys.stderr)

    def _run_slurm(self, jobs: list[Job]) -> int:
        assert self.opts.slurm is not None
        backend = SlurmBackend(self, self.opts.slurm)
        time_limit_s = backend.preflight()  # exit-2 errors (no sbatch, unknown partition) before anything is touched
        local = [j for j in jobs if j.action == "adopt"]
        if local:
            raise RunError(
                "; ".join(f"{j.name} is running here (pid {j.pid})" for j in local) + ". Let it finish (or stop it "
                f"with `perl cancel {self.opts.suite}`) before submitting it to Slurm."
            )
        self.reporter = make_reporter(len(jobs) + len(self.watched), tty=self.opts.tty)
        try:
            parts = [f"{len(jobs)} to submit"]
            if self.skipped:
                parts.append(f"{len(self.skipped)} already completed (skipped)")
            self.reporter.info(f"suite {self.opts.suite} → {self.suite_dir}: " + ", ".join(parts) + ".")
            for job in jobs:
                if job.action == "fresh":
                    self._start_fresh(job)
            return backend.run(jobs, self.watched, time_limit_s)
        finally:
            self.reporter.close()

    def _announce(self, jobs: list[Job]) -> None:
        assert self.reporter is not None and self.inventory is not None
        r = self.reporter
        if self.cpu_mode:
            n = self._capacity()
            r.info(
                f"no GPU ({self.inventory.reason}): running on the CPU, {n} experiment{'s' if n > 1 else ''} "
                f"at a time{'' if self.opts.jobs else ' (--jobs N for more)'}."
            )
        else:
            fake = " (fake, from PERL_FAKE_GPUS)" if self.inventory.fake else ""
            r.info(f"GPUs{fake}: " + ", ".join(f"{i} {g.name} {g.memory_free_mb:,}/{g.memory_total_mb:,} MB free" for i, g in self.gpus.items())
                   + f"; {self.opts.jobs_per_gpu} job(s) per GPU.")
        adopt = sum(j.action == "adopt" for j in jobs)
        evaluating = self.opts.kind == jobkinds.EVAL
        parts = [f"{len(jobs) - adopt} to {'evaluate' if evaluating else 'run'}"]
        if adopt:
            parts.append(f"{adopt} still running from an earlier `perl run` (adopted)")
        if self.skipped:
            parts.append(f"{len(self.skipped)} already {'evaluated' if evaluating else 'completed'} (skipped)")
        r.info(f"suite {self.opts.suite} → {self.suite_dir}: " + ", ".join(parts) + ".")
        for line in self._kept_lines():
            r.info(line)

    def _kept_lines(self) -> list[str]:
        """What happens to experiments completed with --set when this run has none."""
        return [
            f"{len(names)} completed {planning.settings(overrides)} are kept (complete under those settings): {_some(names)}. "
            f"To redo them with the config's own settings, add --fresh (the old directories are kept)."
            for overrides, names in self.kept.items()
        ]

    def _adopt(self, job: Job) -> None:
        job.started_mono = time.monotonic()
        status = state.read_status(job.dir) or {}
        job.started = status.get("started") or state.now()
        job.attempt = status.get("attempt") or 1
        assert job.pid is not None
        job.handle = AdoptedHandle(job.name, job.pid, job.pid_start_time, job.gpu_label)
        self.running[job.name] = job
        assert self.reporter is not None
        self.reporter.started(job.name, job.gpu_label + f", adopted pid {job.pid}", job.attempt)

    def _start_fresh(self, job: Job) -> None:
        """--fresh: stop a live worker on the directory, then keep the old one aside."""
        if job.pid is not None:
            self._stop_stranger(job)
        if job.dir.exists():
            target = _old_dir_name(job.dir)
            job.dir.rename(target)
            assert self.reporter is not None
            self.reporter.info(f"--fresh: kept the previous {job.name} as {target.name}")
        job.pid = job.pid_start_time = None
        job.gpu = None
        job.action = "run"

    def _stop_stranger(self, job: Job) -> None:
        """Terminate a worker that is not our child (left by a killed scheduler)."""
        assert job.pid is not None
        stranger = AdoptedHandle(job.name, job.pid, job.pid_start_time, job.gpu_label)
        stranger.terminate()
        deadline = time.monotonic() + self.opts.grace_seconds
        while stranger.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if stranger.poll() is None:
            stranger.kill()
            while stranger.poll() is None:
                time.sleep(0.05)
        kill_leftover_group(job.pid)
        endings.record(job.dir, outcomes.Ending(None, pid=job.pid, stop_sent=True), keep_final=True,
                       extra={"error": "stopped by perl run --fresh"})

    def _loop(self) -> None:
        while True:
            self._run_until_idle()
            # Last call: a request that came as the last job ended is answered, not left behind.
            try:
                self._serve_requests()
            except OSError as exc:
                if not outcomes.is_disk_full(exc):
                    raise
                self._on_disk_full(exc)
            if not (self.queue or self.running):
                return

    def _run_until_idle(self) -> None:
        while self.queue or self.running:
            if self.stop_requests:
                self._stop_all()
            try:
                self._serve_requests()
                self._kill_overdue()
                self._reap()
                self._check_stalls()
                if not self.stopping and not self.disk_full:
                    self._dispatch()
                if not self.queue and not self.running:
                    break
                self._progress()
                self._write_aggregate()
            except OSError as exc:
                if not outcomes.is_disk_full(exc):
                    raise
                self._on_disk_full(exc)
            self._wait(POLL_S)

    def _wait(self, timeout: float) -> None:
        if self._wake_r is None:
            time.sleep(min(timeout, 0.02))
            return
        with contextlib.suppress(InterruptedError):
            ready, _, _ = select.select([self._wake_r], [], [], timeout)
            if ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)

    # -- placing and launching -------------------------------------------------------------

    def _choose(self, job: Job, running: list[Job], now_mono: float) -> tuple[bool, int | None]:
        """(placed, gpu index or None for CPU): slots.choose_slot over the current inventory."""
        assert self.inventory is not None or self.cpu_mode
        return choose_slot(
            job.estimate_mb, {i: g.memory_free_mb for i, g in self.gpus.items()},
            [Placed(j.gpu, j.estimate_mb, j.started_mono) for j in running],
            capacity=self._capacity(), jobs_per_gpu=self.opts.jobs_per_gpu, now=now_mono,
            settle_s=self.opts.settle_seconds, reserve_always=bool(self.inventory and self.inventory.fake),
        )

    def _dispatch(self) -> None:
        if not self.queue:
            return
        now_mono = time.monotonic()
        if self.inventory is not None and not self.cpu_mode and now_mono - self._last_inventory > INVENTORY_EVERY_S:
            self.inventory.refresh()
            self._last_inventory = now_mono
        waiting: deque[Job] = deque()
        while self.queue:
            job = self.queue.popleft()
            placed, gpu = self._choose(job, list(self.running.values()), now_mono)
            if placed:
                try:
                    self._launch(job, gpu)
                except OSError as exc:
                    if not outcomes.is_disk_full(exc):
                        raise
                    self._launch_failed(job, exc)
                    raise  # the loop stops launching (_on_disk_full)
            else:
                waiting.append(job)
            if len(self.running) >= self._capacity():
                break
        waiting.extend(self.queue)
        self.queue = waiting
        if waiting and not self.running and not self._said_waiting:
            self._said_waiting = True
            best = max((g.memory_free_mb for g in self.gpus.values()), default=0)
            assert self.reporter is not None
            self.reporter.info(
                f"waiting for GPU memory: {waiting[0].name} needs {waiting[0].estimate_mb:,} MB, the most free on "
                f"the chosen GPUs is {best:,} MB (used by other processes); it starts when that frees up."
            )

    def _classify_eval(self, live: dict[Path, tuple[int, float | None]]) -> list[Job]:
        """`perl eval`: an eval job per completed experiment with benchmarks left to do (jobkinds.plan_eval)."""
        plans, skipped, done = jobkinds.plan_eval(self.opts.experiments, self.suite_dir, self.opts.eval_benchmarks, live)
        for name, reason in skipped:
            print(f"not evaluated: {name}: {reason}")
        self.skipped += done
        return [Job(p.exp, self.suite_dir / p.exp.name, estimate_mb(p.exp.config), action="resume", tries_left=0,
                    kind=jobkinds.EVAL, benchmarks=p.specs) for p in plans]

    def _prepare_dir(self, job: Job) -> None:
        """The experiment directory and what its worker reads: config.json (train) or the eval request."""
        if job.kind == jobkinds.EVAL:
            jobkinds.prepare_eval(job.dir, job.benchmarks)  # config.json stays what training ran with
            return
        job.dir.mkdir(parents=True, exist_ok=True)
        config = job.exp.resolved()
        if self.opts.overrides:
            config[OVERRIDES_KEY] = list(self.opts.overrides)
        if job.runtime:
            config[state.RUNTIME_KEY] = dict(job.runtime)
        state.atomic_write_json(job.dir / state.CONFIG_FILE, config)

    def _launch(self, job: Job, gpu: int | None) -> None:
        previous = state.read_status(job.dir) or {}
        same = previous.get("fingerprint") == job.exp.fingerprint
        job.attempt = (previous.get("attempt") or 0) + 1 if same else 1
        job.gpu = gpu
        self._prepare_dir(job)
        job.started = state.now()
        job.started_mono = time.monotonic()
        status = {
            "state": state.RUNNING,
            "fingerprint": job.exp.fingerprint,
            "host": state.hostname(),
            "gpu": "cpu" if gpu is None else gpu,
            "started": job.started,
            "heartbeat": job.started,
            "attempt": job.attempt,
            "pid": None,
            "pid_start_time": None,
            "step": previous.get("step") if same else None,
            "total_steps": job.exp.max_steps,
            "ended": None,
            "exit_code": None,
            "error": None,
            "scheduler_pid": os.getpid(),
            "retries": previous.get("retries", []) if same else [],
            "run_s_before": state.earlier_attempts_s(previous) if same else 0.0,  # the time of every attempt
        }
        state.write_status(job.dir, status)
        cmd = self._command(job)
        env = {**self.environ, **self._env_overrides(gpu)}
        how = {"resume": "resuming from its last checkpoint", "adopt": ""}.get(job.action, "from the start")
        if job.kind == jobkinds.EVAL:
            how = f"evaluating {', '.join(job.benchmarks)}"
        state.append_log_mark(job.dir, f"attempt {job.attempt} on {job.gpu_label} ({how}): {shlex.join(cmd)}")
        with open(job.dir / state.LOG_FILE, "ab") as log:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        job.handle = ChildHandle(job.name, proc, job.gpu_label)
        job.pid = proc.pid
        job.pid_start_time = state.process_start_time(job.pid)
        # The worker sets these too, first thing; both writes carry the same values.
        state.update_status(job.dir, pid=job.pid, pid_start_time=job.pid_start_time)
        job.action = "resume"
        self.running[job.name] = job
        assert self.reporter is not None
        self.reporter.started(job.name, job.gpu_label, job.attempt)
        self._aggregate_dirty = True

    def _launch_failed(self, job: Job, exc: OSError) -> None:
        """A launch cut short by a full disk: a started worker runs on; otherwise record why."""
        if job.handle is not None and job.name not in self.running:
            job.action = "resume"
            self.running[job.name] = job  # it writes its own pid; it is reaped as usual
            assert self.reporter is not None
            self.reporter.started(job.name, job.gpu_label, job.attempt)
            return
        error = f"not started: {type(exc).__name__}: {exc}"
        state.write_status_best_effort(job.dir, state=state.FAILED, cause="disk_full", error=error,
                                       pid=None, ended=state.now())
        self.results[job.name] = state.FAILED
        assert self.reporter is not None
        self.reporter.finished(job.name, state.FAILED, f"on {job.gpu_label}: {error}")

    def _on_disk_full(self, exc: OSError) -> None:
        """Stop launching: the queued experiments stay as they are for the next `perl run`."""
        if self.disk_full is None:
            self.disk_full = f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc)
            assert self.reporter is not None
            self.reporter.info(
                f"disk full: {self.disk_full}. Launching nothing more; {len(self.running)} running "
                f"worker(s) go on, {len(self.queue)} queued experiment(s) are left for the next `perl run`."
            )
        self.queue.clear()

    def _check_stalls(self) -> None:
        """Kill workers whose heartbeat is older than the stall timeout (frozen, not just slow)."""
        now_mono = time.monotonic()
        if now_mono - self._last_stall_check < STALL_CHECK_EVERY_S:
            return
        self._last_stall_check = now_mono
        now = state.now()
        for job in self.running.values():
            if job.stall_killed or job.handle is None or job.stop_sent:
                continue
            status = state.read_status(job.dir) or {}
            beat = status.get("heartbeat")
            beat = beat if isinstance(beat, (int, float)) and not isinstance(beat, bool) else job.started
            if now - max(beat, job.started) > self.opts.stall_timeout:
                job.stall_killed = True
                job.handle.kill()  # SIGTERM stays pending in a stopped process
                message = (f"{job.name}: no heartbeat for {human_seconds(now - beat)} "
                           f"(stall timeout {human_seconds(self.opts.stall_timeout)}): killed")
                state.append_log_mark(job.dir, message)
                assert self.reporter is not None
                self.reporter.info(message)

    # -- reaping --------------------------------------------------------------------------

    def _reap(self) -> None:
        for job in list(self.running.values()):
            assert job.handle is not None
            ending = job.handle.poll()
            if ending is not None:
                self._finish(job, ending.rc)

    def _finish(self, job: Job, rc: int | None) -> None:
        """Record the final state of a worker that has exited (rc None: not our child)."""
        del self.running[job.name]
        ending = outcomes.Ending(rc, pid=job.pid, stop_sent=job.stop_sent, killed=job.killed,
                                 stall_killed=job.stall_killed, stall_timeout=human_seconds(self.opts.stall_timeout))

        def blame_the_disk(fields: dict, status: dict) -> None:
            if fields.get("state", status.get("state")) == state.FAILED:
                full = self._disk_full_evidence(job, fields.get("error") or status.get("error"))
                if full:
                    fields.update(cause=outcomes.CAUSE_DISK_FULL, error=f"{fields.get('error') or status.get('error')} ({full})")

        status = endings.record(job.dir, ending, amend=blame_the_disk)
        if status.get("cause") == outcomes.CAUSE_DISK_FULL and not self.disk_full:
            self._on_disk_full(OSError(errno.ENOSPC, "No space left on device", str(job.dir)))
        final = status.get("state", state.FAILED)
        retry = None
        if not self.stopping and final == state.FAILED:
            retry = outcomes.retry_plan(ending, status, _log_tail_since_launch(job.dir), tries_left=job.tries_left,
                                        training=job.exp.config["training"], runtime=job.runtime)
        assert self.reporter is not None
        duration = human_seconds(status.get("ended", state.now()) - (status.get("started") or job.started))
        if final == state.FAILED:
            detail = f"after {duration} on {job.gpu_label}: {status.get('error') or 'exit ' + str(status.get('exit_code'))}"
        else:
            detail = f"in {duration} on {job.gpu_label}"
        if retry is not None:
            self._schedule_retry(job, status, retry, detail)
        else:
            self.results[job.name] = final
            self.reporter.finished(job.name, final, detail)
        self._aggregate_dirty = True

    def _disk_full_evidence(self, job: Job, error: str | None) -> str | None:
        """Why a failed worker's failure looks like a full disk, or None.

        A worker that ran out of space often cannot even write its traceback, so the
        free space left on its file system counts as evidence too.
        """
        text = f"{error or ''}\n{_log_tail_since_launch(job.dir)}"
        if outcomes.mentions(text, outcomes.DISK_FULL_MARKERS):
            return "the disk is full: No space left on device"
        try:
            free = shutil.disk_usage(job.dir).free
        except OSError:
            return None
        if free < DISK_LOW_BYTES:
            return f"the disk is full: No space left on device, {human_bytes(free)} free at {job.dir}"
        return None

    def _schedule_retry(self, job: Job, status: dict, retry: outcomes.Retry, detail: str) -> None:
        cause, runtime = retry.cause, retry.runtime
        job.tries_left -= 1
        job.runtime = runtime
        job.handle = None
        job.pid = job.pid_start_time = None
        job.stall_killed = job.stop_sent = job.killed = False
        job.kill_at = None
        change = ", ".join(f"{k}={v}" for k, v in runtime.items()) or "same settings"
        record = {"attempt": job.attempt, "cause": cause, "at": state.now(), **runtime}
        state.update_status(job.dir, retries=[*status.get("retries", []), record])
        how = f"with {change} (same effective batch)" if runtime and cause == outcomes.CUDA_OOM_RETRY else "from its last checkpoint"
        message = f"{cause} on attempt {job.attempt} ({detail.split(':', 1)[0]}); retrying {how}"
        state.append_log_mark(job.dir, f"{job.name}: {message}")
        assert self.reporter is not None
        self.reporter.retrying(job.name, message)
        self.queue.appendleft(job)

    # -- stopping --------------------------------------------------------------------------

    def _kill_overdue(self) -> None:
        """Kill cancelled workers that outlived the grace period."""
        now = time.monotonic()
        for job in self.running.values():
            if job.kill_at is not None and now >= job.kill_at and not job.killed and job.handle is not None:
                job.killed = True
                job.handle.kill()

    def _stop_all(self) -> None:
        assert self.reporter is not None
        if not self.stopping:
            self.stopping = True
            self.kill_deadline = time.monotonic() + self.opts.grace_seconds
            self.queue.clear()
            self._aggregate_dirty = True  # readers (and hand-offs) must not see a queue that is gone
            if self.running:
                self.reporter.info(
                    f"stopping: asked {len(self.running)} worker(s) to save a checkpoint and exit "
                    f"(up to {self.opts.grace_seconds:g}s); press Ctrl+C again to kill them now."
                )
            for job in self.running.values():
                job.stop_sent = True
                if job.handle is not None:
                    job.handle.terminate()
        if self.stop_requests >= 2 or time.monotonic() >= self.kill_deadline:
            for job in self.running.values():
                if not job.killed and job.handle is not None:
                    job.killed = True
                    job.handle.kill()

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop_requests += 1

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        old = {s: signal.signal(s, self._on_signal) for s in handled}
        old[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda *_: None)
        self._wake_r = r
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            signal.set_wakeup_fd(old_fd)
            self._wake_r = None
            os.close(r)
            os.close(w)

    # -- reporting ------------------------------------------------------------------------

    def _progress(self) -> None:
        self._progress_of([(j.name, j.gpu_label, j.dir) for j in self.running.values()])

    def _progress_of(self, rows: list[tuple[str, str, Path]]) -> None:
        """Refresh the progress display with (name, where, directory) of what is running."""
        if self.reporter is None or time.monotonic() - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = time.monotonic()
        self.reporter.update([read_progress(name, where, exp_dir) for name, where, exp_dir in rows])

    def _write_aggregate(self, force: bool = False, backend: dict[str, Any] | None = None) -> None:
        """Rewrite run_status.json: at once when forced, soon after an event, else now and then.

        `backend`: the Slurm backend's fields for its `scheduler` object (job ids, partition).
        """
        since = time.monotonic() - self._last_aggregate
        if not force and since < (AGGREGATE_EVENT_S if self._aggregate_dirty else AGGREGATE_EVERY_S):
            return
        self._aggregate_dirty = False
        self._last_aggregate = time.monotonic()
        if not self.suite_dir.exists() and not force:
            return
        scheduler = {
            "backend": "local",
            "pid": os.getpid(),
            "host": state.hostname(),
            "started": self.started,
            "state": "stopping" if self.stopping else ("running" if self.running or self.queue else "idle"),
            "running": sorted(self.running),
            "queued": [j.name for j in self.queue],
            # What this run covers, for readers' progress and ETA (perl_cli.experiments_view.read_run).
            "run": self.run_names,
            OVERRIDES_KEY: list(self.opts.overrides),
            **(backend or {}),
        }
        self.suite_dir.mkdir(parents=True, exist_ok=True)
        try:
            write_run_status(self.opts.suite, self.suite_dir, self.all_experiments, scheduler)
        except OSError as exc:
            if not outcomes.is_disk_full(exc):
                raise
            # Derived data: readers never need it. Stop launching, keep reaping.
            if self.reporter is not None:
                self._on_disk_full(exc)

    def _exit_code(self) -> int:
        if self.stop_requests:
            return EXIT_INTERRUPTED
        if self.disk_full:
            return EXIT_FAILED
        kept = {name for names in self.kept.values() for name in names}  # complete under their own --set
        # Every experiment the run ran, handed-over ones included.
        for name, exp in self.run_experiments.items():
            if name in kept:
                continue
            if state.effective_state(state.read_status(self.suite_dir / name), exp.fingerprint) != state.COMPLETED:
                return EXIT_FAILED
        return EXIT_OK

    # -- dry run ----------------------------------------------------------------------------

    def _dry_run(self) -> int:
        live = find_live_workers(self.suite_dir) if self.suite_dir.exists() else {}
        if self.opts.kind == jobkinds.EVAL:
            jobs, refusals = self._classify_eval(live), []
        else:
            jobs, refusals = self._classify(live)
        out: Callable[[str], None] = print
        if self.opts.slurm is not None:
            for line in SlurmBackend(self, self.opts.slurm).describe(jobs):
                out(line)
            if refusals:
                raise RunError(self._refusal_message(refusals))
            return EXIT_OK
        mode = "CPU" if self.cpu_mode else ("fake GPUs" if self.inventory and self.inventory.fake else "GPUs")
        if self.cpu_mode and self.inventory is not None:
            out(f"no GPU ({self.inventory.reason}): would run on the CPU, {self._capacity()} at a time.")
        simulated: list[Job] = [j for j in jobs if j.action == "adopt"]
        now_mono = time.monotonic()
        for job in simulated:
            job.started_mono = now_mono
        for job in jobs:
            out(f"{job.name}  [{job.action}]  {job.estimate_mb:,} MB estimated")
            out(f"  dir: {job.dir}")
            if job.action == "adopt":
                out(f"  already running: pid {job.pid} on {job.gpu_label}; would wait for it and record its result")
                continue
            placed, gpu = self._choose(job, simulated, now_mono)
            if placed:
                job.gpu, job.started_mono = gpu, now_mono
                simulated.append(job)
                where = f"{'cpu' if gpu is None else f'gpu {gpu}'} ({mode}, starts at once)"
            else:
                where = "waits for a free slot / enough free memory"
            env = self._env_overrides(gpu if placed else None)
            if not placed and not self.cpu_mode:
                env["CUDA_VISIBLE_DEVICES"] = env["PERL_GPU"] = "<chosen when it starts>"
            out(f"  where: {where}")
            out(f"  env: {' '.join(f'{k}={shlex.quote(v)}' for k, v in env.items())}")
            out(f"  command: {shlex.join(self._command(job))}")
            if job.runtime:
                out(f"  runtime overrides: {job.runtime}")
        out(
            f"dry run: {sum(j.action != 'adopt' for j in jobs)} to run, {sum(j.action == 'adopt' for j in jobs)} "
            f"running (adopt), {len(self.skipped) + sum(map(len, self.kept.values()))} completed (skip), "
            f"{len(refusals)} refused; nothing was started."
        )
        for line in self._kept_lines():
            out(line)
        if refusals:
            raise RunError(self._refusal_message(refusals))
        self._check_fit(jobs)
        return EXIT_OK


def _some(names: list[str], most: int = 6) -> str:
    """Names, the first few of a long list only (so that a refusal does not list dozens twice)."""
    shown = ", ".join(names[:most])
    return shown + (f", … and {len(names) - most} more" if len(names) > most else "")
