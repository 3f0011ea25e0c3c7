"""The Countdown task: problems, splits, and prompts.

Three sources give the same shape of data, a list of `Problem`s:

* ``builtin:countdown`` — generated here, every problem solvable by construction
  (its target is the value of an equation over its numbers), deterministic given
  ``split_seed``.
* ``Jiayi-Pan/Countdown-Tasks-3to4`` (or any hub dataset with the same columns) via
  ``datasets.load_dataset``; fails with a clear message when offline.
* a local ``.jsonl`` / ``.json`` / ``.parquet`` file with columns ``nums`` (or
  ``numbers``) and ``target``.

The held-out evaluation set is split off by *problem identity* (sorted numbers and
target) after de-duplication, so no evaluation problem is ever a training problem,
whatever the order or duplication of the source.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perl_cli.data.splits import DataError, Splits, split_problems  # noqa: F401  (re-exported: one rule for every task)

BUILTIN_NAME = "builtin:countdown"
HUB_NAME = "Jiayi-Pan/Countdown-Tasks-3to4"

# Exhaustive enumeration is used while the space of number multisets is this small
# (3 numbers from 1-10: 220); beyond it, problems are sampled.
_MAX_ENUMERATED_MULTISETS = 20_000
# Sampling gives up after this many draws per wanted problem (tiny spaces run dry).
_SAMPLING_ATTEMPTS_PER_PROBLEM = 50
# A sampled builtin dataset without data_size gets this many training problems.
DEFAULT_SAMPLED_TRAIN_SIZE = 20_000

SYSTEM_PROMPT = (
    "You are a helpful assistant. You first think about the reasoning process in the "
    "mind and then provide the user with the answer."
)
USER_PROMPT = (
    "Using the numbers {numbers}, create an equation that equals {target}. You can use "
    "basic arithmetic operations (+, -, *, /) and each number can only be used once. "
    "Show your work in <think> </think> tags. And return the final answer in "
    "<answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>."
)


@dataclass(frozen=True)
class Problem:
    numbers: tuple[int, ...]
    target: int
    solution: str | None = None  # a known correct equation (builtin problems only)

    @property
    def key(self) -> tuple[tuple[int, ...], int]:
        """Problem identity: the multiset of numbers and the target."""
        return (tuple(sorted(self.numbers)), self.target)


# --- the built-in generator ------------------------------------------------------


def _value(numbers: Sequence[int], ops: Sequence[str]) -> int | None:
    """The integer value of ``n0 op0 n1 op1 n2 ...`` with the usual precedence."""
    from fractions import Fraction

    # Fold * and / into terms first, then add them up: operator precedence without eval.
    terms: list[Fraction] = [Fraction(numbers[0])]
    signs: list[int] = [1]
    for op, n in zip(ops, numbers[1:], strict=True):
        if op == "*":
            terms[-1] *= n
        elif op == "/":
            terms[-1] /= n  # numbers are >= 1 here, never zero
        else:
            terms.append(Fraction(n))
            signs.append(1 if op == "+" else -1)
    total = sum((s * t for s, t in zip(signs, terms, strict=True)), Fraction(0))
    return int(total) if total.denominator == 1 else None


def _equation(numbers: Sequence[int], ops: Sequence[str]) -> str:
    parts = [str(numbers[0])]
    for op, n in zip(ops, numbers[1:], strict=True):
        parts += [op, str(n)]
    return "".join(parts)


def _problems_for(numbers: Sequence[int], operators: str) -> dict[tuple, Problem]:
    """Every problem with these numbers: one per reachable target >= 1."""
    found: dict[tuple, Problem] = {}
    for perm in sorted(set(itertools.permutations(numbers))):
        for ops in itertools.product(operators, repeat=len(numbers) - 1):
            value = _value(perm, ops)
            if value is None or value < 1:
                continue
            problem = Problem(tuple(sorted(numbers)), value, _equation(perm, ops))
            found.setdefault(problem.key, problem)
    return found


def _validate_generator(num_count: int, min_number: int, max_number: int, operators: str) -> None:
    if num_count < 2:
        raise DataError(f"dataset.num_count must be at least 2, got {num_count}")
    if not 1 <= min_number <= max_number:
        raise DataError(f"dataset.min_number/max_number must satisfy 1 <= min <= max, got {min_number}..{max_number}")
    bad = sorted(set(operators) - set("+-*/"))
    if not operators or bad:
        raise DataError(f"dataset.operators must be a non-empty subset of '+-*/', got {operators!r}")


def generate_problems(
    num_count: int, min_number: int, max_number: int, operators: str, *, seed: int, wanted: int | None
) -> list[Problem]:
    """Distinct solvable problems, in a deterministic shuffled order.

    Small spaces are enumerated completely (then `wanted` is ignored); large ones are
    sampled until `wanted` distinct problems are found.
    """
    _validate_generator(num_count, min_number, max_number, operators)
    span = max_number - min_number + 1
    rng = random.Random(seed)
    problems: dict[tuple, Problem] = {}
    if math.comb(span + num_count - 1, num_count) <= _MAX_ENUMERATED_MULTISETS:
        for nums in itertools.combinations_with_replacement(range(min_number, max_number + 1), num_count):
            problems.update(_problems_for(nums, operators))
        ordered = sorted(problems.values(), key=lambda p: p.key)
        rng.shuffle(ordered)
        return ordered
    wanted = wanted or DEFAULT_SAMPLED_TRAIN_SIZE
    for _ in range(wanted * _SAMPLING_ATTEMPTS_PER_PROBLEM):
        if len(problems) >= wanted:
            break
        nums = [rng.randint(min_number, max_number) for _ in range(num_count)]
        ops = [rng.choice(operators) for _ in range(num_count - 1)]
        value = _value(nums, ops)
        if value is None or value < 1:
            continue
        problem = Problem(tuple(sorted(nums)), value, _equation(nums, ops))
        problems.setdefault(problem.key, problem)
    return list(problems.values())


# --- loading from a hub dataset or a file ------------------------------------------


def _rows_to_problems(rows: Iterable[dict[str, Any]], source: str) -> list[Problem]:
    out: list[Problem] = []
    for i, row in enumerate(rows):
        nums = row.get("nums", row.get("numbers"))
        target = row.get("target")
        if nums is None or target is None:
            raise DataError(
                f"{source}: row {i} lacks a 'nums' (or 'numbers') and a 'target' column; columns present: {sorted(row)}"
            )
        out.append(Problem(tuple(int(n) for n in nums), int(target)))
    return out


def _load_file(path: Path) -> list[Problem]:
    suffix = path.suffix.lower()
    kinds = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
    if suffix not in kinds:
        raise DataError(f"{path}: unsupported dataset file type {suffix!r}; use .jsonl, .json or .parquet")
    import datasets

    try:
        ds = datasets.load_dataset(kinds[suffix], data_files=str(path), split="train")
    except Exception as exc:  # datasets raises many types for unreadable files
        raise DataError(f"{path}: could not read dataset file: {exc}") from exc
    return _rows_to_problems(ds, str(path))


def _load_hub(name: str) -> list[Problem]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split="train")
    except Exception as exc:
        raise DataError(
            f"could not load dataset {name!r} from the Hugging Face Hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Offline machine? Set HF_DATASETS_OFFLINE=1 "
            "with the dataset already in the cache, download it once elsewhere and point "
            "dataset_name_or_path at a local .jsonl/.parquet file, or use builtin:countdown."
        ) from exc
    return _rows_to_problems(ds, name)


def load_splits(dataset: dict[str, Any]) -> Splits:
    """The train and held-out problems described by the config's `dataset` section."""
    name = str(dataset["dataset_name_or_path"])
    eval_size = int(dataset.get("eval_size") or 0)
    data_size = dataset.get("data_size")
    seed = int(dataset.get("split_seed", 0))
    if name == BUILTIN_NAME:
        wanted = None if data_size is None else int(data_size) + eval_size
        problems = generate_problems(
            int(dataset.get("num_count", 3)),
            int(dataset.get("min_number", 1)),
            int(dataset.get("max_number", 10)),
            str(dataset.get("operators", "+-*")),
            seed=seed,
            wanted=wanted,
        )
    elif Path(name).expanduser().exists():
        problems = _load_file(Path(name).expanduser())
    elif name.startswith("builtin:"):
        raise DataError(f"unknown built-in dataset {name!r}; the built-in one is {BUILTIN_NAME!r}")
    else:
        problems = _load_hub(name)
    return split_problems(problems, eval_size=eval_size, data_size=data_size, seed=seed)


