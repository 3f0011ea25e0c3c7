"""A synthetic worker that follows the worker protocol of `perl run`, in milliseconds.

    python tests/fake_worker.py <exp_dir>

Like `python -m perl_cli.train`: it reads config.json (and its `runtime` overrides),
writes status.json (running → completed / failed / interrupted, with step, heartbeat,
pid and pid_start_time), appends metrics.jsonl, saves `checkpoints/checkpoint-N` every
`training.save_steps` and resumes from the newest one, and on SIGTERM saves a
checkpoint and exits 143 as `interrupted`. Knobs, all from the environment:

- PERL_FAKE_STEP_SECONDS: seconds per step (default 0.02)
- PERL_FAKE_LAUNCH_LOG: append one line "<name> <pid>" per launch
- PERL_FAKE_TIMING_LOG: append one JSON line per exit: name, start, end, gpu env
- PERL_FAKE_PLAN: JSON {experiment name: {"kill_self_at": N, "fail_at": N, "exit_code": N,
  "ignore_term": true, "freeze_at": N (SIGSTOP itself, on attempt 1 only),
  "first_attempt_step_seconds": S (seconds per step on attempt 1 only: to outlive a time limit once),
  "hold_at": N, "until": PATH (a barrier: after step N, wait until PATH exists, heartbeating;
  SIGTERM still stops it)}}
- PERL_TEST_FAIL_AT_STEP="N:oom": raise a CUDA out-of-memory error at step N, unless
  config.json's `runtime` already changed the batch (so the retry succeeds) — the same
  hook as the real worker's.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

T0 = time.time()

from perl_cli import outcomes, state, worker_lock  # noqa: E402  (timestamp first: the benchmark measures startup)

stop = False


def on_term(signum: int, frame: object) -> None:
    global stop
    stop = True


def log_timing(name: str, outcome: str) -> None:
    path = os.environ.get("PERL_FAKE_TIMING_LOG")
    if path:
        row = {"name": name, "start": T0, "end": time.time(), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
               "perl_gpu": os.environ.get("PERL_GPU"), "outcome": outcome, "pid": os.getpid()}
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def finish(exp_dir: Path, name: str, code: int, final: str, **fields: object) -> None:
    state.update_status(exp_dir, state=final, exit_code=code, ended=state.now(), heartbeat=state.now(), **fields)
    log_timing(name, final)
    sys.exit(code)


def save_checkpoint(ckpt_dir: Path, step: int) -> None:
    """A checkpoint as the Trainer leaves it: complete once trainer_state.json exists."""
    path = ckpt_dir / f"checkpoint-{step}"
    path.mkdir(parents=True, exist_ok=True)
    state.atomic_write_json(path / "trainer_state.json", {"global_step": step})


def main() -> None:
    exp_dir = Path(sys.argv[1])
    signal.signal(signal.SIGTERM, on_term)
    try:
        worker_lock.acquire(exp_dir)  # as the real worker: never two workers on one directory
    except worker_lock.Busy as exc:
        print(f"[perl] error: {exc}", file=sys.stderr, flush=True)
        sys.exit(outcomes.EXIT_BUSY)
    config = json.loads((exp_dir / state.CONFIG_FILE).read_text())
    name = config["name"]
    training = {**config["training"], **config.get("runtime", {})}
    if os.environ.get("PERL_FAKE_LAUNCH_LOG"):
        with open(os.environ["PERL_FAKE_LAUNCH_LOG"], "a", encoding="utf-8") as f:
            f.write(f"{name} {os.getpid()}\n")
    plan = json.loads(os.environ.get("PERL_FAKE_PLAN") or "{}").get(name, {})
    if plan.get("ignore_term"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    step_s = float(os.environ.get("PERL_FAKE_STEP_SECONDS", "0.02"))
    if "first_attempt_step_seconds" in plan and (state.read_status(exp_dir) or {}).get("attempt") == 1:
        step_s = float(plan["first_attempt_step_seconds"])
    oom_at = None
    hook = os.environ.get("PERL_TEST_FAIL_AT_STEP", "")
    if hook.endswith(":oom") and "per_device_train_batch_size" not in config.get("runtime", {}):
        oom_at = int(hook.split(":")[0])
    total = training["max_steps"]
    ckpt_dir = exp_dir / state.CHECKPOINT_DIR
    last = state.last_checkpoint(exp_dir)
    step = int(last.name.removeprefix("checkpoint-")) if last else 0
    pid = os.getpid()
    state.update_status(exp_dir, state=state.RUNNING, pid=pid, pid_start_time=state.process_start_time(pid),
                        step=step, total_steps=total, heartbeat=state.now(), resumed_from=step or None)
    print(f"fake worker {name}: batch {training['per_device_train_batch_size']}, "
          f"accumulation {training['gradient_accumulation_steps']}, from step {step}", flush=True)
    while step < total:
        if stop:
            save_checkpoint(ckpt_dir, step)
            print(f"SIGTERM: saved checkpoint-{step}", flush=True)
            finish(exp_dir, name, 143, state.INTERRUPTED)
        time.sleep(step_s)
        step += 1
        if step == plan.get("kill_self_at"):
            os.kill(pid, signal.SIGKILL)
        if step == plan.get("freeze_at") and (state.read_status(exp_dir) or {}).get("attempt") == 1:
            os.kill(pid, signal.SIGSTOP)
        if step == oom_at:
            print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", flush=True)
            finish(exp_dir, name, 1, state.FAILED, error="OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
        if step == plan.get("fail_at"):
            print("Traceback (most recent call last):\nRuntimeError: synthetic failure", flush=True)
            finish(exp_dir, name, plan.get("exit_code", 1), state.FAILED, error="RuntimeError: synthetic failure")
        state.append_jsonl(exp_dir / state.METRICS_FILE, {"step": step, "reward": step / total,
                                                          "batch": training["per_device_train_batch_size"]})
        if step % training["save_steps"] == 0:
            save_checkpoint(ckpt_dir, step)
        state.update_status(exp_dir, step=step, heartbeat=state.now())
        if step == plan.get("hold_at"):
            while not os.path.exists(plan["until"]) and not stop:
                time.sleep(0.02)
    finish(exp_dir, name, 0, state.COMPLETED)


if __name__ == "__main__":
    main()
