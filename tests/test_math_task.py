"""The math task's data, benchmarks as config, their statistics, full FT's plan-time rules."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from perl_cli import benchmarks, config
from perl_cli.data import countdown, tiny_math
from perl_cli.data import math as mathdata
from perl_cli.scheduler.memory import estimate_mb

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "perl-cache"))


# --- the built-in tiny math set ----------------------------------------------------------


def _value(problem: str) -> Fraction:
    """An independent check of a generated answer."""
    if problem.startswith("solve "):
        lhs, rhs = problem.removeprefix("solve ").split("=")
        a, rest = lhs.split("x")
        b = int(rest)
        return Fraction(int(rhs) - b, int(a))
    total = Fraction(0)
    for term in problem.replace("-", "+-").split("+"):
        if not term:
            continue
        if "*" in term:
            x, y = term.split("*")
            total += int(x) * int(y)
        elif "/" in term:
            x, y = term.split("/")
            total += Fraction(int(x), int(y))
        else:
            total += int(term)
    return total


def test_tiny_math_set_is_exact_deterministic_and_disjoint() -> None:
    first, second = tiny_math.split_rows(), tiny_math.split_rows()
    assert first == second
    assert len(first["train"]) == tiny_math.TRAIN_SIZE and len(first["test"]) == tiny_math.BENCHMARK_SIZE
    assert not {r["problem"] for r in first["train"]} & {r["problem"] for r in first["test"]}
    for row in first["train"] + first["test"]:
        assert Fraction(row["answer"]) == _value(row["problem"]), row


def test_builtin_math_is_written_as_a_local_dataset_and_loads_like_one() -> None:
    files = tiny_math.builtin_files()
    lines = files["train"].read_text().splitlines()
    assert json.loads(lines[0]).keys() == {"problem", "answer"}
    task = {"problem_column": "problem", "answer_column": "answer", "split": "train"}
    from_builtin = mathdata.load_problems("builtin:math", task)
    from_file = mathdata.load_problems(str(files["train"]), task)
    assert from_builtin == from_file and len(from_file) == tiny_math.TRAIN_SIZE
    splits = mathdata.load_splits({"dataset_name_or_path": "builtin:math", "eval_size": 50, "data_size": None,
                                   "split_seed": 0}, task)
    assert len(splits.eval) == 50 and not {p.key for p in splits.eval} & {p.key for p in splits.train}


# --- the hub's file layout, loaded with `datasets` -------------------------------------


def _write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.parametrize("name", ["aime24", "aime25", "amc23", "math500"])
def test_builtin_benchmarks_load_from_the_hub_layout(tmp_path: Path, name: str) -> None:
    """Each definition's split and columns, against a repository laid out as on the hub."""
    bench = benchmarks.BUILTIN[name]
    repo = tmp_path / bench.source.replace("/", "__")
    rows = [{bench.problem_column: f"Problem {i}: what is {i} + 1?", bench.answer_column: str(i + 1),
             "solution": "..."} for i in range(7)]
    _write_parquet(repo / "data" / f"{bench.split}-00000-of-00001.parquet", rows)
    from dataclasses import replace

    from perl_cli.train.benchmark_eval import load_problems

    problems = load_problems(replace(bench, source=str(repo)))
    assert [p.answer for p in problems] == [str(i + 1) for i in range(7)]
    assert problems[3].problem.startswith("Problem 3")


