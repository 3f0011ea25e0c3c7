"""`perl cancel` for a local `perl run` (real processes, the synthetic worker).

Slurm's side is in tests/test_slurm.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from test_scheduler import SUITE, env_for, start_perl, statuses, wait_until, write_config

from perl_cli import state


def cancel(tmp: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "perl_cli", "cancel", SUITE, *args, "--output", str(tmp / "out")],
                          env=env, capture_output=True, text=True, timeout=60)


def both_running(tmp: Path) -> bool:
    return sum((s.get("step") or 0) >= 3 for s in statuses(tmp).values()) == 2


def test_cancel_only_stops_those_experiments_and_the_run_goes_on(tmp_path: Path) -> None:
    write_config(tmp_path, steps=150, save_steps=1000, methods=("lora", "dora"), seeds=(1,))
    env = env_for(tmp_path, gpus="[]", step_s=0.03)
    run = start_perl(tmp_path, "--jobs", "2", env=env)
    wait_until(lambda: both_running(tmp_path), what="both workers stepping")
    result = cancel(tmp_path, "--only", "lora_s1", env=env)
    assert result.returncode == 0, result.stderr
    assert f"asked perl run (pid {run.pid}) to stop lora_s1" in result.stdout
    out, err = run.communicate(timeout=60)
    assert run.returncode == 1, err  # not everything completed
    final = statuses(tmp_path)
    assert final["lora_s1"]["state"] == "interrupted" and final["lora_s1"]["exit_code"] == 143
    assert final["dora_s1"]["state"] == "completed"
    assert "cancelled by perl cancel" in out
    assert not (tmp_path / "out" / SUITE / ".cancel").exists()


def test_cancel_stops_the_whole_run_and_a_rerun_resumes(tmp_path: Path) -> None:
    write_config(tmp_path, steps=200, save_steps=1000, methods=("lora", "dora"), seeds=(1,))
    env = env_for(tmp_path, gpus="[]", step_s=0.03)
    run = start_perl(tmp_path, "--jobs", "2", env=env)
    wait_until(lambda: both_running(tmp_path), what="both workers stepping")
    result = cancel(tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert run.wait(timeout=60) == 130
    stopped = statuses(tmp_path)
    assert {s["state"] for s in stopped.values()} == {"interrupted"}
    rerun = start_perl(tmp_path, env={**env, "PERL_FAKE_STEP_SECONDS": "0.002"})
    assert rerun.wait(timeout=60) == 0
    for name, status in stopped.items():
        final = state.read_status(tmp_path / "out" / SUITE / name)
        assert final["state"] == "completed" and final["resumed_from"] == status["step"]


def test_nothing_to_cancel_and_unknown_names(tmp_path: Path) -> None:
    env = env_for(tmp_path, gpus="[]")
    result = cancel(tmp_path, env=env)
    assert result.returncode == 2 and "nothing under" in result.stderr
    write_config(tmp_path, steps=2, methods=("lora",), seeds=(1,))
    run = start_perl(tmp_path, env=env)
    assert run.wait(timeout=60) == 0
    result = cancel(tmp_path, env=env)
    assert result.returncode == 0 and "nothing queued or running to cancel" in result.stdout
    result = cancel(tmp_path, "--only", "nosuch", env=env)
    assert result.returncode == 2 and "--only nosuch: no such experiment" in result.stderr


def test_a_fifo_or_garbage_as_a_request_file_never_freezes_the_run_loop(tmp_path: Path) -> None:
    """The run loop serves <suite>/.requests/ every tick: a FIFO there (or any non-file, or
    garbage) must be answered as unreadable at once, not block the scheduler forever."""
    import os
    import threading

    from perl_cli.scheduler import requests

    spool = requests.spool_dir(tmp_path)
    spool.mkdir()
    os.mkfifo(spool / f"1-fifo{requests.REQUEST_SUFFIX}")
    (spool / f"2-garbage{requests.REQUEST_SUFFIX}").write_bytes(b"\xff{[")
    (spool / f"3-dir{requests.REQUEST_SUFFIX}").mkdir()
    handlers = requests.Handlers(add=lambda exps: [], cancel=lambda names: [])
    got: list = []
    server = threading.Thread(target=lambda: got.extend(requests.serve(tmp_path, SUITE, handlers)))
    server.daemon = True  # a blocked read must not hang the test session
    server.start()
    server.join(timeout=5)
    assert not server.is_alive(), "serving a FIFO request file blocked"
    assert [r.id for r in got] == ["1-fifo", "2-garbage", "3-dir"]
    assert all(r.error and "unreadable" in r.error for r in got)
    assert sorted(p.name for p in spool.iterdir()) == [f"{n}{requests.REPLY_SUFFIX}" for n in ("1-fifo", "2-garbage", "3-dir")]
