"""Collapse detected while it happens (issue 17.2): planted curves with a known start step,
healthy noisy curves that must not be flagged, arbitrary metrics rows, and the readers
(`perl status`, `perl watch`'s rows, `perl diagnose`) on a suite with a collapsing run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as hst
from suite_fixtures import write_config, write_experiment
from typer.testing import CliRunner

from perl_cli import collapse
from perl_cli import config as configlib
from perl_cli import experiments_view as views
from perl_cli import state as st
from perl_cli.cli import app
from perl_cli.tui import rows as tui_rows


def healthy(rng: random.Random, steps: range, p: float = 0.25, completions: int = 32, **extra) -> list[dict]:
    """A run that is learning slowly: each window's correctness a binomial share (zeros happen)."""
    out = []
    for s in steps:
        correct = sum(rng.random() < p for _ in range(completions)) / completions
        out.append({"step": s, "reward/correct": correct, "reward": correct + 0.1, "completion_length": 23 + rng.random(),
                    "entropy": 0.12 + 0.03 * rng.random(), **{k: f(s) for k, f in extra.items()}})
    return out


def test_correctness_falling_to_zero_is_found_at_its_start_step() -> None:
    rng = random.Random(0)
    rows = healthy(rng, range(10, 120, 10)) + [
        {"step": s, "reward/correct": 0.0, "reward": 0.0, "completion_length": 23.0, "entropy": 0.1} for s in range(120, 301, 10)
    ]
    found = collapse.detect(rows)
    assert found is not None and found.kind == "correctness" and found.step == 120
    signal = found.signals[0]
    assert signal.metric == "reward/correct" and 0.15 < signal.reference < 0.45 and signal.points == 19
    assert "step 120" in found.text() and "last 0 at step 300" in found.text()


def test_a_collapse_caught_while_it_happens_and_a_recovery_unflags_it() -> None:
    rng = random.Random(1)
    start = healthy(rng, range(1, 41))
    falling = [{"step": s, "reward/correct": 0.0} for s in range(41, 44)]
    assert collapse.detect(start + falling[:2]) is None  # two bad windows: not yet
    assert collapse.detect(start + falling).step == 41  # the third: flagged, from where it began
    assert collapse.detect(start + falling + healthy(rng, range(44, 50), p=0.3)) is None  # recovered


def test_healthy_noisy_runs_and_runs_that_never_learned_are_not_collapses() -> None:
    rng = random.Random(2)
    flagged = sum(collapse.detect(healthy(rng, range(1, 301), p=rng.uniform(0.1, 0.4))) is not None for _ in range(200))
    assert flagged <= 2, flagged  # three zero windows in a row at the end of a learning run: ~never
    never = [{"step": s, "reward/correct": 0.0 if s % 3 else 0.03} for s in range(1, 100)]
    assert collapse.detect(never) is None  # peak under 0.05: nothing to collapse from


@pytest.mark.parametrize(("key", "values", "kind", "start"), [
    ("completion_length", [24.0] * 20 + [3.0] * 10, "length_collapse", 21),
    ("completion_length", [24.0] * 20 + [200.0] * 10, "length_explosion", 21),
    ("completions/clipped_ratio", [0.0] * 25 + [1.0] * 5, "length_explosion", 26),
    ("entropy", [0.12] * 15 + [0.5] + [2.5] * 14, "entropy", 17),
    ("kl", [0.01] * 10 + [0.9] * 20, "kl", 11),
])
def test_length_entropy_and_kl_signals(key, values, kind, start) -> None:
    rows = [{"step": i + 1, key: v} for i, v in enumerate(values)]
    found = collapse.detect(rows)
    assert found is not None and found.kind == kind and found.step == start, found
    assert collapse.detect(rows[: start - 1]) is None  # before it started, nothing


def test_the_earliest_signal_leads() -> None:
    rows = [{"step": s, "reward/correct": 0.3 if s < 50 else 0.0, "completion_length": 24.0 if s < 30 else 300.0}
            for s in range(1, 80)]
    found = collapse.detect(rows)
    assert [s.kind for s in found.signals] == ["length_explosion", "correctness"] and found.step == 30


@settings(max_examples=300, deadline=None)
@given(hst.lists(hst.one_of(
    hst.dictionaries(hst.sampled_from(["step", "reward", "reward/correct", "completion_length", "entropy", "kl",
                                       "completions/clipped_ratio"]),
                     hst.one_of(hst.none(), hst.booleans(), hst.floats(), hst.integers(-5, 10**6), hst.text(max_size=2))),
    hst.integers(), hst.none()), max_size=60))
@example([{"step": s, "reward/correct": 1e308, "entropy": 1e308} for s in range(20)])
def test_any_metrics_rows_are_judged_without_raising(rows) -> None:
    found = collapse.detect(rows)  # type: ignore[arg-type]
    if found is not None:
        json.dumps(found.to_json(), allow_nan=False)
        assert all(s.points >= collapse.SUSTAIN for s in found.signals)