def test_a_hub_training_set_with_a_subset_loads_by_its_config_name(tmp_path: Path) -> None:
    """math-1.5b's DAPO-Math set: subset "en", columns prompt/solution, as a hub repo with a README config."""
    repo = tmp_path / "DAPO-Math-17k-Processed"
    _write_parquet(repo / "en" / "train-00000-of-00001.parquet",
                   [{"prompt": f"Find {i}.", "solution": str(i), "data_source": "x"} for i in range(20)])
    _write_parquet(repo / "cn" / "train-00000-of-00001.parquet", [{"prompt": "求", "solution": "1", "data_source": "x"}])
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: en\n  data_files:\n  - split: train\n    path: en/train-*.parquet\n"
        "- config_name: cn\n  data_files:\n  - split: train\n    path: cn/train-*.parquet\n---\n"
    )
    suite = config.expand(config.load(config.PACKAGED_CONFIG), "math-1.5b")[0].config
    task = suite["task"]
    assert (task["subset"], task["problem_column"], task["answer_column"]) == ("en", "prompt", "solution")
    splits = mathdata.load_splits({**suite["dataset"], "dataset_name_or_path": str(repo), "eval_size": 5}, task)
    assert len(splits.train) == 15 and len(splits.eval) == 5


def test_missing_columns_name_the_keys_to_set(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "1+1", "final": "2"}\n')
    with pytest.raises(countdown.DataError, match="task.problem_column and task.answer_column"):
        mathdata.load_problems(str(path), {"problem_column": "problem", "answer_column": "answer"})
    got = mathdata.load_problems(str(path), {"problem_column": "question", "answer_column": "final"})
    assert got == [mathdata.MathProblem("1+1", "2")]


def test_chat_prompt_has_system_prompt_and_boxed_instruction() -> None:
    p = mathdata.MathProblem("What is 2+2?", "4")
    msgs = mathdata.chat_messages(p, {"system_prompt": "Be brief.", "instruction": "Put it in \\boxed{}."})
    assert msgs == [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "What is 2+2?\nPut it in \\boxed{}."}]
    assert mathdata.chat_messages(p, {"system_prompt": "", "instruction": ""}) == [{"role": "user", "content": "What is 2+2?"}]


# --- statistics ---------------------------------------------------------------------------


def test_pass_at_k_known_values() -> None:
    assert benchmarks.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert benchmarks.pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert benchmarks.pass_at_k(4, 1, 4) == 1.0
    assert benchmarks.pass_at_k(4, 0, 4) == 0.0
    assert benchmarks.pass_at_k(32, 8, 8) == pytest.approx(1 - math.comb(24, 8) / math.comb(32, 8))


@given(st.integers(1, 40).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))))
def test_pass_at_k_is_a_probability_rising_in_k_with_pass_1_the_share(nc: tuple[int, int]) -> None:
    n, c = nc
    values = [benchmarks.pass_at_k(n, c, k) for k in range(1, n + 1)]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(a <= b + 1e-12 for a, b in zip(values, values[1:], strict=False))
    assert values[0] == pytest.approx(c / n)


def test_summary_errors_are_over_problems() -> None:
    results = [benchmarks.ProblemResult(i, "1", correct, greedy)
               for i, (correct, greedy) in enumerate([([True] * 4, True), ([False] * 4, False),
                                                      ([True, False, False, False], False)])]
    s = benchmarks.summarize(results, 4, (1, 4))
    rates = [1.0, 0.0, 0.25]
    mean = sum(rates) / 3
    se = math.sqrt(sum((r - mean) ** 2 for r in rates) / 2 / 3)
    assert s["avg@4"] == pytest.approx(mean) and s["avg@4_se"] == pytest.approx(se)
    assert s["pass@1"] == pytest.approx(mean)
    assert s["pass@4"] == pytest.approx(2 / 3)
    assert s["greedy"] == pytest.approx(1 / 3) and s["problems"] == 3


# --- config ------------------------------------------------------------------------------


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiments.toml"
    path.write_text(text)
    return path


BASE = """
[suites.s]
name = "{method}_s{seed}"
[suites.s.base.model]
model_name_or_path = "builtin:tiny-math"
[suites.s.base.dataset]
dataset_name_or_path = "builtin:math"
[suites.s.base.task]
name = "math"
%s
[suites.s.matrix]
method = ["lora", "full"]
seed = [1]
"""


