"""The Countdown task: generator, splits, loaders and prompt formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perl_cli.data import countdown
from perl_cli.data.countdown import DataError, Problem
from perl_cli.rewards import countdown_correct


def _builtin(**over: object) -> dict:
    section = {
        "dataset_name_or_path": countdown.BUILTIN_NAME,
        "data_size": None,
        "eval_size": 200,
        "num_count": 3,
        "min_number": 1,
        "max_number": 10,
        "operators": "+-*",
        "split_seed": 0,
        "prompt_format": "auto",
    }
    section.update(over)
    return section


def test_default_space_is_enumerated_and_every_problem_is_solvable() -> None:
    problems = countdown.generate_problems(3, 1, 10, "+-*", seed=0, wanted=None)
    # docs/stack.md: 3 numbers from 1-10, + - *, target >= 1 gives 1,896 distinct problems.
    assert len(problems) == 1896
    assert len({p.key for p in problems}) == len(problems)
    for p in problems:
        assert p.target >= 1
        assert countdown_correct(f"<answer>{p.solution}</answer>", list(p.numbers), p.target)


def test_sampled_space_for_large_ranges() -> None:
    problems = countdown.generate_problems(4, 1, 100, "+-*/", seed=3, wanted=500)
    assert len(problems) == 500
    assert len({p.key for p in problems}) == 500
    assert all(len(p.numbers) == 4 and all(1 <= n <= 100 for n in p.numbers) for p in problems)
    assert all(countdown_correct(f"<answer>{p.solution}</answer>", list(p.numbers), p.target) for p in problems)


def test_splits_are_deterministic_and_disjoint() -> None:
    a = countdown.load_splits(_builtin())
    b = countdown.load_splits(_builtin())
    assert a == b
    assert len(a.eval) == 200 and len(a.train) == 1696
    assert not {p.key for p in a.train} & {p.key for p in a.eval}
    other = countdown.load_splits(_builtin(split_seed=1))
    assert {p.key for p in other.eval} != {p.key for p in a.eval}


def test_data_size_selects_training_examples_without_touching_eval() -> None:
    full = countdown.load_splits(_builtin())
    small = countdown.load_splits(_builtin(data_size=100))
    assert len(small.train) == 100
    assert small.eval == full.eval
    assert small.train == full.train[:100]


def test_data_size_too_large_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="data_size=5000"):
        countdown.load_splits(_builtin(data_size=5000))


@pytest.mark.parametrize(
    ("over", "message"),
    [({"operators": "+^"}, "operators"), ({"num_count": 1}, "num_count"), ({"min_number": 0}, "min_number")],
)
def test_generator_settings_are_validated(over: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        countdown.load_splits(_builtin(**over))


def test_split_is_by_problem_identity() -> None:
    # The same problem twice (numbers in another order) can never straddle the split.
    problems = [Problem((1, 2, 3), 6), Problem((3, 2, 1), 6)] + [Problem((i, 1, 1), i + 2) for i in range(1, 50)]
    splits = countdown.split_problems(problems, eval_size=10, data_size=None, seed=0)
    keys = [p.key for p in splits.train + splits.eval]
    assert len(keys) == len(set(keys)) == 50


def test_local_jsonl_and_parquet(tmp_path: Path) -> None:
    rows = [{"nums": [i, i + 1, 2], "target": 2 * i + 3} for i in range(1, 40)]
    jsonl = tmp_path / "cd.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits = countdown.load_splits(_builtin(dataset_name_or_path=str(jsonl), eval_size=5))
    assert len(splits.eval) == 5 and len(splits.train) == 34

    import datasets

    parquet = tmp_path / "cd.parquet"
    datasets.Dataset.from_list([{"numbers": r["nums"], "target": r["target"]} for r in rows]).to_parquet(str(parquet))
    assert countdown.load_splits(_builtin(dataset_name_or_path=str(parquet), eval_size=5)) == splits


def test_local_file_with_wrong_columns(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(DataError, match="nums"):
        countdown.load_splits(_builtin(dataset_name_or_path=str(path), eval_size=0))


def test_hub_dataset_offline_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="Offline machine"):
        countdown.load_splits(_builtin(dataset_name_or_path="perl-test/no-such-dataset-xyz"))


def test_prompt_formats() -> None:
    p = Problem((3, 7, 9), 30, "7*3+9")
    assert countdown.compact_prompt(p) == "nums: 3 7 9 target: 30\n"
    assert countdown.compact_completion(p) == "<answer>7*3+9</answer>"
    messages = countdown.chat_messages(p)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "[3, 7, 9]" in messages[1]["content"] and "30" in messages[1]["content"]
    assert "<think>" in messages[1]["content"] and "<answer>" in messages[1]["content"]
    assert countdown.resolve_prompt_format("auto", "builtin:tiny-countdown") == "compact"
    assert countdown.resolve_prompt_format("auto", "Qwen/Qwen2.5-1.5B-Instruct") == "chat"
    records = countdown.to_records([p], "compact")
    assert records == [{"prompt": "nums: 3 7 9 target: 30\n", "numbers": [3, 7, 9], "target": 30}]
