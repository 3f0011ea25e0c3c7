"""ICA masks on the MLP neurons: which neurons, computed once per experiment, applied by hooks.

The mask (settings: the `ica` section of experiments.toml):

1. run the frozen base model over `sample_prompts` training prompts (drawn with the
   experiment's seed) and capture each decoder layer's MLP intermediate activations,
   the input of its down projection, at every real (non-padding) token;
2. standardise each neuron over those tokens and run scikit-learn's FastICA with
   `components` components per layer;
3. score each neuron by its largest absolute mixing weight over the components and
   select the neurons scoring at or above the `percentile`-th percentile of the layer.

Mode `key` zeroes the selected neurons' contribution (their input to the down
projection, so the base weight and any adapter on it both see zero), mode `complement`
keeps only them; the hooks stay on the model for training and the final evaluation.
The mask is saved as `ica_mask.json` in the experiment directory with the settings that
produced it and its computation time, and reused when a resumed run finds it.

`ica_problems` is plan-time and pure Python; torch, numpy and scikit-learn are imported
inside the functions that compute or apply a mask, so read-only commands never load them.
"""

from __future__ import annotations

import random
import time
import warnings
from pathlib import Path
from typing import Any

from perl_cli import state

MASK_FILE = "ica_mask.json"
OFF = "off"
MODES = ("key", "complement")
# Activations held in memory at once while capturing (float32 tokens x neurons x layers).
CAPTURE_BUDGET_BYTES = 1 << 30
CAPTURE_BATCH = 8
FASTICA_MAX_ITER = 1000


class MaskError(ValueError):
    """A mask the model or the data cannot give; the message says how to fix it."""


# --- plan time ------------------------------------------------------------------------


def ica_problems(config: dict[str, Any]) -> list[str]:
    """Problems of the `ica` section with the rest of one resolved config."""
    ica = config.get("ica") or {}
    if ica.get("mode", OFF) == OFF:
        return []
    problems = []
    if config["training"].get("use_vllm"):
        problems.append(
            "ica.mode = key/complement masks neurons with hooks on the trained model, which vLLM's generation "
            'would not apply: set training.use_vllm = false or ica.mode = "off"'
        )
    from perl_cli.models import builtin_recipe

    name = str(config["model"]["model_name_or_path"])
    recipe = builtin_recipe(name)
    if recipe is not None and ica.get("components", 0) > recipe.ffn_size:
        problems.append(
            f"ica.components = {ica['components']} exceeds the {recipe.ffn_size} MLP neurons per layer of {name}"
        )
    return problems


def mode(config: dict[str, Any]) -> str:
    return (config.get("ica") or {}).get("mode", OFF)


def mask_settings(config: dict[str, Any]) -> dict[str, Any]:
    """Everything that determines the mask (not the mode: it only decides how it is applied)."""
    ica = config["ica"]
    return {
        "model": config["model"]["model_name_or_path"],
        "components": int(ica["components"]),
        "percentile": float(ica["percentile"]),
        "sample_prompts": int(ica["sample_prompts"]),
        "seed": int(config["common"]["seed"]),
    }


# --- the mask file --------------------------------------------------------------------


def save_mask(path: Path, mask: dict[str, Any]) -> None:
    state.atomic_write_json(path, mask)


