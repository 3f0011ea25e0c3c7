"""What the local backend does with a valid request from another command (requests.py checks
and answers them; handoff.py is the requesting side):

- `take_handed`: experiments a second `perl run` handed over are planned as the run's own
  (planner.Planner.classify, never --fresh), then queued or adopted, each answered;
- `cancel_named`: `perl cancel --only A,B` while the run runs: a queued one leaves the queue,
  a running one is asked to save a checkpoint and exit (`interrupted`, no retry).

Only the local backend serves the spool: a Slurm run's tasks are Slurm's (`perl cancel`
scancels them), and a second `perl run` on a suite a Slurm run holds is refused.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Protocol

from perl_cli import state
from perl_cli.config import Experiment, matching
from perl_cli.scheduler import requests
from perl_cli.scheduler.jobs import Job, Session
from perl_cli.scheduler.processes import find_live_workers


class LocalBackend(Protocol):
    """What serving a request needs of local.LocalBackend (named here, not imported: local.py
    imports this module, and the package keeps no import circles)."""

    session: Session
    queue: deque[Job]
    running: dict[str, Job]
    stopping: bool

    def adopt(self, job: Job) -> None: ...


def serve(backend: LocalBackend) -> None:
    """Answer the hand-off and cancel requests waiting in the suite's spool (a few per tick)."""
    s = backend.session
    handlers = requests.Handlers(add=lambda handed: take_handed(backend, handed),
                                 cancel=lambda patterns: cancel_named(backend, patterns),
                                 overrides=tuple(s.opts.overrides))
    if requests.serve(s.suite_dir, s.opts.suite, handlers):
        s.aggregate_dirty = True


def take_handed(backend: LocalBackend, handed: list[Experiment]) -> list[requests.Result]:
    """Experiments handed over by a second `perl run`: planned as our own, queued, each answered."""
    s = backend.session
    assert s.reporter is not None
    results: list[requests.Result] = []
    candidates = []
    for exp in handed:
        queued = next((j for j in backend.queue if j.name == exp.name), None)
        if exp.name in backend.running:
            results.append(requests.Result(exp.name, requests.RUNNING, f"pid {backend.running[exp.name].pid}"))
        elif queued is not None:
            results.append(requests.Result(exp.name, requests.WAITING))
        elif backend.stopping:
            results.append(requests.Result.refused(exp.name, "the run is stopping (Ctrl+C or `perl cancel`); run "
                                                   f"`perl run {s.opts.suite}` again once it has ended", code=1))
        elif s.disk_full:
            results.append(requests.Result.refused(exp.name, f"the disk is full ({s.disk_full}); the run launches "
                                                   "nothing more", code=1))
        else:
            candidates.append(exp)
    if not candidates:
        return results
    jobs, refusals = s.planner.classify(find_live_workers(s.suite_dir), candidates, fresh=False)
    results += [requests.Result.refused(name, reason) for name, reason in refusals]
    for name, reason in refusals:
        s.reporter.info(f"not added: {name}: {reason}")
    planned = {j.name for j in jobs} | {n for n, _ in refusals}
    results += [requests.Result(e.name, requests.SKIPPED) for e in candidates if e.name not in planned]
    for job in jobs:
        before = s.results.pop(job.name, None)
        s.run_experiments[job.name] = job.exp
        s.all_experiments = [e for e in s.all_experiments if e.name != job.name] + [job.exp]
        if job.name not in s.run_names:
            s.run_names.append(job.name)
        if job.action == "adopt":
            backend.adopt(job)
            results.append(requests.Result(job.name, requests.RUNNING, f"adopted: pid {job.pid}, left by an earlier run"))
            continue
        backend.queue.append(job)
        again = f"it had {'failed' if before == state.FAILED else 'been ' + before} in this run; " if before else ""
        results.append(requests.Result(job.name, requests.QUEUED, again + (
            "resumes from its last checkpoint" if state.last_checkpoint(job.dir) else "starts from the beginning")))
    s.reporter.grow(len(jobs))
    if jobs:
        s.reporter.info(f"added {len(jobs)} experiment(s) handed over by another `perl run`: "
                        f"{', '.join(j.name for j in jobs)}")
    return results


def cancel_named(backend: LocalBackend, patterns: list[str]) -> list[requests.Result]:
    """`perl cancel --only A,B` while we run: queued ones leave the queue, running ones save a checkpoint
    and exit (`interrupted`, no retry); anything else is answered with what it is."""
    s = backend.session
    assert s.reporter is not None
    known = list(dict.fromkeys([*backend.running, *(j.name for j in backend.queue), *s.run_names,
                                *state.experiment_dirs(s.suite_dir)]))
    unknown = [p for p in patterns if not matching(known, p)]
    if unknown:  # a usage error, as in the readers' --only: nothing is cancelled
        return [requests.Result.refused(p, f"no experiment of suite {s.opts.suite} is named or matches it")
                for p in unknown]
    results: list[requests.Result] = []
    names = list(dict.fromkeys(n for p in patterns for n in matching(known, p)))
    for name in names:
        job = next((j for j in backend.queue if j.name == name), None)
        if job is not None:
            backend.queue.remove(job)
            s.results[name] = state.INTERRUPTED
            s.reporter.finished(name, state.INTERRUPTED, "cancelled by perl cancel before it started")
            results.append(requests.Result(name, requests.CANCELLED, "it was queued and had not started"))
            continue
        job = backend.running.get(name)
        if job is not None:
            if job.stop_sent or job.handle is None:
                results.append(requests.Result(name, requests.CANCELLED, "it was already stopping"))
                continue
            job.stop_sent = True
            job.kill_at = time.monotonic() + s.opts.grace_seconds
            job.handle.terminate()
            s.reporter.info(f"{name}: cancelled by perl cancel; asked it to save a checkpoint and exit")
            results.append(requests.Result(name, requests.CANCELLED, "it was running: it saves a checkpoint and exits"))
            continue
        now = state.effective_state(state.read_status(s.suite_dir / name))
        results.append(requests.Result(name, requests.ENDED, f"it is {now}: nothing to cancel"))
    s.aggregate_dirty = True
    return results
