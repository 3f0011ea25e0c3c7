"""`perl run` under faults of the machine: a frozen worker and a full disk (real processes).

The disk-full test mounts a small tmpfs, so it needs root (or CAP_SYS_ADMIN); CI runs as
root. Where mounting is not allowed it is skipped with the reason printed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_scheduler import SUITE, env_for, launches, perl, statuses, tmpfs_at, write_config
from typer.testing import CliRunner

from perl_cli.cli import app

STALL_TIMEOUT = "15"  # the smallest allowed: three missed 5-second heartbeats


def test_a_frozen_worker_is_killed_after_the_stall_timeout_and_retried(tmp_path: Path) -> None:
    write_config(tmp_path, steps=12, save_steps=2, methods=("lora", "dora"), seeds=(1,))
    plan = {"lora_s1": {"freeze_at": 5}}
    env = env_for(tmp_path, gpus="[]", step_s=0.05, PERL_FAKE_PLAN=json.dumps(plan))
    result = perl(tmp_path, "--jobs", "2", "--retries", "1", "--stall-timeout", STALL_TIMEOUT, env=env, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    final = statuses(tmp_path)
    assert final["lora_s1"]["state"] == "completed" and final["dora_s1"]["state"] == "completed"
    assert launches(tmp_path).count("lora_s1") == 2
    assert [r["cause"] for r in final["lora_s1"]["retries"]] == ["stalled (no heartbeat)"]
    log = (tmp_path / "out" / SUITE / "lora_s1" / "train.log").read_text()
    assert "no heartbeat for" in log and "from step 4" in log  # resumed from its last checkpoint


def test_a_frozen_worker_without_retries_ends_failed_as_stalled(tmp_path: Path) -> None:
    write_config(tmp_path, steps=12, save_steps=2, methods=("lora",), seeds=(1,))
    env = env_for(tmp_path, gpus="[]", step_s=0.05, PERL_FAKE_PLAN=json.dumps({"lora_s1": {"freeze_at": 3}}))
    result = perl(tmp_path, "--retries", "0", "--stall-timeout", STALL_TIMEOUT, env=env, timeout=90)
    assert result.returncode == 1
    status = statuses(tmp_path)["lora_s1"]
    assert status["state"] == "failed" and status["cause"] == "stalled" and status["signal"] == "SIGKILL"


def test_stall_timeout_below_three_heartbeats_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["run", "demo", "--stall-timeout", "5", "--dry-run"])
    assert result.exit_code == 2


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MiB tmpfs mounted at tmp_path/out (unmounted afterwards)."""
    yield from tmpfs_at(tmp_path / "out", "1m", "DISK-FULL TEST NOT RUN")


def fill(mount: Path, leave_bytes: int) -> Path:
    """Fill the file system up to `leave_bytes` of free space."""
    import os

    filler = mount / "filler"
    free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
    filler.write_bytes(b"\0" * max(0, free - leave_bytes))
    return filler


def test_a_full_disk_stops_launching_marks_disk_full_and_a_rerun_resumes(tmp_path: Path, small_disk: Path) -> None:
    # Each checkpoint costs a 4 KiB page: the first experiment runs out of space part-way.
    write_config(tmp_path, steps=60, save_steps=1, methods=("lora", "dora", "vera"), seeds=(1,))
    filler = fill(small_disk, leave_bytes=80 * 1024)
    env = env_for(tmp_path, gpus="[]", step_s=0.01)
    result = perl(tmp_path, "--jobs", "1", "--retries", "2", env=env, timeout=90)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("the disk is full") == 1, result.stderr
    final = statuses(tmp_path)
    failed = [n for n, s in final.items() if s.get("state") == "failed"]
    assert failed and all(final[n]["cause"] == "disk_full" for n in failed)
    assert not [n for n, s in final.items() if s.get("state") == "running"], final
    assert len(launches(tmp_path)) == len(failed)  # nothing launched after the disk filled, no retries

    diagnosis = CliRunner().invoke(app, ["diagnose", SUITE, "--json", "--config", str(tmp_path / "experiments.toml"),
                                         "--output", str(small_disk)])
    report = {e["name"]: e for e in json.loads(diagnosis.output)["experiments"]}
    assert all(report[n]["cause"] == "disk_full" for n in failed), report
    fix = " ".join(report[failed[0]]["fix"].split()) if isinstance(report[failed[0]]["fix"], str) else json.dumps(report[failed[0]]["fix"])
    assert f"{small_disk} has" in fix and "free; it needs at least" in fix and "two checkpoints of" in fix, fix

    filler.unlink()
    (tmp_path / "launches.log").unlink()
    result = perl(tmp_path, "--jobs", "1", env=env, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    final = statuses(tmp_path)
    assert all(s["state"] == "completed" for s in final.values()) and len(final) == 3
    log = (small_disk / SUITE / failed[0] / "train.log").read_text()
    assert "resuming from its last checkpoint" in log


def test_an_oom_that_a_retry_fixes_prints_one_line_not_a_failure(tmp_path: Path) -> None:
    from test_scheduler import fake_gpus

    write_config(tmp_path, methods=("lora",), seeds=(1,))
    env = env_for(tmp_path, gpus=fake_gpus(8000), PERL_TEST_FAIL_AT_STEP="2:oom")
    result = perl(tmp_path, env=env)
    assert result.returncode == 0, result.stderr + result.stdout
    lines = [line for line in result.stdout.splitlines() if "lora_s1" in line]
    retry = [line for line in lines if "retrying" in line]
    assert len(retry) == 1, lines
    assert "CUDA out of memory on attempt 1" in retry[0]
    assert "with per_device_train_batch_size=2, gradient_accumulation_steps=4 (same effective batch)" in retry[0]
    assert not [line for line in lines if " failed " in f" {line} "], lines
