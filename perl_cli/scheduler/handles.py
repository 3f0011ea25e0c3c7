"""Job handles: one interface to a running experiment, wherever it runs.

    handle.poll()       -> outcomes.Ending once it has ended, else None
    handle.terminate()  # ask it to save a checkpoint and stop (SIGTERM / scancel)
    handle.kill()       # stop it now (SIGKILL)
    handle.where        # "gpu 0", "cpu", "node3 (Slurm 123_4)"

Three kinds: `ChildHandle` (a worker this scheduler started: its exit code is known),
`AdoptedHandle` (a worker left by a scheduler that was killed: only whether its pid is
alive is known) and `SlurmTaskHandle` (an array task: its status file and Slurm's
state). The run loops of both backends see only this interface; what an ending means
is decided in perl_cli/outcomes.py. See docs/architecture.md, "The job model".
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from perl_cli import outcomes, state
from perl_cli.scheduler.processes import kill_leftover_group, signal_group

# A Slurm task that has left Slurm's queue without a final status gets this long to
# write one (its last write may be on its way over the shared file system).
SLURM_GONE_GRACE_S = 5.0


class ChildHandle:
    """A worker we started, in its own session (process group)."""

    def __init__(self, name: str, proc: subprocess.Popen, gpu_label: str) -> None:
        self.name = name
        self.proc = proc
        self.pid = proc.pid
        self.where = gpu_label

    def poll(self) -> outcomes.Ending | None:
        rc = self.proc.poll()
        if rc is None:
            return None
        kill_leftover_group(self.pid)  # no orphans: whatever it started goes with it
        return outcomes.Ending(rc, pid=self.pid)

    def terminate(self) -> None:
        signal_group(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        signal_group(self.pid, signal.SIGKILL)


class AdoptedHandle:
    """A worker left running by a scheduler that died: a pid and its start time."""

    def __init__(self, name: str, pid: int, pid_start_time: float | None, gpu_label: str) -> None:
        self.name = name
        self.pid = pid
        self.pid_start_time = pid_start_time
        self.where = gpu_label

    def poll(self) -> outcomes.Ending | None:
        if state.process_alive(self.pid, self.pid_start_time):
            return None
        return outcomes.Ending(None, pid=self.pid)  # not our child: its exit code is unknowable

    def terminate(self) -> None:
        signal_group(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        signal_group(self.pid, signal.SIGKILL)


class SlurmTaskHandle:
    """A Slurm array task, seen through its status.json and Slurm's state of it."""

    def __init__(self, name: str, exp_dir: Path, task_id: str) -> None:
        self.name = name
        self.dir = Path(exp_dir)
        self.task_id = task_id
        self.status: dict[str, Any] = {}
        self.slurm_state: str | None = None
        self._gone_since: float | None = None

    @property
    def where(self) -> str:
        host = self.status.get("host")
        gpu = self.status.get("gpu")
        on = f"{host}, gpu {gpu}" if host and gpu not in (None, "cpu") else (host or "queued")
        return f"{on} (Slurm {self.task_id})"

    def poll(self, states: dict[str, str] | None = None, *, cancelled: bool = False) -> outcomes.Ending | None:
        """Ended when the task recorded a final state, or when Slurm forgot it without one.

        `states` is one `slurm_cli.task_states` answer for all handles (None: Slurm
        unreachable, so the files alone decide).
        """
        from perl_cli.scheduler import slurm_cli

        self.status = state.read_status(self.dir) or {}
        self.slurm_state = None if states is None else states.get(self.task_id)
        active = self.slurm_state in slurm_cli.ACTIVE_STATES
        if self.status.get("state") in outcomes.TERMINAL and not active:
            # While the task is active a final state may be a step of a requeue (interrupted → queued).
            return outcomes.Ending(self.status.get("exit_code"), pid=self.status.get("pid"))
        if states is None:
            return None
        if active:
            self._gone_since = None
            return None
        now = time.monotonic()
        if self._gone_since is None:
            self._gone_since = now
        if now - self._gone_since < SLURM_GONE_GRACE_S and not cancelled:
            return None
        return outcomes.Ending(None, pid=self.status.get("pid"), stop_sent=cancelled or self.slurm_state == "CANCELLED")

    def record_end(self, ending: outcomes.Ending, *, cancelled: bool = False) -> dict:
        """The final status: the task's own, or derived from Slurm's state when it left none."""
        from perl_cli.scheduler import endings

        status = state.read_status(self.dir) or {}
        if status.get("state") in outcomes.TERMINAL:
            return status
        return endings.record(self.dir, ending, extra=endings.from_slurm(self.slurm_state, status, self.task_id,
                                                                           cancelled=cancelled))

    def terminate(self) -> None:
        from perl_cli.scheduler import slurm_cli

        slurm_cli.cancel([self.task_id])

    def kill(self) -> None:
        from perl_cli.scheduler import slurm_cli

        slurm_cli.run(["scancel", "--signal=KILL", self.task_id])
