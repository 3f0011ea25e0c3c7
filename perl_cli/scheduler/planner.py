"""Deciding what `perl run` does with each chosen experiment: the I/O half of planning.

`planning.decide` (pure) rules on `planning.Facts`; this module gathers those facts from the
experiment directories (through the read model), the process table and Slurm's queue, turns
each decision into a `jobs.Job`, and words the refusals. Backend-neutral: both backends run
what it plans; `perl eval` plans its evaluation jobs here too (jobkinds.plan_eval).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from perl_cli import state
from perl_cli.config import Experiment
from perl_cli.experiments_view import Expectations, read_records
from perl_cli.scheduler import jobkinds, planning
from perl_cli.scheduler.jobs import Job, RunOptions
from perl_cli.scheduler.memory import estimate_mb
from perl_cli.scheduler.slurm import slurm_tasks_in_flight

Live = dict[Path, tuple[int, float | None]]  # experiment directory -> (pid, start time) of a live worker


class Planner:
    def __init__(self, opts: RunOptions, suite_dir: Path) -> None:
        self.opts = opts
        self.suite_dir = suite_dir
        self.expectations = Expectations(opts.config_file, opts.suite) if opts.config_file is not None else None
        self.skipped: list[str] = []
        self.watched: list[tuple[Job, str]] = []  # (job, Slurm task id) already queued or running in Slurm
        self.kept: dict[tuple[str, ...], list[str]] = {}  # completed under other --set overrides, by overrides

    def classify(self, live: Live, experiments: list[Experiment] | None = None,
                 *, fresh: bool | None = None) -> tuple[list[Job], list[tuple[str, str]]]:
        """Jobs to start or adopt, and the refusals as (name, reason): planning.decide per experiment."""
        jobs: list[Job] = []
        refusals: list[tuple[str, str]] = []
        asked = tuple(self.opts.overrides)
        experiments = self.opts.experiments if experiments is None else experiments
        in_slurm = slurm_tasks_in_flight(self.suite_dir, [e.name for e in experiments])
        for exp in experiments:
            exp_dir = self.suite_dir / exp.name
            facts, running = self._facts(exp, exp_dir, live, in_slurm.get(exp.name), asked)
            decision = planning.decide(facts, fresh=self.opts.fresh if fresh is None else fresh, asked=asked,
                                       slurm=self.opts.slurm is not None)
            job = Job(exp, exp_dir, estimate_mb(exp.config), action=decision.action, runtime=decision.runtime,
                      tries_left=self.opts.retries)
            if decision.action == planning.REFUSE:
                refusals.append((exp.name, decision.reason))
            elif decision.action == planning.SKIP:
                self.skipped.append(exp.name)
            elif decision.action == planning.KEEP:
                self.kept.setdefault(facts.overrides, []).append(exp.name)
            elif decision.action == planning.WATCH:
                assert facts.slurm_task is not None
                self.watched.append((job, facts.slurm_task))  # submitted by an earlier run: never twice
            else:
                if running is not None:  # adopted, or stopped first by --fresh
                    (job.pid, job.pid_start_time), job.gpu = running
                jobs.append(job)
        return jobs, refusals

    def classify_eval(self, live: Live) -> list[Job]:
        """`perl eval`: an eval job per completed experiment with benchmarks left to do (jobkinds.plan_eval).

        An experiment Slurm still has a task for is never started twice: the Slurm backend watches
        an evaluation task (as `perl run` watches a training one); anything else waits for its task.
        """
        in_slurm = slurm_tasks_in_flight(self.suite_dir, [e.name for e in self.opts.experiments])
        skipped: list[tuple[str, str]] = []
        for exp in self.opts.experiments:
            task = in_slurm.get(exp.name)
            if task is None:
                continue
            recorded = ((state.read_status(self.suite_dir / exp.name) or {}).get("slurm") or {}).get("kind")
            if self.opts.slurm is not None and recorded == jobkinds.EVAL:
                self.watched.append((self._eval_job(exp, {}), task))
            else:
                skipped.append((exp.name, f"{planning.IN_SLURM} (task {task}, {recorded or jobkinds.TRAIN}): let it "
                                          f"end, or `perl cancel {self.opts.suite} --only {exp.name}` it first"))
        rest = [e for e in self.opts.experiments if e.name not in in_slurm]
        plans, not_evaluated, done = jobkinds.plan_eval(rest, self.suite_dir, self.opts.eval_benchmarks, live)
        for name, reason in skipped + not_evaluated:
            print(f"not evaluated: {name}: {reason}")
        self.skipped += done
        return [self._eval_job(p.exp, p.specs) for p in plans]

    def _eval_job(self, exp: Experiment, specs: dict) -> Job:
        # tries_left: the local backend's retries are for training (a smaller batch after an OOM);
        # the Slurm backend requeues an evaluation after a time limit up to opts.retries times.
        return Job(exp, self.suite_dir / exp.name, estimate_mb(exp.config), action="resume", tries_left=0,
                   kind=jobkinds.EVAL, benchmarks=specs)

    def plan(self, live: Live) -> tuple[list[Job], list[tuple[str, str]]]:
        """The run's jobs by its kind: training (classify) or evaluation (classify_eval, which refuses nothing)."""
        if self.opts.kind == jobkinds.EVAL:
            return self.classify_eval(live), []
        return self.classify(live)

    def _facts(self, exp: Experiment, exp_dir: Path, live: Live, slurm_task: str | None,
               asked: tuple[str, ...]) -> tuple[planning.Facts, tuple[tuple[int, float | None], int | None] | None]:
        """What the directory, the process table and Slurm say about one experiment (all the I/O of planning).

        Also returns its live worker, if any: ((pid, start time), gpu).
        """
        records = read_records(exp_dir)
        if records.problem:
            worker = live.get(exp_dir)
            return planning.Facts(exp.fingerprint, state.UNREADABLE, exists=True, problem=records.problem,
                                  live_pid=worker[0] if worker else None), ((worker, None) if worker else None)
        status, here = records.status, state.hostname()
        worker: tuple[int, float | None] | None = None
        if status.get("host") in (None, here) and state.process_alive(status.get("pid"), status.get("pid_start_time")):
            worker = (status["pid"], status.get("pid_start_time"))
        elif exp_dir in live:
            worker = live[exp_dir]
        other_host = None
        if status.get("state") == state.RUNNING and status.get("host") not in (None, here) and not state.is_stalled(status):
            other_host = f"{status['host']} (pid {status.get('pid')})"
        current = state.effective_state(status, exp.fingerprint)
        runtime = records.config.get(state.RUNTIME_KEY)
        facts = planning.Facts(
            exp.fingerprint, current, exists=exp_dir.exists(), recorded_fingerprint=records.fingerprint,
            overrides=records.overrides, runtime=runtime if isinstance(runtime, dict) else None,
            has_checkpoint=state.last_checkpoint(exp_dir) is not None, live_pid=worker[0] if worker else None,
            other_host=other_host, slurm_task=slurm_task,
            complete_under_own_overrides=current == state.STALE and self._complete_under_own_overrides(
                exp.name, records.overrides, records.fingerprint, asked),
        )
        gpu = status.get("gpu") if isinstance(status.get("gpu"), int) and not isinstance(status.get("gpu"), bool) else None
        return facts, ((worker, gpu) if worker else None)

    def _complete_under_own_overrides(self, name: str, ran_with: tuple[str, ...], fingerprint: str | None, asked: tuple[str, ...]) -> bool:
        """A run without --set keeps an experiment completed with --set whose overrides still resolve to what ran."""
        if asked or not ran_with or self.expectations is None:
            return False
        return self.expectations.fingerprint(name, ran_with) == fingerprint

    def refusal_message(self, refusals: list[tuple[str, str]], all_experiments: list[Experiment]) -> str:
        by_reason: dict[str, list[str]] = {}
        for name, reason in refusals:
            by_reason.setdefault(reason, []).append(name)
        suite = self.opts.suite
        lines = [f"suite '{suite}': {len(refusals)} of the chosen experiments cannot be run as asked:"]
        lines += [f"  {len(names)} {reason}: {some(names)}" for reason, names in by_reason.items()]
        in_slurm = [name for name, reason in refusals if reason.startswith(planning.IN_SLURM)]
        if in_slurm:  # --fresh is refused the same way: only cancelling the tasks lifts it
            lines.append(f"Slurm still has tasks for {some(in_slurm)}: `perl cancel {suite} --only "
                         f"{','.join(in_slurm)}` first (they resume from their checkpoints when run again).")
            refusals = [(name, reason) for name, reason in refusals if name not in in_slurm]
            if not refusals:
                return "\n".join(lines)
        names = [name for name, _ in refusals]
        only = "" if set(names) == {e.name for e in all_experiments} else f" --only {','.join(names)}"
        sets = "".join(f" --set {shlex.quote(o)}" for o in self.opts.overrides)
        if self.opts.slurm is not None:  # the same backend and options, or it would run here
            sets += " " + shlex.join(self.opts.slurm.rerun_args())
        lines.append(
            f"To start them over with this command's settings: `perl run {suite}{only}{sets} --fresh` (the old "
            f"directories are kept as <name>{state.OLD_DIR_MARK}<timestamp>). To keep them, leave them out with "
            "--exclude, or repeat the --set they ran with."
        )
        return "\n".join(lines)

    def kept_lines(self) -> list[str]:
        """What happens to experiments completed with --set when this run has none."""
        return [
            f"{len(names)} completed {planning.settings(overrides)} are kept (complete under those settings): {some(names)}. "
            f"To redo them with the config's own settings, add --fresh (the old directories are kept)."
            for overrides, names in self.kept.items()
        ]


def some(names: list[str], most: int = 6) -> str:
    """Names, the first few of a long list only (so that a refusal does not list dozens twice)."""
    shown = ", ".join(names[:most])
    return shown + (f", … and {len(names) - most} more" if len(names) > most else "")
