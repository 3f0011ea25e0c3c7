"""Worker processes seen from outside: finding them, signalling their process groups.

Workers run in their own session (process group), so a signal reaches a worker and
everything it started (tokenizer pools, data loaders) and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from perl_cli import state


def find_live_workers(suite_dir: Path) -> dict[Path, tuple[int, float | None]]:
    """Processes whose last argument is an experiment directory of this suite."""
    import psutil

    suite_dir = suite_dir.resolve()
    found: dict[Path, tuple[int, float | None]] = {}
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.info["pid"] == me or len(cmdline) < 2:
            continue
        target = Path(cmdline[-1])
        if target.is_absolute() and target.parent == suite_dir and state.process_alive(proc.info["pid"]):
            found[target] = (proc.info["pid"], state.process_start_time(proc.info["pid"]))
    return found


def signal_group(pid: int, sig: int) -> None:
    """Signal the worker's whole process group (its own session), or the pid alone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
            return
        os.kill(pid, sig)


def kill_leftover_group(pgid: int) -> None:
    """After reaping a worker, kill what is left of its group (no orphans)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
