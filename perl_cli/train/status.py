"""The worker's side of status.json: lifecycle fields and a heartbeat thread.

While the worker is alive it is the file's only writer; the main thread
(step updates, final state) and the heartbeat thread both write through one lock, so
updates never interleave.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from perl_cli import state

HEARTBEAT_SECONDS = 5.0


class StatusWriter:
    def __init__(self, exp_dir: Path, *, fingerprint: str | None, total_steps: int | None) -> None:
        self._dir = exp_dir
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
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
        )

    def start(self) -> None:
        self._write()
        self._thread = threading.Thread(target=self._beat, name="perl-heartbeat", daemon=True)
        self._thread.start()

    def update(self, **fields: Any) -> None:
        with self._lock:
            self._status.update({"heartbeat": state.now(), **fields})
            state.write_status(self._dir, self._status)

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