def load_mask(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The saved mask when it exists, is well-formed and was made with `settings`; else None."""
    data = state.read_json(path)
    if not isinstance(data, dict) or data.get("settings") != settings:
        return None
    layers, size = data.get("layers"), data.get("intermediate_size")
    if not isinstance(layers, dict) or not isinstance(size, int) or size < 1:
        return None
    for neurons in layers.values():
        if not isinstance(neurons, list) or not all(isinstance(n, int) and 0 <= n < size for n in neurons):
            return None
    return data


# --- computing it -----------------------------------------------------------------------


def sample(items: list, count: int, seed: int) -> list:
    """`count` items drawn without replacement with `seed` (all of them when there are fewer)."""
    if count >= len(items):
        return list(items)
    return random.Random(seed).sample(items, count)


def down_projections(model: Any) -> dict[int, Any]:
    """layer index -> the module each layer's MLP calls as its down projection.

    On a peft model that is the adapter's wrapper (".mlp.down_proj"), not the base layer
    inside it, so a hook on it reaches the base weight and the adapter alike.
    """
    from perl_cli.placement import layer_index

    found = {}
    for name, module in model.named_modules():
        index = layer_index(name)
        if index is not None and name.endswith(".mlp.down_proj"):
            found[index] = module
    if not found:
        raise MaskError("ica: the model has no <layer>.mlp.down_proj modules to mask; use ica.mode = \"off\"")
    return dict(sorted(found.items()))


def capture_activations(model: Any, batches: list[dict[str, Any]], layers: list[int]) -> dict[int, Any]:
    """Each of `layers`' down-projection inputs at the real tokens of `batches`: (tokens, neurons) arrays."""
    import numpy as np
    import torch

    modules = down_projections(model)
    captured: dict[int, list] = {i: [] for i in layers}
    current: dict[str, Any] = {}

    def hook(index: int):
        def grab(module: Any, args: tuple) -> None:
            keep = current["mask"]
            captured[index].append(args[0][keep].detach().float().cpu().numpy())

        return grab

    handles = [modules[i].register_forward_pre_hook(hook(i)) for i in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                current["mask"] = batch["attention_mask"].bool()
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {i: np.concatenate(parts, axis=0) for i, parts in captured.items()}


def select_neurons(activations: Any, components: int, percentile: float, seed: int) -> tuple[list[int], bool]:
    """(selected neuron indices, whether FastICA converged) for one layer's (tokens, neurons) activations."""
    import numpy as np
    from sklearn.decomposition import FastICA
    from sklearn.exceptions import ConvergenceWarning

    tokens, neurons = activations.shape
    if components > min(tokens, neurons):
        raise MaskError(
            f"ica.components = {components} needs at least as many tokens and neurons; the sample has "
            f"{tokens} tokens of {neurons} neurons: lower ica.components or raise ica.sample_prompts"
        )
    x = activations.astype(np.float64)
    std = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)  # a silent neuron stays 0, not NaN
    ica = FastICA(n_components=components, whiten="unit-variance", random_state=seed, max_iter=FASTICA_MAX_ITER)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        ica.fit(x)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    scores = np.abs(ica.mixing_).max(axis=1)
    threshold = np.percentile(scores, percentile)
    return [int(i) for i in np.flatnonzero(scores >= threshold)], converged


def compute_mask(
    model: Any, tokenizer: Any, prompts: list[str], settings: dict[str, Any], *, add_special_tokens: bool = True
) -> dict[str, Any]:
    """The mask of `model` (the frozen base) over `prompts`, with its settings and computation time."""
    started = time.time()
    batches = []
    for i in range(0, len(prompts), CAPTURE_BATCH):
        enc = tokenizer(prompts[i : i + CAPTURE_BATCH], return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
        batches.append({k: v.to(model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")})
    tokens = int(sum(int(b["attention_mask"].sum()) for b in batches))
    modules = down_projections(model)
    size = int(modules[next(iter(modules))].in_features)
    per_pass = max(1, CAPTURE_BUDGET_BYTES // max(1, tokens * size * 4))
    indices = list(modules)
    layers: dict[str, list[int]] = {}
    unconverged = []
    for start in range(0, len(indices), per_pass):
        group = indices[start : start + per_pass]
        for index, acts in capture_activations(model, batches, group).items():
            selected, converged = select_neurons(acts, settings["components"], settings["percentile"], settings["seed"])
            layers[str(index)] = selected
            if not converged:
                unconverged.append(index)
    return {
        "settings": settings,
        "intermediate_size": size,
        "prompts": len(prompts),
        "tokens": tokens,
        "layers": layers,
        "selected": sum(len(v) for v in layers.values()),
        "unconverged_layers": unconverged,
        "seconds": time.time() - started,
    }


# --- applying it --------------------------------------------------------------------------


def keep_vector(neurons: list[int], size: int, how: str) -> Any:
    """1 for the neurons that keep their contribution, 0 for the masked ones."""
    import torch

    selected = torch.zeros(size, dtype=torch.bool)
    selected[neurons] = True
    if how not in MODES:
        raise MaskError(f"ica.mode {how!r} must be one of {', '.join(MODES)}")
    return (~selected if how == "key" else selected).float()


def apply_mask(model: Any, mask: dict[str, Any], how: str) -> list[Any]:
    """Mask each layer's down-projection input per `how` (key | complement); the hook handles."""
    modules = down_projections(model)
    missing = sorted(set(map(int, mask["layers"])) ^ set(modules))
    if missing:
        raise MaskError(f"ica: the saved mask and the model disagree on layers {missing}; delete {MASK_FILE} to recompute it")
    handles = []
    for index, module in modules.items():
        keep = keep_vector(mask["layers"][str(index)], int(mask["intermediate_size"]), how)
        handles.append(module.register_forward_pre_hook(_masking_hook(keep)))
    return handles


def _masking_hook(keep: Any):
    def hook(module: Any, args: tuple) -> tuple:
        x = args[0]
        return (x * keep.to(device=x.device, dtype=x.dtype), *args[1:])

    return hook
