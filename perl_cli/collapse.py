"""Training collapse, detected from the metrics the worker already logs (metrics.jsonl).

A run has collapsed when, from some logged step to the latest one, without a break:

* correctness (`reward/correct`; `reward` when no correctness is logged) sits near zero
  — at most max(0.02, a tenth of its earlier peak) — after having reached a peak of at
  least 0.05 (a run that never learned anything has not collapsed);
* the completion length has collapsed to under 30% of its opening level (≥ 5 tokens) or
  exploded past 3× it, or nearly every completion is cut at the length limit
  (`completions/clipped_ratio` ≥ 0.9 where it opened under 0.5);
* the policy's entropy has run away (≥ max(4× its opening level, opening + 1 nat)), or
  its KL to the reference (`kl`) has (≥ opening + 0.5).

"Stays" is at least SUSTAIN consecutive logged points up to the latest, so a single bad
logging window (a window of 32 completions with none correct happens by chance) is not a
collapse, and a run that recovers stops being flagged. The start step is the first step of
that final stretch. The opening level is the median of the first tenth (≥ 3 points), the
peak the highest running mean of 3 points before the stretch.

Pure (no numpy, no torch): `perl status`, `perl watch` and `perl diagnose` evaluate it on
every read; the worker evaluates it on every log when `training.stop_on_collapse` is on.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from perl_cli import outcomes
from perl_cli.stats import number as _finite

MIN_POINTS = 8  # logged points before anything is judged
SUSTAIN = 3  # consecutive logged points, up to the latest, that a collapse must last
NEAR_ZERO = 0.02
MAX_VALUE = 1e12
MIN_PEAK = 0.05
CORRECTNESS_KEYS = ("reward/correct", "reward/correctness", "reward/accuracy")
CAUSE = outcomes.CAUSE_COLLAPSED  # status.json's `cause` when the worker stopped a collapsed run


@dataclass
class Signal:
    """One way the run collapsed: which metric, from which step, and the curve's key numbers."""

    kind: str  # correctness | length_collapse | length_explosion | entropy | kl
    metric: str
    step: float  # first step of the final stretch
    reference: float  # the level it left: the peak (correctness) or the opening level
    reference_step: float | None
    threshold: float
    last: float
    last_step: float
    points: int  # logged points in the stretch

    def text(self) -> str:
        ref = f"{_num(self.reference)}" + (f" (step {_step(self.reference_step)})" if self.reference_step is not None else "")
        lasting = f"for {self.points} logged steps, last {_num(self.last)} at step {_step(self.last_step)}"
        if self.kind == "correctness":
            return (f"{self.metric} fell from a peak of {ref} to ≤ {_num(self.threshold)} at step {_step(self.step)} "
                    f"and stayed there {lasting}")
        if self.kind == "length_collapse":
            return (f"completion length collapsed from {ref} to ≤ {_num(self.threshold)} tokens at step "
                    f"{_step(self.step)} ({lasting})")
        if self.kind == "length_explosion":
            unit = "of completions cut at the length limit" if self.metric.endswith("clipped_ratio") else "tokens"
            return (f"completion length exploded: {self.metric} from {ref} to ≥ {_num(self.threshold)} {unit} at step "
                    f"{_step(self.step)} ({lasting})")
        return (f"{self.metric} ran away from {ref} to ≥ {_num(self.threshold)} at step {_step(self.step)} ({lasting})")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "metric": self.metric, "step": self.step, "reference": self.reference,
                "reference_step": self.reference_step, "threshold": self.threshold, "last": self.last,
                "last_step": self.last_step, "points": self.points, "text": self.text()}


@dataclass
class Collapse:
    signals: list[Signal]  # earliest first

    @property
    def step(self) -> float:
        return self.signals[0].step

    @property
    def kind(self) -> str:
        return self.signals[0].kind

    def text(self) -> str:
        return "; ".join(s.text() for s in self.signals)

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "kind": self.kind, "text": self.text(), "signals": [s.to_json() for s in self.signals]}


def detect(rows: list[dict]) -> Collapse | None:
    """The collapse in `rows` (metrics.jsonl objects, any order), or None."""
    signals = [s for s in (_correctness(rows), *_length(rows), _runaway(rows, "entropy"), _runaway(rows, "kl")) if s]
    return Collapse(sorted(signals, key=lambda s: s.step)) if signals else None


