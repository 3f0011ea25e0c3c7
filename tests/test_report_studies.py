"""`perl report` on the placement and ICA suites: the verdict table, the A/B table and their plots."""

from __future__ import annotations

import statistics
from pathlib import Path

from suite_fixtures import write_experiment
from typer.testing import CliRunner

from perl_cli import config as configlib
from perl_cli import report_studies
from perl_cli import state as st
from perl_cli.cli import app

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _finish(d: Path, **values: float) -> None:
    ev = st.read_json(d / st.EVAL_FILE)
    ev.update(values)
    st.atomic_write_json(d / st.EVAL_FILE, ev)
    if "reward_last_10pct" in values:  # the report reads the reward from metrics.jsonl first
        rows = st.read_jsonl(d / st.METRICS_FILE)
        (d / st.METRICS_FILE).unlink()
        for row in rows:
            st.append_jsonl(d / st.METRICS_FILE, {**row, "reward": values["reward_last_10pct"]})


def _report(suite: str, out: Path) -> str:
    result = CliRunner().invoke(app, ["report", suite, "--config", str(configlib.PACKAGED_CONFIG), "--output", str(out)])
    assert result.exit_code == 0, result.output
    return (out / suite / "SUMMARY.md").read_text()


def _row(md: str, start: str) -> list[str]:
    line = next(line for line in md.splitlines() if line.startswith(f"| {start} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_placement_report_gives_a_verdict_per_variant(tmp_path: Path) -> None:
    out = tmp_path / "output"
    # (accuracy, trainable parameters, final reward) per variant; every-other is still running.
    figures = {
        "all-linear_s42": (0.50, 1000, 0.80),
        "attention_s42": (0.49, 300, 0.78),  # 98% with 30%: meets
        "mlp_s42": (0.40, 700, 0.82),  # 80%: fails
        "first-half_s42": (0.48, 500, 0.70),  # 96% with 50%: meets
        "second-half_s42": (0.475, 500, 0.70),  # exactly 95%: meets
    }
    for exp in configlib.expand(configlib.load(configlib.PACKAGED_CONFIG), "placement-demo"):
        if exp.name not in figures:
            write_experiment(out / "placement-demo", exp, state=st.RUNNING, step=10)
            continue
        d = write_experiment(out / "placement-demo", exp)
        acc, params, reward = figures[exp.name]
        _finish(d, accuracy_sampled=acc, trainable_params=params, reward_last_10pct=reward,
                train_seconds=120.0, seconds_per_step=3.0, peak_memory_mb=900.0)
    md = _report("placement-demo", out)
    assert "## Placement: each variant against the all-linear baseline" in md
    base = _row(md, "all-linear / all")
    assert base[1:4] == ["1/1", "0.500", "100.0%"] and base[8] == "baseline"
    attention = _row(md, "attention / all")
    assert attention[3] == "98.0%" and attention[5] == "97.5%" and attention[6] == "300" and attention[7] == "30.0%"
    assert attention[8].startswith("**meets**") and attention[9:] == ["900 MB", "3.00", "2m00s"]
    assert _row(md, "mlp / all")[8] == "**fails**: 80.0% < 95% of the accuracy"
    assert _row(md, "all-linear / 0:2")[8].startswith("**meets**: 96.0%")
    assert _row(md, "all-linear / 2:")[8].startswith("**meets**: 95.0%")
    assert _row(md, "all-linear / ::2")[8].startswith("pending (0/1 runs")
    assert (out / "placement-demo" / report_studies.PLACEMENT_PLOT).read_bytes()[:8] == PNG_MAGIC
    assert f"({report_studies.PLACEMENT_PLOT})" in md
    assert "ICA mask" not in md


def test_placement_verdict_fails_without_fewer_parameters(tmp_path: Path) -> None:
    out = tmp_path / "output"
    for exp in configlib.expand(configlib.load(configlib.PACKAGED_CONFIG), "placement-demo"):
        d = write_experiment(out / "placement-demo", exp)
        _finish(d, accuracy_sampled=0.5, trainable_params=1000 if exp.name != "mlp_s42" else 1200)
    md = _report("placement-demo", out)
    assert _row(md, "mlp / all")[8] == "**fails**: 120.0% of the parameters, not fewer"


def test_ica_report_compares_a_and_b_per_seed_with_the_spread(tmp_path: Path) -> None:
    out = tmp_path / "output"
    figures = {  # (accuracy, final reward, train seconds, ica seconds)
        "lora_ica-off_s42": (0.50, 0.70, 100.0, None),
        "lora_ica-off_s123": (0.60, 0.72, 110.0, None),
        "lora_ica-key_s42": (0.55, 0.69, 105.0, 3.0),
        "lora_ica-key_s123": (0.58, 0.75, 100.0, 5.0),
    }
    for exp in configlib.expand(configlib.load(configlib.PACKAGED_CONFIG), "ica-demo"):
        d = write_experiment(out / "ica-demo", exp)
        acc, reward, train, ica_s = figures[exp.name]
        extra = {} if ica_s is None else {"ica_seconds": ica_s, "ica_selected_neurons": 44, "ica_selected_pct": 2.1}
        _finish(d, accuracy_sampled=acc, reward_last_10pct=reward, train_seconds=train, **extra)
    md = _report("ica-demo", out)
    assert "## ICA mask: A (mask off) vs B (mask on)" in md
    s42 = _row(md, "42")
    assert s42[1:6] == ["key", "44 (2.1%)", "0.500", "0.550", "+0.050"] and s42[8] == "-0.010"
    assert s42[9] == "1m40s" and s42[10] == "1m48s (3s)"
    s123 = _row(md, "123")
    assert s123[5] == "-0.020" and s123[8] == "+0.030"
    acc_std = statistics.stdev([0.05, -0.02])
    assert f"held-out accuracy +0.015 ± {acc_std:.3f}" in md
    assert "final reward +0.010 ± 0.028" in md
    assert "time +1.5 ± 9.2 s" in md  # (108 - 100, 105 - 110) seconds
    assert md.index("| 42 |") < md.index("| 123 |")
    assert (out / "ica-demo" / report_studies.ICA_PLOT).read_bytes()[:8] == PNG_MAGIC
    assert "## Placement" not in md


def test_other_suites_get_no_study_sections(tmp_path: Path) -> None:
    out = tmp_path / "output"
    for exp in configlib.expand(configlib.load(configlib.PACKAGED_CONFIG), "demo"):
        write_experiment(out / "demo", exp)
    md = _report("demo", out)
    assert "## Placement" not in md and "## ICA" not in md
    assert not (out / "demo" / report_studies.PLACEMENT_PLOT).exists()


def test_ica_curves_average_the_pairs_the_table_compares(tmp_path: Path, monkeypatch) -> None:
    """A B run that failed at step 30 (with a high reward) is in neither the A/B table nor
    the curves; each curve names the runs it averages, and its mean does not jump where a
    run's log ends."""
    from test_report import _record_plots

    out = tmp_path / "output"
    exps = {e.name: e for e in configlib.expand(configlib.load(configlib.PACKAGED_CONFIG), "ica-demo")}
    for name, level in (("lora_ica-off_s42", 0.2), ("lora_ica-off_s123", 0.4), ("lora_ica-key_s42", 0.3)):
        d = write_experiment(out / "ica-demo", exps[name])
        (d / st.METRICS_FILE).unlink()
        for step in range(10, 101, 10):
            st.append_jsonl(d / st.METRICS_FILE, {"step": step, "reward": level + step / 1000})
    failed = write_experiment(out / "ica-demo", exps["lora_ica-key_s123"], state=st.FAILED, step=30)
    (failed / st.METRICS_FILE).unlink()
    for step in (10, 20, 30):
        st.append_jsonl(failed / st.METRICS_FILE, {"step": step, "reward": 0.9})
    seen = _record_plots(monkeypatch)
    md = _report("ica-demo", out)
    assert "| 42 |" in md and "| 123 |" not in md  # one completed pair
    lines = dict(seen["lines"])
    assert lines["A: mask off (1 run)"] == [0.2 + s / 1000 for s in range(10, 101, 10)]  # s42's A only
    assert lines["B: mask key (1 run)"] == [0.3 + s / 1000 for s in range(10, 101, 10)]


def test_placement_accuracy_plus_minus_is_a_standard_error_like_the_rest_of_the_report() -> None:
    """SUMMARY.md says '± is a standard error': the placement table's ± is one too (over seeds;
    for a single run, over problems), not the seeds' standard deviation."""
    from types import SimpleNamespace

    def run(acc: float, se: float) -> SimpleNamespace:
        return SimpleNamespace(done=True, eval={}, accuracy=acc, accuracy_se=se, final_reward=None)

    three = report_studies._variant(("all-linear", "all"), [run(0.4, 0.02), run(0.5, 0.02), run(0.6, 0.02)])
    se = statistics.stdev([0.4, 0.5, 0.6]) / 3 ** 0.5
    assert three["accuracy_text"] == f"0.500 ± {se:.3f}" and f"{se:.3f}" != "0.100"  # not the sd (0.100)
    one = report_studies._variant(("all-linear", "all"), [run(0.4, 0.021)])
    assert one["accuracy_text"] == "0.400 ± 0.021"
