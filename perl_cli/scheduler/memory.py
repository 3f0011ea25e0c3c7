"""How much GPU memory an experiment needs: a documented, deliberately rough estimate.

The scheduler places a job on a GPU only when this estimate fits in the GPU's free
memory (minus what recently started jobs have reserved). When the estimate is wrong
for a suite, set it outright: ``[suites.X.base.resources] memory_mb = 30000``
(or ``--set resources.memory_mb=30000``).

The formula (all sizes in MiB; P = base-model parameters):

    weights      = P x bytes per weight            (2 for bf16/fp16/auto, 4 for float32)
    trainable    = P x 0.01 x r / 16 x method      (~1% of the base for all-linear LoRA r16;
                                                   method: 0.05 for VeRA/IA3/LN tuning,
                                                   1.1 for DoRA, 1.5 for AdaLoRA's initial rank)
    optimizer    = trainable x 16 bytes            (fp32 weight + grad + two AdamW moments)
    full FT      = trainable = P, weights = P x 4 (float32; x 2 with a reference model, beta > 0)
    activations  = batch x (prompt + completion) x H x 34 bytes x 2   (training + generation)
                   with H = hidden x layers ~= 30,000 x (P / 1e9)^(2/3); divided by 4 with
                   gradient checkpointing
    logits       = batch x (prompt + completion) x V x 4 bytes   (V = 152,064, Qwen's
                                                                   vocabulary; 64 for built-in models)
    total        = (weights + optimizer + activations + logits) x 1.2 + 1,024 (CUDA context)

P is read from the model name ("...-1.5B", "Qwen2.5-7B-Instruct": the number before a
"B"); the built-in tiny models count as 1M parameters; an unknown name counts as 1.5B.
"""

from __future__ import annotations

import re
from typing import Any

CUDA_CONTEXT_MB = 1024
SAFETY = 1.2
VOCAB = 152_064
BUILTIN_VOCAB = 64
DEFAULT_PARAMS = 1.5e9
BUILTIN_PARAMS = 1e6
MAX_BILLIONS = 10_000  # larger "sizes" in a name are not parameter counts: use the default
METHOD_FACTOR = {"vera": 0.05, "ia3": 0.05, "ln_tuning": 0.05, "dora": 1.1, "adalora": 1.5}
_SIZE_RE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z])")
_MB = 1024 * 1024


def model_parameters(name: str) -> float:
    if name.startswith("builtin:"):
        return BUILTIN_PARAMS
    match = _SIZE_RE.search(name.rsplit("/", 1)[-1])
    billions = float(match.group(1)) if match else None
    # A "size" of thousands of billions is not a model size (e.g. a long number in a path).
    return billions * 1e9 if billions is not None and 0 < billions <= MAX_BILLIONS else DEFAULT_PARAMS


def estimate_mb(config: dict[str, Any]) -> int:
    """The GPU memory (MiB) a job with this resolved config needs; the override wins."""
    override = config.get("resources", {}).get("memory_mb")
    if override:
        return int(override)
    model, peft, train = config["model"], config["peft"], config["training"]
    params = model_parameters(model["model_name_or_path"])
    weight_bytes = 4 if model.get("dtype") == "float32" else 2
    weights = params * weight_bytes
    trainable = params * 0.01 * peft["r"] / 16 * METHOD_FACTOR.get(peft["type"], 1.0)
    if peft["type"] == "full":
        # Every parameter trains in float32 (weights + grad + two AdamW moments = 16 bytes)
        # and replaces the half-precision weights; a reference model (beta > 0) adds one copy.
        trainable = params
        weights = params * 4 * (2 if train.get("beta") else 1)
    optimizer = trainable * 16
    tokens = train["per_device_train_batch_size"] * (train["max_prompt_length"] + train["max_completion_length"])
    hidden_x_layers = 30_000 * (params / 1e9) ** (2 / 3)
    activations = tokens * hidden_x_layers * 34 * 2
    if train.get("gradient_checkpointing"):
        activations /= 4
    vocab = BUILTIN_VOCAB if model["model_name_or_path"].startswith("builtin:") else VOCAB
    logits = tokens * vocab * 4
    total = (weights + optimizer + activations + logits) * SAFETY / _MB + CUDA_CONTEXT_MB
    return int(round(total))


# Beyond this a model trains far too slowly on a CPU to be what the user meant (a 1.5B
# model's 1000 GRPO steps would take weeks): `perl run` asks for --cpu first.
CPU_MAX_PARAMS = 2e8


def too_big_for_cpu(experiments: list[Any]) -> list[str]:
    """Names of the experiments whose model is too large to train on a CPU unasked."""
    return [e.name for e in experiments if model_parameters(e.model) > CPU_MAX_PARAMS]
