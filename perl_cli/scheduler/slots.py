"""Slots: which GPU slot a job gets, from numbers alone (no NVML, no processes, no clock).

    choose_slot(estimate_mb, free_mb_by_gpu, running, capacity=..., jobs_per_gpu=..., ...)
      -> (placed, gpu index or None for the CPU)

A job goes to the GPU with a free slot whose free memory, minus what jobs started
within the settle period have reserved (NVML does not show a new job's memory yet;
fake GPUs never do, so there a job reserves its estimate for as long as it runs), fits
the job's estimate: the most free memory first, then the fewest jobs, then the lowest
index. Unit-tested in tests/test_slots.py; the local backend feeds it its inventory (machine.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Placed:
    """A running job as placement sees it."""

    gpu: int | None
    estimate_mb: int
    started_mono: float


def available_mb(gpu: int, free_mb: int, running: Sequence[Placed], *, now: float, settle_s: float,
                 reserve_always: bool) -> int:
    reserved = sum(j.estimate_mb for j in running
                   if j.gpu == gpu and (reserve_always or now - j.started_mono < settle_s))
    return free_mb - reserved


def choose_slot(estimate_mb: int, free_mb: Mapping[int, int], running: Sequence[Placed], *, capacity: int,
                jobs_per_gpu: int, now: float, settle_s: float, reserve_always: bool) -> tuple[bool, int | None]:
    """(placed, gpu) for a job; with no GPUs (`free_mb` empty) a free slot means the CPU."""
    if len(running) >= capacity:
        return False, None
    if not free_mb:
        return True, None
    best: tuple[int, int, int] | None = None
    for index, free in free_mb.items():
        used_slots = sum(1 for j in running if j.gpu == index)
        if used_slots >= jobs_per_gpu:
            continue
        left = available_mb(index, free, running, now=now, settle_s=settle_s, reserve_always=reserve_always)
        if estimate_mb > left:
            continue
        key = (left, -used_slots, -index)
        if best is None or key > best:
            best = key
    return (True, -best[2]) if best is not None else (False, None)
