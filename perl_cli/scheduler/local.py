"""The local backend: a suite's jobs as worker processes on this machine's GPUs (or its CPU).

One worker subprocess per experiment, in its own session and process group, with
stdout+stderr appended to `train.log`. The backend

- adopts workers left running by a scheduler that was killed (the planner found them by
  pid + process start time, and a scan of the process table), so there are never two
  workers on one experiment directory,
- places each job on a GPU with a free slot whose free memory, minus what jobs started
  within the settle period have reserved, fits the job's estimate (machine.py, slots.py),
- reaps workers as soon as they exit (SIGCHLD wakes the loop), records a final state
  when the worker did not (endings.record), retries CUDA out-of-memory failures with half
  the batch and twice the accumulation, kills stalled workers, stops launching on a full disk,
- serves the requests of other commands while it runs (local_requests.py), and
- on Ctrl+C/SIGTERM stops launching, SIGTERMs every worker's process group, waits a
  grace period for checkpoints, SIGKILLs the rest, and exits 130.

What is backend-neutral (planning, lock, hand-off, run_status.json, exit code, summary) is
the run session's (session.py), reached through `jobs.Session`.
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from perl_cli import outcomes, state
from perl_cli.logtail import tail_bytes
from perl_cli.scheduler import endings, jobkinds, local_requests
from perl_cli.scheduler.handles import AdoptedHandle, ChildHandle
from perl_cli.scheduler.jobs import Activity, Job, Session
from perl_cli.scheduler.machine import Machine
from perl_cli.scheduler.progress import make_reporter
from perl_cli.ui import human_bytes, human_seconds

POLL_S = 0.25  # loop wake-up when no child exits: adopted workers, progress, deadlines
INVENTORY_EVERY_S = 1.0
LOG_TAIL_BYTES = 65536
STALL_CHECK_EVERY_S = 1.0
DISK_LOW_BYTES = 16 * 1024 * 1024  # a failure with less free than this is blamed on the disk


def _log_tail_since_launch(exp_dir: Path) -> str:
    """The end of train.log from the scheduler's last launch mark on (this attempt only)."""
    text = tail_bytes(exp_dir / state.LOG_FILE, LOG_TAIL_BYTES).decode("utf-8", "replace")
    mark = text.rfind(state.LOG_MARK)
    return text[mark:] if mark >= 0 else text


