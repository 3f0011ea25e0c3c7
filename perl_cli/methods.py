"""The PEFT method registry: name -> adapter config, optimizer, init and save rules.

Names are the ``peft.type`` values of experiments.toml (contract). Everything that
needs torch or peft is imported inside functions: `validate_method_settings` runs at
plan time, where importing torch would cost seconds.

Method notes (docs/fairness.md has the rules that keep the methods comparable):

* ``rslora`` is LoRA with scaling alpha/sqrt(r); ``dora`` adds a learned magnitude.
* ``pissa`` initialises A, B from the r *largest* singular triplets of W and trains on
  the residual; ``milora`` (not in peft) is its mirror, from the r *smallest*
  triplets: B = U_r sqrt(S_r/s), A = sqrt(S_r/s) V_rᵀ, W <- W - s·BA with s the LoRA
  scaling. Both change the base weights, so their final adapter is saved with peft's
  weight conversion (a rank-2r LoRA that applies to the original base). Their adapter
  *is* part of W, so dropout on it would change the model: they use dropout 0 unless
  an experiment sets it for them explicitly (`METHOD_DEFAULTS`, docs/fairness.md).
* ``adalora`` reallocates rank during training; the worker calls
  ``update_and_allocate`` every optimizer step (TRL never does), and adds peft's
  orthogonality regulariser to the GRPO loss (`adalora_orthogonality`), which peft
  applies in the model's forward and TRL's loss never sees.
* ``lora_plus`` trains B with ``lora_plus_ratio`` times A's learning rate; ``lora_fa``
  freezes A and projects B's gradient (peft's LoRA-FA optimizer).
* ``vera``, ``miss`` take r, dropout and target modules, but no alpha.
* ``ia3`` and ``ln_tuning`` have no rank; "all-linear" means each method's standard
  placement (IA3: peft's default for the architecture, e.g. q/v and the FFN down
  projection on Qwen2; LN tuning: the norms).
* ``hra`` (Householder reflection adaptation, peft's ``HRAConfig``) multiplies each
  weight by r Householder reflections; it takes r and target modules, no alpha and no
  dropout.

Upstream's quirks (docs/recipes.md) are switches of the peft section, all off by default:
``adapter_dtype`` (base/bfloat16 adapters), ``dropout_on_svd_methods`` (PiSSA/MiLoRA
take the shared dropout), ``adalora_reallocation = false`` (AdaLoRA as TRL runs it:
no reallocation, no orthogonality term) and ``peft_default_targets`` (VeRA, IA3, MiSS,
HRA on peft's default modules).

Every method trains float32 tensors, whatever the base dtype (peft's default for
adapters; `build_adapter` enforces it for MiLoRA and LN tuning, docs/fairness.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from perl_cli.placement import ALL_LINEAR, placement_problems, resolve_targets

# Modules IA3 treats as feed-forward (it scales their input rather than their output).
_FEEDFORWARD_NAMES = ("down_proj", "fc2", "w2", "dense_4h_to_h", "c_proj")


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    build_config: Callable[[dict[str, Any], dict[str, Any]], Any]
    """(peft section, training section) -> a peft config."""
    optimizer: Callable[[Any, dict[str, Any], dict[str, Any]], Any] | None = None
    """(peft model, peft section, training section) -> optimizer; None = Trainer's AdamW."""
    custom_init: Callable[[Any, dict[str, Any]], None] | None = None
    """Runs on the PeftModel right after it is built."""
    needs_weight_conversion_on_save: bool = False
    uses_rank: bool = True
    uses_alpha: bool = True
    uses_dropout: bool = True
    reallocates_rank: bool = False
    regulariser: Callable[[Any], Any] | None = None
    """peft model -> scalar tensor added to the loss of every optimizer step."""
    full: bool = False
    """Full fine-tuning: no adapter; every parameter trains and the checkpoint is the whole model."""


