"""The backend options `perl run` and `perl eval` share (perl_cli/cli_backend.py), and what a job's
kind decides for the Slurm backend (jobkinds: its worker, the `perl` command that resumes it).
No Slurm is needed: every check here happens before anything is asked of Slurm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer.main
from test_scheduler import SUITE, write_config
from typer.testing import CliRunner

from perl_cli import config as configlib
from perl_cli import state
from perl_cli.cli import app
from perl_cli.cli_backend import FLAGS
from perl_cli.scheduler import jobkinds, slurm
from perl_cli.scheduler.cancel import _resume_hint

runner = CliRunner()
GIVEN = {"--partition": ["gpu"], "--account": ["lab"], "--time": ["10"], "--gpus-per-job": ["2"],
         "--cpus-per-job": ["4"], "--mem": ["8G"], "--array-parallelism": ["2"], "--slurm-arg": ["qos=high"],
         "--wait": []}


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.mark.parametrize("command", ["run", "eval"])
@pytest.mark.parametrize("flag", sorted(GIVEN))
def test_a_slurm_option_without_the_slurm_backend_is_exit_2_in_both_commands(command: str, flag: str) -> None:
    result = invoke(command, SUITE, flag, *GIVEN[flag])
    assert result.exit_code == 2, result.output
    assert f"perl: error: {flag}: Slurm options need --backend slurm." in result.output
    local = invoke(command, SUITE, "--backend", "local", flag, *GIVEN[flag])
    assert local.exit_code == 2 and local.output == result.output


def test_perl_run_and_perl_eval_word_the_same_errors_the_same_way() -> None:
    args = ["--partition", "gpu", "--wait", "--slurm-arg", "qos=high"]
    run, ev = invoke("run", SUITE, *args), invoke("eval", SUITE, *args)
    assert run.exit_code == ev.exit_code == 2
    assert run.output == ev.output == "perl: error: --partition, --slurm-arg, --wait: Slurm options need --backend slurm.\n"
    run, ev = invoke("run", SUITE, "--backend", "pbs"), invoke("eval", SUITE, "--backend", "pbs")
    assert run.exit_code == ev.exit_code == 2
    assert run.output == ev.output == "perl: error: --backend pbs: unknown backend. Use one of: local, slurm.\n"


def test_the_slurm_options_are_one_definition_in_both_commands() -> None:
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    def options(name: str) -> dict[str, tuple]:
        return {p.opts[0]: (p.help, p.default, p.type.name) for p in commands[name].params
                if p.opts[0] in (*FLAGS.values(), "--backend")}
    assert set(options("eval")) == {*FLAGS.values(), "--backend"}
    assert options("eval") == options("run")


@pytest.mark.parametrize(("args", "message"), [
    (["--time", "soon"], "--time soon: not a Slurm time limit"),
    (["--slurm-arg", "partition=x"], "--slurm-arg partition=...: PeRL sets --partition itself"),
    (["--mem", "lots"], "--mem lots: expected a size such as 32G"),
])
def test_perl_eval_checks_slurm_values_as_perl_run_does(tmp_path: Path, args: list[str], message: str) -> None:
    config = write_config(tmp_path, methods=("lora",), seeds=(1,))
    for command in ("run", "eval"):
        result = invoke(command, SUITE, "--backend", "slurm", *args, "--config", str(config),
                        "--output", str(tmp_path / "out"))
        assert result.exit_code == 2 and message in result.output, (command, result.output)


def test_a_jobs_kind_names_its_worker_and_the_perl_command_that_resumes_it() -> None:
    train, ev = ("python", "-m", "perl_cli.train"), ("python", "-m", "perl_cli.train.eval_worker")
    assert jobkinds.worker(jobkinds.TRAIN, train, ev) == list(train)
    assert jobkinds.worker(jobkinds.EVAL, train, ev) == list(ev)
    assert jobkinds.command(jobkinds.EVAL, Path("/x/e"), train, ev) == [*ev, "/x/e"]
    assert jobkinds.perl_words(jobkinds.TRAIN, {"a": {}}) == ["run"]
    assert jobkinds.perl_words(jobkinds.EVAL) == ["eval"]
    assert jobkinds.perl_words(jobkinds.EVAL, {"aime24": {}, "math500": {}}) == ["eval", "--benchmarks", "aime24,math500"]
    assert jobkinds.activity(jobkinds.EVAL, {"aime24": {}}) == "evaluating aime24"
    assert jobkinds.activity(jobkinds.TRAIN, {}) is None


def test_the_resume_hint_names_perl_eval_for_evaluation_tasks_and_perl_run_for_older_ones() -> None:
    args = ["--backend", "slurm", "--time", "10"]
    old = {"state": "interrupted", "slurm": {"job_id": "4_0", "args": args}}  # submitted by an older PeRL
    ev = {"state": "interrupted", "slurm": {"job_id": "5_0", "args": args, "kind": "eval",
                                             "rerun": ["eval", "--benchmarks", "aime24"]}}
    assert slurm.rerun_words(old) == ["run", *args]
    assert slurm.rerun_words(ev) == ["eval", "--benchmarks", "aime24", *args]
    assert slurm.rerun_words({"slurm": {"rerun": "eval"}, "backend": "slurm"}) == ["run", "--backend", "slurm"]
    hint = _resume_hint("s", {"a": slurm.rerun_words(ev)}, local=0, output=Path("output"))
    assert hint.startswith("`perl eval s --benchmarks aime24 --backend slurm --time 10` resumes"), hint
    both = _resume_hint("s", {"a": slurm.rerun_words(ev), "b": slurm.rerun_words(old)}, local=0, output=Path("o"))
    assert "`perl eval s --only a --benchmarks aime24 --backend slurm --time 10 --output o`" in both, both
    assert "`perl run s --only b --backend slurm --time 10 --output o`" in both, both


def _experiment(tmp_path: Path) -> tuple[configlib.Experiment, Path]:
    cfg = configlib.load(write_config(tmp_path, methods=("lora",), seeds=(1,)))
    exp = configlib.expand(cfg, SUITE)[0]
    exp_dir = tmp_path / "out" / SUITE / exp.name
    exp_dir.mkdir(parents=True)
    state.atomic_write_json(exp_dir / state.CONFIG_FILE, exp.resolved())
    return exp, exp_dir


@pytest.mark.parametrize(("recorded", "kind", "planned"), [
    ({"state": "queued"}, "eval", True),  # Slurm let the evaluation task go before it ran
    ({"state": "queued"}, "train", False),  # a training task: `perl run` resubmits it
    ({"state": "failed", "cause": "time_limit"}, "eval", True),  # stopped by the time limit, no requeue left
    ({"state": "failed", "cause": "preempted"}, "eval", True),
    # A real failure of the evaluation (its worker recorded `job`): tried again, as perl run retries training.
    ({"state": "failed", "cause": None, "error": "evaluation: ValueError: x", "job": "eval"}, "eval", True),
    ({"state": "failed", "cause": None, "error": "ValueError: x", "job": "train"}, "eval", False),
    ({"state": "failed", "cause": "time_limit"}, "train", False),  # training ran out of time: not evaluable
])
def test_a_slurm_evaluation_stopped_before_its_end_is_planned_again(tmp_path: Path, recorded: dict, kind: str,
                                                                    planned: bool) -> None:
    """What `perl eval` continues beyond `interrupted`: an evaluation task Slurm let go of while
    queued (the planner has taken out the tasks Slurm still has), as `perl run` resubmits a lost
    training task, or one stopped by a time limit or preemption with no requeue left."""
    exp, exp_dir = _experiment(tmp_path)
    spec = {"source": "builtin:tiny-math", "n": 1}
    state.write_status(exp_dir, {**recorded, "fingerprint": exp.fingerprint, "backend": "slurm",
                                 "slurm": {"job_id": "7_0", "kind": kind}})
    jobkinds.prepare_eval(exp_dir, {"b": spec})
    (exp_dir / state.EVAL_FILE).write_text(json.dumps({}))
    plans, skipped, done = jobkinds.plan_eval([exp], exp_dir.parent, {"b": spec}, live={})
    assert [p.exp.name for p in plans] == ([exp.name] if planned else [])
    assert skipped == ([] if planned else [(exp.name, f"not completed ({recorded['state']}): `perl run` it first")])
    assert done == []


@pytest.mark.parametrize(("kind", "runs"), [("train", "perl_cli.train <dir>"), ("eval", "perl_cli.train.eval_worker <dir>")])
def test_the_slurm_dry_run_says_which_worker_each_task_runs(tmp_path: Path, kind: str, runs: str) -> None:
    """What `describe` prints (perl run --backend slurm --dry-run): the worker the jobs' kind names."""
    from types import SimpleNamespace

    from perl_cli.scheduler import RunOptions, SlurmOptions
    from perl_cli.scheduler.jobs import Job
    from perl_cli.scheduler.slurm_backend import SlurmBackend

    exp, exp_dir = _experiment(tmp_path)
    opts = RunOptions(suite=SUITE, experiments=[exp], kind=kind, worker_cmd=("python", "-m", "perl_cli.train"),
                      eval_worker_cmd=("python", "-m", "perl_cli.train.eval_worker"), slurm=SlurmOptions(time="10"))
    session = SimpleNamespace(opts=opts, suite_dir=exp_dir.parent, watched=[], skipped=[])
    lines = SlurmBackend(session, opts.slurm).describe([Job(exp, exp_dir, 1000, kind=kind)])
    assert f"each task runs: python -m {runs} (requeued up to 1x" in "\n".join(lines), lines


