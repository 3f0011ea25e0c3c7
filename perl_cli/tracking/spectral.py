"""Singular values of each adapter's learned weight update, cheaply and exactly.

An adapter's update ΔW of a linear layer is a product L·R of thin factors (rank k ≤ r,
or 2r for PiSSA/MiLoRA, whose update is BA − B₀A₀). Its singular values are those of
the k×k matrix R₁R₂ᵀ, where L = Q₁R₁ and Rᵀ = Q₂R₂ are thin QR factorisations: O((m+n)k²)
instead of the O(mn·min(m,n)) dense SVD that took minutes per step at 1.5B in the
seed's tracker (docs/stack.md: 21 s for one 8960×1536 matrix on this CPU).

Methods whose update is not a low-rank product (IA3's scaling vectors, LN tuning,
MiSS's shared blocks) are skipped; DoRA is tracked through its low-rank direction
update (its magnitude vector is not part of ΔW's low-rank part).
"""

from __future__ import annotations

import math
from typing import Any

import torch

ADAPTER = "default"
TOP_K = 32  # singular values kept per layer and snapshot (the rest only feed the summaries)


def update_factors(module: Any, initial: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(L, R) with the module's adapter update ΔW = L @ R, or None if it has no such form.

    `initial` is the (B₀·s, A₀) pair captured at the start of training for methods that
    move the base weights at initialisation (PiSSA, MiLoRA): their update is BA − B₀A₀.
    """
    if hasattr(module, "vera_lambda_d") and ADAPTER in getattr(module, "vera_lambda_d", {}):
        lam_d = module.vera_lambda_d[ADAPTER].detach().float()
        lam_b = module.vera_lambda_b[ADAPTER].detach().float()
        a = module.vera_A[ADAPTER][:, : module.in_features].detach().float()
        b = module.vera_B[ADAPTER][: module.out_features, :].detach().float()
        return lam_b[:, None] * b, lam_d[:, None] * a
    lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
    if lora_a is None or lora_b is None or ADAPTER not in lora_a:
        return None
    if hasattr(module, "lora_E") and ADAPTER in module.lora_E:  # AdaLoRA: B·diag(E)·A
        scale = module.scaling[ADAPTER] / (module.ranknum[ADAPTER] + 1e-5)
        b = module.lora_B[ADAPTER].detach().float() * float(scale)
        a = (module.lora_A[ADAPTER] * module.lora_E[ADAPTER]).detach().float()
        return b, a
    a_layer, b_layer = lora_a[ADAPTER], lora_b[ADAPTER]
    if not isinstance(a_layer, torch.nn.Linear) or getattr(module, "fan_in_fan_out", False):
        return None  # embeddings and convolutions have other shapes; not tracked
    b = b_layer.weight.detach().float() * float(module.scaling[ADAPTER])
    a = a_layer.weight.detach().float()
    if initial is not None:
        b0, a0 = initial
        return torch.cat([b, -b0], dim=1), torch.cat([a, a0], dim=0)
    return b, a


def singular_values(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Exact singular values of left @ right (m×k times k×n), descending, via two thin QRs."""
    _, r1 = torch.linalg.qr(left.double(), mode="reduced")
    _, r2 = torch.linalg.qr(right.T.contiguous().double(), mode="reduced")
    return torch.linalg.svdvals(r1 @ r2.T).float()


def factored_svd(left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(Q1, R1, Q2, R2, Us, S, Vs) with left = Q1 R1, rightᵀ = Q2 R2 and R1 R2ᵀ = Us diag(S) Vsᵀ:
    left @ right = (Q1 Us) diag(S) (Q2 Vs)ᵀ, its thin SVD, without forming the m×n matrix.
    The singular values are singular_values'; geometry.py uses the vectors too."""
    q1, r1 = torch.linalg.qr(left.double(), mode="reduced")
    q2, r2 = torch.linalg.qr(right.T.contiguous().double(), mode="reduced")
    us, s, vh = torch.linalg.svd(r1 @ r2.T)
    return q1, r1, q2, r2, us, s, vh.T


def summarize(sv: torch.Tensor) -> dict[str, Any]:
    """Effective rank (Roy & Vetterli: exp of the entropy of normalised σ), stable rank, ..."""
    values = [float(x) for x in sv.tolist()]
    total = sum(values)
    top = values[0] if values else 0.0
    if total <= 0 or top <= 0:
        return {"singular_values": values[:TOP_K], "effective_rank": 0.0, "stable_rank": 0.0,
                "condition_number": None, "frobenius_norm": 0.0, "spectral_norm": 0.0}
    probs = [v / total for v in values if v > 0]
    entropy = -sum(p * math.log(p) for p in probs)
    frob_sq = sum(v * v for v in values)
    nonzero = [v for v in values if v > top * 1e-6]
    return {
        "singular_values": values[:TOP_K],
        "effective_rank": math.exp(entropy),
        "stable_rank": frob_sq / (top * top),
        "condition_number": top / nonzero[-1],
        "frobenius_norm": math.sqrt(frob_sq),
        "spectral_norm": top,
    }


def capture_initial(model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(B₀·s, A₀) of every LoRA-family layer, for methods whose update is BA − B₀A₀."""
    initial = {}
    for name, module in model.named_modules():
        factors = update_factors(module)
        if factors is not None and not hasattr(module, "lora_E") and not hasattr(module, "vera_lambda_d"):
            initial[name] = (factors[0].clone(), factors[1].clone())
    return initial


def snapshot(model: torch.nn.Module, initial: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
             base: Any = None) -> dict[str, dict[str, Any]]:
    """Spectral summary of every tracked layer: {module name: summary}.

    With `base` (geometry.BaseSubspaces, computed once per experiment) each summary also
    has "geometry": the update's alignment with the base weight's subspaces, from the same QRs."""
    layers = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            factors = update_factors(module, (initial or {}).get(name))
            if factors is None:
                continue
            if base is None or name not in base.layers:
                layers[short_name(name)] = summarize(singular_values(*factors))
                continue
            svd = factored_svd(*factors)
            layers[short_name(name)] = summarize(svd[5].float()) | {"geometry": base.measure(name, *factors, svd)}
    return layers


def short_name(name: str) -> str:
    """'base_model.model.model.layers.3.self_attn.q_proj' → 'layers.3.self_attn.q_proj'."""
    marker = "layers."
    return name[name.index(marker):] if marker in name else name.removeprefix("base_model.model.")
