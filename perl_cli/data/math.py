"""The math task: word problems with a reference answer, their splits and prompts.

Sources, all read through `datasets` into the same rows (a problem and its answer, in
columns named by `task.problem_column` / `task.answer_column`):

* ``builtin:math`` — the tiny arithmetic/algebra set generated here (data/tiny_math.py),
  written once as JSONL files and then read like any local file.
* a hub dataset by name (e.g. ``open-r1/DAPO-Math-17k-Processed``), `task.subset` and
  `task.split` choosing its configuration and split; or a local directory in the hub's
  file layout (what ``datasets.load_dataset`` reads from a path).
* a local ``.jsonl`` / ``.json`` / ``.parquet`` file.

As for Countdown, the held-out set is split off by problem identity (the problem text
with whitespace collapsed) after de-duplication, so no held-out problem is trained on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perl_cli.data.countdown import CHAT, COMPACT
from perl_cli.data.splits import DataError, Splits, split_problems  # noqa: F401  (re-exported)

BUILTIN_NAME = "builtin:math"
DEFAULT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
# A math answer is a short string; longer "answers" are a wrong column, not an answer.
MAX_REFERENCE_CHARS = 2000


@dataclass(frozen=True)
class MathProblem:
    problem: str
    answer: str

    @property
    def key(self) -> str:
        return " ".join(self.problem.split())


MathSplits = Splits  # the same rule as Countdown: data/splits.py


def _answer_text(value: Any) -> str | None:
    """A reference answer as text: strings as they are, numbers by their shortest form."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (list, tuple)):  # some sets store a list of accepted answers
        value = value[0] if value else None
        return _answer_text(value)
    text = str(value).strip()
    return text if text and len(text) <= MAX_REFERENCE_CHARS else None


def rows_to_problems(rows: Iterable[dict[str, Any]], source: str, problem_column: str, answer_column: str) -> list[MathProblem]:
    out: list[MathProblem] = []
    skipped = 0
    for i, row in enumerate(rows):
        if problem_column not in row or answer_column not in row:
            raise DataError(
                f"{source}: row {i} has no {problem_column!r} and {answer_column!r} columns (columns present: "
                f"{sorted(row)}); set task.problem_column and task.answer_column to the right ones"
            )
        problem, answer = row[problem_column], _answer_text(row[answer_column])
        if not isinstance(problem, str) or not problem.strip() or answer is None:
            skipped += 1
            continue
        out.append(MathProblem(problem.strip(), answer))
    if skipped:
        print(f"[perl] warning: {source}: {skipped} rows without a problem text or a usable answer were skipped", flush=True)
    if not out:
        raise DataError(f"{source}: no usable problems (column {problem_column!r} / {answer_column!r})")
    return out


def load_rows(name: str, *, split: str, subset: str | None) -> Any:
    """The rows of a local file, a local dataset directory or a hub dataset, via `datasets`."""
    import datasets

    path = Path(name).expanduser()
    if path.is_file():
        kinds = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
        kind = kinds.get(path.suffix.lower())
        if kind is None:
            raise DataError(f"{path}: unsupported dataset file type {path.suffix!r}; use .jsonl, .json or .parquet")
        try:
            return datasets.load_dataset(kind, data_files=str(path), split="train")
        except Exception as exc:  # datasets raises many types for unreadable files
            raise DataError(f"{path}: could not read dataset file: {exc}") from exc
    try:
        return datasets.load_dataset(str(path) if path.is_dir() else name, subset, split=split)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        where = "local dataset directory" if path.is_dir() else "dataset on the Hugging Face Hub"
        raise DataError(
            f"could not load {where} {name!r} (split {split!r}{f', subset {subset!r}' if subset else ''}): "
            f"{type(exc).__name__}: {first}. Offline machine? Set HF_DATASETS_OFFLINE=1 with the dataset already "
            "in the cache, or download it once elsewhere and point at the local file or directory."
        ) from exc


def load_problems(name: str, task: dict[str, Any]) -> list[MathProblem]:
    if name == BUILTIN_NAME:
        from perl_cli.data import tiny_math

        name = str(tiny_math.builtin_files()["train"])
    elif name.startswith("builtin:"):
        raise DataError(f"unknown built-in math dataset {name!r}; the built-in one is {BUILTIN_NAME!r}")
    rows = load_rows(name, split=str(task.get("split") or "train"), subset=task.get("subset"))
    return rows_to_problems(rows, name, str(task.get("problem_column") or "problem"), str(task.get("answer_column") or "answer"))


def load_splits(dataset: dict[str, Any], task: dict[str, Any]) -> MathSplits:
    problems = load_problems(str(dataset["dataset_name_or_path"]), task)
    return split_problems(
        problems,
        eval_size=int(dataset.get("eval_size") or 0),
        data_size=dataset.get("data_size"),
        seed=int(dataset.get("split_seed", 0)),
    )


# --- prompts -------------------------------------------------------------------------


def compact_prompt(problem: MathProblem) -> str:
    """The tiny model's prompt: no chat template, no instructions it could not read."""
    return f"q: {problem.problem}\n"


def compact_completion(answer: str) -> str:
    return f"\\boxed{{{answer}}}"


def chat_messages(problem: MathProblem, task: dict[str, Any]) -> list[dict[str, str]]:
    instruction = task.get("instruction", DEFAULT_INSTRUCTION) or ""
    user = f"{problem.problem}\n{instruction}".strip() if instruction else problem.problem
    system = task.get("system_prompt") or ""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def prompt_for(problem: MathProblem, prompt_format: str, task: dict[str, Any]) -> str | list[dict[str, str]]:
    return chat_messages(problem, task) if prompt_format == CHAT else compact_prompt(problem)


def render_prompt(problem: MathProblem, prompt_format: str, tokenizer: Any, task: dict[str, Any]) -> str:
    if prompt_format == CHAT:
        return tokenizer.apply_chat_template(chat_messages(problem, task), tokenize=False, add_generation_prompt=True)
    return compact_prompt(problem)


def to_records(problems: Sequence[MathProblem], prompt_format: str, task: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for GRPOTrainer: the prompt and the `answer` column the reward reads."""
    return [{"prompt": prompt_for(p, prompt_format, task), "answer": p.answer} for p in problems]


__all__ = ["BUILTIN_NAME", "CHAT", "COMPACT", "MathProblem", "MathSplits", "load_splits", "load_problems"]