@pytest.mark.parametrize(("job", "planned"), [("eval", True), ("train", False), (None, False)])
def test_a_local_evaluation_that_failed_is_tried_again_and_a_failed_training_is_not(tmp_path: Path, job, planned) -> None:
    """A completed experiment whose local evaluation failed (a code error, an OOM) is evaluated again
    by the next `perl eval`; before, it was refused with "not completed (failed): `perl run` it first",
    though its training had completed. A failed training (or a status without `job`, from an older
    PeRL) is still refused."""
    exp, exp_dir = _experiment(tmp_path)
    spec = {"source": "builtin:tiny-math", "n": 1}
    status = {"state": "failed", "exit_code": 1, "error": "evaluation: RuntimeError: x", "fingerprint": exp.fingerprint}
    state.write_status(exp_dir, {**status, **({"job": job} if job else {})})
    jobkinds.prepare_eval(exp_dir, {"b": spec})
    (exp_dir / state.EVAL_FILE).write_text(json.dumps({}))
    plans, skipped, _ = jobkinds.plan_eval([exp], exp_dir.parent, {"b": spec}, live={})
    assert [p.exp.name for p in plans] == ([exp.name] if planned else [])
    assert bool(skipped) == (not planned)


def test_the_workers_record_which_kind_of_job_they_are(tmp_path: Path) -> None:
    from perl_cli.train.status import StatusWriter

    for kind in ("train", "eval"):
        writer = StatusWriter(tmp_path, fingerprint="f", total_steps=1, job=kind)
        writer.finish(state.FAILED, 1, error="x")
        assert state.read_status(tmp_path)["job"] == kind


