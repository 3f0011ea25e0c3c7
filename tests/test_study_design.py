"""Suites measure what their names say (a data-size study varies the data seen) and run where they can."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from perl_cli import config as configlib
from perl_cli.cli import app

REPO_CONFIG = Path(__file__).resolve().parents[1] / "experiments.toml"


def test_prompts_per_step_counts_prompts_not_completions() -> None:
    exp = configlib.expand(configlib.load(REPO_CONFIG), "stress-data")[0]
    # 4 completions x 8 accumulation / 8 generations per prompt.
    assert configlib.prompts_per_step(exp.config) == 4


def test_stress_data_makes_one_pass_over_each_data_size() -> None:
    experiments = configlib.expand(configlib.load(REPO_CONFIG), "stress-data")
    seen = {e.data_size: e.max_steps * configlib.prompts_per_step(e.config) for e in experiments}
    assert seen == {1000: 1000, 4000: 4000, 8500: 8500, 17000: 17000}
    assert configlib.coverage_warnings(experiments) == []


def test_plan_warns_naming_runs_that_see_fewer_prompts_than_their_data_size() -> None:
    result = CliRunner().invoke(app, ["plan", "stress-data-fixed-steps", "--config", str(REPO_CONFIG)])
    assert result.exit_code == 0
    warning = " ".join(result.stderr.split())
    assert "16 experiment(s) stop after 1,000 steps x 4 prompts = 4,000 prompts" in warning
    assert "lora_r16_n17000_s42 (17,000)" in warning and "lora_r16_n8500_s123 (8,500)" in warning
    assert "n4000" not in warning and "n1000" not in warning
    clean = CliRunner().invoke(app, ["plan", "stress-data", "--config", str(REPO_CONFIG)])
    assert clean.exit_code == 0 and "warning" not in clean.stderr


def test_run_dry_run_warns_too(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "stress-data-fixed-steps", "--dry-run", "--only", "lora_r16_n17000_s42",
                                      "--config", str(REPO_CONFIG), "--output", str(tmp_path)])
    assert "fewer than their data_size" in result.stderr



def test_a_large_model_without_a_gpu_needs_cpu_explicitly(tmp_path: Path) -> None:
    env = {"PERL_FAKE_GPUS": "[]"}
    args = ["run", "core-1.5b", "--dry-run", "--config", str(REPO_CONFIG), "--output", str(tmp_path)]
    refused = CliRunner().invoke(app, args, env=env)
    assert refused.exit_code == 2
    message = " ".join(refused.output.split())
    assert "24 experiment(s) use a model of more than 0.2B parameters" in message and "--cpu" in message
    allowed = CliRunner().invoke(app, [*args, "--cpu"], env=env)
    assert allowed.exit_code == 0, allowed.output
    demo = CliRunner().invoke(app, ["run", "demo", "--dry-run", "--config", str(REPO_CONFIG), "--output", str(tmp_path)], env=env)
    assert demo.exit_code == 0, demo.output
