"""One writer of an ending (scheduler/endings.py), as the local loop, the Slurm task and
`--wait`/`perl cancel` for Slurm tasks use it (issue 18, item 2)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from perl_cli import outcomes, state
from perl_cli.scheduler import endings
from perl_cli.scheduler.handles import SlurmTaskHandle


def running(tmp: Path, **extra) -> Path:
    state.write_status(tmp, {"state": "running", "pid": 10, "ended": None, "error": None, **extra})
    return tmp


def test_what_the_exit_means_is_recorded_with_the_time_it_ended(tmp_path: Path) -> None:
    status = endings.record(running(tmp_path), outcomes.Ending(-9, pid=10))
    assert status["state"] == "failed" and status["signal"] == "SIGKILL" and status["exit_code"] == 137
    first = status["ended"]
    assert isinstance(first, float)
    again = endings.record(tmp_path, outcomes.Ending(-9, pid=10))  # recorded once: the end time stays
    assert again["ended"] == first


def test_the_worker_own_final_state_wins_and_keep_final_leaves_it_alone(tmp_path: Path) -> None:
    running(tmp_path, state="completed", exit_code=0, ended=5.0)
    assert endings.record(tmp_path, outcomes.Ending(0, pid=10))["state"] == "completed"
    kept = endings.record(tmp_path, outcomes.Ending(None, pid=10, stop_sent=True), keep_final=True,
                          extra={"error": "stopped by perl cancel"})
    assert kept["error"] is None and kept["ended"] == 5.0


def test_extra_and_amend_add_what_only_the_caller_knows(tmp_path: Path) -> None:
    def blame(fields: dict, status: dict) -> None:
        fields["cause"] = outcomes.CAUSE_DISK_FULL

    status = endings.record(running(tmp_path), outcomes.Ending(1, pid=10), extra={"error": "boom"}, amend=blame)
    assert status["state"] == "failed" and status["error"] == "boom" and status["cause"] == "disk_full"


def test_a_full_disk_still_records_the_ending_and_names_the_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    running(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state, "update_status", full)
    status = endings.record(tmp_path, outcomes.Ending(-9, pid=10))
    assert status["cause"] == "disk_full" and "the disk is full" in status["error"]
    monkeypatch.undo()
    assert state.read_status(tmp_path)["state"] == "failed"  # rewritten in place


def test_a_slurm_task_that_left_no_final_status_is_recorded_from_slurm_state(tmp_path: Path) -> None:
    running(tmp_path)
    handle = SlurmTaskHandle("lora_s1", tmp_path, "123_4")
    handle.slurm_state = "TIMEOUT"
    status = handle.record_end(outcomes.Ending(None, pid=10))
    assert status["state"] == "failed" and status["cause"] == "time_limit" and "123_4" in status["error"]
    assert handle.record_end(outcomes.Ending(None, pid=10), cancelled=True)["cause"] == "time_limit"  # final: kept


def test_state_names_are_defined_once() -> None:
    assert state.COMPLETED is outcomes.COMPLETED and state.QUEUED is outcomes.QUEUED
    source = Path(state.__file__).read_text()
    assert 'COMPLETED = "completed"' not in source and 'FAILED = "failed"' not in source
