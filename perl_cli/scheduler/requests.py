"""Requests to a running `perl run`: a mail spool, not a shared file.

A second `perl run` hands experiments to the run that holds the suite (hand-off), and
`perl cancel --only` asks it to stop some. Each request is its own file in
`<suite>/.requests/`, and each gets its own answer:

    <id>.request.json   written by the requester (temporary name, then rename: never half)
    <id>.taken.json     the same file, renamed by the run when it takes the request
    <id>.reply.json     the run's answer, per experiment: what it did and why

The rename to `.taken` is the one atomic step that decides who owns a request: a
requester that gives up (its run ended, or it waited too long) withdraws by deleting
`<id>.request.json`; if that file is already gone, the run has taken it and its
reply is coming. So a request is either answered or withdrawn, never dropped, and
two requests never share a file that one of them could overwrite or delete.

On arrival everything in a request is checked as the suite file is checked (config.py):
an experiment's name (one safe path component: nothing can run outside the suite
directory), its suite, every setting against the schema, the settings together, and
its fingerprint, recomputed. Refusals are answered with the reason.

This module knows nothing of processes: the run session passes what to do with valid
requests (`Handlers`), so any backend's session can serve the spool.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from perl_cli import schema, state
from perl_cli.config import IDENTITY_KEYS, Experiment, fingerprint, settings_problems
from perl_cli.experiments_view import OVERRIDES_KEY
from perl_cli.names import name_problem

SPOOL_DIR = ".requests"  # in the suite directory
REQUEST_SUFFIX = ".request.json"
TAKEN_SUFFIX = ".taken.json"
REPLY_SUFFIX = ".reply.json"
VERSION = 1
ADD, CANCEL = "add", "cancel"
# A hand-off of a large suite is a few KB per experiment; a request larger than this is refused unread.
MAX_REQUEST_BYTES = 32 * 1024 * 1024
MAX_PATTERNS = 10_000
SERVE_AT_MOST = 16  # requests answered per tick of the run loop (a flood never starves the workers)
REPLY_WAIT_S = 120.0  # how long a requester waits while the run lives (it answers within a tick or two)
TAKEN_REPLY_WAIT_S = 30.0  # after the run took the request, how long its reply may take

# What a run did with one experiment of a request.
QUEUED = "queued"  # handed over: planned and queued (resumes from its checkpoint)
RUNNING = "running"  # already running (or adopted: a worker an earlier run left)
WAITING = "waiting"  # already in the run's queue
SKIPPED = "skipped"  # already completed, nothing to do
CANCELLED = "cancelled"  # cancel: it was stopped (running) or taken out of the queue
ENDED = "ended"  # cancel: it was not queued or running (completed, failed, ...): nothing to cancel
REFUSED = "refused"  # not done; `reason` says why, `code` is the exit code it means (2: as asked, never; 1: not now)


class SpoolError(OSError):
    """The spool cannot be used (not a directory, read-only): the message says which path."""


@dataclass
class Result:
    name: str
    outcome: str
    reason: str = ""
    code: int = 0  # the requester's exit code this outcome stands for

    @classmethod
    def refused(cls, name: str, reason: str, code: int = 2) -> Result:
        return cls(name, REFUSED, reason, code)


@dataclass
class Reply:
    id: str
    results: list[Result] = field(default_factory=list)
    error: str | None = None  # the whole request was refused (unreadable, another suite, ...)
    pid: int | None = None  # the run that answered

    @property
    def exit_code(self) -> int:
        codes = [r.code for r in self.results] + ([2] if self.error else [])
        return max(codes, default=0)

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "id": self.id, "pid": self.pid, "answered": state.now(), "error": self.error,
                "results": [asdict(r) for r in self.results]}

    @classmethod
    def from_json(cls, data: Any, rid: str) -> Reply:
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            return cls(rid, error="the reply is unreadable")
        results = [Result(str(r.get("name")), str(r.get("outcome")), str(r.get("reason") or ""), int(r.get("code") or 0))
                   for r in data["results"] if isinstance(r, dict)]
        error = data.get("error")
        return cls(rid, results, error if isinstance(error, str) else None, data.get("pid"))


@dataclass
class Handlers:
    """What the run session does with valid requests (each returns one Result per experiment)."""

    add: Callable[[list[Experiment]], list[Result]]
    cancel: Callable[[list[str]], list[Result]]
    overrides: tuple[str, ...] = ()  # the run's --set: a hand-off must carry the same


def spool_dir(suite_dir: Path) -> Path:
    return Path(suite_dir) / SPOOL_DIR


def check_spool(suite_dir: Path) -> None:
    """The spool is a directory we can write (created if missing); SpoolError names the problem."""
    path = spool_dir(suite_dir)
    if os.path.lexists(path) and (path.is_symlink() or not path.is_dir()):
        raise SpoolError(f"{path} is not a directory (perl keeps its request files there): remove it.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpoolError(f"cannot create {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise SpoolError(f"cannot write in {path}: permission denied")


# --- the requester's side --------------------------------------------------------------


def submit(suite_dir: Path, kind: str, body: dict[str, Any], *, to: int | None) -> str:
    """Write one request atomically; its id (the reply comes as <id>.reply.json)."""
    check_spool(suite_dir)
    rid = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    request = {"version": VERSION, "kind": kind, "id": rid, "to": to, "from": os.getpid(), "sent": state.now(), **body}
    # atomic_write_json: a temporary file (.<name>.*.tmp, never listed as a request), fsync, rename.
    state.atomic_write_json(spool_dir(suite_dir) / f"{rid}{REQUEST_SUFFIX}", request)
    return rid


def await_reply(suite_dir: Path, rid: str, *, alive: Callable[[], bool], timeout_s: float = REPLY_WAIT_S,
                poll_s: float = 0.05) -> Reply | None:
    """The run's reply; None when the request was withdrawn unanswered (nothing was done).

    Waits while `alive()` (the addressed run still holds the suite) and at most `timeout_s`.
    """
    spool = spool_dir(suite_dir)
    request, reply = spool / f"{rid}{REQUEST_SUFFIX}", spool / f"{rid}{REPLY_SUFFIX}"
    deadline = time.monotonic() + timeout_s
    while True:
        got = _take_reply(reply, rid)
        if got is not None:
            return got
        if time.monotonic() > deadline or not alive():
            break
        time.sleep(poll_s)
    try:
        os.unlink(request)  # withdraw: only possible while the run has not taken it
        return None
    except FileNotFoundError:
        pass
    # Taken: the run is answering (or died while it did).
    deadline = time.monotonic() + TAKEN_REPLY_WAIT_S
    while time.monotonic() < deadline:
        got = _take_reply(reply, rid)
        if got is not None:
            return got
        if not alive() and not os.path.lexists(spool / f"{rid}{TAKEN_SUFFIX}"):
            got = _take_reply(reply, rid)
            if got is not None:
                return got
            break
        time.sleep(poll_s)
    return Reply(rid, error="the run took the request but ended before answering it; `perl status` shows what it did")


def _take_reply(path: Path, rid: str) -> Reply | None:
    try:
        data = state.load_json(path, max_bytes=MAX_REQUEST_BYTES)
    except FileNotFoundError:
        return None
    except state.Unreadable as exc:
        data = {"error": str(exc)}
    with contextlib.suppress(OSError):
        os.unlink(path)  # our own reply: nobody else reads it
    return Reply.from_json(data, rid)


# --- the run's side ---------------------------------------------------------------------


def pending(suite_dir: Path) -> list[Path]:
    """Requests not yet taken, oldest first (ids start with the time in ns)."""
    try:
        names = os.listdir(spool_dir(suite_dir))
    except OSError:
        return []
    return [spool_dir(suite_dir) / n for n in sorted(names) if n.endswith(REQUEST_SUFFIX) and not n.startswith(".")]


def sweep(suite_dir: Path, *, now: float | None = None) -> list[str]:
    """At the start of a run: remove what nobody waits for any more; the names removed.

    A `.taken.json` is a request an ended run took and never answered (its requester has
    said so); a request or reply older than a requester ever waits has no requester left.
    """
    spool = spool_dir(suite_dir)
    try:
        names = os.listdir(spool)
    except OSError:
        return []
    now = time.time() if now is None else now
    too_old = REPLY_WAIT_S + TAKEN_REPLY_WAIT_S
    removed = []
    for name in names:
        path = spool / name
        try:
            age = now - path.lstat().st_mtime
        except OSError:
            continue
        if name.endswith(TAKEN_SUFFIX) or (name.endswith((REQUEST_SUFFIX, REPLY_SUFFIX)) and age > too_old) \
                or (name.startswith(".") and name.endswith(".tmp") and age > too_old):
            _remove(path)
            removed.append(name)
    return removed


def serve(suite_dir: Path, suite: str, handlers: Handlers, *, limit: int = SERVE_AT_MOST) -> list[Reply]:
    """Take and answer up to `limit` requests; the replies (also written for their requesters)."""
    answered = []
    spool = spool_dir(suite_dir)
    for path in pending(suite_dir)[:limit]:
        rid = path.name[: -len(REQUEST_SUFFIX)]
        taken = spool / f"{rid}{TAKEN_SUFFIX}"
        try:
            os.rename(path, taken)
        except FileNotFoundError:
            continue  # withdrawn by its requester a moment ago
        except OSError:
            continue  # e.g. a read-only spool: the requester withdraws it when it gives up
        try:
            data = state.load_json(taken, root=spool, max_bytes=MAX_REQUEST_BYTES)
        except (OSError, state.Unreadable) as exc:
            reply = Reply(rid, error=f"the request is unreadable: {exc}")
        else:
            reply = answer(data, rid, suite, Path(suite_dir), handlers)
        reply.pid = os.getpid()
        with contextlib.suppress(OSError):
            state.atomic_write_json(spool / f"{rid}{REPLY_SUFFIX}", reply.to_json())
        _remove(taken)
        answered.append(reply)
    return answered


def answer(data: Any, rid: str, suite: str, suite_dir: Path, handlers: Handlers) -> Reply:
    """Check one request and carry it out through `handlers`."""
    if not isinstance(data, dict):
        return Reply(rid, error="the request is not a JSON object")
    if data.get("version") != VERSION:
        return Reply(rid, error=f"request version {data.get('version')!r}: this perl run reads version {VERSION}")
    if data.get("suite") != suite:
        return Reply(rid, error=f"the request is for suite {data.get('suite')!r}, this run is suite {suite!r}")
    kind = data.get("kind")
    if kind == ADD:
        return _answer_add(data, rid, suite, suite_dir, handlers)
    if kind == CANCEL:
        patterns = data.get("patterns")
        if not isinstance(patterns, list) or not patterns or len(patterns) > MAX_PATTERNS \
                or not all(isinstance(p, str) and p and len(p) <= 1000 for p in patterns):
            return Reply(rid, error="a cancel request needs `patterns`: a non-empty list of experiment names or globs")
        return Reply(rid, handlers.cancel(list(dict.fromkeys(patterns))))
    return Reply(rid, error=f"unknown request kind {kind!r} (expected {ADD!r} or {CANCEL!r})")


def _answer_add(data: dict, rid: str, suite: str, suite_dir: Path, handlers: Handlers) -> Reply:
    entries = data.get("experiments")
    if not isinstance(entries, list):
        return Reply(rid, error="a hand-off request needs `experiments`: a list of resolved experiments")
    overrides = data.get("overrides", [])
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        return Reply(rid, error="`overrides` must be a list of --set strings")
    if tuple(overrides) != tuple(handlers.overrides):
        theirs = " ".join(f"--set {o}" for o in handlers.overrides) or "no --set"
        return Reply(rid, error=f"the run runs with {theirs}; the request asks for "
                                f"{' '.join(f'--set {o}' for o in overrides) or 'no --set'}")
    if data.get("fresh"):
        return Reply(rid, error="--fresh cannot be handed to a running run")
    results: list[Result] = []
    valid: list[Experiment] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        exp, problem = check_experiment(entry, suite, suite_dir)
        label = entry.get("name") if isinstance(entry, dict) and isinstance(entry.get("name"), str) else f"#{i + 1}"
        if exp is None:
            results.append(Result.refused(label[:200], problem or "invalid"))
        elif exp.name in seen:
            results.append(Result.refused(exp.name, "named twice in the request"))
        else:
            seen.add(exp.name)
            valid.append(exp)
    if valid:
        results += handlers.add(valid)
    return Reply(rid, results)


def check_experiment(entry: Any, suite: str, suite_dir: Path) -> tuple[Experiment | None, str | None]:
    """A resolved experiment from a request, checked like one from the suite file; (experiment, problem)."""
    if not isinstance(entry, dict):
        return None, "not a resolved experiment (a JSON object)"
    name = entry.get("name")
    problem = name_problem(name)
    if problem:
        return None, f"{name!r} cannot be an experiment name ({problem})"
    if entry.get("suite") != suite:
        return None, f"it belongs to suite {entry.get('suite')!r}, not {suite!r}"
    exp_dir = Path(suite_dir) / name
    # name_problem allows one plain path component only; a link planted in its place may not lead out either.
    if exp_dir.resolve().parent != Path(suite_dir).resolve():
        return None, f"{exp_dir} leads outside the suite directory"
    config = {k: v for k, v in entry.items() if k not in IDENTITY_KEYS and k != OVERRIDES_KEY}
    problem = _schema_problem(config)
    if problem:
        return None, problem
    try:
        problems = settings_problems(config)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        problems = [f"{type(exc).__name__}: {exc}"]
    if problems:
        return None, "; ".join(problems)
    recorded, computed = entry.get("fingerprint"), fingerprint(config)
    if recorded != computed:
        return None, f"its fingerprint {recorded!r} is not that of its settings ({computed})"
    return Experiment(name, suite, config, computed), None


def _schema_problem(config: dict[str, Any]) -> str | None:
    """Every section and setting of the schema, each of its type and range, nothing else."""
    sections = set(schema.SCHEMA)
    if set(config) != sections:
        extra, missing = sorted(set(config) - sections), sorted(sections - set(config))
        return f"its sections are not the schema's ({'unknown: ' + ', '.join(map(str, extra)) if extra else ''}" \
               f"{'; ' if extra and missing else ''}{'missing: ' + ', '.join(missing) if missing else ''})"
    for section, fields in schema.SCHEMA.items():
        values = config[section]
        if not isinstance(values, dict):
            return f"{section} is not a table"
        unknown = sorted(set(values) - set(fields))
        if unknown:
            return f"unknown setting {section}.{unknown[0]}"
        for key in fields:
            if key not in values:
                return f"{section}.{key} is missing"
            _, problem = schema.coerce(f"{section}.{key}", values[key])  # checked, not changed: the fingerprint is of these
            if problem:
                return f"{section}.{key} {problem}"
    return None


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            os.unlink(path)
