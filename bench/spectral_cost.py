"""Cost of one spectral snapshot of a 1.5B-sized layer: factored (ours) vs dense SVD.

Usage: python bench/spectral_cost.py [--rank 16] [--dense]
The seed's tracker ran a dense SVD per layer; Qwen2-1.5B has 28 layers x 7 linear modules.
"""

from __future__ import annotations

import argparse
import time

import torch

from perl_cli.tracking.spectral import singular_values

SHAPES = {"mlp.down_proj": (1536, 8960), "mlp.up_proj": (8960, 1536), "self_attn.q_proj": (1536, 1536), "self_attn.k_proj": (256, 1536)}
MODULES_PER_LAYER = {"mlp.down_proj": 1, "mlp.up_proj": 2, "self_attn.q_proj": 2, "self_attn.k_proj": 2}  # gate=up, o=q, v=k
LAYERS = 28


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--dense", action="store_true", help="also time the dense SVD of one up_proj (slow)")
    args = parser.parse_args()
    torch.manual_seed(0)
    per_layer = 0.0
    for name, (out, inp) in SHAPES.items():
        b, a = torch.randn(out, args.rank), torch.randn(args.rank, inp)
        started = time.perf_counter()
        for _ in range(5):
            singular_values(b, a)
        seconds = (time.perf_counter() - started) / 5
        per_layer += seconds * MODULES_PER_LAYER[name]
        print(f"{name:18s} {out}x{inp} r={args.rank}: factored {seconds * 1000:.1f} ms")
    print(f"whole 1.5B model ({LAYERS} layers x 7 modules), factored: {per_layer * LAYERS:.2f} s per snapshot")
    if args.dense:
        b, a = torch.randn(8960, args.rank), torch.randn(args.rank, 1536)
        started = time.perf_counter()
        torch.linalg.svdvals(b @ a)
        print(f"dense SVD of one 8960x1536 update: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
