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


# --- adding work to a running suite ------------------------------------------------------


def _wait_for(predicate, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_second_run_hands_new_experiments_to_the_running_one(tmp_path: Path) -> None:
    from test_scheduler import launches, start_perl, statuses

    write_config(tmp_path, steps=40, methods=("lora",), seeds=(1,))
    env = env_for(tmp_path, gpus=fake_gpus(8000), step_s=0.05)
    first = start_perl(tmp_path, env=env)
    run_status = tmp_path / "out" / SUITE / "run_status.json"
    _wait_for(lambda: run_status.exists() and '"lora_s1"' in run_status.read_text() and "lora_s1" in launches(tmp_path))
    # Researchers add experiments to the TOML while the suite runs, then run it again.
    write_config(tmp_path, steps=40, methods=("lora", "dora"), seeds=(1,))
    second = perl(tmp_path, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "handed 1 experiment(s) to the running `perl run`" in second.stdout and "dora_s1" in second.stdout
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, out + err
    assert "added 1 experiment(s) handed over by another `perl run`: dora_s1" in out
    assert {n: s["state"] for n, s in statuses(tmp_path).items()} == {"lora_s1": "completed", "dora_s1": "completed"}
    assert sorted(launches(tmp_path)) == ["dora_s1", "lora_s1"]  # nothing twice, no second scheduler
    assert "the run's 2 experiments" in out  # the summary covers what was added


def test_a_second_run_with_conflicting_flags_is_refused_with_the_reason(tmp_path: Path) -> None:
    from test_scheduler import launches, start_perl

    write_config(tmp_path, steps=40, methods=("lora",), seeds=(1,))
    # The first run's worker waits at step 2 until the test is done with it (a barrier, not a race with its end).
    go = tmp_path / "go"
    env = env_for(tmp_path, gpus=fake_gpus(8000), step_s=0.05,
                  PERL_FAKE_PLAN=json.dumps({"lora_s1": {"hold_at": 2, "until": str(go)}}))
    first = start_perl(tmp_path, env=env)
    run_status = tmp_path / "out" / SUITE / "run_status.json"
    _wait_for(lambda: run_status.exists() and "lora_s1" in launches(tmp_path))
    refused = perl(tmp_path, "--set", "training.learning_rate=1e-3", "--gpus", "0", env=env)
    assert refused.returncode == 2
    message = " ".join(refused.stderr.split())
    assert "it runs with no --set, this command asks for --set training.learning_rate=1e-3" in message
    assert "--gpus configures a scheduler, and it keeps its own" in message
    nothing = perl(tmp_path, env=env)
    assert nothing.returncode == 0 and "nothing to add" in nothing.stdout
    go.touch()
    first.communicate(timeout=60)
    assert first.returncode == 0


def test_progress_lines_show_the_phase_before_step_1(tmp_path: Path) -> None:
    from perl_cli import state
    from perl_cli.scheduler.progress import read_progress

    state.atomic_write_json(tmp_path / "status.json", {"state": "running", "step": 0, "total_steps": 300,
                                                       "phase": {"name": "warm start", "done": 500, "total": 600}})
    row = read_progress("lora_r16_s42", "cpu", tmp_path)
    assert row.where == "warm start 500/600"
    state.atomic_write_json(tmp_path / "status.json", {"state": "running", "step": 12, "total_steps": 300})
    assert read_progress("lora_r16_s42", "cpu", tmp_path).where == "12/300"
