"""How `perl run` ends: a summary table of the run (not a scrolled-away bar), and --notify."""

from __future__ import annotations

import json
from pathlib import Path

from test_scheduler import SUITE, env_for, fake_gpus, perl, write_config


def test_the_run_ends_with_a_summary_of_every_experiment_and_its_cause(tmp_path: Path) -> None:
    write_config(tmp_path, methods=("lora", "dora"), seeds=(1,))
    env = env_for(tmp_path, gpus=fake_gpus(8000), PERL_FAKE_PLAN=json.dumps({"dora_s1": {"fail_at": 2}}))
    result = perl(tmp_path, "--jobs-per-gpu", "2", env=env)
    assert result.returncode == 1
    tail = result.stdout[result.stdout.index(f"perl run {SUITE}: the run's 2 experiments"):]
    lines = tail.splitlines()
    lora = next(line for line in lines if line.startswith("lora_s1"))
    dora = next(line for line in lines if line.startswith("dora_s1"))
    assert "completed" in lora and "failed" in dora and "unknown" in dora  # the classifier's cause
    assert "completed 1, failed 1; exit code 1." in tail
    assert f"`perl diagnose {SUITE}`" in tail


def test_notify_gets_the_summary_and_the_exit_code(tmp_path: Path) -> None:
    write_config(tmp_path, methods=("lora",), seeds=(1,))
    got = tmp_path / "notified.txt"
    command = f'{{ cat; echo "code=$PERL_EXIT_CODE suite=$PERL_SUITE"; }} > {got}'
    result = perl(tmp_path, "--notify", command, env=env_for(tmp_path, gpus=fake_gpus(8000)))
    assert result.returncode == 0, result.stderr
    text = got.read_text()
    assert "lora_s1" in text and "completed 1; exit code 0." in text and f"code=0 suite={SUITE}" in text


def test_a_failing_notifier_is_a_warning_not_a_failed_run(tmp_path: Path) -> None:
    write_config(tmp_path, methods=("lora",), seeds=(1,))
    result = perl(tmp_path, "--notify", "echo nope >&2; exit 3", env=env_for(tmp_path, gpus=fake_gpus(8000)))
    assert result.returncode == 0
    assert "perl: warning: --notify 'echo nope >&2; exit 3' exited with 3: nope." in result.stderr
