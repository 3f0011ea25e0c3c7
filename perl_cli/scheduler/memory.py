"""How much GPU memory an experiment needs: an estimate from the model's shape, checked by a bench.

The scheduler places a job on a GPU only when this estimate fits in the GPU's free
memory (minus what recently started jobs have reserved). When the estimate is wrong
for a suite, set it outright: ``[suites.X.base.resources] memory_mb = 30000``
(or ``--set resources.memory_mb=30000``).

The model's shape (hidden H, intermediate I, layers L, KV width, vocabulary V, parameters
P) comes from its config.json (architectures.model_shape: a local directory, the hub
cache, or architectures.toml); only a model with no known config falls back to a guess
from its name ("...-1.5B"; an unknown name counts as 1.5B) with a shape scaled from it.
With B = per-device batch (completions), T = prompt + completion tokens, C = completion
tokens, G = B x gradient accumulation (TRL generates a whole optimizer step's completions
at once), w = bytes per weight (2 for bf16/fp16/auto, 4 for float32):

    weights      = P x w
    optimizer    = trainable x 16 B       (fp32 adapter weight, gradient, two AdamW moments;
                                          trainable counted from the shape and peft.r; full
                                          fine-tuning: weights P x 4 (float32, + P x w for a
                                          reference model when beta > 0), optimizer P x 12)
    activations  = B x T x L x (ACT_H x H + ACT_I x I) bytes        (what autograd keeps per
                   token and layer, per method, measured: ACT below, docs/memory.md); with
                   gradient checkpointing B x T x L x H x w plus one layer's worth;
                   DoRA adds L x (adapted weight elements) x 4 bytes (its combined weights);
                   HRA adds L x sum over modules of ((r + 1) x in^2 + 2 x out x in) x 2 bytes
                   (its chain of r in x in reflections and the rebuilt weight, per forward)
    logits       = min(B x C, 4096) x min(V, 32768) x w + B x C x H x 4
                   (TRL >= 1.16 scores completions through a chunked LM head: one
                   4096-token x 32768-vocabulary tile and the fp32 gradient of the last hidden
                   states; the full B x T x V logits are never materialised)
    generation   = G x T x L x 2 x KV x w (KV cache) + G x prompt x 3 x I x w (one layer's
                   MLP during prefill) + G x V x 4 x 2 (the last position's logits, sampled)
    total        = (weights + optimizer + max(activations + logits, generation)) x 1.2
                   + 1,024 MiB (CUDA context)

Generation runs under no_grad before the loss's forward, so its memory and the training
activations are not held at the same time.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from perl_cli.architectures import Shape, model_shape

CUDA_CONTEXT_MB = 1024
SAFETY = 1.2
VOCAB = 152_064  # a Qwen2 vocabulary, for a model whose config is unknown
DEFAULT_PARAMS = 1.5e9
BUILTIN_PARAMS = 1e6
MAX_BILLIONS = 10_000  # larger "sizes" in a name are not parameter counts: use the default
_SIZE_RE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z])")
_MB = 1024 * 1024

# Bytes autograd keeps per token and layer for the loss's backward, as (ACT_H x hidden +
# ACT_I x intermediate), by method: measured with saved-tensor hooks on one layer of the
# 1.5B shape, bf16 base under bf16 autocast as TRL runs on a GPU (docs/memory.md). Adapters
# keep fp32 copies of their inputs; IA3/MiSS/LN tuning little more than the frozen base.
ACT = {
    "lora": (41.0, 12.5), "adalora": (55.0, 17.0), "vera": (36.0, 14.5), "ia3": (27.5, 10.5),
    "miss": (27.5, 10.5), "ln_tuning": (8.0, 6.0), "full": (29.0, 8.0),
}
# DoRA also keeps, per forward and whatever the token count, the combined weight W + s·BA of
# every adapted module for its norm's backward: about two bf16 copies (4 bytes per weight
# element; 8 on a CPU without autocast, measured: 9.7 GB at 64 tokens on the 1.5B shape).
DORA_BYTES_PER_WEIGHT = 4.0
# HRA (peft's HRALinear) rebuilds each adapted weight on every forward: the product of r
# Householder reflections I - 2uu^T, one in x in matrix per reflection, each kept by autograd
# for u's gradient (r + 1 in x in matrices with the identity it starts from), then W times
# that product (W's cast copy and the product, out x in each, kept for the backward). At
# down_proj's in = 8960 that is r + 1 matrices of 80M elements per layer: HRA's activations are
# weight-sized and dominate everything else (bench/real_shape_memory.py, docs/memory.md).
# Bytes per element: 2 under bf16 autocast (as on a GPU); 4 on a CPU without autocast.
HRA_BYTES_PER_ELEMENT = 2.0
# TRL's chunked LM head (trl.kernels.chunked_logprob): tokens x vocabulary per tile.
LOGIT_TILE_TOKENS = 4096
LOGIT_TILE_VOCAB = 32_768
FULL_METHODS = {"full"}


@dataclass(frozen=True)
class Estimate:
    """The terms of the estimate in MiB, and the total the scheduler reserves."""

    weights: float
    optimizer: float
    activations: float
    logits: float
    generation: float
    source: str
    parameters: int
    trainable: int

    @property
    def peak(self) -> float:
        """weights + optimizer + the larger of training and generation (MiB, no safety, no context)."""
        return self.weights + self.optimizer + max(self.activations + self.logits, self.generation)

    @property
    def total_mb(self) -> int:
        return int(round(self.peak * SAFETY + CUDA_CONTEXT_MB))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "peak": self.peak, "total_mb": self.total_mb}


def guessed_parameters(name: str) -> float:
    """The parameter count a model's name suggests ("...-1.5B"); an unknown name counts as 1.5B."""
    if name.startswith("builtin:"):
        return BUILTIN_PARAMS
    match = _SIZE_RE.search(name.rsplit("/", 1)[-1])
    billions = float(match.group(1)) if match else None
    # A "size" of thousands of billions is not a model size (e.g. a long number in a path).
    return billions * 1e9 if billions is not None and 0 < billions <= MAX_BILLIONS else DEFAULT_PARAMS


