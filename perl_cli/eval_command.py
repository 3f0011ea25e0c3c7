"""`perl eval SUITE`: benchmark evaluation of completed experiments, through the scheduler.

The same run session as `perl run` (the suite lock, Ctrl+C, status.json, `perl status`)
on either backend: worker processes here (slots, as `perl run`), or with `--backend slurm`
one Slurm array task per evaluation (requeued on a time limit, continuing where it stopped);
the jobs are of kind `eval` (scheduler/jobkinds.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perl_cli import benchmarks as benchlib
from perl_cli import config as configlib


def run(suite: str, *, benchmarks: str | None, only: str | None, exclude: str | None, gpus: str | None,
        jobs: int | None, cpu: bool, config: Path | None, output: Path, slurm: dict[str, Any] | None = None) -> int:
    """`slurm`: the Slurm options given (cli_backend.check), None for the local backend."""
    from perl_cli import scheduler
    from perl_cli.scheduler import jobkinds

    cfg = configlib.load(config)
    chosen = configlib.expand(cfg, suite, only=configlib.split_names(only),
                              exclude=configlib.split_names(exclude, "--exclude"))
    asked = None
    if benchmarks is not None:
        names = configlib.split_names(benchmarks, "--benchmarks")
        try:
            asked = benchlib.resolve(names, benchlib.definitions(cfg.data.get("benchmarks")))
        except benchlib.BenchmarkError as exc:
            raise configlib.ConfigError(f"--benchmarks: {exc}") from None
    try:
        gpu_list = [int(g) for g in configlib.split_names(gpus, "--gpus")] if gpus is not None else None
    except ValueError:
        raise configlib.ConfigError(f"--gpus {gpus}: expected comma-separated GPU indices, e.g. --gpus 0,1.") from None
    defaults = cfg.run_defaults(suite)
    options = scheduler.RunOptions(
        suite=suite, experiments=chosen, suite_experiments=configlib.expand(cfg, suite), output=output, gpus=gpu_list,
        jobs=jobs or defaults.get("jobs"), config_file=cfg, cpu=cpu, kind=jobkinds.EVAL, eval_benchmarks=asked,
        # Slurm: how often a task is requeued after a time limit or preemption (it continues where it
        # stopped); the local backend does not retry an evaluation (planner.classify_eval).
        retries=defaults.get("retries", 1),
        slurm=scheduler.slurm_options(slurm, cfg.slurm_defaults(suite)) if slurm is not None else None,
    )
    return scheduler.run_suite(options)
