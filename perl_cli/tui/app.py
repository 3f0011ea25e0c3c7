"""`perl watch`: a Textual live monitor of one suite.

Layout: a summary line (counts, what needs attention, ETA, disk), the suite's progress, the
experiments table in `perl status`'s order (problems first) with each failure's cause and
each worker's heartbeat age, the GPUs with their processes mapped to experiments (a panel
from 120 columns on, one line below that), and under them the log of the running (or
selected) experiment, or with `d` the details of the highlighted one: its config, cause,
fix command, last metrics and W&B link. The table and the log share the height: the
table takes what its rows need, up to 60%, the log the rest. Columns that do not fit are
left out (perl_cli.tui.rows); the experiment name is never cut.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import events, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.widgets import DataTable, Footer, Log, ProgressBar, Static

from perl_cli import config as configlib
from perl_cli import experiments_view as views
from perl_cli import state as st
from perl_cli.logtail import cap_line, last_json_rows, open_safe, tail_bytes, tail_lines
from perl_cli.scheduler.gpus import GPUInventoryError, Inventory, load_inventory
from perl_cli.status import attention_sorted
from perl_cli.tui import panels, rows
from perl_cli.ui import human_bytes, human_seconds

LOG_LINES = 200
# Bytes of new log text read per poll at most: a chatty worker cannot freeze the screen.
MAX_LOG_READ = 256 * 1024
# Disk usage walks every checkpoint: do it every Nth poll only.
SIZE_EVERY = 10
# From this width on the GPUs get their own panel (with their processes) right of the table.
WIDE = 120
GPU_PANEL_WIDTH = 44
# The summary's counts: what needs a look first.
SUMMARY_ORDER = (st.FAILED, st.UNREADABLE, st.INTERRUPTED, st.RUNNING, st.STALE, st.COMPLETED, st.PENDING)


@dataclass
class Snapshot:
    view: views.SuiteView
    gpus: list[panels.GPUView]
    gpu_note: str
    causes: dict[str, Any] = field(default_factory=dict)  # name -> Diagnosis, for those needing attention


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
    """One suite: a summary line, the experiments table, GPUs, and a log tail or the details of a row."""

    TITLE = "PeRL watch"
    CSS = """
    #summary { height: auto; padding: 0 1; }
    #gpu-line { height: 1; padding: 0 1; display: none; }
    #progress-line { height: 1; padding: 0 1; }
    #suite-progress { width: auto; height: 1; }
    #progress-text { width: 1fr; height: 1; }
    #middle { height: auto; max-height: 60vh; }
    #experiments { width: auto; max-width: 1fr; height: auto; max-height: 60vh; }
    #gpus { width: 1fr; min-width: GPU_PANEL_WIDTH; height: auto; padding: 0 1; border-left: solid $primary; }
    Screen.-details #middle { max-height: 40vh; }
    Screen.-details #experiments { max-height: 40vh; }
    #log-title { height: 1; padding: 0 1; background: $panel; }
    #bottom { height: 1fr; min-height: 3; }
    #log { height: 1fr; }
    #details { height: 1fr; padding: 0 1; display: none; }
    Screen.-narrow #gpus { display: none; }
    Screen.-narrow #gpu-line { display: block; }
    Screen.-details #details { display: block; }
    Screen.-details #log { display: none; }
    """.replace("GPU_PANEL_WIDTH", str(GPU_PANEL_WIDTH))
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("d", "toggle_details", "Details / log"),
        Binding("f", "toggle_follow", "Follow running"),
        Binding("r", "refresh_now", "Refresh"),
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
        selection: views.Selection | None = None,
        config_path: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.output, self.suite, self.cfg = Path(output), suite, cfg
        self.interval, self.stall_after_s = interval, stall_after_s
        self.inventory = inventory
        self.selection = selection or views.Selection()
        self.config_path = config_path
        self.clock = clock  # tests fix it: every time shown derives from it
        self.selected: str | None = None
        self.follow = True  # show the log of a running experiment until the user picks one
        self.tail = LogTail(None)
        self.polls = 0
        self.sizes: dict[str, int] = {}
        self.causes: dict[str, tuple[tuple, Any]] = {}  # name -> (what it was diagnosed from, Diagnosis)
        self.last: Snapshot | None = None
        self.columns: list[str] = []
        self.read_lock = threading.Lock()
        self.reading = False  # a read is in flight
        self.again = False  # a poll came while it was: read once more when it is done

    def compose(self) -> ComposeResult:
        yield Static(id="summary")
        yield Static(id="gpu-line")
        with Horizontal(id="progress-line"):
            yield ProgressBar(total=100, show_eta=False, id="suite-progress")
            yield Static(id="progress-text")
        with Horizontal(id="middle"):
            yield DataTable(id="experiments", cursor_type="row", zebra_stripes=True)
            yield Static(id="gpus")
        with Vertical(id="bottom"):
            yield Static(id="log-title")
            yield Log(id="log", max_lines=2000)
            with VerticalScroll(id="details"):
                yield Static(id="details-text")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.suite
        self.screen.set_class(self.size.width < WIDE, "-narrow")
        self.poll()
        self.set_interval(self.interval, self.poll)

    def on_resize(self, event: events.Resize) -> None:
        self.screen.set_class(event.size.width < WIDE, "-narrow")
        if self.last is not None:
            self.fill_table(self.last, event.size.width)

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
            self.output, self.suite, self.cfg, stall_after_s=self.stall_after_s, with_size=with_size, at=self.clock()
        )
        view = self.selection.apply(view)
        if with_size:
            self.sizes = {e.name: e.size_bytes for e in view.experiments}
        else:
            for e in view.experiments:
                e.size_bytes = self.sizes.get(e.name, 0)
        view.experiments = attention_sorted(view.experiments)
        gpus, note = self.read_gpus(view)
        return Snapshot(view, gpus, note, self.diagnose(view))

    def read_gpus(self, view: views.SuiteView) -> tuple[list[panels.GPUView], str]:
        if self.inventory is None:
            try:
                self.inventory = load_inventory()
            except GPUInventoryError as exc:
                return [], str(exc)
        if not self.inventory.gpus:
            return [], self.inventory.reason or "no GPU"
        gpus = list(self.inventory.refresh())
        note = "fake GPUs (PERL_FAKE_GPUS)" if self.inventory.fake else ""
        return panels.map_processes(gpus, self.inventory.processes(), view), note

    def diagnose(self, view: views.SuiteView) -> dict[str, Any]:
        """The diagnosis of each experiment needing attention, redone only when its status changed."""
        from perl_cli import diagnose as dg

        out = {}
        for e in view.experiments:
            if not views.needs_attention(e):
                continue
            key = (e.state, e.stalled, e.problem, *(e.status.get(k) for k in ("ended", "exit_code", "attempt", "error")))
            known = self.causes.get(e.name)
            if known is None or known[0] != key:
                known = (key, dg.diagnose_experiment(e, view.suite, lines=0, config_path=self.config_path, output=self.output))
                self.causes[e.name] = known
            out[e.name] = known[1]
        return out

    # --- showing (UI thread) -----------------------------------------------------------

    def show(self, snap: Snapshot) -> None:
        try:
            summary = self.query_one("#summary", Static)
        except NoMatches:
            return  # the app is closing: a poll finished after its screen went away
        self.last = snap
        view = snap.view
        counts = view.counts
        parts = [f"{counts[s]} {s}" for s in SUMMARY_ORDER if counts[s]]
        if view.stalled:
            parts.insert(0, f"{view.stalled} stalled")
        need = sum(views.needs_attention(e) for e in view.experiments)
        eta = human_seconds(view.eta_s) if view.eta_s is not None else "-"
        of = f" (of {view.selected_from})" if view.selected_from is not None else ""
        summary.update(Text.assemble(
            (self.suite, "bold"), f" · {len(view.experiments)} experiments{of}",
            (f" · {need} need attention" if need else "", "bold red"), ": ", ", ".join(parts) or "none yet",
        ))
        self.query_one("#suite-progress", ProgressBar).update(progress=round(view.progress * 100, 1))
        self.query_one("#progress-text", Static).update(Text.assemble(
            f" ETA {eta} · disk {human_bytes(view.size_bytes)} · ",
            (f"updated {time.strftime('%H:%M:%S', time.localtime(self.clock()))}", "dim"),
        ))
        self.fill_table(snap)
        self.query_one("#gpus", Static).update(panels.gpu_panel(snap.gpus, snap.gpu_note))
        self.query_one("#gpu-line", Static).update(panels.gpu_line(snap.gpus, snap.gpu_note))
        self.update_log(view)
        self.update_details()

    def fill_table(self, snap: Snapshot, screen_width: int | None = None) -> None:
        table = self.query_one(DataTable)
        made = [rows.make_row(e, self.cause_name(snap, e.name)) for e in snap.view.experiments]
        screen_width = screen_width or self.size.width
        width = screen_width - (0 if screen_width < WIDE else GPU_PANEL_WIDTH) - 2  # the scrollbar
        columns = rows.fit(made, width)
        names = [r.name for r in made]
        existing = [str(row.value) for row in table.rows]
        if columns != self.columns or existing != names:
            current = self.current_name()
            table.clear(columns=columns != self.columns)
            if columns != self.columns:
                for key in columns:
                    table.add_column(rows.HEADERS[key], key=key)
                self.columns = columns
            for r in made:
                table.add_row(*(r.cells[k] for k in columns), key=r.name)
            if names:
                table.move_cursor(row=names.index(current) if current in names else 0)
            return
        for r in made:
            for key in columns:
                table.update_cell(r.name, key, r.cells[key])

    @staticmethod
    def cause_name(snap: Snapshot, name: str) -> str | None:
        d = snap.causes.get(name)
        return d.cause if d is not None else None

    def current_name(self) -> str | None:
        """The experiment under the table's cursor."""
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        try:
            return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        except Exception:  # noqa: BLE001 - a cursor past the rows after a refresh
            return None

    def update_log(self, view: views.SuiteView) -> None:
        name = self.selected
        if self.follow or name is None:
            running = [e.name for e in view.experiments if e.state == st.RUNNING and not e.stalled]
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

    def update_details(self) -> None:
        if self.last is None or not self.screen.has_class("-details"):
            return
        name = self.current_name()
        exp = next((e for e in self.last.view.experiments if e.name == name), None)
        if exp is None:
            return
        metrics = last_json_rows(exp.dir / st.METRICS_FILE, 1, root=exp.dir) if exp.dir is not None else []
        text = panels.details(exp, self.suite, self.last.causes.get(exp.name), self.last.gpus, metrics[-1] if metrics else {})
        self.query_one("#details-text", Static).update(text)
        self.query_one("#log-title", Static).update(Text(f"details: {exp.name}  [d: back to the log]"))

    # --- actions -----------------------------------------------------------------------

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.selected = str(event.row_key.value)
        self.follow = False
        if self.last is not None:
            self.update_log(self.last.view)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.update_details()

    def action_refresh_now(self) -> None:
        self.poll()

    def action_toggle_details(self) -> None:
        self.screen.toggle_class("-details")
        if self.screen.has_class("-details"):
            self.update_details()
        else:
            self.tail = LogTail(None)  # the title goes back to the log's
            if self.last is not None:
                self.update_log(self.last.view)

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow
        self.tail = LogTail(None)
        if self.last is not None:
            self.update_log(self.last.view)


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
