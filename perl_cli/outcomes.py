"""What a worker's end means: exit codes, signals, failure causes and their remedies.

One vocabulary for everyone who looks at a finished worker: the worker (which exit
code to return), the local scheduler and the Slurm task (which state to record, and
whether a retry can fix it), and `perl diagnose` (which cause to name). Everything
here is pure: no files, no processes, no clocks (callers pass what they read), so
each rule is unit-tested in milliseconds (tests/test_outcomes.py). See
docs/architecture.md, "Outcomes".
"""

from __future__ import annotations

import errno
import re
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# --- exit codes: the worker's contract (perl_cli/train/worker.py) ----------------------

EXIT_OK = 0
EXIT_FAILED = 1  # a failure; traceback in train.log, one line in status.json's error
EXIT_CONFIG_ERROR = 2  # the experiment cannot run as configured: never retried
EXIT_SIGINT = 128 + signal.SIGINT  # 130: stopped by Ctrl+C after saving a checkpoint
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143: stopped by SIGTERM after saving a checkpoint
INTERRUPTED_CODES = (EXIT_SIGINT, EXIT_SIGTERM)
EXIT_SIGKILL = 128 + signal.SIGKILL  # 137: what a shell (and Slurm) reports for a SIGKILL
# Another live worker holds the experiment (perl_cli/worker_lock.py): this one did not start and
# wrote nothing; its supervisor records nothing either (the directory is the other worker's).
EXIT_BUSY = 75  # EX_TEMPFAIL

# --- states a supervisor records (the contract of status.json; perl_cli/state.py re-exports them) ---

COMPLETED = "completed"
FAILED = "failed"
INTERRUPTED = "interrupted"
RUNNING = "running"
QUEUED = "queued"  # submitted to Slurm, waiting for a node (the Slurm backend writes it)
TERMINAL = (COMPLETED, FAILED, INTERRUPTED)

# --- causes: status.json's `cause`, diagnose's groups ----------------------------------

CAUSE_STALLED = "stalled"  # no heartbeat for the stall timeout; killed by perl run
CAUSE_DISK_FULL = "disk_full"
CAUSE_CUDA_OOM = "cuda_oom"
CAUSE_TIME_LIMIT = "time_limit"  # Slurm: the task hit its time limit with no requeue left
CAUSE_PREEMPTED = "preempted"  # Slurm: the task was preempted with no requeue left
CAUSE_MEMORY_LIMIT = "memory_limit"  # Slurm: the task outgrew its memory request (OUT_OF_MEMORY)
CAUSE_NODE_FAILURE = "node_failure"  # Slurm: the task's node failed (NODE_FAIL)
CAUSE_CANCELLED_PENDING = "cancelled_pending"  # Slurm: the task was cancelled before it ever started
CAUSE_REQUEUED = "requeued"  # Slurm requeued the task (preemption, scontrol requeue, a node failure)
CAUSE_COLLAPSED = "collapsed"  # the worker stopped a collapsed run (training.stop_on_collapse)

# Text that means the GPU ran out of memory (the worker's traceback or status error).
CUDA_OOM_MARKERS = ("CUDA out of memory", "OutOfMemoryError", "CUDA error: out of memory",
                    "CUBLAS_STATUS_ALLOC_FAILED", "HIP out of memory")
CUDA_OOM_PATTERNS = tuple(map(re.escape, CUDA_OOM_MARKERS))
# Text that means the disk or the quota is full.
DISK_FULL_MARKERS = ("No space left on device", "[Errno 28]", "Disk quota exceeded", "[Errno 122]",
                     "PytorchStreamWriter failed writing file")
