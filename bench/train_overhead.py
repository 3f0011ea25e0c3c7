"""Training overhead of PeRL's worker over a bare TRL script with identical settings.

Both sides train the built-in tiny Countdown model with LoRA under GRPOTrainer, in
their own subprocess, with the same seed, data, reward functions and GRPOConfig; each
times steps 2..N from step-end timestamps (imports, model build, the first step's
warm-up and evaluation excluded). The
ratio printed is worker steps/s over bare steps/s (target >= 0.95).

With `--dashboard wandb|trackio` it measures the dashboard's cost instead: the worker with
spectral and gradient tracking every `--track-every` steps, without and with the dashboard
(offline W&B or local trackio, images on), interleaved; it prints both paces, the
difference per step, and PeRL's own time in the dashboard callback (eval.json's
`dashboard_seconds`, drawing included).

    python bench/train_overhead.py [--steps 40] [--repeats 2] [--threads 1] [--dashboard wandb --track-every 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "builtin:tiny-countdown"


def experiment_config(steps: int, model: str = MODEL) -> dict:
    from perl_cli.schema import defaults

    config = defaults()
    config.update(name="bench_lora", suite="bench", fingerprint="bench0000000")
    config["model"]["model_name_or_path"] = model
    config["peft"].update(type="lora", r=16, lora_alpha=32.0)
    config["training"].update(
        learning_rate=5e-4,
        per_device_train_batch_size=64,
        gradient_accumulation_steps=1,
        num_generations=8,
        max_completion_length=28,
        max_steps=steps,
        save_steps=10 * steps,  # no checkpoint inside the timed window, on either side
        logging_steps=1,
        beta=0.0,
    )
    config["eval"]["enabled"] = False
    return config


BARE_SCRIPT = r"""
import json, sys, time
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback, set_seed
from trl import GRPOConfig, GRPOTrainer
from perl_cli.data import countdown
from perl_cli import rewards

config, model_dir, out_dir = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
t, p = config["training"], config["peft"]
set_seed(config["common"]["seed"])
tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir)
splits = countdown.load_splits(config["dataset"])
set_seed(config["common"]["seed"])
model = get_peft_model(model, LoraConfig(r=p["r"], lora_alpha=p["lora_alpha"], lora_dropout=p["lora_dropout"],
                                         target_modules="all-linear", task_type="CAUSAL_LM"))
funcs, weights = rewards.reward_functions("compact")
args = GRPOConfig(
    output_dir=out_dir, seed=config["common"]["seed"], max_steps=t["max_steps"], learning_rate=t["learning_rate"],
    lr_scheduler_type=t["lr_scheduler_type"], per_device_train_batch_size=t["per_device_train_batch_size"],
    gradient_accumulation_steps=t["gradient_accumulation_steps"], num_generations=t["num_generations"],
    max_completion_length=t["max_completion_length"], loss_type=t["loss_type"], beta=t["beta"],
    reward_weights=weights, save_steps=t["save_steps"], logging_steps=t["logging_steps"],
    report_to=[], use_cpu=True, bf16=False, disable_tqdm=True,
    # TRL 1.16's GRPOConfig turns activation (gradient) checkpointing on by default; the
    # experiment config says off, and the worker passes it, so the bare side must too.
    activation_checkpointing=t["gradient_checkpointing"],
)

class StepTimes(TrainerCallback):
    times = []
    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.time())

trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=args, processing_class=tokenizer,
                      train_dataset=Dataset.from_list(countdown.to_records(splits.train, "compact")),
                      callbacks=[StepTimes()])
trainer.train()
times = StepTimes.times
print(json.dumps({"steps_per_second": (len(times) - 1) / (times[-1] - times[0])}))
"""


def run_bare(config: dict, model_dir: Path, env: dict) -> float:
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run(
            [sys.executable, "-c", BARE_SCRIPT, json.dumps(config), str(model_dir), out],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])["steps_per_second"]


def run_worker(config: dict, env: dict, out: dict | None = None) -> float:
    with tempfile.TemporaryDirectory() as suite:
        exp = Path(suite) / "exp"  # in a suite directory: trackio keeps its database beside it
        exp.mkdir()
        (exp / "config.json").write_text(json.dumps(config))
        subprocess.run(
            [sys.executable, "-m", "perl_cli.train", str(exp)], env=env, capture_output=True, text=True, check=True,
            cwd=ROOT,
        )
        rows = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines() if line.strip()]
        if out is not None:
            out.update(json.loads((exp / "eval.json").read_text()))
    # Rows are written at the end of each step: steps 2..N, measured as on the bare side.
    return (rows[-1]["step"] - rows[0]["step"]) / (rows[-1]["time"] - rows[0]["time"])


def dashboard_overhead(opts: argparse.Namespace, env: dict) -> None:
    """The worker with tracking, without and with the dashboard."""
    config = experiment_config(opts.steps, opts.model)
    config["tracker"].update(enable_spectral_tracking=True, enable_gradient_tracking=True,
                             spectral_log_frequency=opts.track_every, gradient_log_frequency=opts.track_every)
    with_dashboard = json.loads(json.dumps(config))
    with_dashboard["wandb"].update(use_wandb=True, backend=opts.dashboard, offline=True)
    env = {**env, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("TRACKIO_DIR", None)
    plain, logged, own = [], [], []
    for i in range(opts.repeats):
        t0 = time.time()
        plain.append(run_worker(config, env))
        result: dict = {}
        logged.append(run_worker(with_dashboard, env, result))
        own.append(result["dashboard_seconds"] / opts.steps)
        print(f"repeat {i + 1}: without {plain[-1]:.3f} steps/s, with {opts.dashboard} {logged[-1]:.3f} steps/s, "
              f"PeRL's callback {1000 * own[-1]:.1f} ms/step (images {result['dashboard_image_seconds']:.2f} s in all) "
              f"({time.time() - t0:.0f}s)")
    a, b = statistics.median(plain), statistics.median(logged)
    print(f"steps/s  without dashboard {a:.3f}  with {opts.dashboard} {b:.3f}  ratio {b / a:.3f}")
    print(f"per step: {1000 * (1 / b - 1 / a):+.1f} ms wall clock; PeRL's callback {1000 * statistics.median(own):.1f} ms "
          f"(tracking every {opts.track_every} steps, images on)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dashboard", choices=("wandb", "trackio"), help="measure the dashboard's cost instead")
    parser.add_argument("--track-every", type=int, default=10, help="tracking frequency with --dashboard")
    parser.add_argument("--model", default=MODEL, help="built-in model (--dashboard only; builtin:tiny-random builds in seconds)")
    opts = parser.parse_args()

    from perl_cli.models import builtin_model_path

    model_dir = builtin_model_path(opts.model if opts.dashboard else MODEL)
    env = {**os.environ, "OMP_NUM_THREADS": str(opts.threads), "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    if opts.dashboard:
        dashboard_overhead(opts, env)
        return
    config = experiment_config(opts.steps)
    worker, bare = [], []
    for i in range(opts.repeats):  # interleaved, so drifts in machine load hit both sides
        t0 = time.time()
        bare.append(run_bare(config, model_dir, env))
        worker.append(run_worker(config, env))
        print(f"repeat {i + 1}: bare {bare[-1]:.3f} steps/s, worker {worker[-1]:.3f} steps/s ({time.time() - t0:.0f}s)")
    ratio = statistics.median(worker) / statistics.median(bare)
    print(f"steps/s  bare TRL {statistics.median(bare):.3f}  perl worker {statistics.median(worker):.3f}")
    print(f"ratio (worker / bare) = {ratio:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
