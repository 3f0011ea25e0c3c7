"""Every key an experiment config may hold: its type, default, allowed range and help.

One table, so that validation (unknown keys, types, ranges) and defaults come from the
same place, and a new setting is added in one line. Training keys use TRL's
`GRPOConfig` names so that users can carry their knowledge of TRL over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from perl_cli.placement import layer_spec_problem

Check = Callable[[Any], str | None]


@dataclass(frozen=True)
class Field:
    default: Any
    kind: str  # int | float | bool | str | str_list | str_or_list | layers
    help: str
    check: Check | None = None
    choices: tuple[str, ...] | None = None
    nullable: bool = False


def at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be >= {low:g}"


def greater_than(low: float) -> Check:
    return lambda v: None if v > low else f"must be > {low:g}"


def between_open(low: float, high: float) -> Check:
    return lambda v: None if low < v < high else f"must be in ({low:g}, {high:g})"


def between(low: float, high: float) -> Check:
    return lambda v: None if low <= v <= high else f"must be in [{low:g}, {high:g}]"


PEFT_METHODS = (
    "lora",
    "dora",
    "rslora",
    "adalora",
    "pissa",
    "milora",
    "vera",
    "lora_plus",
    "lora_fa",
    "miss",
    "ia3",
    "ln_tuning",
    "hra",
    "milora_plus",  # upstream's MiLoRA++ (issue 21): A on W's minor directions, B = 0
    "slicefine",  # upstream's SliceFine (issue 21): a slice of each base weight, as a SHiRA mask
    "full",  # full fine-tuning (issue 16): no adapter, every parameter
)

SCHEMA: dict[str, dict[str, Field]] = {
    "model": {
        "model_name_or_path": Field(
            "builtin:tiny-countdown", "str", "hub name, local path, or builtin:tiny-countdown"
        ),
        "dtype": Field(
            "auto", "str", "weights dtype on GPU (CPU always uses float32)",
            choices=("auto", "bfloat16", "float16", "float32"),
        ),
        "attn_implementation": Field(
            "sdpa", "str", "attention kernel on GPU",
            choices=("sdpa", "eager", "flash_attention_2", "flash_attention_3"),
        ),
        "trust_remote_code": Field(False, "bool", "allow model code from the hub"),
    },
    "dataset": {
        "dataset_name_or_path": Field(
            "builtin:countdown", "str",
            "Jiayi-Pan/Countdown-Tasks-3to4, a .jsonl/.parquet file, or builtin:countdown",
        ),
        "data_size": Field(None, "int", "training examples to use (all when unset)", at_least(1), nullable=True),
        "eval_size": Field(200, "int", "held-out problems, never trained on", at_least(1)),
        "num_count": Field(3, "int", "numbers per generated problem", between(2, 6)),
        "min_number": Field(1, "int", "smallest generated number", at_least(1)),
        "max_number": Field(10, "int", "largest generated number", at_least(1)),
        "operators": Field("+-*", "str", "operators the generator may use (subset of +-*/)"),
        "split_seed": Field(0, "int", "seed of the train/held-out split", at_least(0)),
        "prompt_format": Field(
            "auto", "str", "chat (R1-style, for real models), compact (tiny model), or auto",
            choices=("auto", "chat", "compact"),
        ),
    },
    "peft": {
        "type": Field("lora", "str", "PEFT method", choices=PEFT_METHODS),
        "r": Field(16, "int", "adapter rank", at_least(1)),
        "lora_alpha": Field(32, "float", "LoRA scaling numerator", greater_than(0)),
        "lora_dropout": Field(
            0.05, "float",
            "dropout on the adapter input; PiSSA/MiLoRA use 0 unless set for them explicitly (docs/fairness.md)",
            between(0, 0.999),
        ),
        "target_modules": Field(
            "all-linear", "str_or_list",
            "modules that get adapters: all-linear, attention (q/k/v/o), mlp (gate/up/down) or a list of names",
        ),
        "layers": Field(
            "all", "layers",
            'decoder layers that get adapters: all, a list of indices, or a range such as "0:12", "12:", "::2"',
            layer_spec_problem,
        ),
        "lora_plus_ratio": Field(16.0, "float", "LoRA+: learning-rate ratio of B over A", greater_than(0)),
        "adalora_init_r": Field(None, "int", "AdaLoRA: starting rank (default 1.5 x r)", at_least(1), nullable=True),
        "adalora_tinit": Field(None, "int", "AdaLoRA: warm-up steps before pruning", at_least(0), nullable=True),
        "adalora_tfinal": Field(None, "int", "AdaLoRA: final fine-tuning steps", at_least(0), nullable=True),
        "adalora_delta_t": Field(None, "int", "AdaLoRA: steps between reallocations", at_least(1), nullable=True),
        "vera_d_initial": Field(0.1, "float", "VeRA: initial value of the d vector", greater_than(0)),
        "pissa_niter": Field(
            16, "int", "PiSSA: fast-SVD iterations (16 ~ full SVD per peft; 0 = exact SVD); MiLoRA is always exact",
            at_least(0),
        ),
    },
    "training": {
        "learning_rate": Field(1e-5, "float", "peak learning rate", between_open(0, 1)),
        "lr_scheduler_type": Field(
            "constant", "str", "learning-rate schedule",
            choices=("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_min_lr"),
        ),
        "warmup_ratio": Field(0.0, "float", "fraction of steps for warm-up", between(0, 1)),
        "weight_decay": Field(0.0, "float", "AdamW weight decay", at_least(0)),
        "max_grad_norm": Field(1.0, "float", "gradient clipping", greater_than(0)),
        "per_device_train_batch_size": Field(4, "int", "completions per device per micro-step", at_least(1)),
        "gradient_accumulation_steps": Field(8, "int", "micro-steps per optimizer step", at_least(1)),
        "num_generations": Field(8, "int", "completions per prompt (the GRPO group)", at_least(2)),
        "max_prompt_length": Field(256, "int", "longest prompt in tokens; longer prompts are skipped with a warning", at_least(1)),
        "max_completion_length": Field(512, "int", "generated tokens per completion", at_least(1)),
        "temperature": Field(1.0, "float", "sampling temperature", greater_than(0)),
        "top_p": Field(1.0, "float", "nucleus sampling", between(0.01, 1)),
        "loss_type": Field(
            "dapo", "str", "TRL GRPO loss",
            choices=("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo"),
        ),
        "epsilon": Field(0.2, "float", "lower clipping range", greater_than(0)),
        "epsilon_high": Field(None, "float", "upper clipping range (DAPO clip-higher)", greater_than(0), nullable=True),
        "beta": Field(0.0, "float", "KL coefficient (0 = no reference model)", at_least(0)),
        "num_iterations": Field(1, "int", "policy updates per generation batch", at_least(1)),
        "scale_rewards": Field("group", "str", "advantage scaling", choices=("group", "batch", "none")),
        "max_steps": Field(1000, "int", "optimizer steps", at_least(1)),
        "save_steps": Field(100, "int", "checkpoint every N steps", at_least(1)),
        "logging_steps": Field(10, "int", "metrics every N steps", at_least(1)),
        "save_total_limit": Field(2, "int", "checkpoints kept", at_least(1)),
        "gradient_checkpointing": Field(False, "bool", "recompute activations to save memory"),
        "use_vllm": Field(False, "bool", "generate with vLLM (when installed)"),
        "bf16": Field(True, "bool", "bfloat16 training on GPU (always off on CPU)"),
        "use_liger_kernel": Field(False, "bool", "Liger kernels (when installed)"),
    },
    "tracker": {
        "enable_spectral_tracking": Field(False, "bool", "singular values of adapter updates"),
        "enable_gradient_tracking": Field(False, "bool", "per-layer gradient norms"),
        "spectral_log_frequency": Field(100, "int", "steps between spectral snapshots", at_least(1)),
        "gradient_log_frequency": Field(100, "int", "steps between gradient snapshots", at_least(1)),
    },
    "wandb": {
        "use_wandb": Field(False, "bool", "log to Weights & Biases"),
        "project": Field("peft-rlvr-mechanistic", "str", "W&B project"),
        "entity": Field(None, "str", "W&B entity", nullable=True),
        "offline": Field(False, "bool", "log offline (sync later with `wandb sync`)"),
        "tags": Field([], "str_list", "extra W&B tags"),
        # What reaches the dashboard (perl_cli/tracking/dashboard.py); none of it changes results.
        "backend": Field(
            "wandb", "str", "dashboard to log to: wandb (Weights & Biases) or trackio (local, no account)",
            choices=("wandb", "trackio"),
        ),
        "log_spectral_images": Field(True, "bool", "log singular-value and effective-rank images with each spectral snapshot"),
        "log_gradient_images": Field(True, "bool", "log the gradient-norm heatmap with each gradient snapshot"),
    },
    "eval": {
        "enabled": Field(True, "bool", "evaluate on the held-out set at the end"),
        "num_samples": Field(4, "int", "samples per problem for sampled pass@1", at_least(1)),
        "temperature": Field(1.0, "float", "sampling temperature for sampled pass@1", greater_than(0)),
        "max_new_tokens": Field(None, "int", "generation budget (default: max_completion_length)", at_least(1), nullable=True),
        "eval_base": Field(True, "bool", "also evaluate the base model before training"),
    },
    "ica": {
        "mode": Field(
            "off", "str",
            "ICA mask on the MLP neurons: off, key (zero the selected neurons) or complement (keep only them)",
            choices=("off", "key", "complement"),
        ),
        "components": Field(20, "int", "FastICA components per layer", at_least(1)),
        "percentile": Field(98.0, "float", "neurons scoring at or above this percentile are selected", between(0, 100)),
        "sample_prompts": Field(64, "int", "training prompts the base model is run over to compute the mask", at_least(1)),
    },
    # --- the math task and benchmark evaluation (issue 16) ---------------------------
    "task": {
        "name": Field(
            "countdown", "str",
            "what the model learns: countdown (equations, <answer> tags) or math (word problems, \\boxed{} answers)",
            choices=("countdown", "math"),
        ),
        "problem_column": Field("problem", "str", "math: the column holding the problem text"),
        "answer_column": Field("answer", "str", "math: the column holding the reference answer"),
        "split": Field("train", "str", "math: the dataset split to train on (hub datasets and directories)"),
        "subset": Field(None, "str", "math: the dataset's configuration (subset) name", nullable=True),
        "system_prompt": Field("", "str", "math, chat prompts: the system message (empty: none)"),
        "instruction": Field(
            "Please reason step by step, and put your final answer within \\boxed{}.", "str",
            "math, chat prompts: appended to each problem",
        ),
        "chat_template": Field(
            None, "str", "math, chat prompts: a Jinja chat template replacing the tokenizer's", nullable=True
        ),
        "benchmarks": Field(
            [], "str_list",
            "benchmarks evaluated after training (names from `perl plan --benchmarks`); never part of the fingerprint",
        ),
    },
    "resources": {
        "memory_mb": Field(None, "int", "GPU memory a job needs (default: estimated)", at_least(1), nullable=True),
    },
    "common": {
        "seed": Field(42, "int", "random seed", at_least(0)),
    },
}

# --- The paper's recipe (issue 21): upstream's training keys and its quirks as switches ---
# One block so that it merges cleanly; docs/recipes.md says what each one reproduces.
SCHEMA["training"].update(
    {
        "mask_truncated_completions": Field(
            False, "bool", "leave completions cut at max_completion_length out of the loss (DAPO; TRL's name)"
        ),
        "top_entropy_quantile": Field(
            1.0, "float", "train only on the top quantile of tokens by entropy (1.0 = every token; TRL's name)",
            between(0, 1),
        ),
        "vllm_mode": Field(
            "colocate", "str", "vLLM beside the trainer on the same GPU (colocate) or a separate `trl vllm-serve` (server)",
            choices=("colocate", "server"),
        ),
        "vllm_gpu_memory_utilization": Field(
            0.3, "float", "share of each GPU's memory vLLM may take in colocate mode (upstream: 0.4)",
            lambda v: None if 0 < v <= 1 else "must be in (0, 1]",
        ),
    }
)
SCHEMA["eval"]["top_p"] = Field(1.0, "float", "nucleus sampling for sampled pass@1 (upstream: 0.9)", between(0.01, 1))
SCHEMA["peft"].update(
    {
        "adapter_dtype": Field(
            "float32", "str",
            "dtype of the trained adapter tensors: float32 (PeRL), base (the base weights' dtype, as upstream's MiLoRA "
            "on a bf16 GPU run) or bfloat16 (that rounding on a CPU too)",
            choices=("float32", "base", "bfloat16"),
        ),
        "dropout_on_svd_methods": Field(
            False, "bool", "PiSSA/MiLoRA take the shared lora_dropout like upstream (PeRL: 0; docs/fairness.md)"
        ),
        "adalora_reallocation": Field(
            True, "bool", "AdaLoRA reallocates rank every step with its orthogonality term; false = upstream under TRL (neither)"
        ),
        "peft_default_targets": Field(
            False, "bool", "VeRA, IA3, MiSS and HRA use peft's default modules for the architecture (upstream), not target_modules"
        ),
    }
)
# At these values the new keys leave fingerprints as they were before they existed.
FINGERPRINT_NEUTRAL_RECIPE: dict[str, Any] = {
    "training.mask_truncated_completions": False,
    "training.top_entropy_quantile": 1.0,
    "training.vllm_mode": "colocate",
    "training.vllm_gpu_memory_utilization": 0.3,
    "eval.top_p": 1.0,
    "peft.adapter_dtype": "float32",
    "peft.dropout_on_svd_methods": False,
    "peft.adalora_reallocation": True,
    "peft.peft_default_targets": False,
}
# --- end of the paper's recipe block ---------------------------------------------------------------

# Short names for matrix axes, `when` conditions and experiment-name templates.
ALIASES: dict[str, str] = {
    "method": "peft.type",
    "rank": "peft.r",
    "alpha": "peft.lora_alpha",
    "seed": "common.seed",
    "data_size": "dataset.data_size",
    "lr": "training.learning_rate",
    "steps": "training.max_steps",
    "model": "model.model_name_or_path",
    "targets": "peft.target_modules",
    "layers": "peft.layers",
    "ica": "ica.mode",
    "task": "task.name",
}

# Settings that, at these values, are left out of the fingerprint: experiments that
# finished before the setting existed keep their fingerprint (and are not `stale`).
# A section given by its "off" switch is left out whole when switched off.
FINGERPRINT_NEUTRAL: dict[str, Any] = {"peft.layers": "all", **FINGERPRINT_NEUTRAL_RECIPE}
FINGERPRINT_OFF_SECTIONS: dict[str, tuple[str, Any]] = {"ica": ("mode", "off"), "task": ("name", "countdown")}
# Settings never in the fingerprint: they change what the dashboard shows, not what is learned,
# so changing them does not make a completed experiment stale.
FINGERPRINT_EXCLUDED = frozenset({"wandb.backend", "wandb.log_spectral_images", "wandb.log_gradient_images",
                                  "task.benchmarks"})  # what is evaluated afterwards

# --- collapse stopping (issue 17) ---------------------------------------------------------
# Off by default, and then outside the fingerprint: runs that finished before it existed stay
# complete. On (per suite: [suites.X.base.training] or --set), the worker stops a run whose
# metrics say it collapsed (perl_cli/collapse.py), recorded as cause "collapsed", never retried.
SCHEMA["training"]["stop_on_collapse"] = Field(
    False, "bool", "stop a run once its training collapsed (correctness ~0, length or entropy runaway)"
)
FINGERPRINT_NEUTRAL["training.stop_on_collapse"] = False


def fingerprint_view(settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` without what FINGERPRINT_NEUTRAL and FINGERPRINT_OFF_SECTIONS leave out."""
    out = {}
    for section, values in settings.items():
        off = FINGERPRINT_OFF_SECTIONS.get(section)
        if off is not None and isinstance(values, dict) and values.get(off[0], off[1]) == off[1]:
            continue
        if isinstance(values, dict):
            values = {
                k: v for k, v in values.items()
                if FINGERPRINT_NEUTRAL.get(f"{section}.{k}", ...) != v and f"{section}.{k}" not in FINGERPRINT_EXCLUDED
            }
        out[section] = values
    return out


