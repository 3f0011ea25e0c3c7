"""`perl status`: where a suite stands, rendered from the read model (perl_cli.experiments_view).

This module only renders and runs the command; what each experiment is (state, step,
ETA, unreadable files, overrides) is decided in perl_cli.experiments_view, which every
reader shares. User text (names, errors, log lines) is escaped wherever it is shown
as Rich markup. Nothing here imports torch.

JSON object of `perl status SUITE --json` (contract; fields are only ever added):

    {"suite": str, "suite_dir": str, "in_config": bool,
     "counts": {state: int for every state}, "stalled": int,
     "progress": float (0..1, share of the optimizer steps done, over the run in progress if any),
     "eta_s": float | null, "size_bytes": int,
     "run": {"experiments": [name], "overrides": [str]} | null (the `perl run` in progress),
     "experiments": [{"name", "state", "stalled", "step", "total_steps", "reward",
                      "started", "ended", "duration_s", "eta_s", "gpu", "size_bytes",
                      "method", "error", "problem", "overrides",
                      "pid", "heartbeat_age_s", "phase", "wandb_url", "slurm_job_id"}]}

`phase` is {"name", "done", "total"} while a running worker prepares (model build, warm
start) before its first step, else null; `wandb_url` is the run's W&B page when known.
`slurm_job_id` is "<array>_<task>" for an experiment submitted with `--backend slurm`.
`problem` says which file of an `unreadable` experiment is wrong and how; `overrides`
lists the `--set` arguments it ran with. Times are unix epoch seconds; durations seconds;
a value not known is null. `perl status --json` without a suite prints {"output_dir",
"suites": [{"suite", "counts", "stalled", "progress", "eta_s", "size_bytes", "run", "experiments"}]}.
"""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.markup import escape

from perl_cli import config as configlib
from perl_cli import state as st
from perl_cli.experiments_view import (
    DEFAULT_STALL_AFTER_S,
    ExperimentView,
    Selection,
    SuiteView,
    find_suites,
    load_config,
    load_suite,
    needs_attention,
    resolve_suite,
)
from perl_cli.ui import human_bytes, human_seconds

# Without --verbose: this many recently finished completed experiments are listed too.
RECENT_COMPLETED = 5
ATTENTION_ORDER = (st.RUNNING, st.UNREADABLE, st.FAILED, st.INTERRUPTED, st.STALE, st.QUEUED, st.COMPLETED, st.PENDING)
DISPLAY_ORDER = (st.COMPLETED, st.RUNNING, st.QUEUED, st.FAILED, st.INTERRUPTED, st.STALE, st.UNREADABLE, st.PENDING)
# Listed without --verbose: what needs a look.
ATTENTION = (st.RUNNING, st.UNREADABLE, st.FAILED, st.INTERRUPTED, st.STALE)
OVERRIDE_MARK = "*"
EXIT_INTERRUPTED = 130
STATE_STYLE = {
    st.PENDING: "dim",
    st.QUEUED: "blue",
    st.RUNNING: "cyan",
    st.COMPLETED: "green",
    st.FAILED: "bold red",
    st.INTERRUPTED: "yellow",
    st.STALE: "magenta",
    st.UNREADABLE: "bold red",
}
STATE_MARK = {
    st.PENDING: "○",
    st.QUEUED: "…",
    st.RUNNING: "⧗",
    st.COMPLETED: "✓",
    st.FAILED: "✗",
    st.INTERRUPTED: "⏸",
    st.STALE: "≠",
    st.UNREADABLE: "?",
}


# --- rendering ----------------------------------------------------------------------


def progress_bar(fraction: float, width: int = 30) -> str:
    fraction = min(1.0, max(0.0, fraction))
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "-" * (width - filled) + f"] {fraction * 100:.1f}%"


def state_label(e: ExperimentView) -> str:
    label = f"[{STATE_STYLE[e.state]}]{STATE_MARK[e.state]} {e.state}[/]"
    if e.collapse is not None:
        label += f" [bold red]({collapse_word(e)} @{_step_number(e.collapse.get('step'))})[/]"
    return label + " [bold red](stalled)[/]" if e.stalled else label


