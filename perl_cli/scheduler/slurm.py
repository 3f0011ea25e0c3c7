"""The Slurm backend: each pending experiment becomes one task of a Slurm job array.

    perl run SUITE --backend slurm [--partition P] [--time 4:00:00] [--gpus-per-job 1] [--wait]

Submission goes through submitit (job arrays; requeue on time limit and preemption).
Each task runs the same worker in the same experiment directory on the shared file
system (perl_cli/scheduler/slurm_task.py), so status, watch, diagnose and report work
unchanged. What to run is decided as for the local backend (completed + same
fingerprint skipped, stale refused, the rest resumed), plus: an experiment whose task
is still queued or running in Slurm is not submitted twice.

At submission each experiment's status.json says `queued` with its Slurm job id
(`slurm.job_id`, "<array>_<task>"); the task turns it `running`, then the worker's
final state. `perl run` returns after submitting (printing the job id and how to
watch); `--wait` follows the tasks like the local backend follows its workers, through
`SlurmTaskHandle`s. Bad options and Slurm's refusals are exit-2 errors before (or
instead of) any submission. See docs/architecture.md, "The Slurm backend".
"""

from __future__ import annotations

import contextlib
import io
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perl_cli import outcomes, state
from perl_cli.scheduler import slurm_cli
from perl_cli.scheduler.handles import SlurmTaskHandle
from perl_cli.scheduler.slurm_cli import SlurmError
from perl_cli.scheduler.slurm_task import SlurmTask

DEFAULT_TIME_S = 24 * 3600  # when neither the user nor the partition says
WAIT_POLL_S = 2.0
SUBMITIT_DIR = ".slurm"  # inside the suite directory: submitit's pickles and logs (hidden from readers)


@dataclass
class SlurmOptions:
    partition: str | None = None
    account: str | None = None
    time: str | None = None  # Slurm's formats; None: the partition's default time, else 24 h
    gpus_per_job: int = 1
    cpus_per_job: int | None = None
    mem: str | None = None
    array_parallelism: int | None = None
    extra: dict[str, str] = field(default_factory=dict)  # --slurm-arg KEY=VALUE: other sbatch options
    wait: bool = False


