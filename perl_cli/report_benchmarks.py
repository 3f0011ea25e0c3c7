"""The report's benchmark section: the PeRL paper's table (perl report, math suites).

One row per method (every setting but the seed: report.groups), one column per
benchmark with avg@n as mean over seeds ± SE (for one run: its SE over problems), the
average over the benchmarks, and each method as % of full fine-tuning's average (when
the suite has a `full` group). A second table gives pass@k and greedy accuracy.

Reads what the worker (or `perl eval`) wrote: eval.json's ``benchmarks`` summaries,
else ``benchmarks/<name>.json``. Pure Python, files only.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from perl_cli import state as st
from perl_cli.benchmarks import RESULTS_DIR

FULL = "full"
MAX_RESULT_BYTES = 64 * 2**20


def run_benchmarks(row: Any) -> dict[str, dict[str, Any]]:
    """{benchmark: summary} of one run: benchmarks/<name>.json (latest, e.g. from `perl eval`), else eval.json."""
    out: dict[str, dict[str, Any]] = {}
    ev = row.eval.get("benchmarks") if isinstance(row.eval, dict) else None
    if isinstance(ev, dict):
        out.update({k: v for k, v in ev.items() if isinstance(v, dict)})
    directory = row.view.dir / RESULTS_DIR if getattr(row.view, "dir", None) else None
    if directory is not None and directory.is_dir():
        for path in sorted(directory.glob("*.json")):
            saved = st.read_json(path, max_bytes=MAX_RESULT_BYTES)
            if isinstance(saved, dict) and isinstance(saved.get("summary"), dict):
                out[path.stem] = saved["summary"]
    return out


def _avg_key(summary: dict[str, Any]) -> str | None:
    n = summary.get("n")
    return f"avg@{n}" if isinstance(n, int) and f"avg@{n}" in summary else None


def _stat(values: list[float], single_se: float | None) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = statistics.fmean(values)
    if len(values) > 1:
        return mean, statistics.stdev(values) / math.sqrt(len(values))
    return mean, single_se


def _pct(value: float | None, se: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" + ("" if se is None else f" ± {100 * se:.1f}")


def _cell(runs: list[dict[str, Any]], name: str, key: str) -> tuple[float | None, float | None]:
    values = [r[name][key] for r in runs if name in r and isinstance(r[name].get(key), (int, float))]
    single = runs[0].get(name, {}).get(f"{key}_se") if len(values) == 1 else None
    return _stat(values, single if isinstance(single, (int, float)) else None)


def markdown(rows: list[Any]) -> list[str]:
    from perl_cli import report_model

    table = []
    names: list[str] = []
    for group in report_model.groups(rows):
        runs = [run_benchmarks(r) for r in group.runs]
        runs = [r for r in runs if r]
        if not runs:
            continue
        for r in runs:
            names += [n for n in r if n not in names]
        table.append((group, runs))
    if not table:
        return []
    # avg@n per benchmark: n from the benchmark's own summaries (the same spec in a suite).
    keys = {}
    for name in names:
        keys[name] = next((k for _, runs in table for r in runs if name in r and (k := _avg_key(r[name]))), None)
    averages: dict[str, tuple[float | None, float | None]] = {}
    body = []
    for group, runs in table:
        cells = [_cell(runs, name, keys[name]) if keys[name] else (None, None) for name in names]
        # The average over benchmarks, per run, then over seeds: its SE is the seeds' spread
        # (one run: the benchmarks' SEs combined as independent).
        per_run = [statistics.fmean(r[n][keys[n]] for n in names) for r in runs
                   if all(n in r and keys[n] and keys[n] in r[n] for n in names)]
        one_se = None
        if len(per_run) == 1 and all(se is not None for _, se in cells):
            one_se = math.sqrt(sum(se * se for _, se in cells)) / len(cells)
        averages[group.label] = _stat(per_run, one_se)
        body.append((group, runs, cells))
    full = next((averages[g.label][0] for g, _, _ in body if g.method == FULL), None)
    lines = [
        "## Benchmarks",
        "",
        "avg@n in % (the mean share of correct samples per problem), mean over seeds ± SE (one run: "
        "its SE over problems); average over the benchmarks; each method's average as % of full "
        "fine-tuning's (the PeRL paper's table).",
        "",
        "| method | runs | " + " | ".join(f"{n} ({keys[n] or '-'})" for n in names) + " | average | % of full FT |",
        "|---|---:|" + "---:|" * (len(names) + 2),
    ]
    for group, runs, cells in body:
        avg, avg_se = averages[group.label]
        rel = "-" if not full or avg is None else f"{100 * avg / full:.1f}"
        lines.append(
            f"| {group.label} | {len(runs)}/{group.planned} | " + " | ".join(_pct(v, se) for v, se in cells)
            + f" | {_pct(avg, avg_se)} | {rel} |"
        )
    lines += ["", "pass@k (unbiased estimator) and greedy accuracy in %, ± SE as above.", ""]
    extra: list[tuple[str, str]] = []
    for name in names:
        found = sorted({k for _, runs in table for r in runs if name in r for k in r[name]
                        if k.startswith("pass@") and not k.endswith("_se")}, key=lambda k: int(k[5:]))
        extra += [(name, k) for k in found]
        if any("greedy" in r.get(name, {}) for _, runs in table for r in runs):
            extra.append((name, "greedy"))
    lines += [
        "| method | " + " | ".join(f"{n} {k}" for n, k in extra) + " |",
        "|---|" + "---:|" * len(extra),
    ]
    for group, runs, _ in body:
        lines.append(f"| {group.label} | " + " | ".join(_pct(*_cell(runs, n, k)) for n, k in extra) + " |")
    return lines + [""]
