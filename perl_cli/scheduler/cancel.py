"""`perl cancel SUITE [--only A,B]`: stop a suite's queued and running work, on either backend.

- Slurm tasks (status.json names a task that has not ended): `scancel`; a running
  worker gets SIGTERM from Slurm, saves a checkpoint and records `interrupted`; a task
  that never started is marked `interrupted` here (slurm.cancel_suite).
- A local `perl run` (it holds the suite's run lock): without --only it gets SIGTERM,
  exactly like Ctrl+C (workers checkpoint, the run exits 130); with --only the names
  (or globs) go to it as a request (requests.py) and it answers per experiment: taken
  out of its queue, asked to save a checkpoint and exit (`interrupted`, never
  retried), or why there was nothing to cancel (already completed, ...).
- Workers left by a `perl run` that was killed (SIGKILL, a closed terminal): nobody
  holds the lock, but status.json names their pid and its start time; they get
  SIGTERM (saving a checkpoint), and SIGKILL after `--wait-seconds`.

Everything cancelled resumes from its checkpoint on the next `perl run`.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from perl_cli import outcomes, state
from perl_cli.config import ConfigError, matching
from perl_cli.scheduler import endings, jobkinds, lock, requests, slurm
from perl_cli.scheduler.processes import signal_group

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def orphans(suite_dir: Path, names: list[str] | None) -> dict[str, tuple[int, float | None]]:
    """Local workers still alive with no scheduler: {name: (pid, start time)} from status.json."""
    found = {}
    for name, exp_dir in state.experiment_dirs(suite_dir).items():
        if names is not None and name not in names:
            continue
        status = state.read_status(exp_dir) or {}
        pid = status.get("pid")
        if status.get("state") != state.RUNNING or status.get("slurm") or status.get("host") not in (None, state.hostname()):
            continue
        if isinstance(pid, int) and not isinstance(pid, bool) and state.process_alive(pid, status.get("pid_start_time")):
            found[name] = (pid, status.get("pid_start_time"))
    return found


def cancel_suite(suite: str, *, output: Path, names: list[str] | None, wait_s: float = 60.0, out=print, err=None) -> int:
    """Cancel; the exit code: 0 when something was cancelled or nothing was left to cancel, 2 for unknown names."""
    err = err or (lambda line: print(line, file=sys.stderr))
    suite_dir = Path(output) / suite
    if not suite_dir.is_dir():
        raise ConfigError(f"suite '{suite}': nothing under {suite_dir} (no run yet). `perl status` lists the suites "
                          "that have output.")
    dirs = state.experiment_dirs(suite_dir)
    expanded = None if names is None else list(dict.fromkeys(n for p in names for n in matching(dirs, p)))
    in_slurm = slurm.cancel_suite(suite_dir, expanded, wait_s=wait_s, out=out) if expanded != [] else {}
    cancelled = len(in_slurm)
    holder = lock.holder(suite_dir)
    pid = int(holder["pid"]) if holder is not None and holder.get("pid") else None
    words = _local_words(suite_dir, pid, dirs)  # `perl run` or `perl eval [--benchmarks ...]`
    resume = lambda local: _resume_hint(suite, in_slurm, local=local, output=Path(output), words=words)  # noqa: E731
    if holder is not None and pid is not None:
        if holder.get("host") not in (None, state.hostname()):
            raise ConfigError(f"suite '{suite}' is being run by `perl run` on host {holder['host']} (pid {pid}); "
                              "run `perl cancel` there.")
        if names is None:
            if _stopping(suite_dir, pid):
                # A second SIGTERM means "Ctrl+C again: kill them now": it would SIGKILL workers that
                # are saving their checkpoint. The run is already doing what cancel asks.
                out(f"perl {words[0]} (pid {pid}) is already stopping: its workers save a checkpoint and exit "
                    "(Ctrl+C in its terminal again, or `kill` it, to kill them now).")
            else:
                os.kill(pid, signal.SIGTERM)  # the scheduler itself: it stops its workers in order
                out(f"asked perl {words[0]} (pid {pid}) to stop: its workers save a checkpoint and exit.")
            _wait(lambda: state.process_alive(pid, holder.get("pid_start_time")), wait_s)
            out(f"suite {suite}: cancelled. {resume(1)}")
            return EXIT_OK
        # A Slurm run (--wait) serves no requests: its tasks are Slurm's, scancelled above. Asking it
        # would only wait REPLY_WAIT_S for a reply that never comes.
        if _scheduler(suite_dir, pid).get("backend") != "slurm":
            code = _ask_run(suite_dir, suite, names, holder, wait_s, out, err, words)
            if code is not None:
                return code
        # The run ended before it took the request (or is a Slurm run): handled below, as after a killed run.
    return _cancel_orphans(suite_dir, suite, names, dirs, wait_s, cancelled, out, resume)


def _ask_run(suite_dir: Path, suite: str, names: list[str], holder: dict, wait_s: float, out, err,
             words: list[str]) -> int | None:
    """Send the names to the running `perl run`, print its answer; None when it ended without taking them."""
    pid = int(holder["pid"])

    def alive() -> bool:
        now = lock.holder(suite_dir)
        return bool(now) and now.get("pid") == pid and state.process_alive(pid, holder.get("pid_start_time"))

    try:
        rid = requests.submit(suite_dir, requests.CANCEL, {"suite": suite, "patterns": names}, to=pid)
    except OSError as exc:
        raise ConfigError(f"cannot ask perl run (pid {pid}) to cancel: {exc}") from None
    reply = requests.await_reply(suite_dir, rid, alive=alive)
    if reply is None:
        return None
    if reply.error:
        err(f"perl: error: perl run (pid {pid}) refused the request: {reply.error}.")
        return EXIT_FAILED
    stopping = [r.name for r in reply.results if r.outcome == requests.CANCELLED and r.reason.startswith("it was running")]
    unknown = [r.name for r in reply.results if r.outcome == requests.REFUSED]
    if unknown:
        err(f"perl: error: --only {','.join(unknown)}: no such experiment in suite {suite} (queued, running or with "
            f"a directory under {suite_dir}); nothing was cancelled. `perl status {suite}` lists them.")
        return EXIT_USAGE
    for r in reply.results:
        out(f"  {r.name}: {r.outcome}{' (' + r.reason + ')' if r.reason else ''}")
    if stopping:
        out(f"asked perl run (pid {pid}) to stop {', '.join(stopping)}.")
        _wait(lambda: alive() and any(_running(suite_dir / n) for n in stopping), wait_s)
    if any(r.outcome == requests.CANCELLED for r in reply.results):
        out(f"suite {suite}: cancelled. {_resume_hint(suite, {}, local=1, output=Path(suite_dir).parent, words=words)}")
    else:
        out(f"suite {suite}: nothing queued or running to cancel.")
    return EXIT_OK


def _cancel_orphans(suite_dir: Path, suite: str, names: list[str] | None, dirs: dict[str, Path], wait_s: float,
                    cancelled: int, out, resume) -> int:
    """No `perl run` holds the suite: stop the workers a killed one left, and say what the named ones are."""
    if names is not None:
        unknown = [p for p in names if not matching(dirs, p)]
        if unknown:
            raise ConfigError(f"--only {','.join(unknown)}: no such experiment in {suite_dir}; it has "
                              f"{', '.join(sorted(dirs)) or 'none'}.")
    chosen = None if names is None else [n for n in dirs if any(matching([n], p) for p in names)]
    left = orphans(suite_dir, chosen)
    for name, (pid, _) in left.items():
        signal_group(pid, signal.SIGTERM)
        out(f"{name}: its worker (pid {pid}) was left by a `perl run` that ended; asked it to save a checkpoint and exit.")
    deadline = time.monotonic() + wait_s
    alive = dict(left)
    while alive and time.monotonic() < deadline:
        alive = {n: w for n, w in alive.items() if state.process_alive(*w)}
        time.sleep(0.1)
    for name, (pid, _) in alive.items():
        signal_group(pid, signal.SIGKILL)
        out(f"{name}: still running after {wait_s:g}s: killed (pid {pid}).")
    for name, (pid, _) in left.items():
        endings.record(dirs[name], outcomes.Ending(None, pid=pid, stop_sent=True, killed=name in alive), keep_final=True,
                       extra={"error": "stopped by perl cancel (its perl run had ended)"})
    if chosen is not None:
        for name in chosen:
            if name not in left:
                now = state.effective_state(state.read_status(dirs[name]))
                if now not in (state.RUNNING, outcomes.QUEUED):
                    out(f"  {name}: {now}: nothing to cancel.")
    if not cancelled and not left:
        out(f"suite {suite}: nothing queued or running to cancel.")
    else:
        out(f"suite {suite}: cancelled. {resume(len(left))}")
    return EXIT_OK


def _scheduler(suite_dir: Path, pid: int) -> dict:
    """run_status.json's scheduler section when it is that of the `perl run` holding the suite (pid), else {}."""
    run = state.read_json(suite_dir / state.RUN_STATUS_FILE)
    scheduler = run.get("scheduler") if isinstance(run, dict) else None
    return scheduler if isinstance(scheduler, dict) and scheduler.get("pid") == pid else {}