# Settings a method uses instead of the shared ones, unless an experiment sets them for
# it explicitly (a matrix value, a `when` rule, its own table, --set); applied by
# config.expand so that config.json shows the value actually used.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    # The adapter holds the principal/minor part of W: dropping it at random would make
    # the model differ from the base at step 0, and TRL samples rollouts in train mode.
    "pissa": {"peft.lora_dropout": 0.0},
    "milora": {"peft.lora_dropout": 0.0},
    # Every weight moves: the usual RLVR full fine-tuning rate (1e-6, as in DAPO and the
    # PeRL paper), a tenth of the adapters' 1e-5.
    "full": {"training.learning_rate": 1e-6},
}

# Learning rate of the methods with few trainable parameters, as a multiple of the shared
# `training.learning_rate`, unless an experiment sets the rate for the method explicitly
# (like METHOD_DEFAULTS). Sources in docs/recipes.md ("Learning rates"):
# VeRA: its paper (Kopiczko et al., ICLR 2024) tunes it about 10x LoRA's rate on the same
# tasks, the ratio PeRL's suites used already (core-1.5b 1e-4 vs 1e-5, demo 5e-3 vs 5e-4).
# IA3: measured on the demo (suite ia3-lr): 10x the shared rate gains +0.044 ± 0.007 over the
# base and beats 1x (+0.007 ± 0.004) distinguishably; 100x lost 9 points on one of two seeds.
# (T-Few trains the vectors at 3e-3 but LoRA at 3e-3 too: no within-paper ratio.) LN tuning: measured
# on the demo (suite ln-tuning-lr, issue 21): at 10x the shared rate it gains over the base
# (+0.021 ± 0.008, paired) and beats 1x (+0.003 ± 0.004) distinguishably; 100x was no better
# and noisier. (T-Few's configs train layer norms at 3e-4, a tenth of its IA3/LoRA 3e-3: a
# supervised few-shot setting, not RL; docs/recipes.md.)
METHOD_LR_SCALE: dict[str, float] = {"vera": 10.0, "ia3": 10.0, "ln_tuning": 10.0}

# Methods whose upstream placement is peft's default for the architecture
# (`peft.peft_default_targets = true`).
PEFT_DEFAULT_PLACEMENT = ("vera", "ia3", "miss", "hra")


def method_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """{"section.key": value} a method uses unless the experiment sets the key for it itself.

    METHOD_DEFAULTS (PiSSA/MiLoRA dropout 0, unless `peft.dropout_on_svd_methods`) and
    METHOD_LR_SCALE (the shared learning rate scaled for the method).
    """
    peft = config.get("peft", {})
    method = peft.get("type")
    out = dict(METHOD_DEFAULTS.get(method, {}))
    if peft.get("dropout_on_svd_methods"):
        out.pop("peft.lora_dropout", None)
    scale = METHOD_LR_SCALE.get(method)
    lr = config.get("training", {}).get("learning_rate")
    if scale is not None and _is_number(lr):
        out["training.learning_rate"] = float(lr) * scale
    return out


# --- shared pieces -------------------------------------------------------------------


def _targets(peft: dict[str, Any]) -> str | list[str] | None:
    """peft's target_modules; None = peft's default for the architecture (peft_default_targets)."""
    targets = peft.get("target_modules", ALL_LINEAR)
    if targets is None:
        return None
    return ALL_LINEAR if targets == ALL_LINEAR else list(targets)


def _lora_kwargs(peft: dict[str, Any]) -> dict[str, Any]:
    return {
        "r": int(peft["r"]),
        "lora_alpha": float(peft["lora_alpha"]),
        "lora_dropout": float(peft["lora_dropout"]),
        "target_modules": _targets(peft),
        "task_type": "CAUSAL_LM",
    }


def _lora(**extra: Any) -> Callable[[dict[str, Any], dict[str, Any]], Any]:
    def build(peft: dict[str, Any], training: dict[str, Any]) -> Any:
        from peft import LoraConfig

        return LoraConfig(**_lora_kwargs(peft), **extra)

    return build


def _pissa_config(peft: dict[str, Any], training: dict[str, Any]) -> Any:
    from peft import LoraConfig

    niter = int(peft.get("pissa_niter", 16))
    init = "pissa" if niter == 0 else f"pissa_niter_{niter}"
    return LoraConfig(**_lora_kwargs(peft), init_lora_weights=init)


