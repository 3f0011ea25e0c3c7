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

from perl_cli.tracking.spectral import factored_svd, update_factors

NEGLIGIBLE = 1e-5  # ΔW's top singular value below this share of W's is no update (float rounding)


@dataclass
class Subspaces:
    """Orthonormal bases (columns, float64) of W's top-k and bottom-k left/right singular
    subspaces, side by side: `left` is m×2k ([top | bottom]), `right` n×2k."""

    left: torch.Tensor
    right: torch.Tensor
    scale: float = 0.0  # W's largest singular value: an update far below it is rounding, not learning

    @property
    def k(self) -> int:
        return self.left.shape[1] // 2

    @property
    def top_left(self) -> torch.Tensor:
        return self.left[:, : self.k]

    @property
    def bottom_left(self) -> torch.Tensor:
        return self.left[:, self.k :]

    @property
    def top_right(self) -> torch.Tensor:
        return self.right[:, : self.k]

    @property
    def bottom_right(self) -> torch.Tensor:
        return self.right[:, self.k :]

    @classmethod
    def of(cls, top_left: torch.Tensor, top_right: torch.Tensor, bottom_left: torch.Tensor,
           bottom_right: torch.Tensor, scale: float = 0.0) -> Subspaces:
        return cls(torch.cat([top_left, bottom_left], 1).double(), torch.cat([top_right, bottom_right], 1).double(), scale)


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
    return Subspaces.of(tl, tr, bl, br, float(sigma[-1]))


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

    With left = Q1 R1, rightᵀ = Q2 R2 and R1 R2ᵀ = Us S Vsᵀ (spectral.factored_svd, shared
    with the spectral summary when the caller passes it), only two products touch the big
    dimensions: P1 = Q1ᵀ[U_top | U_bottom] and P2 = Q2ᵀ[V_top | V_bottom]. Then, per subspace U_b:
    mean cos² of the principal angles with ΔW's top-r = ||Us_rᵀ P1||² / r, and the energy share
    ||U_bᵀ ΔW||² / ||ΔW||² = ||P1ᵀ R1 R2ᵀ||² / ΣS² (likewise on the right with P2)."""

    q1, r1, q2, r2, us, s, vs = factored if factored is not None else factored_svd(left, right)
    k = base.k
    total = float((s * s).sum())
    # No update yet (PiSSA/MiLoRA's BA − B₀A₀ at step 0 is float rounding of the base's own top block).
    moved = s.numel() and total > 0 and float(s[0]) > NEGLIGIBLE * base.scale
    r = int(min(k, int((s > s[0] * 1e-6).sum()))) if moved else 0
    out: dict[str, Any] = {"k": k, "rank": r, "dims": [left.shape[0], right.shape[1]]}
    if r == 0:
        return out | {"top": None, "bottom": None}
    p1 = q1.T @ base.left.to(q1.device)  # k'×2k
    p2 = q2.T @ base.right.to(q2.device)
    core = r1 @ r2.T  # k'×k': ΔW = Q1 core Q2ᵀ
    cos_left = us[:, :r].T @ p1  # r×2k: cosines' matrix between ΔW's top-r and the base's vectors
    cos_right = vs[:, :r].T @ p2
    energy_left = (core.T @ p1).square().sum(0)  # per base vector u: ||uᵀ ΔW||²
    energy_right = (core @ p2).square().sum(0)
    # The principal angles themselves, for the largest: one batched SVD of the four r×k blocks.
    blocks = torch.stack([cos_left[:, :k], cos_right[:, :k], cos_left[:, k:], cos_right[:, k:]])
    smallest_cos = torch.linalg.svdvals(blocks)[:, -1].clamp(-1.0, 1.0)
    angles = torch.rad2deg(torch.arccos(smallest_cos)).tolist()
    cos2 = [float(v) / r for v in blocks.square().sum((1, 2)).tolist()]
    e_left = [float(energy_left[:k].sum()) / total, float(energy_left[k:].sum()) / total]
    e_right = [float(energy_right[:k].sum()) / total, float(energy_right[k:].sum()) / total]
    for i, name in enumerate(("top", "bottom")):
        out[name] = {
            "cos2_left": cos2[2 * i], "cos2_right": cos2[2 * i + 1],
            "max_angle_left_deg": angles[2 * i], "max_angle_right_deg": angles[2 * i + 1],
            "energy_left": e_left[i], "energy_right": e_right[i],
        }
    return out


def adapter_rank(left: torch.Tensor, initial: tuple[torch.Tensor, torch.Tensor] | None) -> int:
    """The k of a layer: the adapter's own rank (PiSSA/MiLoRA's factors are 2r wide: r is B₀'s)."""
    return int(initial[1].shape[0]) if initial is not None else int(left.shape[1])


class BaseSubspaces:
    """Per tracked layer, the base weight's subspaces: computed once per experiment."""

    def __init__(self, layers: dict[str, Subspaces]) -> None:
        self.layers = layers

    def measure(self, name: str, left: torch.Tensor, right: torch.Tensor, factored: Any = None) -> dict[str, Any]:
        """`measure` for the layer `name` (spectral.snapshot calls this: it never imports this module)."""
        return measure(left, right, self.layers[name], factored)

    @classmethod
    def of(cls, model: torch.nn.Module, initial: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> BaseSubspaces:
        layers = {}
        with torch.no_grad():
            for name, module in model.named_modules():
                start = (initial or {}).get(name)
                factors = update_factors(module, start)
                weight = base_weight(module, start) if factors is not None else None
                if weight is not None:
                    layers[name] = subspaces(weight, adapter_rank(factors[0], start))
        return cls(layers)
