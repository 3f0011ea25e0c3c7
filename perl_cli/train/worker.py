"""The worker: run one experiment directory from config.json to eval.json.

Exit codes: 0 completed; 1 failed (traceback in train.log, one-line error in
status.json); 2 config error; 143 interrupted by SIGTERM and 130 by SIGINT (128 +
signal number, the shell convention), in both cases after saving a checkpoint that
the next run resumes from; 75 another live worker holds the experiment's lock
(perl_cli/worker_lock.py), so this one did nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from perl_cli import collapse, outcomes, provenance, state, worker_lock
from perl_cli.config import ConfigError  # one error type for an unrunnable config: exit 2
from perl_cli.data import countdown
from perl_cli.models import ModelError
from perl_cli.train.grpo import check_config
from perl_cli.train.status import StatusWriter

# The exit codes are the contract with both backends and diagnose (perl_cli/outcomes.py).
EXIT_OK = outcomes.EXIT_OK
EXIT_FAILED = outcomes.EXIT_FAILED
EXIT_CONFIG_ERROR = outcomes.EXIT_CONFIG_ERROR
EXIT_SIGINT = outcomes.EXIT_SIGINT  # 130
EXIT_SIGTERM = outcomes.EXIT_SIGTERM  # 143
EXIT_BUSY = outcomes.EXIT_BUSY  # 75: another live worker holds this experiment; nothing done

RUNTIME_ALLOWED = ("per_device_train_batch_size", "gradient_accumulation_steps")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip().rstrip(":")[:500]


def run_experiment(exp_dir: str | Path) -> int:
    """Run (or resume) the experiment in `exp_dir`; returns the process exit code."""
    exp_dir = Path(exp_dir).resolve()
    config = apply_runtime(state.read_json(exp_dir / state.CONFIG_FILE))
    problems = check_config(config)
    fingerprint = config.get("fingerprint") if isinstance(config, dict) else None
    total = config.get("training", {}).get("max_steps") if isinstance(config, dict) else None
    if not exp_dir.is_dir():
        print(f"[perl] error: experiment directory {exp_dir} does not exist", file=sys.stderr, flush=True)
        return EXIT_CONFIG_ERROR
    try:
        # Held until the experiment's end is written (the kernel frees it even on SIGKILL):
        # never two workers on one directory.
        lock_fd = worker_lock.acquire(exp_dir)
    except worker_lock.Busy as exc:
        print(f"[perl] error: {exc}", file=sys.stderr, flush=True)
        return EXIT_BUSY  # status.json is the other worker's: nothing is written
    try:
        return _run_locked(exp_dir, config, problems, fingerprint, total)
    finally:
        os.close(lock_fd)


def _run_locked(exp_dir: Path, config: Any, problems: list[str], fingerprint: Any, total: Any) -> int:
    status = StatusWriter(exp_dir, fingerprint=fingerprint, total_steps=total)
    if problems:
        message = f"invalid {exp_dir / state.CONFIG_FILE}: " + "; ".join(problems)
        print(f"[perl] error: {message}", file=sys.stderr, flush=True)
        status.finish(state.FAILED, EXIT_CONFIG_ERROR, error=message[:500])
        return EXIT_CONFIG_ERROR

    from perl_cli.train.callbacks import Interrupted, StopOnSignal

    stopper = StopOnSignal()
    stopper.install()  # before the slow imports, so an early SIGTERM is not lost
    status.start()
    try:
        outcome = _run(exp_dir, config, status, stopper)
    except Interrupted:
        code = _signal_exit_code(stopper.received)
        status.finish(state.INTERRUPTED, code)
        return code
    except ConfigError as exc:
        print(f"[perl] error: {exc}", file=sys.stderr, flush=True)
        status.finish(state.FAILED, EXIT_CONFIG_ERROR, error=_one_line(exc))
        return EXIT_CONFIG_ERROR
    except (ModelError, countdown.DataError) as exc:
        # Our own errors carry the whole story in their message; no traceback needed.
        print(f"[perl] error: {exc}", file=sys.stderr, flush=True)
        status.finish(state.FAILED, EXIT_FAILED, error=_one_line(exc))
        return EXIT_FAILED
    except BaseException as exc:  # noqa: BLE001 - every failure must end in status.json
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        status.finish(state.FAILED, EXIT_FAILED, error=_one_line(exc))
        return EXIT_FAILED
    finally:
        stopper.uninstall()
    return outcome


def apply_runtime(config: Any) -> Any:
    """The config with the scheduler's runtime adjustments applied over `training`."""
    if not isinstance(config, dict) or not isinstance(config.get(state.RUNTIME_KEY), dict):
        return config
    adjust = {k: v for k, v in config[state.RUNTIME_KEY].items() if k in RUNTIME_ALLOWED}
    if adjust and isinstance(config.get("training"), dict):
        print(f"[perl] runtime adjustments from the scheduler: {adjust}", flush=True)
        config = {**config, "training": {**config["training"], **adjust}}
    return config


def _run(exp_dir: Path, config: dict[str, Any], status: StatusWriter, stopper: Any) -> int:
    started = time.time()
    from perl_cli.tracking.dashboard_backends import prepare_environment

    prepare_environment(exp_dir, config)  # before TRL is imported: it imports trackio
    from perl_cli.train.session import TrainingSession  # heavy imports happen here

    provenance.record(exp_dir)  # what produced this run (after torch is imported: CUDA, GPUs)
    session = TrainingSession(exp_dir, config, status, stopper)
    resume = state.last_checkpoint(exp_dir)
    status.update(resumed_from=_checkpoint_step(resume))  # readers and tests see where this attempt began
    session.prepare(resume)
    if stopper.received is None:
        session.train(resume)
    if stopper.received is not None:
        code = _signal_exit_code(stopper.received)
        print(f"[perl] interrupted at step {session.global_step}; exiting with {code}", flush=True)
        status.finish(state.INTERRUPTED, code, step=session.global_step)
        return code
    collapsed = session.collapsed
    if collapsed is not None:  # training.stop_on_collapse: its own cause, never retried
        message = f"training collapsed from step {collapsed.step:g}: {collapsed.text()}"
        print(f"[perl] {message}; stopped at step {session.global_step}", flush=True)
        status.finish(state.FAILED, EXIT_FAILED, error=message[:500], step=session.global_step, cause=collapse.CAUSE)
        return EXIT_FAILED
    results = session.finish(started)
    state.atomic_write_json(exp_dir / state.EVAL_FILE, results)
    print(f"[perl] completed: {_summary(results)}", flush=True)
    status.finish(state.COMPLETED, EXIT_OK, step=session.global_step)
    return EXIT_OK


def _checkpoint_step(checkpoint: Path | None) -> int | None:
    """The step of `checkpoints/checkpoint-N` (None: a start from scratch)."""
    if checkpoint is None:
        return None
    step = checkpoint.name.rpartition("-")[2]
    return int(step) if step.isdigit() else None


def _signal_exit_code(signum: int | None) -> int:
    return EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM


def _summary(results: dict[str, Any]) -> str:
    parts = []
    for key in ("base_accuracy_sampled", "accuracy_sampled", "base_accuracy_greedy", "accuracy_greedy"):
        if results.get(key) is not None:
            parts.append(f"{key} {100 * results[key]:.1f}%")
    parts.append(f"{results.get('seconds_per_step', 0):.2f}s/step")
    return ", ".join(parts)
