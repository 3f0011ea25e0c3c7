"""`perl report`: SUMMARY.md and plots on complete, partial, empty and tiny suites."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from suite_fixtures import FAILURE_LOGS, build_mixed_suite, write_config, write_experiment
from typer.testing import CliRunner

from perl_cli import config as configlib
from perl_cli import report as reportlib
from perl_cli import state as st
from perl_cli.cli import app

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def complete_suite(tmp_path: Path, suite: str = "core", accuracy=None) -> tuple[Path, Path]:
    cfg_path = write_config(tmp_path)
    out = tmp_path / "output"
    for i, exp in enumerate(configlib.expand(configlib.load(cfg_path), suite)):
        acc = accuracy(exp) if accuracy else 0.3 + 0.01 * i
        write_experiment(out / suite, exp, eval_accuracy=acc, final_reward=acc + 0.2, tracking=True)
    return cfg_path, out


def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"no section {title!r}"
    return match.group(1)


def test_complete_suite_report_and_plots(tmp_path: Path) -> None:
    accuracy = {"lora": [0.40, 0.50], "dora": [0.60, 0.62], "adalora": [0.1, 0.2], "milora": [0.3, 0.3],
                "lora_plus": [0.55, 0.45], "pissa": [0.7, 0.8]}
    cfg_path, out = complete_suite(tmp_path, accuracy=lambda e: accuracy[e.method][0 if e.seed == 42 else 1])
    code, text = run_cli("report", "core", "--config", str(cfg_path), "--output", str(out))
    assert code == 0, text
    md = (out / "core" / "SUMMARY.md").read_text()
    for title in ("Progress", "Experiments", "Results by method", "Plots", "Storage", "Failures and interruptions"):
        section(md, title)
    by_method = section(md, "Results by method")
    ranked = re.findall(
        r"^\| (\d+) \| (\w+) \| 2/2 \| ([\d.]+) ± ([\d.]+) \| [\d.]+ ± [\d.]+ \| \+[\d.]+ ± [\d.]+ \| "
        r"([\d.]+) ± ([\d.]+) \|", by_method, re.MULTILINE
    )
    # Exact method names (lora_plus and adalora are not lora), ranked by mean sampled accuracy
    # (the fixture's sampled accuracy is 0.9 x greedy), ± the standard error over the 2 seeds
    # (sd / sqrt 2); greedy beside it.
    assert [(r[1], r[4], r[5]) for r in ranked] == [
        ("pissa", "0.750", "0.050"), ("dora", "0.610", "0.010"), ("lora_plus", "0.500", "0.050"),
        ("lora", "0.450", "0.050"), ("milora", "0.300", "0.000"), ("adalora", "0.150", "0.050"),
    ]
    assert [r[2] for r in ranked] == ["0.675", "0.549", "0.450", "0.405", "0.270", "0.135"]
    assert "12/12 experiments completed (100%)" in md
    assert section(md, "Failures and interruptions").strip() == "None."
    assert "Results by method and rank" not in md  # every experiment has rank 16
    for name in (reportlib.REWARD_PLOT, reportlib.FRONTIER_PLOT, reportlib.EFFECTIVE_RANK_PLOT,
                 "gradient_norms_lora.png", "gradient_norms_lora_plus.png"):
        assert (out / "core" / name).read_bytes()[:8] == PNG_MAGIC, name
        assert f"({name})" in md
    assert not (out / "core" / reportlib.RANK_PLOT).exists()


def test_partial_suite_report(tmp_path: Path) -> None:
    cfg_path, out, _ = build_mixed_suite(tmp_path)
    code, text = run_cli("report", "core", "--config", str(cfg_path), "--output", str(out))
    assert code == 0, text
    md = (out / "core" / "SUMMARY.md").read_text()
    assert "| 4 | 0 | 2 | 2 | 2 | 1 | 1 | 0 | 1 |" in md  # counts by state (pending, queued, ..., unreadable 0), then stalled
    rows = section(md, "Experiments")
    assert "| `dora_r16_s123` | dora | running (stalled) |" in rows and "| `pissa_r16_s42` | pissa | pending |" in rows
    failures = section(md, "Failures and interruptions")
    assert "CUDA out of memory" in failures and "stalled" in failures and "interrupted" in failures
    assert "--set training.per_device_train_batch_size=2" in failures
    # Only the two completed lora runs count in the results; the stale milora run does not.
    assert re.search(r"^\| 1 \| lora \| 2/2 \|", section(md, "Results by method"), re.MULTILINE)
    assert "milora" not in section(md, "Results by method")
    assert (out / "core" / reportlib.REWARD_PLOT).exists()


def test_empty_and_missing_suites(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path)
    out = tmp_path / "output"
    code, text = run_cli("report", "--config", str(cfg_path), "--output", str(out))
    assert code == 0 and "nothing to report" in text
    code, text = run_cli("report", "core", "--config", str(cfg_path), "--output", str(out))
    assert code == 0, text
    md = (out / "core" / "SUMMARY.md").read_text()
    assert "0/12 experiments completed (0%)" in md and "No completed experiments yet." in md
    assert "(no plot: no data yet)" in text
    code, text = run_cli("report", "ghost", "--config", str(cfg_path), "--output", str(out))
    assert code == 2 and "no suite 'ghost'" in text


def test_tiny_directories(tmp_path: Path) -> None:
    sd = tmp_path / "output" / "tiny"
    (sd / "a").mkdir(parents=True)
    st.atomic_write_json(sd / "a" / st.STATUS_FILE, {"state": "completed", "step": 0, "total_steps": 0})
    (sd / "b").mkdir()
    st.atomic_write_json(sd / "b" / st.STATUS_FILE, {"state": "failed"})
    st.atomic_write_json(sd / "b" / st.EVAL_FILE, {"accuracy_greedy": None, "trainable_pct": 0})
    (sd / "b" / st.METRICS_FILE).write_text('{"step": 1, "reward": NaN}\n{"step": 2}\n')
    (sd / "b" / "spectral_history.json").write_text('{"history": [{"step": 1, "layers": {"x": {}}}]}')
    (sd / "b" / "gradient_flow.json").write_text('{"history": "oops"}')
    (sd / "c").mkdir()
    st.atomic_write_json(sd / "c" / st.CONFIG_FILE, {"name": "c"})
    cfg_path = write_config(tmp_path)
    code, text = run_cli("report", "tiny", "--config", str(cfg_path), "--output", str(tmp_path / "output"))
    assert code == 0, text
    md = (sd / "SUMMARY.md").read_text()
    assert "| `b` | ? | failed |" in md and "unknown cause" in md


@pytest.mark.parametrize(("suite", "title", "plot", "header"), [
    ("rank", "Results by method and rank", reportlib.RANK_PLOT, "| method | 4 | 16 | 64 |"),
    ("data", "Results by method and data size", reportlib.DATA_PLOT, "| method | 1,000 | 4,000 |"),
])
def test_stress_suites_by_rank_or_data_size(tmp_path: Path, suite: str, title: str, plot: str, header: str) -> None:
    cfg_path, out = complete_suite(tmp_path, suite, accuracy=lambda e: (e.rank + (e.data_size or 0) / 100) / 1000)
    code, text = run_cli("report", suite, "--config", str(cfg_path), "--output", str(out))
    assert code == 0, text
    md = (out / suite / "SUMMARY.md").read_text()
    table = section(md, title)
    assert header in table
    assert (out / suite / plot).read_bytes()[:8] == PNG_MAGIC


def test_stdout_writes_nothing(tmp_path: Path) -> None:
    cfg_path, out, _ = build_mixed_suite(tmp_path)
    result = CliRunner().invoke(app, ["report", "core", "--stdout", "--config", str(cfg_path), "--output", str(out)])
    assert result.exit_code == 0
    assert result.stdout.startswith("# PeRL report: core")
    assert not (out / "core" / "SUMMARY.md").exists() and not list((out / "core").glob("*.png"))


def test_report_imports_no_torch(tmp_path: Path) -> None:
    cfg_path, out, _ = build_mixed_suite(tmp_path)
    code = (
        "import sys\n"
        "from perl_cli.cli import app\n"
        f"try:\n    app(['report', 'core', '--config', {str(cfg_path)!r}, '--output', {str(out)!r}])\n"
        "except SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'trl', 'peft', 'textual') if m in sys.modules),"
        " 'matplotlib' in sys.modules, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "HEAVY [] True" in proc.stderr, proc.stderr


# --- one consistent report ------------------------------------------------------------------


def _write_metrics(d: Path, rows: list[dict]) -> None:
    (d / st.METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _record_plots(monkeypatch) -> dict[str, list]:
    """Record what draw_plots hands matplotlib: lines (label, y values) and heatmaps (vmin, vmax)."""
    from matplotlib.axes import Axes

    seen: dict[str, list] = {"lines": [], "images": [], "ylabels": []}
    plot, imshow, set_ylabel = Axes.plot, Axes.imshow, Axes.set_ylabel

    def record_plot(self, *args, **kwargs):
        seen["lines"].append((kwargs.get("label"), list(args[1]) if len(args) > 1 else None))
        return plot(self, *args, **kwargs)

    def record_imshow(self, values, **kwargs):
        seen["images"].append((kwargs.get("vmin"), kwargs.get("vmax"), values))
        return imshow(self, values, **kwargs)

    def record_ylabel(self, label, *args, **kwargs):
        seen["ylabels"].append(label)
        return set_ylabel(self, label, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", record_plot)
    monkeypatch.setattr(Axes, "imshow", record_imshow)
    monkeypatch.setattr(Axes, "set_ylabel", record_ylabel)
    return seen


def test_curves_average_the_runs_the_tables_count(tmp_path: Path, monkeypatch) -> None:
    """A failed run that stops at step 30 must not make the curve's mean jump there, and the
    legend counts the runs each point averages: the completed ones, as in the table."""
    cfg_path = write_config(tmp_path)
    out = tmp_path / "output"
    exps = {e.name: e for e in configlib.expand(configlib.load(cfg_path), "core")}
    sd = out / "core"
    for name, level in (("lora_r16_s42", 0.2), ("lora_r16_s123", 0.4)):
        d = write_experiment(sd, exps[name])
        _write_metrics(d, [{"step": s, "reward": level + s / 1000} for s in range(10, 101, 10)])
    failed = write_experiment(sd, exps["dora_r16_s42"], state=st.FAILED, step=30, log=FAILURE_LOGS["unknown"][0])
    _write_metrics(failed, [{"step": s, "reward": 0.9} for s in (10, 20, 30)])
    write_experiment(sd, exps["dora_r16_s123"], state=st.FAILED, step=30)
    seen = _record_plots(monkeypatch)
    code, text = run_cli("report", "core", "--config", str(cfg_path), "--output", str(out))
    assert code == 0, text
    lines = dict(seen["lines"])
    assert "lora (2 runs)" in lines, lines.keys()
    assert lines["lora (2 runs)"] == pytest.approx([0.3 + s / 1000 for s in range(10, 101, 10)])
    assert not any(label and label.startswith("dora") for label in lines)  # no completed dora run
    assert re.search(r"^\| 1 \| lora \| 2/2 \|", section((sd / "SUMMARY.md").read_text(), "Results by method"), re.MULTILINE)


def test_table_marks_methods_ranked_on_fewer_runs(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path)
    out = tmp_path / "output"
    exps = {e.name: e for e in configlib.expand(configlib.load(cfg_path), "core")}
    write_experiment(out / "core", exps["dora_r16_s42"], eval_accuracy=0.8)
    write_experiment(out / "core", exps["dora_r16_s123"], state=st.FAILED, step=30)
    write_experiment(out / "core", exps["lora_r16_s42"], eval_accuracy=0.5)
    write_experiment(out / "core", exps["lora_r16_s123"], eval_accuracy=0.6)
    code, text = run_cli("report", "core", "--config", str(cfg_path), "--output", str(out))
    assert code == 0, text
    table = section((out / "core" / "SUMMARY.md").read_text(), "Results by method")
    assert re.search(r"^\| 1 \| dora \| 1/2 † \|", table, re.MULTILINE), table
    assert re.search(r"^\| 2 \| lora \| 2/2 \|", table, re.MULTILINE), table
    assert "† fewer completed runs than the best-covered configuration (2)" in table


@pytest.mark.parametrize(("suite", "labels", "runs_se"), [
    # rank: 2 seeds 0.02 apart in greedy accuracy (sampled = 0.9 x greedy): se = sd / sqrt(2) = 0.009.
    ("rank", ["lora r=4", "lora r=16", "lora r=64", "dora r=4", "dora r=16", "dora r=64"], ("2", "0.009")),
    # data: one seed per data size, and no eval_problems in the fixture: no ±.
    ("data", ["lora data_size=1,000", "lora data_size=4,000", "pissa data_size=1,000", "pissa data_size=4,000"],
     ("1", "")),
])
def test_spread_over_seeds_keeps_other_axes_apart(tmp_path: Path, suite: str, labels: list[str], runs_se) -> None:
    """± is a spread over seeds only: runs of different ranks or data sizes are never pooled."""
    seeds = {42: 0.0, 123: 0.02}
    cfg_path, out = complete_suite(
        tmp_path, suite, accuracy=lambda e: e.rank / 100 + (e.data_size or 0) / 10_000 + seeds[e.seed]
    )
    code, text = run_cli("report", suite, "--config", str(cfg_path), "--output", str(out))
    assert code == 0, text
    md = (out / suite / "SUMMARY.md").read_text()
    rows = {m[0]: m[1:] for m in re.findall(
        r"^\| \d+ \| ([\w =,]+?) \| (\d+)/(\d+) \| ([\d.]+)(?: ± ([\d.]+))? \|", section(md, "Results by method"),
        re.MULTILINE,
    )}
    assert sorted(rows) == sorted(labels)
    for runs, planned, _, se in rows.values():
        assert (runs, se) == runs_se and planned == runs


def test_one_reward_definition_labelled_everywhere(tmp_path: Path, monkeypatch) -> None:
    cfg_path = write_config(tmp_path)
    out = tmp_path / "output"
    exp = configlib.expand(configlib.load(cfg_path), "core")[0]
    d = write_experiment(out / "core", exp)
    rewards = [0.1 * i for i in range(1, 16)]  # 15 logged steps: the last 10% is the last 2 (round(1.5))
    _write_metrics(d, [{"step": 10 * i, "reward": r} for i, r in enumerate(rewards, 1)])
    seen = _record_plots(monkeypatch)
    code, text = run_cli("report", "core", "--config", str(cfg_path), "--output", str(out))
    assert code == 0, text
    md = (out / "core" / "SUMMARY.md").read_text()
    label = reportlib.REWARD_LABEL
    assert label == "reward (mean of last 10% of logged steps)"
    assert "final reward" not in md
    expected = f"{(rewards[-1] + rewards[-2]) / 2:.3f}"
    for title in ("Experiments", "Results by method"):
        table = section(md, title)
        header = next(line for line in table.splitlines() if line.startswith("| "))
        cells = next(line for line in table.splitlines() if "lora" in line).split(" | ")
        assert cells[header.split(" | ").index(label)] == expected, (title, header)
    assert "reward (mean of each logging window)" in md  # the curve's title names its own definition
    assert "reward" in seen["ylabels"]


def test_gradient_heatmaps_share_one_colour_scale(tmp_path: Path, monkeypatch) -> None:
    cfg_path, out = complete_suite(tmp_path)
    for name, scale in (("lora_r16_s42", 1e-4), ("dora_r16_s42", 10.0)):
        history = [{"step": s, "layers": {"q": {"A": scale * s, "B": scale}, "v": {"A": scale}}} for s in (10, 20)]
        st.atomic_write_json(out / "core" / name / "gradient_flow.json", {"history": history})
    seen = _record_plots(monkeypatch)
    code, text = run_cli("report", "core", "--config", str(cfg_path), "--output", str(out))
    assert code == 0, text
    assert len(seen["images"]) == 6
    scales = {(vmin, vmax) for vmin, vmax, _ in seen["images"]}
    values = [v for _, _, grid in seen["images"] for line in grid for v in line]
    assert scales == {(min(values), max(values))}
    assert min(values) < -3 and max(values) > 2  # lora's and dora's norms are on one scale


def test_report_shows_progress(tmp_path: Path, monkeypatch) -> None:
    """`perl report` tells, through a Rich progress display, what it is doing while it works."""
    from rich.progress import Progress

    cfg_path, out = complete_suite(tmp_path)
    told: list[str] = []
    update = Progress.update

    def record(self, task, **kwargs):
        if "description" in kwargs:
            told.append(kwargs["description"])
        return update(self, task, **kwargs)

    monkeypatch.setattr(Progress, "update", record)
    code, text = run_cli("report", "core", "--config", str(cfg_path), "--output", str(out))
    assert code == 0, text
    assert told[0] == "reading 12 experiments"
    assert f"drawing {reportlib.REWARD_PLOT}" in told and "drawing gradient_norms_lora.png" in told
    assert told[-2:] == ["classifying failures", "writing the summary"]


def test_accuracies_carry_standard_errors(tmp_path: Path) -> None:
    """One run: ± its standard error over problems (from eval.json, or the bound sqrt(p(1-p)/n)
    for an eval.json without one); several seeds: ± sd / sqrt(n). SUMMARY.md says how."""
    cfg_path = write_config(tmp_path)
    out = tmp_path / "output"
    exps = {e.name: e for e in configlib.expand(configlib.load(cfg_path), "core")}
    sd = out / "core"
    for name, extra in (
        ("lora_r16_s42", {"accuracy_sampled": 0.40, "accuracy_sampled_se": 0.021, "base_accuracy_sampled": 0.30,
                          "base_accuracy_sampled_se": 0.020, "eval_problems": 200}),
        ("lora_r16_s123", {"accuracy_sampled": 0.46, "accuracy_sampled_se": 0.022, "base_accuracy_sampled": 0.30,
                           "base_accuracy_sampled_se": 0.020, "eval_problems": 200}),
        ("dora_r16_s42", {"accuracy_sampled": 0.5, "base_accuracy_sampled": 0.3, "eval_problems": 200}),
    ):
        d = write_experiment(sd, exps[name])
        ev = json.loads((d / st.EVAL_FILE).read_text())
        ev.update(extra)
        for key in ("accuracy_greedy_se", "base_accuracy_greedy_se"):
            ev.pop(key, None)
        st.atomic_write_json(d / st.EVAL_FILE, ev)
    code, text = run_cli("report", "core", "--config", str(cfg_path), "--output", str(out))
    assert code == 0, text
    md = (sd / "SUMMARY.md").read_text()
    experiments = section(md, "Experiments")
    assert "| 0.400 ± 0.021 | 0.300 ± 0.020 |" in experiments
    assert "| 0.500 ± 0.035 | 0.300 ± 0.032 |" in experiments  # sqrt(.5 x .5 / 200), sqrt(.3 x .7 / 200)
    table = section(md, "Results by method")
    # dora, one run: its own standard error; the gain's adds both evaluations' (independent: an upper bound).
    assert "| 1 | dora | 1/2 † | 0.500 ± 0.035 | 0.300 ± 0.032 | +0.200 ± 0.048 |" in table
    # lora, two seeds: sd / sqrt(2) of (0.40, 0.46) = 0.030.
    assert "| 2 | lora | 2/2 | 0.430 ± 0.030 | 0.300 ± 0.000 | +0.130 ± 0.030 |" in table
    assert "over the held-out problems" in table and "over seeds" in table


def test_running_mean_of_a_training_curve() -> None:
    """The bold line of a noisy training curve: a trailing mean of up to SMOOTH_WINDOW logged values."""
    from perl_cli.report import running_mean

    assert running_mean([], 3) == []
    assert running_mean([1.0, 3.0, 5.0, 7.0], 1) == [1.0, 3.0, 5.0, 7.0]
    assert running_mean([1.0, 3.0, 5.0, 7.0, 9.0], 3) == pytest.approx([1.0, 2.0, 3.0, 5.0, 7.0])
    # Alternating noise around a rising trend comes out as the trend.
    noisy = [0.3 + 0.01 * i + (0.05 if i % 2 else -0.05) for i in range(20)]
    smooth = running_mean(noisy, 2)[1:]
    assert all(b > a for a, b in zip(smooth, smooth[1:], strict=False))


def test_gain_is_paired_in_the_report_and_the_run_summary(tmp_path: Path) -> None:
    """A run's change from the base model is shown with its *paired* standard error (the
    worker's gain_sampled_se, from per-problem differences), in SUMMARY.md and in the end
    summary of `perl run`, beside the base it started from."""
    from perl_cli import run_summary

    cfg_path = write_config(tmp_path)
    out = tmp_path / "output"
    exp = next(e for e in configlib.expand(configlib.load(cfg_path), "core") if e.name == "lora_r16_s42")
    d = write_experiment(out / "core", exp)
    ev = json.loads((d / st.EVAL_FILE).read_text())
    ev.update({"accuracy_sampled": 0.299, "accuracy_sampled_se": 0.017, "base_accuracy_sampled": 0.228,
               "base_accuracy_sampled_se": 0.016, "gain_sampled": 0.071, "gain_sampled_se": 0.011,
               "eval_problems": 400})
    st.atomic_write_json(d / st.EVAL_FILE, ev)
    code, text = run_cli("report", "core", "--config", str(cfg_path), "--output", str(out))
    assert code == 0, text
    table = section((out / "core" / "SUMMARY.md").read_text(), "Results by method")
    # The unpaired bound would be hypot(0.017, 0.016) = 0.023.
    assert "| 0.299 ± 0.017 | 0.228 ± 0.016 | +0.071 ± 0.011 |" in table
    summary = run_summary.build(out, "core", configlib.load(cfg_path), ["lora_r16_s42"], 0, width=160)
    assert "accuracy (change from base)" in summary.text
    assert "0.299 ± 0.017 (+0.071 ± 0.011 from 0.228)" in summary.text


def test_share_of_truncated_completions_per_method(tmp_path: Path) -> None:
    """Issue 21.6: TRL's `completions/clipped_ratio` (metrics.jsonl keeps TRL's name) is a column
    per method, the mean of the last 10% of logged steps, ± over seeds; runs from before the
    key (none logged) show "-"; `perl report --json` carries the same numbers."""
    cfg_path = write_config(tmp_path)
    out = tmp_path / "output"
    exps = {e.name: e for e in configlib.expand(configlib.load(cfg_path), "core")}
    # 20 logged steps: the last 10% is the last 2. lora s42 ends at 0.30/0.40, s123 at 0.50/0.60.
    tails = {"lora_r16_s42": (0.3, 0.4), "lora_r16_s123": (0.5, 0.6)}
    for name in ("lora_r16_s42", "lora_r16_s123", "dora_r16_s42", "dora_r16_s123"):
        d = write_experiment(out / "core", exps[name])
        rows = [{"step": 5 * i, "reward": 0.1 * i} for i in range(1, 21)]
        if name in tails:
            for i, row in enumerate(rows):
                row["completions/clipped_ratio"] = 0.9 if i < 18 else tails[name][i - 18]
        _write_metrics(d, rows)
    code, text = run_cli("report", "core", "--config", str(cfg_path), "--output", str(out))
    assert code == 0, text
    table = section((out / "core" / "SUMMARY.md").read_text(), "Results by method")
    header = next(line for line in table.splitlines() if line.startswith("| # "))
    column = header.split(" | ").index(reportlib.CLIPPED_LABEL)
    cells = {line.split(" | ")[1]: line.split(" | ")[column] for line in table.splitlines()
             if re.match(r"^\| \d+ \|", line)}
    # means 0.35 and 0.55 over the two seeds: 0.450 ± sd/√2 = 0.100
    assert cells == {"lora": "0.450 ± 0.100", "dora": "-"}, cells
    code, text = run_cli("report", "core", "--json", "--config", str(cfg_path), "--output", str(out))
    assert code == 0, text
    results = {r["method"]: r["clipped_ratio"] for r in json.loads(text)["results"]}
    assert results["lora"]["mean"] == pytest.approx(0.45) and results["lora"]["se"] == pytest.approx(0.1)
    assert results["dora"] == {"mean": None, "se": None, "n": 0}
