"""The read model: a suite's experiments as every reader sees them, from their files alone.

`perl status`, `perl watch`, `perl diagnose`, `perl report` and the planning of `perl run`
read experiments only through here. `load_suite` builds a `SuiteView` from
`output/<suite>/<experiment>/` (status.json, config.json, the tail of metrics.jsonl,
eval.json, disk usage) merged with the experiments the config expects: one without a
directory is `pending`, a completed one whose settings no longer match is `stale`.

Every file is read through perl_cli.logtail's safe, bounded reads and every field is
type-checked: a status.json or config.json that is present but malformed (not JSON,
wrong types, unknown state, a FIFO, a link out of the directory, megabytes long) makes
that experiment alone `unreadable`, with `problem` naming the file and what is wrong.
A missing status.json is not a problem: a scheduler may be about to write it.

Overrides (`perl run --set`): config.json records the `--set` arguments the experiment
was resolved with (`"overrides"`, outside the fingerprint). An experiment is `stale` only
when its recorded fingerprint differs from what the config resolves to *with those same
overrides* today, i.e. when experiments.toml changed. The scheduler's run_status.json is
derived data: only its description of the run in progress (which experiments, with which
overrides) is read, so progress and ETA cover the experiments actually being run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perl_cli import collapse as collapselib
from perl_cli import config as configlib
from perl_cli import logtail
from perl_cli import state as st
from perl_cli.logtail import cap_line, last_json_rows

DEFAULT_STALL_AFTER_S = 600.0
# Metric rows whose step times feed a running experiment's ETA.
RATE_WINDOW = 20
# An experiment's own pace counts only from this step on: the first steps carry compilation
# and warm-up, so one experiment at step 1 would swing the suite's ETA (2m37s to 40m39s).
MIN_RATE_STEPS = 3
# The W&B run link is printed near the start of train.log: read at most this much of it.
WANDB_HEAD_BYTES = 64 * 1024
WANDB_URL = re.compile(r"View run\b.*? at:?\s+(https?://\S+/runs/\S+)")
# `--state` accepts the states and the stalled flag.
STALLED = "stalled"
# config.json key: the `--set` arguments the experiment was resolved with (outside the fingerprint).
OVERRIDES_KEY = "overrides"
# An error message longer than this is cut: readers show and search it, a worker writes ~500 chars.
MAX_ERROR_CHARS = 2000
# Tracking histories (report) may legitimately be larger than a status file.
MAX_TRACKING_BYTES = 64 * 1024 * 1024
# The fingerprint expected when recorded overrides no longer resolve (a key was removed): stale.
UNRESOLVABLE = "unresolvable"


# --- validation of the files a worker and the scheduler write ----------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_count(v: Any) -> bool:
    return _is_int(v) and v >= 0


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_gpu(v: Any) -> bool:
    one = lambda g: _is_int(g) or _is_str(g)  # noqa: E731
    return one(v) or (isinstance(v, list) and all(one(g) for g in v))


def _is_phase(v: Any) -> bool:
    """The worker's phase before step 1, e.g. {"name": "warm start", "done": 500, "total": 600}."""
    return (
        isinstance(v, dict) and _is_str(v.get("name"))
        and all(v.get(k) is None or _is_count(v.get(k)) for k in ("done", "total"))
    )


