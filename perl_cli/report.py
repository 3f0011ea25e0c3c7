"""`perl report`: output/<suite>/SUMMARY.md and PNG plots beside it, from the files alone.

Sections: progress, one row per experiment, results by configuration (runs grouped by
every setting but the seed, mean ± standard error, ranked by held-out accuracy), by rank
or data size when the suite varies them, storage, and failures (classified by
perl_cli.diagnose). Plots: training reward and training correctness curves (mean over
seeds, ± sd band), held-out accuracy vs % trainable parameters (the frontier plot),
accuracy vs rank / data size, and, when the worker wrote tracking data
(spectral_history.json, gradient_flow.json), effective rank over steps and gradient-norm
heatmaps (modules x steps) on one shared colour scale. Tables and plots average the same
runs, the completed ones; docs/architecture.md ("Report") states the rules.

matplotlib is imported only here, only when plots are drawn, with the Agg backend.
Works on partial suites (running, failed, pending) and on empty ones.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from perl_cli import experiments_view as views
from perl_cli import (
    plots,
    report_benchmarks,
    report_geometry,
    report_provenance,
    report_quirks,
    report_significance,
    report_studies,
)
from perl_cli import state as st
from perl_cli.experiments_view import SuiteView, disk_usage
from perl_cli.report_model import (  # noqa: F401 - Row, load_rows, curve: the report's public names too
    AXIS_SETTING,
    GRADIENT_FILES,
    SPECTRAL_FILES,
    Group,
    Row,
    axis_text,
    by_key,
    by_step,
    curve,
    groups,
    included,
    load_rows,
    sort_key,
    tracking_history,
    varying_axes,
)
from perl_cli.stats import Stat, eval_se, fmt, number, tail_mean, with_se  # noqa: F401 - tail_mean: public name
from perl_cli.status import progress_bar
from perl_cli.ui import human_bytes, human_seconds

SUMMARY_FILE = "SUMMARY.md"
REWARD_PLOT = "reward_curves.png"
CORRECT_PLOT = "train_correctness.png"
FRONTIER_PLOT = "accuracy_vs_trainable.png"
RANK_PLOT = "accuracy_vs_rank.png"
DATA_PLOT = "accuracy_vs_data_size.png"
EFFECTIVE_RANK_PLOT = "effective_rank.png"
GRADIENT_PLOT = "gradient_norms_{method}.png"
SUMMARY_CHARS = 160  # a failure's one-line summary in the table
# One definition of "reward" in the report, said wherever a reward is shown. (`perl status`
# shows the last logged value instead, and says so.)
REWARD_LABEL = "reward (mean of last 10% of logged steps)"
REWARD_CURVE_LABEL = "reward (mean of each logging window)"
CLIPPED_LABEL = "truncated (clipped ratio, mean of last 10%)"  # completions cut at the length limit
# The report's sections beside the core ones of this module, one module per line, each a sibling
# that imports report_model and stats (never this module or another section) and gives
# `markdown(rows) -> lines` and `plots(rows) -> [(title, file name, draw(ax, rows))]`, and
# optionally `NAME` and `data(rows) -> dict | None` for `perl report --json`.
SECTIONS = (
    report_studies,  # placement and ICA studies
    report_significance,  # which differences between configurations are real
    report_quirks,  # upstream's quirk switches on vs off: a gap or collapse only with them? (issue 21.3)
    report_geometry,  # where each method's update points (spectral snapshots)
)
SE_NOTE = (
    "± is a standard error. For one run: over the held-out problems (each problem's share of correct "
    "samples; its samples are not independent draws). For several runs of one configuration: over seeds, "
    "the standard deviation of the runs divided by √n. Gain = trained − base held-out accuracy; for one run "
    "its ± is paired: from the per-problem differences over the same problems, in which each problem's "
    "difficulty cancels (an eval.json without per-problem results gets the unpaired upper bound)."
)


def group_results(rows: list[Row]) -> list[dict[str, Any]]:
    """One entry per group with completed runs, best held-out accuracy first."""
    results = []
    for g in groups(rows):
        runs = g.runs
        if not runs:
            continue
        results.append({
            "group": g,
            "method": g.method,
            "label": g.label,
            "n": len(runs),
            "planned": g.planned,
            "accuracy": Stat.over(runs, lambda r: r.accuracy, lambda r: r.accuracy_se),
            "base": Stat.over(runs, lambda r: r.base_accuracy, lambda r: r.base_se),
            "gain": Stat.over(runs, lambda r: r.gain, lambda r: r.gain_se),
            "greedy": Stat.over(runs, lambda r: r.greedy, lambda r: r.greedy_se),
            "reward": Stat.over(runs, lambda r: r.final_reward),
            "clipped_ratio": Stat.over(runs, lambda r: r.clipped_ratio),
            "trainable_pct": Stat.over(runs, lambda r: number(r.eval.get("trainable_pct"))),
            "adapter": Stat.over(runs, lambda r: number(r.eval.get("adapter_size_bytes"))),
        })
    return sorted(results, key=lambda x: (-_or(x["accuracy"].mean), -_or(x["reward"].mean), x["label"]))


# --- markdown --------------------------------------------------------------------------


def summary_markdown(view: SuiteView, rows: list[Row], diagnoses: list, plots: list[tuple[str, str]]) -> str:
    n = len(rows)
    counts = view.counts
    lines = [
        f"# PeRL report: {view.suite}",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M', time.localtime(view.at))} from `{view.suite_dir}/` "
        f"by `perl report`; {n} experiments"
        + ("" if view.in_config else " (suite not in the config: from its directories alone)") + ".",
        "",
        "## Progress",
        "",
        f"`{progress_bar(view.progress)}` of optimizer steps; "
        f"{counts[st.COMPLETED]}/{n} experiments completed"
        + (f" ({counts[st.COMPLETED] / n:.0%})" if n else "") + ".",
        "",
        "| " + " | ".join(st.STATES) + " | stalled |",
        "|" + "---:|" * (len(st.STATES) + 1),
        "| " + " | ".join(str(counts[s]) for s in st.STATES) + f" | {view.stalled} |",
        "",
    ]
    if view.eta_s is not None:
        finish = time.strftime("%Y-%m-%d %H:%M", time.localtime(view.at + view.eta_s))
        lines += [f"Estimated completion: {finish} (in {human_seconds(view.eta_s)}, at the observed step times).", ""]
    lines += _experiments_table(rows)
    lines += _method_table(rows)
    for attr, label in varying_axes(rows):
        lines += _axis_table(rows, attr, label)
    for section in SECTIONS:
        lines += section.markdown(rows)
    lines += report_provenance.markdown(rows)  # the environment once; warns on mixed library versions
    lines += report_benchmarks.markdown(rows)  # math suites: the benchmark table (issue 16)
    if plots:
        lines += ["## Plots", ""]
        for title, filename in plots:
            lines += [f"### {title}", "", f"![{title}]({filename})", ""]
    lines += _storage(view, rows)
    lines += _failures(diagnoses)
    return "\n".join(lines).rstrip() + "\n"


def _experiments_table(rows: list[Row]) -> list[str]:
    out = [
        "## Experiments",
        "",
        f"Accuracies are held-out pass@1 ± their standard error over problems; {REWARD_LABEL}.",
        "",
        f"| experiment | method | state | duration | {REWARD_LABEL} | accuracy (sampled) | base | accuracy (greedy) | base | trainable params | trainable % | peak memory | adapter | W&B |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ev = r.eval
        state = r.view.state + (" (stalled)" if r.view.stalled else "")
        state += "".join(f" (--set {o})" for o in r.view.overrides)
        params = number(ev.get("trainable_params"))
        memory = number(ev.get("peak_memory_mb"))
        url = ev.get("wandb_url")
        out.append("| " + " | ".join([
            f"`{r.name}`",
            r.method,
            state,
            human_seconds(r.view.duration_s) if r.view.duration_s is not None else "-",
            fmt(r.final_reward),
            with_se(number(ev.get("accuracy_sampled")), eval_se(ev, "accuracy_sampled")),
            with_se(number(ev.get("base_accuracy_sampled")), eval_se(ev, "base_accuracy_sampled")),
            with_se(r.greedy, r.greedy_se),
            with_se(number(ev.get("base_accuracy_greedy")), eval_se(ev, "base_accuracy_greedy")),
            f"{int(params):,}" if params is not None else "-",
            fmt(number(ev.get("trainable_pct")), ".3f"),
            human_bytes(memory * 1024 * 1024) if memory is not None else "-",
            human_bytes(number(ev.get("adapter_size_bytes"))),
            f"[run]({url})" if isinstance(url, str) and url else "-",
        ]) + " |")
    return out + [""]


def _method_table(rows: list[Row]) -> list[str]:
    results = group_results(rows)
    out = ["## Results by method", ""]
    if not results:
        return out + ["No completed experiments yet.", ""]
    most = max(res["n"] for res in results)
    out += [
        "Completed runs only, grouped by every setting but the seed (the plots average the same runs); "
        "best held-out accuracy (sampled pass@1) first. " + SE_NOTE,
        "",
        f"| # | method | runs | accuracy (sampled) | base | gain | accuracy (greedy) | {REWARD_LABEL} | {CLIPPED_LABEL} "
        "| trainable % | adapter |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, res in enumerate(results, 1):
        runs = f"{res['n']}/{res['planned']}" + (" †" if res["n"] < most else "")
        out.append(
            f"| {i} | {res['label']} | {runs} | {res['accuracy'].text()} | {res['base'].text()} | "
            f"{res['gain'].text(sign=True)} | {res['greedy'].text()} | {res['reward'].text()} | {res['clipped_ratio'].text()} | "
            f"{res['trainable_pct'].text('.3f')} | {human_bytes(res['adapter'].mean)} |"
        )
    out.append("")
    out.append("Runs: completed / planned. Truncated: the share of completions cut at the length limit (TRL's "
               "`completions/clipped_ratio`), mean of the last 10% of logged steps; a method can gain by learning to "
               "stop early, and this shows it. \"-\": the runs did not log it.")
    if any(res["n"] < most for res in results):
        out.append(
            f"† fewer completed runs than the best-covered configuration ({most}): its mean rests on fewer "
            "seeds, so its rank is less certain."
        )
    return out + [""]


def _axis_table(rows: list[Row], attr: str, label: str) -> list[str]:
    key = AXIS_SETTING[attr]
    done = [g for g in groups(rows) if g.runs]
    values = sorted({getattr(g.runs[0], attr) for g in done}, key=sort_key)
    out = [f"## Results by method and {label}", ""]
    if not done:
        return out + ["No completed experiments yet.", ""]
    out += [
        f"Held-out accuracy (sampled pass@1) by {label}: mean ± standard error (over seeds; over problems "
        "for a single run), of the completed runs.",
        "",
        f"| method | {' | '.join(axis_text(v) for v in values)} |",
        "|---|" + "---:|" * len(values),
    ]
    lines: dict[str, dict[Any, str]] = {}
    for g in done:
        others = "".join(f" {k}={axis_text(v)}" for k, v in g.settings.items() if k != key)
        stat = Stat.over(g.runs, lambda r: r.accuracy, lambda r: r.accuracy_se)
        lines.setdefault(g.method + others, {})[getattr(g.runs[0], attr)] = stat.text()
    for name, cells in lines.items():
        out.append(f"| {name} | {' | '.join(cells.get(v, '-') for v in values)} |")
    return out + [""]


def _storage(view: SuiteView, rows: list[Row]) -> list[str]:
    checkpoints = sum(disk_usage(r.view.dir / st.CHECKPOINT_DIR) for r in rows if r.view.dir)
    adapters = sum(number(r.eval.get("adapter_size_bytes")) or 0 for r in rows)
    out = [
        "## Storage",
        "",
        f"- total: {human_bytes(view.size_bytes)} in `{view.suite_dir}/`",
        f"- checkpoints: {human_bytes(checkpoints)}",
        f"- final adapters: {human_bytes(adapters)}",
    ]
    largest = sorted((r for r in rows if r.view.size_bytes), key=lambda r: -r.view.size_bytes)[:5]
    if largest:
        out.append("- largest: " + ", ".join(f"`{r.name}` {human_bytes(r.view.size_bytes)}" for r in largest))
    return out + [""]


def _failures(diagnoses: list) -> list[str]:
    out = ["## Failures and interruptions", ""]
    if not diagnoses:
        return out + ["None.", ""]
    out += [
        "Classified by `perl diagnose` (run it for the log lines and tracebacks).",
        "",
        "| experiment | state | cause | what happened | fix |",
        "|---|---|---|---|---|",
    ]
    for d in diagnoses:
        state = d.state + (" (stalled)" if d.stalled else "")
        fix = "<br>".join(f"`{c}`" for c in d.fix.commands) or _cell(d.fix.text)
        summary = d.summary if len(d.summary) <= SUMMARY_CHARS else d.summary[: SUMMARY_CHARS - 1] + "…"
        out.append(f"| `{d.name}` | {state} | {d.rule.title} | {_cell(summary)} | {fix} |")
    return out + [""]


# --- plots -----------------------------------------------------------------------------


Progress = Callable[[str], None]


def draw_plots(view: SuiteView, rows: list[Row], directory: Path, progress: Progress | None = None) -> list[tuple[str, str]]:
    """Draw every plot the data allows into `directory`; (title, file name) of each.

    Every plot averages the same runs as the tables (`included`), grouped the same way."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tell = progress or (lambda _: None)
    made: list[tuple[str, str]] = []
    for title, filename, draw in (
        (f"Training {REWARD_CURVE_LABEL} (mean over seeds, band ± sd)", REWARD_PLOT,
         lambda ax, rows: _plot_curves(ax, rows, "reward", "reward")),
        ("Training correctness (share of correct completions, mean over seeds, band ± sd)", CORRECT_PLOT,
         lambda ax, rows: _plot_curves(ax, rows, "reward/correct", "training correctness")),
        ("Held-out accuracy vs trainable parameters", FRONTIER_PLOT, _plot_frontier),
        ("Held-out accuracy vs rank", RANK_PLOT, lambda ax, rows: _plot_axis(ax, rows, "rank")),
        ("Held-out accuracy vs data size", DATA_PLOT, lambda ax, rows: _plot_axis(ax, rows, "data_size")),
        ("Effective rank of the adapter updates", EFFECTIVE_RANK_PLOT, _plot_effective_rank),
        *(plot for section in SECTIONS for plot in section.plots(rows)),
    ):
        tell(f"drawing {filename}")
        fig, ax = plt.subplots(figsize=(7, 4.5))
        try:
            if draw(ax, rows):
                ax.set_title(f"{view.suite}: {title}", fontsize=10)
                fig.tight_layout()
                fig.savefig(directory / filename, dpi=110)
                made.append((title, filename))
        finally:
            plt.close(fig)
    grids = _gradient_grids(rows)
    low, high = gradient_scale(grids)
    for label, grid in grids.items():
        filename = GRADIENT_PLOT.format(method=re.sub(r"[^\w.-]+", "_", label))
        tell(f"drawing {filename}")
        fig, ax = plt.subplots(figsize=(7, 4.5))
        try:
            # One colour scale for every method's heatmap, so that colours compare across them.
            plots.draw_gradient_heatmap(fig, ax, grid, vmin=low, vmax=high, shared=True)
            ax.set_title(f"{view.suite}: gradient norms, {label}", fontsize=10)
            fig.tight_layout()
            fig.savefig(directory / filename, dpi=110)
            made.append((f"Gradient norms per layer: {label}", filename))
        finally:
            plt.close(fig)
    return made


