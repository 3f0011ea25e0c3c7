"""Recording how a worker ended: the one writer of status.json's ending fields.

Every supervisor that sees a worker end — the local run loop (a child or an adopted
worker), the Slurm task on the compute node, and `perl run --backend slurm --wait` /
`perl cancel` for a task that left no final status — records it here:
`outcomes.final_fields` says what the ending means, the caller adds what only it knows
(`extra`: a cause, an error; `amend`: a look at the fields before they are written,
e.g. the local loop's disk-full evidence), `ended` is set when the worker left none,
and the write survives a full disk (rewritten in place, with the disk named as cause).
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
    if keep_final and status.get("state") in outcomes.TERMINAL:
        return status
    fields = {**outcomes.final_fields(ending, status), **(extra or {})}
    if amend is not None:
        amend(fields, status)
    if status.get("ended") is None:
        fields["ended"] = state.now()
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
