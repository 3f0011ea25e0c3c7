"""Slurm, as the rest of PeRL sees it: the backend's options, and what planning, readers and
`perl cancel` ask of Slurm (no submission here: that is slurm_backend.py's).

- `SlurmOptions`, `options_from`: `perl run --backend slurm`'s options over experiments.toml's
  `[slurm]`, checked (exit 2); `signal_delay_s`, `early_warning_note`: the time-limit warning;
- `slurm_tasks_in_flight` (planning), `seen_by_slurm` (readers): which experiments Slurm still
  has a task for, whatever the files say; `resolve_submissions`: a submission whose sbatch
  answer was lost, settled before anything is planned or cancelled;
- `cancel_suite`: `perl cancel` for Slurm tasks; `rerun_args`: the options a task was
  submitted with, repeated by every command PeRL suggests for it; `rerun_words`: the whole
  command that resumes it (`perl run`, or `perl eval` for an evaluation task).

See docs/architecture.md, "The Slurm backend".
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perl_cli import outcomes, state
from perl_cli.scheduler import endings, slurm_cli
from perl_cli.scheduler.handles import SlurmTaskHandle
from perl_cli.scheduler.slurm_cli import SlurmError
from perl_cli.stats import number

SUBMITIT_DIR = ".slurm"  # inside the suite directory: submitit's pickles and logs (hidden from readers)


@dataclass
class SlurmOptions:
    partition: str | None = None
    account: str | None = None
    time: str | None = None  # Slurm's formats; None: the partition's default time, else 24 h
    gpus_per_job: int = 1
    cpus_per_job: int | None = None
    mem: str | None = None
    array_parallelism: int | None = None
    extra: dict[str, str] = field(default_factory=dict)  # --slurm-arg KEY=VALUE: other sbatch options
    wait: bool = False

    def rerun_args(self) -> list[str]:
        """`perl run` arguments that submit with these options again (recorded in status.json's `slurm.args`,
        so every command PeRL suggests later keeps the backend and the options)."""
        args = ["--backend", "slurm"]
        for flag, value in (("--partition", self.partition), ("--account", self.account), ("--time", self.time),
                            ("--gpus-per-job", None if self.gpus_per_job == 1 else self.gpus_per_job),
                            ("--cpus-per-job", self.cpus_per_job), ("--mem", self.mem),
                            ("--array-parallelism", self.array_parallelism)):
            if value is not None:
                args += [flag, str(value)]
        for key, value in self.extra.items():
            args += ["--slurm-arg", f"{key}={value}"]
        return args


def options_from(cli: dict[str, Any], defaults: dict[str, Any]) -> SlurmOptions:
    """The command line over the experiments.toml tables; SlurmError (exit 2) on a bad value."""
    merged = {k: v for k, v in defaults.items() if k != "args"}
    merged.update({k: v for k, v in cli.items() if v is not None and k != "slurm_args"})
    try:
        extra = slurm_cli.parse_slurm_args([f"{k}={v}" for k, v in (defaults.get("args") or {}).items()])
    except ValueError as exc:
        raise SlurmError(f"[slurm] args: {exc} is not a valid sbatch option name and value.") from None
    for item in cli.get("slurm_args") or ():
        try:
            extra.update(slurm_cli.parse_slurm_args([item]))
        except ValueError:
            raise SlurmError(f"--slurm-arg {item}: expected KEY=VALUE with an sbatch long option name, "
                             "e.g. --slurm-arg qos=high or --slurm-arg constraint=a100.") from None
    opts = SlurmOptions(**merged, extra=extra)
    if opts.time is not None:
        try:
            slurm_cli.parse_time(str(opts.time))
        except ValueError:
            raise SlurmError(f"--time {opts.time}: not a Slurm time limit. Use MINUTES, HH:MM:SS or "
                             "DAYS-HH:MM:SS, e.g. --time 4:00:00 or --time 2-00:00:00.") from None
    if opts.mem is not None:
        try:
            opts.mem = slurm_cli.check_mem(str(opts.mem))
        except ValueError:
            raise SlurmError(f"--mem {opts.mem}: expected a size such as 32G or 64000M.") from None
    for name, low in (("gpus_per_job", 0), ("cpus_per_job", 1), ("array_parallelism", 1)):
        value = getattr(opts, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise SlurmError(f"--{name.replace('_', '-')} {value}: must be a whole number >= {low}.")
    clash = sorted(set(opts.extra) & {"array", "time", "partition", "account", "gres", "output", "error", "signal"})
    if clash:
        raise SlurmError(f"--slurm-arg {clash[0]}=...: PeRL sets --{clash[0]} itself; use its own option "
                         f"(perl run --help) instead.")
    return opts


def signal_delay_s(time_limit_s: int) -> int:
    """How long before the time limit Slurm warns the task (SIGUSR2): time to save a checkpoint.

    A tenth of the limit, between 30 s (Slurm checks limits about every 30 s) and 120 s.
    """
    return int(min(120, max(30, time_limit_s // 10)))


# sbatch(1), --signal: "the signal may be sent up to 60 seconds earlier than specified".
SIGNAL_EARLY_S = 60


def early_warning_note(time_limit_s: int) -> str | None:
    """What to tell a user whose time limit is so short that the checkpoint warning may come at once."""
    earliest = time_limit_s - signal_delay_s(time_limit_s) - SIGNAL_EARLY_S
    if earliest > 0:
        return None
    return (f"note: with a time limit of {slurm_cli.format_time(time_limit_s)}, Slurm may send the checkpoint "
            f"warning as soon as a task starts (it warns {signal_delay_s(time_limit_s)} s before the limit, "
            f"and up to {SIGNAL_EARLY_S} s earlier than that): each attempt may be stopped and requeued at "
            f"once. Give --time {slurm_cli.format_time(signal_delay_s(time_limit_s) + SIGNAL_EARLY_S + 60)} or more.")


def place_pickles(folder: Path, before: set[Path], ids: list[str], jobs: list[Any]) -> None:
    """Put each task's pickle where its task looks for it, as submitit does after a successful sbatch.

    A timed-out sbatch leaves them as `.slurm/<uuid>.pkl`; each holds a SlurmTask, whose directory
    names its job (the tasks are in the order submitted).
    """
    from submitit.core.utils import DelayedSubmission
    from submitit.slurm.slurm import SlurmJob

    by_dir = {str(job.dir): job_id for job, job_id in zip(jobs, ids, strict=True)}
    for path in sorted(set(folder.glob("*.pkl")) - before):
        try:
            task = DelayedSubmission.load(path).function
        except Exception:  # noqa: BLE001 - not one of ours: leave it
            continue
        job_id = by_dir.get(getattr(task, "exp_dir", ""))
        if job_id is not None:
            SlurmJob(folder=folder, job_id=job_id, tasks=[0]).paths.move_temporary_file(path, "submitted_pickle")
    for script in set(folder.glob(".submission_file_*.sh")) - before:  # sbatch has read it
        with contextlib.suppress(OSError):
            script.unlink()


def cancel_suite(suite_dir: Path, names: list[str] | None, *, wait_s: float = 30.0, out=print) -> dict[str, list[str]]:
    """`perl cancel` for Slurm tasks: scancel every task Slurm still has for the suite, whatever the files say.

    A task is the suite's when a status.json names it (whatever its state: a task Slurm
    requeued or holds may be recorded `interrupted` by an older PeRL, or not recorded yet) or
    when it belongs to a submission whose answer was lost. A running worker gets SIGTERM from
    Slurm, saves a checkpoint and records `interrupted` itself; one that has not after `wait_s`,
    and tasks that never started, are marked here. Returns {name: `rerun_words`, the command
    that resumes it after the suite's name} for the experiments cancelled.
    """
    resolve_submissions(suite_dir, names)
    targets: dict[str, tuple[Path, str]] = {}
    for name, exp_dir in state.experiment_dirs(suite_dir).items():
        if names is not None and name not in names:
            continue
        task_id = _task_id(state.read_status(exp_dir) or {})
        if task_id:
            targets[name] = (exp_dir, task_id)
    if not targets:
        return {}
    states = slurm_cli.task_states(task for _, task in targets.values())
    if states is None:
        raise SlurmError("perl cancel: Slurm's controller is unreachable (squeue and sacct did not answer), so PeRL "
                         "cannot tell which tasks it still has; nothing was cancelled. Check it with `scontrol ping`, "
                         "then cancel again (or `scancel --name perl-" + suite_dir.name + "`).")
    live = {name: (d, t) for name, (d, t) in targets.items() if states.get(t) in slurm_cli.ACTIVE_STATES}
    # Tasks that Slurm let go of while the file says queued/running only need their end recorded.
    unrecorded = {name: (d, t) for name, (d, t) in targets.items() if name not in live
                  and (state.read_status(d) or {}).get("state") in (outcomes.QUEUED, state.RUNNING)}
    if live:
        slurm_cli.cancel(t for _, t in live.values())
        out(f"scancel: {len(live)} task(s): " + ", ".join(f"{n} ({t}, {states.get(t)})" for n, (_, t) in sorted(live.items())))
    cancelled = {**live, **unrecorded}
    handles = [SlurmTaskHandle(name, d, t) for name, (d, t) in cancelled.items()]
    deadline = time.monotonic() + wait_s
    while handles:
        states = slurm_cli.task_states([h.task_id for h in handles])
        left = []
        for h in handles:
            ending = h.poll(states, cancelled=True)
            if ending is not None:
                h.record_end(ending, cancelled=True)
            elif time.monotonic() < deadline:
                left.append(h)
            else:
                h.record_end(outcomes.Ending(None, stop_sent=True), cancelled=True)
        handles = left
        if handles:
            time.sleep(0.5)
    return {name: rerun_words(state.read_status(d) or {}) for name, (d, _) in cancelled.items()}


def rerun_args(status: dict) -> list[str]:
    """The `perl run` arguments an experiment was submitted to Slurm with (["--backend", "slurm", ...])."""
    slurm = status.get("slurm") if isinstance(status.get("slurm"), dict) else {}
    args = slurm.get("args")
    if isinstance(args, list) and args and all(isinstance(a, str) for a in args):
        return list(args)
    return ["--backend", "slurm"] if slurm or status.get("backend") == "slurm" else []


def rerun_words(status: dict) -> list[str]:
    """The `perl` command that resumes an experiment's Slurm task, as [subcommand, its options..., backend
    options...] (the suite's name goes after the subcommand): ["run", "--backend", "slurm", ...], or
    ["eval", "--benchmarks", "aime24", "--backend", "slurm", ...] for an evaluation task. The submission
    recorded the words (status.json's `slurm.rerun`, from jobkinds.perl_words); a task submitted by an
    older PeRL was a training task."""
    slurm = status.get("slurm") if isinstance(status.get("slurm"), dict) else {}
    words = slurm.get("rerun")
    if not (isinstance(words, list) and words and all(isinstance(w, str) for w in words)):
        words = ["run"]
    return [*words, *rerun_args(status)]


@dataclass
class _Dir:
    dir: Path


def _task_id(status: dict) -> str | None:
    slurm = status.get("slurm")
    task = slurm.get("job_id") if isinstance(slurm, dict) else None
    return str(task) if task else None


def _may_be_in_slurm(status: dict) -> bool:
    """A status whose Slurm task may still be queued, held or running in Slurm, whatever the file says.

    Everything but `completed`: Slurm requeues and holds tasks behind PeRL's back (preemption,
    `scontrol requeue`), and a task may not have recorded that (an older PeRL, a dead node).
    """
    return _task_id(status) is not None and status.get("state") != outcomes.COMPLETED


def resolve_submissions(suite_dir: Path, names: list[str] | None) -> None:
    """Settle submissions whose sbatch answer was lost (statuses `queued`, a submission token, no job id).

    Slurm is asked whether the array exists: if it does, its task ids are recorded (and the
    tasks' pickles put in place); if it does not, the experiments are marked `interrupted`
    (nothing runs them). SlurmError (exit 2) when Slurm cannot be asked: submitting again
    could run an experiment twice.
    """
    pending: dict[str, list[tuple[str, Path]]] = {}
    for name, exp_dir in state.experiment_dirs(suite_dir).items():
        if names is not None and name not in names:
            continue
        status = state.read_status(exp_dir) or {}
        slurm = status.get("slurm") if isinstance(status.get("slurm"), dict) else {}
        if status.get("state") == outcomes.QUEUED and not slurm.get("job_id") and slurm.get("submission"):
            pending.setdefault(str(slurm["submission"]), []).append((name, exp_dir))
    for token, members in pending.items():
        ids = slurm_cli.find_submission(f"perl-{suite_dir.name}", token)
        if ids is None:
            raise SlurmError(f"Slurm's controller is unreachable, and an earlier submission of {len(members)} "
                             f"experiment(s) ({token}) got no answer: PeRL cannot tell whether Slurm has it. Check the "
                             "controller with `scontrol ping`, then run this again.")
        folder = suite_dir / SUBMITIT_DIR
        if len(ids) == len(members):
            # Task i of the array is the experiment submitted i-th (status.json's slurm.index).
            order = sorted(members, key=lambda m: ((state.read_status(m[1]) or {}).get("slurm") or {}).get("index") or 0)
            place_pickles(folder, set(), ids, [_Dir(d) for _, d in order])
            for (_, exp_dir), job_id in zip(order, ids, strict=True):
                state.update_status(exp_dir, slurm={**((state.read_status(exp_dir) or {}).get("slurm") or {}),
                                                    "job_id": job_id, "array_job_id": job_id.split("_")[0]})
        else:
            for _, exp_dir in members:
                state.update_status(exp_dir, state=outcomes.INTERRUPTED, ended=state.now(),
                                    error="its submission to Slurm got no answer, and Slurm has no such array")

def slurm_tasks_in_flight(suite_dir: Path, names: list[str]) -> dict[str, str]:
    """Experiments for which Slurm still has a task (queued, held, requeued or running): {name: task id}.

    Decided with squeue/sacct as well as the files: a task Slurm requeued or holds counts
    whatever status.json says, so no experiment is ever submitted while a task for it exists.
    When Slurm cannot be asked, the files are believed for what they say is queued or running
    (never two workers on one directory; the worker's lock is the last line of defence).
    """
    resolve_submissions(suite_dir, names)
    candidates: dict[str, str] = {}
    believed: dict[str, str] = {}
    for name in names:
        status = state.read_status(suite_dir / name) or {}
        if _may_be_in_slurm(status):
            candidates[name] = str(_task_id(status))
            if status.get("state") in (outcomes.QUEUED, state.RUNNING):
                believed[name] = candidates[name]
    if not candidates:
        return {}
    states = slurm_cli.task_states(candidates.values())
    if states is None:
        return believed
    return {name: task for name, task in candidates.items() if states.get(task) in slurm_cli.ACTIVE_STATES}


READ_TIMEOUT_S = 3.0  # readers (perl status, watch) wait at most this long for squeue/sacct
# A reader that refreshes (watch every 2 s, status --watch) asks Slurm about the same tasks at
# most this often: the answer (or "unreachable", which costs READ_TIMEOUT_S) is reused.
READ_REUSE_S = 20.0
# Readers ask about an experiment recorded interrupted or failed (Slurm may have requeued its task)
# only this long after it ended: a suite that ended long ago is read without asking Slurm each time.
# `perl run` and `perl cancel` always ask.
READ_ENDED_S = 7 * 24 * 3600.0
_read_cache: dict[frozenset[str], tuple[float, dict[str, str] | None]] = {}


def _task_states_for_readers(tasks: frozenset[str]) -> dict[str, str] | None:
    """slurm_cli.task_states for readers, reused for READ_REUSE_S; None when Slurm is unreachable."""
    now = time.monotonic()
    cached = _read_cache.get(tasks)
    if cached is not None and now - cached[0] < READ_REUSE_S:
        return cached[1]
    try:
        states = slurm_cli.task_states(tasks, timeout=READ_TIMEOUT_S)
    except SlurmError:
        states = None
    if len(_read_cache) > 64:  # a long `perl watch` sees the set of tasks change: keep it bounded
        _read_cache.clear()
    _read_cache[tasks] = (now, states)
    return states


def seen_by_slurm(statuses: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """For readers: what to show for experiments whose file and Slurm disagree, {name: fields}.

    - The file says queued or running, but Slurm has let go of the task (cancelled while
      pending, a dead node): shown as the next `perl run` will record it (endings.from_slurm:
      `interrupted` or `failed`, with a cause).
    - The file says interrupted or failed, but Slurm has the task again (requeued or held
      behind PeRL's back, before the task could say so): shown `queued` (or `running`).

    Asks Slurm only when some status names a task that has not completed (and, if recorded
    ended, ended less than READ_ENDED_S ago), within READ_TIMEOUT_S, reusing an answer for
    READ_REUSE_S; unreachable: {} (the files alone decide). Never writes.
    """
    now = state.now()
    tasks = {name: str(_task_id(s)) for name, s in statuses.items() if _may_be_in_slurm(s)
             and (s.get("state") not in outcomes.TERMINAL or now - (number(s.get("ended")) or now) < READ_ENDED_S)}
    if not tasks:
        return {}
    states = _task_states_for_readers(frozenset(tasks.values()))
    if not states:
        return {}
    shown: dict[str, dict[str, Any]] = {}
    for name, task in tasks.items():
        seen, recorded = states.get(task), statuses[name].get("state")
        if seen is None:
            continue
        if seen in slurm_cli.ACTIVE_STATES:
            if recorded in outcomes.TERMINAL:
                now = state.RUNNING if seen == "RUNNING" else outcomes.QUEUED
                shown[name] = {"state": now, "error": None, "cause": None} if now == state.RUNNING else {
                    "state": now, "cause": None,
                    "error": f"back in Slurm's queue ({seen}): Slurm requeued task {task}"}
        elif recorded in (outcomes.QUEUED, state.RUNNING):
            shown[name] = endings.from_slurm(seen, statuses[name], task)
    return shown
