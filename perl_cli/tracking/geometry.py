"""Update geometry: where each adapter's learned update ΔW points relative to the base weight.

For every tracked layer at each spectral snapshot: how ΔW's top-r singular subspaces align
with the base weight W's top-k (principal) and bottom-k (minor) singular subspaces —
principal angles between them (reported as the mean cos², 1 = inside, ≈ k/dim by chance)
— and the share of ΔW's energy (squared Frobenius norm) that lies in each (left: in W's
column subspace; right: in its row subspace). PiSSA starts on the principal subspace and
MiLoRA on the minor one; whether their updates stay there is what the PeRL paper calls
spectral (mis)alignment.

Cost: W's subspaces are computed once per experiment (`BaseSubspaces.of`, at the start of
training), from the eigen-decomposition of the Gram matrix on W's thin side in float64
(O(mn·min(m,n)) once, a few seconds for 8960×1536 instead of the ~21 s of a dense SVD). Each
snapshot then works on ΔW's factors L (m×k'), R (k'×n) only, sharing the two thin QRs that
the spectral summary already needs (spectral.factored_svd): O((m+n)·k'·k) per layer, no
m×n matrix ever formed. bench/geometry_cost.py measures it against the snapshot alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Subspaces:
    """Orthonormal bases (columns) of W's top-k and bottom-k left/right singular subspaces."""

    top_left: torch.Tensor  # m×k
    top_right: torch.Tensor  # n×k
    bottom_left: torch.Tensor
    bottom_right: torch.Tensor

    @property
    def k(self) -> int:
        return self.top_left.shape[1]


def subspaces(weight: torch.Tensor, k: int) -> Subspaces:
    """Top-k and bottom-k singular subspaces of `weight` (m×n) via the Gram matrix of its thin side."""
    w = weight.detach().double()
    m, n = w.shape
    k = max(1, min(k, min(m, n) // 2))
    transpose = m < n  # work with the n×n Gram of the thinner side
    a = w.T if transpose else w  # rows ≥ columns
    values, vectors = torch.linalg.eigh(a.T @ a)  # ascending eigenvalues = σ², right vectors of `a`
    sigma = values.clamp_min(0).sqrt()
    floor = sigma[-1] * 1e-12 + 1e-300

    def pair(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        right = vectors[:, idx]
        left = (a @ right) / sigma[idx].clamp_min(floor)
        left, _ = torch.linalg.qr(left, mode="reduced")  # re-orthonormalise (small σ lose precision)
        return (right, left) if transpose else (left, right)

    top = torch.arange(a.shape[1] - k, a.shape[1])
    bottom = torch.arange(0, k)
    tl, tr = pair(top)
    bl, br = pair(bottom)
    return Subspaces(tl.float(), tr.float(), bl.float(), br.float())


def base_weight(module: Any, initial: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor | None:
    """The layer's base weight W (out×in) as training started: for PiSSA/MiLoRA the residual
    plus the initial adapter product B₀A₀ (their base layer holds W − B₀A₀)."""
    base = getattr(module, "base_layer", None)
    weight = getattr(base, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or getattr(module, "fan_in_fan_out", False):
        return None
    w = weight.detach().float()
    if initial is not None:
        b0, a0 = initial
        w = w + b0.to(w.device) @ a0.to(w.device)
    return w


def measure(left: torch.Tensor, right: torch.Tensor, base: Subspaces, factored: Any = None) -> dict[str, Any]:
    """Alignment of ΔW = left @ right with `base`'s subspaces.

    `factored` is spectral.factored_svd(left, right) when the caller already has it."""
    from perl_cli.tracking.spectral import factored_svd

    q1, r1, q2, r2, us, s, vs = factored if factored is not None else factored_svd(left, right)
    total = float((s.double() ** 2).sum())
    k = base.k
    r = int(min(k, int((s > s[0] * 1e-6).sum()) if s.numel() and s[0] > 0 else 0))
    out: dict[str, Any] = {"k": k, "rank": r, "dims": [left.shape[0], right.shape[1]]}
    if r == 0 or total <= 0:
        return out | {"top": None, "bottom": None}
    u_delta = (q1 @ us[:, :r]).double()  # ΔW's top-r left singular vectors
    v_delta = (q2 @ vs[:, :r]).double()  # and right
    l64, rr = left.double(), right.double()
    gram_r = rr @ rr.T  # k'×k'
    gram_l = l64.T @ l64
    for name, (u_base, v_base) in (("top", (base.top_left, base.top_right)), ("bottom", (base.bottom_left, base.bottom_right))):
        u_base, v_base = u_base.double().to(l64.device), v_base.double().to(l64.device)
        cos_left = torch.linalg.svdvals(u_delta.T @ u_base)  # principal angles' cosines
        cos_right = torch.linalg.svdvals(v_delta.T @ v_base)
        x = u_base.T @ l64  # k×k': ||U_bᵀ ΔW||² = tr(X (R Rᵀ) Xᵀ)
        y = rr @ v_base  # k'×k: ||ΔW V_b||² = tr(Yᵀ (Lᵀ L) Y)
        out[name] = {
            "cos2_left": float((cos_left ** 2).mean()),
            "cos2_right": float((cos_right ** 2).mean()),
            "max_angle_left_deg": _degrees(cos_left.min()),
            "max_angle_right_deg": _degrees(cos_right.min()),
            "energy_left": float(((x @ gram_r) * x).sum()) / total,
            "energy_right": float(((gram_l @ y) * y).sum()) / total,
        }
    return out


def _degrees(cos: torch.Tensor) -> float:
    return float(torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0))))


def adapter_rank(left: torch.Tensor, initial: tuple[torch.Tensor, torch.Tensor] | None) -> int:
    """The k of a layer: the adapter's own rank (PiSSA/MiLoRA's factors are 2r wide: r is B₀'s)."""
    return int(initial[1].shape[0]) if initial is not None else int(left.shape[1])


class BaseSubspaces:
    """Per tracked layer, the base weight's subspaces: computed once per experiment."""

    def __init__(self, layers: dict[str, Subspaces]) -> None:
        self.layers = layers

    @classmethod
    def of(cls, model: torch.nn.Module, initial: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> BaseSubspaces:
        from perl_cli.tracking.spectral import update_factors

        layers = {}
        with torch.no_grad():
            for name, module in model.named_modules():
                start = (initial or {}).get(name)
                factors = update_factors(module, start)
                weight = base_weight(module, start) if factors is not None else None
                if weight is not None:
                    layers[name] = subspaces(weight, adapter_rank(factors[0], start))
        return cls(layers)
