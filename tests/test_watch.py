"""`perl watch`: the Textual monitor, driven with Textual's pilot on a real suite directory."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path

import pytest
from textual.widgets import DataTable, Log, ProgressBar, Static

from perl_cli import state as st
from perl_cli.config import ConfigError
from perl_cli.scheduler.gpus import load_inventory
from perl_cli.tui.app import WatchApp, pick_suite

FAKE_GPUS = json.dumps([
    {"index": 0, "name": "A100-80GB", "memory_total_mb": 81920, "memory_used_mb": 40960},
    {"index": 1, "name": "A100-80GB", "memory_total_mb": 81920, "memory_used_mb": 0},
])


def make_experiment(suite_dir: Path, name: str, state: str, step: int, total: int = 100, *, log: str = "", gpu=0) -> Path:
    d = suite_dir / name
    d.mkdir(parents=True)
    now = time.time()
    st.write_status(d, {
        "state": state, "step": step, "total_steps": total, "gpu": gpu, "started": now - 60,
        "heartbeat": now, "pid": os.getpid(), "pid_start_time": st.process_start_time(os.getpid()),
        "host": st.hostname(), "ended": None if state == st.RUNNING else now, "fingerprint": "abc",
    })
    st.atomic_write_json(d / st.CONFIG_FILE, {"name": name, "fingerprint": "abc", "peft": {"type": name.split("_")[0]}, "training": {"max_steps": total}})
    for s in range(10, step + 1, 10):
        st.append_jsonl(d / st.METRICS_FILE, {"step": s, "reward": s / total, "step_seconds": 0.5})
    (d / st.LOG_FILE).write_text(log)
    return d


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    suite_dir = tmp_path / "out" / "mini"
    make_experiment(suite_dir, "lora_r16_s1", st.COMPLETED, 100, log="done\n")
    make_experiment(suite_dir, "dora_r16_s1", st.RUNNING, 40, log="".join(f"step {i}\n" for i in range(300)), gpu=1)
    make_experiment(suite_dir, "vera_r16_s1", st.FAILED, 20, log="Traceback\nRuntimeError: boom\n")
    return suite_dir


def run(coro):
    return asyncio.run(coro)


def test_watch_shows_suite_table_gpus_and_follows_running_log(suite: Path) -> None:
    async def scenario() -> None:
        app = WatchApp(suite.parent, "mini", interval=0.2, inventory=load_inventory({"PERL_FAKE_GPUS": FAKE_GPUS}))
        async with app.run_test(size=(160, 50)) as pilot:
            await app.workers.wait_for_complete()
            await pilot.pause()
            table = app.query_one(DataTable)
            # `perl status`'s order: running, then problems, then the completed.
            assert [str(k.value) for k in table.rows] == ["dora_r16_s1", "vera_r16_s1", "lora_r16_s1"]
            cell = table.get_cell
            assert str(cell("dora_r16_s1", "state")) == "running" and str(cell("dora_r16_s1", "step")) == "40/100"
            assert str(cell("dora_r16_s1", "reward")) == "0.400"
            assert str(cell("vera_r16_s1", "state")) == "failed"
            summary = str(app.query_one("#summary", Static).render())
            assert "3 experiments" in summary and "1 running" in summary and "1 failed" in summary
            # 100 + 40 + 20 of 300 steps
            assert app.query_one(ProgressBar).progress == pytest.approx(53.3, abs=0.1)
            gpus = str(app.query_one("#gpus", Static).render())
            assert "A100-80GB" in gpus and "40.0 GiB/80.0 GiB" in gpus and " GB" not in gpus
            log = app.query_one(Log)
            assert log.lines[-1] == "step 299" and len(log.lines) == 200  # a tail, not the whole file

            # The worker appends: only the new bytes show up, after the next poll.
            with open(suite / "dora_r16_s1" / st.LOG_FILE, "a") as f:
                f.write("step 300\n")
            st.update_status(suite / "dora_r16_s1", step=50)
            await pilot.press("r")
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert log.lines[-1] == "step 300" and log.lines[-2] == "step 299"
            assert str(table.get_cell("dora_r16_s1", "step")) == "50/100"

            # Selecting a row pins its log.
            table.move_cursor(row=1)
            await pilot.press("enter")
            await pilot.pause()
            assert list(log.lines)[-1] == "RuntimeError: boom"
            assert "vera_r16_s1" in str(app.query_one("#log-title", Static).render())

    run(scenario())


def test_watch_without_gpus_says_cpu(suite: Path) -> None:
    async def scenario() -> None:
        inv = load_inventory({"PERL_FAKE_GPUS": "[]"})
        app = WatchApp(suite.parent, "mini", interval=5, inventory=inv)
        async with app.run_test(size=(120, 40)) as pilot:
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert "jobs run on the CPU" in str(app.query_one("#gpus", Static).render())

    run(scenario())


def test_watch_picks_the_suite_that_changed_last(tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_experiment(out / "old", "lora_r16_s1", st.COMPLETED, 100)
    make_experiment(out / "new", "lora_r16_s1", st.RUNNING, 10)
    past = time.time() - 3600
    os.utime(out / "old" / "lora_r16_s1", (past, past))
    assert pick_suite(out, None, None) == "new"
    with pytest.raises(ConfigError, match="nothing to watch"):
        pick_suite(tmp_path / "empty", None, None)


# --- the monitor's layout, on a realistic suite, at a fixed time ---------------------------------

AT = 1_800_000_000.0  # every time shown derives from this clock
WORKER_PID, OTHER_PID = 4242, 999_999
SUITE_GPUS = json.dumps([
    {"index": 0, "name": "A100-SXM4-80GB", "memory_total_mb": 81920, "memory_used_mb": 34816,
     "processes": [{"pid": WORKER_PID, "used_memory_mb": 30720}, {"pid": OTHER_PID, "used_memory_mb": 2048}]},
    {"index": 1, "name": "A100-SXM4-80GB", "memory_total_mb": 81920, "memory_used_mb": 0},
])


def build_watch_suite(tmp_path: Path) -> tuple[Path, object]:
    """Suite core at time AT: running (one warming up), stalled, failed, interrupted, stale, completed, pending."""
    from suite_fixtures import failure, write_config, write_experiment

    from perl_cli import config as configlib

    cfg_path = write_config(tmp_path)
    cfg = configlib.load(cfg_path)
    exps = configlib.expand(cfg, "core")
    sd = tmp_path / "output" / "core"
    here = {"host": None}  # no host: never checked against this machine's pids (deterministic)
    write_experiment(sd, exps[0], now=AT)
    write_experiment(sd, exps[1], now=AT, final_reward=0.7)
    log = "".join(f"[perl] step {s}/100  reward {s / 200:.3f}  loss 0.02  2.00s/step\n" for s in range(10, 41, 10))
    write_experiment(sd, exps[2], state=st.RUNNING, step=40, now=AT, heartbeat_ago=4, pid=WORKER_PID, status_extra=here,
                     log=log)
    write_experiment(sd, exps[3], state=st.RUNNING, step=10, now=AT, heartbeat_ago=7200)
    failure(sd, exps[4], "cuda_oom", now=AT)
    failure(sd, exps[5], "host_oom", now=AT)
    failure(sd, exps[6], "interrupted", now=AT)
    write_experiment(sd, exps[7], now=AT, fingerprint="0123456789ab")
    write_experiment(sd, exps[8], state=st.RUNNING, step=0, metrics_rows=0, now=AT, heartbeat_ago=2, pid=4343,
                     started_ago=200, status_extra={**here, "gpu": 1, "phase": {"name": "warm start", "done": 300, "total": 600}})
    return tmp_path / "output", cfg


def watch_app(tmp_path: Path, gpus: str = SUITE_GPUS, *, relative: bool = False) -> WatchApp:
    """The monitor of build_watch_suite; `relative`: as `perl watch` run in tmp_path (the cwd) shows it."""
    out, cfg = build_watch_suite(tmp_path)
    out = Path(os.path.relpath(out)) if relative else out
    app = WatchApp(out, "core", cfg, interval=3600, inventory=load_inventory({"PERL_FAKE_GPUS": gpus}), clock=lambda: AT)
    app.animation_level = "none"  # the progress bar would be caught mid-animation
    return app


def screen_text(app: WatchApp) -> str:
    """What the terminal shows, as plain text."""
    import io

    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), record=True, color_system=None, legacy_windows=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


async def settle(pilot) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


NAMES = ["dora_r16_s123", "dora_r16_s42", "lora_plus_r16_s42", "adalora_r16_s42", "adalora_r16_s123",
         "milora_r16_s42", "milora_r16_s123", "lora_r16_s42", "lora_r16_s123", "lora_plus_r16_s123",
         "pissa_r16_s42", "pissa_r16_s123"]


def test_problems_first_with_cause_heartbeat_and_phase(tmp_path: Path, utc) -> None:
    async def scenario() -> None:
        app = watch_app(tmp_path)
        async with app.run_test(size=(200, 50)) as pilot:
            await settle(pilot)
            table = app.query_one(DataTable)
            assert [str(k.value) for k in table.rows] == NAMES  # stalled, running, failed, interrupted, stale, completed, pending
            cell = table.get_cell
            assert str(cell("dora_r16_s123", "state")) == "stalled" and str(cell("dora_r16_s123", "cause")) == "stalled"
            assert str(cell("dora_r16_s123", "beat")) == "2h00m"
            assert str(cell("dora_r16_s42", "beat")) == "4s"
            assert str(cell("adalora_r16_s42", "cause")) == "cuda_oom" and str(cell("adalora_r16_s123", "cause")) == "host_oom"
            assert str(cell("milora_r16_s42", "cause")) == "interrupted"
            assert str(cell("lora_plus_r16_s42", "step")) == "warm start 300/600"
            screen = screen_text(app)
            assert "4 need attention" in screen  # as `perl status` and `perl diagnose` count them
            # The log takes the height the table does not need: no empty band under a short log.
            log = app.query_one(Log)
            assert table.region.height == len(NAMES) + 1
            assert log.region.bottom >= 50 - 1 - 1  # down to the footer

    run(scenario())


def test_gpu_processes_are_mapped_to_experiments_in_gib(tmp_path: Path, utc) -> None:
    async def scenario() -> None:
        app = watch_app(tmp_path)
        async with app.run_test(size=(200, 50)) as pilot:
            await settle(pilot)
            gpus = str(app.query_one("#gpus", Static).render())
            assert "34.0 GiB/80.0 GiB" in gpus and " GB" not in gpus
            assert re.search(r"4242 dora_r16_s42\s+30\.0 GiB", gpus), gpus
            assert re.search(r"999999 \(not this suite\)\s+2\.0 GiB", gpus), gpus

    run(scenario())


def test_details_of_the_selected_experiment(tmp_path: Path, utc) -> None:
    async def scenario() -> None:
        app = watch_app(tmp_path)
        async with app.run_test(size=(200, 50)) as pilot:
            await settle(pilot)
            table = app.query_one(DataTable)
            table.move_cursor(row=NAMES.index("adalora_r16_s42"))
            await pilot.press("d")
            await pilot.pause()
            details = str(app.query_one("#details-text", Static).render())
            assert "CUDA out of memory (cuda_oom)" in details
            assert "$ perl run core --only adalora_r16_s42" in details and "per_device_train_batch_size=2" in details
            assert "type=adalora" in details and "learning_rate=1e-05" in details
            assert "last metrics" in details and "reward" in details
            table.move_cursor(row=NAMES.index("dora_r16_s42"))
            await pilot.pause()
            details = str(app.query_one("#details-text", Static).render())
            assert "heartbeat 4s ago" in details and "30.0 GiB on GPU 0" in details
            await pilot.press("d")
            await pilot.pause()
            assert app.query_one(Log).display and not app.query_one("#details").display

    run(scenario())


def test_80x24_shows_every_row_and_a_log(tmp_path: Path, utc) -> None:
    """At 80x24 the old layout showed 7 rows and cut names; now every name is whole and the log stays."""
    async def scenario() -> None:
        app = watch_app(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            screen = screen_text(app)
            for name in NAMES:
                assert re.search(rf"\b{name}\b", screen), (name, screen)
            assert "…" not in screen
            assert app.query_one(Log).region.height >= 3
            assert "GPUs:" in screen and "34.0 GiB/80.0 GiB" in screen  # the one-line GPU summary
            assert "cause" in screen  # the failure cause is a column kept at 80 columns

    run(scenario())


def test_watch_state_filter(tmp_path: Path, utc) -> None:
    from perl_cli.experiments_view import Selection

    async def scenario() -> None:
        app = watch_app(tmp_path)
        app.selection = Selection.parse("failed,stalled")
        async with app.run_test(size=(120, 30)) as pilot:
            await settle(pilot)
            rows = [str(k.value) for k in app.query_one(DataTable).rows]
            assert rows == ["dora_r16_s123", "adalora_r16_s42", "adalora_r16_s123"]

    run(scenario())


def test_fake_gpu_processes_and_their_errors(tmp_path: Path) -> None:
    from perl_cli.scheduler.gpus import GPUInventoryError, GPUProcess

    inv = load_inventory({"PERL_FAKE_GPUS": SUITE_GPUS})
    assert inv.processes() == {0: [GPUProcess(WORKER_PID, 30720), GPUProcess(OTHER_PID, 2048)], 1: []}
    assert "processes" not in inv.gpus[0].as_dict()  # the scheduler's view of a GPU is unchanged
    # A file is re-read: processes come and go while a suite runs.
    path = tmp_path / "gpus.json"
    path.write_text(SUITE_GPUS)
    inv = load_inventory({"PERL_FAKE_GPUS": str(path)})
    path.write_text(json.dumps([{"index": 0, "name": "A100", "memory_total_mb": 81920, "processes": [{"pid": 7}]}]))
    assert inv.processes()[0] == [GPUProcess(7, None)]
    bad = json.dumps([{"index": 0, "memory_total_mb": 1, "processes": [{"pid": "x"}]}])
    with pytest.raises(GPUInventoryError, match='"processes"'):
        load_inventory({"PERL_FAKE_GPUS": bad})


def test_nvml_process_query_is_read_through_the_cached_handles() -> None:
    """The NVML path, with a stand-in for pynvml: bytes become MiB, unknown memory stays unknown."""
    from types import SimpleNamespace

    from perl_cli.scheduler.gpus import GPU, GPUProcess, Inventory

    class NVMLError(Exception):
        pass

    calls = []

    def running(handle):
        calls.append(handle)
        if handle == "h1":
            raise NVMLError("not supported")
        return [SimpleNamespace(pid=4242, usedGpuMemory=30 * 1024**3), SimpleNamespace(pid=17, usedGpuMemory=None)]

    inv = Inventory()
    inv.source, inv._nvml = "nvml", SimpleNamespace(NVMLError=NVMLError, nvmlDeviceGetComputeRunningProcesses=running)
    inv.gpus = [GPU(0, "A100", 81920, 0), GPU(1, "A100", 81920, 0)]
    inv._handles = {0: "h0", 1: "h1"}
    assert inv.processes() == {0: [GPUProcess(4242, 30720), GPUProcess(17, None)]}  # GPU 1: unknown, left out
    assert calls == ["h0", "h1"]


def test_details_show_the_wandb_link_and_the_phase(tmp_path: Path) -> None:
    from perl_cli import experiments_view as views
    from perl_cli.tui import panels

    e = views.ExperimentView(name="lora_r16_s42", state=st.RUNNING, step=0, total_steps=100, pid=4242,
                             phase={"name": "warm start", "done": 500, "total": 600},
                             wandb_url="https://wandb.ai/lab/peft/runs/abc", dir=tmp_path)
    text = panels.details(e, "core", None, [], {"step": 0, "reward": 0.25, "loss": 0.5}).plain
    assert "warm start 500/600" in text and "W&B  https://wandb.ai/lab/peft/runs/abc" in text
    assert "reward 0.25" in text and "perl logs core lora_r16_s42" in text


def test_columns_follow_the_terminal_width(tmp_path: Path, utc) -> None:
    async def scenario() -> None:
        app = watch_app(tmp_path)
        async with app.run_test(size=(200, 50)) as pilot:
            await settle(pilot)
            wide = [str(c.label) for c in app.query_one(DataTable).columns.values()]
            assert wide == ["experiment", "state", "step", "progress", "reward", "cause", "beat", "GPU", "elapsed", "ETA"]
            await pilot.resize_terminal(80, 24)
            await pilot.pause()
            narrow = [str(c.label) for c in app.query_one(DataTable).columns.values()]
            assert narrow[:2] == ["experiment", "state"] and "progress" not in narrow and "cause" in narrow
            assert not app.query_one("#gpus").display and app.query_one("#gpu-line").display
            screen = screen_text(app)
            assert all(name in screen for name in NAMES)

    run(scenario())