def adalora_schedule(peft: dict[str, Any], max_steps: int) -> dict[str, int]:
    """init_r, tinit, tfinal, deltaT with the config's nulls filled in.

    Defaults: start from 1.5·r, warm up for 10% of the steps, prune ranks until the
    last 20%, reallocating every 1% (at least every step).
    """
    r = int(peft["r"])
    init_r = peft.get("adalora_init_r")
    tinit = peft.get("adalora_tinit")
    tfinal = peft.get("adalora_tfinal")
    delta = peft.get("adalora_delta_t")
    return {
        "init_r": int(init_r) if init_r is not None else max(r, round(1.5 * r)),
        "tinit": int(tinit) if tinit is not None else int(0.1 * max_steps),
        "tfinal": int(tfinal) if tfinal is not None else int(0.2 * max_steps),
        "deltaT": int(delta) if delta is not None else max(1, int(0.01 * max_steps)),
    }


def _adalora_config(peft: dict[str, Any], training: dict[str, Any]) -> Any:
    from peft import AdaLoraConfig

    max_steps = int(training["max_steps"])
    schedule = adalora_schedule(peft, max_steps)
    return AdaLoraConfig(
        target_r=int(peft["r"]),
        init_r=schedule["init_r"],
        tinit=schedule["tinit"],
        tfinal=schedule["tfinal"],
        deltaT=schedule["deltaT"],
        total_step=max_steps,
        lora_alpha=float(peft["lora_alpha"]),
        lora_dropout=float(peft["lora_dropout"]),
        target_modules=_targets(peft),
        task_type="CAUSAL_LM",
    )


def _vera_config(peft: dict[str, Any], training: dict[str, Any]) -> Any:
    from peft import VeraConfig

    return VeraConfig(
        r=int(peft["r"]),
        vera_dropout=float(peft["lora_dropout"]),
        d_initial=float(peft.get("vera_d_initial", 0.1)),
        target_modules=_targets(peft),
        # The shared random projections are saved with the adapter, so it reloads
        # exactly without relying on the PRNG key reproducing them.
        save_projection=True,
        task_type="CAUSAL_LM",
    )


def _miss_config(peft: dict[str, Any], training: dict[str, Any]) -> Any:
    from peft import MissConfig

    return MissConfig(
        r=int(peft["r"]),
        miss_dropout=float(peft["lora_dropout"]),
        target_modules=_targets(peft),
        task_type="CAUSAL_LM",
    )


def _ia3_config(peft: dict[str, Any], training: dict[str, Any]) -> Any:
    from peft import IA3Config

    targets = _targets(peft)
    if targets in (ALL_LINEAR, None):  # peft's per-architecture default placement
        return IA3Config(task_type="CAUSAL_LM")
    feedforward = [t for t in targets if t.split(".")[-1] in _FEEDFORWARD_NAMES]
    return IA3Config(target_modules=targets, feedforward_modules=feedforward, task_type="CAUSAL_LM")


def _hra_config(peft: dict[str, Any], training: dict[str, Any]) -> Any:
    from peft import HRAConfig

    # r even: peft initialises HRA's reflections in pairs so that the product starts at
    # the identity (the model equals the base at step 0); an odd r starts elsewhere.
    return HRAConfig(r=int(peft["r"]), target_modules=_targets(peft), task_type="CAUSAL_LM")


def _slicefine_config(peft: dict[str, Any], training: dict[str, Any]) -> Any:
    from peft import ShiraConfig

    # SliceFine trains a contiguous slice of each weight in place; peft's SHiRA trains a fixed
    # set of a weight's entries as a sparse delta (the same AdamW updates from zero: Adam's step
    # does not depend on where a parameter starts, and PeRL's weight decay is 0 by default).
    # slice_mask makes that set SliceFine's slice, with SHiRA's budget of r·(in + out) entries.
    config = ShiraConfig(r=int(peft["r"]), target_modules=_targets(peft), task_type="CAUSAL_LM")
    config.mask_fn = slice_mask
    return config


