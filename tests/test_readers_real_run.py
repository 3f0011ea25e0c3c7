"""status, diagnose and report on output written by the real scheduler and worker.

`perl run` trains builtin:tiny-random for 3 steps on the CPU (one experiment completes
with tracking on; another fails with a forced CUDA OOM at step 2 after a checkpoint),
then the three readers are checked on what they left.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUITE = "real"
TOML = f"""
[suites.{SUITE}]
name = "{{method}}_r{{rank}}_s{{seed}}"
[suites.{SUITE}.base.model]
model_name_or_path = "builtin:tiny-random"
[suites.{SUITE}.base.dataset]
eval_size = 8
data_size = 64
[suites.{SUITE}.base.peft]
r = 4
lora_alpha = 8
lora_dropout = 0.0
[suites.{SUITE}.base.training]
learning_rate = 1e-2
per_device_train_batch_size = 8
gradient_accumulation_steps = 1
num_generations = 4
max_completion_length = 12
max_steps = 3
save_steps = 1
logging_steps = 1
[suites.{SUITE}.base.tracker]
enable_spectral_tracking = true
enable_gradient_tracking = true
spectral_log_frequency = 1
gradient_log_frequency = 1
[suites.{SUITE}.base.eval]
num_samples = 2
eval_base = false
[suites.{SUITE}.base.wandb]
use_wandb = false
[suites.{SUITE}.matrix]
method = ["lora", "dora", "pissa"]
seed = [1]
"""


def perl(*args: str, env: dict | None = None, check: int | None = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "perl_cli", *args], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=600,
    )
    if check is not None:
        assert proc.returncode == check, f"perl {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def real_suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("real")
    cfg = tmp / "experiments.toml"
    cfg.write_text(TOML)
    out = tmp / "output"
    common = ("--config", str(cfg), "--output", str(out))
    perl("run", SUITE, "--only", "lora_r4_s1", *common)
    perl("run", SUITE, "--only", "dora_r4_s1", "--retries", "0", *common,
         env={"PERL_TEST_FAIL_AT_STEP": "2:oom:always"}, check=1)
    return cfg, out


@pytest.mark.slow
def test_status_on_real_output(real_suite) -> None:
    cfg, out = real_suite
    data = json.loads(perl("status", SUITE, "--json", "--config", str(cfg), "--output", str(out)).stdout)
    by_name = {e["name"]: e for e in data["experiments"]}
    assert data["counts"]["completed"] == 1 and data["counts"]["failed"] == 1 and data["counts"]["pending"] == 1
    done = by_name["lora_r4_s1"]
    assert done["state"] == "completed" and done["step"] == done["total_steps"] == 3
    assert done["reward"] is not None and done["duration_s"] > 0 and done["size_bytes"] > 0
    assert by_name["dora_r4_s1"]["state"] == "failed" and by_name["dora_r4_s1"]["step"] == 1
    assert by_name["pissa_r4_s1"]["state"] == "pending"


@pytest.mark.slow
def test_diagnose_on_real_output(real_suite) -> None:
    cfg, out = real_suite
    proc = perl("diagnose", SUITE, "--json", "--config", str(cfg), "--output", str(out), check=1)
    data = json.loads(proc.stdout)
    (entry,) = data["experiments"]
    assert entry["name"] == "dora_r4_s1" and entry["cause"] == "cuda_oom"
    assert "Traceback" in entry["traceback"] and "OutOfMemoryError" in entry["summary"]
    (command,) = entry["fix"]["commands"]
    assert "--set training.per_device_train_batch_size=4 --set training.gradient_accumulation_steps=2" in command
    assert command.endswith("--fresh")  # the failed run left a checkpoint from other settings
    dry = perl(*shlex.split(command)[1:], "--dry-run")
    assert "[fresh]" in dry.stdout


@pytest.mark.slow
def test_report_on_real_output(real_suite) -> None:
    cfg, out = real_suite
    perl("report", SUITE, "--config", str(cfg), "--output", str(out))
    md = (out / SUITE / "SUMMARY.md").read_text()
    assert "| `lora_r4_s1` | lora | completed |" in md and "| 1 | lora | 1/1 |" in md  # runs: completed/planned
    assert "CUDA out of memory" in md
    plots = ["reward_curves.png", "accuracy_vs_trainable.png"]
    if (out / SUITE / "lora_r4_s1" / "spectral_history.json").exists():  # once the worker records tracking
        plots += ["effective_rank.png", "gradient_norms_lora.png"]
    for name in plots:
        assert (out / SUITE / name).stat().st_size > 1000, name
