"""`perl watch`: a Textual live monitor of one suite.

The monitor is a client of the same read model as `perl status` (perl_cli.experiments_view) and of
the one module that talks to NVML (perl_cli.scheduler.gpus); it reads files only, so it
works on a copied output directory and never disturbs the runs. Files are read in a
thread worker so the interface stays responsive on slow disks; the log pane reads only
the bytes appended since the last poll, through perl_cli.logtail's safe open (a regular
file inside the experiment directory). User text (names, log lines) is shown as plain
text, never parsed as markup.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.widgets import DataTable, Footer, Header, Log, ProgressBar, Static

from perl_cli import config as configlib
from perl_cli import experiments_view as views
from perl_cli import state as st
from perl_cli.logtail import cap_line, open_safe, tail_bytes, tail_lines
from perl_cli.scheduler.gpus import GPU, GPUInventoryError, Inventory, load_inventory
from perl_cli.ui import human_bytes, human_seconds

COLUMNS = ("experiment", "state", "progress", "step", "reward", "GPU", "elapsed", "ETA")
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
LOG_LINES = 200
# Bytes of new log text read per poll at most: a chatty worker cannot freeze the screen.
MAX_LOG_READ = 256 * 1024
# Disk usage walks every checkpoint: do it every Nth poll only.
SIZE_EVERY = 10


@dataclass
class Snapshot:
    view: views.SuiteView
    gpus: list[GPU]
    gpu_note: str


class LogTail:
    """Follows one file: the last lines at first, then only what was appended."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.offset = 0

    def size(self) -> int | None:
        """The size of the log if it is a regular file inside its experiment directory."""
        if self.path is None:
            return None
        try:
            with open_safe(self.path) as f:
                return f.seek(0, 2)
        except OSError:
            return None

    def initial(self) -> list[str]:
        if self.path is None:
            return []
        self.offset = self.size() or 0
        return tail_lines(self.path, LOG_LINES)

    def new_lines(self) -> list[str]:
        size = self.size()
        if size is None:
            return []
        if size < self.offset:  # truncated or replaced (a --fresh run): start over
            self.offset = 0
        if size == self.offset:
            return []
        data = tail_bytes(self.path, min(size - self.offset, MAX_LOG_READ))
        self.offset = size
        text = data.decode("utf-8", errors="replace").replace("\r\n", "\n")
        return [cap_line(line.rsplit("\r", 1)[-1]) for line in text.split("\n") if line]


