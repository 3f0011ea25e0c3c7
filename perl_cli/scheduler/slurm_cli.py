"""Talking to Slurm's client commands: checked, bounded in time, errors users can act on.

Every call runs with a timeout (a dead controller makes `sinfo` hang for seconds) and
turns Slurm's failures into `SlurmError`s that carry Slurm's own message. Queries
(`task_states`) return None when Slurm cannot be reached: readers then fall back to
the files alone. Nothing here imports submitit; see slurm.py for submitting.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable

from perl_cli.config import ConfigError

QUERY_TIMEOUT_S = 10.0
# Slurm states (squeue %T / sacct State) that mean the task has not ended.
GONE = "GONE"  # neither squeue nor sacct knows the task (e.g. an array task cancelled while pending)
PENDING_STATES = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "CONFIGURING", "SUSPENDED")
ACTIVE_STATES = (*PENDING_STATES, "RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING", "STOPPED")


class SlurmError(ConfigError):
    """Slurm refused or could not be reached; the message is Slurm's, with what to do (exit 2)."""


def require(command: str = "sbatch") -> str:
    path = shutil.which(command)
    if path is None:
        raise SlurmError(
            f"--backend slurm: `{command}` is not on PATH, so this machine cannot submit to Slurm. Run "
            "`perl run` on the cluster's login node (where `sbatch --version` works), or load Slurm's "
            "module first (e.g. `module load slurm`)."
        )
    return path


def run(args: list[str], *, timeout: float = QUERY_TIMEOUT_S) -> str:
    """stdout of a Slurm client command; SlurmError with its stderr when it fails or hangs."""
    require(args[0])
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"`{' '.join(args[:2])}` did not answer within {timeout:g}s: is the Slurm controller "
                         "up (`scontrol ping`)?") from None
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip() or f"exit code {done.returncode}"
        raise SlurmError(f"`{' '.join(args[:2])}` failed: {message}")
    return done.stdout


def partitions() -> list[str]:
    """The partitions this cluster has (the default one first)."""
    names = [line.strip() for line in run(["sinfo", "-h", "-o", "%P"]).splitlines() if line.strip()]
    names.sort(key=lambda n: not n.endswith("*"))
    return [n.rstrip("*") for n in names]


def check_partition(partition: str | None) -> None:
    if partition is None:
        return
    known = partitions()
    if partition not in known:
        raise SlurmError(f"--partition {partition}: this cluster has no such partition; it has "
                         f"{', '.join(known) or 'none'} (`sinfo -s` lists them).")


def task_states(job_ids: Iterable[str], *, timeout: float = QUERY_TIMEOUT_S) -> dict[str, str] | None:
    """Slurm's state of each job or array task id ("123_4"), or None when Slurm cannot be asked.

    squeue knows queued and running tasks (one line per array task with -r); what it has
    forgotten (finished a while ago), sacct is asked about. A task neither knows is GONE:
    Slurm drops an array task cancelled while pending from both.
    """
    ids = sorted({i for i in job_ids if i})
    if not ids:
        return {}
    if shutil.which("squeue") is None:
        return None
    arrays = sorted({i.split("_", 1)[0] for i in ids})
    found: dict[str, str] = {}
    try:
        out = run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(arrays)], timeout=timeout)
    except SlurmError as exc:
        if "Invalid job id" not in str(exc):
            return None
        out = ""  # every job has left squeue: ask sacct
    for line in out.splitlines():
        job, _, st = line.partition("|")
        found[job.strip()] = st.strip()
    missing = [i for i in ids if i not in found]
    if missing and shutil.which("sacct"):
        try:
            out = run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(missing)], timeout=timeout)
        except SlurmError:
            out = ""
        for line in out.splitlines():
            job, _, st = line.partition("|")
            if "." not in job and st.strip():  # "CANCELLED by 0" → CANCELLED; job steps skipped
                found[job.strip()] = st.split()[0]
    return {i: found.get(i, GONE) for i in ids}


