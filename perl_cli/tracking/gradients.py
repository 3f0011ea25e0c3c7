"""Per-layer gradient norms of the adapter's parameters, split by parameter kind.

Read in `on_pre_optimizer_step`: gradients are complete there (after accumulation) and
gone by `on_step_end` (docs/stack.md).
"""

from __future__ import annotations

import torch

from perl_cli.tracking.spectral import short_name

# Parameter-name tokens that say which part of an adapter a parameter is.
KINDS = {
    "lora_A": "A",
    "lora_B": "B",
    "lora_E": "E",
    "lora_magnitude_vector": "magnitude",
    "vera_lambda_b": "lambda_b",
    "vera_lambda_d": "lambda_d",
    "ia3_l": "ia3",
    "miss_block": "miss",
}


def split_name(param_name: str) -> tuple[str, str]:
    """'...layers.0.self_attn.q_proj.lora_A.default.weight' → ('layers.0.self_attn.q_proj', 'A')."""
    parts = param_name.split(".")
    for i, token in enumerate(parts):
        if token in KINDS:
            return short_name(".".join(parts[:i])), KINDS[token]
    module = [p for p in parts if p not in ("default", "weight", "bias", "modules_to_save")]
    return short_name(".".join(module[:-1])) or param_name, module[-1] if module else "param"


def gradient_norms(model: torch.nn.Module) -> dict[str, dict[str, float]]:
    """{module: {kind: L2 norm of its gradient}} over trainable parameters that have one."""
    norms: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not param.requires_grad or param.grad is None:
                continue
            module, kind = split_name(name)
            squared = float(param.grad.detach().float().pow(2).sum())
            slot = norms.setdefault(module, {})
            slot[kind] = (slot.get(kind, 0.0) ** 2 + squared) ** 0.5
    return norms
