"""End to end on the CPU: a math suite trains LoRA and full FT, evaluates a benchmark,
reports the paper's table; `perl eval` is stopped by Ctrl+C and continues where it stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perl_cli import state

CONFIG = """
[benchmarks.tiny8]
source = "builtin:tiny-math"
n = 4
k = [1, 2, 4]
temperature = 1.0
top_p = 1.0
max_new_tokens = 8
limit = 8

[benchmarks.long]
source = "builtin:tiny-math"
n = 8
k = [1, 8]
temperature = 1.0
top_p = 1.0
max_new_tokens = 24

[suites.m]
name = "{method}_s{seed}"

[suites.m.base.model]
model_name_or_path = "builtin:tiny-random"

[suites.m.base.dataset]
dataset_name_or_path = "builtin:math"
eval_size = 8

[suites.m.base.task]
name = "math"
benchmarks = ["tiny8"]

[suites.m.base.peft]
lora_dropout = 0.0

[suites.m.base.training]
learning_rate = 5e-4
max_steps = 2
save_steps = 1
logging_steps = 1
per_device_train_batch_size = 8
gradient_accumulation_steps = 1
num_generations = 4
max_prompt_length = 32
max_completion_length = 8
bf16 = false

[suites.m.base.eval]
num_samples = 2

[suites.m.base.tracker]
enable_spectral_tracking = false
enable_gradient_tracking = false

[suites.m.base.wandb]
use_wandb = false

[suites.m.matrix]
method = ["lora", "full"]
seed = [1]
"""


def _perl(tmp_path: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "perl_cli", *args, "--output", str(tmp_path / "out")],
                          cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=timeout)


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PERL_CACHE_DIR": os.environ.get("PERL_CACHE_DIR", str(tmp_path / "cache"))}


def _wait_for(predicate, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _partial_rows(path: Path) -> int:
    try:
        return max(0, len(path.read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_math_suite_trains_reports_and_perl_eval_resumes_after_ctrl_c(tmp_path: Path) -> None:
    (tmp_path / "experiments.toml").write_text(CONFIG)
    suite = tmp_path / "out" / "m"
    result = _perl(tmp_path, "run", "m", "--jobs", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("lora_s1", "full_s1"):
        ev = state.read_json(suite / name / state.EVAL_FILE)
        assert ev["benchmarks"]["tiny8"]["problems"] == 8 and "pass@4" in ev["benchmarks"]["tiny8"]
        saved = json.loads((suite / name / "benchmarks" / "tiny8.json").read_text())
        assert len(saved["problems"]) == 8 and all(len(p["correct"]) == 4 for p in saved["problems"])
    assert (suite / "full_s1" / "full_model" / "model.safetensors").exists()
    assert not (suite / "full_s1" / "adapter_model.safetensors").exists()
    assert json.loads((suite / "full_s1" / "config.json").read_text())["peft"]["type"] == "full"  # not overwritten

    report = _perl(tmp_path, "report", "m", "--stdout")
    assert report.returncode == 0, report.stderr
    assert "## Benchmarks" in report.stdout and "% of full FT" in report.stdout
    assert "| full | 1/1 |" in report.stdout and "| lora | 1/1 |" in report.stdout
    assert "tiny8 pass@4" in report.stdout

    # perl eval: Ctrl+C once some batches are saved, then continue.
    partial = suite / "full_s1" / "benchmarks" / ".long.partial.jsonl"
    run = subprocess.Popen([sys.executable, "-m", "perl_cli", "eval", "m", "--only", "full_s1", "--benchmarks", "long",
                            "--output", str(tmp_path / "out")], cwd=tmp_path, env=_env(tmp_path),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _partial_rows(partial) >= 16)
    phase = (state.read_status(suite / "full_s1") or {}).get("phase") or {}
    assert phase.get("name") == "benchmark long"  # what perl status shows
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 130, out + err
    status = state.read_status(suite / "full_s1")
    assert status["state"] == "interrupted", status
    saved_before = _partial_rows(partial)
    assert 16 <= saved_before < 200
    shown = _perl(tmp_path, "status", "m")
    assert "interrupted" in shown.stdout

    again = _perl(tmp_path, "eval", "m", "--only", "full_s1", "--benchmarks", "long")
    assert again.returncode == 0, again.stdout + again.stderr
    log = (suite / "full_s1" / "train.log").read_text()
    assert f"benchmark long: continuing after {saved_before} of 200 problems" in log
    status = state.read_status(suite / "full_s1")
    assert status["state"] == "completed" and status["step"] == 2
    saved = json.loads((suite / "full_s1" / "benchmarks" / "long.json").read_text())
    assert [p["index"] for p in saved["problems"]] == list(range(200))
    assert not partial.exists()
    ev = state.read_json(suite / "full_s1" / state.EVAL_FILE)
    assert set(ev["benchmarks"]) == {"tiny8", "long"}

    # Nothing left to do: a third perl eval starts nothing; perl run keeps the experiment completed.
    third = _perl(tmp_path, "eval", "m", "--only", "full_s1", "--benchmarks", "long")
    assert third.returncode == 0 and "0 to evaluate" in third.stdout, third.stdout
    rerun = _perl(tmp_path, "run", "m")
    assert rerun.returncode == 0 and "2 already completed" in rerun.stdout, rerun.stdout