def gradient_scale(grids: dict[str, tuple[list, list, list[list[float]]]]) -> tuple[float | None, float | None]:
    """(min, max) of the log10 gradient norms over every method's grid: the heatmaps' shared scale."""
    return plots.value_range(grids.values())


# Training curves are noisy (each logged value averages a few prompts): past this many logged
# points a curve is drawn faintly as logged, and boldly as a trailing running mean of them.
SMOOTH_WINDOW = 5


def running_mean(values: list[float], window: int) -> list[float]:
    """Each value replaced by the mean of it and up to `window - 1` values before it."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _plot_curves(ax, rows: list[Row], key: str, ylabel: str) -> bool:
    drawn = smoothed = False
    for g in groups(rows):
        steps, mean, std = curve(g.runs, key)
        if not steps:
            continue
        n = len(g.runs)
        label = f"{g.label} ({n} run{'s' if n != 1 else ''})"
        if len(steps) >= 2 * SMOOTH_WINDOW:
            (line,) = ax.plot(steps, mean, label=label, linewidth=0.8, alpha=0.45)
            ax.plot(steps, running_mean(mean, SMOOTH_WINDOW), color=line.get_color(), linewidth=2)
            smoothed = True
        else:
            (line,) = ax.plot(steps, mean, label=label, linewidth=1.5)
        ax.fill_between(steps, [m - d for m, d in zip(mean, std, strict=True)], [m + d for m, d in zip(mean, std, strict=True)],
                        color=line.get_color(), alpha=0.15, linewidth=0)
        drawn = True
    if drawn:
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        title = "each point averages" + (f"\n(bold: running mean of {SMOOTH_WINDOW} points)" if smoothed else "")
        ax.legend(fontsize=8, title=title, title_fontsize=8)
        ax.grid(alpha=0.3)
    return drawn


def _plot_frontier(ax, rows: list[Row]) -> bool:
    """One point per configuration (mean ± se over seeds); a line through a method's ranks or data sizes."""
    done = [g for g in groups(rows) if any(r.accuracy is not None and number(r.eval.get("trainable_pct")) for r in g.runs)]
    if not done:
        return False
    pcts = []
    for method, members in by_key(done, lambda g: g.method).items():
        xs, ys, errs = [], [], []
        for g in members:
            runs = [r for r in g.runs if r.accuracy is not None and number(r.eval.get("trainable_pct"))]
            xs.append(statistics.fmean(r.eval["trainable_pct"] for r in runs))
            acc = Stat.over(runs, lambda r: r.accuracy, lambda r: r.accuracy_se)
            ys.append(acc.mean)
            errs.append(acc.se or 0.0)
            pcts += [r.eval["trainable_pct"] for r in runs]
        several = len(members) > 1
        ax.errorbar(xs, ys, yerr=errs, fmt="o-" if several else "o", capsize=3, label=method)
        if not several:
            ax.annotate(method, (xs[-1], ys[-1]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    if max(pcts) / min(pcts) >= 10:
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("trainable parameters (% of the model)")
    ax.set_ylabel("held-out accuracy (sampled pass@1), ± se")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return True


def _plot_axis(ax, rows: list[Row], attr: str) -> bool:
    key = AXIS_SETTING[attr]
    done = [g for g in groups(rows) if g.runs and getattr(g.runs[0], attr) is not None
            and any(r.accuracy is not None for r in g.runs)]
    if len({getattr(g.runs[0], attr) for g in done}) < 2:
        return False
    lines = by_key(done, lambda g: g.method + "".join(f" {k}={axis_text(v)}" for k, v in g.settings.items() if k != key))
    for name, members in sorted(lines.items()):
        members = sorted(members, key=lambda g: getattr(g.runs[0], attr))
        stats = []
        for g in members:
            stats.append(Stat.over(g.runs, lambda r: r.accuracy, lambda r: r.accuracy_se))
        xs = [getattr(g.runs[0], attr) for g in members]
        ax.errorbar(xs, [s.mean for s in stats], yerr=[s.se or 0.0 for s in stats], marker="o", capsize=3, label=name)
    ax.set_xscale("log", base=2 if attr == "rank" else 10)
    ax.set_xlabel("rank" if attr == "rank" else "training examples")
    ax.set_ylabel("held-out accuracy (sampled pass@1), ± se")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return True


def _plot_effective_rank(ax, rows: list[Row]) -> bool:
    series = []
    for g in groups(rows):
        runs = [dict(_spectral_series(r)) for r in g.runs]
        runs = [x for x in runs if x]
        if not runs:
            continue
        common = set.intersection(*(set(x) for x in runs))
        steps, mean, _ = by_step((s, x[s]) for x in runs for s in common)
        if steps:
            series.append((f"{g.label} ({len(runs)} run{'s' if len(runs) != 1 else ''})", steps, mean))
    return plots.draw_effective_rank(ax, series)


def _spectral_series(row: Row) -> list[tuple[float, float]]:
    """(step, effective rank averaged over the tracked layers) from spectral_history.json."""
    out = []
    for snap in tracking_history(row, SPECTRAL_FILES):
        values = [
            v for layer in snap["layers"].values()
            if isinstance(layer, dict) and (v := number(layer.get("effective_rank"))) is not None
        ]
        if number(snap.get("step")) is not None and values:
            out.append((float(snap["step"]), statistics.fmean(values)))
    return out


def _gradient_grids(rows: list[Row]) -> dict[str, tuple[list, list, list[list[float]]]]:
    """Per configuration, (steps, modules, log10 gradient norm [module][step]) of its first completed
    run with gradient_flow.json."""
    grids = {}
    for g in groups(rows):
        for r in g.runs:
            grid = plots.gradient_grid(tracking_history(r, GRADIENT_FILES))
            if grid:
                grids[g.label] = grid
                break
    return grids


# --- the command -------------------------------------------------------------------------


def build(view: SuiteView, *, draw: bool, config_path: Path | None, output: Path,
          progress: Progress | None = None) -> tuple[str, list[tuple[str, str]]]:
    """The markdown, drawing the plots into the suite directory first when `draw`.

    `progress` is told what is being done (reading, each plot, diagnosing, writing)."""
    from perl_cli import diagnose as diagnoselib

    tell = progress or (lambda _: None)
    tell(f"reading {len(view.experiments)} experiments")
    rows = load_rows(view)
    plots = draw_plots(view, rows, view.suite_dir, tell) if draw else []
    tell("classifying failures")
    diagnoses = diagnoselib.diagnose_suite(view, lines=0, config_path=config_path, output=output)
    tell("writing the summary")
    return summary_markdown(view, rows, diagnoses, plots), plots


def json_data(view: SuiteView, rows: list[Row] | None = None) -> dict[str, Any]:
    """`perl report --json`: the numbers of SUMMARY.md's results table and of every section that has data."""
    rows = load_rows(view) if rows is None else rows

    def stat(s: Stat) -> dict[str, Any]:
        return {"mean": s.mean, "se": s.se, "n": s.n}

    out: dict[str, Any] = {
        "suite": view.suite,
        "experiments": len(rows),
        "counts": {s: view.counts[s] for s in st.STATES},
        "results": [
            {"label": res["label"], "method": res["method"], "runs": res["n"], "planned": res["planned"],
             **{k: stat(res[k]) for k in ("accuracy", "base", "gain", "greedy", "reward", "clipped_ratio", "trainable_pct")}}
            for res in group_results(rows)
        ],
    }
    for section in SECTIONS:
        if hasattr(section, "data") and (data := section.data(rows)) is not None:
            out[getattr(section, "NAME", section.__name__.rsplit(".", 1)[-1])] = data
    return out


def command(suite: str | None, *, config_path: Path | None, output: Path, stdout: bool = False,
            stall_after_s: float, selection: views.Selection | None = None, as_json: bool = False) -> int:
    from rich.progress import Progress as RichProgress
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

    from perl_cli.ui import console as make_console

    selection = selection or views.Selection()
    selection.check_suite(suite)
    if selection != views.Selection() and not (stdout or as_json):
        raise views.configlib.ConfigError(
            "--state/--only/--exclude narrow the report: add --stdout (or --json) to print it "
            "(SUMMARY.md and the plots always cover the whole suite)."
        )
    cfg = views.load_config(config_path)
    names = views.suites_to_read(output, suite, cfg)
    if as_json:  # the numbers only, on stdout; nothing written
        suites = [json_data(selection.apply(views.load_suite(output, name, cfg, stall_after_s=stall_after_s)))
                  for name in names]
        print(json.dumps(suites[0] if suite is not None and len(suites) == 1 else suites, indent=2, allow_nan=False))
        return 0
    console = make_console(stderr=stdout)
    if not names:
        console.print(f"No suites under {output}/ yet: nothing to report.", markup=False)
        return 0
    # A live line on a terminal (stderr with --stdout, so the markdown stays clean); nothing when piped.
    columns = (SpinnerColumn(), TextColumn("[bold]{task.fields[suite]}[/]: {task.description}"), TimeElapsedColumn())
    with RichProgress(*columns, console=console, transient=True) as bar:
        for name in names:
            task = bar.add_task("loading", suite=name, total=None)

            def tell(what: str, task=task) -> None:
                bar.update(task, description=what)

            view = selection.apply(views.load_suite(output, name, cfg, stall_after_s=stall_after_s))
            if stdout:
                text, _ = build(view, draw=False, config_path=config_path, output=output, progress=tell)
                bar.remove_task(task)
                print(text)
                for line in report_provenance.warning_lines(text):
                    console.print(f"{name}: {line.replace('**', '')}", markup=False)
                continue
            view.suite_dir.mkdir(parents=True, exist_ok=True)
            text, plots = build(view, draw=True, config_path=config_path, output=output, progress=tell)
            st.atomic_write_text(view.suite_dir / SUMMARY_FILE, text)
            bar.remove_task(task)
            for line in report_provenance.warning_lines(text):
                console.print(f"{name}: {line.replace('**', '')}", markup=False)
            console.print(
                f"wrote {view.suite_dir / SUMMARY_FILE}"
                + (f" and {len(plots)} plots ({', '.join(f for _, f in plots)})" if plots else " (no plot: no data yet)"),
                markup=False,
            )
    return 0



# --- small helpers --------------------------------------------------------------------------


def _or(value: float | None) -> float:
    return value if value is not None else -math.inf


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
