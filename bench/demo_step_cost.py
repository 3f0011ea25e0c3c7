"""Where a demo training step's time goes: generation, rewards, loss forward, backward, callbacks, saves.

Runs the demo suite's LoRA experiment in this process (single-threaded, evaluation off)
with timers wrapped around GRPOTrainer's parts, then prints seconds per step for each
part (exclusive: a part's time excludes the parts nested in it) and the rest (optimizer
step, data loading, Trainer bookkeeping) as "other".

    python bench/demo_step_cost.py [--steps 30] [--set training.per_device_train_batch_size=32 ...]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

TOTALS: dict[str, float] = defaultdict(float)
_stack: list[str] = []


def timed(owner: type, attr: str, label: str, when=None) -> None:
    """Time owner.attr under `label`, excluding the time of timed calls nested inside it."""
    original = getattr(owner, attr)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        if when is not None and not when(*args, **kwargs):
            return original(*args, **kwargs)
        _stack.append(label)
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent = time.perf_counter() - started
            _stack.pop()
            TOTALS[label] += spent
            if _stack:
                TOTALS[_stack[-1]] -= spent

    setattr(owner, attr, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    opts = parser.parse_args()

    import torch
    from accelerate import Accelerator
    from demo_learning import lora_config
    from transformers import Trainer
    from transformers.trainer_callback import CallbackHandler
    from trl import GRPOTrainer

    from perl_cli.train import run_experiment

    torch.set_num_threads(1)
    timed(GRPOTrainer, "_generate_single_turn", "generation")
    timed(GRPOTrainer, "_calculate_rewards", "rewards")
    timed(GRPOTrainer, "_generate_and_score_completions", "scoring (old log-probs, advantages)")
    timed(GRPOTrainer, "compute_loss", "loss forward")
    timed(Accelerator, "backward", "backward")
    timed(Trainer, "_save_checkpoint", "checkpoint saves")
    timed(CallbackHandler, "call_event", "callbacks (step end, log, save)",
          when=lambda self, event, *a, **k: event in ("on_step_end", "on_log", "on_save", "on_step_begin"))
    timed(Trainer, "train", "train() total")

    config = lora_config(42, [*opts.sets, f"training.max_steps={opts.steps}", "eval.enabled=false"])
    with tempfile.TemporaryDirectory() as tmp:
        exp = Path(tmp) / config["name"]
        exp.mkdir()
        (exp / "config.json").write_text(json.dumps(config))
        assert run_experiment(exp) == 0, (exp / "status.json").read_text()
    steps = config["training"]["max_steps"]
    total = TOTALS.pop("train() total") + sum(TOTALS.values())  # train()'s own exclusive time + its parts
    t = config["training"]
    print(f"{steps} steps, {t['per_device_train_batch_size']} completions/step "
          f"(<= {t['max_completion_length']} tokens): {total / steps:.3f} s/step")
    for label, seconds in sorted(TOTALS.items(), key=lambda kv: -kv[1]):
        print(f"  {label:<40} {seconds / steps:.3f} s/step  {100 * seconds / total:5.1f}%")
    other = total - sum(TOTALS.values())
    print(f"  {'other (optimizer, data, bookkeeping)':<40} {other / steps:.3f} s/step  {100 * other / total:5.1f}%")


if __name__ == "__main__":
    main()
