"""What a run learned, as statistics with margin: the paired held-out gain and the training trend.

Pure arithmetic (no torch), used by the worker to write eval.json and by the readers.

Why paired: the base model and the trained one are evaluated on the same held-out
problems, and problems differ far more in difficulty than the two models do. The gain's
standard error is therefore computed from the per-problem differences (trained − base),
in which each problem's difficulty cancels, not as the hypot of the two evaluations'
errors, which treats them as independent and overstates the noise two to three times.

Why a slope: one logged training-correctness value averages a few dozen completions, so
"the last 10% minus the first 10%" compares two handfuls of noisy values. A least-squares
slope over every logged step uses all of them and comes with its own standard error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from perl_cli.stats import standard_error  # one definition, the report's

# Two-sided 95% normal quantile: the bound quoted beside every estimate.
Z95 = 1.959963984540054


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def paired_gain(base: Sequence[float], trained: Sequence[float]) -> tuple[float, float]:
    """(mean, standard error) of trained − base over the same problems, in the same order."""
    if len(base) != len(trained):
        raise ValueError(f"paired gain needs the same problems: {len(base)} base vs {len(trained)} trained results")
    diffs = [t - b for b, t in zip(base, trained, strict=True)]
    return mean(diffs), standard_error(diffs)


def trend(steps: Sequence[float], values: Sequence[float]) -> dict[str, float] | None:
    """Least-squares line through (step, value): the rise over the logged span and its error.

    ``rise`` is slope × (last step − first step): how much the fitted line climbs over the
    run, in the value's own units; ``rise_se`` its standard error from the residuals, and
    ``rise_low`` / ``rise_high`` the 95% bounds. None with fewer than three points or a
    single step (no line to fit).
    """
    n = len(steps)
    if n != len(values) or n < 3:
        return None
    mx, my = mean(steps), mean(values)
    sxx = math.fsum((x - mx) ** 2 for x in steps)
    if sxx <= 0:
        return None
    slope = math.fsum((x - mx) * (y - my) for x, y in zip(steps, values, strict=True)) / sxx
    intercept = my - slope * mx
    residual = math.fsum((y - intercept - slope * x) ** 2 for x, y in zip(steps, values, strict=True))
    slope_se = math.sqrt(residual / (n - 2) / sxx)
    span = max(steps) - min(steps)
    return {
        "rise": slope * span,
        "rise_se": slope_se * span,
        "rise_low": (slope - Z95 * slope_se) * span,
        "rise_high": (slope + Z95 * slope_se) * span,
        "points": float(n),
    }


def quarter_means(values: Sequence[float]) -> list[float]:
    """Means of the four consecutive quarters of `values` (fewer than four values: [])."""
    n = len(values)
    if n < 4:
        return []
    cuts = [round(i * n / 4) for i in range(5)]
    return [mean(values[cuts[i] : cuts[i + 1]]) for i in range(4)]


def held_out_gains(trained: dict[str, Any], base: dict[str, Any]) -> dict[str, float]:
    """eval.json's paired gains from two evaluations with per-problem results (else {})."""
    out: dict[str, float] = {}
    for kind in ("sampled", "greedy"):
        t, b = trained.get(f"per_problem_{kind}"), base.get(f"per_problem_{kind}")
        if not isinstance(t, list) or not isinstance(b, list) or len(t) != len(b) or not t:
            continue
        gain, se = paired_gain(b, t)
        out[f"gain_{kind}"] = gain
        out[f"gain_{kind}_se"] = se
    return out
