"""The `perl` command: one thin function per subcommand; the work lives in the library.

Nothing here imports torch, transformers, trl, peft or textual at module level, so
`perl --help`, `plan`, `status`, `diagnose` and `report` answer in a fraction of a second.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from perl_cli import config as configlib
from perl_cli.cli_backend import (
    AccountOpt,
    ArrayParallelismOpt,
    BackendOpt,
    CpusPerJobOpt,
    GpusPerJobOpt,
    MemOpt,
    PartitionOpt,
    SlurmArgOpt,
    TimeOpt,
    WaitOpt,
)
from perl_cli.cli_backend import check as check_backend
from perl_cli.config import ConfigError
from perl_cli.names import RULE, name_problem

app = typer.Typer(
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["--help"]},
)

EXIT_USAGE = 2
SETTLE_DEFAULT_S = 60.0
GRACE_DEFAULT_S = 30.0

def _suite_name(value: str | None) -> str | None:
    """A suite name becomes <output>/<suite>/: the same rule as in experiments.toml."""
    problem = None if value is None else name_problem(value)
    if problem:
        raise typer.BadParameter(f"{value!r} cannot be a suite name ({problem}); {RULE}.")
    return value


def _output_dir(value: Path) -> Path:
    if value.exists() and not value.is_dir():
        raise typer.BadParameter(f"{value} is a file, not a directory. Pass a directory (it is created if missing).")
    return value


SuiteArg = Annotated[str | None, typer.Argument(help="Suite name from experiments.toml, e.g. core-1.5b.", show_default=False, callback=_suite_name)]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Experiments file (default: ./experiments.toml, else the built-in one).", show_default=False)]
OutputOpt = Annotated[Path, typer.Option("--output", help="Output directory; each suite writes into <output>/<suite>/.", callback=_output_dir)]
OnlyOpt = Annotated[str | None, typer.Option("--only", help="Comma-separated experiment names to include.", show_default=False)]
ExcludeOpt = Annotated[str | None, typer.Option("--exclude", help="Comma-separated experiment names to leave out.", show_default=False)]
StateOpt = Annotated[str | None, typer.Option("--state", help="Only experiments in these states, comma-separated: pending, running, completed, failed, interrupted, stale, unreadable, stalled.", show_default=False)]
ReadOnlyOpt = Annotated[str | None, typer.Option("--only", help="Comma-separated experiment names or globs ('lora_*') to show.", show_default=False)]
ReadExcludeOpt = Annotated[str | None, typer.Option("--exclude", help="Comma-separated experiment names or globs to leave out.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


def _version_text(verbose: bool = False) -> str:
    """PeRL's version, and with verbose the training stack's, read from package metadata (no imports)."""
    from importlib import metadata

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    text = f"PeRL {version('perl-cli')}"
    if verbose:
        stack = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "typer", "rich", "textual", "wandb", "nvidia-ml-py")
        text += "\n" + "\n".join(f"  {dist} {version(dist)}" for dist in stack)
    return text


def _perl_version(value: bool) -> None:
    if value:
        typer.echo(_version_text())
        raise typer.Exit()


@app.callback()
def _main(
    perl_version: Annotated[bool, typer.Option("--perl-version", callback=_perl_version, is_eager=True, help="Print PeRL's version and exit (`perl --version` stays the Perl interpreter's).")] = False,
) -> None:
    """PeRL runs matrices of parameter-efficient RL experiments (PEFT method x seed x rank x data size) on the GPUs of one machine, and tells you where they stand, why they failed, and how the methods compare."""


def fail(message: str, code: int = EXIT_USAGE) -> None:
    typer.echo(f"perl: error: {message}", err=True)
    raise typer.Exit(code)


def user_errors(func: Callable) -> Callable:
    """Turn ConfigError into the one-paragraph message and exit code 2 (never a traceback)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            fail(str(exc))
        except BrokenPipeError:
            raise
        except OSError as exc:  # a read-only or full output, a directory where a file belongs: say which
            fail(os_error_message(exc))

    return wrapper


