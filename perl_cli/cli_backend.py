"""Where a suite's jobs run: the command-line options `perl run` and `perl eval` share.

Both commands take the same `--backend` and Slurm options (defined once here, as the
`Annotated` types their signatures use) and check them the same way (`check`): an unknown
backend, or a Slurm option without `--backend slurm`, is an exit-2 error naming the options
given, before any configuration is read. The values are then merged with experiments.toml's
`[slurm]` tables by `scheduler.slurm_options` (slurm.options_from), which checks them further.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from perl_cli.config import ConfigError

PANEL = "Slurm"

BackendOpt = Annotated[str, typer.Option("--backend", help="Where to run: local (this machine) or slurm (one Slurm array task per experiment).")]
PartitionOpt = Annotated[str | None, typer.Option("--partition", help="Slurm: the partition (default: the cluster's default).", rich_help_panel=PANEL, show_default=False)]
AccountOpt = Annotated[str | None, typer.Option("--account", help="Slurm: the account to charge.", rich_help_panel=PANEL, show_default=False)]
TimeOpt = Annotated[str | None, typer.Option("--time", help="Slurm: time limit per task, e.g. 4:00:00 (default: the partition's). Tasks that hit it are requeued and resume where they stopped, up to --retries times (perl eval: the suite's run table, else 1).", rich_help_panel=PANEL, show_default=False)]
GpusPerJobOpt = Annotated[int | None, typer.Option("--gpus-per-job", help="Slurm: GPUs per task, as GRES gpu:N (default 1; 0 = CPU only).", rich_help_panel=PANEL, show_default=False)]
CpusPerJobOpt = Annotated[int | None, typer.Option("--cpus-per-job", help="Slurm: CPUs per task.", rich_help_panel=PANEL, show_default=False)]
MemOpt = Annotated[str | None, typer.Option("--mem", help="Slurm: memory per task, e.g. 64G.", rich_help_panel=PANEL, show_default=False)]
ArrayParallelismOpt = Annotated[int | None, typer.Option("--array-parallelism", help="Slurm: at most this many tasks of the array at once.", rich_help_panel=PANEL, show_default=False)]
SlurmArgOpt = Annotated[list[str] | None, typer.Option("--slurm-arg", help="Slurm: another sbatch option as KEY=VALUE, e.g. qos=high. Repeatable.", rich_help_panel=PANEL, show_default=False)]
WaitOpt = Annotated[bool, typer.Option("--wait", help="Slurm: stay and show progress until every task has ended (default: submit and return).", rich_help_panel=PANEL)]

# The Slurm options' flags, by the keyword `check` takes (and slurm.options_from reads).
FLAGS = {"partition": "--partition", "account": "--account", "time": "--time", "gpus_per_job": "--gpus-per-job",
         "cpus_per_job": "--cpus-per-job", "mem": "--mem", "array_parallelism": "--array-parallelism",
         "slurm_args": "--slurm-arg", "wait": "--wait"}


def check(backend: str, **slurm: Any) -> dict[str, Any] | None:
    """The Slurm options given (`FLAGS`' keywords), for scheduler.slurm_options; None for the local backend.

    ConfigError (exit 2) for an unknown backend, or Slurm options without --backend slurm.
    """
    from perl_cli.scheduler import BACKENDS

    unknown = set(slurm) - set(FLAGS)
    if unknown:
        raise TypeError(f"not a Slurm option: {', '.join(sorted(unknown))}")
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend}: unknown backend. Use one of: {', '.join(BACKENDS)}.")
    values = {key: slurm.get(key) for key in FLAGS}
    values["wait"] = values["wait"] or None  # a flag: False is "not given"
    if backend == "local":
        given = [FLAGS[key] for key, value in values.items() if value]
        if given:
            raise ConfigError(f"{', '.join(given)}: Slurm options need --backend slurm.")
        return None
    return values