# status.json field -> (check, what it must be); null always means "not known".
STATUS_FIELDS: dict[str, tuple[Any, str]] = {
    "state": (lambda v: _is_str(v) and v in st.WRITTEN_STATES, "one of " + ", ".join(st.WRITTEN_STATES)),
    "fingerprint": (_is_str, "a string"),
    "host": (_is_str, "a string"),
    "pid": (_is_count, "a process id"),
    "scheduler_pid": (_is_count, "a process id"),
    "pid_start_time": (_is_num, "a number of seconds"),
    "started": (_is_num, "a time in seconds"),
    "ended": (_is_num, "a time in seconds"),
    "heartbeat": (_is_num, "a time in seconds"),
    "step": (_is_count, "a step count"),
    "total_steps": (_is_count, "a step count"),
    "attempt": (_is_count, "an attempt number"),
    "resumed_from": (_is_count, "a step count"),
    "exit_code": (_is_int, "an integer exit code"),
    "signal": (lambda v: _is_int(v) or _is_str(v), "a signal name or number"),
    "error": (_is_str, "a string"),
    "gpu": (_is_gpu, "a GPU index, 'cpu' or a list of them"),
    "retries": (lambda v: isinstance(v, list), "a list"),
    "phase": (_is_phase, 'an object {"name": str, "done": int, "total": int}'),
    "cause": (_is_str, "a string"),
    "requeues": (lambda v: isinstance(v, list), "a list"),  # Slurm: each requeue (perl_cli/scheduler/slurm_task.py)
    "slurm": (lambda v: isinstance(v, dict), "an object"),  # Slurm: job id, node, time limit
    "run_s_before": (lambda v: _is_num(v) and v >= 0, "a number of seconds"),  # earlier attempts' time
}
# config.json: (section, key) -> check; what readers and the fix suggestions use.
CONFIG_FIELDS: dict[tuple[str, ...], tuple[Any, str]] = {
    ("fingerprint",): (_is_str, "a string"),
    (OVERRIDES_KEY,): (lambda v: isinstance(v, list) and all(_is_str(x) for x in v), "a list of KEY=VALUE strings"),
    (st.RUNTIME_KEY,): (lambda v: isinstance(v, dict), "an object"),
    ("peft", "type"): (_is_str, "a method name"),
    ("peft", "r"): (_is_int, "an integer"),
    ("training", "max_steps"): (_is_count, "a step count"),
    ("dataset", "data_size"): (_is_count, "a number of problems"),
    ("model", "model_name_or_path"): (_is_str, "a string"),
    ("dataset", "dataset_name_or_path"): (_is_str, "a string"),
}


def _kind(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:39] + "…"


def status_problem(status: Any) -> str | None:
    """What is wrong with a parsed status.json, or None when every known field has its type."""
    if not isinstance(status, dict):
        return f"{st.STATUS_FILE} holds {type(status).__name__} {_kind(status)}, not a JSON object"
    if "state" not in status:
        return f"{st.STATUS_FILE} has no \"state\""
    for key, (check, what) in STATUS_FIELDS.items():
        value = status.get(key)
        if value is not None and not check(value):
            return f"{st.STATUS_FILE}: \"{key}\" is {_kind(value)}, expected {what}"
    return None


def config_problem(config: Any) -> str | None:
    """What is wrong with a parsed config.json, or None."""
    if not isinstance(config, dict):
        return f"{st.CONFIG_FILE} holds {type(config).__name__} {_kind(config)}, not a JSON object"
    for keys, (check, what) in CONFIG_FIELDS.items():
        value: Any = config
        for depth, k in enumerate(keys):
            if value is None:
                break  # a missing section: not known, not wrong
            if not isinstance(value, dict):
                return f"{st.CONFIG_FILE}: \"{'.'.join(keys[:depth])}\" is {_kind(value)}, expected an object"
            value = value.get(k)
        if value is not None and not check(value):
            return f"{st.CONFIG_FILE}: \"{'.'.join(keys)}\" is {_kind(value)}, expected {what}"
    return None


@dataclass
class Records:
    """An experiment directory's status.json and config.json, checked ({} when missing)."""

    status: dict
    config: dict
    problem: str | None = None  # names the file and what is wrong: the experiment is unreadable

    @property
    def fingerprint(self) -> str | None:
        return self.status.get("fingerprint") or self.config.get("fingerprint")

    @property
    def overrides(self) -> tuple[str, ...]:
        return tuple(self.config.get(OVERRIDES_KEY) or ())


