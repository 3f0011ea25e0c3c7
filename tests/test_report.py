"""`perl report`: SUMMARY.md and plots on complete, partial, empty and tiny suites."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from suite_fixtures import build_mixed_suite, write_config, write_experiment
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
    assert "| 4 | 2 | 2 | 2 | 1 | 1 | 1 |" in md  # counts by state, then stalled
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
