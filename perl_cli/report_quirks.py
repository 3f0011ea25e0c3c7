"""Report section: do upstream's quirks change the result? (issue 21.3, the artifacts-demo study)

Upstream PeRL trains some methods in ways PeRL does not by default, and PeRL can switch each
of them on (perl_cli/schema.py's recipe block): `peft.adapter_dtype` (bf16 adapters),
`peft.dropout_on_svd_methods` (dropout on PiSSA/MiLoRA), `peft.adalora_reallocation = false`
and `peft.peft_default_targets`. A suite whose configurations of a method differ only in those
switches is a quirk study, and this section answers its question per method:

* a gap: held-out accuracy with the quirks on minus off, paired over the same problems, its
  interval from the hierarchical bootstrap of perl_cli/significance.py (seeds, then
  problems), Bonferroni-corrected over every on/off comparison the section makes, and the
  verdict (on > off, on < off, or indistinguishable at this sample size);
* collapse: which runs perl_cli/collapse.py finds collapsed, with the quirks on and off, and
  whether collapse appears only with them.

"Differ only in those switches": within the method, no two configurations share the same
switch values (so nothing else varies on its own); settings that move with a switch (the
resolved `peft.lora_dropout` of PiSSA/MiLoRA follows `dropout_on_svd_methods`) are named
beside the verdict. The "off" configuration is the one with every switch at PeRL's value;
each other configuration of the method is compared with it.

A sibling section: reads through report_model, computes with significance and collapse, and
never imports report.py or another section. Files only, no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from perl_cli import collapse as collapselib
from perl_cli import significance
from perl_cli.report_model import PER_PROBLEM_KEYS, Row, by_key, included, per_problem
from perl_cli.schema import FINGERPRINT_NEUTRAL_RECIPE
from perl_cli.stats import Stat, fmt, with_se

NAME = "quirks"  # its key in `perl report --json`
TITLE = "Upstream's quirks: on vs off"
# The switches and PeRL's value of each (their schema defaults): "off" is every switch at it.
SWITCHES: dict[str, Any] = {
    path: FINGERPRINT_NEUTRAL_RECIPE[path]
    for path in ("peft.adapter_dtype", "peft.dropout_on_svd_methods", "peft.adalora_reallocation",
                 "peft.peft_default_targets")
}


@dataclass
class Arm:
    """One configuration of a method in the study: its switch values and all its runs."""

    switches: dict[str, Any]  # path -> value, every switch (PeRL's value when unset)
    rows: list[Row]  # every experiment of the configuration, in any state
    settings: dict[str, str]  # every setting but the seed: path -> value as JSON text (Row.variant)

    @property
    def on(self) -> dict[str, Any]:
        """The switches that differ from PeRL's value."""
        return {p: v for p, v in self.switches.items() if v != SWITCHES[p]}

    @property
    def label(self) -> str:
        on = self.on
        return "quirks off" if not on else "quirks on (" + ", ".join(f"{_short(p)}={_text(v)}" for p, v in on.items()) + ")"

    @property
    def runs(self) -> list[Row]:
        return included(self.rows)

    @cached_property
    def collapses(self) -> dict[str, collapselib.Collapse | None]:
        """Each run with metrics: its collapse or None, judged once (any state: a run the worker
        stopped for it counts)."""
        return {r.name: collapselib.detect(r.metrics) for r in self.rows if r.metrics}

    @property
    def collapsed(self) -> list[tuple[Row, collapselib.Collapse]]:
        return [(r, c) for r in self.rows if (c := self.collapses.get(r.name)) is not None]

    @property
    def judged(self) -> int:
        return len(self.collapses)


@dataclass
class Study:
    """One method's quirks-on arm against its quirks-off arm."""

    method: str
    off: Arm
    on: Arm
    also_differs: dict[str, tuple[Any, Any]]  # other settings that move with the switches: path -> (off, on)
    key: str | None = None  # eval.json's per-problem key compared
    comparison: significance.Comparison | None = None  # on − off
    means: dict[str, float] = field(default_factory=dict)
    note: str | None = None  # why there is no paired comparison

    @property
    def gap_verdict(self) -> str:
        if self.comparison is None:
            return "not compared"
        c = self.comparison
        if not c.distinguishable:
            return significance.INDISTINGUISHABLE
        return "quirks on > off" if c.diff > 0 else "quirks on < off"

    @property
    def collapse_verdict(self) -> str:
        on, off = len(self.on.collapsed), len(self.off.collapsed)
        counts = f"{on}/{self.on.judged} runs with the quirks on, {off}/{self.off.judged} off"
        if on and not off:
            return f"only with the quirks ({counts})"
        if off and not on:
            return f"only without the quirks ({counts})"
        if on and off:
            return f"with and without the quirks ({counts})"
        return f"in neither ({counts})"


