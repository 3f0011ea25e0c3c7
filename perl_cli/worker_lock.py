"""The per-experiment lock: at most one live worker per experiment directory.

Planning (perl_cli/scheduler/planning.py) already never starts an experiment that has a
live worker or a Slurm task; this lock is the last line of defence for what planning
cannot see (two `perl run`s on different machines that share the file system, a Slurm
task requeued behind PeRL's back). `<exp>/.worker.lock` is held with `fcntl.flock` by
the worker for its whole life (over NFS, Linux emulates flock with POSIX locks, which
NFSv4 shares between clients), so the kernel frees it when the worker dies, even by
SIGKILL. The file holds the holder's pid and host for the refusal's message and is
never deleted (deleting a flock'ed file lets two processes lock two inodes).

A Slurm task takes the lock *before* it records `running`, and hands its descriptor to
the worker it starts (`INHERITED_ENV` names it): the worker checks that the descriptor
is this directory's lock and that it holds it, so nothing can slip in between the task's
check and the worker's start. A worker that finds the lock held exits with
`outcomes.EXIT_BUSY` without touching status.json (it belongs to the live worker), and
supervisors record nothing for that code.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from perl_cli import state

LOCK_FILE = ".worker.lock"
INHERITED_ENV = "PERL_WORKER_LOCK_FD"  # a descriptor of LOCK_FILE, already locked by the parent


class Busy(Exception):
    """Another live worker holds the experiment; the message names it."""


def read_holder(fd: int) -> dict:
    """The JSON record a lock file's holder wrote into it ({} when unreadable); the run lock's too."""
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def acquire(exp_dir: Path | str, *, inheritable: bool = False) -> int:
    """Lock `exp_dir` for this process; the descriptor (keep it open), or Busy.

    A descriptor named by INHERITED_ENV that is this directory's lock file is taken as it
    is (flock on the same open file description succeeds for its holder's children).
    """
    path = Path(exp_dir) / LOCK_FILE
    inherited = os.environ.get(INHERITED_ENV, "")
    if inherited.isdigit() and _same_file(int(inherited), path):
        fd = int(inherited)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a no-op for the holder; Busy-proof
        return fd
    flags = os.O_RDWR | os.O_CREAT | (0 if inheritable else os.O_CLOEXEC)
    fd = os.open(path, flags, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = read_holder(fd)
        os.close(fd)
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
        raise Busy(f"another worker ({who}) is running experiment {Path(exp_dir).name} in {exp_dir}; "
                   "this one did not start (two workers on one directory would mix their checkpoints "
                   "and metrics). `perl status` shows it; `perl cancel` stops it.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps({"pid": os.getpid(), "host": state.hostname(), "since": state.now()}) + "\n").encode(), 0)
    if inheritable:
        os.set_inheritable(fd, True)
    return fd