def _builtin_shape(name: str) -> Shape | None:
    """The shape of a built-in tiny model, from its recipe (models.py imports no torch)."""
    from perl_cli.models import CHARSET, builtin_recipe

    recipe = builtin_recipe(name)
    if recipe is None:
        return None
    return Shape(
        hidden_size=recipe.hidden_size, intermediate_size=recipe.ffn_size, num_layers=recipe.num_layers,
        num_heads=recipe.num_heads, num_kv_heads=recipe.num_kv_heads, head_dim=recipe.hidden_size // recipe.num_heads,
        vocab_size=len(CHARSET) + 2, tied_embeddings=True, qkv_bias=True,
    )


def _guessed_shape(params: float) -> Shape:
    """A Qwen2-like shape of about `params` parameters, for a model whose config is unknown."""
    layers = 28
    hidden_x_layers = 30_000 * (params / 1e9) ** (2 / 3)  # 1.5B: ~39,000 (real: 1536 x 28 = 43,008)
    hidden = max(64, int(hidden_x_layers / layers) // 64 * 64)
    return Shape(
        hidden_size=hidden, intermediate_size=int(hidden * 35 / 6) // 64 * 64, num_layers=layers,
        num_heads=max(1, hidden // 128), num_kv_heads=max(1, hidden // 128 // 6), head_dim=128,
        vocab_size=VOCAB, tied_embeddings=False, qkv_bias=True,
    )


def resolve_shape(name: str) -> tuple[str, Shape, int]:
    """(where the shape came from, shape, parameter count) of model `name`."""
    if name.startswith("builtin:") and not name.startswith("builtin:shape:"):
        shape = _builtin_shape(name)
        if shape is not None:
            return "built-in recipe", shape, shape.parameters()
    found = model_shape(name)
    if found is not None:
        return found[0], found[1], found[1].parameters()
    params = guessed_parameters(name)
    return "guessed from the name", _guessed_shape(params), int(params)


def model_parameters(name: str) -> float:
    """Parameters of model `name`: from its config.json when one is known, else guessed from the name."""
    return float(resolve_shape(name)[2])


def _targeted(shape: Shape, peft: dict[str, Any]) -> dict[str, tuple[int, int]]:
    modules = shape.linear_shapes()
    targets = peft.get("target_modules", "all-linear")
    if isinstance(targets, list):
        chosen = {m: s for m, s in modules.items() if any(str(t).split(".")[-1] == m for t in targets)}
        return chosen or modules  # names of another architecture: count every module
    return modules


def trainable_parameters(shape: Shape, peft: dict[str, Any], max_steps: int | None = None) -> int:
    """Parameters the optimizer updates, from the shape (every layer; peft.layers is not applied)."""
    method = str(peft.get("type", "lora"))
    layers = shape.num_layers
    if method in FULL_METHODS:
        return shape.parameters()
    if method == "ln_tuning":
        return (2 * layers + 1) * shape.hidden_size
    modules = _targeted(shape, peft)
    r = int(peft.get("r") or 16)
    if method == "ia3":  # keys, values (outputs) and the down projection (input)
        lin = shape.linear_shapes()
        return layers * (lin["k_proj"][1] + lin["v_proj"][1] + lin["down_proj"][0])
    if method == "vera":  # lambda_d (r) and lambda_b (out) per module
        return layers * sum(r + out for _, out in modules.values())
    if method == "hra":  # r Householder vectors of length `in` per module
        return layers * sum(r * i for i, _ in modules.values())
    if method == "miss":  # one shared r x out block per module
        return layers * sum(r * out for _, out in modules.values())
    if method == "adalora":
        from perl_cli.methods import adalora_schedule

        r = adalora_schedule(peft, int(max_steps or 1000))["init_r"]
        return layers * sum(r * (i + o) + r for i, o in modules.values())
    lora = layers * sum(r * (i + o) for i, o in modules.values())
    if method == "dora":
        lora += layers * sum(o for _, o in modules.values())
    return lora


def hra_elements(shape: Shape, peft: dict[str, Any]) -> int:
    """Elements HRA keeps for the backward per layer and forward: (r + 1) x in^2 + 2 x out x in per module."""
    r = int(peft.get("r") or 16)
    return sum((r + 1) * i * i + 2 * o * i for i, o in _targeted(shape, peft).values())


def estimate(config: dict[str, Any], *, autocast: bool = True) -> Estimate:
    """Every term of the memory estimate of a resolved config (module docstring).

    `autocast=False` counts DoRA's and HRA's weight-sized terms in float32, as a CPU run
    without autocast keeps them (the bench compares its CPU measurements with that)."""
    model, peft, train = config["model"], config["peft"], config["training"]
    name = str(model["model_name_or_path"])
    source, shape, params = resolve_shape(name)
    w = 4 if model.get("dtype") == "float32" else 2
    method = str(peft.get("type", "lora"))
    trainable = trainable_parameters(shape, peft, train.get("max_steps"))
    optimizer = trainable * 16
    weights = params * w
    if method in FULL_METHODS:
        # Full fine-tuning trains every parameter in float32 (methods.full_model, like every
        # adapter: docs/fairness.md): fp32 weights replace the half-precision ones, plus an fp32
        # gradient and two AdamW moments (12 B); a reference model (beta > 0) keeps the original.
        weights = params * 4 + (params * w if float(train.get("beta") or 0) > 0 else 0)
        optimizer = trainable * 12

    batch = int(train["per_device_train_batch_size"])
    prompt, completion = int(train["max_prompt_length"]), int(train["max_completion_length"])
    tokens = batch * (prompt + completion)
    h, i, layers = shape.hidden_size, shape.intermediate_size, shape.num_layers
    act_h, act_i = ACT.get(method, ACT["lora"])
    per_layer = act_h * h + act_i * i
    if train.get("gradient_checkpointing"):
        activations = tokens * (layers * h * w + per_layer)
    else:
        activations = tokens * layers * per_layer
    wide = 1.0 if autocast else 2.0  # float32 instead of bf16 copies
    if method == "dora":
        weights_adapted = sum(a * b for a, b in _targeted(shape, peft).values())
        activations += (1 if train.get("gradient_checkpointing") else layers) * weights_adapted * DORA_BYTES_PER_WEIGHT * wide
    if method == "hra":
        activations += (1 if train.get("gradient_checkpointing") else layers) * hra_elements(shape, peft) * HRA_BYTES_PER_ELEMENT * wide
    scored = batch * completion
    logits = min(scored, LOGIT_TILE_TOKENS) * min(shape.vocab_size, LOGIT_TILE_VOCAB) * w + scored * h * 4

    generations = batch * int(train.get("gradient_accumulation_steps") or 1)
    kv_cache = generations * (prompt + completion) * layers * 2 * shape.kv_width * w
    prefill = generations * prompt * 3 * i * w
    sampling = generations * shape.vocab_size * 4 * 2
    generation = kv_cache + prefill + sampling
    return Estimate(
        weights=weights / _MB, optimizer=optimizer / _MB, activations=activations / _MB, logits=logits / _MB,
        generation=generation / _MB, source=source, parameters=int(params), trainable=int(trainable),
    )


def estimate_mb(config: dict[str, Any]) -> int:
    """The GPU memory (MiB) a job with this resolved config needs; the override wins."""
    override = config.get("resources", {}).get("memory_mb")
    if override:
        return int(override)
    return estimate(config).total_mb


# Beyond this a model trains far too slowly on a CPU to be what the user meant (a 1.5B
# model's 1000 GRPO steps would take weeks): `perl run` asks for --cpu first.
CPU_MAX_PARAMS = 2e8


def too_big_for_cpu(experiments: list[Any]) -> list[str]:
    """Names of the experiments whose model is too large to train on a CPU unasked."""
    return [e.name for e in experiments if model_parameters(e.model) > CPU_MAX_PARAMS]