def studies(rows: list[Row]) -> tuple[list[Study], list[str]]:
    """The suite's quirk studies, one per (method, quirks-on configuration), compared; and notes."""
    found: list[Study] = []
    notes: list[str] = []
    for method, of_method in by_key(rows, lambda r: r.method).items():
        variants = by_key(of_method, lambda r: r.variant)
        if len(variants) < 2:
            continue
        arms = [Arm(_switches(variant), list(runs), dict(variant)) for variant, runs in variants.items()]
        states = [tuple(sorted(a.switches.items())) for a in arms]
        if len(set(states)) < 2:
            continue  # the switches do not vary for this method: not a quirk study
        if len(set(states)) < len(states):
            other = _varying(list(variants), exclude=set(SWITCHES))
            notes.append(f"{method}: its configurations differ in more than upstream's quirk switches "
                         f"({', '.join(f'`{p}`' for p in other)}), so on vs off is not isolated; not compared.")
            continue
        off = next((a for a in arms if not a.on), None)
        if off is None:
            notes.append(f"{method}: no configuration with every quirk switch at PeRL's value to compare with.")
            continue
        for arm in arms:
            if arm is off:
                continue
            a, b = off.settings, arm.settings
            also = {p: (_load(a.get(p)), _load(b.get(p))) for p in sorted(set(a) | set(b))
                    if p not in SWITCHES and a.get(p) != b.get(p)}
            found.append(Study(method, off, arm, also))
    family = len(found)
    for s in found:
        _compare(s, family)
    return found, notes


def _compare(s: Study, family: int) -> None:
    """The paired on − off comparison of `s`, corrected for `family` comparisons."""
    runs = s.on.runs + s.off.runs
    if not s.on.runs or not s.off.runs:
        s.note = "needs completed runs with the quirks on and off"
        return
    key = next((k for k in PER_PROBLEM_KEYS if all(per_problem(r, k) for r in runs)), None)
    if key is None:
        s.note = "some completed run has no per-problem results in eval.json (`per_problem_sampled`)"
        return
    lists = {"on": [per_problem(r, key) for r in s.on.runs], "off": [per_problem(r, key) for r in s.off.runs]}
    if len({len(v) for arm in lists.values() for v in arm}) != 1:  # type: ignore[arg-type]
        s.note = "the runs were evaluated on different numbers of held-out problems"
        return
    m = significance.compare(lists, family=family)  # type: ignore[arg-type]
    s.key, s.comparison, s.means = key, m.pair("on", "off"), m.means


