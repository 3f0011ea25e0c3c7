"""Recording how a worker ended: the one writer of status.json's ending fields.

Every supervisor that sees a worker end — the local run loop (a child or an adopted
worker), the Slurm task on the compute node, and `perl run --backend slurm --wait` /
`perl cancel` for a task that left no final status — records it here. What the ending
*means* is decided in perl_cli/outcomes.py (pure); this module writes it:

- `record`: a worker ended: `outcomes.final_fields` says what it means, the caller adds
  what only it knows (`extra`: a cause, an error; `amend`: a look at the fields before
  they are written, e.g. the local loop's disk-full evidence); `ended` is set when the
  attempt left none; the write survives a full disk (rewritten in place, with the disk
  named as cause). Nothing is written for outcomes.EXIT_BUSY: that worker never started,
  the directory is another live worker's.
- `record_requeue`: Slurm put the task back in its queue (our own time-limit requeue, a
  preemption, `scontrol requeue`, a node failure): the experiment is `queued` again, with
  the requeue and its reason appended to `requeues`, until the task runs again;
- `from_slurm`: a task Slurm let go of without a final status — the fields to record,
  from Slurm's state (pure: readers show the same thing before anyone records it).

See docs/architecture.md, "Outcomes" and "The Slurm backend".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from perl_cli import outcomes, state


def record(exp_dir: Path | str, ending: outcomes.Ending, *, extra: dict[str, Any] | None = None,
           amend: Callable[[dict[str, Any], dict[str, Any]], None] | None = None, keep_final: bool = False) -> dict:
    """Write the ending into status.json; the status as recorded.

    keep_final: a final state the worker recorded itself is left as it is (a Slurm task
    seen from outside: the task, which saw the worker end, has already recorded it).
    """
    status = state.read_status(exp_dir) or {}
    if ending.rc == outcomes.EXIT_BUSY or (keep_final and status.get("state") in outcomes.TERMINAL):
        return status
    fields = {**outcomes.final_fields(ending, status), **(extra or {})}
    if amend is not None:
        amend(fields, status)
    if status.get("ended") is None or status.get("state") not in outcomes.TERMINAL:
        fields.setdefault("ended", state.now())  # this attempt's end, not an earlier one's
    if all(status.get(k) == v for k, v in fields.items()):
        return status
    try:
        return state.update_status(exp_dir, **fields)
    except OSError as exc:
        if not outcomes.is_disk_full(exc):
            raise
        if fields.get("cause") != outcomes.CAUSE_DISK_FULL:
            fields.update(cause=outcomes.CAUSE_DISK_FULL, error=f"{fields.get('error') or status.get('error')} "
                                                                 f"(the disk is full: {exc.strerror} writing {state.STATUS_FILE})")
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
