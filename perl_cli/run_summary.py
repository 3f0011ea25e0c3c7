"""What `perl run` says when it ends: one table of the run's experiments, and `--notify`.

A progress bar that scrolled the one failure away is no ending: the summary lists every
experiment of the run with its final state, the cause of a failure (diagnose's
classifier), its time and held-out accuracy, then the counts and the best method of the
suite so far (the report's ranking). It is read from the experiment directories (the
read model), like every other reader, so it says what the files say.

`--notify CMD` runs CMD through the shell when the run ends, with the summary as plain
text on stdin and PERL_EXIT_CODE, PERL_SUITE and PERL_OUTPUT_DIR in its environment, so
a researcher can mail or message themselves. A failing or hanging notifier is reported
and never changes the run's exit code; the run waits for the notifier itself, not for
its background children, and keeps only a bounded tail of its output.
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from perl_cli import config as configlib
from perl_cli import experiments_view as views
from perl_cli import state as st
from perl_cli.ui import fit_columns, human_seconds

NOTIFY_TIMEOUT_S = 60.0
STATE_STYLE = {st.COMPLETED: "green", st.FAILED: "bold red", st.INTERRUPTED: "yellow", st.UNREADABLE: "bold red"}
OPTIONAL_COLUMNS = ["time", "accuracy", "cause"]


@dataclass
class Summary:
    renderable: Any
    text: str  # the same, as plain text (for --notify)


def build(output: Path, suite: str, cfg: configlib.ConfigFile | None, names: list[str], exit_code: int,
          *, width: int = 100) -> Summary:
    """The end-of-run summary of `names` (the run's experiments) in `output/suite`."""
    from perl_cli import diagnose, report

    view = views.load_suite(output, suite, cfg)
    ours = [e for e in view.experiments if e.name in set(names)]
    rows = {r.view.name: r for r in report.load_rows(view)}
    causes: dict[str, str] = {}
    for e in ours:
        if e.state in (st.FAILED, st.INTERRUPTED, st.UNREADABLE) or e.stalled:
            rule = diagnose.classify(diagnose.gather(e))
            causes[e.name] = f"{rule.cause}: {rule.title}"

    def table_for(dropped: set[str]) -> Table:
        table = Table(title=f"perl run {suite}: the run's {len(ours)} experiments", title_justify="left",
                      box=None, header_style="bold", pad_edge=False)
        columns = [c for c in ("experiment", "state", "cause", "time", "accuracy") if c not in dropped]
        for column in columns:
            header = "accuracy (change from base)" if column == "accuracy" else column
            table.add_column(header, no_wrap=column == "experiment", justify="right" if column in ("time", "accuracy") else "left")
        for e in ours:
            row = rows.get(e.name)
            accuracy = "-"
            if row is not None and row.accuracy is not None:
                accuracy = f"{row.accuracy:.3f}" + (f" ± {row.accuracy_se:.3f}" if row.accuracy_se is not None else "")
                if row.gain is not None:  # what was learned: the change from the base model, paired
                    accuracy += f" ({row.gain:+.3f}" + (f" ± {row.gain_se:.3f}" if row.gain_se is not None else "")
                    accuracy += f" from {row.base_accuracy:.3f})"
            cells = {
                "experiment": escape(e.name),
                "state": f"[{STATE_STYLE.get(e.state, 'white')}]{e.state}[/]" + (" (stalled)" if e.stalled else ""),
                "cause": escape(causes.get(e.name, "")),
                "time": human_seconds(e.duration_s) if e.duration_s is not None else "-",
                "accuracy": accuracy,
            }
            table.add_row(*(cells[c] for c in columns))
        return table

    counts: dict[str, int] = {}
    for e in ours:
        counts[e.state] = counts.get(e.state, 0) + 1
    parts = [f"{state} {n}" for state, n in sorted(counts.items(), key=lambda kv: kv[0] != st.COMPLETED)]
    lines = [Text(f"{', '.join(parts) or 'nothing ran'}; exit code {exit_code}.")]
    best = report.group_results(list(rows.values()))
    if best and best[0]["accuracy"].n:
        top = best[0]
        lines.append(Text(
            f"Best so far in {suite}: {top['label']}, held-out accuracy {top['accuracy'].text('.3f')} "
            f"over {top['n']} run{'s' if top['n'] != 1 else ''} (`perl report {suite}` for the comparison)."
        ))
    if causes:
        lines.append(Text(f"`perl diagnose {suite}` shows the log lines and a fix for each problem."))
    console = Console(file=io.StringIO(), width=width, color_system=None)
    table, _ = fit_columns(console, table_for, OPTIONAL_COLUMNS)
    renderable = Group(table, *lines)
    console.print(renderable)
    return Summary(renderable, console.file.getvalue())


def notify(command: str, summary: Summary, *, exit_code: int, suite: str, output: Path) -> str | None:
    """Run the user's --notify command; a problem with it as text (None when it worked).

    Waited for is the notifier itself (its exit), never its descendants: a background
    child that inherited its stderr cannot hold the run. Of its stderr only the last
    NOTIFY_TAIL_BYTES are kept (a notifier that prints gigabytes costs no memory); its
    stdout goes nowhere, as it always did.
    """
    env = {**os.environ, "PERL_EXIT_CODE": str(exit_code), "PERL_SUITE": suite, "PERL_OUTPUT_DIR": str(output)}
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen(command, shell=True, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=write_fd,
                                env=env, start_new_session=True)
    except OSError as exc:
        os.close(read_fd)
        return f"--notify {command!r} could not be started ({exc})."
    finally:
        os.close(write_fd)
    tail = _Tail(read_fd)
    tail.start()
    feeder = threading.Thread(target=_feed, args=(proc, summary.text.encode()), daemon=True)
    feeder.start()
    try:
        code = proc.wait(timeout=NOTIFY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the shell and what it started
        proc.wait()
        tail.stop()
        return f"--notify {command!r} did not finish within {NOTIFY_TIMEOUT_S:g}s; it was stopped."
    text = tail.stop()
    if code != 0:
        last = "".join(c if c.isprintable() else "?" for c in (text.strip().splitlines()[-1:] or [""])[0][-500:])
        return f"--notify {command!r} exited with {code}{': ' + last if last else ''}."
    return None


NOTIFY_TAIL_BYTES = 8192
NOTIFY_DRAIN_S = 0.5  # after the notifier exits, what its children still write is read this long, then left


def _feed(proc: subprocess.Popen, data: bytes) -> None:
    """The summary on the notifier's stdin (a notifier that does not read it is fine)."""
    assert proc.stdin is not None
    with contextlib.suppress(OSError):
        proc.stdin.write(data)
    with contextlib.suppress(OSError):
        proc.stdin.close()


class _Tail(threading.Thread):
    """Reads a pipe to its end (or until stopped), keeping only its last NOTIFY_TAIL_BYTES."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.data = bytearray()
        self.deadline: float | None = None

    def run(self) -> None:
        try:
            while self.deadline is None or time.monotonic() < self.deadline:
                ready, _, _ = select.select([self.fd], [], [], 0.05)
                if not ready:
                    continue
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    break
                self.data += chunk
                if len(self.data) > NOTIFY_TAIL_BYTES:
                    del self.data[:-NOTIFY_TAIL_BYTES]
        finally:
            os.close(self.fd)  # a background child writing later gets EPIPE: it is not ours to wait for

    def stop(self) -> str:
        self.deadline = time.monotonic() + NOTIFY_DRAIN_S
        self.join(NOTIFY_DRAIN_S + 1.0)
        return bytes(self.data).decode("utf-8", "replace")