def markdown(rows: list[Row]) -> list[str]:
    found, notes = studies(rows)
    if not found:
        return [f"## {TITLE}", "", *(f"- {n}" for n in notes), ""] if notes else []
    compared = [s for s in found if s.comparison is not None]
    level = 1 - significance.ALPHA / max(1, len(found))
    out = [
        f"## {TITLE}",
        "",
        "Configurations of a method that differ only in upstream's quirk switches (" + ", ".join(
            f"`{p}` (PeRL: {_text(v)})" for p, v in SWITCHES.items()) + "). On − off: held-out accuracy "
        "(each problem's share of correct samples) paired over the same problems; interval from the "
        f"hierarchical bootstrap (seeds, then problems; {significance.REPLICATES} replicates), Bonferroni-corrected "
        f"over the {len(found)} on/off comparison(s) of this section (each at {100 * level:.2f}%). Collapse: "
        "perl_cli/collapse.py on each run's metrics.jsonl.",
        "",
        "| method | configuration | runs | accuracy | on − off [interval] | verdict | collapsed |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for s in found:
        c = s.comparison
        for arm, is_on in ((s.off, False), (s.on, True)):
            acc = Stat.over(arm.runs, lambda r: r.accuracy, lambda r: r.accuracy_se)
            diff = "" if not is_on else ("-" if c is None else significance.describe_interval(c))
            verdict = "" if not is_on else s.gap_verdict
            out.append(f"| {s.method} | {arm.label} | {len(arm.runs)}/{len(arm.rows)} | {acc.text()} | {diff} | "
                       f"{verdict} | {len(arm.collapsed)}/{arm.judged} |")
    out += ["", "Verdicts:", ""]
    for s in found:
        c = s.comparison
        gap = (f"on − off {significance.describe_interval(c)} on {len(s.on.runs)} + {len(s.off.runs)} runs: "
               f"**{s.gap_verdict}**") if c is not None else f"no paired comparison ({s.note})"
        also = ("; also differs: " + ", ".join(f"`{p}` {_text(a)} → {_text(b)}" for p, (a, b) in s.also_differs.items())
                if s.also_differs else "")
        gains = ", ".join(f"{name} {Stat.over(arm.runs, lambda r: r.gain).text(sign=True)}"
                          for name, arm in (("off", s.off), ("on", s.on)))
        out.append(f"- **{s.method}**, {s.on.label} vs off: {gap}. Held-out gain vs base: {gains}. "
                   f"Collapse: {s.collapse_verdict}{also}.")
    gaps = [s.method for s in compared if s.comparison.distinguishable]  # type: ignore[union-attr]
    only = [s.method for s in found if s.on.collapsed and not s.off.collapsed]
    out += ["", "**Do upstream's quirks change the result?** " + (
        ("A gap in held-out accuracy: " + ", ".join(gaps) + ". " if gaps else
         "No gap in held-out accuracy is distinguishable at this sample size. " if compared else "Not compared. ")
        + ("Collapse only with them: " + ", ".join(only) + "." if only else "No collapse appears only with them.")), ""]
    out += _experiments(found)
    out += [f"- {n}" for n in notes] + ([""] if notes else [])
    return out


def _experiments(found: list[Study]) -> list[str]:
    out = [
        "Per experiment (accuracy ± its standard error over problems; gain = trained − base on the same "
        "problems, paired ±):",
        "",
        "| experiment | configuration | state | accuracy | gain vs base | truncated | collapse |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    seen: set[str] = set()
    for s in found:
        for arm in (s.off, s.on):
            for r in arm.rows:
                if r.name in seen:
                    continue
                seen.add(r.name)
                c = arm.collapses.get(r.name)
                collapse = "-" if r.name not in arm.collapses else "no" if c is None else f"yes: {c.kind} from step {c.step:g}"
                gain = r.gain
                gain_text = "-" if gain is None else f"{gain:+.3f}" + (f" ± {r.gain_se:.3f}" if r.gain_se is not None else "")
                out.append(f"| {r.name} | {arm.label} | {r.view.state} | {with_se(r.accuracy, r.accuracy_se)} | "
                           f"{gain_text} | {fmt(r.clipped_ratio)} | {collapse} |")
    return out + [""]


def plots(rows: list[Row]) -> list[tuple[str, str, Any]]:
    return []


def data(rows: list[Row]) -> dict[str, Any] | None:
    found, notes = studies(rows)
    if not found and not notes:
        return None
    return {
        "switches": SWITCHES,
        "family": len(found),
        "notes": [n.replace("`", "") for n in notes],
        "studies": [{
            "method": s.method, "off": s.off.label, "on": s.on.label, "switches_on": s.on.on,
            "also_differs": {p: list(v) for p, v in s.also_differs.items()},
            "runs": {"on": [r.name for r in s.on.runs], "off": [r.name for r in s.off.runs]},
            "key": s.key, "comparison": None if s.comparison is None else s.comparison.as_dict(),
            "mean_accuracy": s.means, "gap_verdict": s.gap_verdict, "note": s.note,
            "gain_vs_base": {name: Stat.over(arm.runs, lambda r: r.gain).mean for name, arm in (("off", s.off), ("on", s.on))},
            "collapsed": {"on": [r.name for r, _ in s.on.collapsed], "off": [r.name for r, _ in s.off.collapsed]},
            "collapse_verdict": s.collapse_verdict,
        } for s in found],
    }


def _switches(variant: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    settings = dict(variant)
    return {p: _load(settings[p]) if p in settings else default for p, default in SWITCHES.items()}


def _varying(variants: list[tuple[tuple[str, str], ...]], exclude: set[str]) -> list[str]:
    dicts = [dict(v) for v in variants]
    paths = sorted({p for d in dicts for p in d} - exclude)
    return [p for p in paths if len({d.get(p) for d in dicts}) > 1]


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _short(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)
