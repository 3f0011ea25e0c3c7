"""One experiment as one Slurm array task: what runs on the compute node.

submitit pickles a `SlurmTask` per experiment and calls it on the node. The task runs
the same worker as the local backend (`python -m perl_cli.train <exp_dir>`, output
appended to train.log) in the same experiment directory on the shared file system,
and records the worker's end with the same rules (perl_cli/outcomes.py), so status,
watch, diagnose and report read a Slurm run exactly like a local one.

Time limits and preemption: Slurm sends SIGUSR2 `signal_delay_s` before the limit (or
on preemption); submitit then calls `checkpoint()`, which stops the worker with SIGTERM
(it saves a checkpoint and exits 143) and hands submitit a copy of the task with one
requeue less; submitit requeues the array task, which resumes from that checkpoint.
With no requeue left the experiment ends `failed`, cause `time_limit` (or `preempted`).
The worker ignores SIGUSR2 itself (Slurm signals every process of the step): the task
decides. See docs/architecture.md, "The Slurm backend".
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

from perl_cli import outcomes, state

STOP_GRACE_S = 25.0  # how long the worker gets to save a checkpoint after SIGTERM
POLL_S = 0.2


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

    def __init__(self, exp_dir: str, worker_cmd: Sequence[str], *, requeues_left: int, time_limit_s: int,
                 signal_delay_s: int) -> None:
        self.exp_dir = exp_dir
        self.worker_cmd = list(worker_cmd)
        self.requeues_left = requeues_left
        self.time_limit_s = time_limit_s
        self.signal_delay_s = signal_delay_s
        self._proc: subprocess.Popen | None = None
        self._started = 0.0
        self._decided = False  # checkpoint() recorded the outcome (requeued or out of requeues)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_proc": None, "_decided": False}

    def __call__(self) -> int:
        exp_dir = Path(self.exp_dir)
        self._started = time.time()
        previous = state.read_status(exp_dir) or {}
        attempt = (previous.get("attempt") or 0) + 1
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "") if os.environ.get("SLURM_JOB_GPUS") else ""
        state.update_status(
            exp_dir, state=state.RUNNING, attempt=attempt, host=state.hostname(), gpu=gpu_field(visible),
            started=self._started, heartbeat=self._started, ended=None, exit_code=None, signal=None,
            error=None, cause=None, pid=None, pid_start_time=None,
            slurm={**(previous.get("slurm") or {}), **slurm_ids(), "time_limit_s": self.time_limit_s},
        )
        env = {
            **os.environ,
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "CUDA_VISIBLE_DEVICES": visible,
            "PERL_GPU": visible or "cpu",
            "OMP_NUM_THREADS": os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("OMP_NUM_THREADS") or "1",
        }
        how = "resuming from its last checkpoint" if state.last_checkpoint(exp_dir) else "from the start"
        state.append_log_mark(exp_dir, f"attempt {attempt} on Slurm job {slurm_ids()['job_id']}, node {state.hostname()}, "
                             f"gpu {visible or 'none'} ({how}): {shlex.join([*self.worker_cmd, str(exp_dir)])}")
        with open(exp_dir / state.LOG_FILE, "ab") as log:
            self._proc = subprocess.Popen(
                [*self.worker_cmd, str(exp_dir)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, preexec_fn=_ignore_usr2,
            )
        state.update_status(exp_dir, pid=self._proc.pid, pid_start_time=state.process_start_time(self._proc.pid))
        # Poll, never a blocking wait(): checkpoint() runs in a signal handler on top of this
        # frame and must be able to reap the worker itself (a blocking Popen.wait holds a lock).
        while (rc := self._reap()) is None:
            time.sleep(POLL_S)
        if not self._decided:
            self._record(outcomes.Ending(rc, pid=self._proc.pid))
        return rc

    def _record(self, ending: outcomes.Ending, **extra: Any) -> dict:
        from perl_cli.scheduler import endings

        return endings.record(self.exp_dir, ending, extra=extra)

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
            record = {"cause": cause, "at": state.now(), "attempt": status.get("attempt"), "step": status.get("step")}
            state.write_status_best_effort(
                self.exp_dir, state=outcomes.QUEUED, ended=state.now(), exit_code=rc, signal=None,
                error=f"requeued after {what} (checkpoint at step {status.get('step')})",
                requeues=[*status.get("requeues", []), record],
            )
            state.append_log_mark(Path(self.exp_dir), f"{what}: stopped at step {status.get('step')}; requeued "
                                            f"({self.requeues_left - 1} requeue(s) left)")
            return DelayedSubmission(self._next())
        self._record(outcomes.Ending(rc, pid=self._proc.pid if self._proc else None, stop_sent=True),
                     state=outcomes.FAILED, cause=cause,
                     error=f"stopped by {what} after {len(status.get('requeues', []))} requeue(s); none left")
        state.append_log_mark(Path(self.exp_dir), f"{what}: stopped at step {status.get('step')}; no requeue left")
        return None

    def _next(self) -> SlurmTask:
        return SlurmTask(self.exp_dir, self.worker_cmd, requeues_left=self.requeues_left - 1,
                         time_limit_s=self.time_limit_s, signal_delay_s=self.signal_delay_s)

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


def _ignore_usr2() -> None:
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # an ignored signal stays ignored across exec