def job_info(job_id: str, *, timeout: float = QUERY_TIMEOUT_S) -> dict[str, str] | None:
    """`scontrol show job -o ID` as {field: value} (JobState, Reason, Restarts, ...); None when unreachable."""
    try:
        out = run(["scontrol", "show", "job", "-o", str(job_id)], timeout=timeout)
    except SlurmError:
        return None
    return dict(re.findall(r"(?:^|\s)([A-Za-z:]+)=(\S*)", out))


# What sbatch says when it could not talk to the controller. After a *timeout* the request
# may still have reached it (a slow or paused slurmctld accepts it later): whether it did
# can only be learnt by asking. A connect failure means it never left this machine.
_NOT_SENT = ("connect failure", "Connection refused", "No route to host")
_UNANSWERED = ("timed out", "Zero Bytes were transmitted", "Communication connection failure",
               "Unable to contact slurm controller", "Socket timed out", "Slurm controller not responding")


def unreachable(message: str) -> str | None:
    """"not sent" or "unanswered" when sbatch failed to reach the controller; None when Slurm refused."""
    if any(m in message for m in _NOT_SENT):
        return "not sent"
    if any(m in message for m in _UNANSWERED):
        return "unanswered"
    return None


def find_submission(job_name: str, token: str, *, timeout: float = QUERY_TIMEOUT_S) -> list[str] | None:
    """The array task ids ("<array>_<i>") of the submission tagged `token` (in its comment), sorted by
    task; [] when Slurm has none; None when Slurm cannot be asked."""
    try:
        out = run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%k", "--name", job_name], timeout=timeout)
    except SlurmError:
        return None
    ids = [job.strip() for job, _, comment in (line.partition("|") for line in out.splitlines()) if token in comment]
    return sorted(ids, key=lambda i: int(i.rpartition("_")[2]) if i.rpartition("_")[2].isdigit() else -1)


def ping(*, timeout: float = 5.0) -> bool:
    """Whether the controller answers (`scontrol ping`)."""
    try:
        return "is UP" in run(["scontrol", "ping"], timeout=timeout)
    except SlurmError:
        return False


def cancel(job_ids: Iterable[str]) -> None:
    ids = sorted({i for i in job_ids if i})
    if ids:
        run(["scancel", *ids])


# --- values users type ---------------------------------------------------------------------

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time(value: str) -> int:
    """Slurm's time formats (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) → seconds; ValueError otherwise."""
    match = _TIME.match(value.strip())
    if not match:
        raise ValueError(value)
    days, a, b, c = match.groups()
    if days is not None:  # D-H, D-H:M, D-H:M:S
        hours, minutes, seconds = int(a), int(b or 0), int(c or 0)
        total = int(days) * 86400 + hours * 3600 + minutes * 60 + seconds
    elif c is not None:  # H:M:S
        total = int(a) * 3600 + int(b) * 60 + int(c)
        minutes, seconds = int(b), int(c)
    elif b is not None:  # M:S
        total = int(a) * 60 + int(b)
        minutes, seconds = 0, int(b)
    else:  # M
        total, minutes, seconds = int(a) * 60, 0, 0
    if minutes > 59 or seconds > 59 or total <= 0:
        raise ValueError(value)
    return total


def format_time(seconds: int) -> str:
    """Seconds in Slurm's D-HH:MM:SS (HH:MM:SS under a day)."""
    days, rest = divmod(int(seconds), 86400)
    text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{text}" if days else text


_MEM = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)
_KEY = re.compile(r"^[a-z][a-z0-9-]*$")


def check_mem(value: str) -> str:
    if not _MEM.match(value):
        raise ValueError(value)
    return value.upper()


def parse_slurm_args(items: Iterable[str]) -> dict[str, str]:
    """--slurm-arg KEY=VALUE → {"key": "value"}: sbatch options PeRL has no flag for."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not _KEY.match(key) or not value.strip():
            raise ValueError(item)
        out[key] = value.strip()
    return out