def collapse_word(e: ExperimentView) -> str:
    """"collapsing" while it runs, "collapsed" once it has ended."""
    return "collapsing" if e.state == st.RUNNING else "collapsed"


def _step_number(step: Any) -> str:
    return str(int(step)) if isinstance(step, (int, float)) and float(step).is_integer() else str(step)


def counts_line(view: SuiteView) -> str:
    counts = view.counts
    parts = [f"[{STATE_STYLE[s]}]{s} {counts[s]}[/]" for s in DISPLAY_ORDER if counts[s] or s in (st.COMPLETED, st.PENDING)]
    if view.stalled:
        parts.append(f"[bold red]stalled {view.stalled}[/]")
    return ", ".join(parts)


def attention_sorted(experiments: list[ExperimentView]) -> list[ExperimentView]:
    """Stalled first, then by ATTENTION_ORDER, the most recently completed first (`perl status` and `perl watch`)."""
    rank = {s: i for i, s in enumerate(ATTENTION_ORDER)}
    return sorted(
        experiments,
        key=lambda e: (not e.stalled, e.collapse is None, rank[e.state], -(e.ended or 0) if e.state == st.COMPLETED else 0),
    )


def ordered_rows(view: SuiteView, verbose: bool) -> tuple[list[ExperimentView], list[ExperimentView]]:
    """(rows to show, rows summarised): attention first; without --verbose the rest is summarised."""
    ordered = attention_sorted(view.experiments)
    if verbose:
        return ordered, []
    shown, hidden, recent = [], [], 0
    for e in ordered:
        if e.state in ATTENTION or e.collapse is not None:
            shown.append(e)
        elif e.state == st.COMPLETED and recent < RECENT_COMPLETED:
            shown.append(e)
            recent += 1
        else:
            hidden.append(e)
    return shown, hidden


STATUS_COLUMNS = ("experiment", "state", "step", "reward", "time", "ETA", "GPU", "size")
# Dropped in this order when the terminal is too narrow; the experiment name is never cut.
STATUS_OPTIONAL_COLUMNS = ["size", "GPU", "reward", "time", "ETA", "step"]


def render_suite(view: SuiteView, *, verbose: bool = False, console: Any = None):
    """A Rich renderable of one suite; with `console`, columns are dropped to fit its width."""
    from rich.console import Group
    from rich.text import Text

    from perl_cli.ui import console as make_console
    from perl_cli.ui import fit_columns

    n = len(view.experiments)
    where = "" if view.in_config else " (not in the config: from its directories alone)"
    of = f" (of {view.selected_from}, filtered)" if view.selected_from is not None else ""
    lines: list[Any] = [
        Text.from_markup(f"[bold]suite {escape(view.suite)}[/]: {n} experiments{of} in {escape(str(view.suite_dir))}/{where}"),
        Text.from_markup("  " + counts_line(view)),
        Text(
            f"  progress {progress_bar(view.progress)} of steps{_run_text(view)} · "
            f"{view.counts[st.COMPLETED]}/{n} completed · ETA {_eta_text(view)} · disk {human_bytes(view.size_bytes)}"
        ),
    ]
    shown, hidden = ordered_rows(view, verbose)
    if shown:
        def build(dropped: set[str]):
            return _table(shown, [c for c in STATUS_COLUMNS if c not in dropped])

        table, dropped = fit_columns(console or make_console(), build, STATUS_OPTIONAL_COLUMNS)
        lines.append(table)
        if dropped:
            left_out = ", ".join(c for c in STATUS_COLUMNS if c in dropped)
            lines.append(Text(f"  (left out to fit the width: {left_out}; --json has every field)", style="dim"))
    if hidden:
        by_state: dict[str, int] = {}
        for e in hidden:
            by_state[e.state] = by_state.get(e.state, 0) + 1
        summary = ", ".join(f"{k} {v}" for k, v in by_state.items())
        lines.append(Text(f"  … and {len(hidden)} more ({summary}); --verbose lists every experiment."))
    for e in shown:
        if e.problem:
            lines.append(Text(f"  {e.name}: {e.problem}", style="red"))
        if e.collapse is not None:
            lines.append(Text(f"  {e.name}: {collapse_word(e)} since step {_step_number(e.collapse.get('step'))}: "
                              f"{e.collapse.get('text')}", style="red"))
    if verbose:
        lines.extend(Text(f"  {e.name}: W&B {e.wandb_url}") for e in shown if e.wandb_url)
    lines.extend(_override_lines(view, verbose))
    problems = attention(view)
    if problems:
        lines.append(Text.from_markup(f"  [bold red]{len(problems)} need attention[/]: `perl diagnose {escape(view.suite)}` says why."))
    stale = view.counts[st.STALE]
    if stale:
        names = ",".join(e.name for e in view.experiments if e.state == st.STALE)
        lines.append(Text(
            f"  {stale} stale: settings no longer match the config (with the --set they ran with); "
            f"`perl run {view.suite} --only {names} --fresh` redoes them."
        ))
    console = console or make_console()
    return Group(*(hanging(line, console) for line in lines))