def options_from(cli: dict[str, Any], defaults: dict[str, Any]) -> SlurmOptions:
    """The command line over the experiments.toml tables; SlurmError (exit 2) on a bad value."""
    merged = {k: v for k, v in defaults.items() if k != "args"}
    merged.update({k: v for k, v in cli.items() if v is not None and k != "slurm_args"})
    try:
        extra = slurm_cli.parse_slurm_args([f"{k}={v}" for k, v in (defaults.get("args") or {}).items()])
    except ValueError as exc:
        raise SlurmError(f"[slurm] args: {exc} is not a valid sbatch option name and value.") from None
    for item in cli.get("slurm_args") or ():
        try:
            extra.update(slurm_cli.parse_slurm_args([item]))
        except ValueError:
            raise SlurmError(f"--slurm-arg {item}: expected KEY=VALUE with an sbatch long option name, "
                             "e.g. --slurm-arg qos=high or --slurm-arg constraint=a100.") from None
    opts = SlurmOptions(**merged, extra=extra)
    if opts.time is not None:
        try:
            slurm_cli.parse_time(str(opts.time))
        except ValueError:
            raise SlurmError(f"--time {opts.time}: not a Slurm time limit. Use MINUTES, HH:MM:SS or "
                             "DAYS-HH:MM:SS, e.g. --time 4:00:00 or --time 2-00:00:00.") from None
    if opts.mem is not None:
        try:
            opts.mem = slurm_cli.check_mem(str(opts.mem))
        except ValueError:
            raise SlurmError(f"--mem {opts.mem}: expected a size such as 32G or 64000M.") from None
    for name, low in (("gpus_per_job", 0), ("cpus_per_job", 1), ("array_parallelism", 1)):
        value = getattr(opts, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise SlurmError(f"--{name.replace('_', '-')} {value}: must be a whole number >= {low}.")
    clash = sorted(set(opts.extra) & {"array", "time", "partition", "account", "gres", "output", "error", "signal"})
    if clash:
        raise SlurmError(f"--slurm-arg {clash[0]}=...: PeRL sets --{clash[0]} itself; use its own option "
                         f"(perl run --help) instead.")
    return opts


def signal_delay_s(time_limit_s: int) -> int:
    """How long before the time limit Slurm warns the task (SIGUSR2): time to save a checkpoint.

    A tenth of the limit, between 30 s (Slurm checks limits about every 30 s) and 120 s.
    """
    return int(min(120, max(30, time_limit_s // 10)))


# sbatch(1), --signal: "the signal may be sent up to 60 seconds earlier than specified".
SIGNAL_EARLY_S = 60


def early_warning_note(time_limit_s: int) -> str | None:
    """What to tell a user whose time limit is so short that the checkpoint warning may come at once."""
    earliest = time_limit_s - signal_delay_s(time_limit_s) - SIGNAL_EARLY_S
    if earliest > 0:
        return None
    return (f"note: with a time limit of {slurm_cli.format_time(time_limit_s)}, Slurm may send the checkpoint "
            f"warning as soon as a task starts (it warns {signal_delay_s(time_limit_s)} s before the limit, "
            f"and up to {SIGNAL_EARLY_S} s earlier than that): each attempt may be stopped and requeued at "
            f"once. Give --time {slurm_cli.format_time(signal_delay_s(time_limit_s) + SIGNAL_EARLY_S + 60)} or more.")


class SlurmBackend:
    """Submits a planned suite to Slurm and, with --wait, follows it to the end."""

    def __init__(self, runner: Any, sopts: SlurmOptions) -> None:
        self.runner = runner  # the planning, locking, reporting and aggregate of perl run (LocalRunner)
        self.sopts = sopts
        self.opts = runner.opts
        self.suite_dir: Path = runner.suite_dir

    # -- checks before anything is submitted ------------------------------------------------

    def time_limit_s(self) -> int:
        if self.sopts.time is not None:
            return slurm_cli.parse_time(str(self.sopts.time))
        args = ["sinfo", "-h", "-o", "%L|%l"] + (["-p", self.sopts.partition] if self.sopts.partition else [])
        for line in slurm_cli.run(args).splitlines():
            for value in line.split("|"):
                with contextlib.suppress(ValueError):
                    return slurm_cli.parse_time(value.strip())
        return DEFAULT_TIME_S

    def preflight(self) -> int:
        """The exit-2 checks before anything is touched; the time limit per task, in seconds."""
        slurm_cli.require("sbatch")
        slurm_cli.require("srun")  # the array's script starts each task with srun
        slurm_cli.check_partition(self.sopts.partition)
        return self.time_limit_s()

    def describe(self, jobs: list[Any]) -> list[str]:
        """What `perl run --backend slurm --dry-run` prints: the tasks and the sbatch options; nothing is asked of Slurm."""
        o = self.sopts
        options = {"partition": o.partition, "account": o.account, "time": o.time or "the partition's default",
                   "gres": f"gpu:{o.gpus_per_job}" if o.gpus_per_job else None, "cpus-per-task": o.cpus_per_job,
                   "mem": o.mem, "array parallelism": o.array_parallelism, **o.extra}
        lines = [f"{job.name}  [{job.action}]  dir: {job.dir}" for job in jobs]
        lines += [f"{job.name}  [already in Slurm: task {task}]" for job, task in self.runner.watched]
        lines.append("sbatch: " + ", ".join(f"{k}={v}" for k, v in options.items() if v is not None))
        lines.append(f"each task runs: {' '.join(self.opts.worker_cmd)} <dir> (requeued up to {self.opts.retries}x "
                     "on time limit or preemption)")
        lines.append(f"dry run: {len(jobs)} to submit as one job array, {len(self.runner.watched)} already in Slurm, "
                     f"{len(self.runner.skipped)} completed (skip); nothing was submitted.")
        return lines

    # -- submitting ------------------------------------------------------------------------

    def executor(self, time_limit_s: int, count: int) -> Any:
        import submitit

        executor = submitit.SlurmExecutor(folder=self.suite_dir / SUBMITIT_DIR / "%j", max_num_timeout=10**6)
        params: dict[str, Any] = {
            "job_name": f"perl-{self.opts.suite}",
            "time": max(1, math.ceil(time_limit_s / 60)),
            "signal_delay_s": signal_delay_s(time_limit_s),
            "stderr_to_stdout": True,
            "array_parallelism": self.sopts.array_parallelism or max(1, count),
            "additional_parameters": dict(self.sopts.extra),
        }
        if self.sopts.partition:
            params["partition"] = self.sopts.partition
        if self.sopts.account:
            params["account"] = self.sopts.account
        if self.sopts.gpus_per_job:
            params["gres"] = f"gpu:{self.sopts.gpus_per_job}"
        if self.sopts.cpus_per_job:
            params["cpus_per_task"] = self.sopts.cpus_per_job
        if self.sopts.mem:
            params["mem"] = self.sopts.mem
        executor.update_parameters(**params)
        return executor

    def submit(self, jobs: list[Any], time_limit_s: int) -> list[str]:
        """One array task per job; returns the task ids ("<array>_<i>"). Statuses say `queued`."""
        from submitit.core.utils import FailedJobError

        previous = {job.name: state.read_status(job.dir) for job in jobs}
        created = [job.dir for job in jobs if not job.dir.exists()]
        for job in jobs:
            self.runner._prepare_dir(job)
            state.update_status(
                job.dir, state=outcomes.QUEUED, fingerprint=job.exp.fingerprint, backend="slurm",
                host=None, pid=None, pid_start_time=None, gpu=None, exit_code=None, signal=None, error=None,
                cause=None, ended=None, started=None, heartbeat=None, total_steps=job.exp.max_steps,
                submitted=state.now(), requeues=[], slurm={"job_id": None},
            )
        executor = self.executor(time_limit_s, len(jobs))
        delay = signal_delay_s(time_limit_s)
        tasks = [SlurmTask(str(job.dir), self.opts.worker_cmd, requeues_left=self.opts.retries,
                           time_limit_s=time_limit_s, signal_delay_s=delay) for job in jobs]
        captured = io.StringIO()
        try:
            with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
                with executor.batch():
                    submitted = [executor.submit(task) for task in tasks]
        except FailedJobError as exc:
            for job in jobs:
                _restore(job.dir, previous[job.name], created=job.dir in created)
            message = str(exc).strip() or captured.getvalue().strip()
            raise SlurmError(f"Slurm rejected the submission: {message}") from None
        ids = [str(s.job_id) for s in submitted]
        for job, job_id in zip(jobs, ids, strict=True):
            status = state.read_status(job.dir) or {}
            slurm = {**(status.get("slurm") or {}), "job_id": job_id, "array_job_id": job_id.split("_")[0]}
            state.update_status(job.dir, slurm=slurm)
        return ids

    # -- the run ---------------------------------------------------------------------------

    def run(self, jobs: list[Any], watched: list[tuple[Any, str]], time_limit_s: int) -> int:
        """Submit `jobs`; `watched` are (job, task id) already queued or running in Slurm."""
        r = self.runner.reporter
        ids = self.submit(jobs, time_limit_s) if jobs else []
        if ids:
            array = ids[0].split("_")[0]
            where = f" on partition {self.sopts.partition}" if self.sopts.partition else ""
            r.info(f"submitted {len(ids)} experiment(s) as Slurm job array {array} (tasks 0-{len(ids) - 1}){where}, "
                   f"time limit {slurm_cli.format_time(time_limit_s)}, {self.sopts.gpus_per_job} GPU(s) each.")
            if note := early_warning_note(time_limit_s):
                r.info(note)
        if watched:
            r.info(f"{len(watched)} already queued or running in Slurm: "
                   + ", ".join(f"{job.name} ({tid})" for job, tid in watched) + ".")
        self.runner._write_aggregate(force=True, backend=self._scheduler_fields(ids))
        if not self.sopts.wait:
            r.info(f"watch: `perl status {self.opts.suite}` (queued/running/completed) or `squeue --me`; "
                   f"stop: `perl cancel {self.opts.suite}`; `perl run {self.opts.suite} --backend slurm` "
                   "later resumes what was cancelled, timed out or preempted.")
            return outcomes.EXIT_OK
        handles = [SlurmTaskHandle(job.name, job.dir, tid) for job, tid in
                   [*zip(jobs, ids, strict=True), *watched]]
        return self._wait(handles)

    def _scheduler_fields(self, ids: list[str]) -> dict[str, Any]:
        return {"backend": "slurm", "job_ids": ids, "partition": self.sopts.partition, "submitted": state.now()}

    def _wait(self, handles: list[SlurmTaskHandle]) -> int:
        r = self.runner.reporter
        pending = {h.name: h for h in handles}
        announced: set[str] = set()
        r.info(f"waiting for {len(pending)} task(s); Ctrl+C stops waiting (the tasks go on; "
               f"`perl cancel {self.opts.suite}` stops them).")
        while pending:
            if self.runner.stop_requests:
                r.info(f"stopped waiting; {len(pending)} task(s) go on in Slurm. `perl status {self.opts.suite}` "
                       "follows them; `perl cancel` stops them.")
                return outcomes.EXIT_SIGINT
            states = slurm_cli.task_states([h.task_id for h in pending.values()])
            for name, handle in list(pending.items()):
                ending = handle.poll(states)
                status = handle.status
                if status.get("state") == state.RUNNING and name not in announced:
                    announced.add(name)
                    r.started(name, handle.where, status.get("attempt") or 1)
                elif status.get("state") == outcomes.QUEUED and name in announced:
                    announced.discard(name)  # requeued: it is announced again when it restarts
                    r.info(f"{name}: {status.get('error') or 'requeued'}")
                if ending is None:
                    continue
                del pending[name]
                final = handle.record_end(ending)
                r.finished(name, final.get("state", state.FAILED), _detail(final))
            self.runner._progress_of([(h.name, h.where, h.dir) for h in pending.values() if h.name in announced])
            self.runner._write_aggregate(backend=self._scheduler_fields([h.task_id for h in handles]))
            self.runner._wait(WAIT_POLL_S)
        return self.runner._exit_code()


def _detail(status: dict) -> str:
    from perl_cli.ui import human_seconds

    requeues = len(status.get("requeues") or [])
    again = f", requeued {requeues}x" if requeues else ""
    took = ""
    if isinstance(status.get("started"), (int, float)) and isinstance(status.get("ended"), (int, float)):
        took = f"in {human_seconds(status['ended'] - status['started'])} "
    where = f"{took}on {status['host']}{again}" if status.get("host") else "before it started"
    if status.get("state") == state.FAILED:
        return f"{where}: {status.get('error') or 'exit ' + str(status.get('exit_code'))}"
    return where


def _restore(exp_dir: Path, previous: dict | None, *, created: bool) -> None:
    """Undo the `queued` mark of a submission Slurm refused (and the directory it created)."""
    if created:
        shutil.rmtree(exp_dir, ignore_errors=True)
    elif previous is None:
        with contextlib.suppress(FileNotFoundError):
            (exp_dir / state.STATUS_FILE).unlink()
    else:
        state.write_status(exp_dir, previous)


def cancel_suite(suite_dir: Path, names: list[str] | None, *, wait_s: float = 30.0, out=print) -> int:
    """`perl cancel` for Slurm tasks: scancel, then mark what never started `interrupted`.

    A running task's worker gets SIGTERM from Slurm, saves a checkpoint and records
    `interrupted` itself; one that has not recorded it after `wait_s` is marked here.
    Returns how many experiments were cancelled.
    """
    targets: dict[str, tuple[Path, str]] = {}
    for name, exp_dir in state.experiment_dirs(suite_dir).items():
        if names is not None and name not in names:
            continue
        status = state.read_status(exp_dir) or {}
        task_id = _task_id(status)
        if task_id and status.get("state") in (outcomes.QUEUED, state.RUNNING):
            targets[name] = (exp_dir, str(task_id))
    if not targets:
        return 0
    states = slurm_cli.task_states(task for _, task in targets.values())
    # Tasks Slurm has already let go of (scancel'ed by hand, a dead node) only need their status recorded.
    active = [t for _, t in targets.values() if states is None or states.get(t) in slurm_cli.ACTIVE_STATES]
    if active:
        slurm_cli.cancel(active)
        out(f"scancel: {len(active)} task(s): " + ", ".join(f"{n} ({t})" for n, (_, t) in sorted(targets.items())
                                                            if t in active))
    handles = [SlurmTaskHandle(name, d, t) for name, (d, t) in targets.items()]
    deadline = time.monotonic() + wait_s
    while handles:
        states = slurm_cli.task_states([h.task_id for h in handles])
        left = []
        for h in handles:
            ending = h.poll(states, cancelled=True)
            if ending is not None:
                h.record_end(ending, cancelled=True)
            elif time.monotonic() < deadline:
                left.append(h)
            else:
                h.record_end(outcomes.Ending(None, stop_sent=True), cancelled=True)
        handles = left
        if handles:
            time.sleep(0.5)
    return len(targets)


def _task_id(status: dict) -> str | None:
    slurm = status.get("slurm")
    task = slurm.get("job_id") if isinstance(slurm, dict) else None
    return str(task) if task else None


def slurm_tasks_in_flight(suite_dir: Path, names: list[str]) -> dict[str, str]:
    """Experiments whose Slurm task is still queued or running: {name: task id}.

    Asks Slurm only when some status.json names a task that has not ended; when Slurm
    cannot be asked, the files are believed (never two workers on one directory).
    """
    candidates: dict[str, str] = {}
    for name in names:
        status = state.read_status(suite_dir / name) or {}
        task = _task_id(status)
        if task and status.get("state") in (outcomes.QUEUED, state.RUNNING):
            candidates[name] = task
    if not candidates:
        return {}
    states = slurm_cli.task_states(candidates.values())
    if states is None:
        return candidates
    return {name: task for name, task in candidates.items() if states.get(task) in slurm_cli.ACTIVE_STATES}


READ_TIMEOUT_S = 3.0  # readers (perl status, watch) wait at most this long for squeue/sacct
# A reader that refreshes (watch every 2 s, status --watch) asks Slurm about the same tasks at
# most this often: the answer (or "unreachable", which costs READ_TIMEOUT_S) is reused.
READ_REUSE_S = 20.0
_read_cache: dict[frozenset[str], tuple[float, dict[str, str] | None]] = {}


def _task_states_for_readers(tasks: frozenset[str]) -> dict[str, str] | None:
    """slurm_cli.task_states for readers, reused for READ_REUSE_S; None when Slurm is unreachable."""
    now = time.monotonic()
    cached = _read_cache.get(tasks)
    if cached is not None and now - cached[0] < READ_REUSE_S:
        return cached[1]
    try:
        states = slurm_cli.task_states(tasks, timeout=READ_TIMEOUT_S)
    except SlurmError:
        states = None
    if len(_read_cache) > 64:  # a long `perl watch` sees the set of tasks change: keep it bounded
        _read_cache.clear()
    _read_cache[tasks] = (now, states)
    return states


def seen_by_slurm(statuses: dict[str, dict]) -> dict[str, str]:
    """For readers: the state to show for experiments whose Slurm task ended without saying so.

    A status.json that says `queued` or `running` for a task Slurm has let go of (cancelled
    while pending, a node that died) would say so forever; when squeue/sacct answer, such
    an experiment is shown `interrupted` (cancelled) or `failed`. Asks Slurm only when some
    status names a task that has not ended, within READ_TIMEOUT_S; unreachable: {} (the
    files alone decide). Never writes: the next `perl run` records it.
    """
    tasks = {name: _task_id(s) for name, s in statuses.items()
             if s.get("state") in (outcomes.QUEUED, state.RUNNING) and _task_id(s)}
    if not tasks:
        return {}
    states = _task_states_for_readers(frozenset(tasks.values()))
    if not states:
        return {}
    shown: dict[str, str] = {}
    for name, task in tasks.items():
        seen = states.get(task)
        if seen is None or seen in slurm_cli.ACTIVE_STATES:
            continue
        shown[name] = state.INTERRUPTED if seen in ("CANCELLED", slurm_cli.GONE) else state.FAILED
    return shown
