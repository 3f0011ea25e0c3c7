"""Held-out accuracy: greedy and sampled pass@1 on problems never trained on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from perl_cli.data import countdown
from perl_cli.learning import mean as _mean
from perl_cli.stats import standard_error  # the report's definition, one copy

# Prompts per generate() call; sampled calls multiply this by the samples per problem.
EVAL_BATCH_PROMPTS = 64


def _generate(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    *,
    add_special_tokens: bool,
    max_new_tokens: int,
    sample: bool,
    num_samples: int,
    temperature: float,
    top_p: float = 1.0,
) -> list[str]:
    import torch

    device = next(model.parameters()).device
    tokenizer.padding_side = "left"  # new tokens must follow every prompt directly
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens).to(device)
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if sample:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0, num_return_sequences=num_samples)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        out = model.generate(**enc, **kwargs)
    return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def evaluate_accuracy(
    model: Any,
    tokenizer: Any,
    problems: Sequence[countdown.Problem],
    prompt_format: str,
    *,
    num_samples: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    top_p: float = 1.0,
    task: Any = None,
) -> dict[str, float]:
    """``accuracy_greedy`` and ``accuracy_sampled`` (mean over `num_samples` per problem), each
    with its standard error over problems (``*_se``), and the per-problem results
    (``per_problem_greedy``: 0 or 1; ``per_problem_sampled``: the share of samples correct),
    in the order of `problems`, so that two evaluations can be compared problem by problem.

    The samples of one problem are not independent draws (an easy problem is solved by all
    of them), so the error is computed over problems, from each problem's mean, not as a
    binomial over every sample, which would understate it.
    """
    import torch

    was_training = model.training
    model.eval()
    if task is None:  # Countdown, for callers from before the task interface
        from perl_cli.data.tasks import CountdownTask

        task = CountdownTask({})
    texts = [task.render_prompt(p, prompt_format, tokenizer) for p in problems]
    # Chat templates already contain the special tokens; plain prompts are tokenized
    # exactly as GRPOTrainer tokenizes them.
    special = prompt_format != countdown.CHAT
    greedy_hits: list[float] = []  # per problem: 0 or 1
    sampled_rates: list[float] = []  # per problem: share of its samples that are correct
    # The same sampling stream for the base model and the trained one.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, len(problems), EVAL_BATCH_PROMPTS):
            batch = problems[start : start + EVAL_BATCH_PROMPTS]
            chunk = texts[start : start + EVAL_BATCH_PROMPTS]
            common = {"add_special_tokens": special, "max_new_tokens": max_new_tokens, "temperature": temperature,
                      "top_p": top_p}
            greedy = _generate(model, tokenizer, chunk, sample=False, num_samples=1, **common)
            sampled = _generate(model, tokenizer, chunk, sample=True, num_samples=num_samples, **common)
            for i, problem in enumerate(batch):
                greedy_hits.append(float(task.correct(greedy[i], problem)))
                group = sampled[i * num_samples : (i + 1) * num_samples]
                sampled_rates.append(sum(task.correct(c, problem) for c in group) / num_samples)
    model.train(was_training)
    return {
        "accuracy_greedy": _mean(greedy_hits),
        "accuracy_greedy_se": standard_error(greedy_hits),
        "accuracy_sampled": _mean(sampled_rates),
        "accuracy_sampled_se": standard_error(sampled_rates),
        "eval_problems": len(problems),
        "eval_samples_per_problem": num_samples,
        # Per problem, in the order of the held-out problems (the same for every method of a
        # suite): what `perl report` pairs methods on (perl_cli/significance.py).
        "per_problem_sampled": sampled_rates,
        "per_problem_greedy": greedy_hits,
    }
