"""Where a suite stands, derived from its experiment directories alone (`perl status`).

`load_suite` builds a `SuiteView` from `output/<suite>/<experiment>/` files (status.json,
the tail of metrics.jsonl, eval.json, disk usage), merged with the experiments the
config expects (those without a directory are `pending`; a completed one whose
fingerprint no longer matches is `stale`). The scheduler's run_status.json is derived
data and is not read. Nothing here imports torch; `perl watch` can reuse the views.

JSON object of `perl status SUITE --json` (contract; fields are only ever added):

    {"suite": str, "suite_dir": str, "in_config": bool,
     "counts": {state: int for every state}, "stalled": int,
     "progress": float (0..1, share of all optimizer steps done),
     "eta_s": float | null, "size_bytes": int,
     "experiments": [{"name", "state", "stalled", "step", "total_steps", "reward",
                      "started", "ended", "duration_s", "eta_s", "gpu", "size_bytes",
                      "method", "error"}]}

Times are unix epoch seconds; durations seconds; a value not known is null.
`perl status --json` without a suite prints {"output_dir", "suites": [{"suite", "counts",
"stalled", "progress", "eta_s", "size_bytes", "experiments"}]}.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perl_cli import config as configlib
from perl_cli import state as st
from perl_cli.logtail import last_json_rows
from perl_cli.ui import human_bytes, human_seconds

DEFAULT_STALL_AFTER_S = 600.0
# Metric rows whose step times feed a running experiment's ETA.
RATE_WINDOW = 20
# Without --verbose: this many recently finished completed experiments are listed too.
RECENT_COMPLETED = 5
ATTENTION_ORDER = (st.RUNNING, st.FAILED, st.INTERRUPTED, st.STALE, st.QUEUED, st.COMPLETED, st.PENDING)
DISPLAY_ORDER = (st.COMPLETED, st.RUNNING, st.QUEUED, st.FAILED, st.INTERRUPTED, st.STALE, st.PENDING)
STATE_STYLE = {
    st.PENDING: "dim",
    st.QUEUED: "blue",
    st.RUNNING: "cyan",
    st.COMPLETED: "green",
    st.FAILED: "bold red",
    st.INTERRUPTED: "yellow",
    st.STALE: "magenta",
}
STATE_MARK = {
    st.PENDING: "○",
    st.QUEUED: "…",
    st.RUNNING: "⧗",
    st.COMPLETED: "✓",
    st.FAILED: "✗",
    st.INTERRUPTED: "⏸",
    st.STALE: "≠",
}


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
    in_config: bool = True
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
        }


@dataclass
class SuiteView:
    suite: str
    suite_dir: Path
    experiments: list[ExperimentView]
    in_config: bool
    at: float

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
    def progress(self) -> float:
        """Share of all optimizer steps done (a completed experiment counts whole)."""
        done = total = 0
        for e in self.experiments:
            n = e.total_steps or 0
            total += n
            if e.state == st.COMPLETED:
                done += n
            elif e.step and e.state != st.STALE:
                done += min(e.step, n)
        return done / total if total else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds until the suite is done at the observed pace, while something runs.

        Running experiments finish at their own step time; the pending and interrupted
        ones need their remaining steps at the mean observed step time, shared across as
        many slots as are busy now.
        """
        running = [e for e in self.experiments if e.state == st.RUNNING and not e.stalled]
        if not running:
            return None
        rates = [e.seconds_per_step for e in self.experiments if e.seconds_per_step]
        if not rates:
            return None
        mean_rate = statistics.fmean(rates)
        running_left = [e.eta_s if e.eta_s is not None else _left(e) * mean_rate for e in running]
        queued = sum(
            _left(e) * mean_rate for e in self.experiments if e.state in (st.PENDING, st.QUEUED, st.INTERRUPTED)
        )
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
            "experiments": [e.to_json() for e in self.experiments],
        }


# --- deriving ---------------------------------------------------------------------


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
    views: list[ExperimentView] = []
    if expected is not None:
        for exp in expected:
            views.append(
                read_experiment(
                    exp.name, dirs.pop(exp.name, None), expected=exp,
                    stall_after_s=stall_after_s, at=at, with_size=with_size,
                )
            )
    for name, path in dirs.items():
        view = read_experiment(name, path, stall_after_s=stall_after_s, at=at, with_size=with_size)
        view.in_config = expected is None
        views.append(view)
    return SuiteView(suite, suite_dir, views, in_config=expected is not None, at=at)


