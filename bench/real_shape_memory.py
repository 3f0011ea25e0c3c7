"""The whole 1.5B shape on the CPU, per method: init time, one GRPO step, peak memory, and the estimate.

Builds DeepSeek-R1-Distill-Qwen-1.5B's shape (28 layers, architectures.toml) with random
weights in bf16, and runs the real worker (`run_experiment`: adapter, TRL GRPOTrainer, one
optimizer step, save) on it, one method per subprocess so that each peak is its own.
Per method it records:

* init s: `methods.build_adapter` (PiSSA's randomised SVDs, MiLoRA's eigendecompositions);
* step s: the worker's own step time (generation, rewards, loss forward and backward, AdamW);
* peak MiB: the subprocess's peak RSS minus its RSS after the imports (so: weights, adapter,
  optimizer, activations, logits and allocator slack; no libraries);
* saved MiB: what autograd kept for the backward during the loss's forward (saved-tensor
  hooks, parameters excluded), and its split by width, from which memory.py's ACT_H/ACT_I
  coefficients are measured;
* estimate MiB: `memory.estimate_mb` for the same config without the CUDA context (its 1.2
  safety factor included), and the ratio estimate / peak.

    python bench/real_shape_memory.py [--methods lora,pissa,...] [--layers 28]
        [--completion 8] [--batch 2] [--threads 2] [--out results.jsonl]

bf16 matrix products are slow on CPUs without native bf16 (about 4 GFLOP/s per core on the
development machine), so one 28-layer step takes minutes: keep batch and completion small.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ARCH = "DeepSeek-R1-Distill-Qwen-1.5B"
DEFAULT_METHODS = "lora,pissa,milora,dora,vera"


def model_name(layers: int | None) -> str:
    return f"builtin:shape:{ARCH}" + (f":layers={layers}" if layers else "")


def experiment_config(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """The core-1.5b suite's adapter settings, with a batch and completions a CPU can afford."""
    from perl_cli.methods import METHOD_DEFAULTS
    from perl_cli.schema import defaults

    config = defaults()
    config.update(name=f"bench_{method}", suite="bench", fingerprint="bench0000000")
    config["model"].update(model_name_or_path=model_name(args.layers), dtype="bfloat16")
    config["dataset"].update(data_size=64, eval_size=16)
    config["peft"].update(type=method, r=args.r, lora_alpha=2.0 * args.r, lora_dropout=0.05)
    for key, value in METHOD_DEFAULTS.get(method, {}).items():
        section, field = key.split(".")
        config[section][field] = value
    if method == "adalora":  # peft needs a scored step before its final phase: two steps (step s is their mean)
        config["peft"].update(adalora_tinit=0, adalora_tfinal=0, adalora_delta_t=1)
    config["training"].update(
        max_steps=2 if method == "adalora" else 1,
        per_device_train_batch_size=args.batch,
        num_generations=args.batch,
        gradient_accumulation_steps=1,
        max_prompt_length=args.prompt,
        max_completion_length=args.completion,
        save_steps=100,
        logging_steps=1,
    )
    config["eval"].update(enabled=False)
    return config


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def digit_reward(completions: list, **_: Any) -> list[float]:
    """A reward random weights earn (the share of digits), so advantages and gradients are not zero."""
    return [sum(ch.isdigit() for ch in str(c)) / max(1, len(str(c))) for c in completions]


