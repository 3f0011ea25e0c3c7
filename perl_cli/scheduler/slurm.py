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
import shlex
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perl_cli import outcomes, state
from perl_cli.scheduler import endings, slurm_cli
from perl_cli.scheduler.handles import SlurmTaskHandle
from perl_cli.scheduler.slurm_cli import SlurmError
from perl_cli.scheduler.slurm_task import SlurmTask

DEFAULT_TIME_S = 24 * 3600  # when neither the user nor the partition says
WAIT_POLL_S = 2.0
SUBMITIT_DIR = ".slurm"  # inside the suite directory: submitit's pickles and logs (hidden from readers)
# After sbatch timed out (a slow or paused controller may still accept the array), how long
# `perl run` keeps asking Slurm whether it did before it gives up and says it cannot tell.
CONFIRM_S = 60.0
CONFIRM_POLL_S = 2.0


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

    def rerun_args(self) -> list[str]:
        """`perl run` arguments that submit with these options again (recorded in status.json's `slurm.args`,
        so every command PeRL suggests later keeps the backend and the options)."""
        args = ["--backend", "slurm"]
        for flag, value in (("--partition", self.partition), ("--account", self.account), ("--time", self.time),
                            ("--gpus-per-job", None if self.gpus_per_job == 1 else self.gpus_per_job),
                            ("--cpus-per-job", self.cpus_per_job), ("--mem", self.mem),
                            ("--array-parallelism", self.array_parallelism)):
            if value is not None:
                args += [flag, str(value)]
        for key, value in self.extra.items():
            args += ["--slurm-arg", f"{key}={value}"]
        return args


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

        # One flat folder (no per-job "%j" subfolder): Slurm opens each task's --output there when the
        # task starts, and after a timed-out sbatch the task may start before PeRL learns its id and
        # could create a per-job folder (the task then fails at once, WTERMSIG 53).
        executor = submitit.SlurmExecutor(folder=self.suite_dir / SUBMITIT_DIR, max_num_timeout=10**6)
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
        """One array task per job; returns the task ids ("<array>_<i>"). Statuses say `queued`.

        Refused by Slurm, or never sent (the controller is down): the `queued` marks are undone
        and a SlurmError says which. sbatch timed out: Slurm may have accepted the array all the
        same, so it is asked (for CONFIRM_S) before anything is undone (`_confirm`).
        """
        from submitit.core.utils import FailedJobError

        previous = {job.name: state.read_status(job.dir) for job in jobs}
        created = [job.dir for job in jobs if not job.dir.exists()]
        token = f"perl-submission-{uuid.uuid4().hex[:16]}"  # in the array's comment: found again after a timeout
        for index, job in enumerate(jobs):
            self.runner._prepare_dir(job)
            state.update_status(
                job.dir, state=outcomes.QUEUED, fingerprint=job.exp.fingerprint, backend="slurm",
                host=None, pid=None, pid_start_time=None, gpu=None, exit_code=None, signal=None, error=None,
                cause=None, ended=None, started=None, heartbeat=None, total_steps=job.exp.max_steps,
                submitted=state.now(), requeues=[], resumed_from=None,
                run_s_before=state.earlier_attempts_s(previous[job.name] or {}),
                slurm={"job_id": None, "submission": token, "index": index, "args": self.sopts.rerun_args()},
            )
        executor = self.executor(time_limit_s, len(jobs))
        comment = self.sopts.extra.get("comment")
        executor.update_parameters(additional_parameters={**self.sopts.extra,
                                                          "comment": f"{comment} {token}" if comment else token})
        delay = signal_delay_s(time_limit_s)
        tasks = [SlurmTask(str(job.dir), self.opts.worker_cmd, requeues_left=self.opts.retries,
                           time_limit_s=time_limit_s, signal_delay_s=delay) for job in jobs]
        folder = self.suite_dir / SUBMITIT_DIR
        before = set(folder.glob("*")) if folder.is_dir() else set()
        captured = io.StringIO()
        try:
            with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
                with executor.batch():
                    submitted = [executor.submit(task) for task in tasks]
            ids = [str(sub.job_id) for sub in submitted]
        except FailedJobError as exc:
            message = str(exc).strip() or captured.getvalue().strip()
            ids = self._confirm(jobs, token, message, folder, before)
            if ids is None:
                for job in jobs:
                    _restore(job.dir, previous[job.name], created=job.dir in created)
                _remove_new(folder, before)  # the pickles and script of a submission that does not exist
                raise SlurmError(_refusal(message, self.opts.suite)) from None
        for job, job_id in zip(jobs, ids, strict=True):
            status = state.read_status(job.dir) or {}
            slurm = {**(status.get("slurm") or {}), "job_id": job_id, "array_job_id": job_id.split("_")[0]}
            state.update_status(job.dir, slurm=slurm)
        return ids

    def _confirm(self, jobs: list[Any], token: str, message: str, folder: Path, before: set[Path]) -> list[str] | None:
        """After a failed sbatch: the task ids if Slurm accepted the array all the same, None if it did not.

        Raises SlurmError (exit 2), leaving the `queued` marks, when Slurm cannot say: the next
        `perl run` asks about this submission first (`resolve_submissions`), never submitting twice.
        """
        if slurm_cli.unreachable(message) != "unanswered":
            return None  # refused, or never sent: nothing to ask
        r = self.runner.reporter
        if r is not None:
            r.info(f"sbatch got no answer from Slurm ({_last_line(message)}); asking Slurm whether it accepted the "
                   f"array (up to {CONFIRM_S:g} s) before anything is undone.")
        deadline = time.monotonic() + CONFIRM_S
        empty = 0
        while True:
            ids = slurm_cli.find_submission(f"perl-{self.opts.suite}", token, timeout=CONFIRM_POLL_S * 2)
            if ids:
                _place_pickles(folder, before, ids, jobs)
                if r is not None:
                    r.info(f"Slurm did accept it: {_array_text(ids)} (sbatch's answer was lost).")
                return ids
            if ids == []:
                empty += 1
                if empty >= 2:  # asked twice, a poll apart, with the controller answering: it has no such array
                    return None
            if time.monotonic() >= deadline:
                break
            time.sleep(CONFIRM_POLL_S)
        raise SlurmError(
            f"Slurm's controller is unreachable: sbatch got no answer ({_last_line(message)}), and for "
            f"{CONFIRM_S:g} s it could not be asked whether it accepted the array. The experiments stay marked "
            f"`queued` (submission {token}). Check the controller with `scontrol ping`; once it answers, "
            f"`perl run {self.opts.suite} {shlex.join(self.sopts.rerun_args())}` asks Slurm about that submission "
            "first and never submits twice."
        )

    # -- the run ---------------------------------------------------------------------------

    def run(self, jobs: list[Any], watched: list[tuple[Any, str]], time_limit_s: int) -> int:
        """Submit `jobs`; `watched` are (job, task id) already queued or running in Slurm."""
        r = self.runner.reporter
        ids = self.submit(jobs, time_limit_s) if jobs else []
        if ids:
            where = f" on partition {self.sopts.partition}" if self.sopts.partition else ""
            r.info(f"submitted {len(ids)} experiment(s) as {_array_text(ids)}{where}, "
                   f"time limit {slurm_cli.format_time(time_limit_s)}, {self.sopts.gpus_per_job} GPU(s) each.")
            if note := early_warning_note(time_limit_s):
                r.info(note)
        if watched:
            r.info(f"{len(watched)} already queued or running in Slurm: "
                   + ", ".join(f"{job.name} ({tid})" for job, tid in watched) + ".")
        self.runner._write_aggregate(force=True, backend=self._scheduler_fields(ids))
        if not self.sopts.wait:
            r.info(f"watch: `perl status {self.opts.suite}` (queued/running/completed) or `squeue --me`; "
                   f"stop: `perl cancel {self.opts.suite}`; `perl run {self.opts.suite} {shlex.join(self.sopts.rerun_args())}` "
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
        # Every attempt's time: the earlier ones (requeues, resumes) are in run_s_before.
        took = f"in {human_seconds(status['ended'] - status['started'] + (status.get('run_s_before') or 0))} "
    where = f"{took}on {status['host']}{again}" if status.get("host") else "before it started"
    if status.get("state") == state.FAILED:
        return f"{where}: {status.get('error') or 'exit ' + str(status.get('exit_code'))}"
    return where


def _last_line(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _refusal(message: str, suite: str) -> str:
    """What to say when a submission did not happen: refused by Slurm, or its controller unreachable."""
    kind = slurm_cli.unreachable(message)
    if kind is None:
        return f"Slurm refused the submission: {message}"
    what = "sbatch could not reach it" if kind == "not sent" else "sbatch timed out, and Slurm then said it has no such array"
    return (f"Slurm's controller is unreachable ({what}): {_last_line(message)}. Nothing was submitted. Check it with "
            f"`scontrol ping` (or ask the cluster's admins), then run the same `perl run {suite} ...` again.")


def _array_text(ids: list[str]) -> str:
    """How a submission is named to the user: one job, or an array and its task range."""
    if len(ids) == 1:
        return f"Slurm job {ids[0]}"
    return f"Slurm job array {ids[0].split('_')[0]} (tasks 0-{len(ids) - 1})"


def _remove_new(folder: Path, before: set[Path]) -> None:
    """Remove what a submission that does not exist left in .slurm/ (its pickles and sbatch script)."""
    if not folder.is_dir():
        return
    for path in set(folder.glob("*")) - before:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()


def _place_pickles(folder: Path, before: set[Path], ids: list[str], jobs: list[Any]) -> None:
    """Put each task's pickle where its task looks for it, as submitit does after a successful sbatch.

    A timed-out sbatch leaves them as `.slurm/<uuid>.pkl`; each holds a SlurmTask, whose directory
    names its job (the tasks are in the order submitted).
    """
    from submitit.core.utils import DelayedSubmission
    from submitit.slurm.slurm import SlurmJob

    by_dir = {str(job.dir): job_id for job, job_id in zip(jobs, ids, strict=True)}
    for path in sorted(set(folder.glob("*.pkl")) - before):
        try:
            task = DelayedSubmission.load(path).function
        except Exception:  # noqa: BLE001 - not one of ours: leave it
            continue
        job_id = by_dir.get(getattr(task, "exp_dir", ""))
        if job_id is not None:
            SlurmJob(folder=folder, job_id=job_id, tasks=[0]).paths.move_temporary_file(path, "submitted_pickle")
    for script in set(folder.glob(".submission_file_*.sh")) - before:  # sbatch has read it
        with contextlib.suppress(OSError):
            script.unlink()


def _restore(exp_dir: Path, previous: dict | None, *, created: bool) -> None:
    """Undo the `queued` mark of a submission Slurm refused (and the directory it created)."""
    if created:
        shutil.rmtree(exp_dir, ignore_errors=True)
    elif previous is None:
        with contextlib.suppress(FileNotFoundError):
            (exp_dir / state.STATUS_FILE).unlink()
    else:
        state.write_status(exp_dir, previous)


def cancel_suite(suite_dir: Path, names: list[str] | None, *, wait_s: float = 30.0, out=print) -> dict[str, list[str]]:
    """`perl cancel` for Slurm tasks: scancel every task Slurm still has for the suite, whatever the files say.

    A task is the suite's when a status.json names it (whatever its state: a task Slurm
    requeued or holds may be recorded `interrupted` by an older PeRL, or not recorded yet) or
    when it belongs to a submission whose answer was lost. A running worker gets SIGTERM from
    Slurm, saves a checkpoint and records `interrupted` itself; one that has not after `wait_s`,
    and tasks that never started, are marked here. Returns {name: the `perl run` arguments it
    was submitted with} for the experiments cancelled.
    """
    resolve_submissions(suite_dir, names)
    targets: dict[str, tuple[Path, str]] = {}
    for name, exp_dir in state.experiment_dirs(suite_dir).items():
        if names is not None and name not in names:
            continue
        task_id = _task_id(state.read_status(exp_dir) or {})
        if task_id:
            targets[name] = (exp_dir, task_id)
    if not targets:
        return {}
    states = slurm_cli.task_states(task for _, task in targets.values())
    if states is None:
        raise SlurmError("perl cancel: Slurm's controller is unreachable (squeue and sacct did not answer), so PeRL "
                         "cannot tell which tasks it still has; nothing was cancelled. Check it with `scontrol ping`, "
                         "then cancel again (or `scancel --name perl-" + suite_dir.name + "`).")
    live = {name: (d, t) for name, (d, t) in targets.items() if states.get(t) in slurm_cli.ACTIVE_STATES}
    # Tasks that Slurm let go of while the file says queued/running only need their end recorded.
    unrecorded = {name: (d, t) for name, (d, t) in targets.items() if name not in live
                  and (state.read_status(d) or {}).get("state") in (outcomes.QUEUED, state.RUNNING)}
    if live:
        slurm_cli.cancel(t for _, t in live.values())
        out(f"scancel: {len(live)} task(s): " + ", ".join(f"{n} ({t}, {states.get(t)})" for n, (_, t) in sorted(live.items())))
    cancelled = {**live, **unrecorded}
    handles = [SlurmTaskHandle(name, d, t) for name, (d, t) in cancelled.items()]
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
    return {name: rerun_args(state.read_status(d) or {}) for name, (d, _) in cancelled.items()}


def rerun_args(status: dict) -> list[str]:
    """The `perl run` arguments an experiment was submitted to Slurm with (["--backend", "slurm", ...])."""
    slurm = status.get("slurm") if isinstance(status.get("slurm"), dict) else {}
    args = slurm.get("args")
    if isinstance(args, list) and args and all(isinstance(a, str) for a in args):
        return list(args)
    return ["--backend", "slurm"] if slurm or status.get("backend") == "slurm" else []


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass
class _Dir:
    dir: Path


def _task_id(status: dict) -> str | None:
    slurm = status.get("slurm")
    task = slurm.get("job_id") if isinstance(slurm, dict) else None
    return str(task) if task else None


def _may_be_in_slurm(status: dict) -> bool:
    """A status whose Slurm task may still be queued, held or running in Slurm, whatever the file says.

    Everything but `completed`: Slurm requeues and holds tasks behind PeRL's back (preemption,
    `scontrol requeue`), and a task may not have recorded that (an older PeRL, a dead node).
    """
    return _task_id(status) is not None and status.get("state") != outcomes.COMPLETED


def resolve_submissions(suite_dir: Path, names: list[str] | None) -> None:
    """Settle submissions whose sbatch answer was lost (statuses `queued`, a submission token, no job id).

    Slurm is asked whether the array exists: if it does, its task ids are recorded (and the
    tasks' pickles put in place); if it does not, the experiments are marked `interrupted`
    (nothing runs them). SlurmError (exit 2) when Slurm cannot be asked: submitting again
    could run an experiment twice.
    """
    pending: dict[str, list[tuple[str, Path]]] = {}
    for name, exp_dir in state.experiment_dirs(suite_dir).items():
        if names is not None and name not in names:
            continue
        status = state.read_status(exp_dir) or {}
        slurm = status.get("slurm") if isinstance(status.get("slurm"), dict) else {}
        if status.get("state") == outcomes.QUEUED and not slurm.get("job_id") and slurm.get("submission"):
            pending.setdefault(str(slurm["submission"]), []).append((name, exp_dir))
    for token, members in pending.items():
        ids = slurm_cli.find_submission(f"perl-{suite_dir.name}", token)
        if ids is None:
            raise SlurmError(f"Slurm's controller is unreachable, and an earlier submission of {len(members)} "
                             f"experiment(s) ({token}) got no answer: PeRL cannot tell whether Slurm has it. Check the "
                             "controller with `scontrol ping`, then run this again.")
        folder = suite_dir / SUBMITIT_DIR
        if len(ids) == len(members):
            # Task i of the array is the experiment submitted i-th (status.json's slurm.index).
            order = sorted(members, key=lambda m: ((state.read_status(m[1]) or {}).get("slurm") or {}).get("index") or 0)
            _place_pickles(folder, set(), ids, [_Dir(d) for _, d in order])
            for (_, exp_dir), job_id in zip(order, ids, strict=True):
                state.update_status(exp_dir, slurm={**((state.read_status(exp_dir) or {}).get("slurm") or {}),
                                                    "job_id": job_id, "array_job_id": job_id.split("_")[0]})
        else:
            for _, exp_dir in members:
                state.update_status(exp_dir, state=outcomes.INTERRUPTED, ended=state.now(),
                                    error="its submission to Slurm got no answer, and Slurm has no such array")

def slurm_tasks_in_flight(suite_dir: Path, names: list[str]) -> dict[str, str]:
    """Experiments for which Slurm still has a task (queued, held, requeued or running): {name: task id}.

    Decided with squeue/sacct as well as the files: a task Slurm requeued or holds counts
    whatever status.json says, so no experiment is ever submitted while a task for it exists.
    When Slurm cannot be asked, the files are believed for what they say is queued or running
    (never two workers on one directory; the worker's lock is the last line of defence).
    """
    resolve_submissions(suite_dir, names)
    candidates: dict[str, str] = {}
    believed: dict[str, str] = {}
    for name in names:
        status = state.read_status(suite_dir / name) or {}
        if _may_be_in_slurm(status):
            candidates[name] = str(_task_id(status))
            if status.get("state") in (outcomes.QUEUED, state.RUNNING):
                believed[name] = candidates[name]
    if not candidates:
        return {}
    states = slurm_cli.task_states(candidates.values())
    if states is None:
        return believed
    return {name: task for name, task in candidates.items() if states.get(task) in slurm_cli.ACTIVE_STATES}


READ_TIMEOUT_S = 3.0  # readers (perl status, watch) wait at most this long for squeue/sacct
# A reader that refreshes (watch every 2 s, status --watch) asks Slurm about the same tasks at
# most this often: the answer (or "unreachable", which costs READ_TIMEOUT_S) is reused.
READ_REUSE_S = 20.0
# Readers ask about an experiment recorded interrupted or failed (Slurm may have requeued its task)
# only this long after it ended: a suite that ended long ago is read without asking Slurm each time.
# `perl run` and `perl cancel` always ask.
READ_ENDED_S = 7 * 24 * 3600.0
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


def seen_by_slurm(statuses: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """For readers: what to show for experiments whose file and Slurm disagree, {name: fields}.

    - The file says queued or running, but Slurm has let go of the task (cancelled while
      pending, a dead node): shown as the next `perl run` will record it (endings.from_slurm:
      `interrupted` or `failed`, with a cause).
    - The file says interrupted or failed, but Slurm has the task again (requeued or held
      behind PeRL's back, before the task could say so): shown `queued` (or `running`).

    Asks Slurm only when some status names a task that has not completed (and, if recorded
    ended, ended less than READ_ENDED_S ago), within READ_TIMEOUT_S, reusing an answer for
    READ_REUSE_S; unreachable: {} (the files alone decide). Never writes.
    """
    now = state.now()
    tasks = {name: str(_task_id(s)) for name, s in statuses.items() if _may_be_in_slurm(s)
             and (s.get("state") not in outcomes.TERMINAL or now - (_num(s.get("ended")) or now) < READ_ENDED_S)}
    if not tasks:
        return {}
    states = _task_states_for_readers(frozenset(tasks.values()))
    if not states:
        return {}
    shown: dict[str, dict[str, Any]] = {}
    for name, task in tasks.items():
        seen, recorded = states.get(task), statuses[name].get("state")
        if seen is None:
            continue
        if seen in slurm_cli.ACTIVE_STATES:
            if recorded in outcomes.TERMINAL:
                now = state.RUNNING if seen == "RUNNING" else outcomes.QUEUED
                shown[name] = {"state": now, "error": None, "cause": None} if now == state.RUNNING else {
                    "state": now, "cause": None,
                    "error": f"back in Slurm's queue ({seen}): Slurm requeued task {task}"}
        elif recorded in (outcomes.QUEUED, state.RUNNING):
            shown[name] = endings.from_slurm(seen, statuses[name], task)
    return shown