class WatchApp(App):
    """One suite: a progress header, the experiments table, GPUs, and a log tail."""

    TITLE = "PeRL watch"
    CSS = """
    #summary { height: auto; padding: 0 1; }
    #suite-progress { padding: 0 1; height: 1; }
    #middle { height: 1fr; }
    #experiments { width: 3fr; }
    #gpus { width: 1fr; min-width: 30; padding: 0 1; border-left: solid $primary; }
    #log-title { height: 1; padding: 0 1; background: $panel; }
    #log { height: 12; }
    """
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("r", "refresh_now", "Refresh"),
        Binding("f", "toggle_follow", "Follow running"),
    ]

    def __init__(
        self,
        output: Path,
        suite: str,
        cfg: configlib.ConfigFile | None = None,
        *,
        interval: float = 2.0,
        stall_after_s: float = views.DEFAULT_STALL_AFTER_S,
        inventory: Inventory | None = None,
    ) -> None:
        super().__init__()
        self.output, self.suite, self.cfg = Path(output), suite, cfg
        self.interval, self.stall_after_s = interval, stall_after_s
        self.inventory = inventory
        self.selected: str | None = None
        self.follow = True  # show the log of a running experiment until the user picks one
        self.tail = LogTail(None)
        self.polls = 0
        self.sizes: dict[str, int] = {}
        self.last: Snapshot | None = None
        self.read_lock = threading.Lock()
        self.reading = False  # a read is in flight
        self.again = False  # a poll came while it was: read once more when it is done

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="summary")
        yield ProgressBar(total=100, show_eta=False, id="suite-progress")
        with Horizontal(id="middle"):
            yield DataTable(id="experiments", cursor_type="row", zebra_stripes=True)
            yield Static(id="gpus")
        with Vertical():
            yield Static(id="log-title")
            yield Log(id="log", max_lines=2000)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"{self.suite} — {self.output / self.suite}"
        table = self.query_one(DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        self.poll()
        self.set_interval(self.interval, self.poll)

    # --- reading (thread) ------------------------------------------------------------

    def poll(self) -> None:
        """Read now, or right after the read in flight: a new poll never cancels a slow read
        (on a slow disk the screen would never update), and a refresh is never lost."""
        with self.read_lock:
            if self.reading:
                self.again = True
                return
            self.reading = True
        self.read_in_thread()

    @work(thread=True, group="poll")
    def read_in_thread(self) -> None:
        while True:
            self.call_from_thread(self.show, self.read())
            with self.read_lock:
                if not self.again:
                    self.reading = False
                    return
                self.again = False

    def read(self) -> Snapshot:
        self.polls += 1
        with_size = self.polls % SIZE_EVERY == 1
        view = views.load_suite(
            self.output, self.suite, self.cfg, stall_after_s=self.stall_after_s, with_size=with_size
        )
        if with_size:
            self.sizes = {e.name: e.size_bytes for e in view.experiments}
        else:
            for e in view.experiments:
                e.size_bytes = self.sizes.get(e.name, 0)
        return Snapshot(view, *self.read_gpus())

    def read_gpus(self) -> tuple[list[GPU], str]:
        if self.inventory is None:
            try:
                self.inventory = load_inventory()
            except GPUInventoryError as exc:
                return [], str(exc)
        if not self.inventory.gpus:
            return [], self.inventory.reason or "no GPU"
        return list(self.inventory.refresh()), "fake GPUs (PERL_FAKE_GPUS)" if self.inventory.fake else ""

    # --- showing (UI thread) -----------------------------------------------------------

    def show(self, snap: Snapshot) -> None:
        try:
            summary = self.query_one("#summary", Static)
        except NoMatches:
            return  # the app is closing: a poll finished after its screen went away
        self.last = snap
        view = snap.view
        counts = view.counts
        parts = [f"{counts[s]} {s}" for s in st.STATES if counts[s]]
        if view.stalled:
            parts.append(f"{view.stalled} stalled")
        eta = human_seconds(view.eta_s) if view.eta_s is not None else "-"
        summary.update(
            Text.from_markup(
                f"[b]{len(view.experiments)}[/] experiments: {', '.join(parts) or 'none yet'}"
                f"   ETA {eta}   disk {human_bytes(view.size_bytes)}"
                f"   [dim]updated {time.strftime('%H:%M:%S')}[/]"
            )
        )
        self.query_one("#suite-progress", ProgressBar).update(progress=round(view.progress * 100, 1))
        self.fill_table(view)
        self.query_one("#gpus", Static).update(render_gpus(snap.gpus, snap.gpu_note))
        self.update_log(view)

    def fill_table(self, view: views.SuiteView) -> None:
        table = self.query_one(DataTable)
        names = [e.name for e in view.experiments]
        existing = [str(row.value) for row in table.rows]
        if existing != names:
            cursor = table.cursor_row
            table.clear()
            for e in view.experiments:
                table.add_row(*experiment_cells(e), key=e.name)
            if names:
                table.move_cursor(row=min(cursor, len(names) - 1))
            return
        for e in view.experiments:
            for column, cell in zip(COLUMNS, experiment_cells(e), strict=True):
                table.update_cell(e.name, column, cell)

    def update_log(self, view: views.SuiteView) -> None:
        name = self.selected
        if self.follow or name is None:
            running = [e.name for e in view.experiments if e.state == st.RUNNING]
            recent = [e.name for e in view.experiments if e.dir is not None]
            name = (running or recent or [None])[0]
        exp = next((e for e in view.experiments if e.name == name), None)
        path = exp.dir / st.LOG_FILE if exp is not None and exp.dir is not None else None
        log = self.query_one(Log)
        if path != self.tail.path:
            self.tail = LogTail(path)
            log.clear()
            log.write_lines(self.tail.initial())
            title = f"log: {name}" if name else "log: (no experiment has started)"
            if exp is not None and exp.problem:
                title += f"  — unreadable: {exp.problem}"
            if self.follow:
                title += "  [following running — select a row to pin]"
            self.query_one("#log-title", Static).update(Text(title))
        else:
            log.write_lines(self.tail.new_lines())

    # --- actions -----------------------------------------------------------------------

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.selected = str(event.row_key.value)
        self.follow = False
        if self.last is not None:
            self.update_log(self.last.view)

    def action_refresh_now(self) -> None:
        self.poll()

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow
        self.tail = LogTail(None)
        if self.last is not None:
            self.update_log(self.last.view)


def experiment_cells(e: views.ExperimentView) -> tuple:
    state = Text(e.state + (" (stalled)" if e.stalled else ""), style="bold red" if e.stalled else STATE_STYLE.get(e.state, ""))
    total, step = e.total_steps or 0, e.step or 0
    fraction = 1.0 if e.state == st.COMPLETED else (min(step, total) / total if total else 0.0)
    return (
        Text(e.name + (" *" if e.overrides else "")),
        state,
        bar(fraction),
        "-" if e.state == st.UNREADABLE else f"{step}/{total}" if total else str(step or "-"),
        "-" if e.reward is None else f"{e.reward:.3f}",
        Text("-" if e.gpu is None else str(e.gpu)),  # a str cell would be parsed as markup
        human_seconds(e.duration_s),
        human_seconds(e.eta_s) if e.eta_s is not None else "-",
    )


def bar(fraction: float, width: int = 16) -> Text:
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return Text("█" * filled, style="green") + Text("░" * (width - filled), style="dim") + Text(f" {fraction:4.0%}")


def render_gpus(gpus: list[GPU], note: str) -> Text:
    text = Text("GPUs\n", style="bold")
    if not gpus:
        text.append(f"none: {note}\njobs run on the CPU\n", style="dim")
        return text
    for g in gpus:
        used = g.memory_used_mb / g.memory_total_mb if g.memory_total_mb else 0.0
        util = "" if g.utilization is None else f"  util {g.utilization}%"
        text.append(f"[{g.index}] {g.name}{util}\n")  # Text.append: literal, no markup
        text.append_text(bar(used, width=14))
        text.append(f"  {g.memory_used_mb / 1024:.1f}/{g.memory_total_mb / 1024:.1f} GB\n")
    if note:
        text.append(note + "\n", style="dim")
    return text


def pick_suite(output: Path, suite: str | None, cfg: configlib.ConfigFile | None) -> str:
    """The suite to watch: the one named, else the one whose files changed last."""
    if suite is not None:
        views.resolve_suite(output, suite, cfg)
        return suite
    found = views.find_suites(output)
    if not found:
        raise configlib.ConfigError(
            f"nothing to watch: no suite has results under {output}/. Start one with `perl run SUITE`, "
            "or pass --output DIR where the results are."
        )

    def changed(name: str) -> float:
        times = [p.stat().st_mtime for p in st.experiment_dirs(output / name).values()]
        return max(times, default=0.0)

    return max(found, key=changed)
