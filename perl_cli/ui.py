"""Shared terminal output helpers (Rich), so every command looks and degrades alike."""

from __future__ import annotations

import os
import sys

from rich.console import Console

# Piped output (logs, CI, `| less`) gets wide lines instead of Rich's 80-column default,
# unless COLUMNS says how wide.
PIPE_WIDTH = 160


def output_width(stream=None) -> int | None:
    """COLUMNS when set; else the terminal's (None: Rich asks it); else PIPE_WIDTH when piped."""
    stream = stream or sys.stdout
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) >= 20:
        return int(columns)
    return None if stream.isatty() else PIPE_WIDTH


def console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=output_width(stream), highlight=False)


def human_bytes(n: float | None) -> str:
    """Sizes in binary units, named as such (1024 bytes = 1 KiB)."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(max(0, s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def fit_columns(console: Console, build, optional: list[str]):
    """The table `build(dropped)` makes, dropping `optional` columns in order until it fits.

    Tables hold experiment names, which must never be cut (``adalora_r16_…`` three times
    says nothing): rather than let Rich shrink every column, drop the least useful ones.
    `build` takes the set of column headers to leave out and returns a Rich Table.
    Returns the table and the headers left out.
    """
    from rich.measure import Measurement

    dropped: set[str] = set()
    table = build(dropped)
    for header in optional:
        if Measurement.get(console, console.options.update_width(10**6), table).maximum <= console.width:
            break
        dropped.add(header)
        table = build(dropped)
    return table, dropped
