"""The README's tour, command for command, on a tiny suite with the synthetic worker (issue 8).

A new user runs the suite with `--set training.max_steps=...` first: the results are
complete under the settings they ran with, so status, watch and report show them
completed (marked as run with --set), and a later `perl run` without --set keeps them
and says so, instead of calling them stale and refusing.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from perl_cli import config as configlib
from perl_cli import state as st
from perl_cli.cli import app
from perl_cli.scheduler import gpus as gpulib
from perl_cli.scheduler.gpus import load_inventory

DRIVER = str(Path(__file__).with_name("run_with_fake_worker.py"))
SUITE = "tour"
FAKE_GPUS = json.dumps([
    {"index": i, "name": "FakeGPU", "memory_total_mb": 8000, "memory_used_mb": 0} for i in range(2)
])
TOML = f"""
[suites.{SUITE}]
description = "the README tour in miniature"
name = "{{method}}_s{{seed}}"
[suites.{SUITE}.base.model]
model_name_or_path = "builtin:tiny-random"
[suites.{SUITE}.base.training]
max_steps = 1000
save_steps = 5
per_device_train_batch_size = 4
gradient_accumulation_steps = 2
num_generations = 4
[suites.{SUITE}.base.resources]
memory_mb = 1000
[suites.{SUITE}.matrix]
method = ["lora", "dora"]
seed = [1, 2]
"""


def test_readme_tour_with_set_gives_completed_results(tmp_path: Path) -> None:
    cfg = tmp_path / "experiments.toml"
    cfg.write_text(TOML)
    out = tmp_path / "output"
    common = ["--config", str(cfg), "--output", str(out)]
    env = {**os.environ, gpulib.FAKE_GPUS_ENV: FAKE_GPUS, "PERL_FAKE_STEP_SECONDS": "0.01",
           "PERL_FAKE_LAUNCH_LOG": str(tmp_path / "launches.log")}

    def perl(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, [*args, *common])
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        return result.exit_code, result.output

    def perl_run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, DRIVER, "run", SUITE, *args, *common], env=env,
                              capture_output=True, text=True, timeout=120)

    assert perl("plan")[0] == 0
    assert perl("plan", SUITE)[0] == 0
    assert perl_run("--dry-run").returncode == 0
    first = perl_run("--gpus", "0,1", "--jobs-per-gpu", "2", "--set", "training.max_steps=10")
    assert first.returncode == 0, first.stderr
    config = st.read_json(out / SUITE / "lora_s1" / st.CONFIG_FILE)
    assert config["overrides"] == ["training.max_steps=10"] and config["training"]["max_steps"] == 10
    again = perl_run()
    assert again.returncode == 0, again.stderr
    assert "4 completed with --set training.max_steps=10 are kept" in again.stdout and "--fresh" in again.stdout
    assert len((tmp_path / "launches.log").read_text().splitlines()) == 4  # nothing was redone

    code, text = perl("status", SUITE)
    assert code == 0 and "completed 4" in text and "4/4 completed" in text and "stale" not in text
    assert "4 ran with --set training.max_steps=10" in text
    code, text = perl("status", SUITE, "--json")
    data = json.loads(text)
    assert data["counts"]["completed"] == 4 and data["progress"] == 1.0
    assert {e["total_steps"] for e in data["experiments"]} == {10}

    summary = asyncio.run(watch_summary(out, cfg))
    assert "4 completed" in summary and "stale" not in summary

    code, text = perl("diagnose", "--verbose")
    assert code == 0 and "no failed, interrupted or stalled experiments" in text
    code, text = perl("report", SUITE)
    assert code == 0
    md = (out / SUITE / "SUMMARY.md").read_text()
    assert "4/4 experiments completed" in md and "No completed experiments yet" not in md
    assert "| 1 | " in md  # the results-by-method table has rows


async def watch_summary(out: Path, cfg_path: Path) -> str:
    from textual.widgets import Static

    from perl_cli.tui.app import WatchApp, pick_suite

    cfg = configlib.load(cfg_path)
    app = WatchApp(out, pick_suite(out, None, cfg), cfg, interval=5,
                   inventory=load_inventory({gpulib.FAKE_GPUS_ENV: FAKE_GPUS}))
    async with app.run_test(size=(160, 50)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        return str(app.query_one("#summary", Static).render())


def test_while_a_run_with_set_goes_on_progress_counts_its_experiments_at_their_steps(tmp_path: Path) -> None:
    """The scheduler describes its run in run_status.json; readers count that run, at --set's steps."""
    import time

    from perl_cli import experiments_view as views

    cfg = tmp_path / "experiments.toml"
    cfg.write_text(TOML)
    out = tmp_path / "output"
    env = {**os.environ, gpulib.FAKE_GPUS_ENV: FAKE_GPUS, "PERL_FAKE_STEP_SECONDS": "0.1"}
    run = subprocess.Popen([sys.executable, DRIVER, "run", SUITE, "--only", "lora_s1,lora_s2,dora_s1",
                            "--set", "training.max_steps=20", "--config", str(cfg), "--output", str(out)],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        view = None
        while time.monotonic() < deadline:
            view = views.load_suite(out, SUITE, configlib.load(cfg))
            if view.run is not None and view.counts[st.RUNNING]:
                break
            time.sleep(0.05)
        assert view is not None and view.run is not None, "the run never showed up in run_status.json"
        assert sorted(view.run.names) == ["dora_s1", "lora_s1", "lora_s2"]
        assert view.run.overrides == ("training.max_steps=20",)
        steps = {e.name: e.total_steps for e in view.experiments}
        assert steps == {"lora_s1": 20, "lora_s2": 20, "dora_s1": 20, "dora_s2": 1000}  # dora_s2 is not in the run
        assert len(view.in_run) == 3
    finally:
        _, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    assert views.load_suite(out, SUITE, configlib.load(cfg)).run is None  # the run is over
