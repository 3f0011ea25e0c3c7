"""Planning from facts alone (perl_cli/scheduler/planning.py): no files, no processes."""

from __future__ import annotations

import pytest

from perl_cli.scheduler.planning import ADOPT, FRESH, KEEP, REFUSE, RESUME, RUN, SKIP, WATCH, Facts, decide

FP = "abc123"


def facts(**kw) -> Facts:
    return Facts(**{"fingerprint": FP, "state": "pending", **kw})


@pytest.mark.parametrize(("f", "fresh", "expected"), [
    (facts(), False, RUN),
    (facts(exists=True, state="interrupted", recorded_fingerprint=FP, has_checkpoint=True), False, RESUME),
    (facts(exists=True, state="failed", recorded_fingerprint=FP), False, RUN),
    (facts(exists=True, state="completed", recorded_fingerprint=FP), False, SKIP),
    (facts(exists=True, state="completed", recorded_fingerprint=FP), True, FRESH),
    (facts(exists=True, state="running", recorded_fingerprint=FP, live_pid=42), False, ADOPT),
    (facts(exists=True, state="running", recorded_fingerprint=FP, live_pid=42), True, FRESH),
    (facts(exists=True, state="stale", recorded_fingerprint="old"), True, FRESH),
    (facts(exists=True, problem="status.json: not JSON"), True, FRESH),
])
def test_decisions(f: Facts, fresh: bool, expected: str) -> None:
    assert decide(f, fresh=fresh).action == expected


@pytest.mark.parametrize(("f", "reason"), [
    (facts(exists=True, problem="status.json: not JSON"), "unreadable (status.json: not JSON)"),
    (facts(exists=True, state="stale", recorded_fingerprint="old"), "(stale)"),
    (facts(exists=True, state="failed", recorded_fingerprint="old", has_checkpoint=True),
     "has checkpoints from other settings (without --set)"),
    (facts(exists=True, state="running", recorded_fingerprint="old", live_pid=42, overrides=("a.b=1",)),
     "still running with other settings (with --set a.b=1)"),
    (facts(exists=True, state="running", other_host="gpu7"), "running on host gpu7"),
    (facts(exists=True, state="queued", slurm_task="12_3"), "queued or running in Slurm (task 12_3)"),
])
def test_refusals(f: Facts, reason: str) -> None:
    decision = decide(f, fresh=False)
    assert decision.action == REFUSE and reason in decision.reason


def test_a_slurm_task_in_flight_is_watched_by_the_slurm_backend_and_never_submitted_twice() -> None:
    f = facts(exists=True, state="queued", slurm_task="12_3")
    assert decide(f, fresh=False, slurm=True).action == WATCH
    assert decide(f, fresh=True, slurm=True).action == REFUSE  # cancel it first


def test_completed_under_its_own_overrides_is_kept_by_a_run_without_set() -> None:
    f = facts(exists=True, state="stale", recorded_fingerprint="other", overrides=("training.max_steps=5",),
              complete_under_own_overrides=True)
    assert decide(f, fresh=False).action == KEEP
    refused = decide(f, fresh=False, asked=("training.max_steps=9",))
    assert refused.action == REFUSE and "this command has --set training.max_steps=9" in refused.reason


def test_runtime_adjustments_carry_over_only_under_the_same_settings() -> None:
    same = facts(exists=True, state="failed", recorded_fingerprint=FP, runtime={"per_device_train_batch_size": 2})
    assert decide(same, fresh=False).runtime == {"per_device_train_batch_size": 2}
    other = facts(exists=True, state="failed", recorded_fingerprint="old", runtime={"per_device_train_batch_size": 2})
    assert decide(other, fresh=False) .runtime == {}