def slice_mask(base_layer: Any, r: int, **kwargs: Any) -> Any:
    """SliceFine's slice of a Linear weight (out x in) as SHiRA's 0/1 mask: whole columns from
    column 0 (upstream's slice position), filled top to bottom, r·(in + out) entries (SHiRA's
    fixed budget, LoRA's at the same r), so about 2r columns of a square weight and the first rows
    of one more column when out does not divide it."""
    import torch

    weight = base_layer.weight
    out_f, in_f = weight.shape
    count = r * (in_f + out_f)
    if count > out_f * in_f:
        raise ValueError(f"slicefine: r={r} asks for {count} entries of a {out_f}x{in_f} weight; lower peft.r")
    flat = torch.zeros(in_f * out_f, dtype=weight.dtype, device=weight.device)
    flat[:count] = 1  # column-major: entry k is row k % out, column k // out
    return flat.view(in_f, out_f).T.contiguous()


def _ln_tuning_config(peft: dict[str, Any], training: dict[str, Any]) -> Any:
    from peft import LNTuningConfig

    targets = _targets(peft)
    return LNTuningConfig(target_modules=None if targets == ALL_LINEAR else targets, task_type="CAUSAL_LM")


def _loraplus_optimizer(model: Any, peft: dict[str, Any], training: dict[str, Any]) -> Any:
    import torch
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(
        model,
        torch.optim.AdamW,
        lr=float(training["learning_rate"]),
        loraplus_lr_ratio=float(peft.get("lora_plus_ratio", 16.0)),
        weight_decay=float(training.get("weight_decay", 0.0)),
    )


def _lorafa_optimizer(model: Any, peft: dict[str, Any], training: dict[str, Any]) -> Any:
    from peft.optimizers import create_lorafa_optimizer

    return create_lorafa_optimizer(
        model,
        r=int(peft["r"]),
        lora_alpha=int(peft["lora_alpha"]),
        lr=float(training["learning_rate"]),
        weight_decay=float(training.get("weight_decay", 0.0)),
    )


def milora_init(model: Any, peft: dict[str, Any]) -> None:
    """Re-initialise every LoRA layer from the minor singular components of its weight.

    The r smallest singular triplets come from the eigendecomposition of the smaller
    Gram matrix (WᵀW or WWᵀ) in float64: exact, and far cheaper than a full SVD of a
    large projection (seconds instead of tens of seconds per matrix). Whatever the
    numerical accuracy of the triplets, W - s·BA + s·BA reproduces W, so the model's
    output is unchanged at initialisation.
    """
    import torch

    adapter = "default"
    for module, base in _linear_lora_layers(model, adapter, "milora"):
        weight = base.weight
        w = weight.detach().to(torch.float64)
        r = module.r[adapter]
        scale = module.scaling[adapter]
        u, sigma, v = minor_triplets(w, r)
        root = (sigma / scale).sqrt()
        lora_b = u * root  # (out, r)
        lora_a = root[:, None] * v.T  # (r, in)
        # A and B keep the adapter's dtype (float32, like every method's), not the base's.
        module.lora_A[adapter].weight.data = lora_a.to(module.lora_A[adapter].weight.dtype)
        module.lora_B[adapter].weight.data = lora_b.to(module.lora_B[adapter].weight.dtype)
        weight.data = (w - scale * lora_b @ lora_a).to(weight.dtype)


def _linear_lora_layers(model: Any, adapter: str, method: str) -> Any:
    """(LoRA layer, its nn.Linear base) for every layer carrying `adapter`; other bases are an error."""
    import torch
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if not isinstance(module, LoraLayer) or adapter not in module.lora_A:
            continue
        base = module.get_base_layer()
        if getattr(module, "fan_in_fan_out", False) or not isinstance(base, torch.nn.Linear):
            raise ValueError(f"{method} supports nn.Linear layers only, got {type(base).__name__}")
        yield module, base


