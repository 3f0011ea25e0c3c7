"""What kind of work a scheduler job is: training an experiment, or evaluating it.

The backends launch, watch, record and resume every job the same way; a job's kind
decides only its worker (`worker`/`command`: the local backend's process, the Slurm
backend's array task), the files it is given before launch (session.RunSession.prepare_dir,
for both backends), and how PeRL names it to the user (`activity`, `done_word`, and
`perl_words`: the `perl` command that runs it again, e.g. in `perl cancel`'s resume hint):

* ``train`` — `python -m perl_cli.train DIR`, given config.json (what `perl run` does);
* ``eval`` — `python -m perl_cli.train.eval_worker DIR`, given eval_request.json (the
  benchmark specs asked for); what `perl eval` does to completed experiments.

`plan_eval` decides, from the files alone, which experiments an evaluation job is for.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perl_cli import benchmarks, outcomes, state
from perl_cli.config import Experiment
from perl_cli.experiments_view import read_records

TRAIN, EVAL = "train", "eval"
EVAL_REQUEST_FILE = "eval_request.json"  # perl_cli/train/eval_worker.REQUEST_FILE
DEFAULT_EVAL_WORKER_CMD: tuple[str, ...] = (sys.executable, "-m", "perl_cli.train.eval_worker")


def worker(kind: str, train_cmd: Sequence[str], eval_cmd: Sequence[str]) -> list[str]:
    """The worker program of a job of this kind; its one argument is the experiment directory."""
    return list(eval_cmd if kind == EVAL else train_cmd)


def command(kind: str, exp_dir: Path, train_cmd: Sequence[str], eval_cmd: Sequence[str]) -> list[str]:
    return [*worker(kind, train_cmd, eval_cmd), str(exp_dir)]


def activity(kind: str, benchmarks: dict[str, Any] | None) -> str | None:
    """What an attempt does, for train.log's launch line; None for training (the backend says start or resume)."""
    return f"evaluating {', '.join(benchmarks or {})}" if kind == EVAL else None


def done_word(kind: str) -> str:
    """How the run names what it skips: experiments already completed, or already evaluated."""
    return "evaluated" if kind == EVAL else "completed"


def perl_words(kind: str, asked: dict[str, Any] | None = None) -> list[str]:
    """The `perl` subcommand that runs (and resumes) jobs of this kind, and its own options, without the
    suite and the backend's options: ["run"], or ["eval"] (+ --benchmarks when they were asked for)."""
    if kind != EVAL:
        return ["run"]
    return ["eval", *(["--benchmarks", ",".join(asked)] if asked else [])]


def prepare_eval(exp_dir: Path, specs: dict[str, dict[str, Any]]) -> None:
    """The evaluation job's input: which benchmarks, with which settings."""
    state.atomic_write_json(exp_dir / EVAL_REQUEST_FILE, {"benchmarks": specs})


def stopped_evaluation(current: str, status: dict[str, Any]) -> bool:
    """Whether a state that is not `completed` may be an evaluation stopped midway (which continues).

    `interrupted`: Ctrl+C or `perl cancel` stopped it. `failed` when the evaluation failed
    (status.json's `job`, written by the eval worker): training is complete and its adapter kept,
    so `perl eval` tries again (as `perl run` retries a failed training), continuing after the
    batches it saved. A Slurm evaluation task (status.json's `slurm.kind`) also leaves `queued`
    when Slurm let it go before it ran (the planner has taken out the tasks Slurm still has), and
    `failed` with cause time_limit or preempted when it was stopped with no requeue left (the
    task, not the worker, recorded that).
    """
    if current == state.INTERRUPTED or (current == state.FAILED and status.get("job") == EVAL):
        return True
    if (status.get("slurm") or {}).get("kind") != EVAL:
        return False
    return current == state.QUEUED or (current == state.FAILED and status.get("cause") in (
        outcomes.CAUSE_TIME_LIMIT, outcomes.CAUSE_PREEMPTED))


@dataclass
class EvalPlan:
    exp: Experiment
    specs: dict[str, dict[str, Any]]  # the benchmarks still to do (a stopped one continues)


def plan_eval(
    experiments: Sequence[Experiment], suite_dir: Path, asked: dict[str, dict[str, Any]] | None,
    live: dict[Path, Any],
) -> tuple[list[EvalPlan], list[tuple[str, str]], list[str]]:
    """(evaluations to run, (name, reason) not evaluated, names already evaluated).

    An experiment is evaluated when its training is complete with the fingerprint the
    config gives now (an evaluation stopped midway counts too: `stopped_evaluation`), and
    some asked benchmark has no result for it yet.
    `asked` (--benchmarks) replaces each experiment's own task.benchmarks.
    """
    plans: list[EvalPlan] = []
    skipped: list[tuple[str, str]] = []
    done: list[str] = []
    for exp in experiments:
        exp_dir = suite_dir / exp.name
        records = read_records(exp_dir)
        if records.problem:
            skipped.append((exp.name, f"unreadable ({records.problem})"))
            continue
        status = records.status or {}
        if exp_dir in live or (status.get("host") in (None, state.hostname())
                               and state.process_alive(status.get("pid"), status.get("pid_start_time"))):
            skipped.append((exp.name, "has a live worker (training or evaluating)"))
            continue
        current = state.effective_state(status, exp.fingerprint)
        stopped_eval = stopped_evaluation(current, status) and (exp_dir / EVAL_REQUEST_FILE).exists() \
            and (exp_dir / state.EVAL_FILE).exists() and records.fingerprint == exp.fingerprint
        if current != state.COMPLETED and not stopped_eval:
            skipped.append((exp.name, f"not completed ({current}): `perl run` it first"))
            continue
        specs = asked if asked is not None else (exp.config.get("benchmark_specs") or {})
        if not specs:
            skipped.append((exp.name, "no benchmarks (set task.benchmarks or pass --benchmarks)"))
            continue
        todo = {n: s for n, s in specs.items() if not benchmarks.is_done(exp_dir, n, s, exp.fingerprint)}
        if todo:
            plans.append(EvalPlan(exp, todo))
        else:
            done.append(exp.name)
    return plans, skipped, done
