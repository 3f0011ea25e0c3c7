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
from perl_cli.config import ConfigError

app = typer.Typer(
    help=(
        "PeRL runs matrices of parameter-efficient RL experiments (PEFT method x seed x "
        "rank x data size) on the GPUs of one machine, and tells you where they stand, "
        "why they failed, and how the methods compare."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["--help"]},
)

EXIT_USAGE = 2

SuiteArg = Annotated[str | None, typer.Argument(help="Suite name from experiments.toml, e.g. core-1.5b.", show_default=False)]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Experiments file [default: ./experiments.toml, else the built-in one].", show_default=False)]
OutputOpt = Annotated[Path, typer.Option("--output", help="Output directory; each suite writes into <output>/<suite>/.")]
OnlyOpt = Annotated[str | None, typer.Option("--only", help="Comma-separated experiment names to include.", show_default=False)]
ExcludeOpt = Annotated[str | None, typer.Option("--exclude", help="Comma-separated experiment names to leave out.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


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

    return wrapper


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
        cfg, suite, only=configlib.split_names(only), exclude=configlib.split_names(exclude)
    )
    planlib.print_plan(suite, experiments, output / suite, json_out=json_out)


def _not_built(command: str) -> None:
    fail(f"`perl {command}` is not built yet in this version of PeRL.")


@app.command(rich_help_panel="Run")
@user_errors
def run(suite: SuiteArg = None, config: ConfigOpt = None, output: OutputOpt = Path("output")) -> None:
    """Run what is not yet done in a suite, resuming the interrupted."""
    _not_built("run")


@app.command(rich_help_panel="Watch and analyse")
@user_errors
def status(suite: SuiteArg = None, config: ConfigOpt = None, output: OutputOpt = Path("output")) -> None:
    """Counts, progress and per-experiment state, step, reward, ETA and size."""
    _not_built("status")


@app.command(rich_help_panel="Watch and analyse")
@user_errors
def watch(suite: SuiteArg = None, config: ConfigOpt = None, output: OutputOpt = Path("output")) -> None:
    """Live monitor (Textual): progress bars, GPU memory, log tails."""
    _not_built("watch")


@app.command(rich_help_panel="Watch and analyse")
@user_errors
def diagnose(suite: SuiteArg = None, config: ConfigOpt = None, output: OutputOpt = Path("output")) -> None:
    """Classify failures and stalls, show the log lines that matter and a fix."""
    _not_built("diagnose")


@app.command(rich_help_panel="Watch and analyse")
@user_errors
def report(suite: SuiteArg = None, config: ConfigOpt = None, output: OutputOpt = Path("output")) -> None:
    """Write SUMMARY.md and plots into the suite's output directory."""
    _not_built("report")