def read_experiment(
    name: str,
    path: Path | None,
    *,
    expected: configlib.Experiment | None = None,
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
    if path is None:
        return view
    status = st.read_status(path) or {}
    resolved = st.read_json(path / st.CONFIG_FILE)
    # What ran (config.json) over what the config expects now.
    resolved = resolved if isinstance(resolved, dict) else view.config
    view.status, view.config = status, resolved
    if not status.get("fingerprint") and resolved.get("fingerprint"):
        status = {**status, "fingerprint": resolved["fingerprint"]}
    view.state = st.effective_state(status, expected.fingerprint if expected else None)
    view.stalled = st.is_stalled(status, stall_after_s=stall_after_s, at=at)
    view.method = dig(resolved, "peft", "type") or view.method
    view.step = _int(status.get("step"))
    view.total_steps = (
        _int(status.get("total_steps")) or _int(dig(resolved, "training", "max_steps")) or view.total_steps
    )
    view.started, view.ended = _num(status.get("started")), _num(status.get("ended"))
    view.gpu = status.get("gpu")
    view.error = status.get("error") if view.state in (st.FAILED, st.INTERRUPTED) else None
    rows = last_json_rows(path / st.METRICS_FILE, RATE_WINDOW)
    rewards = [r["reward"] for r in rows if isinstance(r.get("reward"), (int, float))]
    view.reward = rewards[-1] if rewards else None
    if view.step is None and rows:
        view.step = _int(rows[-1].get("step"))
    if view.started is not None:
        end = view.ended if view.state != st.RUNNING and view.ended else at
        view.duration_s = max(0.0, end - view.started)
    view.seconds_per_step = _rate(view, rows, path)
    if view.state == st.RUNNING and not view.stalled and view.seconds_per_step and view.total_steps:
        view.eta_s = max(0, view.total_steps - (view.step or 0)) * view.seconds_per_step
    if with_size:
        view.size_bytes = disk_usage(path)
    return view


def _rate(view: ExperimentView, rows: list[dict], path: Path) -> float | None:
    """Observed seconds per optimizer step: recent step times, else eval.json, else elapsed/steps."""
    times = [r["step_seconds"] for r in rows if _positive(r.get("step_seconds"))]
    if times:
        return statistics.median(times)
    if view.state == st.COMPLETED:
        ev = st.read_json(path / st.EVAL_FILE)
        if isinstance(ev, dict) and _positive(ev.get("seconds_per_step")):
            return float(ev["seconds_per_step"])
    if view.duration_s and view.step:
        return view.duration_s / view.step
    return None


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
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


# --- rendering ----------------------------------------------------------------------


def progress_bar(fraction: float, width: int = 30) -> str:
    fraction = min(1.0, max(0.0, fraction))
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "-" * (width - filled) + f"] {fraction * 100:.1f}%"


def state_label(e: ExperimentView) -> str:
    label = f"[{STATE_STYLE[e.state]}]{STATE_MARK[e.state]} {e.state}[/]"
    return label + " [bold red](stalled)[/]" if e.stalled else label


def counts_line(view: SuiteView) -> str:
    counts = view.counts
    parts = [f"[{STATE_STYLE[s]}]{s} {counts[s]}[/]" for s in DISPLAY_ORDER if counts[s] or s in (st.COMPLETED, st.PENDING)]
    if view.stalled:
        parts.append(f"[bold red]stalled {view.stalled}[/]")
    return ", ".join(parts)


def ordered_rows(view: SuiteView, verbose: bool) -> tuple[list[ExperimentView], list[ExperimentView]]:
    """(rows to show, rows summarised): attention first; without --verbose the rest is summarised."""
    rank = {s: i for i, s in enumerate(ATTENTION_ORDER)}
    ordered = sorted(
        view.experiments,
        key=lambda e: (not e.stalled, rank[e.state], -(e.ended or 0) if e.state == st.COMPLETED else 0),
    )
    if verbose:
        return sorted(view.experiments, key=lambda e: rank[e.state]), []
    shown, hidden, recent = [], [], 0
    for e in ordered:
        if e.state in (st.RUNNING, st.FAILED, st.INTERRUPTED, st.STALE):
            shown.append(e)
        elif e.state == st.COMPLETED and recent < RECENT_COMPLETED:
            shown.append(e)
            recent += 1
        else:
            hidden.append(e)
    return shown, hidden


def render_suite(view: SuiteView, *, verbose: bool = False):
    """A Rich renderable of one suite (used by `perl status` and, later, `perl watch`)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    n = len(view.experiments)
    where = "" if view.in_config else " (not in the config: from its directories alone)"
    lines: list[Any] = [
        Text.from_markup(f"[bold]suite {view.suite}[/]: {n} experiments in {view.suite_dir}/{where}"),
        Text.from_markup("  " + counts_line(view)),
        Text(
            f"  progress {progress_bar(view.progress)} of steps · "
            f"{view.counts[st.COMPLETED]}/{n} completed · ETA {_eta_text(view)} · disk {human_bytes(view.size_bytes)}"
        ),
    ]
    shown, hidden = ordered_rows(view, verbose)
    if shown:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column, justify in (
            ("experiment", "left"), ("state", "left"), ("step", "right"), ("reward", "right"),
            ("time", "right"), ("ETA", "right"), ("GPU", "left"), ("size", "right"),
        ):
            table.add_column(column, justify=justify)
        for e in shown:
            table.add_row(
                e.name,
                state_label(e),
                _step_text(e),
                "-" if e.reward is None else f"{e.reward:.3f}",
                _time_text(e),
                human_seconds(e.eta_s) if e.eta_s is not None else "-",
                _gpu_text(e.gpu),
                human_bytes(e.size_bytes) if e.size_bytes else "-",
            )
        lines.append(table)
    if hidden:
        by_state: dict[str, int] = {}
        for e in hidden:
            by_state[e.state] = by_state.get(e.state, 0) + 1
        summary = ", ".join(f"{k} {v}" for k, v in by_state.items())
        lines.append(Text(f"  … and {len(hidden)} more ({summary}); --verbose lists every experiment."))
    problems = [e for e in view.experiments if e.state == st.FAILED or e.stalled]
    if problems:
        lines.append(Text.from_markup(f"  [bold red]{len(problems)} need attention[/]: `perl diagnose {view.suite}` says why."))
    stale = view.counts[st.STALE]
    if stale:
        lines.append(Text(f"  {stale} stale: finished with settings that no longer match the config; `perl run {view.suite}` redoes them."))
    return Group(*lines)


def render_overview(output: Path, views: list[SuiteView]):
    """One line per suite found under the output directory."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"suites in {output}/", title_justify="left", box=None, header_style="bold")
    for column, justify in (
        ("suite", "left"), ("experiments", "right"), ("states", "left"), ("progress", "left"),
        ("ETA", "right"), ("disk", "right"),
    ):
        table.add_column(column, justify=justify)
    for view in views:
        table.add_row(
            view.suite,
            str(len(view.experiments)),
            counts_line(view),
            Text(progress_bar(view.progress, width=20)),
            _eta_text(view),
            human_bytes(view.size_bytes),
        )
    return table


def _eta_text(view: SuiteView) -> str:
    eta = view.eta_s
    if eta is None:
        return "-" if not view.counts[st.RUNNING] else "unknown"
    finish = time.strftime("%Y-%m-%d %H:%M", time.localtime(view.at + eta))
    return f"{human_seconds(eta)} (~{finish})"


def _step_text(e: ExperimentView) -> str:
    if e.step is None and e.total_steps is None:
        return "-"
    step = e.total_steps if e.state == st.COMPLETED and e.step is None else e.step
    return f"{step if step is not None else 0}/{e.total_steps if e.total_steps is not None else '?'}"


def _time_text(e: ExperimentView) -> str:
    if e.duration_s is None:
        return "-"
    return human_seconds(e.duration_s) + (" elapsed" if e.state == st.RUNNING else "")


def _gpu_text(gpu: Any) -> str:
    if gpu is None or gpu == "":
        return "-"
    if isinstance(gpu, (list, tuple)):
        return ",".join(str(g) for g in gpu)
    return str(gpu)


# --- the command ----------------------------------------------------------------------


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


def command(
    suite: str | None,
    *,
    config_path: Path | None,
    output: Path,
    json_out: bool = False,
    watch: bool = False,
    interval: float = 5.0,
    verbose: bool = False,
    stall_after_s: float = DEFAULT_STALL_AFTER_S,
) -> int:
    """`perl status`: print once, or refresh every `interval` seconds until Ctrl+C."""
    import json

    from perl_cli.ui import console as make_console

    if interval <= 0:
        raise configlib.ConfigError(f"--interval {interval}: must be a positive number of seconds.")
    cfg = load_config(config_path)
    if suite is not None:
        resolve_suite(output, suite, cfg)

    def snapshot() -> tuple[Any, Any]:
        if suite is not None:
            view = load_suite(output, suite, cfg, stall_after_s=stall_after_s)
            return view.to_json(), render_suite(view, verbose=verbose)
        views = [load_suite(output, name, cfg, stall_after_s=stall_after_s) for name in find_suites(output)]
        data = {
            "output_dir": str(output),
            "suites": [{k: v for k, v in view.to_json().items() if k != "experiments"} | {"experiments": len(view.experiments)} for view in views],
        }
        if not views:
            from rich.text import Text

            hint = f" Suites in {cfg.path}: {', '.join(cfg.suites)}." if cfg is not None else ""
            return data, Text(f"No suites under {output}/ yet. Start one with `perl run SUITE` (see `perl plan`).{hint}")
        return data, render_overview(output, views)

    console = make_console()
    if not watch:
        data, renderable = snapshot()
        if json_out:
            print(json.dumps(data, indent=2))
        else:
            console.print(renderable)
        return 0
    try:
        if json_out or not console.is_terminal:
            while True:
                data, renderable = snapshot()
                if json_out:
                    print(json.dumps(data), flush=True)
                else:
                    console.print(renderable)
                time.sleep(interval)
        from rich.console import Group
        from rich.live import Live
        from rich.text import Text

        def screen() -> Any:
            stamp = time.strftime("%H:%M:%S")
            return Group(snapshot()[1], Text(f"updated {stamp}, every {interval:g}s; Ctrl+C to stop", style="dim"))

        with Live(screen(), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(screen(), refresh=True)
    except KeyboardInterrupt:
        return 0
