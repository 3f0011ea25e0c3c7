"""Where adapters go: `peft.target_modules` (all-linear, attention, mlp or names) × `peft.layers`.

Two stages, like every setting:

* plan time, pure Python: `layer_spec_problem` checks a layer spec's syntax (all, a list
  of indices, or a Python-style range string "start:stop[:step]"), `placement_problems`
  what can be known without loading the model (a preset the method cannot take, the
  layer count of a built-in model);
* load time: `resolve_targets(model, peft)` turns targets × layers into what peft is
  given, checked against the loaded model: every named module must exist, every layer
  index must be below the model's layer count. all-linear over all layers is passed to
  peft unchanged (the default placement, as before these settings existed); a layer
  subset becomes the exact list of module names, so that what is adapted is exactly
  what was asked for.

torch is imported inside `resolve_targets` only.
"""

from __future__ import annotations

import re
from typing import Any

ALL_LINEAR = "all-linear"
ALL_LAYERS = "all"
PRESETS: dict[str, tuple[str, ...]] = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}
TARGET_WORDS = (ALL_LINEAR, *PRESETS)
# Methods whose "all-linear" is a placement of their own (IA3: keys, values and the FFN
# down projection; LN tuning: the norms), so presets and layer subsets need names.
OWN_PLACEMENT = ("ia3", "ln_tuning")
# The container of the decoder layers in module names (Qwen2/Llama "layers", GPT-2 "h", ...).
_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)(?:\.|$)")
_RANGE_RE = re.compile(r"^(-?\d+)?:(-?\d+)?(?::(-?\d+)?)?$")
_SPEC_HELP = 'must be "all", a list of layer indices such as [0, 1], or a range such as "0:12", "12:" or "::2"'


class PlacementError(ValueError):
    """A placement the loaded model cannot satisfy; the message says how to fix it."""


# --- plan time ------------------------------------------------------------------------


def layer_spec_problem(spec: Any) -> str | None:
    """Why `spec` is not a valid `peft.layers` value (syntax only), or None."""
    if spec == ALL_LAYERS:
        return None
    if isinstance(spec, list):
        if not spec:
            return "must name at least one layer (or be \"all\")"
        if any(isinstance(i, bool) or not isinstance(i, int) for i in spec):
            return _SPEC_HELP
        if any(i < 0 for i in spec):
            return "layer indices must be >= 0 (a range string such as \"-4:\" counts from the end)"
        if len(set(spec)) != len(spec):
            return "names a layer twice"
        return None
    if isinstance(spec, str):
        match = _RANGE_RE.fullmatch(spec.replace(" ", ""))
        if match is None:
            return _SPEC_HELP
        if match.group(3) is not None and int(match.group(3)) == 0:
            return "a range's step must not be 0"
        return None
    return _SPEC_HELP


def placement_problems(method: str, peft: dict[str, Any], model_name: str | None = None) -> list[str]:
    """What is wrong with targets × layers for `method`, as far as known without the model."""
    targets = peft.get("target_modules", ALL_LINEAR)
    spec = peft.get("layers", ALL_LAYERS)
    problems = []
    if isinstance(targets, str) and targets not in TARGET_WORDS:
        problems.append(
            f"peft.target_modules = {targets!r} must be one of {', '.join(TARGET_WORDS)} or a list of module names"
        )
    elif isinstance(targets, list) and not (targets and all(isinstance(t, str) and t for t in targets)):
        problems.append(f"peft.target_modules must be a non-empty list of module names, got {targets!r}")
    elif method in OWN_PLACEMENT and targets in PRESETS:
        problems.append(
            f"peft.target_modules = {targets!r} does not apply to {method}, which places its own vectors; "
            "give it a list of module names"
        )
    elif method in OWN_PLACEMENT and targets == ALL_LINEAR and spec != ALL_LAYERS:
        problems.append(
            f"peft.layers with {method}: its all-linear is a placement of its own; give peft.target_modules "
            "as a list of module names to place it on some layers"
        )
    spec_problem = layer_spec_problem(spec)
    if spec_problem:
        problems.append(f"peft.layers = {spec!r} {spec_problem}")
    elif model_name is not None:
        layers = builtin_layer_count(model_name)
        if layers is not None:
            try:
                select_layers(spec, layers)
            except PlacementError as exc:
                problems.append(f"{exc} ({model_name})")
    return problems


