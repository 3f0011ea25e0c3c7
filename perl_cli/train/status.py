"""The worker's side of status.json: lifecycle fields, the phase before step 1, and a heartbeat thread.

While the worker is alive it is the file's only writer; the main thread
(step updates, phases, final state) and the heartbeat thread both write through one lock,
so updates never interleave.

Before its first optimizer step a worker may spend minutes building a model, warm-starting
it, loading it or evaluating the base model. It says so in status.json's `phase`:
``{"name": "warm start", "done": 500, "total": 600}`` (done/total null when not counted),
so readers show "warm start 500/600" rather than "0/120". The first step clears it.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from perl_cli import state

HEARTBEAT_SECONDS = 5.0
# Progress within a phase is written at most this often (a warm start reports every step).
PHASE_WRITE_SECONDS = 1.0


class StatusWriter:
    def __init__(self, exp_dir: Path, *, fingerprint: str | None, total_steps: int | None, job: str = "train") -> None:
        """`job`: the kind of work this worker does (scheduler/jobkinds.py), so that readers and `perl eval`
        tell a failed evaluation of a completed experiment from a failed training."""
        self._dir = exp_dir
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._phase_written = 0.0
        # Keep what the scheduler wrote (e.g. gpu, attempt) and overwrite our fields.
        self._status: dict[str, Any] = dict(state.read_status(exp_dir) or {})
        pid = os.getpid()
        started = state.now()
        self._status.update(
            state=state.RUNNING,
            step=0,
            total_steps=total_steps,
            pid=pid,
            pid_start_time=state.process_start_time(pid),
            host=state.hostname(),
            started=started,
            heartbeat=started,
            ended=None,
            exit_code=None,
            error=None,
            fingerprint=fingerprint,
            phase=None,
            resumed_from=None,  # this attempt's: set by the worker once it knows its checkpoint
            job=job,
        )

    def start(self) -> None:
        self._write()
        self._thread = threading.Thread(target=self._beat, name="perl-heartbeat", daemon=True)
        self._thread.start()

    def update(self, **fields: Any) -> None:
        if fields.get("step"):
            fields.setdefault("phase", None)  # training has begun
        with self._lock:
            self._status.update({"heartbeat": state.now(), **fields})
            state.write_status(self._dir, self._status)

    def phase(self, name: str, done: int | None = None, total: int | None = None) -> None:
        """What the worker does before its first step; progress is written at most every PHASE_WRITE_SECONDS."""
        current = self._status.get("phase") or {}
        new_phase = current.get("name") != name
        if not new_phase and done != total and time.monotonic() - self._phase_written < PHASE_WRITE_SECONDS:
            return
        self._phase_written = time.monotonic()
        self.update(phase={"name": name, "done": done, "total": total})

    def finish(self, final_state: str, exit_code: int, error: str | None = None, **fields: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_SECONDS)
        ended = state.now()
        self.update(state=final_state, exit_code=exit_code, error=error, ended=ended, heartbeat=ended, **fields)

    def _write(self) -> None:
        with self._lock:
            state.write_status(self._dir, self._status)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.update()
            except OSError:
                pass  # a full disk must not kill training; the next beat retries