def os_error_message(exc: OSError) -> str:
    """One line naming the path and the problem, and what to do about it."""
    import errno

    where = exc.filename or ""
    what = exc.strerror or str(exc)
    hint = {
        errno.EROFS: "choose a writable --output",
        errno.EACCES: "choose another --output or fix its permissions",
        errno.EPERM: "choose another --output or fix its permissions",
        errno.EISDIR: "a directory is where perl writes a file: move it away",
        errno.ENOTDIR: "a file is where perl needs a directory: move it away",
        errno.ENOSPC: "free some space (`perl diagnose` says how much is needed)",
    }.get(exc.errno, "check the path and its permissions")
    return f"{where + ': ' if where else ''}{what}; {hint}."


@app.command(rich_help_panel="Set up")
@user_errors
def plan(
    suite: SuiteArg = None,
    only: OnlyOpt = None,
    exclude: ExcludeOpt = None,
    json_out: JsonOpt = False,
    keys: Annotated[bool, typer.Option("--keys", help="List every setting experiments.toml accepts.")] = False,
    config: ConfigOpt = None,
    output: OutputOpt = Path("output"),
) -> None:
    """Expand and validate a suite and show its experiments; nothing is run."""
    from perl_cli import plan as planlib

    if keys:
        planlib.print_keys(json_out=json_out)
        return
    cfg = configlib.load(config)
    if suite is None:
        planlib.print_suites(cfg, json_out=json_out)
        return
    experiments = configlib.expand(
        cfg, suite, only=configlib.split_names(only), exclude=configlib.split_names(exclude, "--exclude")
    )
    planlib.print_plan(suite, experiments, output / suite, json_out=json_out)
    _warn_coverage(experiments)


def _warn_coverage(experiments: list[configlib.Experiment]) -> None:
    for line in configlib.coverage_warnings(experiments):
        typer.echo(f"perl: warning: {line}", err=True)


def _not_built(command: str) -> None:
    fail(f"`perl {command}` is not built yet in this version of PeRL.")