def hanging(line: Any, console: Any) -> Any:
    """A Text wrapped at word boundaries to the console's width, its continuation lines
    indented like its first (leading spaces become a margin); other renderables as they are."""
    from rich.text import Text

    if not isinstance(line, Text) or not line.plain.strip():
        return line
    depth = len(line.plain) - len(line.plain.lstrip(" "))
    wrapped = line[depth:].wrap(console, max(20, console.width - depth))
    for part in wrapped:
        part.rstrip()
    return Text("\n").join(Text(" " * depth) + part for part in wrapped)


def attention(view: SuiteView) -> list[ExperimentView]:
    """What `perl diagnose` lists: failed, interrupted, unreadable, and stalled experiments."""
    return [e for e in view.experiments if needs_attention(e)]


def _table(shown: list[ExperimentView], columns: list[str]):
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, justify="left" if column in ("experiment", "state", "GPU") else "right",
                         no_wrap=True)
    for e in shown:
        cells = {
            "experiment": Text(e.name + (f" {OVERRIDE_MARK}" if e.overrides else "")),
            "state": state_label(e),
            "step": _step_text(e),
            "reward": "-" if e.reward is None else f"{e.reward:.3f}",
            "time": _time_text(e),
            "ETA": human_seconds(e.eta_s) if e.eta_s is not None else "-",
            "GPU": _gpu_text(e.gpu) + (f" (slurm {e.slurm_job_id})" if e.slurm_job_id else ""),
            "size": human_bytes(e.size_bytes) if e.size_bytes else "-",
        }
        table.add_row(*(cells[c] for c in columns))
    return table


def _override_lines(view: SuiteView, verbose: bool) -> list[Any]:
    """One line per distinct set of --set overrides the experiments ran with (names with --verbose)."""
    from rich.text import Text

    groups: dict[tuple[str, ...], list[str]] = {}
    for e in view.experiments:
        if e.overrides:
            groups.setdefault(tuple(e.overrides), []).append(e.name)
    out = []
    for overrides, names in groups.items():
        flags = " ".join(f"--set {o}" for o in overrides)
        who = ": " + ", ".join(names) if verbose else ""
        out.append(Text(f"  {OVERRIDE_MARK} {len(names)} ran with {flags} (recorded in config.json){who}"))
    return out


def _run_text(view: SuiteView) -> str:
    return "" if view.run is None else f" of the run in progress ({len(view.in_run)} experiments)"


OVERVIEW_COLUMNS = ("suite", "experiments", "states", "progress", "ETA", "disk")
# Dropped in this order when the terminal is too narrow; the suite name is never cut.
OVERVIEW_OPTIONAL_COLUMNS = ["disk", "progress", "ETA", "experiments"]


