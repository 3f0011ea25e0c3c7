"""The statistics every reader uses: one definition of each number the report prints.

* `Stat`: one quantity over the runs of a group. "±" is always a standard error of the
  mean: over seeds (sd / √n) when there are several runs, else the one run's own error
  (over held-out problems, for accuracies). `Stat.over(runs, value, se)` is that rule.
* `eval_se`: an accuracy's standard error from eval.json (the worker's, or an upper bound).
* `paired`: the mean and standard error of paired differences (B − A on the same units).
* `tail_mean` / `head_mean`: the "last (first) 10% of logged steps" rule of the reward
  summaries, shared by the worker (eval.json) and the report.
* `spread`: mean ± sd text, for the places that show a spread and say so.

Pure Python (statistics, math): no numpy, no torch, so any reader may import it. The
significance section's bootstrap lives in `perl_cli/significance.py`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

TAIL_SHARE = 0.1  # "the last 10% of logged steps"

T = TypeVar("T")


def number(value: Any) -> float | None:
    """A finite number as float; None for anything else (bool, NaN, inf, text, null)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the known values; None when there is none."""
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def fmt(value: float | None, spec: str = ".3f", suffix: str = "") -> str:
    """`value` formatted, or "-" when unknown."""
    return "-" if value is None else f"{value:{spec}}{suffix}"


def with_se(value: float | None, se: float | None, spec: str = ".3f") -> str:
    return fmt(value, spec) + (f" ± {se:{spec}}" if value is not None and se is not None else "")


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean of `values` (sample sd / √n); 0 for fewer than two."""
    n = len(values)
    if n < 2:
        return 0.0
    return statistics.stdev(values) / math.sqrt(n)


def tail_mean(values: Sequence[float], share: float = TAIL_SHARE) -> float:
    """Mean of the last `share` of `values` (at least one): the reward_last_10pct rule."""
    k = max(1, round(share * len(values)))
    return statistics.fmean(values[-k:])


def head_mean(values: Sequence[float], share: float = TAIL_SHARE) -> float:
    """Mean of the first `share` of `values` (at least one): the reward_first_10pct rule."""
    k = max(1, round(share * len(values)))
    return statistics.fmean(values[:k])


@dataclass
class Stat:
    """One quantity over the runs of a group; ± is always a standard error of the mean.

    Several runs (seeds): the spread over seeds, sd / sqrt(n). One run: `single_se`, the
    run's own standard error (over held-out problems, for accuracies), when known.
    """

    values: list[float]
    single_se: float | None = None

    @classmethod
    def over(cls, runs: Sequence[T], value: Callable[[T], float | None],
             se: Callable[[T], float | None] | None = None) -> Stat:
        """`value` of each run that has one; with a single such run, its own `se` is the error."""
        measured = [(r, v) for r in runs if (v := value(r)) is not None]
        single = se(measured[0][0]) if se is not None and len(measured) == 1 else None
        return cls([v for _, v in measured], single)

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


def paired(a: Sequence[float | None], b: Sequence[float | None]) -> Stat:
    """B − A over the pairs where both are known: its mean ± the standard error of the differences."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same length, got {len(a)} and {len(b)}")
    return Stat([y - x for x, y in zip(a, b, strict=True) if x is not None and y is not None])


def eval_se(ev: dict, key: str) -> float | None:
    """The standard error of eval.json's accuracy `key`, over held-out problems.

    The worker writes it (`<key>_se`); for an eval.json without it, sqrt(p(1-p)/problems)
    bounds it from above (the per-problem means lie in [0, 1])."""
    se = number(ev.get(f"{key}_se"))
    if se is not None:
        return se
    p, n = number(ev.get(key)), number(ev.get("eval_problems"))
    return math.sqrt(p * (1 - p) / n) if p is not None and n and 0 <= p <= 1 else None


def spread(values: Sequence[float], spec: str) -> str:
    """Signed mean ± sd (a spread, not a standard error) of `values`; "-" when there is none."""
    if not values:
        return "-"
    centre = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return f"{centre:+{spec}}" + (f" ± {std:{spec}}" if std is not None else " (one pair: no spread)")