@app.command(rich_help_panel="Run")
@user_errors
def run(
    suite: SuiteArg = None,
    only: OnlyOpt = None,
    exclude: ExcludeOpt = None,
    gpus: Annotated[str | None, typer.Option("--gpus", help="Comma-separated GPU indices to use (default: all).", show_default=False)] = None,
    jobs_per_gpu: Annotated[int | None, typer.Option("--jobs-per-gpu", min=1, help="Experiments at a time on each GPU, memory permitting (default: the suite's run table, else 1).", show_default=False)] = None,
    jobs: Annotated[int | None, typer.Option("--jobs", min=1, help="Without a GPU: experiments at a time on the CPU (default: the suite's run table, else 1). With GPUs: a cap on the total.", show_default=False)] = None,
    retries: Annotated[int | None, typer.Option("--retries", min=0, help="Retries for failures a retry can fix, e.g. CUDA out of memory with half the batch (default: the suite's run table, else 1).", show_default=False)] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start the chosen experiments from scratch; old directories are kept as <name>.old-<timestamp>.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print each experiment's exact command, environment, GPU and directory; run nothing.")] = False,
    sets: Annotated[list[str] | None, typer.Option("--set", help="Override a setting for this run, e.g. --set training.max_steps=50 (changes the fingerprint). Repeatable.", show_default=False)] = None,
    settle_seconds: Annotated[float, typer.Option("--settle-seconds", min=0, help="A new job's memory counts as reserved on its GPU for this long (until NVML shows it).")] = SETTLE_DEFAULT_S,
    grace_seconds: Annotated[float, typer.Option("--grace-seconds", min=0, help="On Ctrl+C, how long workers get to save a checkpoint before they are killed.")] = GRACE_DEFAULT_S,
    stall_timeout: Annotated[float | None, typer.Option("--stall-timeout", min=15, help="Kill and retry a worker with no heartbeat for this many seconds (it beats every 5 s; default: the suite's run table, else 600).", show_default=False)] = None,
    notify_cmd: Annotated[str | None, typer.Option("--notify", help="Run this shell command when the run ends: the summary on stdin, PERL_EXIT_CODE, PERL_SUITE and PERL_OUTPUT_DIR in its environment (e.g. --notify 'mail -s done me@lab').", show_default=False)] = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="Run on the CPU, ignoring GPUs; needed without a GPU for models over 0.2B parameters.")] = False,
    backend: BackendOpt = "local",
    partition: PartitionOpt = None,
    account: AccountOpt = None,
    time_limit: TimeOpt = None,
    gpus_per_job: GpusPerJobOpt = None,
    cpus_per_job: CpusPerJobOpt = None,
    mem: MemOpt = None,
    array_parallelism: ArrayParallelismOpt = None,
    slurm_args: SlurmArgOpt = None,
    wait: WaitOpt = False,
    config: ConfigOpt = None,
    output: OutputOpt = Path("output"),
) -> None:
    """Run what is not yet done in a suite, resuming the interrupted."""
    from perl_cli import scheduler

    if suite is None:
        fail("which suite? Give its name, e.g. `perl run demo`; list them with `perl plan`.")
    slurm_cli = check_backend(backend, partition=partition, account=account, time=time_limit, gpus_per_job=gpus_per_job,
                              cpus_per_job=cpus_per_job, mem=mem, array_parallelism=array_parallelism,
                              slurm_args=slurm_args, wait=wait)
    try:
        gpu_list = [int(g) for g in configlib.split_names(gpus, "--gpus")] if gpus is not None else None
    except ValueError:
        fail(f"--gpus {gpus}: expected comma-separated GPU indices, e.g. --gpus 0,1,3.")
    cfg = configlib.load(config)
    chosen = configlib.expand(
        cfg, suite, only=configlib.split_names(only), exclude=configlib.split_names(exclude, "--exclude"), sets=sets or ()
    )
    whole = configlib.expand(cfg, suite, sets=sets or ())
    defaults = cfg.run_defaults(suite)
    _warn_coverage(chosen)
    options = scheduler.RunOptions(
        suite=suite, experiments=chosen, suite_experiments=whole, output=output, gpus=gpu_list,
        jobs_per_gpu=jobs_per_gpu or defaults.get("jobs_per_gpu", 1), jobs=jobs or defaults.get("jobs"),
        retries=retries if retries is not None else defaults.get("retries", 1), fresh=fresh, dry_run=dry_run,
        settle_seconds=settle_seconds, grace_seconds=grace_seconds, overrides=tuple(sets or ()), config_file=cfg,
        stall_timeout=stall_timeout or defaults.get("stall_timeout", scheduler.DEFAULT_STALL_TIMEOUT_S), cpu=cpu,
        slurm=scheduler.slurm_options(slurm_cli, cfg.slurm_defaults(suite)) if slurm_cli is not None else None,
        notify=notify_cmd, explicit=frozenset(flag for flag, given in (
            ("--gpus", gpus is not None), ("--jobs", jobs is not None), ("--jobs-per-gpu", jobs_per_gpu is not None),
            ("--retries", retries is not None), ("--cpu", cpu), ("--stall-timeout", stall_timeout is not None),
            ("--settle-seconds", settle_seconds != SETTLE_DEFAULT_S), ("--grace-seconds", grace_seconds != GRACE_DEFAULT_S),
        ) if given),
    )
    raise typer.Exit(scheduler.run_suite(options))


