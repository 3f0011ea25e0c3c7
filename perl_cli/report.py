"""`perl report`: output/<suite>/SUMMARY.md and PNG plots beside it, from the files alone.

Sections: progress, one row per experiment, results by method (exact method names,
mean ± std over seeds, ranked by held-out accuracy), by rank or data size when the
suite varies them, storage, and failures (classified by perl_cli.diagnose). Plots:
reward curves per method (mean over seeds with a ±std band), held-out accuracy vs %
trainable parameters (the frontier plot), accuracy vs rank / data size, and, when the
worker wrote tracking data (spectral_history.json, gradient_flow.json), effective rank
over steps per method and gradient-norm heatmaps (modules x steps).

matplotlib is imported only here, only when plots are drawn, with the Agg backend.
Works on partial suites (running, failed, pending) and on empty ones.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perl_cli import report_studies
from perl_cli import state as st
from perl_cli.status import ExperimentView, SuiteView, dig, disk_usage, progress_bar
from perl_cli.ui import human_bytes, human_seconds

SUMMARY_FILE = "SUMMARY.md"
REWARD_PLOT = "reward_curves.png"
FRONTIER_PLOT = "accuracy_vs_trainable.png"
RANK_PLOT = "accuracy_vs_rank.png"
DATA_PLOT = "accuracy_vs_data_size.png"
EFFECTIVE_RANK_PLOT = "effective_rank.png"
GRADIENT_PLOT = "gradient_norms_{method}.png"
# Tracking files the worker writes (perl_cli/tracking/callback.py), JSON twins readable without torch.
SPECTRAL_FILES = ("spectral_history.json", "spectral_logs/spectral_history.json", "spectral_history_final.json")
SUMMARY_CHARS = 160  # a failure's one-line summary in the table
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
        """Held-out sampled pass@1: greedy accuracy on 200 problems moves by noise alone
        (STACK-NOTES), so the sampled figure leads, and greedy is the fallback."""
        sampled = _number(self.eval.get("accuracy_sampled"))
        return sampled if sampled is not None else self.greedy

    @property
    def greedy(self) -> float | None:
        return _number(self.eval.get("accuracy_greedy"))

    @property
    def final_reward(self) -> float | None:
        last = _number(self.eval.get("reward_last_10pct"))
        if last is not None:
            return last
        rewards = [r["reward"] for r in self.metrics if _number(r.get("reward")) is not None]
        if not rewards:
            return None
        tail = rewards[-max(1, len(rewards) // 10) :]
        return statistics.fmean(tail)

    @property
    def done(self) -> bool:
        return self.view.state == st.COMPLETED


def load_rows(view: SuiteView) -> list[Row]:
    rows = []
    for e in view.experiments:
        ev = st.read_json(e.dir / st.EVAL_FILE) if e.dir else None
        metrics = st.read_jsonl(e.dir / st.METRICS_FILE) if e.dir else []
        rows.append(Row(e, ev if isinstance(ev, dict) else {}, metrics))
    return rows


# --- aggregation ------------------------------------------------------------------------


@dataclass
class Stat:
    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def text(self, fmt: str = ".3f") -> str:
        if not self.values:
            return "-"
        return f"{self.mean:{fmt}}" + (f" ± {self.std:{fmt}}" if self.std is not None else "")


def by_key(rows: Iterable[Row], key) -> dict[Any, list[Row]]:
    out: dict[Any, list[Row]] = {}
    for row in rows:
        out.setdefault(key(row), []).append(row)
    return out


def method_results(rows: list[Row]) -> list[dict[str, Any]]:
    """One entry per exact method name over its completed experiments, best accuracy first."""
    results = []
    for method, members in by_key([r for r in rows if r.done], lambda r: r.method).items():
        results.append({
            "method": method,
            "n": len(members),
            "accuracy": Stat([r.accuracy for r in members if r.accuracy is not None]),
            "greedy": Stat([r.greedy for r in members if r.greedy is not None]),
            "reward": Stat([r.final_reward for r in members if r.final_reward is not None]),
            "trainable_pct": Stat([v for r in members if (v := _number(r.eval.get("trainable_pct"))) is not None]),
            "adapter": Stat([v for r in members if (v := _number(r.eval.get("adapter_size_bytes"))) is not None]),
        })
    return sorted(results, key=lambda x: (-_or(x["accuracy"].mean), -_or(x["reward"].mean), x["method"]))


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
        "| experiment | method | state | duration | final reward | accuracy (sampled) | base | accuracy (greedy) | base | trainable params | trainable % | peak memory | adapter | W&B |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ev = r.eval
        state = r.view.state + (" (stalled)" if r.view.stalled else "")
        params = _number(ev.get("trainable_params"))
        memory = _number(ev.get("peak_memory_mb"))
        url = ev.get("wandb_url")
        out.append("| " + " | ".join([
            f"`{r.name}`",
            r.method,
            state,
            human_seconds(r.view.duration_s) if r.view.duration_s is not None else "-",
            _fmt(r.final_reward),
            _fmt(r.accuracy),
            _fmt(_number(ev.get("base_accuracy_sampled"))),
            _fmt(r.greedy),
            _fmt(_number(ev.get("base_accuracy_greedy"))),
            f"{int(params):,}" if params is not None else "-",
            _fmt(_number(ev.get("trainable_pct")), ".3f"),
            human_bytes(memory * 1024 * 1024) if memory is not None else "-",
            human_bytes(_number(ev.get("adapter_size_bytes"))),
            f"[run]({url})" if isinstance(url, str) and url else "-",
        ]) + " |")
    return out + [""]


def _method_table(rows: list[Row]) -> list[str]:
    results = method_results(rows)
    out = ["## Results by method", ""]
    if not results:
        return out + ["No completed experiments yet.", ""]
    out += [
        "Mean ± standard deviation over seeds of the completed experiments, best held-out accuracy first.",
        "",
        "| # | method | runs | accuracy (sampled) | accuracy (greedy) | final reward | trainable % | adapter |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, res in enumerate(results, 1):
        out.append(
            f"| {i} | {res['method']} | {res['n']} | {res['accuracy'].text()} | {res['greedy'].text()} | "
            f"{res['reward'].text()} | {res['trainable_pct'].text('.3f')} | {human_bytes(res['adapter'].mean)} |"
        )
    return out + [""]


def _axis_table(rows: list[Row], attr: str, label: str) -> list[str]:
    done = [r for r in rows if r.done]
    values = sorted({getattr(r, attr) for r in rows}, key=_sort_key)
    out = [f"## Results by method and {label}", ""]
    if not done:
        return out + ["No completed experiments yet.", ""]
    out += [
        f"Held-out accuracy (sampled pass@1), mean ± std over seeds, by {label}.",
        "",
        f"| method | {' | '.join(_axis_text(v) for v in values)} |",
        "|---|" + "---:|" * len(values),
    ]
    for method, members in sorted(by_key(done, lambda r: r.method).items()):
        cells = []
        for v in values:
            stat = Stat([r.accuracy for r in members if getattr(r, attr) == v and r.accuracy is not None])
            cells.append(stat.text())
        out.append(f"| {method} | {' | '.join(cells)} |")
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


def draw_plots(view: SuiteView, rows: list[Row], directory: Path) -> list[tuple[str, str]]:
    """Draw every plot the data allows into `directory`; (title, file name) of each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[tuple[str, str]] = []
    for title, filename, draw in (
        ("Reward per method (mean over seeds, band ± std)", REWARD_PLOT, _plot_rewards),
        ("Held-out accuracy vs trainable parameters", FRONTIER_PLOT, _plot_frontier),
        ("Held-out accuracy vs rank", RANK_PLOT, lambda ax, rows: _plot_axis(ax, rows, "rank")),
        ("Held-out accuracy vs data size", DATA_PLOT, lambda ax, rows: _plot_axis(ax, rows, "data_size")),
        ("Effective rank of the adapter updates", EFFECTIVE_RANK_PLOT, _plot_effective_rank),
        *report_studies.plots(rows),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        try:
            if draw(ax, rows):
                ax.set_title(f"{view.suite}: {title}", fontsize=10)
                fig.tight_layout()
                fig.savefig(directory / filename, dpi=110)
                made.append((title, filename))
        finally:
            plt.close(fig)
    for method, grid in _gradient_grids(rows).items():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        try:
            steps, layers, values = grid
            image = ax.imshow(values, aspect="auto", origin="lower", cmap="viridis")
            fig.colorbar(image, ax=ax, label="gradient norm (log10)")
            ax.set_xlabel("step")
            ax.set_ylabel("module")
            _ticks(ax.set_xticks, ax.set_xticklabels, steps)
            _ticks(ax.set_yticks, ax.set_yticklabels, layers)
            ax.set_title(f"{view.suite}: gradient norms, {method}", fontsize=10)
            fig.tight_layout()
            filename = GRADIENT_PLOT.format(method=method)
            fig.savefig(directory / filename, dpi=110)
            made.append((f"Gradient norms per layer: {method}", filename))
        finally:
            plt.close(fig)
    return made


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


def _plot_rewards(ax, rows: list[Row]) -> bool:
    drawn = False
    current = [r for r in rows if r.view.state != st.STALE and r.metrics]
    for method, members in sorted(by_key(current, lambda r: r.method).items()):
        steps, mean, std = _by_step(
            (_number(m.get("step")), _number(m.get("reward"))) for r in members for m in r.metrics
        )
        if not steps:
            continue
        (line,) = ax.plot(steps, mean, label=f"{method} ({len(members)} runs)", linewidth=1.5)
        ax.fill_between(steps, [m - d for m, d in zip(mean, std, strict=True)], [m + d for m, d in zip(mean, std, strict=True)],
                        color=line.get_color(), alpha=0.2, linewidth=0)
        drawn = True
    if drawn:
        ax.set_xlabel("step")
        ax.set_ylabel("reward")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return drawn


def _plot_frontier(ax, rows: list[Row]) -> bool:
    """One point per method (mean ± std over seeds); in a rank suite one line per method through its ranks."""
    done = [r for r in rows if r.done and r.accuracy is not None and _number(r.eval.get("trainable_pct"))]
    if not done:
        return False
    by_rank = ("rank", "rank") in varying_axes(rows)
    for method, members in sorted(by_key(done, lambda r: r.method).items()):
        groups = by_key(members, lambda r: r.rank) if by_rank else {None: members}
        xs, ys, errs = [], [], []
        for key in sorted(groups, key=_sort_key):
            xs.append(statistics.fmean(r.eval["trainable_pct"] for r in groups[key]))
            acc = Stat([r.accuracy for r in groups[key]])
            ys.append(acc.mean)
            errs.append(acc.std or 0.0)
        ax.errorbar(xs, ys, yerr=errs, fmt="o-" if by_rank else "o", capsize=3, label=method)
        if not by_rank:
            ax.annotate(method, (xs[-1], ys[-1]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    pcts = [r.eval["trainable_pct"] for r in done]
    if max(pcts) / min(pcts) >= 10:
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("trainable parameters (% of the model)" + (", one point per rank" if by_rank else ""))
    ax.set_ylabel("held-out accuracy (sampled pass@1)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return True


def _plot_axis(ax, rows: list[Row], attr: str) -> bool:
    done = [r for r in rows if r.done and r.accuracy is not None and getattr(r, attr) is not None]
    if len({getattr(r, attr) for r in done}) < 2:
        return False
    for method, members in sorted(by_key(done, lambda r: r.method).items()):
        groups = by_key(members, lambda r: getattr(r, attr))
        xs = sorted(groups)
        stats = [Stat([r.accuracy for r in groups[x]]) for x in xs]
        ax.errorbar(xs, [s.mean for s in stats], yerr=[s.std or 0.0 for s in stats], marker="o", capsize=3, label=method)
    ax.set_xscale("log", base=2 if attr == "rank" else 10)
    ax.set_xlabel("rank" if attr == "rank" else "training examples")
    ax.set_ylabel("held-out accuracy (sampled pass@1)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return True


def _plot_effective_rank(ax, rows: list[Row]) -> bool:
    drawn = False
    current = [r for r in rows if r.view.state != st.STALE]
    for method, members in sorted(by_key(current, lambda r: r.method).items()):
        steps, mean, _ = _by_step(point for r in members for point in _spectral_series(r))
        if not steps:
            continue
        ax.plot(steps, mean, marker=".", label=method)
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
    for name in names:
        data = st.read_json(row.view.dir / name)
        if data is not None:
            return data
    return None


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
    """Per method, (steps, modules, log10 gradient norm [module][step]) of its first seed with gradient_flow.json."""
    grids = {}
    current = [r for r in rows if r.view.state != st.STALE]
    for method, members in sorted(by_key(current, lambda r: r.method).items()):
        for r in members:
            grid = _gradient_grid(_history(r, GRADIENT_FILES))
            if grid:
                grids[method] = grid
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


def build(view: SuiteView, *, draw: bool, config_path: Path | None, output: Path) -> tuple[str, list[tuple[str, str]]]:
    """The markdown, drawing the plots into the suite directory first when `draw`."""
    from perl_cli import diagnose as diagnoselib

    rows = load_rows(view)
    plots = draw_plots(view, rows, view.suite_dir) if draw else []
    diagnoses = diagnoselib.diagnose_suite(view, lines=0, config_path=config_path, output=output)
    return summary_markdown(view, rows, diagnoses, plots), plots


def command(suite: str | None, *, config_path: Path | None, output: Path, stdout: bool = False,
            stall_after_s: float) -> int:
    from perl_cli import status as statuslib
    from perl_cli.ui import console as make_console

    cfg = statuslib.load_config(config_path)
    names = statuslib.suites_to_read(output, suite, cfg)
    console = make_console(stderr=stdout)
    if not names:
        console.print(f"No suites under {output}/ yet: nothing to report.")
        return 0
    for name in names:
        view = statuslib.load_suite(output, name, cfg, stall_after_s=stall_after_s)
        if stdout:
            text, _ = build(view, draw=False, config_path=config_path, output=output)
            print(text)
            continue
        view.suite_dir.mkdir(parents=True, exist_ok=True)
        text, plots = build(view, draw=True, config_path=config_path, output=output)
        st.atomic_write_text(view.suite_dir / SUMMARY_FILE, text)
        console.print(
            f"wrote {view.suite_dir / SUMMARY_FILE}"
            + (f" and {len(plots)} plots ({', '.join(f for _, f in plots)})" if plots else " (no plot: no data yet)")
        )
    return 0


# --- small helpers --------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _or(value: float | None) -> float:
    return value if value is not None else -math.inf


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else f"{value:{spec}}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _sort_key(value: Any) -> tuple:
    return (value is None, value if isinstance(value, (int, float)) else 0, str(value))


def _axis_text(value: Any) -> str:
    return "all" if value is None else f"{value:,}" if isinstance(value, int) else str(value)