def defaults() -> dict[str, dict[str, Any]]:
    return {
        section: {key: _copy(field.default) for key, field in fields.items()}
        for section, fields in SCHEMA.items()
    }


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def all_paths() -> list[str]:
    return [f"{s}.{k}" for s, fields in SCHEMA.items() for k in fields] + list(ALIASES)


def coerce(path: str, value: Any) -> tuple[Any, str | None]:
    """Check `value` against the field at `path` ("section.key"); (value, problem)."""
    section, key = path.split(".", 1)
    field = SCHEMA[section][key]
    if value is None:
        return None, None if field.nullable else "must be set (it has no 'unset' value)"
    kind = field.kind
    if kind == "bool":
        if not isinstance(value, bool):
            return value, "must be true or false"
    elif kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value, f"must be a number, not {type(value).__name__}"
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                return value, "must be a whole number"
            value = int(value)
        else:
            value = float(value)
    elif kind == "str":
        if not isinstance(value, str):
            return value, "must be a string"
    elif kind == "str_list":
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return value, "must be a list of strings"
    elif kind == "layers":
        if isinstance(value, list):
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                return value, 'must be "all", a list of layer indices or a range string such as "0:12"'
        elif not isinstance(value, str):
            return value, 'must be "all", a list of layer indices or a range string such as "0:12"'
    elif kind == "str_or_list":
        if not (isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(v, str) for v in value))):
            return value, "must be a string or a non-empty list of strings"
    if field.choices is not None and value not in field.choices:
        return value, "must be one of " + ", ".join(field.choices)
    if field.check is not None:
        problem = field.check(value)
        if problem:
            return value, problem
    return value, None
