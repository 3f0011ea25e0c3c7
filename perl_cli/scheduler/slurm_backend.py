"""The Slurm backend: each planned experiment becomes one task of a Slurm job array.

    perl run SUITE --backend slurm [--partition P] [--time 4:00:00] [--gpus-per-job 1] [--wait]
    perl eval SUITE --backend slurm [the same options]

Each task runs the worker its job's kind names (jobkinds.py: training, or the evaluation of a
completed experiment); nothing here depends on which.

Submission goes through submitit (job arrays; requeue on time limit and preemption).
Each task runs the same worker in the same experiment directory on the shared file
system (slurm_task.py), so status, watch, diagnose and report work unchanged. What to
run is planned by the run session as for the local backend (planner.py), plus: an
experiment whose task is still queued or running in Slurm is watched, not submitted twice.

At submission each experiment's status.json says `queued` with its Slurm job id
(`slurm.job_id`, "<array>_<task>"); the task turns it `running`, then the worker's
final state. `perl run` returns after submitting (printing the job id and how to
watch); `--wait` follows the tasks like the local backend follows its workers, through
`SlurmTaskHandle`s. Bad options and Slurm's refusals are exit-2 errors before (or
instead of) any submission. The options, and what readers, planning and `perl cancel` ask
of Slurm, are slurm.py's. See docs/architecture.md, "The Slurm backend".
"""

from __future__ import annotations

import contextlib
import io
import math
import shlex
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from perl_cli import outcomes, state
from perl_cli.scheduler import jobkinds, slurm_cli
from perl_cli.scheduler.handles import SlurmTaskHandle
from perl_cli.scheduler.jobs import Activity, Job, RunError, Session
from perl_cli.scheduler.progress import make_reporter
from perl_cli.scheduler.slurm import SUBMITIT_DIR, SlurmOptions, early_warning_note, place_pickles, signal_delay_s
from perl_cli.scheduler.slurm_cli import SlurmError
from perl_cli.scheduler.slurm_task import SlurmTask

DEFAULT_TIME_S = 24 * 3600  # when neither the user nor the partition says
WAIT_POLL_S = 2.0
# After sbatch timed out (a slow or paused controller may still accept the array), how long
# `perl run` keeps asking Slurm whether it did before it gives up and says it cannot tell.
CONFIRM_S = 60.0
CONFIRM_POLL_S = 2.0