def _stopping(suite_dir: Path, pid: int) -> bool:
    """Whether the `perl run` holding the suite (pid) says that it is stopping."""
    return _scheduler(suite_dir, pid).get("state") == "stopping"


def _running(exp_dir: Path) -> bool:
    return (state.read_status(exp_dir) or {}).get("state") == state.RUNNING


def _local_words(suite_dir: Path, pid: int | None, dirs: dict[str, Path]) -> list[str]:
    """The `perl` subcommand (and its options) that resumes the local run cancelled: what the run
    holding the suite recorded (run_status.json's `rerun`), else `perl eval` when the workers a
    killed run left are evaluations (their status.json's `job`), else `perl run`."""
    recorded = _scheduler(suite_dir, pid).get("rerun") if pid is not None else None
    if isinstance(recorded, list) and recorded and all(isinstance(w, str) for w in recorded):
        return recorded
    left = orphans(suite_dir, None) if pid is None else {}
    if left and all((state.read_status(dirs[n]) or {}).get("job") == jobkinds.EVAL for n in left if n in dirs):
        return jobkinds.perl_words(jobkinds.EVAL)
    return jobkinds.perl_words(jobkinds.TRAIN)


def _resume_hint(suite: str, in_slurm: dict[str, list[str]], *, local: int, output: Path,
                 words: list[str] | None = None) -> str:
    """The command(s) that resume what was cancelled: Slurm tasks with the backend and options they had,
    the local run with `words` (`perl run`, or `perl eval` and its options)."""
    import shlex

    where = [] if output == Path("output") else ["--output", str(output)]
    commands = []
    for words in dict.fromkeys(tuple(a) for a in in_slurm.values()):  # `perl run` or `perl eval`, and options
        names = sorted(n for n, a in in_slurm.items() if tuple(a) == words)
        only = ["--only", ",".join(names)] if len(set(map(tuple, in_slurm.values()))) > 1 else []
        commands.append(f"`{shlex.join(['perl', words[0], suite, *only, *words[1:], *where])}`")
    if local:
        local_words = words or ["run"]
        commands.append(f"`{shlex.join(['perl', local_words[0], suite, *local_words[1:], *where])}`")
    return " or ".join(commands) + " resumes where they stopped (the last checkpoint; an evaluation, its saved batches)."


def _wait(busy, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while busy() and time.monotonic() < deadline:
        time.sleep(0.2)
