"""`perl watch`: the Textual monitor, driven with Textual's pilot on a real suite directory."""

from __future__ import annotations

import asyncio
import json
import os
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
            assert [str(k.value) for k in table.rows] == ["dora_r16_s1", "lora_r16_s1", "vera_r16_s1"]
            row = table.get_row("dora_r16_s1")
            assert str(row[1]) == "running" and row[3] == "40/100" and row[4] == "0.400"
            assert str(table.get_row("vera_r16_s1")[1]) == "failed"
            summary = str(app.query_one("#summary", Static).render())
            assert "3 experiments" in summary and "1 running" in summary and "1 failed" in summary
            # 100 + 40 + 20 of 300 steps
            assert app.query_one(ProgressBar).progress == pytest.approx(53.3, abs=0.1)
            gpus = str(app.query_one("#gpus", Static).render())
            assert "A100-80GB" in gpus and "40.0/80.0 GB" in gpus
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
            assert table.get_row("dora_r16_s1")[3] == "50/100"

            # Selecting a row pins its log.
            table.move_cursor(row=2)
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
