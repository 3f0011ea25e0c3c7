"""Benchmark evaluation of a model: avg@n, pass@k and greedy accuracy, per problem saved.

Results land in ``<experiment>/benchmarks/<name>.json``: the benchmark's spec, the
model's fingerprint, the summary (perl_cli/benchmarks.summarize) and every problem's
outcome. Work is saved batch by batch in ``benchmarks/.<name>.partial.jsonl``, so an
evaluation stopped by Ctrl+C or SIGTERM continues where it stopped; a result whose spec
and fingerprint match what is asked is not computed again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from perl_cli import benchmarks, state
from perl_cli.data import math as mathdata
from perl_cli.data.countdown import CHAT
from perl_cli.math_rewards import math_correct
from perl_cli.train.callbacks import Interrupted

BATCH_PROMPTS = 16
KEPT_SAMPLE_TEXTS = 2  # completions kept per problem in the results, for reading
KEPT_TEXT_CHARS = 2000
MAX_RESULT_BYTES = benchmarks.MAX_RESULT_BYTES


class BenchmarkStopped(Interrupted):
    """A stop was asked between batches; what was done is saved (the worker exits as interrupted)."""


def load_problems(bench: benchmarks.Benchmark) -> list[mathdata.MathProblem]:
    source = bench.source
    if source == benchmarks.BUILTIN_TINY:
        from perl_cli.data import tiny_math

        source = str(tiny_math.builtin_files()["test"])
    rows = mathdata.load_rows(source, split=bench.split, subset=bench.subset)
    problems = mathdata.rows_to_problems(rows, f"benchmark {bench.name} ({source})", bench.problem_column, bench.answer_column)
    return problems[: bench.limit] if bench.limit else problems


result_path = benchmarks.result_path
is_done = benchmarks.is_done


def _read_partial(path: Path, key: dict[str, Any]) -> list[dict[str, Any]]:
    rows = state.read_jsonl(path)
    if not rows or rows[0].get("key") != key:
        return []
    return [r for r in rows[1:] if isinstance(r.get("index"), int)]


def evaluate_benchmark(
    model: Any,
    tokenizer: Any,
    spec: dict[str, Any],
    exp_dir: Path,
    *,
    prompt_format: str,
    task_section: dict[str, Any],
    seed: int,
    fingerprint: str | None,
    stop: Callable[[], bool] = lambda: False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate one benchmark (resuming a partial run); returns its summary."""
    import torch

    from perl_cli.train.evaluate import _generate

    bench = benchmarks.from_spec(spec)
    problems = load_problems(bench)
    out_dir = exp_dir / benchmarks.RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / f".{bench.name}.partial.jsonl"
    key = {"spec": spec, "fingerprint": fingerprint, "problems": len(problems)}
    done = {r["index"]: r for r in _read_partial(partial, key)}
    if done:
        print(f"[perl] benchmark {bench.name}: continuing after {len(done)} of {len(problems)} problems", flush=True)
    else:
        state.atomic_write_text(partial, json.dumps({"key": key}) + "\n")
    texts = [mathdata.render_prompt(p, prompt_format, tokenizer, task_section) for p in problems]
    special = prompt_format != CHAT
    was_training = model.training
    model.eval()
    if progress is not None:
        progress(len(done), len(problems))  # perl status names the benchmark before its first batch ends
    try:
        for start in range(0, len(problems), BATCH_PROMPTS):
            indices = [i for i in range(start, min(start + BATCH_PROMPTS, len(problems))) if i not in done]
            if not indices:
                continue
            if stop():
                raise BenchmarkStopped(f"{bench.name}: stopped after {len(done)} of {len(problems)} problems")
            chunk = [texts[i] for i in indices]
            common = {"add_special_tokens": special, "max_new_tokens": bench.max_new_tokens,
                      "temperature": bench.temperature, "top_p": bench.top_p}
            # A stream per batch, from the seed and the batch: a resumed run samples what
            # an uninterrupted one would have.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed * 1_000_003 + start)
                greedy = _generate(model, tokenizer, chunk, sample=False, num_samples=1, **common) if bench.greedy else None
                sampled = _generate(model, tokenizer, chunk, sample=True, num_samples=bench.n, **common)
            lines = []
            for j, i in enumerate(indices):
                answer = problems[i].answer
                group = sampled[j * bench.n : (j + 1) * bench.n]
                row = {
                    "index": i,
                    "answer": answer,
                    "correct": [math_correct(c, answer) for c in group],
                    "greedy": None if greedy is None else math_correct(greedy[j], answer),
                    "samples": [c[:KEPT_TEXT_CHARS] for c in group[:KEPT_SAMPLE_TEXTS]],
                }
                done[i] = row
                lines.append(json.dumps(row))
            with open(partial, "a", encoding="utf-8") as handle:
                handle.write("\n".join(lines) + "\n")
                handle.flush()
            if progress is not None:
                progress(len(done), len(problems))
    finally:
        model.train(was_training)
    results = [
        benchmarks.ProblemResult(i, done[i]["answer"], list(done[i]["correct"]), done[i]["greedy"])
        for i in sorted(done)
    ]
    summary = benchmarks.summarize(results, bench.n, bench.k)
    state.atomic_write_json(result_path(exp_dir, bench.name), {
        "name": bench.name,
        "spec": spec,
        "fingerprint": fingerprint,
        "summary": summary,
        "problems": [done[i] for i in sorted(done)],
    })
    partial.unlink(missing_ok=True)
    return summary


def run_benchmarks(
    model: Any,
    tokenizer: Any,
    specs: dict[str, dict[str, Any]],
    exp_dir: Path,
    *,
    prompt_format: str,
    task_section: dict[str, Any],
    seed: int,
    fingerprint: str | None,
    stop: Callable[[], bool] = lambda: False,
    phase: Callable[[str, int | None, int | None], None] | None = None,
) -> dict[str, Any]:
    """Every benchmark of `specs` not already done; {name: summary}."""
    out: dict[str, Any] = {}
    for name, spec in specs.items():
        if is_done(exp_dir, name, spec, fingerprint):
            saved = state.read_json(result_path(exp_dir, name), max_bytes=MAX_RESULT_BYTES)
            out[name] = saved["summary"]
            continue
        progress = None
        if phase is not None:
            def progress(done: int, total: int, name: str = name) -> None:
                phase(f"benchmark {name}", done, total)
        summary = evaluate_benchmark(
            model, tokenizer, spec, exp_dir, prompt_format=prompt_format, task_section=task_section, seed=seed,
            fingerprint=fingerprint, stop=stop, progress=progress,
        )
        out[name] = summary
        bench = benchmarks.from_spec(spec)
        print(
            f"[perl] benchmark {name}: avg@{bench.n} {100 * summary[f'avg@{bench.n}']:.1f}% "
            f"± {100 * summary[f'avg@{bench.n}_se']:.1f}"
            + "".join(f", pass@{k} {100 * summary[f'pass@{k}']:.1f}%" for k in bench.k)
            + (f", greedy {100 * summary['greedy']:.1f}%" if "greedy" in summary else "")
            + f" ({summary['problems']} problems)",
            flush=True,
        )
    return out