DISK_FULL_PATTERNS = tuple(re.escape(marker) for marker in DISK_FULL_MARKERS)  # diagnose's rule
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException) -> bool:
    """An OSError that means the disk or the quota is full (anywhere PeRL writes)."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def signal_name(signum: int | str | None) -> str | None:
    """SIGKILL for 9 or "sigkill"; "signal 77" for a number without a name; None for None."""
    if signum is None:
        return None
    if isinstance(signum, str):
        return signum.upper()
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def was_killed(status: dict) -> bool:
    """SIGKILL: the kernel's OOM killer, a time limit's last resort or `kill -9`; no checkpoint."""
    return signal_name(status.get("signal")) == "SIGKILL" or status.get("exit_code") in (EXIT_SIGKILL, -signal.SIGKILL)


def was_interrupted(status: dict) -> bool:
    """Stopped on request (Ctrl+C, SIGTERM, scancel): it saved a checkpoint and resumes."""
    return (
        status.get("state") == INTERRUPTED
        or signal_name(status.get("signal")) in ("SIGINT", "SIGTERM")
        or status.get("exit_code") in (*INTERRUPTED_CODES, -signal.SIGINT, -signal.SIGTERM)
    )


def mentions(text: str, markers: Iterable[str]) -> bool:
    return any(marker in text for marker in markers)


# --- a finished worker → the fields to record -----------------------------------------


@dataclass(frozen=True)
class Ending:
    """How a worker ended, as its supervisor saw it.

    rc: the Popen return code (negative = killed by that signal), None when the process
    was not our child (adopted: its exit code is unknowable). The flags say what the
    supervisor did to it: asked it to stop, killed it after the grace period, killed it
    for a stale heartbeat.
    """

    rc: int | None
    pid: int | None = None
    stop_sent: bool = False
    killed: bool = False
    stall_killed: bool = False
    stall_timeout: str = ""  # human-readable, for the message


def final_fields(ending: Ending, status: dict) -> dict[str, Any]:
    """The status.json fields a supervisor records after a worker ended.

    The worker's own final state wins (it knows best) unless the supervisor killed it;
    what the worker did not record is derived from the exit status. `ended` is left to
    the caller (it needs a clock).
    """
    worker_final = status.get("state") in TERMINAL and status.get("pid") in (None, ending.pid)
    fields: dict[str, Any] = {}
    rc = ending.rc
    if rc == EXIT_BUSY:
        return fields  # it never started: status.json belongs to the worker that holds the lock
    if ending.stall_killed:
        fields.update(
            state=FAILED, cause=CAUSE_STALLED, exit_code=EXIT_SIGKILL, signal="SIGKILL",
            error=f"stalled: no heartbeat for {ending.stall_timeout}; killed by perl run",
        )
    elif rc is not None and rc < 0:
        name = signal_name(-rc)
        fields.update(exit_code=128 - rc, signal=name)
        if not worker_final or ending.killed:
            if ending.stop_sent:
                fields.update(state=INTERRUPTED, error=f"stopped by perl run ({name})")
            else:
                fields.update(state=FAILED, error=f"killed by {name}")
    elif rc is not None:
        fields["exit_code"] = rc
        if not worker_final:
            if rc == EXIT_OK:
                fields["state"] = COMPLETED
            elif rc in INTERRUPTED_CODES:
                fields["state"] = INTERRUPTED
            else:
                fields.update(state=FAILED, error=status.get("error") or f"worker exited with code {rc}; see train.log")
    elif not worker_final:
        if ending.stop_sent:
            fields.update(state=INTERRUPTED, error="stopped by perl run")
        else:
            fields.update(state=FAILED, error="worker ended while no scheduler was watching it (exit code unknown)")
    return fields


# --- remedies: can a retry fix it, and with what? --------------------------------------


def smaller_batch(batch: int, accumulation: int) -> tuple[int, int] | None:
    """The per-device batch and accumulation after a CUDA OOM, or None at batch 1.

    Half the batch when that divides the effective batch (batch × accumulation), else
    the next divisor down; the effective batch, a multiple of num_generations, stays the
    same, so the retried run is comparable with the others.
    """
    product = batch * accumulation
    new = next((b for b in range(batch // 2, 0, -1) if product % b == 0), None)
    return None if new is None else (new, product // new)


CUDA_OOM_RETRY = "CUDA out of memory"  # the retry cause recorded in status.json's `retries`


@dataclass(frozen=True)
class Retry:
    cause: str  # shown and recorded in status.json's `retries`
    runtime: dict[str, Any] = field(default_factory=dict)  # config.json's runtime overrides for the retry


def retry_plan(
    ending: Ending, status: dict, log_text: str, *, tries_left: int, training: dict, runtime: dict,
) -> Retry | None:
    """A retry that can fix this failure, or None (code errors, signals, config errors)."""
    if tries_left <= 0 or status.get("cause") in (CAUSE_DISK_FULL, CAUSE_COLLAPSED):  # a retry would do the same
        return None
    if ending.stall_killed:
        return Retry("stalled (no heartbeat)", dict(runtime))  # resumes from its last checkpoint
    rc = ending.rc
    if rc is None or rc == EXIT_CONFIG_ERROR or rc < 0:
        return None
    if mentions(f"{status.get('error') or ''}\n{log_text}", CUDA_OOM_MARKERS):
        batch = runtime.get("per_device_train_batch_size", training.get("per_device_train_batch_size"))
        accum = runtime.get("gradient_accumulation_steps", training.get("gradient_accumulation_steps"))
        if not isinstance(batch, int) or not isinstance(accum, int):
            return None
        smaller = smaller_batch(batch, accum)
        if smaller is None:
            return None
        return Retry(CUDA_OOM_RETRY, {"per_device_train_batch_size": smaller[0],
                                             "gradient_accumulation_steps": smaller[1]})
    return None