def run_one(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """One method in this process: build, train one step, measure (called in a subprocess)."""
    import torch

    torch.set_num_threads(args.threads)
    import peft  # noqa: F401  (imported before the baseline RSS, like everything the worker uses)
    import trl  # noqa: F401

    from perl_cli import rewards, shapes
    from perl_cli.architectures import parse_shape_name
    from perl_cli.scheduler import memory
    from perl_cli.train import run_experiment
    from perl_cli.train import session as session_mod
    from perl_cli.train.trainer import MethodGRPOTrainer

    config = experiment_config(method, args)
    name = config["model"]["model_name_or_path"]
    parse_shape_name(name)
    base_rss = _rss_mb()
    started = time.perf_counter()
    model = shapes.build_model(name, torch.bfloat16)
    build_s = time.perf_counter() - started
    weights_rss = _rss_mb() - base_rss

    record: dict[str, Any] = {}
    original_build = session_mod.build_adapter

    def timed_build(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        out = original_build(*a, **k)
        record["init_s"] = time.perf_counter() - t0
        return out

    original_loss = MethodGRPOTrainer.compute_loss

    def measured_loss(self: Any, model_: Any, inputs: Any, *a: Any, **k: Any) -> Any:
        params = {p.untyped_storage().data_ptr() for p in model_.parameters()}
        saved: dict[int, tuple[int, int]] = {}

        def pack(t: Any) -> Any:
            try:
                storage = t.untyped_storage()
            except (RuntimeError, AttributeError):
                return t
            ptr = storage.data_ptr()
            if ptr not in params and ptr not in saved:
                saved[ptr] = (storage.nbytes(), int(t.shape[-1]) if t.dim() else 1)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = original_loss(self, model_, inputs, *a, **k)
        tokens = int(inputs["prompt_ids"].numel() + inputs["completion_ids"].numel())
        by_width: dict[int, int] = {}
        for nbytes, width in saved.values():
            by_width[width] = by_width.get(width, 0) + nbytes
        record["saved"] = {"tokens": tokens, "bytes": sum(by_width.values()), "by_width": by_width}
        return loss

    session_mod.load_model = lambda cfg, on_gpu, progress=None: model
    session_mod.build_adapter = timed_build
    MethodGRPOTrainer.compute_loss = measured_loss
    rewards.reward_functions = lambda prompt_format: ([digit_reward], [1.0])

    with tempfile.TemporaryDirectory(prefix="perl-bench-") as tmp:
        exp = Path(tmp) / config["name"]
        exp.mkdir()
        (exp / "config.json").write_text(json.dumps(config))
        code = run_experiment(exp)
        results = json.loads((exp / "eval.json").read_text()) if code == 0 else {}
        log_tail = (exp / "train.log").read_text()[-2000:] if code and (exp / "train.log").exists() else ""
    peak = _peak_mb() - base_rss
    est = memory.estimate(config)
    shape = memory.resolve_shape(name)[1]
    saved = record.get("saved", {})
    tokens = saved.get("tokens") or 1
    widths = {"h": 0, "i": 0, "v": 0, "other": 0}
    for width, nbytes in saved.get("by_width", {}).items():
        key = "i" if width == shape.intermediate_size else "v" if width == shape.vocab_size else (
            "h" if width in (shape.hidden_size, shape.head_dim, shape.kv_width) else "other")
        widths[key] += nbytes
    per = tokens * shape.num_layers
    return {
        "method": method, "exit": code, "layers": shape.num_layers, "threads": args.threads,
        "batch": args.batch, "completion": args.completion, "tokens": tokens,
        "build_s": build_s, "init_s": record.get("init_s"), "step_s": results.get("seconds_per_step"),
        "weights_mb": weights_rss, "peak_mb": peak, "saved_mb": saved.get("bytes", 0) / 2**20,
        # Bytes kept per token and layer, split by the last dimension's width (memory.ACT_H/ACT_I).
        "act_h": (widths["h"] + widths["other"]) / per / shape.hidden_size,
        "act_i": widths["i"] / per / shape.intermediate_size,
        "saved_vocab_mb": widths["v"] / 2**20,
        "trainable": results.get("trainable_params"), "estimate_trainable": est.trainable,
        "estimate_mb": memory.estimate_mb(config) - memory.CUDA_CONTEXT_MB,
        # DoRA's and HRA's weight-sized terms in float32, as this CPU run (no autocast) keeps them.
        "estimate_cpu_mb": round(memory.estimate(config, autocast=False).peak * memory.SAFETY),
        "r": args.r,
        "estimate_terms_mb": {k: round(v, 1) for k, v in est.as_dict().items() if isinstance(v, float)},
        "log_tail": log_tail,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| method | init s | step s | peak MiB | estimate MiB | ratio | weights MiB | saved MiB | act_h | act_i |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.get("exit"):
            lines.append(f"| {r['method']} | failed (exit {r['exit']}) | | | | | | | | |")
            continue
        lines.append(
            f"| {r['method']} | {r['init_s']:.1f} | {r['step_s']:.1f} | {r['peak_mb']:,.0f} | {r['estimate_mb']:,} | "
            f"{r['estimate_mb'] / r['peak_mb']:.2f} | {r['weights_mb']:,.0f} | {r['saved_mb']:,.0f} | "
            f"{r['act_h']:.1f} | {r['act_i']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--layers", type=int, default=None, help="fewer layers than the real 28 (a quick check)")
    parser.add_argument("--batch", type=int, default=2, help="completions per step (= num_generations)")
    parser.add_argument("--prompt", type=int, default=40, help="max_prompt_length (compact prompts are ~30 tokens)")
    parser.add_argument("--completion", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--r", type=int, default=16, help="adapter rank (core-1.5b: 16, alpha 2r)")
    parser.add_argument("--out", type=Path, default=None, help="append each method's JSON record here")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the subprocess's method
    args = parser.parse_args()
    if args.one:
        print("BENCH " + json.dumps(run_one(args.one, args)), flush=True)
        return

    rows = []
    for method in args.methods.split(","):
        cmd = [sys.executable, __file__, "--one", method, "--batch", str(args.batch), "--prompt", str(args.prompt),
               "--completion", str(args.completion), "--threads", str(args.threads), "--r", str(args.r)]
        if args.layers:
            cmd += ["--layers", str(args.layers)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": str(ROOT)}
        started = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH ")), None)
        row = json.loads(line[6:]) if line else {"method": method, "exit": proc.returncode or 1,
                                                  "log_tail": (proc.stdout + proc.stderr)[-2000:]}
        row["wall_s"] = time.time() - started
        rows.append(row)
        print(f"{method}: {json.dumps({k: v for k, v in row.items() if k != 'log_tail'})}", flush=True)
        if row.get("exit"):
            print(row.get("log_tail", ""), flush=True)
        if args.out:
            with open(args.out, "a") as handle:
                handle.write(json.dumps(row) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
