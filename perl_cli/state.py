"""Files that describe an experiment's state, and the rules for writing them.

The experiment directory is the unit of truth. Every file here is written
by exactly one process at a time, through a temporary file in the same directory that
is fsynced and renamed over the target, so a reader never sees half a file and a kill
never corrupts what was already written.

`status.json` has one owner at a time: the scheduler writes it before it launches a
worker and after it has reaped one; the worker writes it while it is alive. Its
read-modify-writes (`update_status`) also hold an advisory lock (`.status.lock`), because
a few writes do meet: a Slurm task starting while `perl run` records its job id, a
worker's heartbeat thread beside its main thread.
All times are unix epoch seconds (floats).

Readers parse these files with `load_json` (which names what is wrong), `read_json` and
`read_jsonl`, through perl_cli.logtail's safe, bounded reads; which fields must have which
types, and what a malformed file means (`unreadable`), is the read model's business
(perl_cli/experiments_view.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from perl_cli import outcomes
from perl_cli.logtail import TooLarge, UnsafeFile, open_safe, read_head
from perl_cli.outcomes import COMPLETED, FAILED, INTERRUPTED, QUEUED, RUNNING

# Experiment states (contract). Those a supervisor records for a worker (running, queued,
# completed, failed, interrupted) are defined once, with what an ending means, in
# outcomes.py; here the rest.
PENDING = "pending"
STALE = "stale"
# A reader's verdict, never written: status.json or config.json is present but malformed.
UNREADABLE = "unreadable"
STATES = (PENDING, QUEUED, RUNNING, COMPLETED, FAILED, INTERRUPTED, STALE, UNREADABLE)
# The states a status.json may hold (stale and unreadable are readers' verdicts).
WRITTEN_STATES = (PENDING, QUEUED, RUNNING, COMPLETED, FAILED, INTERRUPTED)

# File names inside an experiment directory (contract).
CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
STATUS_LOCK_FILE = ".status.lock"  # held by update_status (an empty file)
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
LOG_FILE = "train.log"
CHECKPOINT_DIR = "checkpoints"
# config.json key with the scheduler's per-attempt adjustments of `training` (after a CUDA
# OOM: half the batch, twice the accumulation); kept out of the fingerprint.
RUNTIME_KEY = "runtime"
# Inside the suite directory.
RUN_STATUS_FILE = "run_status.json"
RUN_LOCK_FILE = ".run.lock"


def now() -> float:
    return time.time()


def hostname() -> str:
    return socket.gethostname()


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once: os.umask can only be read by setting it, which would race with threads that
# create files (the worker's heartbeat thread). Nobody changes it inside PeRL's processes.
_FILE_MODE = 0o666 & ~_current_umask()


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write `text` to `path` so that readers see the old or the new file, never half.

    The file gets the mode a plain open() would give it (0644 under umask 022), not
    mkstemp's private 0600: colleagues on a shared machine read each other's results.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# Byte budgets of what readers parse: our own status/config/eval files are a few KB.
MAX_JSON_BYTES = 1024 * 1024
MAX_JSONL_BYTES = 64 * 1024 * 1024


class Unreadable(ValueError):
    """A file that is present but cannot be used; the message says what is wrong with it."""


def load_json(path: Path | str, *, root: Path | str | None = None, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The parsed file. FileNotFoundError when it is missing; Unreadable (naming the problem) otherwise.

    Opened through logtail.open_safe: a regular file inside `root` (default: its directory),
    at most `max_bytes`, nested no deeper than the JSON parser allows.
    """
    name = Path(path).name
    try:
        data = read_head(path, max_bytes, root)
    except FileNotFoundError:
        raise
    except (UnsafeFile, TooLarge) as exc:
        raise Unreadable(str(exc)) from None
    except OSError as exc:
        raise Unreadable(f"{name}: {exc.strerror or exc}") from None
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise Unreadable(f"{name} is not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise Unreadable(f"{name} is nested too deeply to be JSON we wrote") from None
    except ValueError as exc:
        if not data.strip():
            raise Unreadable(f"{name} is empty") from None
        raise Unreadable(f"{name} is not valid JSON ({exc})") from None


def read_json(path: Path | str, *, root: Path | str | None = None, max_bytes: int = MAX_JSON_BYTES) -> Any | None:
    """The parsed file, or None when it is missing, unsafe, too large or not valid JSON."""
    try:
        return load_json(path, root=root, max_bytes=max_bytes)
    except (OSError, Unreadable):
        return None


def read_jsonl(path: Path | str, *, root: Path | str | None = None, max_bytes: int = MAX_JSONL_BYTES) -> list[dict]:
    """Every complete JSON object line of the first `max_bytes` of `path`; torn or garbled lines are skipped."""
    try:
        with open_safe(path, root) as f:
            data = f.read(max_bytes)
    except OSError:
        return []
    rows: list[dict] = []
    for raw in data.split(b"\n"):
        line = raw.strip()
        if not line:
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def append_jsonl(path: Path | str, obj: dict) -> None:
    """Append one line; a single write() of a short line is atomic enough for a log."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


# --- processes -------------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_start_time(pid: int) -> float | None:
    """When process `pid` started (epoch seconds), or None if it does not exist.

    Stored next to a pid so that a pid reused by an unrelated process after a reboot
    or a wrap-around is not mistaken for our worker.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
        # The command name may contain spaces and parentheses: split after the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        start_ticks = int(fields[19])
        with open("/proc/stat", encoding="ascii") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return btime + start_ticks / _CLOCK_TICKS
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def process_alive(pid: int | None, start_time: float | None = None) -> bool:
    """True if `pid` runs on this host and (when given) started at `start_time`."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if not isinstance(start_time, (int, float)) or isinstance(start_time, bool):
        start_time = None
    actual = process_start_time(pid)
    if actual is None:
        return False
    if _is_zombie(pid):
        return False
    # Start times derive from clock ticks: allow a little slack for rounding.
    return start_time is None or abs(actual - start_time) < 2.0


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
        return stat[stat.rindex(")") + 2 :].split()[0] == "Z"
    except (OSError, ValueError, IndexError):
        return True


# --- the scheduler's lines in train.log ---------------------------------------------------

# What the local scheduler and a Slurm task write before each attempt: readers find the
# last attempt's output by it (perl_cli/scheduler/local.py, diagnose).
LOG_MARK = "[perl run "


def append_log_mark(exp_dir: Path | str, text: str) -> None:
    """One timestamped scheduler line in the experiment's train.log."""
    with open(Path(exp_dir) / LOG_FILE, "a", encoding="utf-8") as f:
        f.write(f"\n{LOG_MARK}{time.strftime('%Y-%m-%d %H:%M:%S')}] {text}\n")


# --- status.json -----------------------------------------------------------------


def read_status(exp_dir: Path | str) -> dict | None:
    status = read_json(Path(exp_dir) / STATUS_FILE)
    return status if isinstance(status, dict) else None


def write_status(exp_dir: Path | str, status: dict) -> dict:
    """Write the whole status object (callers own the file while they write it)."""
    atomic_write_json(Path(exp_dir) / STATUS_FILE, status)
    return status


def write_status_best_effort(exp_dir: Path | str, **fields: Any) -> dict:
    """update_status that still records a final state when the disk is full.

    The atomic write needs a new block for its temporary file; on ENOSPC/EDQUOT the
    status is rewritten in place instead (a short JSON file fits the block it already
    has). If even that fails, the fields are returned unwritten: readers then see a
    `running` experiment whose process is gone and flag it.
    """
    try:
        return update_status(exp_dir, **fields)
    except OSError as exc:
        if not outcomes.is_disk_full(exc):
            raise
    status = read_status(exp_dir) or {}
    status.update(fields)
    text = json.dumps(status, indent=2, sort_keys=True) + "\n"
    try:
        with open(Path(exp_dir) / STATUS_FILE, "r+", encoding="utf-8") as f:
            f.write(text)
            f.truncate()
    except OSError:
        pass
    return status


@contextlib.contextmanager
def _status_lock(exp_dir: Path | str):
    """Hold `.status.lock` of `exp_dir` (flock: released when the descriptor closes, even on
    a kill). Best effort: where the lock file cannot be made (a full disk), go on without it."""
    path = Path(exp_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / STATUS_LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), _FILE_MODE)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def update_status(exp_dir: Path | str, **fields: Any) -> dict:
    """Read-modify-write of status.json, under its lock: no other process's or thread's
    fields are lost in between."""
    with _status_lock(exp_dir):
        status = read_status(exp_dir) or {}
        status.update(fields)
        return write_status(exp_dir, status)


