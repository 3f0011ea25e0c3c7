"""The quirk study's paired verdict in `perl report` (issue 21.3): a fabricated artifacts-demo-like
suite with a planted gap (PiSSA better with the quirks on, and collapsed only with them) and a
planted null (MiLoRA the same either way); a suite that varies more than the switches; a suite
without them."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from suite_fixtures import TEST_TOML, write_experiment
from typer.testing import CliRunner

from perl_cli import config as configlib
from perl_cli import report_quirks
from perl_cli import state as st
from perl_cli.cli import app

QUIRK_TOML = TEST_TOML + """
[suites.quirks]
description = "artifacts-demo's design on fabricated results"
name = "{method}_{adapter_dtype}_s{seed}"
[suites.quirks.base.peft]
lora_dropout = 0.05
[suites.quirks.matrix]
method = ["pissa", "milora"]
"peft.adapter_dtype" = ["float32", "bfloat16"]
seed = [1, 2]
[[suites.quirks.when]]
if = { "peft.adapter_dtype" = "bfloat16" }
set = { "peft.dropout_on_svd_methods" = true }

[suites.confounded]
description = "the switch and the learning rate vary together with a second axis: not isolated"
name = "{method}_{adapter_dtype}_lr{lr}_s{seed}"
[suites.confounded.matrix]
method = ["pissa"]
"peft.adapter_dtype" = ["float32", "bfloat16"]
lr = [1e-5, 2e-5]
seed = [1]
"""


def per_problem(rng: random.Random, difficulty: list[float], effect: float, samples: int = 8) -> list[float]:
    return [sum(rng.random() < min(1.0, max(0.0, d + effect)) for _ in range(samples)) / samples for d in difficulty]


def collapsed_metrics(steps: int = 20) -> list[dict]:
    """Correctness rises to ~0.3, then sits at zero for the last 6 logged points."""
    return [{"step": 10 * i, "reward": 0.3, "reward/correct": 0.3 if i <= steps - 6 else 0.0,
             "completion_length": 20.0, "completions/clipped_ratio": 0.05} for i in range(1, steps + 1)]


def healthy_metrics(steps: int = 20) -> list[dict]:
    return [{"step": 10 * i, "reward": 0.3, "reward/correct": 0.1 + 0.01 * i, "completion_length": 20.0,
             "completions/clipped_ratio": 0.05} for i in range(1, steps + 1)]


def planted(tmp_path: Path, suite: str = "quirks", effect=None, collapses=None, seed: int = 5) -> tuple[Path, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg_path = tmp_path / "experiments.toml"
    cfg_path.write_text(QUIRK_TOML)
    out = tmp_path / "output"
    rng = random.Random(seed)
    difficulty = [rng.uniform(0.05, 0.6) for _ in range(300)]
    for exp in configlib.expand(configlib.load(cfg_path), suite):
        on = exp.resolved()["peft"]["adapter_dtype"] != "float32"
        d = write_experiment(out / suite, exp)
        values = per_problem(rng, difficulty, effect(exp.method, on) if effect else 0.0)
        ev = st.read_json(d / st.EVAL_FILE)
        ev.update(per_problem_sampled=values, accuracy_sampled=sum(values) / len(values),
                  accuracy_sampled_se=0.01, base_accuracy_sampled=0.2, gain_sampled_se=0.008)
        st.atomic_write_json(d / st.EVAL_FILE, ev)
        rows = collapsed_metrics() if collapses and collapses(exp.method, on) else healthy_metrics()
        (d / st.METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return cfg_path, out


def report(cfg_path: Path, out: Path, suite: str, *extra: str) -> str:
    result = CliRunner().invoke(app, ["report", suite, *extra, "--config", str(cfg_path), "--output", str(out)])
    assert result.exit_code == 0, result.output
    return result.output


def section(md: str) -> str:
    assert f"## {report_quirks.TITLE}" in md, md
    return md.split(f"## {report_quirks.TITLE}", 1)[1].split("\n## ", 1)[0]


def test_planted_gap_and_collapse_found_planted_null_not(tmp_path: Path) -> None:
    cfg_path, out = planted(tmp_path, effect=lambda method, on: 0.15 if method == "pissa" and on else 0.0,
                            collapses=lambda method, on: method == "pissa" and on)
    report(cfg_path, out, "quirks")
    text = section((out / "quirks" / "SUMMARY.md").read_text())
    assert "Bonferroni-corrected over the 2 on/off comparison(s)" in text
    verdicts = {m: line for line in text.splitlines() if (m := re.match(r"^- \*\*(\w+)\*\*", line) and
                                                          re.match(r"^- \*\*(\w+)\*\*", line).group(1))}
    pissa, milora = verdicts["pissa"], verdicts["milora"]
    assert "quirks on (adapter_dtype=bfloat16, dropout_on_svd_methods=true) vs off" in pissa
    assert "**quirks on > off**" in pissa and "Collapse: only with the quirks (2/2 runs with the quirks on, 0/2 off)" in pissa
    assert re.search(r"Held-out gain vs base: off \+0\.\d+ ± 0\.\d+, on \+0\.2\d+ ± 0\.\d+\.", pissa), pissa
    assert "**indistinguishable at this sample size**" in milora and "Collapse: in neither" in milora
    # the resolved dropout of PiSSA/MiLoRA follows the switch, and the report says so
    assert "also differs: `peft.lora_dropout` 0.0 → 0.05" in pissa
    assert "A gap in held-out accuracy: pissa." in text and "Collapse only with them: pissa." in text
    # the per-experiment table: accuracy ± SE, paired gain, collapse
    row = next(line for line in text.splitlines() if line.startswith("| pissa_bfloat16_s1 |"))
    assert re.search(r"\| completed \| [\d.]+ ± 0\.010 \| [+-][\d.]+ ± 0\.008 \| 0\.050 \| yes: correctness from step \d+ \|$", row), row

    data = json.loads(report(cfg_path, out, "quirks", "--json"))[report_quirks.NAME]
    by_method = {s["method"]: s for s in data["studies"]}
    assert data["family"] == 2
    assert by_method["pissa"]["gap_verdict"] == "quirks on > off"
    c = by_method["pissa"]["comparison"]
    assert 0.1 < c["diff"] < 0.2 and c["ci_low"] > 0
    assert sorted(by_method["pissa"]["collapsed"]["on"]) == ["pissa_bfloat16_s1", "pissa_bfloat16_s2"]
    assert by_method["milora"]["gap_verdict"] == "indistinguishable at this sample size"
    assert by_method["milora"]["comparison"]["ci_low"] < 0 < by_method["milora"]["comparison"]["ci_high"]
    assert by_method["milora"]["collapsed"] == {"on": [], "off": []}


def test_the_null_is_rarely_called_a_gap(tmp_path: Path) -> None:
    """Over planted nulls (no effect for either method), the section's family-wise rule keeps false
    gaps rare: at most 1 of 6 suites (2 comparisons each at 5% family-wise)."""
    false_gaps = 0
    for trial in range(6):
        cfg_path, out = planted(tmp_path / str(trial), effect=lambda method, on: 0.0, seed=100 + trial)
        data = json.loads(report(cfg_path, out, "quirks", "--json"))[report_quirks.NAME]
        false_gaps += any(s["gap_verdict"] != "indistinguishable at this sample size" for s in data["studies"])
    assert false_gaps <= 1, false_gaps


def test_more_than_the_switches_varying_is_not_compared(tmp_path: Path) -> None:
    cfg_path, out = planted(tmp_path, "confounded")
    report(cfg_path, out, "confounded")
    text = section((out / "confounded" / "SUMMARY.md").read_text())
    assert "pissa: its configurations differ in more than upstream's quirk switches" in text
    assert "`training.learning_rate`" in text and "| method | configuration |" not in text


def test_a_suite_without_the_switches_has_no_section(tmp_path: Path) -> None:
    cfg_path = tmp_path / "experiments.toml"
    cfg_path.write_text(QUIRK_TOML)
    out = tmp_path / "output"
    for exp in configlib.expand(configlib.load(cfg_path), "core"):
        write_experiment(out / "core", exp)
    report(cfg_path, out, "core")
    assert report_quirks.TITLE not in (out / "core" / "SUMMARY.md").read_text()
    assert report_quirks.NAME not in json.loads(report(cfg_path, out, "core", "--json"))
