"""Cost of the update-geometry tracking against the spectral snapshot alone (issue 17: < 2x).

Usage: python bench/geometry_cost.py [--rank 16] [--repeats 5] [--base]
Per 1.5B-shaped layer (Qwen2-1.5B: 28 layers x 7 linear modules): the spectral summary alone
(spectral.singular_values + summarize) and the same snapshot with geometry (one shared
factorisation, spectral.factored_svd, + geometry.measure against the base's cached subspaces).
--base also times the once-per-experiment base subspaces (Gram eigen-decomposition) of each shape.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from perl_cli.tracking import geometry, spectral

SHAPES = {"mlp.down_proj": (1536, 8960), "mlp.up_proj": (8960, 1536), "self_attn.q_proj": (1536, 1536), "self_attn.k_proj": (256, 1536)}
MODULES_PER_LAYER = {"mlp.down_proj": 1, "mlp.up_proj": 2, "self_attn.q_proj": 2, "self_attn.k_proj": 2}  # gate=up, o=q, v=k
LAYERS = 28


def timed_pair(first, second, repeats: int) -> tuple[float, float]:
    """Median seconds of each, run alternately (the machine is shared: a burst of load hits both)."""
    first(), second()  # warm-up
    a, b = [], []
    for _ in range(repeats):
        for fn, out in ((first, a), (second, b)):
            started = time.perf_counter()
            fn()
            out.append(time.perf_counter() - started)
    return statistics.median(a), statistics.median(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--base", action="store_true", help="also time the one-off base subspaces (seconds each)")
    args = parser.parse_args()
    torch.manual_seed(0)
    alone_total = with_total = 0.0
    for name, (out, inp) in SHAPES.items():
        b, a = torch.randn(out, args.rank), torch.randn(args.rank, inp)
        k = args.rank
        # Random orthonormal stand-ins for the cached base subspaces (their values do not change the cost).
        base = geometry.Subspaces.of(*(torch.linalg.qr(torch.randn(d, k))[0] for d in (out, inp, out, inp)))

        def alone(b=b, a=a) -> None:
            spectral.summarize(spectral.singular_values(b, a))

        def with_geometry(b=b, a=a, base=base) -> None:
            svd = spectral.factored_svd(b, a)
            spectral.summarize(svd[5].float())
            geometry.measure(b, a, base, svd)

        t_alone, t_with = timed_pair(alone, with_geometry, args.repeats)
        alone_total += t_alone * MODULES_PER_LAYER[name]
        with_total += t_with * MODULES_PER_LAYER[name]
        line = f"{name:18s} {out}x{inp} r={args.rank}: snapshot {t_alone * 1000:6.1f} ms, with geometry {t_with * 1000:6.1f} ms ({t_with / t_alone:.2f}x)"
        if args.base:
            started = time.perf_counter()
            geometry.subspaces(torch.randn(out, inp), k)
            line += f"; base subspaces once: {time.perf_counter() - started:.2f} s"
        print(line, flush=True)
    print(f"whole 1.5B model ({LAYERS} layers x 7 modules): snapshot {alone_total * LAYERS:.2f} s, "
          f"with geometry {with_total * LAYERS:.2f} s per snapshot ({with_total / alone_total:.2f}x)")


if __name__ == "__main__":
    main()