def read_records(exp_dir: Path) -> Records:
    """status.json and config.json of `exp_dir`, type-checked; a problem makes it unreadable."""
    found: dict[str, dict] = {}
    for name, check in ((st.STATUS_FILE, status_problem), (st.CONFIG_FILE, config_problem)):
        try:
            data = st.load_json(exp_dir / name, root=exp_dir)
        except FileNotFoundError:
            found[name] = {}
            continue
        except (st.Unreadable, OSError) as exc:
            return Records({}, {}, str(exc) if name in str(exc) else f"{name}: {exc}")
        problem = check(data)
        if problem:
            return Records({}, {}, problem)
        found[name] = data
    status = found[st.STATUS_FILE]
    if isinstance(status.get("error"), str):
        status["error"] = cap_line(status["error"], MAX_ERROR_CHARS)
    return Records(status, found[st.CONFIG_FILE])


# eval.json's per-problem result lists (train/evaluate.py, in held-out order): the report pairs
# methods on them (report_significance.py). Kept only when they are lists of numbers.
EVAL_LISTS = ("per_problem_sampled", "per_problem_greedy", "base_per_problem_sampled", "base_per_problem_greedy")


def read_eval(exp_dir: Path) -> dict:
    """eval.json's scalar fields and per-problem lists ({} when missing or malformed); `method`
    only when a string."""
    data = st.read_json(exp_dir / st.EVAL_FILE, root=exp_dir)
    if not isinstance(data, dict):
        return {}
    out = {k: v for k, v in data.items() if v is None or isinstance(v, (str, int, float, bool))}
    for key in EVAL_LISTS:
        values = data.get(key)
        if isinstance(values, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[key] = values
    if not isinstance(out.get("method"), str):
        out.pop("method", None)
    return out


def read_metrics(exp_dir: Path) -> list[dict]:
    """Every metrics.jsonl row (bounded read; garbled lines skipped)."""
    return st.read_jsonl(exp_dir / st.METRICS_FILE, root=exp_dir)


# A collapse is judged on the last COLLAPSE_ROWS logged rows (within COLLAPSE_BYTES of the end),
# re-read only when metrics.jsonl changed (perl watch asks every 2 s).
COLLAPSE_ROWS = 2000
COLLAPSE_BYTES = 4 * 1024 * 1024
_collapse_seen: dict[Path, tuple[tuple[int, int], dict | None]] = {}


def read_collapse(exp_dir: Path) -> dict | None:
    """perl_cli/collapse.py's verdict on the experiment's metrics.jsonl (None: no collapse)."""
    path = exp_dir / st.METRICS_FILE
    try:
        info = os.stat(path)
    except OSError:
        return None
    key = (info.st_size, info.st_mtime_ns)
    seen = _collapse_seen.get(path)
    if seen is not None and seen[0] == key:
        return seen[1]
    found = collapselib.detect(last_json_rows(path, COLLAPSE_ROWS, root=exp_dir, max_bytes=COLLAPSE_BYTES))
    verdict = found.to_json() if found is not None else None
    _collapse_seen[path] = (key, verdict)
    return verdict


def judge_collapse(experiments: list[ExperimentView]) -> None:
    """Set `collapse` of the completed experiments too (the read model judges running ones)."""
    for e in experiments:
        if e.state == st.COMPLETED and e.collapse is None and e.dir is not None:
            e.collapse = read_collapse(e.dir)


def read_tracking(exp_dir: Path, names: tuple[str, ...]) -> Any:
    """The first of `names` (paths inside `exp_dir`) that holds JSON, else None."""
    for name in names:
        data = st.read_json(exp_dir / name, root=exp_dir, max_bytes=MAX_TRACKING_BYTES)
        if data is not None:
            return data
    return None


# --- what the config expects ------------------------------------------------------------


class Expectations:
    """The config's experiments of one suite, resolved with a given set of overrides (cached)."""

    def __init__(self, cfg: configlib.ConfigFile, suite: str) -> None:
        self.cfg, self.suite = cfg, suite
        self._by_overrides: dict[tuple[str, ...], dict[str, configlib.Experiment]] = {}

    def experiment(self, name: str, overrides: tuple[str, ...] = ()) -> configlib.Experiment | None:
        """`name` as `perl run SUITE --set <overrides>` would resolve it now (None if it cannot)."""
        if overrides not in self._by_overrides:
            try:
                exps = configlib.expand(self.cfg, self.suite, sets=overrides)
            except configlib.ConfigError:
                exps = []
            self._by_overrides[overrides] = {e.name: e for e in exps}
        return self._by_overrides[overrides].get(name)

    def fingerprint(self, name: str, overrides: tuple[str, ...] = ()) -> str:
        exp = self.experiment(name, overrides)
        return exp.fingerprint if exp is not None else UNRESOLVABLE


@dataclass
class RunInfo:
    """The `perl run` in progress on a suite, as its run_status.json describes it."""

    names: list[str]
    overrides: tuple[str, ...] = ()


def read_run(suite_dir: Path, *, stall_after_s: float = DEFAULT_STALL_AFTER_S, at: float | None = None) -> RunInfo | None:
    """The run in progress (its scheduler alive here, or recently updated elsewhere), else None."""
    data = st.read_json(suite_dir / st.RUN_STATUS_FILE, root=suite_dir)
    sched = data.get("scheduler") if isinstance(data, dict) else None
    if not isinstance(sched, dict) or sched.get("state") not in ("running", "stopping"):
        return None
    names, overrides = sched.get("run"), sched.get(OVERRIDES_KEY) or []
    if not (isinstance(names, list) and all(_is_str(n) for n in names)):
        return None
    if not (isinstance(overrides, list) and all(_is_str(o) for o in overrides)):
        return None
    if sched.get("host") == st.hostname():
        alive = st.process_alive(sched.get("pid"))
    else:
        updated = data.get("updated")
        alive = _is_num(updated) and (time.time() if at is None else at) - updated < stall_after_s
    return RunInfo(names, tuple(overrides)) if alive else None


# --- views ------------------------------------------------------------------------------


@dataclass
class ExperimentView:
    """One experiment as readers see it; every field may be unknown (None)."""

    name: str
    state: str
    dir: Path | None = None
    stalled: bool = False
    step: int | None = None
    total_steps: int | None = None
    reward: float | None = None
    started: float | None = None
    ended: float | None = None
    duration_s: float | None = None
    eta_s: float | None = None
    seconds_per_step: float | None = None
    gpu: Any = None
    size_bytes: int = 0
    method: str | None = None
    error: str | None = None
    problem: str | None = None  # why it is unreadable: the file and what is wrong
    overrides: list[str] = field(default_factory=list)  # the --set it ran (or will run) with
    in_config: bool = True
    pid: int | None = None
    heartbeat_age_s: float | None = None  # seconds since the worker's last heartbeat (running only)
    phase: dict | None = None  # before step 1: {"name", "done", "total"} (model build, warm start)
    collapse: dict | None = None  # perl_cli/collapse.py's verdict on its metrics: {"step", "kind", "text", "signals"}
    wandb_url: str | None = None
    status: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)  # config.json as run, else the resolved config expected
    expected: dict | None = None  # what the config file resolves to now; None when it does not know it

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "stalled": self.stalled,
            "step": self.step,
            "total_steps": self.total_steps,
            "reward": _finite(self.reward),
            "started": self.started,
            "ended": self.ended,
            "duration_s": self.duration_s,
            "eta_s": self.eta_s,
            "gpu": self.gpu,
            "size_bytes": self.size_bytes,
            "method": self.method,
            "error": self.error,
            "problem": self.problem,
            "overrides": self.overrides,
            "pid": self.pid,
            "heartbeat_age_s": self.heartbeat_age_s,
            "phase": self.phase,
            "wandb_url": self.wandb_url,
            "slurm_job_id": self.slurm_job_id,
            "collapse": self.collapse,
        }

    @property
    def slurm_job_id(self) -> str | None:
        """"<array>_<task>" of the Slurm task that runs (or ran) it; None for a local run."""
        slurm = self.status.get("slurm") if isinstance(self.status, dict) else None
        job = slurm.get("job_id") if isinstance(slurm, dict) else None
        return job if isinstance(job, str) else None

    @property
    def phase_text(self) -> str | None:
        """"warm start 500/600" while the worker prepares (before its first step), else None."""
        if self.phase is None:
            return None
        done, total = self.phase.get("done"), self.phase.get("total")
        return self.phase["name"] + (f" {done or 0}/{total}" if total else "")