def earlier_attempts_s(status: dict) -> float:
    """Seconds the experiment's attempts before the next one ran (status.json's `run_s_before`).

    Whoever starts or queues a new attempt (it resets `started` and `ended`) carries this
    over, so the time shown counts every attempt: requeues, resumes after a cancel or a crash.
    """
    before = status.get("run_s_before")
    total = float(before) if isinstance(before, (int, float)) and not isinstance(before, bool) and before > 0 else 0.0
    started, ended = status.get("started"), status.get("ended")
    if (status.get("state") != RUNNING and all(isinstance(t, (int, float)) and not isinstance(t, bool)
                                               for t in (started, ended)) and ended >= started):
        total += ended - started
    return total


def is_stalled(status: dict, *, stall_after_s: float = 600.0, at: float | None = None) -> bool:
    """A `running` experiment whose worker stopped beating or vanished from this host.

    A flag on top of `running`, decided from the status file, never from log text.
    """
    if status.get("state") != RUNNING:
        return False
    at = now() if at is None else at
    beat = status.get("heartbeat") or status.get("started")
    if isinstance(beat, (int, float)) and not isinstance(beat, bool) and at - beat > stall_after_s:
        return True
    if status.get("host") == hostname() and isinstance(status.get("pid"), int):
        return not process_alive(status.get("pid"), status.get("pid_start_time"))
    if status.get("host") == hostname() and isinstance(status.get("scheduler_pid"), int):
        # Launched (no worker pid recorded yet) by a scheduler that has died since: orphaned.
        return not process_alive(status.get("scheduler_pid"))
    return False


