"""Report section: which differences between the suite's methods are real.

For every pair of configurations (report groups: runs that differ only by seed) the paired
difference in held-out accuracy on the same problems, its interval from a hierarchical
bootstrap (seeds, then problems) and a verdict corrected for the number of pairs
(perl_cli/significance.py says how). SUMMARY.md gets the matrix, the list of verdicts and,
for the best configuration, the ones it cannot be told apart from; a method × method heat
map is drawn beside it; `perl report --json` carries the same numbers.

A sibling section: it reads through report_model and never imports report.py.
"""

from __future__ import annotations

import re
from typing import Any

from perl_cli import significance
from perl_cli.report_model import PER_PROBLEM_KEYS, Row, groups, per_problem  # noqa: F401 - per_problem: public here too

NAME = "comparisons"  # its key in `perl report --json`
PLOT = "pairwise_differences.png"
KEYS = PER_PROBLEM_KEYS  # eval.json, written by train/evaluate.py
SYMBOL = {True: ">", False: "<", None: "≈"}


def gather(rows: list[Row]) -> tuple[str | None, dict[str, list[list[float]]], list[str]]:
    """(eval.json key used, group label -> per-problem lists of its completed runs, notes).

    Sampled results when any run has them (as the report's accuracy), else greedy. Runs
    without usable lists are left out and counted in the notes; when runs disagree on the
    number of problems, the most common length is kept (the others were not evaluated on
    the same held-out problems)."""
    done = [g for g in groups(rows) if g.runs]
    key = next((k for k in KEYS if any(per_problem(r, k) for g in done for r in g.runs)), None)
    notes: list[str] = []
    if key is None:
        return None, {}, notes
    lists = {g.label: [(r.name, v) for r in g.runs if (v := per_problem(r, key)) is not None] for g in done}
    missing = [r.name for g in done for r in g.runs if per_problem(r, key) is None]
    if missing:
        notes.append(f"{len(missing)} completed run(s) without `{key}` in eval.json left out: "
                     + ", ".join(f"`{n}`" for n in missing[:5]) + (" …" if len(missing) > 5 else ""))
    lengths = [len(v) for runs in lists.values() for _, v in runs]
    if lengths:
        common = max(set(lengths), key=lambda n: (lengths.count(n), n))
        odd = [name for runs in lists.values() for name, v in runs if len(v) != common]
        if odd:
            notes.append(f"{len(odd)} run(s) evaluated on a different number of problems than {common} left out: "
                         + ", ".join(f"`{n}`" for n in odd[:5]))
        lists = {label: [(n, v) for n, v in runs if len(v) == common] for label, runs in lists.items()}
    return key, {label: [v for _, v in runs] for label, runs in lists.items() if runs}, notes


def matrix(rows: list[Row]) -> tuple[significance.Matrix | None, str | None, list[str]]:
    key, results, notes = gather(rows)
    if len(results) < 2:
        return None, key, notes
    return significance.compare(results), key, notes


def markdown(rows: list[Row]) -> list[str]:
    m, key, notes = matrix(rows)
    if m is None:
        if not notes and key is None:
            return []  # nothing to compare (older eval.json files, or a single configuration)
        return ["## Which differences are real", "", "Fewer than two configurations with per-problem results.", "",
                *(f"- {n}" for n in notes), ""]
    seeds = min(m.runs.values())
    out = [
        "## Which differences are real",
        "",
        f"Paired differences in held-out accuracy (`{key}`: each problem's share of correct samples) on the same "
        f"{m.problems} problems, row − column. Interval: hierarchical bootstrap ({m.replicates} replicates; each "
        "resamples every configuration's seeds, then the problems, shared by all). Bonferroni-corrected for "
        f"{len(m.pairs)} pair(s): each interval is at level {100 * m.pair_level:.2f}% so that all of them hold "
        f"together at {100 * (1 - significance.ALPHA):.0f}%; `>` / `<` when it excludes zero, `≈` "
        "indistinguishable at this sample size."
        + (" Some configuration has a single run: its seed-to-seed spread is not measured, so its intervals "
           "cover problems only." if seeds < 2 else ""),
        "",
        "| row − column | " + " | ".join(m.methods) + " |",
        "|---|" + "---:|" * len(m.methods),
    ]
    for x in m.methods:
        cells = []
        for y in m.methods:
            c = m.pair(x, y)
            cells.append("" if c is None else f"{_symbol(c)} {c.diff:+.3f} [{c.low:+.3f}, {c.high:+.3f}]")
        out.append(f"| **{x}** ({m.runs[x]} run{'s' if m.runs[x] != 1 else ''}, {m.means[x]:.3f}) | " + " | ".join(cells) + " |")
    out += ["", "Verdicts:", ""]
    out += [f"- {c.verdict if c.distinguishable else f'{c.x} vs {c.y}: {c.verdict}'}: {significance.describe_interval(c)}"
            for c in m.pairs]
    same = m.not_distinguishable_from_best()
    out += ["", f"**Best: {m.best}** ({m.means[m.best]:.3f}). " + (
        "It is not distinguishable from " + ", ".join(f"**{s}**" for s in same) + " at this sample size."
        if same else "It is distinguishable from every other configuration."), ""]
    out += [f"- {n}" for n in notes] + ([""] if notes else [])
    return out


def _symbol(c: significance.Comparison) -> str:
    return SYMBOL[None] if not c.distinguishable else SYMBOL[c.diff > 0]


def plot(ax: Any, rows: list[Row]) -> bool:
    """Method × method heat map of row − column, one diverging scale centred on zero."""
    m, _, _ = matrix(rows)
    if m is None:
        return False
    k = len(m.methods)
    values = [[(c.diff if (c := m.pair(x, y)) is not None else 0.0) for y in m.methods] for x in m.methods]
    bound = max((abs(v) for line in values for v in line), default=0.0) or 1e-9
    image = ax.imshow(values, cmap="RdBu", vmin=-bound, vmax=bound)
    ax.figure.colorbar(image, ax=ax, label="accuracy difference, row − column")
    for i, x in enumerate(m.methods):
        for j, y in enumerate(m.methods):
            c = m.pair(x, y)
            if c is not None:
                ax.text(j, i, f"{_symbol(c)}\n{c.diff:+.3f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(m.methods, rotation=30, ha="right", fontsize=7)
    ax.set_yticklabels(m.methods, fontsize=7)
    ax.set_xlabel(f"≈: indistinguishable (Bonferroni over {len(m.pairs)} pairs, {100 * (1 - significance.ALPHA):.0f}% family-wise)")
    return True


def plots(rows: list[Row]) -> list[tuple[str, str, Any]]:
    return [("Paired differences in held-out accuracy (row − column)", PLOT, plot)]


def data(rows: list[Row]) -> dict[str, Any] | None:
    m, key, notes = matrix(rows)
    if m is None:
        return {"key": key, "notes": notes, "matrix": None} if notes else None
    return {"key": key, "notes": [re.sub(r"`", "", n) for n in notes], **m.as_dict()}
