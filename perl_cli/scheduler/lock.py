"""The run lock: one `perl run` per suite and output directory.

`<output>/<suite>/.run.lock` is held with `fcntl.flock` for the scheduler's lifetime,
so the kernel frees it the moment its holder dies (even by SIGKILL): a stale lock is
simply taken over. The file also holds the holder's pid, start time and host, for the
"already running (pid N, since T)" message. The file is never deleted (deleting a
flock'ed file lets two processes lock two different inodes); an unlocked file is free.
The descriptor is close-on-exec, so workers never inherit the lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from perl_cli import state
from perl_cli.worker_lock import read_holder


class LockHeld(Exception):
    """Another live `perl run` holds the lock; the message names it."""


class RunLock:
    def __init__(self, suite_dir: Path) -> None:
        self.path = Path(suite_dir) / state.RUN_LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(fd)
            os.close(fd)
            raise LockHeld(_held_message(self.path, holder)) from None
        pid = os.getpid()
        info = {
            "pid": pid,
            "pid_start_time": state.process_start_time(pid),
            "host": state.hostname(),
            "started": state.now(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _held_message(path: Path, holder: dict) -> str:
    suite_dir = path.parent
    pid = holder.get("pid", "?")
    started = holder.get("started")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return (
        f"suite '{suite_dir.name}' in {suite_dir.parent} is already running (pid {pid}, since {since}). "
        f"Watch it with `perl status {suite_dir.name}`, or stop it (Ctrl+C in its terminal, or "
        f"`kill {pid}`) before starting it again."
    )


def holder(suite_dir: Path) -> dict | None:
    """Who holds the suite's run lock ({pid, pid_start_time, host, started}), or None if nobody does."""
    path = Path(suite_dir) / state.RUN_LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return read_holder(fd) or {"pid": None}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