@pytest.mark.parametrize(("kind", "asked", "hint"), [
    (jobkinds.EVAL, {"b": {"n": 1}}, "`perl eval test --benchmarks b --output OUT`"),
    (jobkinds.TRAIN, None, "`perl run test --output OUT`"),
])
def test_perl_cancel_of_a_local_run_names_the_command_that_resumes_it(tmp_path: Path, kind, asked, hint) -> None:
    """Before: cancelling a local `perl eval` said "`perl run SUITE` resumes" (which trains, not
    evaluates). The run records the command that resumes it in run_status.json; cancel reads it."""
    import os

    from perl_cli.scheduler import cancel
    from perl_cli.scheduler.jobs import RunOptions
    from perl_cli.scheduler.session import RunSession

    cfg = configlib.load(write_config(tmp_path, methods=("lora",), seeds=(1,)))
    whole = configlib.expand(cfg, SUITE)
    out = tmp_path / "out"
    runner = RunSession(RunOptions(suite=SUITE, experiments=whole, suite_experiments=whole, output=out,
                                   config_file=cfg, tty=False, environ={}, kind=kind, eval_benchmarks=asked))
    runner.write_aggregate(force=True)
    words = cancel._local_words(out / SUITE, os.getpid(), {})
    assert cancel._resume_hint(SUITE, {}, local=1, output=out, words=words).startswith(
        hint.replace("test", SUITE).replace("OUT", str(out)))
