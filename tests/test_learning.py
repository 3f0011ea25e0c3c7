"""The demo recipe really learns: GRPO + LoRA lifts held-out sampled accuracy.

Slow (a few minutes: the warm-started tiny model is built once, about two minutes,
then 120 GRPO steps). Set PERL_TEST_CACHE_DIR to reuse a built model across sessions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from training_support import make_config, write_experiment

# The demo suite's LoRA settings (a measured recipe, under TRL 1.16's batch semantics:
# 64 completions per step = 8 prompts x 8 generations).
DEMO_TRAINING = {
    "training__learning_rate": 5e-4,
    "training__per_device_train_batch_size": 64,
    "training__gradient_accumulation_steps": 1,
    "training__num_generations": 8,
    "training__max_completion_length": 28,
    "training__beta": 0.0,
    "training__lr_scheduler_type": "constant",
    "training__max_steps": 120,
    "training__save_steps": 50,
    "training__logging_steps": 10,
}


@pytest.mark.slow
def test_lora_grpo_improves_sampled_accuracy(tmp_path: Path) -> None:
    from perl_cli.train import run_experiment

    config = make_config(
        "lora_r16_s42",
        model__model_name_or_path="builtin:tiny-countdown",
        dataset__data_size=None,
        dataset__eval_size=200,
        peft__type="lora",
        peft__r=16,
        peft__lora_alpha=32.0,
        peft__lora_dropout=0.0,
        eval__num_samples=4,
        common__seed=42,
        **DEMO_TRAINING,
    )
    exp = write_experiment(tmp_path, config)
    assert run_experiment(exp) == 0
    results = json.loads((exp / "eval.json").read_text())
    gain = results["accuracy_sampled"] - results["base_accuracy_sampled"]
    assert results["base_accuracy_sampled"] >= 0.2, "the warm start should solve a fair share already"
    assert gain >= 0.05, f"sampled held-out accuracy moved by {100 * gain:+.1f} points only: {results}"
