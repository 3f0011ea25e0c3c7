"""One experiment as one Slurm array task: what runs on the compute node.

submitit pickles a `SlurmTask` per experiment and calls it on the node. The task runs
the same worker as the local backend, the one the job's kind names (jobkinds.worker:
`python -m perl_cli.train <exp_dir>` for `perl run`, `python -m perl_cli.train.eval_worker
<exp_dir>` for `perl eval`; output appended to train.log) in the same experiment directory
on the shared file system, and records the worker's end with the same rules
(perl_cli/outcomes.py), so status, watch, diagnose and report read a Slurm run exactly like
a local one. Both workers save as they go and continue where they stopped (a checkpoint, or
the benchmark batches already saved), so every requeue below resumes either kind.

Time limits and preemption: Slurm sends SIGUSR2 `signal_delay_s` before the limit (or
on preemption); submitit then calls `checkpoint()`, which stops the worker with SIGTERM
(it saves a checkpoint and exits 143) and hands submitit a copy of the task with one
requeue less; submitit requeues the array task, which resumes from that checkpoint.
With no requeue left the experiment ends `failed`, cause `time_limit` (or `preempted`).
The worker ignores SIGUSR2 itself (Slurm signals every process of the step): the task
decides.

Requeues by Slurm itself (preemption, `scontrol requeue[hold]`, a node failure): Slurm
SIGTERMs the step, the worker saves a checkpoint and exits 143, and the job goes back to
the queue. The task learns it from Slurm (`scontrol show job`: its restart count went up)
and records `queued` with the requeue and Slurm's reason, never `interrupted`; a restart
whose previous attempt left no word (its node died) is recorded as a requeue when it starts.

The task's exit status is the experiment's: a `failed` experiment raises, so submitit
exits non-zero and Slurm records FAILED (mail-type=FAIL, afterok dependencies, sacct).
The task holds the experiment's lock (perl_cli/worker_lock.py) from before it records
`running` until it has recorded the end, and hands it to its worker: a second task or
worker on the same directory refuses to start. See docs/architecture.md, "The Slurm backend".
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from perl_cli import outcomes, state, worker_lock
from perl_cli.scheduler import endings

STOP_GRACE_S = 25.0  # how long the worker gets to save a checkpoint after SIGTERM
POLL_S = 0.2
ASK_SLURM_S = 5.0  # how long the task waits for `scontrol show job` (Slurm kills it KillWait after SIGTERM)


class ExperimentFailed(RuntimeError):
    """Raised by the task when its experiment failed: submitit exits non-zero, Slurm says FAILED."""


class ExperimentBusy(RuntimeError):
    """Another live worker holds the experiment's directory: this task did not start it."""


def slurm_ids(environ: dict[str, str] | os._Environ = os.environ) -> dict[str, Any]:
    """This task's Slurm identity, as recorded in status.json's `slurm`."""
    array_job, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    job_id = f"{array_job}_{task}" if array_job and task else environ.get("SLURM_JOB_ID")
    return {"job_id": job_id, "raw_job_id": environ.get("SLURM_JOB_ID"), "node": environ.get("SLURMD_NODENAME")}


def gpu_field(visible: str | None) -> int | str:
    """status.json's `gpu`: an index, "cpu", or "0,1" for several."""
    if not visible:
        return "cpu"
    return int(visible) if visible.isdigit() else visible


