"""The worker: run one experiment directory from config.json to eval.json.

Exit codes: 0 completed; 1 failed (traceback in train.log, one-line error in
status.json); 2 config error; 143 interrupted by SIGTERM and 130 by SIGINT (128 +
signal number, the shell convention), in both cases after saving a checkpoint that
the next run resumes from.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from perl_cli import outcomes, state
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

BASE_EVAL_FILE = "base_eval.json"  # the base model's accuracy, kept for resumed runs
INITIAL_ADAPTER_DIR = "initial_adapter"  # PiSSA/MiLoRA: needed to convert on save
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
    from perl_cli.train.session import TrainingSession  # heavy imports happen here

    session = TrainingSession(exp_dir, config, status, stopper)
    resume = state.last_checkpoint(exp_dir)
    session.prepare(resume)
    if stopper.received is None:
        session.train(resume)
    if stopper.received is not None:
        code = _signal_exit_code(stopper.received)
        print(f"[perl] interrupted at step {session.global_step}; exiting with {code}", flush=True)
        status.finish(state.INTERRUPTED, code, step=session.global_step)
        return code
    results = session.finish(started)
    state.atomic_write_json(exp_dir / state.EVAL_FILE, results)
    print(f"[perl] completed: {_summary(results)}", flush=True)
    status.finish(state.COMPLETED, EXIT_OK, step=session.global_step)
    return EXIT_OK


def _signal_exit_code(signum: int | None) -> int:
    return EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM


def _summary(results: dict[str, Any]) -> str:
    parts = []
    for key in ("base_accuracy_sampled", "accuracy_sampled", "base_accuracy_greedy", "accuracy_greedy"):
        if results.get(key) is not None:
            parts.append(f"{key} {100 * results[key]:.1f}%")
    parts.append(f"{results.get('seconds_per_step', 0):.2f}s/step")
    return ", ".join(parts)


def peak_memory_mb(on_gpu: bool) -> float:
    """Peak CUDA allocation on GPU, peak resident set size of this process on CPU."""
    if on_gpu:
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def atomic_save_adapter(model: Any, exp_dir: Path, **save_kwargs: Any) -> int:
    """save_pretrained into a temporary directory, then rename the files into place.

    Returns the size in bytes of the adapter's weights file(s).
    """
    tmp = exp_dir / ".adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), **save_kwargs)
    size = _weights_size(tmp)
    for path in sorted(tmp.iterdir()):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(path, exp_dir / path.name)
    shutil.rmtree(tmp, ignore_errors=True)
    return size


def adapter_size(model: Any, exp_dir: Path) -> int:
    """Bytes of the adapter's weights file as saved at its own rank, without keeping it.

    Measured the same way for every method (a plain save_pretrained), so that PiSSA and
    MiLoRA are not charged for their rank-2r converted file.
    """
    tmp = exp_dir / ".adapter-size.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp))
        return _weights_size(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


FULL_MODEL_DIR = "full_model"  # method = "full": the trained model, loadable with from_pretrained


def save_full_model(model: Any, tokenizer: Any, exp_dir: Path) -> int:
    """Full fine-tuning's checkpoint: the whole model (and tokenizer) in exp_dir/full_model,
    written in a temporary directory that replaces it at once; returns the weights' bytes."""
    final = exp_dir / FULL_MODEL_DIR
    tmp = exp_dir / ".full_model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    size = sum(p.stat().st_size for p in tmp.iterdir() if p.is_file() and p.name.endswith(".safetensors"))
    for path in tmp.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    old = exp_dir / ".full_model.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return size


def _weights_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file() and p.name.startswith("adapter_model"))