@dataclass
class SuiteView:
    suite: str
    suite_dir: Path
    experiments: list[ExperimentView]
    in_config: bool
    at: float
    run: RunInfo | None = None  # the `perl run` in progress, if any
    selected_from: int | None = None  # narrowed by --state/--only/--exclude: the suite's size

    @property
    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(st.STATES, 0)
        for e in self.experiments:
            counts[e.state] += 1
        return counts

    @property
    def stalled(self) -> int:
        return sum(e.stalled for e in self.experiments)

    @property
    def size_bytes(self) -> int:
        return sum(e.size_bytes for e in self.experiments)

    @property
    def in_run(self) -> list[ExperimentView]:
        """The experiments of the run in progress, else all of them."""
        if self.run is None:
            return self.experiments
        names = set(self.run.names)
        return [e for e in self.experiments if e.name in names]

    @property
    def progress(self) -> float:
        """Share of the optimizer steps done, over the run in progress if any (a completed one counts whole)."""
        done = total = 0
        for e in self.in_run:
            n = e.total_steps or 0
            total += n
            if e.state == st.COMPLETED:
                done += n
            elif e.step and e.state not in (st.STALE, st.UNREADABLE):
                done += min(e.step, n)
        return done / total if total else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds until the run (else the suite) is done at the observed pace, while something runs.

        Running experiments finish at their own step time; the queued (pending and
        interrupted) ones need their remaining steps at the mean observed step time,
        shared across as many slots as are busy now.
        """
        running = [e for e in self.experiments if e.state == st.RUNNING and not e.stalled]
        if not running:
            return None
        # seconds_per_step is only known from step MIN_RATE_STEPS on.
        rates = [e.seconds_per_step for e in self.experiments if e.seconds_per_step]
        if not rates:
            return None
        mean_rate = statistics.fmean(rates)
        running_left = [e.eta_s if e.eta_s is not None else _left(e) * mean_rate for e in running]
        queued = sum(_left(e) * mean_rate for e in self.in_run if e.state in (st.PENDING, st.QUEUED, st.INTERRUPTED))
        return max(max(running_left), (sum(running_left) + queued) / len(running))

    def to_json(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "suite_dir": str(self.suite_dir),
            "in_config": self.in_config,
            "counts": self.counts,
            "stalled": self.stalled,
            "progress": round(self.progress, 4),
            "eta_s": self.eta_s,
            "size_bytes": self.size_bytes,
            "run": None if self.run is None else {"experiments": self.run.names, "overrides": list(self.run.overrides)},
            "experiments": [e.to_json() for e in self.experiments],
        }


# --- finding and loading ------------------------------------------------------------------


def load_config(path: Path | None) -> configlib.ConfigFile | None:
    """The experiments file; a broken default one only warns (results may come from elsewhere)."""
    if path is not None:
        return configlib.load(path)
    try:
        return configlib.load(None)
    except configlib.ConfigError as exc:
        print(f"perl: warning: {exc} Showing the output directories alone.", file=sys.stderr)
        return None


def expected_experiments(cfg: configlib.ConfigFile | None, suite: str) -> list[configlib.Experiment] | None:
    """What the config says the suite holds; None when the config does not know the suite."""
    if cfg is None or suite not in cfg.suites:
        return None
    try:
        return configlib.expand(cfg, suite)
    except configlib.ConfigError as exc:
        print(f"perl: warning: {exc} Showing the output directories alone.", file=sys.stderr)
        return None


def load_suite(
    output: Path,
    suite: str,
    cfg: configlib.ConfigFile | None = None,
    *,
    stall_after_s: float = DEFAULT_STALL_AFTER_S,
    at: float | None = None,
    with_size: bool = True,
) -> SuiteView:
    """The suite's experiments: the config's, in config order, then directories it does not name."""
    at = time.time() if at is None else at
    suite_dir = Path(output) / suite
    dirs = st.experiment_dirs(suite_dir)
    expected = expected_experiments(cfg, suite)
    expectations = Expectations(cfg, suite) if expected is not None and cfg is not None else None
    run = read_run(suite_dir, stall_after_s=stall_after_s, at=at)
    views: list[ExperimentView] = []
    common = {"stall_after_s": stall_after_s, "at": at, "with_size": with_size, "run": run}
    if expected is not None:
        for exp in expected:
            views.append(read_experiment(exp.name, dirs.pop(exp.name, None), expected=exp, expectations=expectations, **common))
    for name, path in dirs.items():
        view = read_experiment(name, path, **common)
        view.in_config = expected is None
        views.append(view)
    _as_slurm_sees_them(views)
    return SuiteView(suite, suite_dir, views, in_config=expected is not None, at=at, run=run)


def _as_slurm_sees_them(views: list[ExperimentView]) -> None:
    """Experiments whose Slurm task and status.json disagree are shown as Slurm sees them.

    A queued or running task Slurm let go of without a final state is shown ended (with the
    cause the next `perl run` records); an interrupted or failed one that Slurm requeued or
    holds is shown queued. Asks squeue/sacct (bounded in time, answers reused) only when some
    experiment has a Slurm task that has not completed; when Slurm cannot be reached the
    files alone decide (perl_cli/scheduler/slurm.py, `seen_by_slurm`).
    """
    statuses = {v.name: v.status for v in views
                if v.state in (st.QUEUED, st.RUNNING, st.INTERRUPTED, st.FAILED) and isinstance(v.status.get("slurm"), dict)
                and v.status["slurm"].get("job_id")}
    if not statuses:
        return
    from perl_cli.scheduler.slurm import seen_by_slurm

    shown = seen_by_slurm(statuses)
    for view in views:
        if view.name in shown:
            fields = shown[view.name]
            view.status = {**view.status, **fields}  # diagnose reads the cause from here
            view.state, view.stalled = fields["state"], False
            view.error = fields.get("error") if view.state in (st.FAILED, st.INTERRUPTED) else None
            if view.state != st.RUNNING:
                view.eta_s = None


def read_experiment(
    name: str,
    path: Path | None,
    *,
    expected: configlib.Experiment | None = None,
    expectations: Expectations | None = None,
    run: RunInfo | None = None,
    stall_after_s: float = DEFAULT_STALL_AFTER_S,
    at: float | None = None,
    with_size: bool = True,
) -> ExperimentView:
    at = time.time() if at is None else at
    view = ExperimentView(name=name, state=st.PENDING, dir=path)
    if expected is not None:
        view.method = expected.method
        view.total_steps = expected.max_steps
        view.config = view.expected = expected.resolved()
        if run is not None and run.overrides and name in run.names and expectations is not None:
            planned = expectations.experiment(name, run.overrides)  # queued: what the run will resolve
            if planned is not None:
                view.total_steps, view.config, view.overrides = planned.max_steps, planned.resolved(), list(run.overrides)
    if path is None:
        return view
    if with_size:
        view.size_bytes = disk_usage(path)
    records = read_records(path)
    if records.problem:
        view.state, view.problem = st.UNREADABLE, records.problem
        return view
    status, resolved = records.status, records.config or view.config  # what ran over what is expected
    view.status, view.config = status, resolved
    if records.config:
        view.overrides = list(records.overrides)
    if not status.get("fingerprint") and records.fingerprint:
        status = {**status, "fingerprint": records.fingerprint}
    wanted = None
    if expected is not None:
        wanted = expected.fingerprint
        if records.overrides and expectations is not None:
            wanted = expectations.fingerprint(name, records.overrides)
    view.state = st.effective_state(status, wanted)
    view.stalled = st.is_stalled(status, stall_after_s=stall_after_s, at=at)
    view.method = dig(resolved, "peft", "type") or view.method
    view.step = status.get("step")
    view.total_steps = status.get("total_steps") or dig(resolved, "training", "max_steps") or view.total_steps
    view.started, view.ended = status.get("started"), status.get("ended")
    view.gpu = status.get("gpu")
    view.pid = status.get("pid")
    if view.state == st.RUNNING:
        beat = status.get("heartbeat") or status.get("started")
        view.heartbeat_age_s = max(0.0, at - beat) if beat is not None else None
        view.phase = status.get("phase")  # the worker clears it at its first step
    view.wandb_url = _wandb_url(path, resolved)
    view.error = status.get("error") if view.state in (st.FAILED, st.INTERRUPTED) else None
    rows = last_json_rows(path / st.METRICS_FILE, RATE_WINDOW, root=path)
    rewards = [r["reward"] for r in rows if isinstance(r.get("reward"), (int, float)) and not isinstance(r.get("reward"), bool)]
    view.reward = rewards[-1] if rewards else None
    if view.step is None and rows:
        view.step = _int(rows[-1].get("step"))
    if view.started is not None:
        end = view.ended if view.state != st.RUNNING and view.ended else at
        view.duration_s = max(0.0, end - view.started) + (status.get("run_s_before") or 0.0)  # every attempt
    view.seconds_per_step = _rate(view, rows, path)
    if view.state == st.RUNNING or status.get("cause") == collapselib.CAUSE:
        # While it happens (status, watch); a completed run's whole curve is judged by the readers
        # that explain it (diagnose, report: `judge_collapse`), so `perl status` stays fast.
        view.collapse = read_collapse(path)
    if view.state == st.RUNNING and not view.stalled and view.seconds_per_step and view.total_steps:
        view.eta_s = max(0, view.total_steps - (view.step or 0)) * view.seconds_per_step
    return view


def _rate(view: ExperimentView, rows: list[dict], path: Path) -> float | None:
    """Observed seconds per optimizer step: the median of recent step times, else eval.json,
    else elapsed/steps; None for an experiment still before step MIN_RATE_STEPS."""
    early = (view.step or 0) < MIN_RATE_STEPS
    times = [r["step_seconds"] for r in rows if _positive(r.get("step_seconds"))]
    if times and not early:
        return statistics.median(times)
    if view.state == st.COMPLETED:
        ev = read_eval(path)
        if _positive(ev.get("seconds_per_step")):
            return float(ev["seconds_per_step"])
    if view.duration_s and not early:
        return view.duration_s / view.step
    return None


def _wandb_url(path: Path, config: dict) -> str | None:
    """The experiment's W&B run page: eval.json's wandb_url, else the link wandb prints in train.log."""
    if not dig(config, "wandb", "use_wandb"):
        return None
    url = read_eval(path).get("wandb_url")
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        return cap_line(url, 500)
    try:
        with logtail.open_safe(path / st.LOG_FILE, root=path) as f:
            head = f.read(WANDB_HEAD_BYTES)
    except OSError:
        return None
    found = WANDB_URL.search(head.decode("utf-8", errors="replace"))
    return cap_line(found.group(1), 500) if found else None


def disk_usage(path: Path) -> int:
    """Bytes of every file under `path` (checkpoints included), without following links."""
    total = 0
    stack = [str(path)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        else:
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


def find_suites(output: Path) -> list[str]:
    """Suite directories under the output directory (those holding experiments or a run status)."""
    try:
        entries = sorted(p for p in Path(output).iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
    return [p.name for p in entries if (p / st.RUN_STATUS_FILE).exists() or st.experiment_dirs(p)]


def resolve_suite(output: Path, suite: str, cfg: configlib.ConfigFile | None) -> None:
    """Raise a clear ConfigError when `suite` is neither in the config nor under `output`."""
    if (Path(output) / suite).is_dir() or (cfg is not None and suite in cfg.suites):
        return
    found = find_suites(output)
    known = f" Suites with results under {output}/: {', '.join(found)}." if found else f" There are no results under {output}/ yet."
    in_cfg = f" Suites in {cfg.path}: {', '.join(cfg.suites)}." if cfg is not None else ""
    raise configlib.ConfigError(
        f"no suite '{suite}': {output}/{suite}/ does not exist and the config does not define it.{known}{in_cfg} "
        "Pass --output DIR where the results are, or --config FILE that defines the suite."
    )


def suites_to_read(output: Path, suite: str | None, cfg: configlib.ConfigFile | None) -> list[str]:
    """The suite named (checked to exist), or every suite with results under `output`."""
    if suite is None:
        return find_suites(output)
    resolve_suite(output, suite, cfg)
    return [suite]


def needs_attention(e: ExperimentView) -> bool:
    """What `perl diagnose` explains and `perl status` counts as needing attention: failed,
    interrupted and unreadable experiments, running ones only when stalled, and any whose
    training collapsed (perl_cli/collapse.py), running or completed."""
    return (e.state in (st.FAILED, st.INTERRUPTED, st.UNREADABLE) or (e.state == st.RUNNING and e.stalled)
            or (e.collapse is not None and e.state in (st.RUNNING, st.COMPLETED)))


@dataclass
class Selection:
    """--state / --only / --exclude of a reader."""

    states: set[str] | None = None
    only: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, state: str | None = None, only: str | None = None, exclude: str | None = None) -> Selection:
        return cls(parse_states(state), configlib.split_names(only), configlib.split_names(exclude, "--exclude"))

    def check_suite(self, suite: str | None) -> None:
        if suite is None and (self.only or self.exclude):
            raise configlib.ConfigError("--only/--exclude name experiments of one suite: give the suite, e.g. `perl status core-1.5b --only 'lora_*'`.")

    def apply(self, view: SuiteView) -> SuiteView:
        return select(view, states=self.states, only=self.only, exclude=self.exclude)


def parse_states(text: str | None) -> set[str] | None:
    """`--state failed,running`: the states (and `stalled`) asked for; an unknown one is a ConfigError."""
    if text is None:
        return None
    valid = (*st.STATES, STALLED)
    wanted = {w.strip().lower() for w in text.split(",") if w.strip()}
    unknown = sorted(wanted - set(valid))
    if unknown or not wanted:
        raise configlib.ConfigError(
            f"--state {text!r}: {'unknown state ' + ', '.join(unknown) if unknown else 'names no state'}. "
            f"Valid states: {', '.join(valid)} (comma-separated, e.g. --state failed,running)."
        )
    return wanted


def select(
    view: SuiteView, *, states: set[str] | None = None, only: list[str] = (), exclude: list[str] = ()
) -> SuiteView:
    """The suite view narrowed to the experiments in `states` and matching --only/--exclude (globs)."""
    names = [e.name for e in view.experiments]
    for flag, patterns in (("--only", only), ("--exclude", exclude)):
        unknown = [p for p in patterns if not configlib.matching(names, p)]
        if unknown:
            raise configlib.ConfigError(
                f"{flag}: {', '.join(unknown)} matches no experiment of suite '{view.suite}'. "
                f"See the names with `perl status {view.suite} --verbose`."
            )
    keep = {n for p in only for n in configlib.matching(names, p)} if only else set(names)
    keep -= {n for p in exclude for n in configlib.matching(names, p)}

    def wanted(e: ExperimentView) -> bool:
        return e.name in keep and (states is None or e.state in states or (STALLED in states and e.stalled))

    if states is None and not only and not exclude:
        return view
    return dataclasses.replace(view, experiments=[e for e in view.experiments if wanted(e)], selected_from=len(view.experiments))


def _left(e: ExperimentView) -> int:
    return max(0, (e.total_steps or 0) - (e.step or 0))


def dig(obj: Any, *keys: str) -> Any:
    """obj[k1][k2]... or None when a level is missing or not a dict."""
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _int(value: Any) -> int | None:
    return int(value) if _is_num(value) else None


def _positive(value: Any) -> bool:
    return _is_num(value) and value > 0


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None