def series(rows: list[dict], key: str) -> list[tuple[float, float]]:
    """(step, value) of `key`, by step, finite numbers only; the last row wins for a repeated step."""
    points: dict[float, float] = {}
    for row in rows:
        if not isinstance(row, dict):
            continue
        step, value = _finite(row.get("step")), _finite(row.get(key))
        # Beyond ±1e12 a metric is garbage, and sums of such values overflow.
        if step is not None and value is not None and abs(value) <= MAX_VALUE and abs(step) <= MAX_VALUE:
            points[step] = value
    return sorted(points.items())


def _stretch(points: list[tuple[float, float]], bad) -> int:
    """Length of the final run of points for which bad(value) holds."""
    n = 0
    for _, v in reversed(points):
        if not bad(v):
            break
        n += 1
    return n


def _opening(points: list[tuple[float, float]]) -> float:
    k = max(3, math.ceil(0.1 * len(points)))
    return statistics.median(v for _, v in points[:k])


def _signal(kind: str, metric: str, points: list[tuple[float, float]], n: int, reference: float,
            reference_step: float | None, threshold: float) -> Signal:
    start = points[len(points) - n]
    return Signal(kind, metric, start[0], reference, reference_step, threshold, points[-1][1], points[-1][0], n)


def _correctness(rows: list[dict]) -> Signal | None:
    key = next((k for k in CORRECTNESS_KEYS if series(rows, k)), "reward")
    points = series(rows, key)
    if len(points) < MIN_POINTS:
        return None
    # The peak before the stretch: the highest running mean of 3 points (one noisy window is not
    # a peak). The stretch is everything after point i; its floor depends on the peak before it.
    suffix_max = [-math.inf] * (len(points) + 1)
    for i in range(len(points) - 1, -1, -1):
        suffix_max[i] = max(points[i][1], suffix_max[i + 1])
    peak, peak_step = -math.inf, None
    for i in range(len(points) - SUSTAIN):
        window = statistics.fmean(v for _, v in points[max(0, i - 2) : i + 1])
        if window >= peak:
            peak, peak_step = window, points[i][0]
        floor = max(NEAR_ZERO, 0.1 * peak)
        if peak >= MIN_PEAK and suffix_max[i + 1] <= floor:
            return _signal("correctness", key, points, len(points) - i - 1, peak, peak_step, floor)
    return None


def _length(rows: list[dict]) -> list[Signal | None]:
    out: list[Signal | None] = []
    points = series(rows, "completion_length")
    if len(points) >= MIN_POINTS:
        opening = _opening(points)
        if opening >= 5:
            low, high = 0.3 * opening, 3 * opening
            if (n := _stretch(points, lambda v: v <= low)) >= SUSTAIN:
                out.append(_signal("length_collapse", "completion_length", points, n, opening, None, low))
            elif (n := _stretch(points, lambda v: v >= high)) >= SUSTAIN:
                out.append(_signal("length_explosion", "completion_length", points, n, opening, None, high))
    clipped = series(rows, "completions/clipped_ratio")
    if len(clipped) >= MIN_POINTS and not any(s and s.kind == "length_explosion" for s in out):
        opening = _opening(clipped)
        if opening < 0.5 and (n := _stretch(clipped, lambda v: v >= 0.9)) >= SUSTAIN:
            out.append(_signal("length_explosion", "completions/clipped_ratio", clipped, n, opening, None, 0.9))
    return out


def _runaway(rows: list[dict], key: str) -> Signal | None:
    points = series(rows, key)
    if len(points) < MIN_POINTS:
        return None
    opening = max(0.0, _opening(points))
    threshold = max(4 * opening, opening + 1.0) if key == "entropy" else opening + 0.5
    n = _stretch(points, lambda v: v >= threshold)
    return _signal(key, key, points, n, opening, None, threshold) if n >= SUSTAIN else None


def remedy(method: str | None, learning_rate: float | None) -> str:
    """What to change, in words: the learning rate first, and the method's known failure mode."""
    parts = []
    if learning_rate:
        parts.append(f"lower the learning rate (it ran at {learning_rate:g}; try {learning_rate / 4:g}, a quarter)")
    else:
        parts.append("lower the learning rate")
    if method in ("pissa", "milora"):
        which = "principal" if method == "pissa" else "minor"
        parts.append(
            f"{method} starts its adapter on the base weights' {which} singular subspace; under RL its updates "
            "are known to leave that subspace (spectral misalignment, see the report's update-geometry plot) "
            "and collapse at learning rates LoRA tolerates, so use a much lower rate or a LoRA-family method"
        )
    return "; ".join(parts)


def _num(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def _step(step: float | None) -> str:
    return "-" if step is None else (str(int(step)) if float(step).is_integer() else f"{step:g}")