# --- checkpoints ----------------------------------------------------------------------


def last_checkpoint(exp_dir: Path | str) -> Path | None:
    """The newest complete ``checkpoints/checkpoint-N`` (one with trainer_state.json), if any.

    The worker resumes from it and the scheduler decides "resume" vs "run" from it, so
    both agree on what counts: a checkpoint cut short by a kill has no trainer_state.json.
    """
    best: tuple[int, Path] | None = None
    root = Path(exp_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return None
    for path in root.glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if suffix.isdigit() and (path / "trainer_state.json").exists() and (best is None or int(suffix) > best[0]):
            best = (int(suffix), path)
    return best[1] if best else None


# --- a suite's experiments, derived from their directories --------------------------

OLD_DIR_MARK = ".old-"  # `--fresh` keeps a previous attempt as <name>.old-<timestamp>


def experiment_dirs(suite_dir: Path | str) -> dict[str, Path]:
    """Experiment directories of a suite by name (those with a config or status file)."""
    suite_dir = Path(suite_dir)
    found: dict[str, Path] = {}
    try:
        entries = sorted(suite_dir.iterdir())
    except OSError:
        return found
    for entry in entries:
        if OLD_DIR_MARK in entry.name or entry.name.startswith("."):
            continue
        # lexists: a status file that is a dangling or hostile link is still an experiment (unreadable).
        if os.path.lexists(entry / STATUS_FILE) or os.path.lexists(entry / CONFIG_FILE):
            found[entry.name] = entry
    return found


def effective_state(status: dict | None, expected_fingerprint: str | None = None) -> str:
    """The state shown to users: `stale` when a finished result no longer matches the config."""
    if not status:
        return PENDING
    state = status.get("state")
    if state not in WRITTEN_STATES:
        return PENDING
    if (
        state == COMPLETED
        and expected_fingerprint is not None
        and status.get("fingerprint") not in (None, expected_fingerprint)
    ):
        return STALE
    return state