class SlurmBackend:
    """Submits a planned suite to Slurm and, with --wait, follows it to the end."""

    def __init__(self, session: Session, sopts: SlurmOptions) -> None:
        self.session = session  # the planning, locking, reporting and aggregate of perl run (session.py)
        self.sopts = sopts
        self.opts = session.opts
        self.suite_dir: Path = session.suite_dir

    # -- the Backend interface (jobs.Backend) ----------------------------------------------

    def activity(self) -> Activity:
        return Activity()  # the tasks are Slurm's: run_status.json names their job ids instead

    def stop_launching(self) -> None:
        """Nothing is queued here: every task was submitted at once."""

    def refuse_unfit(self, jobs: list[Job]) -> None:
        """Nothing to refuse without asking Slurm, which a dry run never does."""

    def run(self, jobs: list[Job]) -> int:
        """Submit the planned jobs as one array (and, with --wait, follow them and every watched task)."""
        s = self.session
        # The run answers for every experiment it plans for: submitted now, in flight or done (not one
        # `perl eval` leaves alone because its training is not complete: a local eval does not either).
        done = set(s.skipped)
        s.run_experiments = {**{e.name: e for e in self.opts.experiments if e.name in done},
                             **{j.name: j.exp for j in [*jobs, *(job for job, _ in s.watched)]}}
        time_limit_s = self.preflight()  # exit-2 errors (no sbatch, unknown partition) before anything is touched
        local = [j for j in jobs if j.action == "adopt"]
        if local:
            raise RunError(
                "; ".join(f"{j.name} is running here (pid {j.pid})" for j in local) + ". Let it finish (or stop it "
                f"with `perl cancel {self.opts.suite}`) before submitting it to Slurm."
            )
        s.reporter = make_reporter(len(jobs) + len(s.watched), tty=self.opts.tty)
        try:
            parts = [f"{len(jobs)} to submit"]
            if s.skipped:
                parts.append(f"{len(s.skipped)} already {jobkinds.done_word(self.opts.kind)} (skipped)")
            s.reporter.info(f"suite {self.opts.suite} → {self.suite_dir}: " + ", ".join(parts) + ".")
            for job in jobs:
                if job.action == "fresh":
                    s.start_fresh(job)
            return self._submit_and_follow(jobs, s.watched, time_limit_s)
        finally:
            s.reporter.close()

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

    def describe(self, jobs: list[Job], *, refused: int = 0) -> list[str]:
        """What `perl run --backend slurm --dry-run` prints: the tasks and the sbatch options; nothing is asked of Slurm."""
        o = self.sopts
        options = {"partition": o.partition, "account": o.account, "time": o.time or "the partition's default",
                   "gres": f"gpu:{o.gpus_per_job}" if o.gpus_per_job else None, "cpus-per-task": o.cpus_per_job,
                   "mem": o.mem, "array parallelism": o.array_parallelism, **o.extra}
        lines = [f"{job.name}  [{job.action}]  dir: {job.dir}" for job in jobs]
        lines += [f"{job.name}  [already in Slurm: task {task}]" for job, task in self.session.watched]
        lines.append("sbatch: " + ", ".join(f"{k}={v}" for k, v in options.items() if v is not None))
        lines.append(f"each task runs: {shlex.join(self._worker(self.opts.kind))} <dir> (requeued up to "
                     f"{self.opts.retries}x on time limit or preemption, resuming where it stopped)")
        lines.append(f"dry run: {len(jobs)} to submit as one job array, {len(self.session.watched)} already in Slurm, "
                     f"{len(self.session.skipped)} completed (skip); nothing was submitted.")
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

    def submit(self, jobs: list[Job], time_limit_s: int) -> list[str]:
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
            self.session.prepare_dir(job)
            state.update_status(
                job.dir, state=outcomes.QUEUED, fingerprint=job.exp.fingerprint, backend="slurm",
                host=None, pid=None, pid_start_time=None, gpu=None, exit_code=None, signal=None, error=None,
                cause=None, ended=None, started=None, heartbeat=None, total_steps=job.exp.max_steps,
                submitted=state.now(), requeues=[], resumed_from=None,
                run_s_before=state.earlier_attempts_s(previous[job.name] or {}),
                slurm={"job_id": None, "submission": token, "index": index, "args": self.sopts.rerun_args(),
                       "kind": job.kind, "rerun": self._perl_words(job.kind)},
            )
        executor = self.executor(time_limit_s, len(jobs))
        comment = self.sopts.extra.get("comment")
        executor.update_parameters(additional_parameters={**self.sopts.extra,
                                                          "comment": f"{comment} {token}" if comment else token})
        delay = signal_delay_s(time_limit_s)
        tasks = [SlurmTask(str(job.dir), self._worker(job.kind), requeues_left=self.opts.retries,
                           time_limit_s=time_limit_s, signal_delay_s=delay,
                           activity=jobkinds.activity(job.kind, job.benchmarks)) for job in jobs]
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
                raise SlurmError(_refusal(message, self._rerun_command())) from None
        for job, job_id in zip(jobs, ids, strict=True):
            status = state.read_status(job.dir) or {}
            slurm = {**(status.get("slurm") or {}), "job_id": job_id, "array_job_id": job_id.split("_")[0]}
            state.update_status(job.dir, slurm=slurm)
        return ids

    def _confirm(self, jobs: list[Job], token: str, message: str, folder: Path, before: set[Path]) -> list[str] | None:
        """After a failed sbatch: the task ids if Slurm accepted the array all the same, None if it did not.

        Raises SlurmError (exit 2), leaving the `queued` marks, when Slurm cannot say: the next
        `perl run` asks about this submission first (`resolve_submissions`), never submitting twice.
        """
        if slurm_cli.unreachable(message) != "unanswered":
            return None  # refused, or never sent: nothing to ask
        r = self.session.reporter
        if r is not None:
            r.info(f"sbatch got no answer from Slurm ({_last_line(message)}); asking Slurm whether it accepted the "
                   f"array (up to {CONFIRM_S:g} s) before anything is undone.")
        deadline = time.monotonic() + CONFIRM_S
        empty = 0
        while True:
            ids = slurm_cli.find_submission(f"perl-{self.opts.suite}", token, timeout=CONFIRM_POLL_S * 2)
            if ids:
                place_pickles(folder, before, ids, jobs)
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
            f"`{self._rerun_command()}` asks Slurm about that submission "
            "first and never submits twice."
        )

    # -- the run ---------------------------------------------------------------------------

    def _submit_and_follow(self, jobs: list[Job], watched: list[tuple[Job, str]], time_limit_s: int) -> int:
        """Submit `jobs`; `watched` are (job, task id) already queued or running in Slurm."""
        r = self.session.reporter
        ids = self.submit(jobs, time_limit_s) if jobs else []
        if ids:
            where = f" on partition {self.sopts.partition}" if self.sopts.partition else ""
            r.info(f"submitted {len(ids)} experiment(s) as {_array_text(ids)}{where}, "
                   f"time limit {slurm_cli.format_time(time_limit_s)}, {self.sopts.gpus_per_job} GPU(s) each.")
            r.info(f"each task runs: {shlex.join(self._worker(self.opts.kind))} <dir>")
            if note := early_warning_note(time_limit_s):
                r.info(note)
        if watched:
            r.info(f"{len(watched)} already queued or running in Slurm: "
                   + ", ".join(f"{job.name} ({tid})" for job, tid in watched) + ".")
        self.session.write_aggregate(force=True, backend=self._scheduler_fields(ids))
        if not self.sopts.wait:
            r.info(f"watch: `perl status {self.opts.suite}` (queued/running/completed) or `squeue --me`; "
                   f"stop: `perl cancel {self.opts.suite}`; `{self._rerun_command()}` "
                   "later resumes what was cancelled, timed out or preempted.")
            return outcomes.EXIT_OK
        handles = [SlurmTaskHandle(job.name, job.dir, tid) for job, tid in
                   [*zip(jobs, ids, strict=True), *watched]]
        return self._wait(handles)

    # -- what a job of each kind runs, and the command that runs it again (jobkinds decides both) --

    def _worker(self, kind: str) -> list[str]:
        return jobkinds.worker(kind, self.opts.worker_cmd, self.opts.eval_worker_cmd)

    def _perl_words(self, kind: str) -> list[str]:
        return jobkinds.perl_words(kind, self.opts.eval_benchmarks)

    def _rerun_command(self) -> str:
        """`perl run|eval SUITE [its options] --backend slurm [...]`: this submission again (it resumes)."""
        words = self._perl_words(self.opts.kind)
        return shlex.join(["perl", words[0], self.opts.suite, *words[1:], *self.sopts.rerun_args()])

    def _scheduler_fields(self, ids: list[str]) -> dict[str, Any]:
        return {"backend": "slurm", "job_ids": ids, "partition": self.sopts.partition, "submitted": state.now()}

    def _wait(self, handles: list[SlurmTaskHandle]) -> int:
        r = self.session.reporter
        pending = {h.name: h for h in handles}
        announced: set[str] = set()
        r.info(f"waiting for {len(pending)} task(s); Ctrl+C stops waiting (the tasks go on; "
               f"`perl cancel {self.opts.suite}` stops them).")
        while pending:
            if self.session.stop_requests:
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
            self.session.progress_of([(h.name, h.where, h.dir) for h in pending.values() if h.name in announced])
            self.session.write_aggregate(backend=self._scheduler_fields([h.task_id for h in handles]))
            self.session.wait(WAIT_POLL_S)
        return self.session.exit_code()


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


def _refusal(message: str, rerun: str) -> str:
    """What to say when a submission did not happen: refused by Slurm, or its controller unreachable."""
    kind = slurm_cli.unreachable(message)
    if kind is None:
        return f"Slurm refused the submission: {message}"
    what = "sbatch could not reach it" if kind == "not sent" else "sbatch timed out, and Slurm then said it has no such array"
    return (f"Slurm's controller is unreachable ({what}): {_last_line(message)}. Nothing was submitted. Check it with "
            f"`scontrol ping` (or ask the cluster's admins), then run the same `{rerun}` again.")


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


def _restore(exp_dir: Path, previous: dict | None, *, created: bool) -> None:
    """Undo the `queued` mark of a submission Slurm refused (and the directory it created)."""
    if created:
        shutil.rmtree(exp_dir, ignore_errors=True)
    elif previous is None:
        with contextlib.suppress(FileNotFoundError):
            (exp_dir / state.STATUS_FILE).unlink()
    else:
        state.write_status(exp_dir, previous)


