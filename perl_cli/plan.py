"""`perl plan`: show what a suite expands to, as a Rich table or JSON."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from perl_cli import config as configlib
from perl_cli import schema
from perl_cli.config import ConfigFile, Experiment
from perl_cli.ui import console as make_console
from perl_cli.ui import fit_columns

PLAN_COLUMNS = ("name", "method", "rank", "alpha", "seed", "data size", "lr", "steps", "model")
# Dropped in this order when the terminal is too narrow; the name is never cut.
PLAN_OPTIONAL_COLUMNS = ["model", "alpha", "data size", "lr", "method", "steps", "rank", "seed"]


def print_plan(suite: str, experiments: list[Experiment], suite_dir: Path, *, json_out: bool) -> None:
    if json_out:
        print(json.dumps([{**e.summary(), **memory_summary(e)} for e in experiments], indent=2))
        return
    # Names, paths, models and descriptions are user text: escaped, so "[core]" is shown, not parsed.
    def build(dropped: set[str]) -> Table:
        table = Table(title=escape(f"suite {suite}: {len(experiments)} experiments → {suite_dir}/"), title_justify="left")
        shown = [c for c in PLAN_COLUMNS if c not in dropped]
        for column in shown:
            table.add_column(column, justify="left" if column in ("name", "method", "model") else "right",
                             no_wrap=column == "name", overflow="fold")
        for e in experiments:
            cells = {
                "name": escape(e.name), "method": e.method, "rank": str(e.rank), "alpha": f"{e.alpha:g}",
                "seed": str(e.seed), "data size": "all" if e.data_size is None else str(e.data_size),
                "lr": f"{e.learning_rate:g}", "steps": str(e.max_steps), "model": escape(e.model),
            }
            table.add_row(*(cells[c] for c in shown))
        return table

    console = make_console()
    table, dropped = fit_columns(console, build, PLAN_OPTIONAL_COLUMNS)
    console.print(table)
    methods = Counter(e.method for e in experiments)
    steps = sum(e.max_steps for e in experiments)
    console.print(
        f"[bold]{len(experiments)}[/] experiments, {len(methods)} methods "
        f"({', '.join(f'{m} {n}' for m, n in methods.items())}), {steps:,} optimizer steps in all."
    )
    if dropped:
        left_out = ", ".join(c for c in PLAN_COLUMNS if c in dropped)
        console.print(f"[dim]Left out to fit {console.width} columns: {left_out} (a wider terminal or --json shows them).[/]")


def memory_summary(e: Experiment) -> dict[str, object]:
    """The experiment's GPU memory estimate and where the model's shape came from (scheduler/memory.py)."""
    from perl_cli.scheduler import memory

    est = memory.estimate(e.config)
    override = e.config.get("resources", {}).get("memory_mb")
    return {
        "memory_mb": memory.estimate_mb(e.config),
        "memory_estimate": {
            "overridden": bool(override),
            "shape_from": est.source,
            "parameters": est.parameters,
            "trainable_parameters": est.trainable,
            **{k: round(v) for k, v in est.as_dict().items() if isinstance(v, float)},
            "estimated_mb": est.total_mb,
        },
    }


def print_suites(cfg: ConfigFile, *, json_out: bool) -> None:
    rows = []
    for name in cfg.suite_names():
        experiments = configlib.expand(cfg, name)
        rows.append({
            "suite": name,
            "experiments": len(experiments),
            "description": cfg.suites[name].get("description", ""),
        })
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=escape(f"suites in {cfg.path}"), title_justify="left")
    table.add_column("suite")
    table.add_column("experiments", justify="right")
    table.add_column("description")
    for row in rows:
        table.add_row(escape(row["suite"]), str(row["experiments"]), escape(row["description"]))
    console = make_console()
    console.print(table)
    console.print(f"[bold]{sum(r['experiments'] for r in rows)}[/] experiments in {len(rows)} suites. Show one with `perl plan SUITE`.")


def print_keys(*, json_out: bool) -> None:
    if json_out:
        print(json.dumps({
            f"{section}.{key}": {"default": f.default, "help": f.help, "choices": f.choices}
            for section, fields in schema.SCHEMA.items()
            for key, f in fields.items()
        }, indent=2))
        return
    table = Table(title="settings accepted in experiments.toml (and by --set)", title_justify="left")
    table.add_column("key")
    table.add_column("default")
    table.add_column("meaning")
    for section, fields in schema.SCHEMA.items():
        for key, f in fields.items():
            meaning = f.help + (f" ({', '.join(f.choices)})" if f.choices else "")
            table.add_row(f"{section}.{key}", repr(f.default) if f.default is not None else "unset", meaning)
    make_console().print(table)
    aliases = ", ".join(f"{a} = {p}" for a, p in schema.ALIASES.items())
    make_console().print(f"Short names for matrix axes, `when` conditions and name templates: {aliases}.")
