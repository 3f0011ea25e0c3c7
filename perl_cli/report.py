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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perl_cli import experiments_view as views
from perl_cli import report_benchmarks, report_studies
from perl_cli import state as st
from perl_cli.config import IDENTITY_KEYS
from perl_cli.experiments_view import ExperimentView, SuiteView, dig, disk_usage
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
# Tracking files the worker writes (perl_cli/tracking/callback.py), JSON twins readable without torch.
SPECTRAL_FILES = ("spectral_history.json", "spectral_logs/spectral_history.json", "spectral_history_final.json")
SUMMARY_CHARS = 160  # a failure's one-line summary in the table
# One definition of "reward" in the report, said wherever a reward is shown. (`perl status`
# shows the last logged value instead, and says so.)
REWARD_LABEL = "reward (mean of last 10% of logged steps)"
REWARD_CURVE_LABEL = "reward (mean of each logging window)"
SE_NOTE = (
    "± is a standard error. For one run: over the held-out problems (each problem's share of correct "
    "samples; its samples are not independent draws). For several runs of one configuration: over seeds, "
    "the standard deviation of the runs divided by √n. Gain = trained − base held-out accuracy; for one run "
    "its ± treats the two evaluations as independent, which overstates it (both use the same problems)."
)
GRADIENT_FILES = ("gradient_flow.json", "gradient_logs/gradient_flow.json", "gradient_flow_final.json")


@dataclass
class Row:
    """An experiment with what the report needs from its files."""

    view: ExperimentView
    eval: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.view.name

    @property
    def method(self) -> str:
        return self.view.method or self.eval.get("method") or "?"

    @property
    def rank(self) -> Any:
        return dig(self.view.config, "peft", "r")

    @property
    def data_size(self) -> Any:
        return dig(self.view.config, "dataset", "data_size")

    @property
    def accuracy(self) -> float | None:
        """Held-out sampled pass@1: greedy accuracy on 200 problems moves by noise alone,
        so the sampled figure leads, and greedy is the fallback."""
        sampled = _number(self.eval.get("accuracy_sampled"))
        return sampled if sampled is not None else self.greedy

    @property
    def accuracy_key(self) -> str:
        return "accuracy_sampled" if _number(self.eval.get("accuracy_sampled")) is not None else "accuracy_greedy"

    @property
    def accuracy_se(self) -> float | None:
        return eval_se(self.eval, self.accuracy_key)

    @property
    def base_accuracy(self) -> float | None:
        return _number(self.eval.get(f"base_{self.accuracy_key}"))

    @property
    def base_se(self) -> float | None:
        return eval_se(self.eval, f"base_{self.accuracy_key}")

    @property
    def gain(self) -> float | None:
        acc, base = self.accuracy, self.base_accuracy
        return None if acc is None or base is None else acc - base

    @property
    def gain_se(self) -> float | None:
        """Treats the two evaluations as independent: an upper bound, since both use the same problems."""
        a, b = self.accuracy_se, self.base_se
        return None if a is None or b is None else math.sqrt(a * a + b * b)

    @property
    def greedy(self) -> float | None:
        return _number(self.eval.get("accuracy_greedy"))

    @property
    def greedy_se(self) -> float | None:
        return eval_se(self.eval, "accuracy_greedy")

    @property
    def final_reward(self) -> float | None:
        """The training reward as the report defines it (REWARD_LABEL): the mean of the last 10%
        of the logged values, from metrics.jsonl (or eval.json's worker-computed copy)."""
        rewards = [v for r in self.metrics if (v := _number(r.get("reward"))) is not None]
        if rewards:
            return tail_mean(rewards)
        return _number(self.eval.get("reward_last_10pct"))  # same definition, computed by the worker

    @property
    def done(self) -> bool:
        return self.view.state == st.COMPLETED

    @property
    def variant(self) -> tuple[tuple[str, str], ...]:
        """Every setting of the run except its seed: runs that differ only by seed share it."""
        config = self.view.expected if self.view.expected is not None else self.view.config
        return tuple(sorted(_flatten({
            k: v for k, v in config.items() if k not in (*IDENTITY_KEYS, st.RUNTIME_KEY)
        }).items()))


def load_rows(view: SuiteView) -> list[Row]:
    rows = []
    for e in view.experiments:
        readable = e.dir is not None and e.state != st.UNREADABLE
        rows.append(Row(e, views.read_eval(e.dir) if readable else {}, views.read_metrics(e.dir) if readable else []))
    return rows


# --- aggregation ------------------------------------------------------------------------