def builtin_layer_count(model_name: str) -> int | None:
    """The layer count of a built-in (or builtin:shape:) model, known without loading it; None for other models."""
    from perl_cli.architectures import shape_layers
    from perl_cli.models import builtin_recipe

    recipe = builtin_recipe(model_name)
    return recipe.num_layers if recipe is not None else shape_layers(model_name)


def select_layers(spec: Any, num_layers: int) -> list[int]:
    """The layer indices `spec` selects in a model of `num_layers` layers."""
    if spec == ALL_LAYERS:
        return list(range(num_layers))
    if isinstance(spec, list):
        outside = [i for i in spec if not 0 <= i < num_layers]
        if outside:
            raise PlacementError(
                f"peft.layers = {spec!r} names layer {outside[0]}, but the model has {num_layers} layers "
                f"(0 to {num_layers - 1})"
            )
        return sorted(spec)
    match = _RANGE_RE.fullmatch(str(spec).replace(" ", ""))
    if match is None:
        raise PlacementError(f"peft.layers = {spec!r} {_SPEC_HELP}")
    start, stop, step = (int(g) if g not in (None, "") else None for g in match.groups())
    chosen = sorted(range(num_layers)[slice(start, stop, step)])
    if not chosen:
        raise PlacementError(f"peft.layers = {spec!r} selects none of the model's {num_layers} layers")
    return chosen


# --- load time ------------------------------------------------------------------------


def layer_index(module_name: str) -> int | None:
    """The decoder layer a module belongs to ("model.layers.3.mlp.up_proj" -> 3), or None."""
    match = _LAYER_RE.search(module_name)
    return int(match.group(1)) if match else None


def num_layers(model: Any) -> int:
    config = getattr(model, "config", None)
    count = getattr(config, "num_hidden_layers", None)
    if isinstance(count, int) and count > 0:
        return count
    indices = [i for name, _ in model.named_modules() if (i := layer_index(name)) is not None]
    if not indices:
        raise PlacementError("peft.layers: cannot find the decoder layers of this model; use peft.layers = \"all\"")
    return max(indices) + 1


def resolve_targets(model: Any, peft: dict[str, Any]) -> str | list[str]:
    """peft's `target_modules` for this placement on `model` (before it is wrapped)."""
    import torch

    targets = peft.get("target_modules", ALL_LINEAR)
    spec = peft.get("layers", ALL_LAYERS)
    if spec == ALL_LAYERS and (targets == ALL_LINEAR or isinstance(targets, list)):
        if isinstance(targets, list):
            _check_names_exist(model, targets, targets)
            return list(targets)
        return ALL_LINEAR
    chosen = set(select_layers(spec, num_layers(model)))
    modules = list(model.named_modules())
    if targets == ALL_LINEAR:
        wanted = lambda name, module: isinstance(module, torch.nn.Linear)  # noqa: E731
        asked: list[str] = []
    else:
        asked = list(PRESETS[targets]) if isinstance(targets, str) else list(targets)
        wanted = lambda name, module: any(name == t or name.endswith("." + t) for t in asked)  # noqa: E731
        if isinstance(targets, str):
            linear = [n for n, m in modules if isinstance(m, torch.nn.Linear)]
            _check_names_exist(model, asked, targets, among=linear)
            if spec == ALL_LAYERS:
                return asked  # the short names: peft matches them in every layer
        else:
            _check_names_exist(model, asked, targets)
    names = [n for n, m in modules if layer_index(n) in chosen and wanted(n, m)]
    if not names:
        raise PlacementError(f"peft.target_modules = {targets!r} with peft.layers = {spec!r} matches no module of the model")
    missing = sorted(chosen - {layer_index(n) for n in names})
    if missing:
        raise PlacementError(
            f"peft.target_modules = {targets!r} matches nothing in layer(s) {missing} selected by peft.layers = {spec!r}"
        )
    return names


def _check_names_exist(model: Any, asked: list[str], shown: Any, among: list[str] | None = None) -> None:
    names = among if among is not None else [n for n, _ in model.named_modules()]
    absent = [t for t in asked if not any(n == t or n.endswith("." + t) for n in names)]
    if absent:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names if layer_index(n) is not None})
        raise PlacementError(
            f"peft.target_modules = {shown!r}: the model has no module named {', '.join(absent)}; "
            f"its layers have: {', '.join(leaves)}"
        )
