"""The worker's contract: status.json lifecycle, metrics.jsonl, resume, determinism, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from training_support import CACHE_DIR, make_config, read_metrics, shaped_reward_functions, write_experiment

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def shaped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reward the random tiny model earns, so rewards (and their determinism) mean something."""
    from perl_cli import rewards

    monkeypatch.setattr(rewards, "reward_functions", shaped_reward_functions)


def _status(exp: Path) -> dict[str, Any]:
    return json.loads((exp / "status.json").read_text())


def test_lifecycle_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from perl_cli.train import run_experiment
    from perl_cli.train import status as status_mod

    phases = []
    real = status_mod.state.write_status
    monkeypatch.setattr(status_mod.state, "write_status", lambda d, s: (phases.append((s.get("phase") or {}).get("name")), real(d, s)))
    exp = write_experiment(tmp_path, make_config("life", training__max_steps=4, training__save_steps=2))
    before = time.time()
    assert run_experiment(exp) == 0

    # What it did before step 1, in order, then nothing (the first step clears the phase).
    named = [p for i, p in enumerate(phases) if p and (i == 0 or phases[i - 1] != p)]
    assert named[-3:] == ["base model evaluation", "lora adapter", "first step"], named
    assert any(p.startswith("loading builtin:") for p in named) and phases[-1] is None

    status = _status(exp)
    assert status["phase"] is None
    assert status["state"] == "completed" and status["exit_code"] == 0 and status["error"] is None
    assert status["step"] == status["total_steps"] == 4
    assert status["pid"] == os.getpid() and status["host"]
    assert before <= status["started"] <= status["heartbeat"] <= status["ended"] <= time.time()
    assert status["fingerprint"] == "0123456789ab"

    rows = read_metrics(exp)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in (
        "reward",
        "reward/correct",
        "reward/format",
        "reward_std",
        "loss",
        "learning_rate",
        "grad_norm",
        "completion_length",
        "completion_length_min",
        "completion_length_max",
        "step_seconds",
        "epoch",
    ):
        assert key in rows[0], key

    assert sorted(p.name for p in (exp / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    results = json.loads((exp / "eval.json").read_text())
    for key in (
        "accuracy_greedy",
        "accuracy_sampled",
        "base_accuracy_greedy",
        "base_accuracy_sampled",
        "reward_first_10pct",
        "reward_last_10pct",
        "trainable_params",
        "total_params",
        "trainable_pct",
        "peak_memory_mb",
        "seconds_per_step",
        "total_seconds",
        "adapter_size_bytes",
        "method",
        "fingerprint",
    ):
        assert results[key] is not None, key
    assert results["adapter_size_bytes"] == (exp / "adapter_model.safetensors").stat().st_size


def test_determinism_same_seed_same_rewards(tmp_path: Path, shaped: None) -> None:
    from perl_cli.train import run_experiment

    runs = []
    for name in ("det_a", "det_b"):
        exp = write_experiment(tmp_path, make_config(name, training__max_steps=3, eval__enabled=False))
        assert run_experiment(exp) == 0
        runs.append([(r["step"], r["reward"], r["loss"]) for r in read_metrics(exp)])
    assert runs[0] == runs[1]
    assert any(reward != 0 for _, reward, _ in runs[0])  # the comparison is not of zeros


def test_different_seeds_differ(tmp_path: Path, shaped: None) -> None:
    from perl_cli.train import run_experiment

    rewards = []
    for seed in (1, 2):
        config = make_config(f"seed{seed}", training__max_steps=2, eval__enabled=False, common__seed=seed)
        exp = write_experiment(tmp_path, config)
        assert run_experiment(exp) == 0
        rewards.append([r["reward"] for r in read_metrics(exp)])
    assert rewards[0] != rewards[1]


def test_unreachable_hub_model_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from perl_cli.train import run_experiment

    config = make_config("hub", model__model_name_or_path="perl-test/definitely-not-a-model")
    exp = write_experiment(tmp_path, config)
    assert run_experiment(exp) == 1
    status = _status(exp)
    assert status["state"] == "failed" and status["exit_code"] == 1
    assert "perl-test/definitely-not-a-model" in status["error"]
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE" in err and "local path" in err
    assert "Traceback" not in err  # our own error: a message, not a stack


def test_config_error_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from perl_cli.train import run_experiment

    config = make_config("bad", training__per_device_train_batch_size=6, training__num_generations=4)
    exp = write_experiment(tmp_path, config)
    assert run_experiment(exp) == 2
    status = _status(exp)
    assert status["state"] == "failed" and status["exit_code"] == 2
    assert "num_generations" in status["error"]
    assert "must be a multiple of training.num_generations" in capsys.readouterr().err


def test_missing_config_exits_2(tmp_path: Path) -> None:
    from perl_cli.train import run_experiment

    assert run_experiment(tmp_path) == 2
    assert _status(tmp_path)["state"] == "failed"


def test_fail_at_step_hook_raises_oom_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from perl_cli.train import run_experiment

    monkeypatch.setenv("PERL_TEST_FAIL_AT_STEP", "2:oom")
    exp = write_experiment(tmp_path, make_config("oom", training__max_steps=3, eval__enabled=False))
    assert run_experiment(exp) == 1
    status = _status(exp)
    assert status["state"] == "failed" and status["step"] == 1
    assert status["error"].startswith("OutOfMemoryError: CUDA out of memory")
    assert "Traceback" in capsys.readouterr().err  # the full traceback goes to train.log
    # A retry of the same experiment gets past the step: the hook fires once.
    assert run_experiment(exp) == 0
    assert _status(exp)["state"] == "completed"


def test_fail_at_step_plain_runtime_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from perl_cli.train import run_experiment

    monkeypatch.setenv("PERL_TEST_FAIL_AT_STEP", "1:always")
    exp = write_experiment(tmp_path, make_config("rt", eval__enabled=False))
    assert run_experiment(exp) == 1
    assert run_experiment(exp) == 1
    assert _status(exp)["error"].startswith("RuntimeError: PERL_TEST_FAIL_AT_STEP")


def test_heartbeat_thread_beats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from perl_cli.train import status as status_mod

    monkeypatch.setattr(status_mod, "HEARTBEAT_SECONDS", 0.05)
    writer = status_mod.StatusWriter(tmp_path, fingerprint="f", total_steps=10)
    writer.start()
    first = _status(tmp_path)["heartbeat"]
    time.sleep(0.3)
    assert _status(tmp_path)["heartbeat"] > first
    writer.finish("completed", 0)
    final = _status(tmp_path)
    assert final["state"] == "completed" and final["ended"] >= final["heartbeat"] - 1e-3


def test_phase_before_the_first_step_is_written_throttled_and_cleared(tmp_path: Path, monkeypatch) -> None:
    from perl_cli.train import status as status_mod

    writes = []
    real = status_mod.state.write_status
    monkeypatch.setattr(status_mod.state, "write_status", lambda d, s: (writes.append(dict(s)), real(d, s)))
    writer = status_mod.StatusWriter(tmp_path, fingerprint="f", total_steps=10)
    writer.phase("building builtin:tiny-countdown")
    for done in range(1, 601):
        writer.phase("warm start", done, 600)
    assert _status(tmp_path)["phase"] == {"name": "warm start", "done": 600, "total": 600}
    assert len(writes) < 10  # the first and the last of 600, not each one
    writer.phase("first step")
    writer.update(step=1)
    assert _status(tmp_path)["phase"] is None and _status(tmp_path)["step"] == 1


def test_the_warm_start_reports_its_progress(tmp_path: Path) -> None:
    from perl_cli import models

    recipe = models.TinyRecipe(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, ffn_size=32,
                               sft_steps=4, sft_batch_size=4)
    heard = []
    models._build(recipe, tmp_path, lambda name, done, total: heard.append((name, done, total)))
    assert heard == [("warm start", i, 4) for i in range(1, 5)]


def test_a_model_build_runs_single_threaded_and_restores_the_callers_threads(tmp_path, monkeypatch) -> None:
    """Builds use one thread: with other work on the cores, OpenMP barriers made a 2-thread build crawl (17x slower)."""
    import torch

    from perl_cli import models

    monkeypatch.setenv("PERL_CACHE_DIR", str(tmp_path))
    seen = []
    monkeypatch.setattr(models, "_build", lambda recipe, out, progress=None: (
        seen.append(torch.get_num_threads()), (out / "perl_recipe.json").write_text("{}")))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        models.builtin_model_path("builtin:tiny-random")
        assert seen == [1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def _spawn_worker(exp: Path) -> subprocess.Popen:
    env = {**os.environ, "PERL_CACHE_DIR": str(CACHE_DIR), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    log = open(exp / "train.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "perl_cli.train", str(exp)], stdout=log, stderr=log, env=env)


def test_sigterm_checkpoints_then_resume_continues(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from perl_cli.models import builtin_model_path
    from perl_cli.train import run_experiment

    builtin_model_path("builtin:tiny-random")  # build outside the subprocess's clock
    total = 30
    config = make_config("term", training__max_steps=total, training__save_steps=1000, eval__enabled=False)
    exp = write_experiment(tmp_path, config)
    proc = _spawn_worker(exp)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if (exp / "metrics.jsonl").exists() and len(read_metrics(exp)) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, (exp / "train.log").read_text()
        assert _status(exp)["state"] == "running"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143, (exp / "train.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    status = _status(exp)
    assert status["state"] == "interrupted" and status["exit_code"] == 143
    stopped = status["step"]
    assert 3 <= stopped < total
    assert (exp / "checkpoints" / f"checkpoint-{stopped}").is_dir()

    # Rows past the checkpoint (none should exist, but a crash could leave some) are redone.
    assert run_experiment(exp) == 0
    status = _status(exp)
    assert status["state"] == "completed" and status["step"] == total
    assert [r["step"] for r in read_metrics(exp)] == list(range(1, total + 1))
    assert f"resuming from checkpoint-{stopped}" in capsys.readouterr().out


def test_missing_local_model_directory_fails_without_hub_lookup(tmp_path: Path) -> None:
    from perl_cli.train import run_experiment

    missing = str(tmp_path / "no-such-model")
    exp = write_experiment(tmp_path, make_config("nodir", model__model_name_or_path=missing))
    assert run_experiment(exp) == 1
    assert "does not exist" in _status(exp)["error"]


def test_sigterm_before_training_stops_at_once(tmp_path: Path) -> None:
    """A signal during the (minutes-long) model build interrupts it and leaves no half model."""
    cache = tmp_path / "empty-cache"
    config = make_config("early", model__model_name_or_path="builtin:tiny-countdown", eval__enabled=False)
    exp = write_experiment(tmp_path, config)
    env = {**os.environ, "PERL_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with open(exp / "train.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "perl_cli.train", str(exp)], stdout=log, stderr=log, env=env)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and "building builtin:tiny-countdown" not in (exp / "train.log").read_text():
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143, (exp / "train.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _status(exp)["state"] == "interrupted"
    models = cache / "models"
    assert not [p for p in models.iterdir() if p.is_dir()], list(models.iterdir())
