"""`perl cancel SUITE [--only A,B]`: stop a suite's queued and running work, on either backend.

- Slurm tasks (status.json names a task that has not ended): `scancel`; a running
  worker gets SIGTERM from Slurm, saves a checkpoint and records `interrupted`; a task
  that never started is marked `interrupted` here (slurm.cancel_suite).
- A local `perl run` (it holds the suite's run lock): without --only it gets SIGTERM,
  exactly like Ctrl+C (workers checkpoint, the run exits 130); with --only it finds the
  names in `<suite>/.cancel` and stops just those experiments (SIGTERM, `interrupted`,
  never retried), dropping queued ones, and goes on with the rest.

Everything cancelled resumes from its checkpoint on the next `perl run`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from perl_cli import outcomes, state
from perl_cli.config import ConfigError
from perl_cli.scheduler import lock, slurm

CANCEL_FILE = ".cancel"  # in the suite directory: names a local scheduler must stop (JSON list)


def request_local_cancel(suite_dir: Path, names: list[str]) -> None:
    """Add names to the suite's cancel request (read and removed by the running scheduler)."""
    path = suite_dir / CANCEL_FILE
    wanted = sorted(set(read_cancel_request(path, remove=False)) | set(names))
    state.atomic_write_json(path, wanted)


def read_cancel_request(path: Path, *, remove: bool = True) -> list[str]:
    names = state.read_json(path)  # a regular file of bounded size: a FIFO never freezes the run loop
    if names is None:
        return []
    if remove:
        with contextlib.suppress(OSError):
            path.unlink()
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def _active_local(suite_dir: Path, names: list[str] | None) -> list[str]:
    """Experiments that a local run is running or will run (status not final), among `names`."""
    out = []
    for name, exp_dir in state.experiment_dirs(suite_dir).items():
        status = state.read_status(exp_dir) or {}
        if (names is None or name in names) and status.get("state") == state.RUNNING and not (status.get("slurm")):
            out.append(name)
    return out


def cancel_suite(suite: str, *, output: Path, names: list[str] | None, wait_s: float = 60.0, out=print) -> int:
    """Cancel; the exit code: 0 when something was cancelled or nothing was left to cancel."""
    suite_dir = Path(output) / suite
    if not suite_dir.is_dir():
        raise ConfigError(f"suite '{suite}': nothing under {suite_dir} (no run yet). `perl status` lists the suites "
                          "that have output.")
    if names is not None:
        known = set(state.experiment_dirs(suite_dir))
        unknown = sorted(set(names) - known)
        if unknown:
            raise ConfigError(f"--only {','.join(unknown)}: no such experiment in {suite_dir}; it has "
                              f"{', '.join(sorted(known)) or 'none'}.")
    in_slurm = slurm.cancel_suite(suite_dir, names, wait_s=wait_s, out=out)
    cancelled = len(in_slurm)
    holder = lock.holder(suite_dir)
    if holder is not None and holder.get("pid"):
        pid = int(holder["pid"])
        if holder.get("host") not in (None, state.hostname()):
            raise ConfigError(f"suite '{suite}' is being run by `perl run` on host {holder['host']} (pid {pid}); "
                              "run `perl cancel` there.")
        if names is None:
            os.kill(pid, signal.SIGTERM)
            out(f"asked perl run (pid {pid}) to stop: its workers save a checkpoint and exit.")
            _wait(lambda: state.process_alive(pid, holder.get("pid_start_time")), wait_s)
            cancelled += 1
        else:
            request_local_cancel(suite_dir, names)
            out(f"asked perl run (pid {pid}) to stop {', '.join(names)}.")
            _wait(lambda: state.process_alive(pid, holder.get("pid_start_time")) and bool(_active_local(suite_dir, names)),
                  wait_s)
            cancelled += len(names)
    if not cancelled:
        out(f"suite {suite}: nothing queued or running to cancel.")
    else:
        out(f"suite {suite}: cancelled. {_resume_hint(suite, in_slurm, local=cancelled - len(in_slurm), output=Path(output))}")
    return outcomes.EXIT_OK


def _resume_hint(suite: str, in_slurm: dict[str, list[str]], *, local: int, output: Path) -> str:
    """The command(s) that resume what was cancelled: Slurm tasks with the backend and options they had."""
    import shlex

    where = [] if output == Path("output") else ["--output", str(output)]
    commands = []
    for args in dict.fromkeys(tuple(a) for a in in_slurm.values()):
        names = sorted(n for n, a in in_slurm.items() if tuple(a) == args)
        only = ["--only", ",".join(names)] if len(set(map(tuple, in_slurm.values()))) > 1 else []
        commands.append(f"`{shlex.join(['perl', 'run', suite, *only, *args, *where])}`")
    if local:
        commands.append(f"`{shlex.join(['perl', 'run', suite, *where])}`")
    return " or ".join(commands) + " resumes from the checkpoints."


def _wait(busy, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while busy() and time.monotonic() < deadline:
        time.sleep(0.2)