def collapsing_suite(tmp_path: Path) -> tuple[Path, Path, str]:
    """`core`: one running lora whose correctness fell to zero at step 60 (lr far too high), the rest healthy."""
    cfg_path = write_config(tmp_path)
    out = tmp_path / "output"
    exps = configlib.expand(configlib.load(cfg_path), "core")
    for exp in exps:
        write_experiment(out / "core", exp, state=st.COMPLETED)
    bad = exps[0]
    d = write_experiment(out / "core", bad, state=st.RUNNING, step=90, host="elsewhere")
    rng = random.Random(5)
    rows = healthy(rng, range(2, 60, 2)) + [{"step": s, "reward/correct": 0.0, "reward": 0.0, "completion_length": 2.0,
                                             "entropy": 0.02} for s in range(60, 91, 2)]
    (d / st.METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    # A completed run whose correctness collapsed at step 80: diagnose (not status) judges whole curves.
    done = out / "core" / exps[1].name
    rows = healthy(rng, range(10, 80, 10)) + [{"step": s, "reward/correct": 0.0} for s in range(80, 101, 10)]
    (done / st.METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return cfg_path, out, bad.name


def test_status_watch_and_diagnose_flag_the_collapsing_run(tmp_path: Path) -> None:
    cfg_path, out, name = collapsing_suite(tmp_path)
    args = ["--config", str(cfg_path), "--output", str(out)]
    result = CliRunner().invoke(app, ["status", "core", *args], terminal_width=200)
    assert f"{name}" in result.output and "(collapsing @60)" in result.output, result.output
    assert "collapsing since step 60: reward/correct fell from a peak of" in result.output
    data = json.loads(CliRunner().invoke(app, ["status", "core", "--json", *args]).output)
    flagged = {e["name"]: e["collapse"] for e in data["experiments"] if e["collapse"]}
    assert list(flagged) == [name] and flagged[name]["step"] == 60  # running runs only: status stays fast
    assert {s["kind"] for s in flagged[name]["signals"]} == {"correctness", "length_collapse"}

    view = views.load_suite(out, "core", configlib.load(cfg_path))
    row = next(e for e in view.experiments if e.name == name)
    assert "collapse@60" in tui_rows.state_text(row).plain  # perl watch's state cell
    assert views.needs_attention(row)

    diag = CliRunner().invoke(app, ["diagnose", "core", "--json", *args])
    report = json.loads(diag.output)
    d = next(x for x in report["experiments"] if x["name"] == name)
    assert d["cause"] == "collapse" and "step 60" in d["summary"]
    assert "lower the learning rate" in d["fix"]["text"].lower() and "peak of" in d["fix"]["text"]
    finished = next(x for x in report["experiments"] if x["name"] == configlib.expand(configlib.load(cfg_path), "core")[1].name)
    assert finished["cause"] == "collapse" and "step 80" in finished["summary"]
    assert sorted(x["name"] for x in report["experiments"]) == sorted([name, finished["name"]])
    lr = configlib.expand(configlib.load(cfg_path), "core")[0].learning_rate
    assert any(f"training.learning_rate={float(f'{lr / 4:g}')}" in c and "--fresh" in c for c in d["fix"]["commands"])


def test_the_remedy_names_pissa_and_milora_failure_mode() -> None:
    assert "principal singular subspace" in collapse.remedy("pissa", 1e-3) and "try 0.00025" in collapse.remedy("pissa", 1e-3)
    assert "minor singular subspace" in collapse.remedy("milora", None)
    assert "subspace" not in collapse.remedy("lora", 5e-4)


def test_the_worker_callback_stops_at_the_collapse(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from perl_cli.train.collapse_stop import StopOnCollapse

    metrics = tmp_path / st.METRICS_FILE
    rows = healthy(random.Random(8), range(10, 200, 10))
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stop = StopOnCollapse(metrics)
    control = SimpleNamespace(should_training_stop=False)
    stop.on_log(None, None, control, logs={})
    assert not control.should_training_stop and stop.verdict is None
    for s in (200, 210, 220):
        with open(metrics, "a") as f:
            f.write(json.dumps({"step": s, "reward/correct": 0.0}) + "\n")
        stop.on_log(None, None, control, logs={})
    assert control.should_training_stop and stop.verdict.step == 200


def test_a_collapse_is_never_retried_and_the_switch_keeps_old_fingerprints() -> None:
    from perl_cli import outcomes, schema

    plan = outcomes.retry_plan(outcomes.Ending(rc=1), {"cause": collapse.CAUSE, "error": "CUDA out of memory"}, "",
                               tries_left=3, training={"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1},
                               runtime={})
    assert plan is None
    off = schema.fingerprint_view({"training": {"learning_rate": 1e-3, "stop_on_collapse": False}})
    assert off == {"training": {"learning_rate": 1e-3}}  # off: runs that predate the switch stay complete
    assert "stop_on_collapse" in schema.fingerprint_view({"training": {"stop_on_collapse": True}})["training"]