class LocalBackend:
    def __init__(self, session: Session, machine: Machine) -> None:
        self.session = session
        self.opts = session.opts
        self.machine = machine
        self.queue: deque[Job] = deque()
        self.running: dict[str, Job] = {}
        self.stopping = False
        self.kill_deadline = 0.0
        self._last_inventory = 0.0
        self._said_waiting = False
        self._last_stall_check = 0.0

    def serve_requests(self) -> None:
        """Answer waiting hand-off and cancel requests (local_requests.py)."""
        local_requests.serve(self)

    # -- the Backend interface (jobs.Backend) ----------------------------------------------

    def activity(self) -> Activity:
        return Activity(running=list(self.running), queued=[j.name for j in self.queue], stopping=self.stopping)

    def stop_launching(self) -> None:
        self.queue.clear()

    def refuse_unfit(self, jobs: list[Job]) -> None:
        self.machine.refuse_unfit(jobs)

    def run(self, jobs: list[Job]) -> int:
        s = self.session
        self.machine.refuse_unfit(jobs)
        s.run_names = [j.name for j in jobs]
        s.run_experiments = {j.name: j.exp for j in jobs}
        s.reporter = make_reporter(len(jobs), tty=self.opts.tty)
        try:
            self._announce(jobs)
            for job in jobs:
                if job.action == "adopt":
                    self.adopt(job)
                elif s.stop_requests:
                    break
                else:
                    if job.action == "fresh":
                        s.start_fresh(job)
                    self.queue.append(job)
            s.write_aggregate(force=True)
            self._loop()
        finally:
            s.write_aggregate(force=True)
            s.reporter.close()
        if s.disk_full:
            print(
                f"perl: error: the disk is full ({s.disk_full}); stopped launching. `perl diagnose "
                f"{self.opts.suite}` says how much space is needed and where; after freeing it, "
                f"`perl run {self.opts.suite}` resumes.",
                file=sys.stderr,
            )
        code = s.exit_code()
        s.summarize(code)
        return code

    def describe(self, jobs: list[Job], *, refused: int) -> list[str]:
        """--dry-run: each job's slot, environment and command, as the loop would start it now."""
        m, out = self.machine, []
        mode = "CPU" if m.cpu_mode else ("fake GPUs" if m.fake else "GPUs")
        if m.cpu_mode and m.inventory is not None:
            out.append(f"no GPU ({m.inventory.reason}): would run on the CPU, {m.capacity()} at a time.")
        simulated: list[Job] = [j for j in jobs if j.action == "adopt"]
        now_mono = time.monotonic()
        for job in simulated:
            job.started_mono = now_mono
        for job in jobs:
            out.append(f"{job.name}  [{job.action}]  {job.estimate_mb:,} MB estimated")
            out.append(f"  dir: {job.dir}")
            if job.action == "adopt":
                out.append(f"  already running: pid {job.pid} on {job.gpu_label}; would wait for it and record its result")
                continue
            placed, gpu = m.choose(job, simulated, now_mono)
            if placed:
                job.gpu, job.started_mono = gpu, now_mono
                simulated.append(job)
                where = f"{'cpu' if gpu is None else f'gpu {gpu}'} ({mode}, starts at once)"
            else:
                where = "waits for a free slot / enough free memory"
            env = m.env_overrides(gpu if placed else None)
            if not placed and not m.cpu_mode:
                env["CUDA_VISIBLE_DEVICES"] = env["PERL_GPU"] = "<chosen when it starts>"
            out.append(f"  where: {where}")
            out.append(f"  env: {' '.join(f'{k}={shlex.quote(v)}' for k, v in env.items())}")
            out.append(f"  command: {shlex.join(self._command(job))}")
            if job.runtime:
                out.append(f"  runtime overrides: {job.runtime}")
        s = self.session
        out.append(
            f"dry run: {sum(j.action != 'adopt' for j in jobs)} to run, {sum(j.action == 'adopt' for j in jobs)} "
            f"running (adopt), {len(s.skipped) + sum(map(len, s.planner.kept.values()))} completed (skip), "
            f"{refused} refused; nothing was started."
        )
        return out + s.kept_lines()

    # -- starting ---------------------------------------------------------------------------

    def _announce(self, jobs: list[Job]) -> None:
        s, m = self.session, self.machine
        assert s.reporter is not None and m.inventory is not None
        r = s.reporter
        if m.cpu_mode:
            n = m.capacity()
            r.info(
                f"no GPU ({m.inventory.reason}): running on the CPU, {n} experiment{'s' if n > 1 else ''} "
                f"at a time{'' if self.opts.jobs else ' (--jobs N for more)'}."
            )
        else:
            fake = " (fake, from PERL_FAKE_GPUS)" if m.inventory.fake else ""
            r.info(f"GPUs{fake}: " + ", ".join(f"{i} {g.name} {g.memory_free_mb:,}/{g.memory_total_mb:,} MB free" for i, g in m.gpus.items())
                   + f"; {self.opts.jobs_per_gpu} job(s) per GPU.")
        adopt = sum(j.action == "adopt" for j in jobs)
        evaluating = self.opts.kind == jobkinds.EVAL
        parts = [f"{len(jobs) - adopt} to {'evaluate' if evaluating else 'run'}"]
        if adopt:
            parts.append(f"{adopt} still running from an earlier `perl run` (adopted)")
        if s.skipped:
            parts.append(f"{len(s.skipped)} already {jobkinds.done_word(self.opts.kind)} (skipped)")
        r.info(f"suite {self.opts.suite} → {s.suite_dir}: " + ", ".join(parts) + ".")
        for line in s.kept_lines():
            r.info(line)

    def adopt(self, job: Job) -> None:
        """Follow a live worker an earlier `perl run` left (its exit code is unknowable)."""
        job.started_mono = time.monotonic()
        status = state.read_status(job.dir) or {}
        job.started = status.get("started") or state.now()
        job.attempt = status.get("attempt") or 1
        assert job.pid is not None
        job.handle = AdoptedHandle(job.name, job.pid, job.pid_start_time, job.gpu_label)
        self.running[job.name] = job
        assert self.session.reporter is not None
        self.session.reporter.started(job.name, job.gpu_label + f", adopted pid {job.pid}", job.attempt)

    # -- the loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            self._run_until_idle()
            # Last call: a request that came as the last job ended is answered, not left behind.
            try:
                self.serve_requests()
            except OSError as exc:
                if not outcomes.is_disk_full(exc):
                    raise
                self.session.on_disk_full(exc)
            if not (self.queue or self.running):
                return

    def _run_until_idle(self) -> None:
        s = self.session
        while self.queue or self.running:
            if s.stop_requests:
                self._stop_all()
            try:
                self.serve_requests()
                self._kill_overdue()
                self._reap()
                self._check_stalls()
                if not self.stopping and not s.disk_full:
                    self._dispatch()
                if not self.queue and not self.running:
                    break
                s.progress_of([(j.name, j.gpu_label, j.dir) for j in self.running.values()])
                s.write_aggregate()
            except OSError as exc:
                if not outcomes.is_disk_full(exc):
                    raise
                s.on_disk_full(exc)
            s.wait(POLL_S)

    # -- placing and launching -------------------------------------------------------------

    def _command(self, job: Job) -> list[str]:
        return jobkinds.command(job.kind, job.dir, self.opts.worker_cmd, self.opts.eval_worker_cmd)

    def _dispatch(self) -> None:
        if not self.queue:
            return
        m = self.machine
        now_mono = time.monotonic()
        if m.inventory is not None and not m.cpu_mode and now_mono - self._last_inventory > INVENTORY_EVERY_S:
            m.inventory.refresh()
            self._last_inventory = now_mono
        waiting: deque[Job] = deque()
        while self.queue:
            job = self.queue.popleft()
            placed, gpu = m.choose(job, list(self.running.values()), now_mono)
            if placed:
                try:
                    self._launch(job, gpu)
                except OSError as exc:
                    if not outcomes.is_disk_full(exc):
                        raise
                    self._launch_failed(job, exc)
                    raise  # the loop stops launching (session.on_disk_full)
            else:
                waiting.append(job)
            if len(self.running) >= m.capacity():
                break
        waiting.extend(self.queue)
        self.queue = waiting
        if waiting and not self.running and not self._said_waiting:
            self._said_waiting = True
            best = max((g.memory_free_mb for g in m.gpus.values()), default=0)
            assert self.session.reporter is not None
            self.session.reporter.info(
                f"waiting for GPU memory: {waiting[0].name} needs {waiting[0].estimate_mb:,} MB, the most free on "
                f"the chosen GPUs is {best:,} MB (used by other processes); it starts when that frees up."
            )

    def _launch(self, job: Job, gpu: int | None) -> None:
        s = self.session
        previous = state.read_status(job.dir) or {}
        same = previous.get("fingerprint") == job.exp.fingerprint
        job.attempt = (previous.get("attempt") or 0) + 1 if same else 1
        job.gpu = gpu
        s.prepare_dir(job)
        job.started = state.now()
        job.started_mono = time.monotonic()
        status = {
            "state": state.RUNNING,
            "fingerprint": job.exp.fingerprint,
            "host": state.hostname(),
            "gpu": "cpu" if gpu is None else gpu,
            "started": job.started,
            "heartbeat": job.started,
            "attempt": job.attempt,
            "pid": None,
            "pid_start_time": None,
            "step": previous.get("step") if same else None,
            "total_steps": job.exp.max_steps,
            "ended": None,
            "exit_code": None,
            "error": None,
            "scheduler_pid": os.getpid(),
            "retries": previous.get("retries", []) if same else [],
            "run_s_before": state.earlier_attempts_s(previous) if same else 0.0,  # the time of every attempt
        }
        state.write_status(job.dir, status)
        cmd = self._command(job)
        env = {**self.machine.environ, **self.machine.env_overrides(gpu)}
        how = jobkinds.activity(job.kind, job.benchmarks) or {
            "resume": "resuming from its last checkpoint", "adopt": ""}.get(job.action, "from the start")
        state.append_log_mark(job.dir, f"attempt {job.attempt} on {job.gpu_label} ({how}): {shlex.join(cmd)}")
        with open(job.dir / state.LOG_FILE, "ab") as log:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        job.handle = ChildHandle(job.name, proc, job.gpu_label)
        job.pid = proc.pid
        job.pid_start_time = state.process_start_time(job.pid)
        # The worker sets these too, first thing; both writes carry the same values.
        state.update_status(job.dir, pid=job.pid, pid_start_time=job.pid_start_time)
        job.action = "resume"
        self.running[job.name] = job
        assert s.reporter is not None
        s.reporter.started(job.name, job.gpu_label, job.attempt)
        s.aggregate_dirty = True

    def _launch_failed(self, job: Job, exc: OSError) -> None:
        """A launch cut short by a full disk: a started worker runs on; otherwise record why."""
        s = self.session
        assert s.reporter is not None
        if job.handle is not None and job.name not in self.running:
            job.action = "resume"
            self.running[job.name] = job  # it writes its own pid; it is reaped as usual
            s.reporter.started(job.name, job.gpu_label, job.attempt)
            return
        error = f"not started: {type(exc).__name__}: {exc}"
        state.write_status_best_effort(job.dir, state=state.FAILED, cause="disk_full", error=error,
                                       pid=None, ended=state.now())
        s.results[job.name] = state.FAILED
        s.reporter.finished(job.name, state.FAILED, f"on {job.gpu_label}: {error}")

    def _check_stalls(self) -> None:
        """Kill workers whose heartbeat is older than the stall timeout (frozen, not just slow)."""
        now_mono = time.monotonic()
        if now_mono - self._last_stall_check < STALL_CHECK_EVERY_S:
            return
        self._last_stall_check = now_mono
        now = state.now()
        for job in self.running.values():
            if job.stall_killed or job.handle is None or job.stop_sent:
                continue
            status = state.read_status(job.dir) or {}
            beat = status.get("heartbeat")
            beat = beat if isinstance(beat, (int, float)) and not isinstance(beat, bool) else job.started
            if now - max(beat, job.started) > self.opts.stall_timeout:
                job.stall_killed = True
                job.handle.kill()  # SIGTERM stays pending in a stopped process
                message = (f"{job.name}: no heartbeat for {human_seconds(now - beat)} "
                           f"(stall timeout {human_seconds(self.opts.stall_timeout)}): killed")
                state.append_log_mark(job.dir, message)
                assert self.session.reporter is not None
                self.session.reporter.info(message)

    # -- reaping --------------------------------------------------------------------------

    def _reap(self) -> None:
        for job in list(self.running.values()):
            assert job.handle is not None
            ending = job.handle.poll()
            if ending is not None:
                self._finish(job, ending.rc)

    def _finish(self, job: Job, rc: int | None) -> None:
        """Record the final state of a worker that has exited (rc None: not our child)."""
        s = self.session
        del self.running[job.name]
        ending = outcomes.Ending(rc, pid=job.pid, stop_sent=job.stop_sent, killed=job.killed,
                                 stall_killed=job.stall_killed, stall_timeout=human_seconds(self.opts.stall_timeout))

        def blame_the_disk(fields: dict, status: dict) -> None:
            if fields.get("state", status.get("state")) == state.FAILED:
                full = self._disk_full_evidence(job, fields.get("error") or status.get("error"))
                if full:
                    fields.update(cause=outcomes.CAUSE_DISK_FULL, error=f"{fields.get('error') or status.get('error')} ({full})")

        status = endings.record(job.dir, ending, amend=blame_the_disk)
        if status.get("cause") == outcomes.CAUSE_DISK_FULL and not s.disk_full:
            s.on_disk_full(OSError(errno.ENOSPC, "No space left on device", str(job.dir)))
        final = status.get("state", state.FAILED)
        retry = None
        if not self.stopping and final == state.FAILED:
            retry = outcomes.retry_plan(ending, status, _log_tail_since_launch(job.dir), tries_left=job.tries_left,
                                        training=job.exp.config["training"], runtime=job.runtime)
        assert s.reporter is not None
        duration = human_seconds(status.get("ended", state.now()) - (status.get("started") or job.started))
        if final == state.FAILED:
            detail = f"after {duration} on {job.gpu_label}: {status.get('error') or 'exit ' + str(status.get('exit_code'))}"
        else:
            detail = f"in {duration} on {job.gpu_label}"
        if retry is not None:
            self._schedule_retry(job, status, retry, detail)
        else:
            s.results[job.name] = final
            s.reporter.finished(job.name, final, detail)
        s.aggregate_dirty = True

    def _disk_full_evidence(self, job: Job, error: str | None) -> str | None:
        """Why a failed worker's failure looks like a full disk, or None.

        A worker that ran out of space often cannot even write its traceback, so the
        free space left on its file system counts as evidence too.
        """
        text = f"{error or ''}\n{_log_tail_since_launch(job.dir)}"
        if outcomes.mentions(text, outcomes.DISK_FULL_MARKERS):
            return "the disk is full: No space left on device"
        try:
            free = shutil.disk_usage(job.dir).free
        except OSError:
            return None
        if free < DISK_LOW_BYTES:
            return f"the disk is full: No space left on device, {human_bytes(free)} free at {job.dir}"
        return None

    def _schedule_retry(self, job: Job, status: dict, retry: outcomes.Retry, detail: str) -> None:
        cause, runtime = retry.cause, retry.runtime
        job.tries_left -= 1
        job.runtime = runtime
        job.handle = None
        job.pid = job.pid_start_time = None
        job.stall_killed = job.stop_sent = job.killed = False
        job.kill_at = None
        change = ", ".join(f"{k}={v}" for k, v in runtime.items()) or "same settings"
        record = {"attempt": job.attempt, "cause": cause, "at": state.now(), **runtime}
        state.update_status(job.dir, retries=[*status.get("retries", []), record])
        how = f"with {change} (same effective batch)" if runtime and cause == outcomes.CUDA_OOM_RETRY else "from its last checkpoint"
        message = f"{cause} on attempt {job.attempt} ({detail.split(':', 1)[0]}); retrying {how}"
        state.append_log_mark(job.dir, f"{job.name}: {message}")
        assert self.session.reporter is not None
        self.session.reporter.retrying(job.name, message)
        self.queue.appendleft(job)

    # -- stopping --------------------------------------------------------------------------

    def _kill_overdue(self) -> None:
        """Kill cancelled workers that outlived the grace period."""
        now = time.monotonic()
        for job in self.running.values():
            if job.kill_at is not None and now >= job.kill_at and not job.killed and job.handle is not None:
                job.killed = True
                job.handle.kill()

    def _stop_all(self) -> None:
        s = self.session
        assert s.reporter is not None
        if not self.stopping:
            self.stopping = True
            self.kill_deadline = time.monotonic() + self.opts.grace_seconds
            self.queue.clear()
            # At once, not throttled: readers and hand-offs must not see a queue that is gone, and
            # `perl cancel` must see `stopping` (its SIGTERM to a run that is not would kill workers).
            s.write_aggregate(force=True)
            if self.running:
                s.reporter.info(
                    f"stopping: asked {len(self.running)} worker(s) to save a checkpoint and exit "
                    f"(up to {self.opts.grace_seconds:g}s); press Ctrl+C again to kill them now."
                )
            for job in self.running.values():
                job.stop_sent = True
                if job.handle is not None:
                    job.handle.terminate()
        if s.stop_requests >= 2 or time.monotonic() >= self.kill_deadline:
            for job in self.running.values():
                if not job.killed and job.handle is not None:
                    job.killed = True
                    job.handle.kill()
