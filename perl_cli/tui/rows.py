"""The experiments table of `perl watch`: which rows, in which order, with which columns.

Rows come in `perl status`'s order (stalled, running, then problems, ...), each with the
failure cause from perl_cli.diagnose and the heartbeat age. Columns that do not fit the
width are left out, least useful first; the experiment name is never cut. Cells are Rich
Text, so user text (names, GPU labels) is never parsed as markup.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text

from perl_cli import experiments_view as views
from perl_cli import state as st
from perl_cli.ui import human_seconds

# (key, header) in display order.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("experiment", "experiment"),
    ("state", "state"),
    ("step", "step"),
    ("progress", "progress"),
    ("reward", "reward"),
    ("cause", "cause"),
    ("beat", "beat"),
    ("gpu", "GPU"),
    ("elapsed", "elapsed"),
    ("eta", "ETA"),
)
# Left out in this order when the table is too narrow; experiment and state always stay.
OPTIONAL = ("progress", "elapsed", "reward", "gpu", "beat", "eta", "cause", "step")
# A DataTable cell has one column of padding on each side.
CELL_PADDING = 2
BAR_WIDTH = 10
STATE_STYLE = {
    st.RUNNING: "bold cyan",
    st.COMPLETED: "green",
    st.FAILED: "bold red",
    st.INTERRUPTED: "yellow",
    st.STALE: "magenta",
    st.UNREADABLE: "bold red",
    st.PENDING: "dim",
    st.QUEUED: "blue",
}


@dataclass
class Row:
    name: str
    cells: dict[str, Text]


def bar(fraction: float, width: int = BAR_WIDTH) -> Text:
    fraction = max(0.0, min(1.0, fraction))
    filled = int(round(fraction * width))
    return Text("█" * filled, style="green") + Text("░" * (width - filled), style="dim") + Text(f" {fraction:4.0%}")


def state_text(e: views.ExperimentView) -> Text:
    if e.stalled:
        return Text("stalled", style="bold red")
    text = Text(e.state, style=STATE_STYLE.get(e.state, ""))
    if e.collapse is not None:  # perl_cli/collapse.py: the step where the final collapse began
        step = e.collapse.get("step")
        at = int(step) if isinstance(step, (int, float)) and float(step).is_integer() else step
        text += Text(f" collapse@{at}", style="bold red")
    return text


def step_text(e: views.ExperimentView) -> str:
    if e.phase_text:
        return e.phase_text
    if e.state == st.UNREADABLE:
        return "-"
    total, step = e.total_steps or 0, e.step or 0
    if e.state == st.COMPLETED and not step:
        step = total
    return f"{step}/{total}" if total else str(step or "-")


def fraction(e: views.ExperimentView) -> float:
    total = e.total_steps or 0
    if e.state == st.COMPLETED:
        return 1.0
    return min(e.step or 0, total) / total if total else 0.0


def gpu_text(gpu: object) -> str:
    if gpu is None or gpu == "":
        return "-"
    return ",".join(str(g) for g in gpu) if isinstance(gpu, list) else str(gpu)


def make_row(e: views.ExperimentView, cause: str | None) -> Row:
    beat = human_seconds(e.heartbeat_age_s) if e.heartbeat_age_s is not None else "-"
    cells = {
        "experiment": Text(e.name + (" *" if e.overrides else "")),
        "state": state_text(e),
        "step": Text(step_text(e)),
        "progress": bar(fraction(e)),
        "reward": Text("-" if e.reward is None else f"{e.reward:.3f}"),
        "cause": Text(cause or "-", style="red" if cause and cause != "interrupted" else ""),
        "beat": Text(beat, style="bold red" if e.stalled else ""),
        "gpu": Text(gpu_text(e.gpu)),
        "elapsed": Text(human_seconds(e.duration_s)),
        "eta": Text(human_seconds(e.eta_s) if e.eta_s is not None else "-"),
    }
    return Row(e.name, cells)


def fit(rows: list[Row], width: int) -> list[str]:
    """The column keys to show in `width` cells: optional ones dropped until the rest fits."""
    def need(key: str, header: str) -> int:
        return max([len(header), *(r.cells[key].cell_len for r in rows)]) + CELL_PADDING

    widths = {key: need(key, header) for key, header in COLUMNS}
    shown = [key for key, _ in COLUMNS]
    for key in OPTIONAL:
        if sum(widths[k] for k in shown) <= width:
            break
        shown.remove(key)
    return shown


HEADERS = dict(COLUMNS)