def test_benchmarks_are_resolved_into_config_but_never_fingerprinted(tmp_path: Path) -> None:
    with_b = config.expand(config.load(_toml(tmp_path, BASE % 'benchmarks = ["tiny-math"]')), "s")
    without = config.expand(config.load(_toml(tmp_path, BASE % "")), "s")
    assert [e.fingerprint for e in with_b] == [e.fingerprint for e in without]
    spec = with_b[0].config["benchmark_specs"]["tiny-math"]
    assert spec["source"] == benchmarks.BUILTIN_TINY and spec["n"] == 4
    assert "benchmark_specs" not in without[0].config


def test_full_fine_tuning_has_its_own_learning_rate_and_memory(tmp_path: Path) -> None:
    lora, full = config.expand(config.load(_toml(tmp_path, BASE % "")), "s")
    assert (lora.method, full.method) == ("lora", "full")
    assert lora.learning_rate == 1e-5 and full.learning_rate == 1e-6
    cfg = config.expand(config.load(config.PACKAGED_CONFIG), "math-1.5b")
    from perl_cli.scheduler.memory import estimate

    by_method = {e.method: estimate(e.config) for e in cfg}
    # 1.5B parameters in float32 with AdamW: about 16 bytes each where LoRA's weights are 2 and
    # its optimizer state tiny (activations differ by method and are compared elsewhere).
    state = {m: est.weights + est.optimizer for m, est in by_method.items()}
    assert state["full"] - state["lora"] > 1.5e9 * (16 - 2) / 2**20 * 0.9
    assert estimate_mb(cfg[0].config) > 0


