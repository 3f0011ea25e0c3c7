"""Shared setup for tests that train: configs, a per-session model cache, a shaped reward.

Imported by the training tests. The model cache lives in one temporary directory per
test process (so the built-in models are built once per session), unless
PERL_TEST_CACHE_DIR names a directory to reuse across sessions (handy for the slow
learning test, whose warm-started model takes about two minutes to build).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
CACHE_DIR = Path(os.environ.get("PERL_TEST_CACHE_DIR") or tempfile.mkdtemp(prefix="perl-test-cache-"))
os.environ["PERL_CACHE_DIR"] = str(CACHE_DIR)


def make_config(name: str = "exp", **overrides: Any) -> dict[str, Any]:
    """A fully resolved config for a few fast steps on builtin:tiny-random.

    `overrides` use "section__key" names, e.g. ``training__max_steps=5``.
    """
    from perl_cli.schema import defaults

    config: dict[str, Any] = defaults()
    config.update(name=name, suite="test", fingerprint="0123456789ab")
    config["model"]["model_name_or_path"] = "builtin:tiny-random"
    config["dataset"].update(eval_size=16, data_size=200)
    config["peft"].update(r=4, lora_alpha=8.0, lora_dropout=0.0)
    config["training"].update(
        learning_rate=1e-2,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        num_generations=4,
        max_completion_length=12,
        max_steps=3,
        save_steps=100,
        logging_steps=1,
    )
    config["eval"].update(num_samples=2)
    for key, value in overrides.items():
        section, field = key.split("__", 1)
        config[section][field] = value
    return config


def write_experiment(root: Path, config: dict[str, Any]) -> Path:
    exp = root / config["name"]
    exp.mkdir(parents=True, exist_ok=True)
    (exp / "config.json").write_text(json.dumps(config, indent=2))
    return exp


def read_metrics(exp: Path) -> list[dict[str, Any]]:
    path = exp / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def digit_reward(completions: list, **_: Any) -> list[float]:
    """A reward a random model earns: the share of digits in its completion.

    The real rewards are all zero on an untrained model, so its advantages and
    gradients would be zero and nothing would train; this one varies within a group.
    """
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def shaped_reward_functions(prompt_format: str) -> tuple[list, list[float]]:
    from perl_cli import rewards

    return [rewards.correct_reward, digit_reward], [1.0, 1.0]


# --- shared by the training tests (tiny and real-shape) ------------------------------

PROBE = "nums: 3 7 9 target: 30\n<answer>7*3+9</answer>"


def probe_logits(model: Any, tokenizer: Any) -> Any:
    """The model's float32 logits on one fixed text, in eval mode (no dropout)."""
    import torch

    model.eval()
    with torch.no_grad():
        ids = tokenizer(PROBE, return_tensors="pt").to(next(model.parameters()).device)
        return model(**ids).logits.float().cpu()


def method_overrides(method: str) -> dict[str, Any]:
    """make_config overrides that make `method` do its own thing within three steps."""
    over: dict[str, Any] = {"peft__type": method}
    if method == "adalora":
        # Allocation from step 1, final ranks fixed at step 2 of 3.
        over.update(peft__adalora_init_r=8, peft__adalora_tinit=0, peft__adalora_tfinal=1, peft__adalora_delta_t=1)
    return over


def capture_session(monkeypatch: Any) -> dict[str, Any]:
    """Run with a reward a random model can earn; keep the trained session for inspection.

    AdaLoRA's regulariser is wrapped to record the gradient that reaches it: there is
    one only if the term is part of the loss that is back-propagated.
    """
    import dataclasses

    from perl_cli import methods, rewards
    from perl_cli.train import session as session_mod

    monkeypatch.setattr(rewards, "reward_functions", shaped_reward_functions)
    box: dict[str, Any] = {"regulariser_grads": []}
    original = session_mod.TrainingSession.finish

    def finish(self: Any, started: float) -> dict[str, Any]:
        box["session"] = self
        return original(self, started)

    monkeypatch.setattr(session_mod.TrainingSession, "finish", finish)
    adalora = methods.METHODS["adalora"]

    def recorded(model: Any) -> Any:
        term = adalora.regulariser(model)
        term.register_hook(lambda grad: box["regulariser_grads"].append(float(grad)))
        return term

    monkeypatch.setitem(methods.METHODS, "adalora", dataclasses.replace(adalora, regulariser=recorded))
    return box