def minor_triplets(w: Any, r: int) -> tuple[Any, Any, Any]:
    """(U_r (out, r), S_r (r), V_r (in, r)): the r smallest singular triplets of the thin SVD of `w`
    (float64), from the eigendecomposition of the smaller Gram matrix (WᵀW or WWᵀ): exact, and
    far cheaper than a full SVD of a large projection. The derived side is normalised by its own
    norm (equal to sigma up to rounding)."""
    import torch

    out_f, in_f = w.shape
    if in_f <= out_f:
        evals, evecs = torch.linalg.eigh(w.T @ w)  # ascending: the first r are minor
        v = evecs[:, :r]  # (in, r)
        u = w @ v
        u = u / u.norm(dim=0).clamp_min(1e-30)
    else:
        evals, evecs = torch.linalg.eigh(w @ w.T)
        u = evecs[:, :r]  # (out, r)
        v = w.T @ u
        v = v / v.norm(dim=0).clamp_min(1e-30)
    return u, evals[:r].clamp_min(0).sqrt(), v


def milora_plus_init(model: Any, peft: dict[str, Any]) -> None:
    """MiLoRA+ (upstream's "MiLoRA++"): A = the r minor right singular directions of W (unit rows,
    no singular values), B = 0, and W untouched: the adapter starts as plain LoRA does (BA = 0,
    the model is the base) but its input side points into W's minor subspace from step 0."""
    import torch

    adapter = "default"
    for module, base in _linear_lora_layers(model, adapter, "milora_plus"):
        _, _, v = minor_triplets(base.weight.detach().to(torch.float64), module.r[adapter])
        a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        a.data = v.T.contiguous().to(a.dtype)  # (r, in), orthonormal rows
        b.data = torch.zeros_like(b)


def ln_tuning_in_float32(model: Any, peft: dict[str, Any]) -> None:
    """Train LN tuning's norm copies in float32, like every other method's tensors.

    peft leaves them in the base dtype (it skips adapter autocasting for LN tuning). The
    output is cast back to the input's dtype so that the next layer, in the base dtype,
    gets what it expects.
    """
    import torch
    from peft.tuners.ln_tuning.layer import LNTuningLayer

    for module in model.modules():
        if isinstance(module, LNTuningLayer):
            module.ln_tuning_layers.to(torch.float32)
            module.register_forward_hook(_output_in_input_dtype)


def _output_in_input_dtype(module: Any, args: tuple, output: Any) -> Any:
    return output.to(args[0].dtype) if args and hasattr(args[0], "dtype") else output


def adalora_orthogonality(model: Any) -> Any:
    """peft's AdaLoRA regulariser: orth_reg_weight × mean over P and Q of ‖PPᵀ - I‖_F.

    P are the lora_A (r × in) and Q the lora_B (out × r) matrices of the trained
    adapter; for Q the Gram matrix is QᵀQ. peft adds this in AdaLoraModel.forward when
    the model computes a loss itself, which GRPOTrainer's model never does.
    """
    import torch

    adapter = model.base_model.trainable_adapter_name
    weight = float(model.peft_config[adapter].orth_reg_weight)
    norms = []
    for name, p in model.base_model.model.named_parameters():
        if adapter not in name or not ("lora_A" in name or "lora_B" in name):
            continue
        gram = p @ p.T if "lora_A" in name else p.T @ p
        norms.append(torch.linalg.matrix_norm(gram - torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)))
    if not norms:
        return torch.zeros(())
    return weight * torch.stack(norms).mean()


def build_adapter(model: Any, peft: dict[str, Any], training: dict[str, Any]) -> Any:
    """The PeftModel of `peft.type` on `model`, initialised; its trainable tensors are float32.

    Its placement (`peft.target_modules` × `peft.layers`) is resolved against `model`
    first (placement.resolve_targets; a PlacementError when the model cannot satisfy it).
    """
    from peft import get_peft_model

    method = get_method(peft["type"])
    if method.full:
        return full_model(model)
    if peft.get("peft_default_targets") and method.name in PEFT_DEFAULT_PLACEMENT:
        peft = {**peft, "target_modules": None}  # upstream: peft's default modules
    else:
        peft = {**peft, "target_modules": resolve_targets(model, peft)}
    base_dtype = next(model.parameters()).dtype
    adapted = get_peft_model(model, method.build_config(peft, training))
    if method.custom_init is not None:
        method.custom_init(adapted, peft)
    dtype = adapter_dtype(peft, base_dtype)
    if dtype is not None:
        cast_trainable(adapted, dtype)
    return adapted


