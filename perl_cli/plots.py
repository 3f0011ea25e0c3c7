"""Tracking plots shared by `perl report` and the training dashboards (W&B, trackio).

One drawing code for the gradient-norm heatmap and the effective-rank curve, so that what a
researcher sees on the dashboard during training is what `perl report` draws afterwards.
The data helpers read the tracking histories the worker writes (spectral_history.json,
gradient_flow.json: ``[{"step", "seconds", "layers": {module: ...}}]``).

matplotlib is imported only inside the drawing functions, with the Agg backend: readers
(`perl status`, `plan`, `diagnose`) import this module's callers without it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

Grid = tuple[list, list, list[list[float]]]  # (x labels, y labels, values[y][x])


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def snapshots(data: Any) -> list[dict]:
    """The well-formed snapshots of a tracking file's payload ({"method", "history": [...]})."""
    history = data.get("history") if isinstance(data, dict) else data
    if not isinstance(history, list):
        return []
    return [h for h in history if isinstance(h, dict) and isinstance(h.get("layers"), dict)]


def gradient_grid(history: list[dict]) -> Grid | None:
    """(steps, modules, log10 gradient norm [module][step]) of one run's gradient history.

    A module's norm is the root sum of squares over its parameter kinds (A, B, ...)."""
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
    values = [[math.log10(v) if (v := table[s].get(m)) else math.nan for s in steps] for m in modules]
    return [int(s) if s.is_integer() else s for s in steps], modules, values


def effective_rank_series(history: list[dict]) -> list[tuple[float, float]]:
    """(step, effective rank averaged over the tracked layers) of one run's spectral history."""
    out = []
    for snap in history:
        values = [
            v for layer in snap["layers"].values()
            if isinstance(layer, dict) and (v := _number(layer.get("effective_rank"))) is not None
        ]
        if _number(snap.get("step")) is not None and values:
            out.append((float(snap["step"]), statistics.fmean(values)))
    return out


def spectrum_grid(layers: dict[str, Any]) -> Grid | None:
    """(σ index, modules, log10 σ [module][index]) of one spectral snapshot: every layer's
    singular value distribution side by side (a layer with fewer values is padded with NaN)."""
    rows = {
        str(name): [v for v in layer.get("singular_values", []) if _number(v) is not None]
        for name, layer in layers.items() if isinstance(layer, dict)
    }
    rows = {k: v for k, v in rows.items() if v}
    if not rows:
        return None
    width = max(len(v) for v in rows.values())
    values = [[math.log10(x) if i < len(v) and (x := v[i]) > 0 else math.nan for i in range(width)] for v in rows.values()]
    return list(range(1, width + 1)), list(rows), values


def value_range(grids: Iterable[Grid]) -> tuple[float | None, float | None]:
    """(min, max) of the finite values over several grids: one colour scale for all of them."""
    values = [v for _, _, grid in grids for line in grid for v in line if math.isfinite(v)]
    return (min(values), max(values)) if values else (None, None)


# --- drawing (matplotlib, imported lazily) ------------------------------------------------


def figure(size: tuple[float, float] = (7, 4.5)) -> tuple[Any, Any]:
    """A new (figure, axes) on the Agg backend; close it with `close`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


def close(fig: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def png(fig: Any, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (laid out tightly)."""
    import io

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def ticks(set_ticks: Any, set_labels: Any, labels: list, most: int = 12) -> None:
    every = max(1, math.ceil(len(labels) / most))
    positions = list(range(0, len(labels), every))
    set_ticks(positions)
    set_labels([str(labels[i]) for i in positions], fontsize=7)


def draw_heatmap(fig: Any, ax: Any, grid: Grid, *, vmin: float | None, vmax: float | None,
                 colorbar: str, xlabel: str, ylabel: str = "module") -> None:
    """A modules × x heatmap (log10 values), on a colour scale given by the caller."""
    xs, ys, values = grid
    image = ax.imshow(values, aspect="auto", origin="lower", cmap="viridis", vmin=vmin, vmax=vmax)
    fig.colorbar(image, ax=ax, label=colorbar)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ticks(ax.set_xticks, ax.set_xticklabels, xs)
    ticks(ax.set_yticks, ax.set_yticklabels, ys)


def draw_gradient_heatmap(fig: Any, ax: Any, grid: Grid, *, vmin: float | None = None, vmax: float | None = None,
                          shared: bool = False) -> None:
    """Gradient norms per module over steps (the report's heatmap, one per configuration)."""
    label = "gradient norm (log10)" + (", same scale for every method" if shared else "")
    draw_heatmap(fig, ax, grid, vmin=vmin, vmax=vmax, colorbar=label, xlabel="step")


def draw_spectrum(fig: Any, ax: Any, grid: Grid) -> None:
    """Singular values of every layer's update at one step (σ₁ first)."""
    draw_heatmap(fig, ax, grid, vmin=None, vmax=None, colorbar="singular value (log10)",
                 xlabel="singular value index (descending)")


def draw_effective_rank(ax: Any, series: list[tuple[str, list[float], list[float]]]) -> bool:
    """Effective rank over steps, one line per (label, steps, means); False when there is nothing."""
    drawn = False
    for label, steps, means in series:
        if steps:
            ax.plot(steps, means, marker=".", label=label)
            drawn = True
    if drawn:
        ax.set_xlabel("step")
        ax.set_ylabel("effective rank (mean over layers and seeds)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return drawn