@pytest.mark.parametrize(("text", "message"), [
    (BASE % 'benchmarks = ["aime2099"]', "unknown benchmark 'aime2099'"),
    (BASE.replace('name = "math"', 'name = "countdown"') % "", 'set task.name = "math"'),
    (BASE.replace("builtin:math", "builtin:countdown") % "", 'use dataset_name_or_path = "builtin:math"'),
    (BASE % 'benchmarks = ["mine"]' + '\n[benchmarks.mine]\nsource = "x.jsonl"\nn = 2\nk = [4]\n', "k = [4] must be"),
    (BASE % "" + '\n[benchmarks.mine]\nsorce = "x.jsonl"\n', "unknown key(s) sorce"),
], ids=["unknown-benchmark", "math-set-countdown-task", "countdown-set-math-task", "bad-k", "typo-in-table"])
def test_bad_math_config_is_a_clear_error_with_exit_2(tmp_path: Path, text: str, message: str) -> None:
    path = _toml(tmp_path, text)
    proc = subprocess.run([sys.executable, "-m", "perl_cli", "plan", "s", "--config", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr, proc.stderr
    assert str(path) in proc.stderr


def test_math_suites_plan_and_seed_suites_are_unchanged() -> None:
    cfg = config.load(config.PACKAGED_CONFIG)
    demo = config.expand(cfg, "math-demo")
    assert {e.method for e in demo} == {"lora", "full"}
    paper = config.expand(cfg, "math-1.5b")
    assert {e.model for e in paper} == {"deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"}
    assert set(paper[0].config["benchmark_specs"]) == {"aime24", "aime25", "amc23", "math500"}
    for suite in ("demo", "core-1.5b"):
        for e in config.expand(cfg, suite):
            assert e.config["task"]["name"] == "countdown" and "benchmark_specs" not in e.config


def test_full_method_trains_every_parameter() -> None:
    from perl_cli.methods import build_adapter
    from perl_cli.models import load_model

    model = load_model({"model_name_or_path": "builtin:tiny-random"}, on_gpu=False)
    total = sum(p.numel() for p in model.parameters())
    full = build_adapter(model, {"type": "full", "r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
                                 "target_modules": "all-linear", "layers": "all"}, {"max_steps": 10})
    assert full is model
    assert sum(p.numel() for p in full.parameters() if p.requires_grad) == total


# --- the report's benchmark table ------------------------------------------------------


def test_report_table_means_over_seeds_with_se_and_percent_of_full(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from suite_fixtures import write_experiment
    from typer.testing import CliRunner

    from perl_cli.cli import app

    path = _toml(tmp_path, (BASE % 'benchmarks = ["tiny-math"]').replace("seed = [1]", "seed = [1, 2]"))
    out = tmp_path / "output"
    # avg@4 by (method, seed); full is the reference
    values = {("lora", 1): 0.30, ("lora", 2): 0.40, ("full", 1): 0.50, ("full", 2): 0.70}
    for exp in config.expand(config.load(path), "s"):
        d = write_experiment(out / "s", exp, eval_accuracy=0.3)
        v = values[(exp.method, exp.seed)]
        summary = {"problems": 200, "n": 4, "avg@4": v, "avg@4_se": 0.03, "pass@1": v, "pass@1_se": 0.03,
                   "pass@4": min(1.0, v + 0.2), "pass@4_se": 0.02, "greedy": v, "greedy_se": 0.035}
        (d / "benchmarks").mkdir()
        (d / "benchmarks" / "tiny-math.json").write_text(json.dumps({"summary": summary, "problems": []}))
    result = CliRunner().invoke(app, ["report", "s", "--stdout", "--config", str(path), "--output", str(out)])
    assert result.exit_code == 0, result.output
    text = result.output
    table = text[text.index("## Benchmarks"):]
    se = lambda a, b: abs(a - b) / 2 * 100  # sd of two values is |a-b|/sqrt(2); SE = sd/sqrt(2); in %  # noqa: E731
    assert f"| full | 2/2 | 60.0 ± {se(0.5, 0.7):.1f} | 60.0 ± {se(0.5, 0.7):.1f} | 100.0 |" in table
    assert f"| lora | 2/2 | 35.0 ± {se(0.3, 0.4):.1f} | 35.0 ± {se(0.3, 0.4):.1f} | {100 * 0.35 / 0.6:.1f} |" in table
    assert "tiny-math pass@4" in table and "tiny-math greedy" in table


def test_a_benchmark_names_its_phase_before_its_first_batch_is_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """perl status reads the phase; it must be on disk before the first rows (CI saw rows and no phase)."""
    from perl_cli.train import benchmark_eval, evaluate

    bench = benchmarks.Benchmark(name="b", source=benchmarks.BUILTIN_TINY, n=2, max_new_tokens=4, greedy=False, limit=20)
    partial = tmp_path / benchmarks.RESULTS_DIR / ".b.partial.jsonl"
    rows_at_calls: list[tuple[int, int, int]] = []

    def saved() -> int:
        return len(partial.read_text().splitlines()) - 1

    def progress(done: int, total: int) -> None:
        rows_at_calls.append((done, total, saved()))

    monkeypatch.setattr(evaluate, "_generate", lambda model, tok, texts, *, num_samples, **kw: ["0"] * len(texts) * num_samples)

    class Model:
        training = True

        def eval(self) -> None:
            self.training = False

        def train(self, mode: bool = True) -> None:
            self.training = mode

    def evaluate(stop=lambda: False) -> dict:
        return benchmark_eval.evaluate_benchmark(
            Model(), None, bench.spec(), tmp_path, prompt_format=mathdata.COMPACT, task_section={}, seed=1,
            fingerprint="f", stop=stop, progress=progress)

    # Stopped after its first batch (as by Ctrl+C), then continued: both times the phase comes first.
    with pytest.raises(benchmark_eval.BenchmarkStopped):
        evaluate(stop=lambda: saved() >= 16)
    assert rows_at_calls == [(0, 20, 0), (16, 20, 16)]  # named before any row is saved
    rows_at_calls.clear()
    summary = evaluate()
    assert summary["problems"] == 20
    assert rows_at_calls == [(16, 20, 16), (20, 20, 20)]  # the saved count, before the new rows
