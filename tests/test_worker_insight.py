"""The worker's side of issue 17: per-problem results in eval.json (what the report pairs
methods on) and training.stop_on_collapse (a collapsed run stops, recorded as its cause)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from training_support import make_config, write_experiment


def test_eval_json_keeps_per_problem_results_in_held_out_order(tmp_path: Path) -> None:
    from perl_cli.train import run_experiment

    exp = write_experiment(tmp_path, make_config("lists", training__max_steps=2))
    assert run_experiment(exp) == 0
    results = json.loads((exp / "eval.json").read_text())
    n = results["eval_problems"]
    for key in ("per_problem_sampled", "per_problem_greedy", "base_per_problem_sampled", "base_per_problem_greedy"):
        assert len(results[key]) == n and all(0 <= v <= 1 for v in results[key]), key
    assert sum(results["per_problem_sampled"]) / n == pytest.approx(results["accuracy_sampled"])
    assert sum(results["base_per_problem_greedy"]) / n == pytest.approx(results["base_accuracy_greedy"])
    assert set(results["per_problem_greedy"]) <= {0.0, 1.0}


def test_stop_on_collapse_ends_the_run_with_its_own_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny random model never learns, so the rule is planted: it answers "collapsed from
    the first logged step" once three steps are logged."""
    from perl_cli import collapse, outcomes
    from perl_cli.train import run_experiment

    def planted(rows: list[dict]) -> collapse.Collapse | None:
        steps = [r["step"] for r in rows if isinstance(r, dict) and "step" in r]
        if len(steps) < 3:
            return None
        return collapse.Collapse([collapse.Signal("correctness", "reward/correct", steps[0], 0.3, steps[0], 0.03, 0.0,
                                                  steps[-1], len(steps))])

    monkeypatch.setattr(collapse, "detect", planted)
    exp = write_experiment(tmp_path, make_config("hot", training__max_steps=8, training__stop_on_collapse=True))
    assert run_experiment(exp) == outcomes.EXIT_FAILED
    status = json.loads((exp / "status.json").read_text())
    assert status["state"] == "failed" and status["cause"] == collapse.CAUSE
    assert status["step"] == 3 and "training collapsed from step 1" in status["error"]
    assert not (exp / "eval.json").exists()
    plan = outcomes.retry_plan(outcomes.Ending(rc=status["exit_code"]), status, "", tries_left=2,
                               training={"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1}, runtime={})
    assert plan is None
