"""GPU slots for jobs from numbers alone (perl_cli/scheduler/slots.py): no processes, no sleeps."""

from __future__ import annotations

from perl_cli.scheduler.slots import Placed, choose_slot

NOW = 1000.0


def choose(estimate: int, free: dict[int, int], running: list[Placed] = (), *, capacity: int = 8, per_gpu: int = 2,
           settle: float = 60.0, fake: bool = False) -> tuple[bool, int | None]:
    return choose_slot(estimate, free, list(running), capacity=capacity, jobs_per_gpu=per_gpu, now=NOW,
                       settle_s=settle, reserve_always=fake)


def test_most_free_memory_then_fewest_jobs_then_lowest_index() -> None:
    assert choose(1000, {0: 5000, 1: 8000}) == (True, 1)
    assert choose(1000, {0: 8000, 1: 8000}) == (True, 0)
    old = [Placed(0, 1000, NOW - 600)]  # past the settle period: NVML already counts it in "free"
    assert choose(1000, {0: 8000, 1: 8000}, old) == (True, 1)


def test_a_job_that_does_not_fit_waits_instead_of_starting() -> None:
    # 4 GB GPU with 3.5 GB used by another process: a 3 GB job waits (the old test slept to show this).
    assert choose(3000, {0: 500}) == (False, None)
    assert choose(3000, {0: 4000}) == (True, 0)


def test_jobs_started_within_the_settle_period_reserve_their_estimate() -> None:
    fresh = [Placed(0, 2500, NOW - 5)]
    assert choose(2500, {0: 6000}, fresh, per_gpu=4) == (True, 0)  # 6000 - 2500 leaves 3500
    assert choose(2500, {0: 6000}, fresh * 2, per_gpu=4) == (False, None)  # 6000 - 5000 leaves 1000
    settled = [Placed(0, 2500, NOW - 120)] * 2
    assert choose(2500, {0: 6000}, settled, per_gpu=4) == (True, 0)
    # Fake GPUs never show a job's memory: it stays reserved while the job runs.
    assert choose(2500, {0: 6000}, settled, per_gpu=4, fake=True) == (False, None)


def test_slots_per_gpu_and_the_total_cap() -> None:
    two = [Placed(0, 10, NOW), Placed(0, 10, NOW)]
    assert choose(10, {0: 8000, 1: 100}, two, per_gpu=2) == (True, 1)
    assert choose(10, {0: 8000}, two, per_gpu=2) == (False, None)
    assert choose(10, {0: 8000, 1: 8000}, two, capacity=2) == (False, None)


def test_without_gpus_a_free_slot_is_the_cpu() -> None:
    assert choose(10**6, {}, [], capacity=2) == (True, None)
    assert choose(10, {}, [Placed(None, 10, NOW)] * 2, capacity=2) == (False, None)
