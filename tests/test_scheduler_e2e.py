"""`perl run` end to end with the real worker (`python -m perl_cli.train`) on fake GPUs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_suite import TINY_SUITE

from perl_cli import state

CONFIG = TINY_SUITE.format(suite="e2e") + """[suites.e2e.base.eval]
enabled = false
eval_base = false
[suites.e2e.base.tracker]
enable_spectral_tracking = false
enable_gradient_tracking = false
[suites.e2e.base.wandb]
use_wandb = false
[suites.e2e.matrix]
method = ["lora", "dora"]
seed = [1]
"""


@pytest.mark.slow
def test_real_worker_on_fake_gpus_with_an_oom_retry(tmp_path: Path) -> None:
    (tmp_path / "experiments.toml").write_text(CONFIG)
    gpus = [{"index": i, "name": "FakeGPU", "memory_total_mb": 8000, "memory_used_mb": 0} for i in range(2)]
    env = {
        **os.environ,
        "PERL_FAKE_GPUS": json.dumps(gpus),
        "PERL_CACHE_DIR": os.environ.get("PERL_CACHE_DIR", str(tmp_path / "cache")),
        "PERL_TEST_FAIL_AT_STEP": "2:oom",  # fires once per experiment directory
    }
    result = subprocess.run(
        [sys.executable, "-m", "perl_cli", "run", "e2e", "--output", str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    suite_dir = tmp_path / "out" / "e2e"
    gpus_used = set()
    for name in ("lora_s1", "dora_s1"):
        status = state.read_status(suite_dir / name)
        assert status["state"] == "completed" and status["step"] == 3, status
        assert status["attempt"] == 2 and status["retries"][0]["cause"] == "CUDA out of memory"
        config = state.read_json(suite_dir / name / state.CONFIG_FILE)
        assert config["runtime"] == {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2}
        log = (suite_dir / name / state.LOG_FILE).read_text()
        assert "OutOfMemoryError" in log and "retrying with per_device_train_batch_size=2" in log
        # The worker trained the retry with the halved batch, not just the scheduler's note of it.
        retry_log = log[log.rindex("retrying with"):]
        applied = next(line for line in retry_log.splitlines() if "runtime adjustments from the scheduler" in line)
        assert "'per_device_train_batch_size': 2" in applied and "'gradient_accumulation_steps': 2" in applied
        assert (suite_dir / name / "adapter_model.safetensors").exists()
        gpus_used.add(status["gpu"])
    assert gpus_used == {0, 1}
    aggregate = state.read_json(suite_dir / state.RUN_STATUS_FILE)
    assert aggregate["counts"]["completed"] == 2


def _start_run(tmp_path: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "perl_cli", "run", "e2e", "--output", str(tmp_path / "out")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _run(tmp_path: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "perl_cli", "run", "e2e", "--output", str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _steps(suite_dir: Path) -> dict[str, int]:
    return {n: (state.read_status(suite_dir / n) or {}).get("step") or 0 for n in ("lora_s1", "dora_s1")}


def _long_config(tmp_path: Path) -> dict:
    (tmp_path / "experiments.toml").write_text(
        CONFIG.replace("max_steps = 3", "max_steps = 120").replace("save_steps = 2", "save_steps = 5")
    )
    gpus = [{"index": i, "name": "FakeGPU", "memory_total_mb": 8000, "memory_used_mb": 0} for i in range(2)]
    return {**os.environ, "PERL_FAKE_GPUS": json.dumps(gpus),
            "PERL_CACHE_DIR": os.environ.get("PERL_CACHE_DIR", str(tmp_path / "cache"))}


@pytest.mark.slow
def test_real_workers_survive_a_killed_scheduler_and_are_adopted(tmp_path: Path) -> None:
    env = _long_config(tmp_path)
    suite_dir = tmp_path / "out" / "e2e"
    first = _start_run(tmp_path, env)
    _wait_for(lambda: all(s >= 2 for s in _steps(suite_dir).values()))
    first.kill()  # SIGKILL: no cleanup at all
    first.communicate()
    pids = {n: state.read_status(suite_dir / n)["pid"] for n in ("lora_s1", "dora_s1")}
    assert all(state.process_alive(p) for p in pids.values()), "workers outlive the scheduler"
    result = _run(tmp_path, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "adopted" in result.stdout
    for name, pid in pids.items():
        status = state.read_status(suite_dir / name)
        # The same worker process finished the job: adopted, not restarted.
        assert status["state"] == "completed" and status["step"] == 120 and status["pid"] == pid
        assert (suite_dir / name / "train.log").read_text().count("[perl run ") == 1


@pytest.mark.slow
def test_real_workers_ctrl_c_checkpoint_and_resume(tmp_path: Path) -> None:
    env = _long_config(tmp_path)
    suite_dir = tmp_path / "out" / "e2e"
    run = _start_run(tmp_path, env)
    _wait_for(lambda: all(s >= 7 for s in _steps(suite_dir).values()))
    run.send_signal(signal.SIGINT)
    run.communicate(timeout=120)
    assert run.returncode == 130
    stopped = {}
    for name in ("lora_s1", "dora_s1"):
        status = state.read_status(suite_dir / name)
        assert status["state"] == "interrupted" and status["exit_code"] == 143, status
        assert not state.process_alive(status["pid"], status.get("pid_start_time"))
        stopped[name] = status["step"]
        assert (suite_dir / name / "checkpoints" / f"checkpoint-{status['step']}").is_dir()
    result = _run(tmp_path, env)
    assert result.returncode == 0, result.stdout + result.stderr
    for name, step in stopped.items():
        log = (suite_dir / name / "train.log").read_text()
        assert f"resuming from checkpoint-{step}" in log
        rows = [json.loads(line) for line in (suite_dir / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == list(range(1, 121))  # continuous, nothing twice
        assert state.read_status(suite_dir / name)["state"] == "completed"
