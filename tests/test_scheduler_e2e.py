"""`perl run` end to end with the real worker (`python -m perl_cli.train`) on fake GPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from perl_cli import state

CONFIG = """
[suites.e2e]
name = "{method}_s{seed}"
[suites.e2e.base.model]
model_name_or_path = "builtin:tiny-random"
[suites.e2e.base.dataset]
dataset_name_or_path = "builtin:countdown"
data_size = 32
eval_size = 8
[suites.e2e.base.training]
max_steps = 3
save_steps = 2
logging_steps = 1
per_device_train_batch_size = 4
gradient_accumulation_steps = 1
num_generations = 2
max_prompt_length = 32
max_completion_length = 8
bf16 = false
[suites.e2e.base.eval]
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