# --- prompts -------------------------------------------------------------------------

COMPACT = "compact"
CHAT = "chat"


def resolve_prompt_format(prompt_format: str, model_name: str) -> str:
    """ "auto" is compact for the built-in tiny models, chat for real ones."""
    if prompt_format in (COMPACT, CHAT):
        return prompt_format
    if prompt_format != "auto":
        raise DataError(f"dataset.prompt_format must be auto, chat or compact, got {prompt_format!r}")
    return COMPACT if model_name.startswith("builtin:") else CHAT


def compact_prompt(problem: Problem) -> str:
    return f"nums: {' '.join(map(str, problem.numbers))} target: {problem.target}\n"


def compact_completion(problem: Problem) -> str:
    """The supervised target for the tiny model's warm start (eos is added by the caller)."""
    if problem.solution is None:
        raise DataError("only generated problems carry a solution")
    return f"<answer>{problem.solution}</answer>"


def chat_messages(problem: Problem) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": USER_PROMPT.format(numbers=list(problem.numbers), target=problem.target)},
    ]


def prompt_for(problem: Problem, prompt_format: str) -> str | list[dict[str, str]]:
    """What GRPOTrainer gets as `prompt`: plain text, or messages it templates itself."""
    return chat_messages(problem) if prompt_format == CHAT else compact_prompt(problem)


def render_prompt(problem: Problem, prompt_format: str, tokenizer: Any) -> str:
    """The exact text the model sees (used for length checks and evaluation)."""
    if prompt_format == CHAT:
        return tokenizer.apply_chat_template(chat_messages(problem), tokenize=False, add_generation_prompt=True)
    return compact_prompt(problem)


def to_records(problems: Sequence[Problem], prompt_format: str) -> list[dict[str, Any]]:
    """Rows for a `datasets.Dataset`: prompt plus the columns the rewards read."""
    return [{"prompt": prompt_for(p, prompt_format), "numbers": list(p.numbers), "target": p.target} for p in problems]