def adapter_dtype(peft: dict[str, Any], base_dtype: Any) -> Any:
    """The torch dtype `peft.adapter_dtype` asks for, or None for PeRL's float32 rule."""
    import torch

    choice = peft.get("adapter_dtype", "float32")
    if choice == "float32":
        return None
    return base_dtype if choice == "base" else torch.bfloat16


def cast_trainable(model: Any, dtype: Any) -> None:
    """Upstream's quirk: the trained tensors in `dtype` (e.g. its bf16 MiLoRA adapters).

    Each optimizer step then lands in that precision: with bf16, small updates round
    away (docs/fairness.md measured 79% of MiLoRA's entries unchanged after one step).
    """
    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)


def full_model(model: Any) -> Any:
    """The model itself with every parameter trainable and in float32 (the same precision
    every adapter trains in; docs/fairness.md), for full fine-tuning."""
    import torch

    for param in model.parameters():
        param.requires_grad_(True)
        if param.dtype != torch.float32:
            param.data = param.data.float()
    return model


def _no_adapter(peft: dict[str, Any], training: dict[str, Any]) -> None:
    return None


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("lora", "Low-Rank Adaptation", _lora()),
        Method("dora", "Weight-Decomposed LoRA (magnitude + direction)", _lora(use_dora=True)),
        Method("rslora", "rank-stabilised LoRA (alpha/sqrt(r) scaling)", _lora(use_rslora=True)),
        Method(
            "adalora",
            "adaptive rank allocation (SVD-form LoRA)",
            _adalora_config,
            reallocates_rank=True,
            regulariser=adalora_orthogonality,
        ),
        Method(
            "pissa", "LoRA from the principal singular components", _pissa_config, needs_weight_conversion_on_save=True
        ),
        Method(
            "milora",
            "LoRA from the minor singular components",
            _lora(),
            custom_init=milora_init,
            needs_weight_conversion_on_save=True,
        ),
        Method("milora_plus", "LoRA with A on the minor singular directions, B = 0, base untouched", _lora(),
               custom_init=milora_plus_init),
        Method("slicefine", "train a slice of each base weight (whole columns), no new factors", _slicefine_config,
               uses_alpha=False, uses_dropout=False),
        Method("vera", "shared random projections + scaling vectors", _vera_config, uses_alpha=False),
        Method("lora_plus", "LoRA with a larger learning rate for B", _lora(), optimizer=_loraplus_optimizer),
        Method("lora_fa", "LoRA with A frozen (memory-efficient)", _lora(), optimizer=_lorafa_optimizer),
        Method("miss", "MiSS shard-sharing adapter", _miss_config, uses_alpha=False),
        Method("hra", "Householder reflection adaptation", _hra_config, uses_alpha=False, uses_dropout=False),
        Method("ia3", "learned rescaling vectors", _ia3_config, uses_rank=False, uses_alpha=False, uses_dropout=False),
        Method(
            "ln_tuning",
            "train the layer norms only",
            _ln_tuning_config,
            custom_init=ln_tuning_in_float32,
            uses_rank=False,
            uses_alpha=False,
            uses_dropout=False,
        ),
        Method("full", "full fine-tuning: every parameter, no adapter", _no_adapter, uses_rank=False,
               uses_alpha=False, uses_dropout=False, full=True),
    )
}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown PEFT method {name!r}; known: {', '.join(METHOD_NAMES)}") from None


