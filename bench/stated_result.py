"""How many sampled answers change verdict when `expr = target` is accepted (issue 21)?

Samples the base model of the demo (builtin:tiny-countdown by default) on the demo's
held-out problems with the demo's sampling (temperature 1.0, top_p 1.0, the demo's
completion budget), and scores every completion twice: with the verifier before the
change (the whole answer must be a bare expression: `rewards.evaluate_answer` on it)
and with `rewards.countdown_correct` (which also accepts `expr = number`). Prints the
counts, the answers that carry an `=`, and every completion whose verdict changed.

    python bench/stated_result.py [--samples 8] [--seed 42] [--model builtin:tiny-countdown]

The built-in model is built once under $PERL_CACHE_DIR (default ~/.cache/perl).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")


def old_verdict(completion: str, numbers: list[int], target: int) -> bool:
    """The verifier before issue 21: the answer had to be a bare expression."""
    from perl_cli import rewards

    answer = rewards.extract_answer(completion)
    goal = rewards.exact_target(target)
    if answer is None or goal is None:
        return False
    value = rewards.evaluate_answer(answer, list(numbers))
    return value is not None and value == goal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8, help="completions per held-out problem")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--model", default="builtin:tiny-countdown")
    opts = parser.parse_args()

    import torch

    from perl_cli import config as configlib
    from perl_cli import rewards
    from perl_cli.data import countdown
    from perl_cli.models import load_model, load_tokenizer

    cfg = configlib.load(ROOT / "perl_cli" / "experiments.toml")
    exp = configlib.expand(cfg, "demo")[0].resolved()
    model_cfg = {**exp["model"], "model_name_or_path": opts.model}
    tokenizer = load_tokenizer(model_cfg)
    model = load_model(model_cfg, on_gpu=False).eval()
    fmt = countdown.resolve_prompt_format(exp["dataset"].get("prompt_format", "auto"), opts.model)
    problems = countdown.load_splits(exp["dataset"]).eval
    budget = int(exp["eval"].get("max_new_tokens") or exp["training"]["max_completion_length"])
    tokenizer.padding_side = "left"
    torch.manual_seed(opts.seed)
    counts = {"completions": 0, "with_answer": 0, "with_equals": 0, "old_correct": 0, "new_correct": 0,
              "old_to_new_correct": 0, "new_to_old_correct": 0}
    changed: list[dict] = []
    equals: list[str] = []
    for start in range(0, len(problems), 32):
        batch = problems[start : start + 32]
        texts = [countdown.render_prompt(p, fmt, tokenizer) for p in batch]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=fmt != countdown.CHAT)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=budget, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                 num_return_sequences=opts.samples, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
        decoded = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        for i, problem in enumerate(batch):
            for completion in decoded[i * opts.samples : (i + 1) * opts.samples]:
                nums, target = list(problem.numbers), problem.target
                old, new = old_verdict(completion, nums, target), rewards.countdown_correct(completion, nums, target)
                answer = rewards.extract_answer(completion)
                counts["completions"] += 1
                counts["with_answer"] += answer is not None
                if answer is not None and "=" in answer:
                    counts["with_equals"] += 1
                    equals.append(answer)
                counts["old_correct"] += old
                counts["new_correct"] += new
                counts["old_to_new_correct"] += new and not old
                counts["new_to_old_correct"] += old and not new
                if old != new:
                    changed.append({"numbers": nums, "target": target, "completion": completion, "old": old, "new": new})
    print(json.dumps({"model": opts.model, "problems": len(problems), "samples_per_problem": opts.samples,
                      "seed": opts.seed, "max_new_tokens": budget, **counts}, indent=1))
    for answer in equals[:20]:
        print("answer with '=':", repr(answer))
    for row in changed:
        print("changed:", json.dumps(row))


if __name__ == "__main__":
    main()
