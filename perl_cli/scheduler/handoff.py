"""Adding work to a running local `perl run` (task-spooler's "queue more").

A second `perl run SUITE` on a suite whose local scheduler is alive does not start a
second scheduler (the run lock forbids it): it hands the experiments the running one is
not already running or queueing to it, through `<suite>/.add` (resolved experiments, as
JSON), and returns. The running scheduler reads and removes the file within a second,
plans the experiments exactly as it planned its own (resume, skip completed, refuse
stale ones, saying so in its output) and queues them.

Refused, with the reason, when the second command asks for what a running scheduler
cannot change: other `--set` overrides than the run's, `--fresh`, or flags that
configure the scheduler itself (GPUs, slots, retries, timeouts).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from perl_cli import state
from perl_cli.config import IDENTITY_KEYS, Experiment
from perl_cli.experiments_view import OVERRIDES_KEY

ADD_FILE = ".add"  # in the suite directory: experiments handed to the running scheduler
PICKUP_WAIT_S = 10.0
# `perl run` flags that configure a scheduler: a running one keeps its own.
SCHEDULER_FLAGS = ("--gpus", "--jobs", "--jobs-per-gpu", "--retries", "--cpu", "--stall-timeout",
                   "--settle-seconds", "--grace-seconds")


def running_scheduler(suite_dir: Path) -> dict[str, Any] | None:
    """run_status.json's scheduler section when a local scheduler on this host is alive."""
    run = state.read_json(suite_dir / state.RUN_STATUS_FILE)
    scheduler = run.get("scheduler") if isinstance(run, dict) else None
    if not isinstance(scheduler, dict) or scheduler.get("backend") != "local":
        return None
    pid = scheduler.get("pid")
    if scheduler.get("host") != state.hostname() or not isinstance(pid, int) or not state.process_alive(pid):
        return None
    return scheduler


def conflicts(scheduler: dict[str, Any], *, overrides: tuple[str, ...], fresh: bool, explicit: frozenset[str]) -> list[str]:
    """Why this command cannot be handed to the running scheduler (empty: it can)."""
    problems = []
    theirs = scheduler.get(OVERRIDES_KEY) or []
    if list(overrides) != list(theirs):
        shown = " ".join(f"--set {o}" for o in theirs) or "no --set"
        problems.append(f"it runs with {shown}, this command asks for {' '.join(f'--set {o}' for o in overrides) or 'no --set'}")
    if fresh:
        problems.append("--fresh would start experiments over under it")
    given = [flag for flag in SCHEDULER_FLAGS if flag in explicit]
    if given:
        problems.append(f"{', '.join(given)} configure{'s' if len(given) == 1 else ''} a scheduler, and it keeps its own")
    return problems


def to_hand_over(experiments: list[Experiment], scheduler: dict[str, Any]) -> list[Experiment]:
    """The experiments the running scheduler does not already run or queue."""
    busy = {n for key in ("running", "queued") for n in scheduler.get(key) or [] if isinstance(n, str)}
    return [e for e in experiments if e.name not in busy]


def request_add(suite_dir: Path, experiments: list[Experiment]) -> None:
    """Add the experiments to the suite's hand-over file (merged with one not yet picked up)."""
    path = suite_dir / ADD_FILE
    wanted = {e["name"]: e for e in _read(path) if isinstance(e, dict) and isinstance(e.get("name"), str)}
    wanted.update({e.name: e.resolved() for e in experiments})
    state.atomic_write_json(path, list(wanted.values()))


def wait_for_pickup(suite_dir: Path, timeout_s: float = PICKUP_WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while (suite_dir / ADD_FILE).exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def read_add_request(suite_dir: Path, suite: str) -> list[Experiment]:
    """Take the handed-over experiments (the file is removed); malformed entries are dropped."""
    path = suite_dir / ADD_FILE
    entries = _read(path)
    with contextlib.suppress(OSError):
        path.unlink()
    out = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("suite") != suite:
            continue
        name, fingerprint = entry.get("name"), entry.get("fingerprint")
        config = {k: v for k, v in entry.items() if k not in IDENTITY_KEYS and k != OVERRIDES_KEY}
        if isinstance(name, str) and isinstance(fingerprint, str) and all(isinstance(v, dict) for v in config.values()):
            out.append(Experiment(name, suite, config, fingerprint))
    return out


def _read(path: Path) -> list:
    # state.read_json: a regular file of bounded size (a FIFO here must not freeze perl run).
    data = state.read_json(path)
    return data if isinstance(data, list) else []
