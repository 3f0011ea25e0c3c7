"""The report's read model: a suite's experiments as rows with their eval, metrics and
tracking files, grouped by every setting but the seed, and curves averaged over a group.

Every report section (report.py's core tables and plots, report_studies.py,
report_significance.py, ...) reads through this module and computes with
perl_cli/stats.py; the sections never import each other. Files only, never torch.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from perl_cli import experiments_view as views
from perl_cli import state as st
from perl_cli.config import IDENTITY_KEYS
from perl_cli.experiments_view import ExperimentView, SuiteView, dig
from perl_cli.stats import eval_se, number, tail_mean

# Tracking files the worker writes (perl_cli/tracking/callback.py), JSON twins readable without torch.
SPECTRAL_FILES = ("spectral_history.json", "spectral_logs/spectral_history.json", "spectral_history_final.json")
CLIPPED_KEY = "completions/clipped_ratio"  # TRL 1.x logs it per step; metrics.jsonl keeps the name
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
        sampled = number(self.eval.get("accuracy_sampled"))
        return sampled if sampled is not None else self.greedy

    @property
    def accuracy_key(self) -> str:
        return "accuracy_sampled" if number(self.eval.get("accuracy_sampled")) is not None else "accuracy_greedy"

    @property
    def accuracy_se(self) -> float | None:
        return eval_se(self.eval, self.accuracy_key)

    @property
    def base_accuracy(self) -> float | None:
        return number(self.eval.get(f"base_{self.accuracy_key}"))

    @property
    def base_se(self) -> float | None:
        return eval_se(self.eval, f"base_{self.accuracy_key}")

    @property
    def gain(self) -> float | None:
        acc, base = self.accuracy, self.base_accuracy
        return None if acc is None or base is None else acc - base

    @property
    def gain_se(self) -> float | None:
        """The paired standard error over the same problems (the worker's ``gain_*_se``, see
        perl_cli/learning.py); for an eval.json without it, the two evaluations treated as
        independent: an upper bound, since both use the same problems."""
        paired = number(self.eval.get(self.accuracy_key.replace("accuracy_", "gain_") + "_se"))
        if paired is not None:
            return paired
        a, b = self.accuracy_se, self.base_se
        return None if a is None or b is None else math.sqrt(a * a + b * b)

    @property
    def greedy(self) -> float | None:
        return number(self.eval.get("accuracy_greedy"))

    @property
    def greedy_se(self) -> float | None:
        return eval_se(self.eval, "accuracy_greedy")

    @property
    def final_reward(self) -> float | None:
        """The training reward as the report defines it (REWARD_LABEL): the mean of the last 10%
        of the logged values, from metrics.jsonl (or eval.json's worker-computed copy)."""
        rewards = [v for r in self.metrics if (v := number(r.get("reward"))) is not None]
        if rewards:
            return tail_mean(rewards)
        return number(self.eval.get("reward_last_10pct"))  # same definition, computed by the worker

    @property
    def clipped_ratio(self) -> float | None:
        """The share of completions cut at the length limit (TRL's `completions/clipped_ratio`), by
        the reward's rule: the mean of the last 10% of logged values; None for runs that never
        logged it (a method can "win" on long reasoning models by learning to stop early)."""
        values = [v for r in self.metrics if (v := number(r.get(CLIPPED_KEY))) is not None]
        return tail_mean(values) if values else None

    @property
    def done(self) -> bool:
        return self.view.state == st.COMPLETED

    @property
    def variant(self) -> tuple[tuple[str, str], ...]:
        """Every setting of the run except its seed: runs that differ only by seed share it."""
        config = self.view.expected if self.view.expected is not None else self.view.config
        return tuple(sorted(flatten({
            k: v for k, v in config.items() if k not in (*IDENTITY_KEYS, st.RUNTIME_KEY)
        }).items()))


PER_PROBLEM_KEYS = ("per_problem_sampled", "per_problem_greedy")  # eval.json, written by train/evaluate.py


def per_problem(row: Row, key: str) -> list[float] | None:
    """The run's per-problem results under `key`, if it is a list of numbers in [0, 1] (the paired
    comparisons of report_significance.py and report_quirks.py read them through this)."""
    values = row.eval.get(key)
    if not isinstance(values, list) or not values:
        return None
    out = [number(v) for v in values]
    return out if all(v is not None and 0 <= v <= 1 for v in out) else None  # type: ignore[misc]


def load_rows(view: SuiteView) -> list[Row]:
    rows = []
    for e in view.experiments:
        readable = e.dir is not None and e.state != st.UNREADABLE
        rows.append(Row(e, views.read_eval(e.dir) if readable else {}, views.read_metrics(e.dir) if readable else []))
    return rows



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
            label = method + "".join(f" {k}={axis_text(v)}" for k, v in settings.items())
            out.append(Group(method, label, settings, included(runs), len(runs)))
    return sorted(out, key=lambda g: (g.method, [sort_key(v) for v in g.settings.values()]))


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



# Row attribute of a stress axis -> its setting's short name in Group.settings.
AXIS_SETTING = {"rank": "r", "data_size": "data_size"}


def varying_axes(rows: list[Row]) -> list[tuple[str, str]]:
    """(attribute, label) of the stress axes this suite varies: rank and/or data size."""
    axes = []
    for attr, label in (("rank", "rank"), ("data_size", "data size")):
        if len({getattr(r, attr) for r in rows}) > 1:
            axes.append((attr, label))
    return axes



def by_step(points: Iterable[tuple[float | None, float | None]]) -> tuple[list[float], list[float], list[float]]:
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
    series = [{s: v for m in r.metrics if (s := number(m.get("step"))) is not None
               and (v := number(m.get(key))) is not None} for r in runs]
    common = set.intersection(*(set(x) for x in series)) if series else set()
    return by_step((s, x[s]) for x in series for s in common)



def find_tracking(row: Row, names: tuple[str, ...]) -> Any:
    if row.view.dir is None:
        return None
    return views.read_tracking(row.view.dir, names)


def tracking_history(row: Row, names: tuple[str, ...]) -> list[dict]:
    """Snapshots of a tracking file ({"method", "history": [{"step", "seconds", "layers": {...}}]})."""
    data = find_tracking(row, names)
    history = data.get("history") if isinstance(data, dict) else None
    return [h for h in history if isinstance(h, dict) and isinstance(h.get("layers"), dict)] if isinstance(history, list) else []



def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """section.key -> the value as JSON text (hashable), for every setting but the seed."""
    out: dict[str, str] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        elif path != "common.seed":
            out[path] = json.dumps(value, sort_keys=True)
    return out



def sort_key(value: Any) -> tuple:
    return (value is None, value if isinstance(value, (int, float)) else 0, str(value))


def axis_text(value: Any) -> str:
    return "all" if value is None else f"{value:,}" if isinstance(value, int) else str(value)
