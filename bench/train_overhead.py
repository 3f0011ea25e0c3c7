"""Training overhead of PeRL's worker over a bare TRL script with identical settings.

Both sides train the built-in tiny Countdown model with LoRA under GRPOTrainer, in
their own subprocess, with the same seed, data, reward functions and GRPOConfig; each
times steps 2..N from step-end timestamps (imports, model build, the first step's
warm-up and evaluation excluded). The
ratio printed is worker steps/s over bare steps/s (target >= 0.95).

    python bench/train_overhead.py [--steps 40] [--repeats 2] [--threads 1]
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


def experiment_config(steps: int) -> dict:
    from perl_cli.schema import defaults

    config = defaults()
    config.update(name="bench_lora", suite="bench", fingerprint="bench0000000")
    config["model"]["model_name_or_path"] = MODEL
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


def run_worker(config: dict, env: dict) -> float:
    with tempfile.TemporaryDirectory() as exp:
        (Path(exp) / "config.json").write_text(json.dumps(config))
        subprocess.run(
            [sys.executable, "-m", "perl_cli.train", exp], env=env, capture_output=True, text=True, check=True, cwd=ROOT
        )
        rows = [json.loads(line) for line in (Path(exp) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    # Rows are written at the end of each step: steps 2..N, measured as on the bare side.
    return (rows[-1]["step"] - rows[0]["step"]) / (rows[-1]["time"] - rows[0]["time"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    opts = parser.parse_args()

    from perl_cli.models import builtin_model_path

    model_dir = builtin_model_path(MODEL)
    env = {**os.environ, "OMP_NUM_THREADS": str(opts.threads), "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
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
