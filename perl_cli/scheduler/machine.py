"""This machine as the local backend sees it: the chosen GPUs (or the CPU), its slots, the
environment a worker gets, and whether a job could ever fit.

Loaded by the run session for every `perl run` (so `--gpus`/`--cpu` are checked against this
machine whatever the backend, as before); used by the local backend to place and launch.
"""

from __future__ import annotations

import os

from perl_cli.scheduler import gpus as gpulib
from perl_cli.scheduler.jobs import Job, RunError, RunOptions
from perl_cli.scheduler.memory import CPU_MAX_PARAMS, too_big_for_cpu
from perl_cli.scheduler.slots import Placed, choose_slot


class Machine:
    def __init__(self, opts: RunOptions, environ: dict[str, str]) -> None:
        self.opts = opts
        self.environ = environ
        self.inventory: gpulib.Inventory | None = None
        self.gpus: dict[int, gpulib.GPU] = {}

    def load(self) -> None:
        """The GPU inventory and the chosen GPUs; RunError (exit 2) for --gpus/--cpu this machine cannot honour."""
        try:
            self.inventory = gpulib.load_inventory(self.environ)
        except gpulib.GPUInventoryError as exc:
            raise RunError(str(exc)) from None
        available = self.inventory.by_index()
        if self.opts.cpu:
            if self.opts.gpus is not None:
                raise RunError("--cpu and --gpus contradict each other: leave out one of them.")
            self.gpus = {}
            self.inventory.reason = "--cpu"
            return
        if self.opts.gpus is not None:
            if not available:
                raise RunError(
                    f"--gpus {','.join(map(str, self.opts.gpus))}: this machine has no GPU "
                    f"({self.inventory.reason}). Leave out --gpus to run on the CPU."
                )
            unknown = [i for i in self.opts.gpus if i not in available]
            if unknown:
                raise RunError(
                    f"--gpus: no GPU with index {', '.join(map(str, unknown))}. "
                    f"This machine has: {', '.join(map(str, sorted(available)))}."
                )
            self.gpus = {i: available[i] for i in self.opts.gpus}
        else:
            self.gpus = available

    def close(self) -> None:
        if self.inventory is not None:
            self.inventory.close()

    @property
    def cpu_mode(self) -> bool:
        return not self.gpus

    @property
    def fake(self) -> bool:
        return bool(self.inventory and self.inventory.fake)

    def capacity(self) -> int:
        if self.cpu_mode:
            return max(1, self.opts.jobs or 1)
        slots = len(self.gpus) * self.opts.jobs_per_gpu
        return min(slots, self.opts.jobs) if self.opts.jobs else slots

    def threads_per_job(self) -> str:
        return str(max(1, (os.cpu_count() or 1) // self.capacity()))

    def env_overrides(self, gpu: int | None) -> dict[str, str]:
        env = {
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "CUDA_VISIBLE_DEVICES": "" if gpu is None else str(gpu),
            "PERL_GPU": "cpu" if gpu is None else str(gpu),
        }
        env["OMP_NUM_THREADS"] = self.environ.get("OMP_NUM_THREADS") or self.threads_per_job()
        return env

    def choose(self, job: Job, running: list[Job], now_mono: float) -> tuple[bool, int | None]:
        """(placed, gpu index or None for CPU): slots.choose_slot over the current inventory."""
        assert self.inventory is not None or self.cpu_mode
        return choose_slot(
            job.estimate_mb, {i: g.memory_free_mb for i, g in self.gpus.items()},
            [Placed(j.gpu, j.estimate_mb, j.started_mono) for j in running],
            capacity=self.capacity(), jobs_per_gpu=self.opts.jobs_per_gpu, now=now_mono,
            settle_s=self.opts.settle_seconds, reserve_always=self.fake,
        )

    def refuse_unfit(self, jobs: list[Job]) -> None:
        """Refuse up front a job that no chosen GPU could ever hold, or a large model on a CPU unasked."""
        if self.cpu_mode:
            big = too_big_for_cpu([j.exp for j in jobs if j.action != "adopt"])
            if big and not self.opts.cpu:
                raise RunError(
                    f"no GPU ({self.inventory.reason if self.inventory else 'none found'}), and {len(big)} experiment(s) "
                    f"use a model of more than {CPU_MAX_PARAMS / 1e9:g}B parameters, far too slow to train on a CPU: "
                    f"{', '.join(big[:5])}{' ...' if len(big) > 5 else ''}. Run on a GPU machine (or with "
                    "--backend slurm), try the `demo` suite, or pass --cpu to run them on the CPU anyway."
                )
            return
        assert self.inventory is not None
        inventory = self.inventory

        def capacity(g: gpulib.GPU) -> int:  # inline fake GPUs never free their "used" memory
            return g.memory_free_mb if inventory.static else g.memory_total_mb

        best = max(capacity(g) for g in self.gpus.values())
        too_big = [j for j in jobs if j.action != "adopt" and j.estimate_mb > best]
        if too_big:
            listed = ", ".join(f"{j.name} ({j.estimate_mb:,} MB)" for j in too_big)
            raise RunError(
                f"{len(too_big)} experiment(s) can never fit on the chosen GPUs (largest: {best:,} MB): {listed}. "
                "Lower the memory need (e.g. --set training.per_device_train_batch_size=N, or "
                "training.gradient_checkpointing=true), choose bigger GPUs with --gpus, or, if the estimate "
                "is wrong, set resources.memory_mb for the suite (see perl_cli/scheduler/memory.py)."
            )