@dataclass
class Stat:
    """One quantity over the runs of a group; ± is always a standard error of the mean.

    Several runs (seeds): the spread over seeds, sd / sqrt(n). One run: `single_se`, the
    run's own standard error (over held-out problems, for accuracies), when known.
    """

    values: list[float]
    single_se: float | None = None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def se(self) -> float | None:
        if self.std is not None:
            return self.std / math.sqrt(len(self.values))
        return self.single_se if self.values else None

    def text(self, fmt: str = ".3f", *, sign: bool = False) -> str:
        if not self.values:
            return "-"
        spec = ("+" if sign else "") + fmt
        return f"{self.mean:{spec}}" + (f" ± {self.se:{fmt}}" if self.se is not None else "")


def by_key(rows: Iterable[Row], key) -> dict[Any, list[Row]]:
    out: dict[Any, list[Row]] = {}
    for row in rows:
        out.setdefault(key(row), []).append(row)
    return out


def included(rows: Iterable[Row]) -> list[Row]:
    """The runs every table and curve averages: completed ones (not stale, failed, running...)."""
    return [r for r in rows if r.done]


@dataclass
class Group:
    """Runs that differ only by seed: one method with one value of every other setting."""

    method: str
    label: str  # the method, plus the settings that tell it apart from the method's other groups
    settings: dict[str, Any]  # those settings, short name -> value
    runs: list[Row]  # the completed runs: what its table rows and curves average
    planned: int  # its experiments in the suite, in any state


def groups(rows: list[Row]) -> list[Group]:
    """Group the suite's runs by everything but the seed, so that ± is a spread over seeds only."""
    out = []
    for method, of_method in by_key(rows, lambda r: r.method).items():
        shown = _distinguishing(list(by_key(of_method, lambda r: r.variant)))
        for variant, runs in by_key(of_method, lambda r: r.variant).items():
            settings = {path.rsplit(".", 1)[-1]: json.loads(value) for path, value in variant if path in shown}
            label = method + "".join(f" {k}={_axis_text(v)}" for k, v in settings.items())
            out.append(Group(method, label, settings, included(runs), len(runs)))
    return sorted(out, key=lambda g: (g.method, [_sort_key(v) for v in g.settings.values()]))


# Matrix axes first: when settings vary together (rank and alpha = 2 x rank), the first names the group.
_AXIS_PATHS = ("peft.r", "dataset.data_size")


def _distinguishing(variants: list[tuple[tuple[str, str], ...]]) -> list[str]:
    """The settings that vary among one method's variants, one per way of splitting them."""
    dicts = [dict(v) for v in variants]
    paths = sorted({p for d in dicts for p in d}, key=lambda p: (p not in _AXIS_PATHS, _AXIS_PATHS.index(p) if p in _AXIS_PATHS else 0, p))
    kept, partitions = [], set()
    for path in paths:
        values = [d.get(path) for d in dicts]
        if len(set(values)) < 2:
            continue
        partition = tuple(values.index(v) for v in values)  # which variants share a value
        if partition not in partitions:
            partitions.add(partition)
            kept.append(path)
    return kept


def group_results(rows: list[Row]) -> list[dict[str, Any]]:
    """One entry per group with completed runs, best held-out accuracy first."""
    results = []
    for g in groups(rows):
        runs = g.runs
        if not runs:
            continue
        one = runs[0] if len(runs) == 1 else None
        results.append({
            "group": g,
            "method": g.method,
            "label": g.label,
            "n": len(runs),
            "planned": g.planned,
            "accuracy": Stat([r.accuracy for r in runs if r.accuracy is not None], one and one.accuracy_se),
            "base": Stat([r.base_accuracy for r in runs if r.base_accuracy is not None], one and one.base_se),
            "gain": Stat([r.gain for r in runs if r.gain is not None], one and one.gain_se),
            "greedy": Stat([r.greedy for r in runs if r.greedy is not None], one and one.greedy_se),
            "reward": Stat([r.final_reward for r in runs if r.final_reward is not None]),
            "trainable_pct": Stat([v for r in runs if (v := _number(r.eval.get("trainable_pct"))) is not None]),
            "adapter": Stat([v for r in runs if (v := _number(r.eval.get("adapter_size_bytes"))) is not None]),
        })
    return sorted(results, key=lambda x: (-_or(x["accuracy"].mean), -_or(x["reward"].mean), x["label"]))


# Row attribute of a stress axis -> its setting's short name in Group.settings.
AXIS_SETTING = {"rank": "r", "data_size": "data_size"}


