"""The run session: what one `perl run` (or `perl eval`) does whatever the backend.

    check the output -> take the run lock (or hand the experiments to the run holding it)
      -> plan (planner.py) -> the backend runs the jobs (local.py, slurm_backend.py)
      -> run_status.json, the exit code, the end-of-run summary

The session owns what both backends share: the options, the suite directory, the run lock and
hand-off, Ctrl+C (a counter the backends read, a pipe that wakes their waits), the plan and
its refusals, `--fresh` (the old directory kept aside), the files a job is given before it
starts (its kind decides them: jobkinds.py), progress, run_status.json, the exit code and
the summary. A backend is reached only through `jobs.Backend`, and sees the session only
through `jobs.Session`.

Writing rules (perl_cli/state.py): the scheduler writes an experiment's status.json before it
launches a worker and after it has reaped one; the worker writes it in between.
`run_status.json` is derived from the experiment directories and rewritten atomically.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from perl_cli import outcomes, state
from perl_cli.config import Experiment
from perl_cli.experiments_view import OVERRIDES_KEY
from perl_cli.scheduler import endings, handoff, jobkinds, requests
from perl_cli.scheduler.aggregate import write_run_status
from perl_cli.scheduler.handles import AdoptedHandle
from perl_cli.scheduler.jobs import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, Backend, Job, RunError, RunOptions
from perl_cli.scheduler.local import LocalBackend
from perl_cli.scheduler.lock import LockHeld, RunLock
from perl_cli.scheduler.lock import holder as lock_holder
from perl_cli.scheduler.machine import Machine
from perl_cli.scheduler.planner import Planner
from perl_cli.scheduler.processes import find_live_workers, kill_leftover_group
from perl_cli.scheduler.progress import PlainReporter, RichReporter, read_progress
from perl_cli.scheduler.slurm_backend import SlurmBackend

PROGRESS_EVERY_S = 1.0
AGGREGATE_EVERY_S = 10.0  # progress-only refresh; events refresh it within AGGREGATE_EVENT_S
AGGREGATE_EVENT_S = 0.5
HANDOVER_ATTEMPTS = 3  # a holder that ends before taking the hand-off: take the lock and run it ourselves
HANDOVER_FIND_S = 10.0  # a run that holds the lock writes run_status.json within a tick; wait that long for it


def run_suite(opts: RunOptions) -> int:
    """Run (or, with dry_run, describe) the chosen experiments; the exit code (0/1/130).

    Raises RunError (a ConfigError) when it refuses to start: exit 2.
    """
    return RunSession(opts).run()


def _old_dir_name(exp_dir: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = exp_dir.with_name(f"{exp_dir.name}{state.OLD_DIR_MARK}{stamp}")
    n = 2
    while target.exists():
        target = exp_dir.with_name(f"{exp_dir.name}{state.OLD_DIR_MARK}{stamp}-{n}")
        n += 1
    return target


class RunSession:
    def __init__(self, opts: RunOptions) -> None:
        self.opts = opts
        self.suite_dir = Path(opts.output).resolve() / opts.suite
        self.all_experiments = opts.suite_experiments or opts.experiments
        # The workers' base environment is the machine's (machine.environ), kept once.
        self.machine = Machine(opts, dict(os.environ if opts.environ is None else opts.environ))
        self.planner = Planner(opts, self.suite_dir)
        self.results: dict[str, str] = {}
        self.run_names: list[str] = []
        self.run_experiments: dict[str, Experiment] = {}  # what this run covers, handed-over ones included
        self.stop_requests = 0
        self.reporter: PlainReporter | RichReporter | None = None
        self.started = state.now()
        self.disk_full: str | None = None  # what could not be written, once the disk is full
        self.aggregate_dirty = False
        self._wake_r: int | None = None
        self._last_aggregate = 0.0
        self._last_progress = 0.0
        self.backend: Backend = (SlurmBackend(self, opts.slurm) if opts.slurm is not None
                                 else LocalBackend(self, self.machine))

    # What the planner found, read by the backends and the exit code.
    @property
    def skipped(self) -> list[str]:
        return self.planner.skipped

    @property
    def watched(self) -> list[tuple[Job, str]]:
        return self.planner.watched

    @property
    def kept(self) -> dict[tuple[str, ...], list[str]]:
        return self.planner.kept

    def kept_lines(self) -> list[str]:
        return self.planner.kept_lines()

    # -- the run ------------------------------------------------------------------------

    def run(self) -> int:
        self.machine.load()  # --gpus/--cpu are checked against this machine whatever the backend
        if self.opts.dry_run:
            return self._dry_run()
        self._check_output()
        lock = RunLock(self.suite_dir)
        for attempt in range(HANDOVER_ATTEMPTS):
            try:
                lock.acquire()
                break
            except LockHeld as exc:
                if self.opts.slurm is not None or self.opts.kind != jobkinds.TRAIN or attempt == HANDOVER_ATTEMPTS - 1:
                    raise RunError(str(exc)) from None
                code = self._hand_over(exc)
                if code is not None:
                    return code
                # The run ended before it took the request (nothing was done): run them ourselves.
        try:
            with self._signals():
                return self._run_locked()
        finally:
            lock.release()
            self.machine.close()

    def _run_locked(self) -> int:
        requests.sweep(self.suite_dir)  # what an ended run took and never answered, requests nobody waits for
        live = find_live_workers(self.suite_dir) if self.suite_dir.exists() else {}
        jobs, refusals = self.planner.plan(live)
        if refusals:
            self.write_aggregate(force=True)
            raise RunError(self.planner.refusal_message(refusals, self.all_experiments))
        return self.backend.run(jobs)

    def _dry_run(self) -> int:
        live = find_live_workers(self.suite_dir) if self.suite_dir.exists() else {}
        jobs, refusals = self.planner.plan(live)
        for line in self.backend.describe(jobs, refused=len(refusals)):
            print(line)
        if refusals:
            raise RunError(self.planner.refusal_message(refusals, self.all_experiments))
        self.backend.refuse_unfit(jobs)
        return EXIT_OK

    def _check_output(self) -> None:
        """Exit-2 errors up front for an output we cannot use (never a traceback mid-run)."""
        out = Path(self.opts.output)
        try:
            self.suite_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"cannot create the suite's output directory {self.suite_dir}: {exc.strerror or exc}. "
                           f"Choose another --output (now {out}) or fix its permissions.") from None
        if not os.access(self.suite_dir, os.W_OK | os.X_OK):
            raise RunError(f"cannot write in {self.suite_dir} (read-only, or not yours). Choose another --output "
                           f"(now {out}) or fix its permissions.")
        run_status = self.suite_dir / state.RUN_STATUS_FILE
        if os.path.lexists(run_status) and (run_status.is_symlink() or not run_status.is_file()):
            raise RunError(f"{run_status} is not a regular file: remove it (perl rebuilds it from the experiment "
                           "directories).")
        try:
            requests.check_spool(self.suite_dir)
        except requests.SpoolError as exc:
            raise RunError(str(exc)) from None

    def _hand_over(self, held: LockHeld) -> int | None:
        """Another local `perl run` holds the suite: hand it the chosen experiments and print its answer.

        None when it ended without taking them (the caller then runs them itself).
        """
        deadline = time.monotonic() + HANDOVER_FIND_S
        scheduler = handoff.running_scheduler(self.suite_dir)
        while scheduler is None and lock_holder(self.suite_dir) and time.monotonic() < deadline:
            time.sleep(0.1)  # it holds the lock but has not written run_status.json yet
            scheduler = handoff.running_scheduler(self.suite_dir)
        if scheduler is None:
            if lock_holder(self.suite_dir) is None:
                return None
            raise RunError(str(held))
        problems = handoff.conflicts(scheduler, overrides=tuple(self.opts.overrides), fresh=self.opts.fresh,
                                     explicit=self.opts.explicit)
        if problems:
            raise RunError(
                f"suite '{self.opts.suite}' is being run by `perl run` (pid {scheduler['pid']}), which can take "
                f"more experiments, but not these as asked: {'; '.join(problems)}. Leave those out to hand the "
                f"experiments to it, or wait for it to end (or stop it with `perl cancel {self.opts.suite}`)."
            )
        try:
            reply = handoff.hand_over(self.suite_dir, self.opts.suite, self.opts.experiments, scheduler,
                                      overrides=tuple(self.opts.overrides))
        except requests.SpoolError as exc:
            raise RunError(str(exc)) from None
        if reply is None:
            return None
        out, err = handoff.describe(reply, scheduler["pid"], self.opts.suite)
        for line in out:
            print(line)
        for line in err:
            print(f"perl: error: {line}", file=sys.stderr)
        return reply.exit_code

    # -- Ctrl+C, and waiting ------------------------------------------------------------

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop_requests += 1

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        old = {s: signal.signal(s, self._on_signal) for s in handled}
        old[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda *_: None)
        self._wake_r = r
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            signal.set_wakeup_fd(old_fd)
            self._wake_r = None
            os.close(r)
            os.close(w)

    def wait(self, timeout: float) -> None:
        """Sleep until a signal (a child's exit, Ctrl+C) or the timeout, whichever comes first."""
        if self._wake_r is None:
            time.sleep(min(timeout, 0.02))
            return
        with contextlib.suppress(InterruptedError):
            ready, _, _ = select.select([self._wake_r], [], [], timeout)
            if ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)

    # -- a job's directory -----------------------------------------------------------------

    def prepare_dir(self, job: Job) -> None:
        """The experiment directory and what its worker reads: config.json (train) or the eval request."""
        if job.kind == jobkinds.EVAL:
            jobkinds.prepare_eval(job.dir, job.benchmarks)  # config.json stays what training ran with
            return
        job.dir.mkdir(parents=True, exist_ok=True)
        config = job.exp.resolved()
        if self.opts.overrides:
            config[OVERRIDES_KEY] = list(self.opts.overrides)
        if job.runtime:
            config[state.RUNTIME_KEY] = dict(job.runtime)
        state.atomic_write_json(job.dir / state.CONFIG_FILE, config)

    def start_fresh(self, job: Job) -> None:
        """--fresh: stop a live worker on the directory, then keep the old one aside."""
        if job.pid is not None:
            self._stop_stranger(job)
        if job.dir.exists():
            target = _old_dir_name(job.dir)
            job.dir.rename(target)
            assert self.reporter is not None
            self.reporter.info(f"--fresh: kept the previous {job.name} as {target.name}")
        job.pid = job.pid_start_time = None
        job.gpu = None
        job.action = "run"

    def _stop_stranger(self, job: Job) -> None:
        """Terminate a worker that is not our child (left by a killed scheduler)."""
        assert job.pid is not None
        stranger = AdoptedHandle(job.name, job.pid, job.pid_start_time, job.gpu_label)
        stranger.terminate()
        deadline = time.monotonic() + self.opts.grace_seconds
        while stranger.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if stranger.poll() is None:
            stranger.kill()
            while stranger.poll() is None:
                time.sleep(0.05)
        kill_leftover_group(job.pid)
        endings.record(job.dir, outcomes.Ending(None, pid=job.pid, stop_sent=True), keep_final=True,
                       extra={"error": "stopped by perl run --fresh"})

    # -- what readers see ------------------------------------------------------------------

    def progress_of(self, rows: list[tuple[str, str, Path]]) -> None:
        """Refresh the progress display with (name, where, directory) of what is running."""
        if self.reporter is None or time.monotonic() - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = time.monotonic()
        self.reporter.update([read_progress(name, where, exp_dir) for name, where, exp_dir in rows])

    def write_aggregate(self, force: bool = False, backend: dict[str, Any] | None = None) -> None:
        """Rewrite run_status.json: at once when forced, soon after an event, else now and then.

        `backend`: the Slurm backend's fields for its `scheduler` object (job ids, partition).
        """
        since = time.monotonic() - self._last_aggregate
        if not force and since < (AGGREGATE_EVENT_S if self.aggregate_dirty else AGGREGATE_EVERY_S):
            return
        self.aggregate_dirty = False
        self._last_aggregate = time.monotonic()
        if not self.suite_dir.exists() and not force:
            return
        now = self.backend.activity()
        scheduler = {
            "backend": "local",
            "pid": os.getpid(),
            "host": state.hostname(),
            "started": self.started,
            "state": "stopping" if now.stopping else ("running" if now.running or now.queued else "idle"),
            "running": sorted(now.running),
            "queued": now.queued,
            # What this run covers, for readers' progress and ETA (perl_cli.experiments_view.read_run).
            "run": self.run_names,
            # The command that resumes this run (`perl cancel` prints it): run, or eval [--benchmarks ...].
            "rerun": jobkinds.perl_words(self.opts.kind, self.opts.eval_benchmarks),
            OVERRIDES_KEY: list(self.opts.overrides),
            **(backend or {}),
        }
        self.suite_dir.mkdir(parents=True, exist_ok=True)
        try:
            write_run_status(self.opts.suite, self.suite_dir, self.all_experiments, scheduler)
        except OSError as exc:
            if not outcomes.is_disk_full(exc):
                raise
            # Derived data: readers never need it. Stop launching, keep reaping.
            if self.reporter is not None:
                self.on_disk_full(exc)

    def on_disk_full(self, exc: OSError) -> None:
        """Stop launching: the queued experiments stay as they are for the next `perl run`."""
        if self.disk_full is None:
            self.disk_full = f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc)
            now = self.backend.activity()
            assert self.reporter is not None
            self.reporter.info(
                f"disk full: {self.disk_full}. Launching nothing more; {len(now.running)} running "
                f"worker(s) go on, {len(now.queued)} queued experiment(s) are left for the next `perl run`."
            )
        self.backend.stop_launching()

    # -- the end ---------------------------------------------------------------------------

    def exit_code(self) -> int:
        if self.stop_requests:
            return EXIT_INTERRUPTED
        if self.disk_full:
            return EXIT_FAILED
        kept = {name for names in self.kept.values() for name in names}  # complete under their own --set
        # Every experiment the run ran, handed-over ones included.
        for name, exp in self.run_experiments.items():
            if name in kept:
                continue
            if state.effective_state(state.read_status(self.suite_dir / name), exp.fingerprint) != state.COMPLETED:
                return EXIT_FAILED
        return EXIT_OK

    def summarize(self, code: int) -> None:
        """The end-of-run table, then --notify (run_summary.py); neither changes the exit code."""
        from perl_cli import run_summary
        from perl_cli.ui import console, output_width

        summary = run_summary.build(self.opts.output, self.opts.suite, self.opts.config_file, self.run_names, code,
                                    width=output_width() or 100)
        console().print(summary.renderable)
        if self.opts.notify:
            problem = run_summary.notify(self.opts.notify, summary, exit_code=code, suite=self.opts.suite,
                                         output=self.opts.output)
            if problem:
                print(f"perl: warning: {problem}", file=sys.stderr)