@app.command(name="eval", rich_help_panel="Run")
@user_errors
def eval_(
    suite: SuiteArg = None,
    benchmarks: Annotated[str | None, typer.Option("--benchmarks", help="Comma-separated benchmarks to evaluate (default: each experiment's task.benchmarks), e.g. aime24,math500.", show_default=False)] = None,
    only: OnlyOpt = None,
    exclude: ExcludeOpt = None,
    gpus: Annotated[str | None, typer.Option("--gpus", help="Comma-separated GPU indices to use (default: all).", show_default=False)] = None,
    jobs: Annotated[int | None, typer.Option("--jobs", min=1, help="Evaluations at a time (CPU; with GPUs a cap on the total).", show_default=False)] = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="Run on the CPU, ignoring GPUs.")] = False,
    backend: BackendOpt = "local",
    partition: PartitionOpt = None,
    account: AccountOpt = None,
    time_limit: TimeOpt = None,
    gpus_per_job: GpusPerJobOpt = None,
    cpus_per_job: CpusPerJobOpt = None,
    mem: MemOpt = None,
    array_parallelism: ArrayParallelismOpt = None,
    slurm_args: SlurmArgOpt = None,
    wait: WaitOpt = False,
    config: ConfigOpt = None,
    output: OutputOpt = Path("output"),
) -> None:
    """Evaluate a suite's completed experiments on benchmarks (resumes a stopped evaluation); here, or as Slurm array tasks."""
    from perl_cli import eval_command

    if suite is None:
        fail("which suite? Give its name, e.g. `perl eval math-demo`.")
    slurm_cli = check_backend(backend, partition=partition, account=account, time=time_limit, gpus_per_job=gpus_per_job,
                              cpus_per_job=cpus_per_job, mem=mem, array_parallelism=array_parallelism,
                              slurm_args=slurm_args, wait=wait)
    raise typer.Exit(eval_command.run(suite, benchmarks=benchmarks, only=only, exclude=exclude, gpus=gpus, jobs=jobs,
                                      cpu=cpu, slurm=slurm_cli, config=config, output=output))


@app.command(rich_help_panel="Run")
@user_errors
def cancel(
    suite: SuiteArg = None,
    only: OnlyOpt = None,
    wait_seconds: Annotated[float, typer.Option("--wait-seconds", min=0, help="How long to wait for running experiments to save a checkpoint and record `interrupted`.")] = 60.0,
    config: ConfigOpt = None,
    output: OutputOpt = Path("output"),
) -> None:
    """Stop a suite's queued and running experiments (Slurm tasks and a local perl run); they resume on the next run."""
    from perl_cli import scheduler

    if suite is None:
        fail("which suite? Give its name, e.g. `perl cancel demo`.")
    names = configlib.split_names(only) if only is not None else None
    raise typer.Exit(scheduler.cancel_suite(suite, output=output, names=names, wait_s=wait_seconds))


StallOpt = Annotated[float, typer.Option("--stall-after", help="Seconds without a worker heartbeat before a running experiment is flagged stalled.")]


@app.command(rich_help_panel="Watch and analyse")
@user_errors
def status(
    suite: SuiteArg = None,
    json_out: JsonOpt = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh in place until Ctrl+C.")] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between refreshes with --watch.")] = 5.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List every experiment, with W&B links.")] = False,
    state: StateOpt = None,
    only: ReadOnlyOpt = None,
    exclude: ReadExcludeOpt = None,
    stall_after: StallOpt = 600.0,
    config: ConfigOpt = None,
    output: OutputOpt = Path("output"),
) -> None:
    """Counts, progress and per-experiment state, step, reward, ETA and size."""
    from perl_cli import status as statuslib
    from perl_cli.experiments_view import Selection

    raise typer.Exit(statuslib.command(
        suite, config_path=config, output=output, json_out=json_out, watch=watch,
        interval=interval, verbose=verbose, stall_after_s=stall_after,
        selection=Selection.parse(state, only, exclude),
    ))