def varying_axes(rows: list[Row]) -> list[tuple[str, str]]:
    """(attribute, label) of the stress axes this suite varies: rank and/or data size."""
    axes = []
    for attr, label in (("rank", "rank"), ("data_size", "data size")):
        if len({getattr(r, attr) for r in rows}) > 1:
            axes.append((attr, label))
    return axes


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
    lines += report_studies.markdown(rows)  # placement / ICA suites: their own comparison
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
        params = _number(ev.get("trainable_params"))
        memory = _number(ev.get("peak_memory_mb"))
        url = ev.get("wandb_url")
        out.append("| " + " | ".join([
            f"`{r.name}`",
            r.method,
            state,
            human_seconds(r.view.duration_s) if r.view.duration_s is not None else "-",
            _fmt(r.final_reward),
            _with_se(_number(ev.get("accuracy_sampled")), eval_se(ev, "accuracy_sampled")),
            _with_se(_number(ev.get("base_accuracy_sampled")), eval_se(ev, "base_accuracy_sampled")),
            _with_se(r.greedy, r.greedy_se),
            _with_se(_number(ev.get("base_accuracy_greedy")), eval_se(ev, "base_accuracy_greedy")),
            f"{int(params):,}" if params is not None else "-",
            _fmt(_number(ev.get("trainable_pct")), ".3f"),
            human_bytes(memory * 1024 * 1024) if memory is not None else "-",
            human_bytes(_number(ev.get("adapter_size_bytes"))),
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
        f"| # | method | runs | accuracy (sampled) | base | gain | accuracy (greedy) | {REWARD_LABEL} | trainable % | adapter |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, res in enumerate(results, 1):
        runs = f"{res['n']}/{res['planned']}" + (" †" if res["n"] < most else "")
        out.append(
            f"| {i} | {res['label']} | {runs} | {res['accuracy'].text()} | {res['base'].text()} | "
            f"{res['gain'].text(sign=True)} | {res['greedy'].text()} | {res['reward'].text()} | "
            f"{res['trainable_pct'].text('.3f')} | {human_bytes(res['adapter'].mean)} |"
        )
    out.append("")
    out.append("Runs: completed / planned.")
    if any(res["n"] < most for res in results):
        out.append(
            f"† fewer completed runs than the best-covered configuration ({most}): its mean rests on fewer "
            "seeds, so its rank is less certain."
        )
    return out + [""]


def _axis_table(rows: list[Row], attr: str, label: str) -> list[str]:
    key = AXIS_SETTING[attr]
    done = [g for g in groups(rows) if g.runs]
    values = sorted({getattr(g.runs[0], attr) for g in done}, key=_sort_key)
    out = [f"## Results by method and {label}", ""]
    if not done:
        return out + ["No completed experiments yet.", ""]
    out += [
        f"Held-out accuracy (sampled pass@1) by {label}: mean ± standard error (over seeds; over problems "
        "for a single run), of the completed runs.",
        "",
        f"| method | {' | '.join(_axis_text(v) for v in values)} |",
        "|---|" + "---:|" * len(values),
    ]
    lines: dict[str, dict[Any, str]] = {}
    for g in done:
        others = "".join(f" {k}={_axis_text(v)}" for k, v in g.settings.items() if k != key)
        one = g.runs[0] if len(g.runs) == 1 else None
        stat = Stat([r.accuracy for r in g.runs if r.accuracy is not None], one and one.accuracy_se)
        lines.setdefault(g.method + others, {})[getattr(g.runs[0], attr)] = stat.text()
    for name, cells in lines.items():
        out.append(f"| {name} | {' | '.join(cells.get(v, '-') for v in values)} |")
    return out + [""]


def _storage(view: SuiteView, rows: list[Row]) -> list[str]:
    checkpoints = sum(disk_usage(r.view.dir / st.CHECKPOINT_DIR) for r in rows if r.view.dir)
    adapters = sum(_number(r.eval.get("adapter_size_bytes")) or 0 for r in rows)
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
        *report_studies.plots(rows),
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
            steps, layers, values = grid
            # One colour scale for every method's heatmap, so that colours compare across them.
            image = ax.imshow(values, aspect="auto", origin="lower", cmap="viridis", vmin=low, vmax=high)
            fig.colorbar(image, ax=ax, label="gradient norm (log10), same scale for every method")
            ax.set_xlabel("step")
            ax.set_ylabel("module")
            _ticks(ax.set_xticks, ax.set_xticklabels, steps)
            _ticks(ax.set_yticks, ax.set_yticklabels, layers)
            ax.set_title(f"{view.suite}: gradient norms, {label}", fontsize=10)
            fig.tight_layout()
            fig.savefig(directory / filename, dpi=110)
            made.append((f"Gradient norms per layer: {label}", filename))
        finally:
            plt.close(fig)
    return made


def gradient_scale(grids: dict[str, tuple[list, list, list[list[float]]]]) -> tuple[float | None, float | None]:
    """(min, max) of the log10 gradient norms over every method's grid: the heatmaps' shared scale."""
    values = [v for _, _, grid in grids.values() for line in grid for v in line if math.isfinite(v)]
    return (min(values), max(values)) if values else (None, None)


def _by_step(points: Iterable[tuple[float | None, float | None]]) -> tuple[list[float], list[float], list[float]]:
    """(steps, mean, std) over seeds of (step, value) points; unknown values are skipped."""
    per_step: dict[float, list[float]] = {}
    for s, v in points:
        if s is not None and v is not None:
            per_step.setdefault(s, []).append(v)
    steps = sorted(per_step)
    mean = [statistics.fmean(per_step[s]) for s in steps]
    std = [statistics.stdev(per_step[s]) if len(per_step[s]) > 1 else 0.0 for s in steps]
    return steps, mean, std


def curve(runs: list[Row], key: str) -> tuple[list[float], list[float], list[float]]:
    """(steps, mean, sd) of metrics.jsonl's `key` over `runs`, at the steps every run logged:
    each point averages all of them, so the mean cannot jump where one run's log ends."""
    series = [{s: v for m in r.metrics if (s := _number(m.get("step"))) is not None
               and (v := _number(m.get(key))) is not None} for r in runs]
    common = set.intersection(*(set(x) for x in series)) if series else set()
    return _by_step((s, x[s]) for x in series for s in common)


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
    done = [g for g in groups(rows) if any(r.accuracy is not None and _number(r.eval.get("trainable_pct")) for r in g.runs)]
    if not done:
        return False
    pcts = []
    for method, members in by_key(done, lambda g: g.method).items():
        xs, ys, errs = [], [], []
        for g in members:
            runs = [r for r in g.runs if r.accuracy is not None and _number(r.eval.get("trainable_pct"))]
            xs.append(statistics.fmean(r.eval["trainable_pct"] for r in runs))
            one = runs[0] if len(runs) == 1 else None
            acc = Stat([r.accuracy for r in runs], one and one.accuracy_se)
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
    lines = by_key(done, lambda g: g.method + "".join(f" {k}={_axis_text(v)}" for k, v in g.settings.items() if k != key))
    for name, members in sorted(lines.items()):
        members = sorted(members, key=lambda g: getattr(g.runs[0], attr))
        stats = []
        for g in members:
            runs = [r for r in g.runs if r.accuracy is not None]
            stats.append(Stat([r.accuracy for r in runs], runs[0].accuracy_se if len(runs) == 1 else None))
        xs = [getattr(g.runs[0], attr) for g in members]
        ax.errorbar(xs, [s.mean for s in stats], yerr=[s.se or 0.0 for s in stats], marker="o", capsize=3, label=name)
    ax.set_xscale("log", base=2 if attr == "rank" else 10)
    ax.set_xlabel("rank" if attr == "rank" else "training examples")
    ax.set_ylabel("held-out accuracy (sampled pass@1), ± se")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return True


def _plot_effective_rank(ax, rows: list[Row]) -> bool:
    drawn = False
    for g in groups(rows):
        series = [dict(_spectral_series(r)) for r in g.runs]
        series = [x for x in series if x]
        if not series:
            continue
        common = set.intersection(*(set(x) for x in series))
        steps, mean, _ = _by_step((s, x[s]) for x in series for s in common)
        if not steps:
            continue
        ax.plot(steps, mean, marker=".", label=f"{g.label} ({len(series)} run{'s' if len(series) != 1 else ''})")
        drawn = True
    if drawn:
        ax.set_xlabel("step")
        ax.set_ylabel("effective rank (mean over layers and seeds)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return drawn


def _find(row: Row, names: tuple[str, ...]) -> Any:
    if row.view.dir is None:
        return None
    return views.read_tracking(row.view.dir, names)


def _history(row: Row, names: tuple[str, ...]) -> list[dict]:
    """Snapshots of a tracking file ({"method", "history": [{"step", "seconds", "layers": {...}}]})."""
    data = _find(row, names)
    history = data.get("history") if isinstance(data, dict) else None
    return [h for h in history if isinstance(h, dict) and isinstance(h.get("layers"), dict)] if isinstance(history, list) else []


def _spectral_series(row: Row) -> list[tuple[float, float]]:
    """(step, effective rank averaged over the tracked layers) from spectral_history.json."""
    out = []
    for snap in _history(row, SPECTRAL_FILES):
        values = [
            v for layer in snap["layers"].values()
            if isinstance(layer, dict) and (v := _number(layer.get("effective_rank"))) is not None
        ]
        if _number(snap.get("step")) is not None and values:
            out.append((float(snap["step"]), statistics.fmean(values)))
    return out


def _gradient_grids(rows: list[Row]) -> dict[str, tuple[list, list, list[list[float]]]]:
    """Per configuration, (steps, modules, log10 gradient norm [module][step]) of its first completed
    run with gradient_flow.json."""
    grids = {}
    for g in groups(rows):
        for r in g.runs:
            grid = _gradient_grid(_history(r, GRADIENT_FILES))
            if grid:
                grids[g.label] = grid
                break
    return grids


def _gradient_grid(history: list[dict]) -> tuple[list, list, list[list[float]]] | None:
    """A module's norm is the root sum of squares over its parameter kinds (A, B, ...)."""
    table: dict[float, dict[str, float]] = {}
    for snap in history:
        step = _number(snap.get("step"))
        if step is None:
            continue
        for module, kinds in snap["layers"].items():
            norms = [v for v in (kinds.values() if isinstance(kinds, dict) else [kinds]) if _number(v) is not None]
            if norms:
                table.setdefault(step, {})[str(module)] = math.sqrt(sum(v * v for v in norms))
    steps = sorted(table)
    modules = list(dict.fromkeys(m for s in steps for m in table[s]))
    if not steps or not modules:
        return None
    values = [
        [math.log10(v) if (v := table[s].get(m)) else math.nan for s in steps]
        for m in modules
    ]
    return [int(s) if s.is_integer() else s for s in steps], modules, values


def _ticks(set_ticks, set_labels, labels: list, most: int = 12) -> None:
    every = max(1, math.ceil(len(labels) / most))
    positions = list(range(0, len(labels), every))
    set_ticks(positions)
    set_labels([str(labels[i]) for i in positions], fontsize=7)


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


def command(suite: str | None, *, config_path: Path | None, output: Path, stdout: bool = False,
            stall_after_s: float, selection: views.Selection | None = None) -> int:
    from rich.progress import Progress as RichProgress
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

    from perl_cli.ui import console as make_console

    selection = selection or views.Selection()
    selection.check_suite(suite)
    if selection != views.Selection() and not stdout:
        raise views.configlib.ConfigError(
            "--state/--only/--exclude narrow the report: add --stdout to print it "
            "(SUMMARY.md and the plots always cover the whole suite)."
        )
    cfg = views.load_config(config_path)
    names = views.suites_to_read(output, suite, cfg)
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
                continue
            view.suite_dir.mkdir(parents=True, exist_ok=True)
            text, plots = build(view, draw=True, config_path=config_path, output=output, progress=tell)
            st.atomic_write_text(view.suite_dir / SUMMARY_FILE, text)
            bar.remove_task(task)
            console.print(
                f"wrote {view.suite_dir / SUMMARY_FILE}"
                + (f" and {len(plots)} plots ({', '.join(f for _, f in plots)})" if plots else " (no plot: no data yet)"),
                markup=False,
            )
    return 0


# --- small helpers --------------------------------------------------------------------------


def eval_se(ev: dict, key: str) -> float | None:
    """The standard error of eval.json's accuracy `key`, over held-out problems.

    The worker writes it (`<key>_se`); for an eval.json without it, sqrt(p(1-p)/problems)
    bounds it from above (the per-problem means lie in [0, 1])."""
    se = _number(ev.get(f"{key}_se"))
    if se is not None:
        return se
    p, n = _number(ev.get(key)), _number(ev.get("eval_problems"))
    return math.sqrt(p * (1 - p) / n) if p is not None and n else None


def tail_mean(values: list[float], share: float = 0.1) -> float:
    """Mean of the last `share` of `values` (at least one); the worker's reward_last_10pct too."""
    k = max(1, round(share * len(values)))
    return statistics.fmean(values[-k:])


def _flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """section.key -> the value as JSON text (hashable), for every setting but the seed."""
    out: dict[str, str] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, path + "."))
        elif path != "common.seed":
            out[path] = json.dumps(value, sort_keys=True)
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _or(value: float | None) -> float:
    return value if value is not None else -math.inf


def _with_se(value: float | None, se: float | None) -> str:
    return _fmt(value) + (f" ± {se:.3f}" if value is not None and se is not None else "")


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else f"{value:{spec}}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _sort_key(value: Any) -> tuple:
    return (value is None, value if isinstance(value, (int, float)) else 0, str(value))


def _axis_text(value: Any) -> str:
    return "all" if value is None else f"{value:,}" if isinstance(value, int) else str(value)
