"""Benchmarks as config, and their statistics (pure Python: `perl plan` and `perl report` use it).

A benchmark is a set of math problems with reference answers, scored by sampling `n`
completions per problem (temperature, top_p, a token budget) and, optionally, one
greedy completion. Built-in definitions below; experiments.toml may redefine them or
add others in top-level ``[benchmarks.NAME]`` tables with the same keys. A suite asks
for benchmarks with ``task.benchmarks = ["aime24", ...]``.

Statistics, per benchmark, each with its standard error over problems (a problem's
samples are not independent draws, so the error is that of the mean of per-problem
values, never a binomial over all samples):

* ``avg@n`` — the mean share of correct samples (the paper's metric);
* ``pass@k`` — the unbiased estimator 1 - C(n-c, k) / C(n, k) per problem (Chen et al.
  2021), for each k <= n;
* ``greedy`` — the share of problems whose greedy completion is correct.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BUILTIN_TINY = "builtin:tiny-math"
RESULTS_DIR = "benchmarks"  # <experiment>/benchmarks/<name>.json


class BenchmarkError(ValueError):
    """A benchmark definition that cannot be used; the message names the key and the fix."""


@dataclass(frozen=True)
class Benchmark:
    name: str
    source: str  # hub name, local file or directory, or builtin:tiny-math
    split: str = "test"
    subset: str | None = None
    problem_column: str = "problem"
    answer_column: str = "answer"
    n: int = 4  # samples per problem
    k: tuple[int, ...] = (1,)
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 32768
    greedy: bool = True
    limit: int | None = None  # the first `limit` problems only (quick checks)
    description: str = ""

    def spec(self) -> dict[str, Any]:
        """What decides the result (saved with it; a changed spec is re-evaluated)."""
        d = asdict(self)
        d["k"] = list(self.k)
        d.pop("description")
        return d


# The paper's benchmarks (avg@n with temperature 0.6, top_p 0.95, as for DeepSeek-R1 models).
BUILTIN: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("aime24", "HuggingFaceH4/aime_2024", split="train", n=32, k=(1, 8, 32),
                  description="AIME 2024, 30 problems"),
        Benchmark("aime25", "math-ai/aime25", split="test", n=32, k=(1, 8, 32), description="AIME 2025, 30 problems"),
        Benchmark("amc23", "math-ai/amc23", split="test", problem_column="question", n=32, k=(1, 8, 32),
                  description="AMC 2023, 40 problems"),
        Benchmark("math500", "HuggingFaceH4/MATH-500", split="test", n=4, k=(1, 4),
                  description="MATH-500, 500 problems"),
        Benchmark("tiny-math", BUILTIN_TINY, split="test", n=4, k=(1, 2, 4), temperature=1.0, top_p=1.0,
                  max_new_tokens=16, description="the built-in tiny math set's 200 held-out problems (CPU)"),
    )
}

_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "source": (str, "a hub name, a local file or directory, or builtin:tiny-math"),
    "split": (str, "a split name such as \"test\""),
    "subset": (str, "a configuration name"),
    "problem_column": (str, "a column name"),
    "answer_column": (str, "a column name"),
    "n": (int, "a whole number >= 1"),
    "k": (list, "a list of whole numbers between 1 and n, e.g. [1, 8]"),
    "temperature": ((int, float), "a number > 0"),
    "top_p": ((int, float), "a number in (0, 1]"),
    "max_new_tokens": (int, "a whole number >= 1"),
    "greedy": (bool, "true or false"),
    "limit": (int, "a whole number >= 1"),
    "description": (str, "a string"),
}


def definitions(table: Any, where: str = "benchmarks") -> dict[str, Benchmark]:
    """The built-in benchmarks, overlaid with a ``[benchmarks]`` table (validated)."""
    out = dict(BUILTIN)
    if table is None:
        return out
    if not isinstance(table, dict):
        raise BenchmarkError(f"{where} must be a table of benchmarks, e.g. [benchmarks.mine] source = \"file.jsonl\"")
    for name, values in table.items():
        if not isinstance(values, dict):
            raise BenchmarkError(f"{where}.{name} must be a table (source, n, k, ...)")
        unknown = sorted(set(values) - set(_KEYS))
        if unknown:
            raise BenchmarkError(f"{where}.{name}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_KEYS))}")
        merged = asdict(out[name]) if name in out else {"name": name}
        for key, value in values.items():
            kind, want = _KEYS[key]
            if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
                raise BenchmarkError(f"{where}.{name}.{key} = {value!r} must be {want}")
            merged[key] = value
        if "source" not in merged:
            raise BenchmarkError(f"{where}.{name} needs a source (a hub name, a local file or directory)")
        merged["k"] = tuple(merged.get("k") or (1,))
        merged["name"] = name
        out[name] = Benchmark(**merged)
        problem = benchmark_problem(out[name])
        if problem:
            raise BenchmarkError(f"{where}.{name}: {problem}")
    return out


def benchmark_problem(b: Benchmark) -> str | None:
    if b.n < 1:
        return f"n = {b.n} must be >= 1"
    if not b.k or any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= b.n for k in b.k):
        return f"k = {list(b.k)} must be whole numbers between 1 and n = {b.n}"
    if not b.temperature > 0:
        return f"temperature = {b.temperature} must be > 0"
    if not 0 < b.top_p <= 1:
        return f"top_p = {b.top_p} must be in (0, 1]"
    if b.max_new_tokens < 1:
        return f"max_new_tokens = {b.max_new_tokens} must be >= 1"
    if b.limit is not None and b.limit < 1:
        return f"limit = {b.limit} must be >= 1"
    return None


def resolve(names: Sequence[str], known: dict[str, Benchmark]) -> dict[str, dict[str, Any]]:
    """{name: spec} for config.json; a BenchmarkError naming an unknown benchmark."""
    out = {}
    for name in names:
        if name not in known:
            raise BenchmarkError(f"unknown benchmark {name!r} in task.benchmarks; known: {', '.join(sorted(known))}")
        out[name] = known[name].spec()
    return out


MAX_RESULT_BYTES = 64 * 2**20  # per-problem results of a large benchmark exceed the 1 MiB of status files


def result_path(exp_dir: Path, name: str) -> Path:
    return Path(exp_dir) / RESULTS_DIR / f"{name}.json"


def is_done(exp_dir: Path, name: str, spec: dict[str, Any], fingerprint: str | None) -> bool:
    """A result for this spec and this trained model (fingerprint) is saved."""
    from perl_cli import state

    saved = state.read_json(result_path(exp_dir, name), max_bytes=MAX_RESULT_BYTES)
    return isinstance(saved, dict) and saved.get("spec") == spec and saved.get("fingerprint") == fingerprint


def from_spec(spec: dict[str, Any]) -> Benchmark:
    return Benchmark(**{**spec, "k": tuple(spec.get("k") or (1,))})


# --- statistics -------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with `c` correct among `n` samples."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample sd / sqrt(n)); SE 0 for fewer than 2 values."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


@dataclass
class ProblemResult:
    index: int
    answer: str
    correct: list[bool] = field(default_factory=list)  # one per sample
    greedy: bool | None = None
    sample_texts: list[str] = field(default_factory=list)  # a few, for reading


def summarize(results: Sequence[ProblemResult], n: int, ks: Sequence[int]) -> dict[str, Any]:
    """avg@n, pass@k and greedy accuracy, each as a fraction with its SE over problems."""
    out: dict[str, Any] = {"problems": len(results), "n": n}
    avg, se = mean_se([sum(r.correct) / n for r in results])
    out[f"avg@{n}"], out[f"avg@{n}_se"] = avg, se
    for k in ks:
        value, se = mean_se([pass_at_k(n, sum(r.correct), k) for r in results])
        out[f"pass@{k}"], out[f"pass@{k}_se"] = value, se
    greedy = [float(r.greedy) for r in results if r.greedy is not None]
    if greedy:
        out["greedy"], out["greedy_se"] = mean_se(greedy)
    return out