# --- plan-time validation (pure Python) ----------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_method_settings(
    method: str, peft_section: dict[str, Any], *, max_steps: int | None = None, model_name: str | None = None
) -> list[str]:
    """Human-readable problems with a method's settings; empty when they are usable.

    `max_steps` (the training section's) lets the AdaLoRA schedule be checked too, and
    `model_name` a built-in model's layer count against `peft.layers`.
    """
    if method not in METHODS:
        return [f"peft.type {method!r} is not a known method; choose one of: {', '.join(METHOD_NAMES)}"]
    spec = METHODS[method]
    problems: list[str] = []
    peft = peft_section
    r = peft.get("r")
    if spec.uses_rank and not (_is_int(r) and r >= 1):
        problems.append(f"peft.r must be a positive integer for {method}, got {r!r}")
    alpha = peft.get("lora_alpha")
    if spec.uses_alpha and not (_is_number(alpha) and alpha > 0):
        problems.append(f"peft.lora_alpha must be a positive number for {method}, got {alpha!r}")
    dropout = peft.get("lora_dropout", 0.0)
    if spec.uses_dropout and not (_is_number(dropout) and 0 <= dropout < 1):
        problems.append(f"peft.lora_dropout must be in [0, 1), got {dropout!r}")
    if not spec.full:
        problems += placement_problems(method, peft, model_name)

    if method == "lora_plus":
        ratio = peft.get("lora_plus_ratio")
        if not (_is_number(ratio) and ratio > 0):
            problems.append(f"peft.lora_plus_ratio must be a positive number, got {ratio!r}")
    if method == "lora_fa" and _is_number(alpha) and not float(alpha).is_integer():
        problems.append(f"peft.lora_alpha must be a whole number for lora_fa (peft's optimizer), got {alpha!r}")
    if method == "vera":
        d_initial = peft.get("vera_d_initial")
        if not (_is_number(d_initial) and d_initial > 0):
            problems.append(f"peft.vera_d_initial must be a positive number, got {d_initial!r}")
    if method == "pissa":
        niter = peft.get("pissa_niter")
        if not (_is_int(niter) and niter >= 0):
            problems.append(f"peft.pissa_niter must be an integer >= 0 (0 = exact SVD), got {niter!r}")
    if method == "adalora":
        problems += _validate_adalora(peft, max_steps)
    if method == "hra" and _is_int(r) and r % 2:
        problems.append(
            f"peft.r must be even for hra, got {r}: peft starts HRA's reflections in pairs so that the adapted "
            "model equals the base at step 0"
        )
    if peft.get("peft_default_targets") and method in PEFT_DEFAULT_PLACEMENT and peft.get("layers", "all") != "all":
        problems.append(
            f"peft.peft_default_targets with {method} places the adapter on peft's default modules of every layer; "
            'set peft.layers = "all" or turn peft_default_targets off'
        )
    return problems


def _validate_adalora(peft: dict[str, Any], max_steps: int | None) -> list[str]:
    problems: list[str] = []
    for key in ("adalora_init_r", "adalora_tinit", "adalora_tfinal", "adalora_delta_t"):
        value = peft.get(key)
        minimum = 1 if key in ("adalora_init_r", "adalora_delta_t") else 0
        if value is not None and not (_is_int(value) and value >= minimum):
            problems.append(f"peft.{key} must be null or an integer >= {minimum}, got {value!r}")
    if problems or not _is_int(peft.get("r")):
        return problems
    init_r = peft.get("adalora_init_r")
    if init_r is not None and init_r < peft["r"]:
        problems.append(
            f"peft.adalora_init_r ({init_r}) must be >= peft.r ({peft['r']}): AdaLoRA starts at init_r "
            "and prunes down to r"
        )
    if max_steps is not None and _is_int(max_steps) and max_steps > 0:
        schedule = adalora_schedule(peft, max_steps)
        if schedule["tinit"] + schedule["tfinal"] >= max_steps:
            problems.append(
                f"AdaLoRA needs adalora_tinit + adalora_tfinal < training.max_steps; got "
                f"{schedule['tinit']} + {schedule['tfinal']} >= {max_steps} (no steps left to reallocate ranks)"
            )
        elif max_steps - schedule["tfinal"] < 2:
            # peft scores importance only on steps before max_steps - tfinal; its final
            # masking then finds no scores (KeyError in mask_to_budget, found at the real shape).
            problems.append(
                f"AdaLoRA needs at least one step before its final phase: training.max_steps - adalora_tfinal "
                f"must be >= 2, got {max_steps} - {schedule['tfinal']}; lower adalora_tfinal or add steps"
            )
    return problems
