"""What one tracking snapshot costs the dashboard at the size of the 1.5B model.

DeepSeek-R1-Distill-Qwen-1.5B with all-linear LoRA has 28 layers × 7 modules = 196 adapted
modules. This times the dashboard callback (perl_cli/tracking/dashboard.py) turning one
spectral snapshot (196 layers × 16 singular values) and one gradient snapshot (196 modules ×
A/B) into a logged row — metrics, histograms, images drawn with perl_cli/plots.py — with
the real backend (offline W&B or local trackio) in a temporary directory, at the 10th
snapshot of a run (history of 10 steps, as at step 1000 with the seed's frequency of 100).
Nothing is trained: the snapshot values are synthetic, the work is the same.

    python bench/dashboard_cost.py [--backend wandb|trackio] [--repeats 5] [--layers 28] [--rank 16]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")


def histories(layers: int, rank: int, snapshots: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(0)
    spectral, gradient = [], []
    for k in range(1, snapshots + 1):
        step = 100 * k
        sv = {}
        grads = {}
        for i in range(layers):
            for m in MODULES:
                name = f"layers.{i}.{m}"
                values = sorted((rng.random() for _ in range(rank)), reverse=True)
                sv[name] = {"singular_values": values, "effective_rank": rank * 0.8, "stable_rank": 2.0,
                            "condition_number": values[0] / values[-1], "frobenius_norm": 1.0, "spectral_norm": values[0]}
                grads[name] = {"A": rng.random() * 1e-3, "B": rng.random() * 1e-2}
        spectral.append({"step": step, "seconds": 0.1, "layers": sv})
        gradient.append({"step": step, "seconds": 0.01, "layers": grads})
    return spectral, gradient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("wandb", "trackio"), default="wandb")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--rank", type=int, default=16)
    opts = parser.parse_args()

    with tempfile.TemporaryDirectory() as suite:
        exp = Path(suite) / "bench_lora"
        exp.mkdir()
        os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", TRACKIO_DIR=str(Path(suite) / "trackio"))
        from perl_cli.schema import defaults
        from perl_cli.tracking.dashboard import make_callback

        config = defaults()
        config.update(name="bench_lora", suite="bench", fingerprint="bench0000000")
        config["model"]["model_name_or_path"] = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
        config["wandb"].update(use_wandb=True, backend=opts.backend, offline=True)
        callback = make_callback(exp, config, "lora", True, 1_777_088_000, on_gpu=False)
        spectral, gradient = histories(opts.layers, opts.rank, 10)
        callback._start()
        metrics, images, rows = [], [], []
        for i in range(opts.repeats):
            step_s, step_g = spectral[: 10 - opts.repeats + i + 1], gradient[: 10 - opts.repeats + i + 1]
            started, drawn = time.perf_counter(), callback.image_seconds
            callback.gradient(step_s[-1]["step"], step_g)
            callback.spectral(step_s[-1]["step"], step_s)
            flushed = time.perf_counter()
            callback.flush()
            rows.append(time.perf_counter() - flushed)
            total = time.perf_counter() - started
            images.append(callback.image_seconds - drawn)
            metrics.append(total - images[-1] - rows[-1])
        callback.close(0)
    n = opts.layers * len(MODULES)
    print(f"{opts.backend}: {n} modules, rank {opts.rank}: one spectral + one gradient snapshot "
          f"(median of {opts.repeats}): metrics and histograms {1000 * statistics.median(metrics):.0f} ms, "
          f"images {1000 * statistics.median(images):.0f} ms, logging the row {1000 * statistics.median(rows):.0f} ms")
    per = statistics.median(m + i + r for m, i, r in zip(metrics, images, rows, strict=True))
    print(f"at the seed's frequency (every 100 steps): {1000 * per / 100:.1f} ms per training step")


if __name__ == "__main__":
    main()