@app.command(rich_help_panel="Watch and analyse")
@user_errors
def watch(
    suite: SuiteArg = None,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between refreshes.")] = 2.0,
    state: StateOpt = None,
    only: ReadOnlyOpt = None,
    exclude: ReadExcludeOpt = None,
    stall_after: StallOpt = 600.0,
    config: ConfigOpt = None,
    output: OutputOpt = Path("output"),
) -> None:
    """Live monitor (Textual): progress bars, GPU memory, log tails."""
    from perl_cli import status as statuslib
    from perl_cli.experiments_view import Selection
    from perl_cli.tui.app import WatchApp, pick_suite

    if interval <= 0:
        fail(f"--interval {interval}: must be a positive number of seconds.")
    selection = Selection.parse(state, only, exclude)
    cfg = statuslib.load_config(config)
    name = pick_suite(output, suite, cfg)
    selection.apply(statuslib.load_suite(output, name, cfg, with_size=False))  # a pattern that names nothing: exit 2 now
    WatchApp(output, name, cfg, interval=interval, stall_after_s=stall_after, selection=selection, config_path=config).run()


@app.command(rich_help_panel="Watch and analyse")
@user_errors
def logs(
    suite: Annotated[str, typer.Argument(help="Suite name, e.g. core-1.5b.", show_default=False, callback=_suite_name)],
    experiment: Annotated[str, typer.Argument(help="Experiment name, e.g. lora_r16_s42.", show_default=False)],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing what is appended until the experiment ends (Ctrl+C stops).")] = False,
    lines: Annotated[int | None, typer.Option("--lines", "-n", help="Only the last N lines (default: the whole log).", show_default=False)] = None,
    stall_after: StallOpt = 600.0,
    config: ConfigOpt = None,
    output: OutputOpt = Path("output"),
) -> None:
    """Print one experiment's train.log, or follow it while it runs."""
    from perl_cli import logs as logslib

    raise typer.Exit(logslib.command(
        suite, experiment, config_path=config, output=output, follow=follow, lines=lines, stall_after_s=stall_after,
    ))


@app.command(rich_help_panel="Watch and analyse")
@user_errors
def diagnose(
    suite: SuiteArg = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also show each failure's full Python traceback.")] = False,
    json_out: JsonOpt = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="Log lines shown per experiment.")] = 30,
    state: StateOpt = None,
    only: ReadOnlyOpt = None,
    exclude: ReadExcludeOpt = None,
    stall_after: StallOpt = 600.0,
    config: ConfigOpt = None,
    output: OutputOpt = Path("output"),
) -> None:
    """Classify failures and stalls, show the log lines that matter and a fix.

    Exit code 1 when a failed or stalled experiment is found, else 0.
    """
    from perl_cli import diagnose as diagnoselib
    from perl_cli.experiments_view import Selection

    raise typer.Exit(diagnoselib.command(
        suite, config_path=config, output=output, json_out=json_out, verbose=verbose,
        lines=lines, stall_after_s=stall_after, selection=Selection.parse(state, only, exclude),
    ))


@app.command(rich_help_panel="Watch and analyse")
@user_errors
def report(
    suite: SuiteArg = None,
    stdout: Annotated[bool, typer.Option("--stdout", help="Print SUMMARY.md instead of writing it (no plots).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report's numbers as JSON (results, pair comparisons, geometry); writes nothing.")] = False,
    state: StateOpt = None,
    only: ReadOnlyOpt = None,
    exclude: ReadExcludeOpt = None,
    stall_after: StallOpt = 600.0,
    config: ConfigOpt = None,
    output: OutputOpt = Path("output"),
) -> None:
    """Write SUMMARY.md and plots into the suite's output directory."""
    from perl_cli import report as reportlib
    from perl_cli.experiments_view import Selection

    raise typer.Exit(reportlib.command(
        suite, config_path=config, output=output, stdout=stdout, stall_after_s=stall_after,
        selection=Selection.parse(state, only, exclude), as_json=as_json,
    ))


@app.command(rich_help_panel="Set up")
def version(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also the versions of the training stack.")] = False,
) -> None:
    """PeRL's version (`perl --version` is the Perl interpreter's)."""
    typer.echo(_version_text(verbose))