def render_overview(output: Path, views: list[SuiteView], console: Any = None):
    """One line per suite found under the output directory."""
    from rich.table import Table
    from rich.text import Text

    from perl_cli.ui import console as make_console
    from perl_cli.ui import fit_columns

    def build(dropped: set[str]) -> Table:
        table = Table(title=escape(f"suites in {output}/"), title_justify="left", box=None, header_style="bold")
        shown = [c for c in OVERVIEW_COLUMNS if c not in dropped]
        for column in shown:
            table.add_column(column, justify="left" if column in ("suite", "states", "progress") else "right",
                             no_wrap=column != "states")
        for view in views:
            cells = {
                "suite": Text(view.suite),
                "experiments": str(len(view.experiments)),
                "states": counts_line(view),
                "progress": Text(progress_bar(view.progress, width=20)),
                "ETA": human_seconds(view.eta_s) if view.eta_s is not None else _eta_text(view),
                "disk": human_bytes(view.size_bytes),
            }
            table.add_row(*(cells[c] for c in shown))
        return table

    return fit_columns(console or make_console(), build, OVERVIEW_OPTIONAL_COLUMNS)[0]


def _eta_text(view: SuiteView) -> str:
    eta = view.eta_s
    if eta is None:
        return "-" if not view.counts[st.RUNNING] else "unknown"
    finish = time.strftime("%Y-%m-%d %H:%M", time.localtime(view.at + eta))
    return f"{human_seconds(eta)} (~{finish})"


def _step_text(e: ExperimentView) -> str:
    if e.phase_text:
        return e.phase_text
    if (e.step is None and e.total_steps is None) or e.state == st.UNREADABLE:
        return "-"
    step = e.total_steps if e.state == st.COMPLETED and e.step is None else e.step
    return f"{step if step is not None else 0}/{e.total_steps if e.total_steps is not None else '?'}"


def _time_text(e: ExperimentView) -> str:
    if e.duration_s is None:
        return "-"
    return human_seconds(e.duration_s)


def _gpu_text(gpu: Any) -> str:
    if gpu is None or gpu == "":
        return "-"
    if isinstance(gpu, (list, tuple)):
        return ",".join(str(g) for g in gpu)
    return str(gpu)


# --- the command ----------------------------------------------------------------------


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
    selection: Selection | None = None,
) -> int:
    """`perl status`: print once, or refresh every `interval` seconds until Ctrl+C."""
    import json

    from perl_cli.ui import console as make_console

    if interval <= 0:
        raise configlib.ConfigError(f"--interval {interval}: must be a positive number of seconds.")
    selection = selection or Selection()
    selection.check_suite(suite)
    cfg = load_config(config_path)
    if suite is not None:
        resolve_suite(output, suite, cfg)
    console = make_console()

    def snapshot() -> tuple[Any, Any]:
        if suite is not None:
            view = selection.apply(load_suite(output, suite, cfg, stall_after_s=stall_after_s))
            return view.to_json(), render_suite(view, verbose=verbose, console=console)
        views = [selection.apply(load_suite(output, name, cfg, stall_after_s=stall_after_s)) for name in find_suites(output)]
        data = {
            "output_dir": str(output),
            "suites": [{k: v for k, v in view.to_json().items() if k != "experiments"} | {"experiments": len(view.experiments)} for view in views],
        }
        if not views:
            from rich.text import Text

            hint = f" Suites in {cfg.path}: {', '.join(cfg.suites)}." if cfg is not None else ""
            return data, Text(f"No suites under {output}/ yet. Start one with `perl run SUITE` (see `perl plan`).{hint}")
        return data, render_overview(output, views, console)

    if not watch:
        data, renderable = snapshot()
        if json_out:
            print(json.dumps(data, indent=2))
        else:
            console.print(renderable)
        return 0
    try:
        with ctrl_c_interrupts():
            watch_loop(snapshot, console, json_out=json_out, interval=interval)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED  # 130, like every command stopped by Ctrl+C (README)
    return 0


def watch_loop(snapshot: Any, console: Any, *, json_out: bool, interval: float) -> None:
    """Print (or redraw in place, on a terminal) a fresh snapshot every `interval` seconds, forever."""
    import json

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


@contextmanager
def ctrl_c_interrupts():
    """Make SIGINT raise KeyboardInterrupt while watching, whatever the parent left it at.

    A process started in the background by a shell without job control (`cmd &` in a
    script, some CI runners) inherits SIGINT *ignored*, and Python then installs no
    handler: Ctrl+C or `kill -INT` would never stop the watch.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
