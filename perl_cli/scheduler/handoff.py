"""Adding work to a running local `perl run` (task-spooler's "queue more").

A second `perl run SUITE` on a suite whose local scheduler is alive does not start a
second scheduler (the run lock forbids it): it hands the chosen experiments to the
running one as a request (requests.py: its own file, answered by its own reply) and
prints the answer, per experiment: queued (a failed or cancelled one is queued again
and resumes from its checkpoint), already running or queued, already completed, or
refused and why. It exits by that answer: 0 when everything is queued, running or
done, 2 when something cannot run as asked (stale, invalid), 1 when the run could not
take it now (it is stopping).

Refused before anything is sent, with the reason, when the second command asks for
what a running scheduler cannot change: other `--set` overrides than the run's,
`--fresh`, or flags that configure the scheduler itself (GPUs, slots, retries, timeouts).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from perl_cli import state
from perl_cli.config import Experiment
from perl_cli.experiments_view import OVERRIDES_KEY
from perl_cli.scheduler import lock, requests

# `perl run` flags that configure a scheduler: a running one keeps its own.
SCHEDULER_FLAGS = ("--gpus", "--jobs", "--jobs-per-gpu", "--retries", "--cpu", "--stall-timeout",
                   "--settle-seconds", "--grace-seconds")


def running_scheduler(suite_dir: Path) -> dict[str, Any] | None:
    """The live local `perl run` holding the suite: its lock record (pid, start time, host)
    plus run_status.json's scheduler section (backend, overrides) when that is the same run."""
    holder = lock.holder(suite_dir)
    if not holder or not isinstance(holder.get("pid"), int) or holder.get("host") not in (None, state.hostname()):
        return None
    if not state.process_alive(holder["pid"], holder.get("pid_start_time")):
        return None
    run = state.read_json(suite_dir / state.RUN_STATUS_FILE)
    scheduler = run.get("scheduler") if isinstance(run, dict) else None
    if not isinstance(scheduler, dict) or scheduler.get("pid") != holder["pid"]:
        return None  # it has not written its first run_status.json yet, or it is another kind of run
    if scheduler.get("backend") != "local":
        return None
    return {**scheduler, **holder}


def holds(suite_dir: Path, scheduler: dict[str, Any]) -> Callable[[], bool]:
    """Whether that same run still holds the suite (a requester waits for its answer only so long)."""
    def alive() -> bool:
        now = lock.holder(suite_dir)
        return bool(now) and now.get("pid") == scheduler["pid"] and state.process_alive(
            scheduler["pid"], scheduler.get("pid_start_time"))
    return alive


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


def hand_over(suite_dir: Path, suite: str, experiments: list[Experiment], scheduler: dict[str, Any], *,
              overrides: tuple[str, ...], timeout_s: float = requests.REPLY_WAIT_S) -> requests.Reply | None:
    """Send the experiments to the running run and wait for its answer (None: it ended without taking them)."""
    rid = requests.submit(suite_dir, requests.ADD, {
        "suite": suite, "overrides": list(overrides), "experiments": [e.resolved() for e in experiments],
    }, to=scheduler["pid"])
    return requests.await_reply(suite_dir, rid, alive=holds(suite_dir, scheduler), timeout_s=timeout_s)


DESCRIBE = {
    requests.QUEUED: "queued",
    requests.RUNNING: "already running",
    requests.WAITING: "already queued",
    requests.SKIPPED: "already completed",
    requests.REFUSED: "refused",
}


def describe(reply: requests.Reply, pid: int, suite: str) -> tuple[list[str], list[str]]:
    """(lines for stdout, lines for stderr) saying what the running run did with each experiment."""
    if reply.error:
        return [], [f"`perl run` (pid {pid}) refused the hand-off: {reply.error}."]
    out = [f"  {r.name}: {DESCRIBE.get(r.outcome, r.outcome)}{' (' + r.reason + ')' if r.reason else ''}"
           for r in reply.results]
    queued = [r.name for r in reply.results if r.outcome == requests.QUEUED]
    refused = [r for r in reply.results if r.outcome == requests.REFUSED]
    names = ", ".join(queued[:8]) + (" ..." if len(queued) > 8 else "")
    if queued:
        head = (f"handed {len(queued)} experiment(s) to the running `perl run` (pid {pid}), which queued them: "
                f"{names}. Follow them with `perl status {suite}` or `perl watch`.")
    elif not refused:
        head = f"nothing to add: the chosen experiments are already running, queued or completed in `perl run` (pid {pid})."
    else:
        head = f"`perl run` (pid {pid}) queued none of the chosen experiments."
    err = []
    if refused:
        err.append(f"{len(refused)} experiment(s) not handed over: " + "; ".join(f"{r.name}: {r.reason}" for r in refused[:8]))
    return [head, *out], err
