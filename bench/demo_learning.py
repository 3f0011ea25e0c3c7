"""Does the demo recipe learn on every seed? LoRA of the `demo` suite over several seeds.

Expands the demo suite's LoRA experiment from the shipped experiments.toml (the settings
`perl run demo` uses), applies `--set` overrides like `perl run`, runs one worker per seed
(`--jobs` at a time, `--threads` torch threads each) and prints, per seed: held-out sampled
accuracy of the base and trained model with its standard error over problems, the paired
gain with its standard error (perl_cli/learning.py) and how many standard errors it is,
training correctness as the rise of its least-squares line over all logged steps with the
95% bounds, its quarter means, and seconds per step.

    python bench/demo_learning.py [--seeds 42,123,456] [--jobs 2] [--threads 1] [--set training.max_steps=240 ...]

The thread count changes the order of floating-point reductions, as another CPU would:
run it with --threads 1 and --threads 2 to see the claim hold on "two machines".

The built-in model is built once under $PERL_CACHE_DIR (default ~/.cache/perl).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def lora_config(seed: int, sets: list[str]) -> dict:
    from perl_cli import config as configlib

    cfg = configlib.load(ROOT / "perl_cli" / "experiments.toml")
    (exp,) = configlib.expand(cfg, "demo", only=["lora_r16_s42"], sets=[*sets, f"common.seed={seed}"])
    return {**exp.resolved(), "name": f"lora_r16_s{seed}"}


def run_one(config: dict, root: Path, threads: int) -> dict:
    exp = root / config["name"]
    exp.mkdir(parents=True)
    (exp / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    started = time.time()
    with open(exp / "train.log", "w") as log:
        code = subprocess.run([sys.executable, "-m", "perl_cli.train", str(exp)], env=env, stdout=log,
                              stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if code != 0:
        raise SystemExit(f"{config['name']} failed (exit {code}); see {exp / 'train.log'}")
    result = json.loads((exp / "eval.json").read_text())
    result["wall_seconds"] = time.time() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="42,123,456")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each worker (torch follows it)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="section.key=value, as for perl run")
    parser.add_argument("--keep", type=Path, help="write the experiment directories here (default: a temporary one)")
    opts = parser.parse_args()

    seeds = [int(s) for s in opts.seeds.split(",")]
    configs = [lora_config(seed, opts.sets) for seed in seeds]
    t = configs[0]["training"]
    print(f"demo LoRA, {' '.join(opts.sets) or 'as shipped'}: {t['max_steps']} steps, lr {t['learning_rate']}, "
          f"{t['per_device_train_batch_size'] // t['num_generations']} prompts x {t['num_generations']}, "
          f"{t['lr_scheduler_type']}")
    with tempfile.TemporaryDirectory() as tmp:
        root = opts.keep or Path(tmp)
        with ThreadPoolExecutor(opts.jobs) as pool:
            results = list(pool.map(lambda c: run_one(c, root, opts.threads), configs))
    print(f"threads {opts.threads}")
    print("| seed | base sampled | trained sampled | paired gain ± se | gain / se | correct rise [95% bounds] "
          "| correct quarter means | s/step | wall |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for seed, r in zip(seeds, results, strict=True):
        base, acc = r["base_accuracy_sampled"], r["accuracy_sampled"]
        gain, se = r.get("gain_sampled"), r.get("gain_sampled_se")
        rise = r.get("correct_rise")
        quarters = " → ".join(f"{q:.3f}" for q in r.get("correct_quarter_means") or [])
        print(f"| {seed} | {100 * base:.2f} ± {100 * r['base_accuracy_sampled_se']:.2f} | {100 * acc:.2f} ± "
              f"{100 * r['accuracy_sampled_se']:.2f} | "
              + (f"{100 * gain:+.2f} ± {100 * se:.2f} | {gain / se:.1f} | " if gain is not None and se else "- | - | ")
              + (f"{rise:+.3f} [{r['correct_rise_low']:+.3f}, {r['correct_rise_high']:+.3f}] | " if rise is not None else "- | ")
              + f"{quarters} | {r['seconds_per_step']:.2f} | {r['wall_seconds']:.0f}s |")

if __name__ == "__main__":
    main()
