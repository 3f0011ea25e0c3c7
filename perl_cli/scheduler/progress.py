"""What `perl run` shows while it works: Rich progress bars on a terminal, plain
timestamped lines otherwise (logs, CI, `| tee`).

Both take the same calls from the scheduler: `info` for one-off messages, `started`
and `finished` per experiment, `update` with the running experiments' progress.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from perl_cli import state
from perl_cli.ui import console as make_console

PLAIN_SUMMARY_EVERY_S = 60.0
_TAIL_BYTES = 8192


@dataclass
class Running:
    """One running experiment as the progress display sees it."""

    name: str
    gpu: str
    step: int | None = None
    total_steps: int | None = None
    reward: float | None = None
    phase: str | None = None  # before step 1: e.g. "warm start 500/600"

    @property
    def where(self) -> str:
        return self.phase or f"{self.step if self.step is not None else '-'}/{self.total_steps or '?'}"


def read_progress(name: str, gpu: str, exp_dir: Path) -> Running:
    """Step and total from status.json, the last reward from the tail of metrics.jsonl."""
    status = state.read_status(exp_dir) or {}
    row = Running(name, gpu, _int(status.get("step")), _int(status.get("total_steps")))
    row.reward = _last_reward(exp_dir / state.METRICS_FILE)
    phase = status.get("phase")
    if isinstance(phase, dict) and isinstance(phase.get("name"), str):
        done, total = phase.get("done"), phase.get("total")
        row.phase = phase["name"] + (f" {_int(done) or 0}/{total}" if _int(total) else "")
    return row


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _last_reward(path: Path) -> float | None:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _TAIL_BYTES))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("reward"), (int, float)):
            return float(row["reward"])
    return None


def _stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


class PlainReporter:
    """Timestamped lines, one per event, and a summary line every minute."""

    def __init__(self, total: int, stream=None) -> None:
        self.total = total
        self.done = 0
        self.stream = stream or sys.stdout
        self._last_summary = time.monotonic()

    def _line(self, text: str) -> None:
        print(f"{_stamp()} {text}", file=self.stream, flush=True)

    def info(self, text: str) -> None:
        self._line(text)

    def started(self, name: str, gpu: str, attempt: int) -> None:
        extra = f" (attempt {attempt})" if attempt > 1 else ""
        self._line(f"started   {name} on {gpu}{extra}")

    def finished(self, name: str, final_state: str, detail: str = "", *, counts: bool = True) -> None:
        if counts:
            self.done += 1
        self._line(f"{final_state:<9} {name}{' ' + detail if detail else ''}  [{self.done}/{self.total}]")

    def retrying(self, name: str, detail: str) -> None:
        self._line(f"retrying  {name} {detail}")

    def grow(self, n: int) -> None:
        self.total += n

    def update(self, running: list[Running]) -> None:
        if time.monotonic() - self._last_summary < PLAIN_SUMMARY_EVERY_S:
            return
        self._last_summary = time.monotonic()
        parts = [f"{r.name} {r.where}" for r in running]
        self._line(f"progress  {self.done}/{self.total} done, {len(running)} running: {', '.join(parts)}")

    def close(self) -> None:
        pass


class RichReporter:
    """One bar for the suite (done/total, ETA) and one per running experiment."""

    def __init__(self, total: int, console: Console | None = None) -> None:
        self.console = console or make_console()
        self.progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[extra]}"),
            console=self.console,
            transient=False,
        )
        self.suite_task = self.progress.add_task("[bold]suite", total=max(total, 1), extra="")
        self.tasks: dict[str, int] = {}
        self.done = 0
        self.total = total
        self.progress.start()

    def info(self, text: str) -> None:
        self.progress.console.print(escape(text))

    def started(self, name: str, gpu: str, attempt: int) -> None:
        extra = f" (attempt {attempt})" if attempt > 1 else ""
        self.tasks[name] = self.progress.add_task(f"{name}", total=None, extra=f"{gpu}{extra}")

    def finished(self, name: str, final_state: str, detail: str = "", *, counts: bool = True) -> None:
        task = self.tasks.pop(name, None)
        if task is not None:
            self.progress.remove_task(task)
        if counts:
            self.done += 1
            self.progress.update(self.suite_task, completed=self.done)
        colour = {"completed": "green", "failed": "red", "interrupted": "yellow"}.get(final_state, "white")
        self.progress.console.print(f"[{colour}]{final_state:<9}[/] {escape(name)}{' ' + escape(detail) if detail else ''}")

    def grow(self, n: int) -> None:
        """More experiments joined the run (handed over by another `perl run`)."""
        self.total += n
        self.progress.update(self.suite_task, total=max(self.total, 1))

    def retrying(self, name: str, detail: str) -> None:
        """One line for a failure a retry fixes (an OOM), not a red `failed` then `retrying`."""
        task = self.tasks.pop(name, None)
        if task is not None:
            self.progress.remove_task(task)
        self.progress.console.print(f"[yellow]retrying [/] {escape(name)} {escape(detail)}")

    def update(self, running: list[Running]) -> None:
        for row in running:
            task = self.tasks.get(row.name)
            if task is None:
                continue
            reward = f"  reward {row.reward:.3f}" if row.reward is not None else ""
            self.progress.update(
                task, total=row.total_steps, completed=row.step or 0,
                extra=escape(f"{row.gpu}{reward}" + (f"  {row.phase}" if row.phase else ""))
            )

    def close(self) -> None:
        self.progress.stop()


def make_reporter(total: int, *, tty: bool | None = None) -> PlainReporter | RichReporter:
    tty = sys.stdout.isatty() if tty is None else tty
    return RichReporter(total) if tty else PlainReporter(total)
