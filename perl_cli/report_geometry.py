"""Report section: where each method's update points (update geometry, issue 17).

The worker's spectral snapshots (spectral_history.json) carry, per layer, `geometry`:
how the learned update ΔW aligns with the base weight's top-k (principal) and bottom-k
(minor) singular subspaces (perl_cli/tracking/geometry.py). Here, per configuration and
snapshot step: the share of ΔW's energy in each subspace (the mean of its column-side and
row-side shares), averaged over layers and runs, against what a random update would
have (k/dim). Plotted over training, one colour per configuration: solid top-k, dashed
bottom-k, dotted chance. A sibling section: reads through report_model only.
"""

from __future__ import annotations

import statistics
from typing import Any

from perl_cli.report_model import SPECTRAL_FILES, Row, groups, tracking_history
from perl_cli.stats import number

NAME = "geometry"
PLOT = "update_geometry.png"


def _layer_point(layer: Any) -> tuple[float, float, float] | None:
    """(top share, bottom share, chance share) of one layer's geometry record."""
    geo = layer.get("geometry") if isinstance(layer, dict) else None
    if not isinstance(geo, dict) or not isinstance(geo.get("top"), dict) or not isinstance(geo.get("bottom"), dict):
        return None
    k, dims = number(geo.get("k")), geo.get("dims")
    shares = []
    for side in ("top", "bottom"):
        values = [number(geo[side].get(f"energy_{s}")) for s in ("left", "right")]
        if any(v is None or not 0 <= v <= 1 + 1e-6 for v in values):  # a share; anything else is not ours
            return None
        shares.append(statistics.fmean(values))  # type: ignore[arg-type]
    if not k or k < 0 or not isinstance(dims, list) or len(dims) != 2 or not all((number(d) or 0) >= 1 for d in dims):
        return None
    chance = statistics.fmean([min(1.0, k / number(d)) for d in dims])  # type: ignore[operator]
    return shares[0], shares[1], chance


def run_series(row: Row) -> dict[float, tuple[float, float, float]]:
    """step -> (top, bottom, chance), each the mean over the run's layers at that snapshot."""
    out = {}
    for snap in tracking_history(row, SPECTRAL_FILES):
        step = number(snap.get("step"))
        points = [p for layer in snap["layers"].values() if (p := _layer_point(layer)) is not None]
        if step is not None and points:
            out[step] = tuple(statistics.fmean(p[i] for p in points) for i in range(3))
    return out


def series(rows: list[Row]) -> dict[str, dict[str, Any]]:
    """Per configuration: steps every run with geometry logged, and the means over those runs."""
    out = {}
    for g in groups(rows):
        runs = [s for r in g.runs if (s := run_series(r))]
        if not runs:
            continue
        steps = sorted(set.intersection(*(set(s) for s in runs)))
        if not steps:
            continue
        out[g.label] = {
            "runs": len(runs),
            "steps": [int(s) if s.is_integer() else s for s in steps],
            "top": [statistics.fmean(s[x][0] for s in runs) for x in steps],
            "bottom": [statistics.fmean(s[x][1] for s in runs) for x in steps],
            "chance": [statistics.fmean(s[x][2] for s in runs) for x in steps],
        }
    return out


def markdown(rows: list[Row]) -> list[str]:
    data = series(rows)
    if not data:
        return []
    out = [
        "## Update geometry: where each method's update points",
        "",
        "Share of the learned update ΔW's energy that lies in the base weight's top-k (principal) and bottom-k "
        "(minor) singular subspaces, k = the adapter's rank; mean of the column-side and row-side shares, over "
        "layers and runs. A random update would put the *chance* share in each. PiSSA starts on the principal "
        "subspace and MiLoRA on the minor one: whether their updates stay there is what the plot shows.",
        "",
        "| configuration | runs | first step | top-k | bottom-k | last step | top-k | bottom-k | chance |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, s in data.items():
        first = next((i for i, (t, b) in enumerate(zip(s["top"], s["bottom"], strict=True)) if t + b > 0), 0)
        out.append(f"| {label} | {s['runs']} | {s['steps'][first]} | {s['top'][first]:.3f} | {s['bottom'][first]:.3f} | "
                   f"{s['steps'][-1]} | {s['top'][-1]:.3f} | {s['bottom'][-1]:.3f} | {s['chance'][-1]:.3f} |")
    return out + [""]


def plot(ax: Any, rows: list[Row]) -> bool:
    data = series(rows)
    if not data:
        return False
    for label, s in data.items():
        (line,) = ax.plot(s["steps"], s["top"], marker=".", label=f"{label}: top-k")
        ax.plot(s["steps"], s["bottom"], linestyle="--", marker=".", color=line.get_color(), label=f"{label}: bottom-k")
        ax.plot(s["steps"], s["chance"], linestyle=":", linewidth=0.8, color=line.get_color())
    ax.set_xlabel("step")
    ax.set_ylabel("share of ΔW's energy in the subspace")
    ax.set_ylim(bottom=0)
    # Below the axes, not on them: the lines span the whole height (PiSSA high, MiLoRA low).
    ax.legend(fontsize=7, title="solid: top-k, dashed: bottom-k, dotted: chance", title_fontsize=7,
              loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    ax.grid(alpha=0.3)
    return True


def plots(rows: list[Row]) -> list[tuple[str, str, Any]]:
    return [("Update geometry: ΔW's energy in the base's top-k / bottom-k subspaces", PLOT, plot)]


def data(rows: list[Row]) -> dict[str, Any] | None:
    return series(rows) or None
