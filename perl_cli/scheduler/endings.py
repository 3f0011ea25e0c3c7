"""How an ending is written into status.json: the one writer of the ending fields.

A worker's end is seen by its supervisor — the local run loop, the Slurm task on the
node, `perl run --backend slurm --wait` and `perl cancel` (through a `SlurmTaskHandle`).
What the ending *means* is decided in perl_cli/outcomes.py (pure); this module writes it:

- `record_ending`: a worker ended (its exit code, what the supervisor did to it);
- `record_requeue`: Slurm put the task back in its queue (our own time-limit requeue, a
  preemption, `scontrol requeue`, a node failure): the experiment is `queued` again, with
  the requeue and its reason appended to `requeues`, until the task runs again;
- `from_slurm`: a task Slurm let go of without a final status — the fields to record,
  from Slurm's state (pure: readers show the same thing before anyone records it).

`ended` is the worker's own when it wrote one (the moment it stopped), else now.
See docs/architecture.md, "Outcomes" and "The Slurm backend".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perl_cli import outcomes, state


def record_ending(exp_dir: Path | str, ending: outcomes.Ending, **extra: Any) -> dict:
    """Write the ending of a worker into status.json (best effort on a full disk); the new status.

    `extra` overrides what outcomes.final_fields derives (e.g. a cause the supervisor knows).
    Nothing is written for outcomes.EXIT_BUSY: that worker never started, the directory is
    another live worker's.
    """
    if ending.rc == outcomes.EXIT_BUSY:
        return state.read_status(exp_dir) or {}
    status = state.read_status(exp_dir) or {}
    fields = {**outcomes.final_fields(ending, status), **extra}
    if status.get("ended") is None or status.get("state") not in outcomes.TERMINAL:
        fields.setdefault("ended", state.now())
    return state.write_status_best_effort(exp_dir, **fields)


def record_requeue(exp_dir: Path | str, *, cause: str, reason: str, exit_code: int | None = None,
                   error: str | None = None, ended: float | None = None) -> dict:
    """The task is back in Slurm's queue: `queued`, with the requeue and its reason recorded.

    `ended`: when the attempt stopped, if not now (an attempt that left no word: its last heartbeat).
    """
    status = state.read_status(exp_dir) or {}
    entry = {"cause": cause, "reason": reason, "at": state.now(), "attempt": status.get("attempt"),
             "step": status.get("step")}
    return state.write_status_best_effort(
        exp_dir, state=outcomes.QUEUED, ended=ended or status.get("ended") or state.now(), exit_code=exit_code,
        signal=None,
        pid=None, pid_start_time=None, cause=None,
        error=error or f"requeued by Slurm ({reason}) at step {status.get('step')}; waits in the queue",
        requeues=[*(status.get("requeues") or []), entry],
    )


# Slurm's end states (sacct State) and what they mean for an experiment whose task left no final status.
SLURM_TIME_LIMIT_STATES = ("TIMEOUT", "DEADLINE")
SLURM_NODE_STATES = ("NODE_FAIL", "BOOT_FAIL")
SLURM_CANCELLED_STATES = ("CANCELLED", "GONE")  # GONE: an array task cancelled while pending is forgotten


def from_slurm(slurm_state: str | None, status: dict, task_id: str, *, cancelled: bool = False) -> dict[str, Any]:
    """The fields to record for a task Slurm has let go of while status.json still says it had not ended.

    `slurm_state` is Slurm's (squeue/sacct) or GONE; `cancelled`: `perl cancel` did it.
    Pure: the next `perl run` records these, and readers show them until it does.
    """
    seen = slurm_state or "unknown to squeue and sacct"
    waiting = status.get("state") == outcomes.QUEUED  # this attempt never started
    if cancelled or slurm_state in SLURM_CANCELLED_STATES:
        by = "perl cancel" if cancelled else "Slurm (scancel)"
        if waiting:
            return {"state": outcomes.INTERRUPTED, "cause": outcomes.CAUSE_CANCELLED_PENDING,
                    "error": f"cancelled by {by} while it waited in Slurm's queue (task {task_id}); it did not start"}
        return {"state": outcomes.INTERRUPTED, "error": f"cancelled by {by} (Slurm task {task_id}, {seen})"}
    if slurm_state in SLURM_TIME_LIMIT_STATES:
        return {"state": outcomes.FAILED, "cause": outcomes.CAUSE_TIME_LIMIT,
                "error": f"Slurm task {task_id} hit its time limit ({seen}) before it could requeue"}
    if slurm_state in SLURM_NODE_STATES:
        return {"state": outcomes.FAILED, "cause": outcomes.CAUSE_NODE_FAILURE,
                "error": f"the node of Slurm task {task_id} failed ({seen}); no requeue followed"}
    if slurm_state == "OUT_OF_MEMORY":
        return {"state": outcomes.FAILED, "cause": outcomes.CAUSE_MEMORY_LIMIT,
                "error": f"Slurm task {task_id} exceeded its memory request (OUT_OF_MEMORY)"}
    if slurm_state == "PREEMPTED":
        return {"state": outcomes.FAILED, "cause": outcomes.CAUSE_PREEMPTED,
                "error": f"Slurm task {task_id} was preempted and not requeued"}
    return {"state": outcomes.FAILED, "error": f"Slurm task {task_id} ended without a final status (Slurm state: {seen})"}
