"""The built-in tiny math set: small arithmetic and algebra problems with exact answers.

Generated here, deterministically, so that the math task, its rewards and benchmark
evaluation run end to end with no download (the `math-demo` suite). It is written once
per machine as two JSONL files in the format of a local math dataset (columns `problem`
and `answer`), under ``${PERL_CACHE_DIR:-~/.cache/perl}/data/tiny-math-<hash>/``:

* ``train.jsonl`` — the training pool (``dataset_name_or_path = "builtin:math"``);
* ``test.jsonl`` — the `tiny-math` benchmark, never trained on (no problem text in common).

Answers are exact: integers, or reduced fractions written ``p/q`` (math-verify equates
them with ``\\frac{p}{q}`` and decimals).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
import tempfile
from fractions import Fraction
from pathlib import Path

GENERATOR_SEED = 0
TRAIN_SIZE = 4000
BENCHMARK_SIZE = 200
# Kinds of problems and their share of the set.
KINDS = (("add", 3), ("sub", 2), ("mul", 2), ("mix", 2), ("linear", 2), ("fraction", 1))


def _fraction_text(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _one(kind: str, rng: random.Random) -> tuple[str, str]:
    """(problem, answer) of one kind."""
    if kind == "add":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return f"{a}+{b}", str(a + b)
    if kind == "sub":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return f"{a}-{b}", str(a - b)
    if kind == "mul":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        return f"{a}*{b}", str(a * b)
    if kind == "mix":
        a, b, c = rng.randint(1, 20), rng.randint(2, 9), rng.randint(2, 9)
        return f"{a}+{b}*{c}", str(a + b * c)
    if kind == "linear":
        a, x, b = rng.randint(2, 9), rng.randint(-9, 9), rng.randint(1, 20)
        sign = rng.choice("+-")
        c = a * x + (b if sign == "+" else -b)
        return f"solve {a}x{sign}{b}={c}", str(x)
    if kind == "fraction":
        b, d = rng.randint(2, 6), rng.randint(2, 6)
        a, c = rng.randint(1, b - 1), rng.randint(1, d - 1)
        return f"{a}/{b}+{c}/{d}", _fraction_text(Fraction(a, b) + Fraction(c, d))
    raise ValueError(kind)


def generate(total: int = TRAIN_SIZE + BENCHMARK_SIZE, seed: int = GENERATOR_SEED) -> list[dict[str, str]]:
    """`total` distinct problems (by text), in a deterministic order."""
    rng = random.Random(seed)
    kinds = [k for k, weight in KINDS for _ in range(weight)]
    seen: dict[str, str] = {}
    attempts = 0
    while len(seen) < total:
        attempts += 1
        if attempts > 100 * total:
            raise RuntimeError(f"the tiny math generator found only {len(seen)} distinct problems")
        problem, answer = _one(rng.choice(kinds), rng)
        seen.setdefault(problem, answer)
    return [{"problem": p, "answer": a} for p, a in seen.items()]


def split_rows() -> dict[str, list[dict[str, str]]]:
    rows = generate()
    return {"test": rows[:BENCHMARK_SIZE], "train": rows[BENCHMARK_SIZE:]}


def digest() -> str:
    source = "\n".join(inspect.getsource(f) for f in (_fraction_text, _one, generate, split_rows))
    blob = json.dumps({"code": source, "train": TRAIN_SIZE, "test": BENCHMARK_SIZE, "seed": GENERATOR_SEED, "kinds": KINDS})
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def builtin_files() -> dict[str, Path]:
    """The paths of train.jsonl and test.jsonl, written on first use (atomically)."""
    from perl_cli.builtin_parts import cache_dir

    root = cache_dir() / "data" / f"tiny-math-{digest()}"
    files = {name: root / f"{name}.jsonl" for name in ("train", "test")}
    if all(p.exists() for p in files.values()):
        return files
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in split_rows().items():
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=root)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, files[name])  # concurrent writers write the same bytes
    return files
