"""Which differences between methods are real: paired comparisons on the same held-out problems.

Every method (a report group: runs that differ only by seed) brings, per run, its list of
per-problem results (eval.json's `per_problem_sampled`: each held-out problem's share of
correct samples, in the order of the held-out problems, which is the same for every run of
a suite). For every pair of methods X, Y the quantity is the paired difference in accuracy,
mean over X's runs and problems minus mean over Y's runs and the *same* problems.

Its uncertainty comes from a hierarchical bootstrap with the two sources of noise a
researcher has: seeds, then problems. Each replicate resamples every method's runs (seeds)
with replacement, then resamples the held-out problems with replacement, once for all
methods (the problems are shared, so the comparison is paired: a problem that every method
finds hard moves them together and cancels in the difference). One set of replicates serves
all pairs.

Correction for the number of pairs: Bonferroni. With m pairs each interval is a percentile
interval at level 1 − α/m (α = 0.05 family-wise), and the verdict is "X > Y" or "X < Y"
when that interval excludes zero, else "indistinguishable at this sample size". Bonferroni
(not Holm) so that the interval shown and the verdict always agree. With one seed per
method the seed level cannot vary: the interval then covers problems only, and says so.

numpy (a dependency of matplotlib, so always installed) is imported inside the functions:
reader commands that never compare pay nothing for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

ALPHA = 0.05  # family-wise error rate over all pairs of a suite
REPLICATES = 4000  # enough for the 1 − α/m tails of ~10 pairs (10 replicates beyond each 0.125% tail)
SEED = 20_251_205  # the bootstrap's own seed: the same files give the same report
CHUNK = 500  # replicates per block, so memory stays bounded on large benchmark sets
INDISTINGUISHABLE = "indistinguishable at this sample size"


@dataclass
class Comparison:
    """X − Y on the same problems, with its corrected interval and verdict."""

    x: str
    y: str
    diff: float  # mean accuracy of X minus that of Y (observed)
    low: float  # interval at level 1 − α/m (Bonferroni)
    high: float
    p: float  # bootstrap two-sided p-value, Bonferroni-adjusted (min(1, m·p))
    verdict: str  # "X > Y", "X < Y" or INDISTINGUISHABLE

    @property
    def distinguishable(self) -> bool:
        return self.verdict != INDISTINGUISHABLE

    def as_dict(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "diff": self.diff, "ci_low": self.low, "ci_high": self.high,
                "p_adjusted": self.p, "verdict": self.verdict}


@dataclass
class Matrix:
    """All pairs of a suite's methods; `methods` best (highest mean accuracy) first."""

    methods: list[str]
    means: dict[str, float]
    runs: dict[str, int]
    problems: int
    pairs: list[Comparison] = field(default_factory=list)
    level: float = 1 - ALPHA
    replicates: int = REPLICATES
    family: int = 0  # comparisons the Bonferroni correction counts; 0 = this matrix's pairs

    def pair(self, x: str, y: str) -> Comparison | None:
        """X − Y (the stored pair, flipped when it was stored as Y − X)."""
        for c in self.pairs:
            if (c.x, c.y) == (x, y):
                return c
            if (c.x, c.y) == (y, x):
                flipped = {f"{y} > {x}": f"{x} < {y}", f"{y} < {x}": f"{x} > {y}"}.get(c.verdict, c.verdict)
                return Comparison(x, y, -c.diff, -c.high, -c.low, c.p, flipped)
        return None

    @property
    def best(self) -> str | None:
        return self.methods[0] if self.methods else None

    def not_distinguishable_from_best(self) -> list[str]:
        best = self.best
        return [m for m in self.methods[1:] if (c := self.pair(best, m)) is not None and not c.distinguishable]

    @property
    def pair_level(self) -> float:
        """The level of each pair's interval: 1 − α/m."""
        return 1 - ALPHA / max(1, self.family or len(self.pairs))

    def as_dict(self) -> dict[str, Any]:
        return {
            "methods": self.methods, "mean_accuracy": self.means, "runs": self.runs, "problems": self.problems,
            "correction": "bonferroni", "family_alpha": ALPHA, "pair_level": self.pair_level,
            "replicates": self.replicates, "bootstrap": "hierarchical: runs (seeds) per method, then problems (shared)",
            "pairs": [c.as_dict() for c in self.pairs],
            "best": self.best, "not_distinguishable_from_best": self.not_distinguishable_from_best(),
        }


def compare(results: dict[str, list[list[float]]], *, replicates: int = REPLICATES, seed: int = SEED,
            family: int = 0) -> Matrix:
    """The pair matrix of `results`: method -> one per-problem list per run (all lists of one length).

    `family`: the number of comparisons the correction counts when this matrix is one of several
    a section reports together (e.g. one on/off pair per method); 0 counts this matrix's pairs.

    Raises ValueError when the lists differ in length (the runs were not evaluated on the
    same problems) or a method has no run."""
    import numpy as np

    lengths = {len(run) for runs in results.values() for run in runs}
    if any(not runs for runs in results.values()):
        raise ValueError("every method needs at least one run with per-problem results")
    if len(lengths) > 1:
        raise ValueError(f"per-problem lists of different lengths {sorted(lengths)}: not the same held-out problems")
    problems = lengths.pop() if lengths else 0
    if problems == 0:
        raise ValueError("no per-problem results to compare")
    data = {m: np.asarray(runs, dtype=float) for m, runs in results.items()}  # runs x problems
    means = {m: float(a.mean()) for m, a in data.items()}
    methods = sorted(data, key=lambda m: (-means[m], m))
    boot = _replicate_means(data, problems, replicates, np.random.default_rng(seed))
    pairs = list(combinations(methods, 2))
    out = Matrix(methods, means, {m: len(a) for m, a in data.items()}, problems, replicates=replicates, family=family)
    tests = max(1, family or len(pairs))
    tail = (1 - out.pair_level) / 2
    for x, y in pairs:
        d = boot[x] - boot[y]
        observed = means[x] - means[y]
        low, high = (float(v) for v in np.quantile(d, [tail, 1 - tail]))
        # Two-sided bootstrap p-value (share of replicates on the far side of zero, +1 smoothed).
        p = min(1.0, 2 * (min(int((d <= 0).sum()), int((d >= 0).sum())) + 1) / (len(d) + 1)) * tests
        verdict = f"{x} > {y}" if low > 0 else f"{x} < {y}" if high < 0 else INDISTINGUISHABLE
        out.pairs.append(Comparison(x, y, observed, low, high, min(1.0, p), verdict))
    return out


def _replicate_means(data: dict[str, Any], problems: int, replicates: int, rng: Any) -> dict[str, Any]:
    """Per method, its mean accuracy in each replicate: its runs resampled (seeds), then the
    problems resampled once per replicate for every method (the pairing)."""
    import numpy as np

    out = {m: np.empty(replicates) for m in data}
    uniform = np.full(problems, 1.0 / problems)
    for start in range(0, replicates, CHUNK):
        n = min(CHUNK, replicates - start)
        problem_weights = rng.multinomial(problems, uniform, size=n) / problems  # n x problems
        for m, a in data.items():
            runs = a.shape[0]
            run_weights = rng.multinomial(runs, np.full(runs, 1.0 / runs), size=n) / runs  # n x runs
            out[m][start:start + n] = np.einsum("br,rp,bp->b", run_weights, a, problem_weights)
    return out


def describe_interval(c: Comparison) -> str:
    return f"{c.diff:+.3f} [{c.low:+.3f}, {c.high:+.3f}]"


def finite(values: Any) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
