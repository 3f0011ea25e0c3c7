"""From a resolved experiment config to TRL's GRPOConfig, and the checks it needs first."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from perl_cli import state
from perl_cli.config import settings_problems
from perl_cli.methods import METHOD_NAMES

SECTIONS = ("model", "dataset", "peft", "training", "eval", "common")


def check_config(config: Any) -> list[str]:
    """Problems that make the config unrunnable (empty when it is fine)."""
    if not isinstance(config, dict):
        return ["config.json is missing or is not a JSON object"]
    missing = [s for s in SECTIONS if not isinstance(config.get(s), dict)]
    if missing:
        return [f"config.json lacks the section(s) {', '.join(missing)}"]
    t = config["training"]
    if config["peft"].get("type") not in METHOD_NAMES:
        return [f"peft.type {config['peft'].get('type')!r} is not one of {', '.join(METHOD_NAMES)}"]
    try:
        problems = settings_problems(config)
    except (KeyError, TypeError, ValueError) as exc:
        return [f"config.json is incomplete or mistyped ({type(exc).__name__}: {exc}); regenerate it with `perl run`"]
    if t.get("use_vllm") and importlib.util.find_spec("vllm") is None:
        problems.append("training.use_vllm = true but vLLM is not installed; install vllm or set use_vllm = false")
    if t.get("use_liger_kernel") and importlib.util.find_spec("liger_kernel") is None:
        problems.append("training.use_liger_kernel = true but liger-kernel is not installed")
    return problems


def grpo_args(
    config: dict[str, Any], exp_dir: Path, *, on_gpu: bool, report_to: list[str], reward_weights: list[float]
) -> Any:
    """TRL's GRPOConfig for this experiment (names map one to one where TRL has them)."""
    from trl import GRPOConfig

    t = config["training"]
    warmup = float(t.get("warmup_ratio") or 0.0)
    kwargs: dict[str, Any] = {
        "output_dir": str(exp_dir / state.CHECKPOINT_DIR),
        "run_name": config.get("name"),
        "seed": int(config["common"]["seed"]),
        "max_steps": int(t["max_steps"]),
        "learning_rate": float(t["learning_rate"]),
        "lr_scheduler_type": t.get("lr_scheduler_type", "constant"),
        # transformers 5 folds warmup_ratio into warmup_steps (a float < 1 is a ratio).
        "warmup_steps": warmup,
        "weight_decay": float(t.get("weight_decay", 0.0)),
        "max_grad_norm": float(t.get("max_grad_norm", 1.0)),
        "per_device_train_batch_size": int(t["per_device_train_batch_size"]),
        "gradient_accumulation_steps": int(t["gradient_accumulation_steps"]),
        "num_generations": int(t["num_generations"]),
        "max_completion_length": int(t["max_completion_length"]),
        "temperature": float(t.get("temperature", 1.0)),
        "top_p": float(t.get("top_p", 1.0)),
        "loss_type": t.get("loss_type", "dapo"),
        "epsilon": float(t.get("epsilon", 0.2)),
        "epsilon_high": None if t.get("epsilon_high") is None else float(t["epsilon_high"]),
        "beta": float(t.get("beta", 0.0)),
        "num_iterations": int(t.get("num_iterations", 1)),
        "scale_rewards": t.get("scale_rewards", "group"),
        "reward_weights": reward_weights,
        "save_strategy": "steps",
        "save_steps": int(t["save_steps"]),
        "save_total_limit": int(t.get("save_total_limit") or 2),
        "logging_steps": int(t["logging_steps"]),
        # Gradient checkpointing is called activation checkpointing in transformers 5.
        "activation_checkpointing": bool(t.get("gradient_checkpointing")),
        "use_vllm": bool(t.get("use_vllm")),
        # The paper's recipe keys (schema's issue-21 block), TRL's names and defaults.
        "mask_truncated_completions": bool(t.get("mask_truncated_completions", False)),
        "top_entropy_quantile": float(t.get("top_entropy_quantile", 1.0)),
        "vllm_mode": t.get("vllm_mode", "colocate"),
        "vllm_gpu_memory_utilization": float(t.get("vllm_gpu_memory_utilization", 0.3)),
        "use_liger_kernel": bool(t.get("use_liger_kernel")),
        "report_to": report_to,
        # Progress goes to train.log as one line per log step, not as tqdm redraws.
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    if on_gpu:
        kwargs["bf16"] = bool(t.get("bf16", True))
    else:
        # GRPOConfig defaults to bf16 and refuses it without CUDA.
        kwargs.update(use_cpu=True, bf16=False)
    if kwargs["epsilon_high"] is None:
        del kwargs["epsilon_high"]  # TRL's default: same as epsilon
    return GRPOConfig(**kwargs)