class SlurmTask:
    """The callable submitit runs on the node for one experiment (picklable, no state beyond its fields)."""

    activity: str | None = None  # a class default: a task pickled by an older PeRL has no such field

    def __init__(self, exp_dir: str, worker_cmd: Sequence[str], *, requeues_left: int, time_limit_s: int,
                 signal_delay_s: int, activity: str | None = None) -> None:
        self.exp_dir = exp_dir
        self.worker_cmd = list(worker_cmd)  # the job's worker, as its kind decides (jobkinds.worker)
        self.requeues_left = requeues_left
        self.time_limit_s = time_limit_s
        self.signal_delay_s = signal_delay_s
        self.activity = activity  # what an attempt does, for train.log (jobkinds.activity); None: training
        self._proc: subprocess.Popen | None = None
        self._started = 0.0
        self._decided = False  # checkpoint() recorded the outcome (requeued or out of requeues)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_proc": None, "_decided": False}

    def __call__(self) -> int:
        exp_dir = Path(self.exp_dir)
        try:
            lock_fd = worker_lock.acquire(exp_dir, inheritable=True)
        except worker_lock.Busy as exc:
            # status.json is the live worker's: nothing is recorded; the task fails in Slurm.
            state.append_log_mark(exp_dir, f"Slurm job {slurm_ids()['job_id']} did not start: {exc}")
            raise ExperimentBusy(str(exc)) from None
        self._started = time.time()
        previous = state.read_status(exp_dir) or {}
        if previous.get("state") == state.RUNNING and _restart_count() > 0:
            # Restarted by Slurm while the file still says running: the last attempt never recorded
            # its end (its node died, or Slurm killed the task before it could).
            node = (previous.get("slurm") or {}).get("node") or previous.get("host")
            beat = previous.get("heartbeat")
            previous = endings.record_requeue(
                exp_dir, cause=outcomes.CAUSE_REQUEUED, ended=beat if isinstance(beat, (int, float)) else None,
                reason=f"restarted by Slurm; the attempt on {node} ended without recording its end (node failure?)")
            state.append_log_mark(exp_dir, f"requeued by Slurm: the attempt on {node} left no final status")
        attempt = (previous.get("attempt") or 0) + 1
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "") if os.environ.get("SLURM_JOB_GPUS") else ""
        state.update_status(
            exp_dir, state=state.RUNNING, attempt=attempt, host=state.hostname(), gpu=gpu_field(visible),
            started=self._started, heartbeat=self._started, ended=None, exit_code=None, signal=None,
            error=None, cause=None, pid=None, pid_start_time=None, resumed_from=None,
            run_s_before=state.earlier_attempts_s(previous),
            slurm={**(previous.get("slurm") or {}), **slurm_ids(), "time_limit_s": self.time_limit_s},
        )
        env = {
            **os.environ,
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "CUDA_VISIBLE_DEVICES": visible,
            "PERL_GPU": visible or "cpu",
            "OMP_NUM_THREADS": os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("OMP_NUM_THREADS") or "1",
            worker_lock.INHERITED_ENV: str(lock_fd),
        }
        how = self.activity or ("resuming from its last checkpoint" if state.last_checkpoint(exp_dir) else "from the start")
        state.append_log_mark(exp_dir, f"attempt {attempt} on Slurm job {slurm_ids()['job_id']}, node {state.hostname()}, "
                             f"gpu {visible or 'none'} ({how}): {shlex.join([*self.worker_cmd, str(exp_dir)])}")
        with open(exp_dir / state.LOG_FILE, "ab") as log:
            self._proc = subprocess.Popen(
                [*self.worker_cmd, str(exp_dir)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, preexec_fn=_ignore_usr2, pass_fds=(lock_fd,),
            )
        state.update_status(exp_dir, pid=self._proc.pid, pid_start_time=state.process_start_time(self._proc.pid))
        # Poll, never a blocking wait(): checkpoint() runs in a signal handler on top of this
        # frame and must be able to reap the worker itself (a blocking Popen.wait holds a lock).
        while (rc := self._reap()) is None:
            time.sleep(POLL_S)
        if self._decided:
            return rc
        return self._end(rc)

    def _end(self, rc: int) -> int:
        """Record how the worker ended; raise when the experiment failed (so Slurm says FAILED)."""
        stopped = rc in outcomes.INTERRUPTED_CODES or rc < 0 or rc == outcomes.EXIT_SIGKILL
        reason = requeued_by_slurm() if stopped else None
        if reason is not None:
            status = endings.record_requeue(self.exp_dir, cause=outcomes.CAUSE_REQUEUED, reason=reason, exit_code=rc)
            state.append_log_mark(Path(self.exp_dir), f"requeued by Slurm ({reason}) at step {status.get('step')}; "
                                                      "the experiment waits in the queue")
            return rc
        status = endings.record(self.exp_dir, outcomes.Ending(rc, pid=self._proc.pid if self._proc else None))
        if rc == outcomes.EXIT_BUSY:
            raise ExperimentBusy(f"the worker found another live worker on {self.exp_dir} and did not start")
        if status.get("state") == outcomes.FAILED:
            raise ExperimentFailed(f"{Path(self.exp_dir).name} failed: {status.get('error') or f'exit code {rc}'}")
        return rc

    def checkpoint(self) -> Any:
        """Called by submitit on SIGUSR2 (time limit near, or preemption): stop, then requeue or give up."""
        from submitit.helpers import DelayedSubmission

        self._decided = True
        rc = self._stop_worker()
        elapsed = time.time() - self._started
        timed_out = elapsed >= self.time_limit_s - 2 * self.signal_delay_s - 60
        cause = outcomes.CAUSE_TIME_LIMIT if timed_out else outcomes.CAUSE_PREEMPTED
        what = "the Slurm time limit" if timed_out else "preemption"
        status = state.read_status(self.exp_dir) or {}
        if self.requeues_left > 0:
            endings.record_requeue(self.exp_dir, cause=cause, reason=what, exit_code=rc,
                                   error=f"requeued after {what} (checkpoint at step {status.get('step')})")
            state.append_log_mark(Path(self.exp_dir), f"{what}: stopped at step {status.get('step')}; requeued "
                                                      f"({self.requeues_left - 1} requeue(s) left)")
            return DelayedSubmission(self._next())
        endings.record(self.exp_dir, outcomes.Ending(rc, pid=self._proc.pid if self._proc else None, stop_sent=True),
                       extra={"state": outcomes.FAILED, "cause": cause,
                              "error": f"stopped by {what} after {len(status.get('requeues') or [])} requeue(s); none left"})
        state.append_log_mark(Path(self.exp_dir), f"{what}: stopped at step {status.get('step')}; no requeue left")
        return None  # submitit then raises: the task ends FAILED in Slurm

    def _next(self) -> SlurmTask:
        return SlurmTask(self.exp_dir, self.worker_cmd, requeues_left=self.requeues_left - 1,
                         time_limit_s=self.time_limit_s, signal_delay_s=self.signal_delay_s, activity=self.activity)

    def _reap(self) -> int | None:
        """The worker's exit code once it has ended (Popen's convention), else None."""
        proc = self._proc
        assert proc is not None
        if proc.returncode is not None:
            return proc.returncode
        try:
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:
            return proc.returncode
        if pid == 0:
            return None
        proc.returncode = os.waitstatus_to_exitcode(status)
        return proc.returncode

    def _stop_worker(self) -> int | None:
        """SIGTERM the worker (it checkpoints and exits 143); SIGKILL after the grace period."""
        if self._proc is None:
            return None
        if self._reap() is None:
            self._proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + min(STOP_GRACE_S, max(1.0, self.signal_delay_s - 5.0))
            while self._reap() is None and time.monotonic() < deadline:
                time.sleep(POLL_S)
            if self._reap() is None:
                self._proc.kill()
                while self._reap() is None:
                    time.sleep(POLL_S)
        return self._proc.returncode


def _restart_count() -> int:
    value = os.environ.get("SLURM_RESTART_COUNT", "")
    return int(value) if value.isdigit() else 0


def requeued_by_slurm(job_id: str | None = None) -> str | None:
    """Slurm's reason when it has just requeued this job (its restart count went up), else None.

    A requeue and a cancel both reach the worker as SIGTERM; only Slurm knows which it was.
    Unreachable within ASK_SLURM_S: None (the experiment is recorded `interrupted`, and
    readers and `perl run` still see the task pending in Slurm's queue).
    """
    from perl_cli.scheduler import slurm_cli

    job_id = job_id or os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return None
    info = slurm_cli.job_info(job_id, timeout=ASK_SLURM_S) or {}
    restarts = info.get("Restarts", "")
    if not restarts.isdigit() or int(restarts) <= _restart_count():
        return None
    reason = info.get("Reason", "").replace("_", " ")
    held = "; held: `scontrol release` lets it run" if "held" in reason.lower() else ""
    return (reason if reason and reason != "None" else "scontrol requeue, preemption or a node failure") + held


def _ignore_usr2() -> None:
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # an ignored signal stays ignored across exec


