"""Trainer callbacks: metrics and progress, graceful stop, AdaLoRA, the failure test hook.

Training logic lives here rather than in a fork of GRPOTrainer, so TRL upgrades stay
cheap; the one exception is a method's loss term (trainer.py), which no callback reaches.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from perl_cli import state
from perl_cli.train.status import StatusWriter

# TRL's log keys -> metrics.jsonl names (the rest are kept under TRL's own names).
_RENAMED = {
    "completions/mean_length": "completion_length",
    "completions/min_length": "completion_length_min",
    "completions/max_length": "completion_length_max",
    "step_time": "trl_step_time",
}
# Summary keys Trainer logs once at the end of train(); they are not a step's metrics.
_SUMMARY_KEYS = ("train_runtime", "train_loss", "train_samples_per_second", "train_steps_per_second", "total_flos")


def metrics_row(logs: dict[str, Any], step: int, step_seconds: float | None) -> dict[str, Any]:
    """One metrics.jsonl object from a Trainer log dict."""
    row: dict[str, Any] = {"step": step, "time": state.now()}
    for key, value in logs.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if key.startswith("rewards/") and key.endswith("/mean"):
            name = key[len("rewards/") : -len("/mean")].removesuffix("_reward")
            row[f"reward/{name}"] = value
        elif key.startswith("rewards/") and key.endswith("/std"):
            name = key[len("rewards/") : -len("/std")].removesuffix("_reward")
            row[f"reward_std/{name}"] = value
        else:
            row[_RENAMED.get(key, key)] = value
    if step_seconds is not None:
        row["step_seconds"] = step_seconds
    return row


def truncate_metrics(path: Path, last_step: int) -> int:
    """Drop rows after `last_step` (a resumed run redoes them); returns rows kept."""
    rows = [r for r in state.read_jsonl(path) if isinstance(r.get("step"), int) and r["step"] <= last_step]
    if path.exists():
        state.atomic_write_text(path, "".join(_dumps(r) + "\n" for r in rows))
    return len(rows)


def _dumps(row: dict[str, Any]) -> str:
    import json

    return json.dumps(row, sort_keys=True)


class ProgressCallback(TrainerCallback):
    """Writes metrics.jsonl and status.json's step, and prints a progress line per log."""

    def __init__(self, metrics_path: Path, status: StatusWriter, total_steps: int) -> None:
        self.metrics_path = metrics_path
        self.status = status
        self.total_steps = total_steps
        self.rewards: list[tuple[int, float]] = []  # (step, mean reward) of every logged window
        self._step_started: float | None = None
        self._window: list[float] = []  # seconds of the steps since the last log
        self.step_seconds: list[float] = []

    def on_step_begin(self, args: Any, state_: Any, control: Any, **kwargs: Any) -> None:
        self._step_started = time.perf_counter()

    def on_step_end(self, args: Any, state_: Any, control: Any, **kwargs: Any) -> None:
        if self._step_started is not None:
            seconds = time.perf_counter() - self._step_started
            self._window.append(seconds)
            self.step_seconds.append(seconds)
        self.status.update(step=state_.global_step)

    def on_log(self, args: Any, state_: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not logs or any(k in logs for k in _SUMMARY_KEYS) or "reward" not in logs:
            return
        step_seconds = sum(self._window) / len(self._window) if self._window else None
        self._window = []
        row = metrics_row(logs, state_.global_step, step_seconds)
        state.append_jsonl(self.metrics_path, row)
        self.rewards.append((state_.global_step, float(row["reward"])))
        parts = [f"step {state_.global_step}/{self.total_steps}", f"reward {row['reward']:.3f}"]
        for key in ("reward/correct", "loss", "kl", "learning_rate", "completion_length"):
            if key in row:
                parts.append(f"{key.split('/')[-1]} {row[key]:.4g}")
        if step_seconds is not None:
            parts.append(f"{step_seconds:.2f}s/step")
        print("[perl] " + "  ".join(parts), flush=True)


class Interrupted(BaseException):
    """A stop signal arrived before training began: there is nothing to checkpoint.

    A BaseException, like KeyboardInterrupt, so that library code catching Exception
    (dataset loaders, model builders) cannot turn it into an ordinary failure.
    """


class StopOnSignal(TrainerCallback):
    """SIGTERM/SIGINT: finish the current step, save a checkpoint, stop training.

    Once training runs, the handler only sets a flag; the callback acts at the next
    step boundary, where the Trainer can save a consistent checkpoint. Before that
    (model build, data, base evaluation: possibly minutes) there is nothing to save,
    so the handler raises `Interrupted` to stop at once. A second signal of the same
    kind falls through to the default action (immediate exit).
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.training = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum
        name = signal.Signals(signum).name
        if not self.training:
            print(f"[perl] received {name} before training started: stopping", flush=True)
            raise Interrupted(name)
        print(f"[perl] received {name}: checkpointing at the end of this step", flush=True)

    def on_train_begin(self, args: Any, state_: Any, control: Any, **kwargs: Any) -> None:
        self.training = True

    def on_step_end(self, args: Any, state_: Any, control: Any, **kwargs: Any) -> Any:
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True
        return control


class AdaLoraAllocator(TrainerCallback):
    """Calls AdaLoRA's rank allocation after every optimizer step, and keeps it resumable.

    TRL never calls `update_and_allocate`, so without this AdaLoRA's ranks never
    change. It needs the gradients, which exist in on_optimizer_step (zeroed by
    on_step_end). Steps are passed 1-based so that the last step equals total_step
    and peft fixes the final rank pattern there.

    Checkpoints: once peft has a rank pattern it saves *resized* tensors, which a
    fresh full-rank model cannot load on resume. So around a checkpoint save the
    pattern is held aside (tensors are saved full size, masked ranks as zeros) and
    written next to the checkpoint, where a resumed run picks it up. The allocator's
    importance averages are not checkpointed: after a resume they restart from zero.
    Must be registered after every callback that may request a save.
    """

    STATE_FILE = "perl_adalora.json"

    def __init__(self, model: Any) -> None:
        self.config = model.peft_config["default"]
        self._held: Any = None

    def on_train_begin(self, args: Any, state_: Any, control: Any, **kwargs: Any) -> None:
        if state_.global_step > 0:  # resumed: Trainer has loaded the checkpoint's state
            saved = state.read_json(Path(args.output_dir) / f"checkpoint-{state_.global_step}" / self.STATE_FILE)
            if isinstance(saved, dict):
                self.config.rank_pattern = saved.get("rank_pattern")

    def on_optimizer_step(self, args: Any, state_: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        model.base_model.update_and_allocate(state_.global_step + 1)

    def on_step_end(self, args: Any, state_: Any, control: Any, **kwargs: Any) -> None:
        if control.should_save:
            self._held, self.config.rank_pattern = self.config.rank_pattern, None

    def on_save(self, args: Any, state_: Any, control: Any, **kwargs: Any) -> None:
        checkpoint = Path(args.output_dir) / f"checkpoint-{state_.global_step}"
        if checkpoint.is_dir():
            state.atomic_write_json(checkpoint / self.STATE_FILE, {"rank_pattern": self._held})
        self.config.rank_pattern, self._held = self._held, None


def adalora_budget(model: Any) -> dict[str, Any]:
    """AdaLoRA's rank budget at the start and as finally allocated, for eval.json.

    ``adalora_rank_pattern``: each layer's current rank (its non-zero singular values);
    ``adalora_rank_budget_initial`` / ``_final``: the ranks summed over layers;
    ``trainable_params_final``: the parameters of the kept ranks (a rank of a layer with
    shapes in × out is one row of A, one column of B and one singular value).
    """
    from peft.tuners.adalora import AdaLoraLayer

    init_r = int(model.peft_config["default"].init_r)
    ranks: dict[str, int] = {}
    final_params = 0
    for name, module in model.named_modules():
        if isinstance(module, AdaLoraLayer) and "default" in module.lora_E:
            kept = int((module.lora_E["default"] != 0).sum().item())
            ranks[name.removeprefix("base_model.model.")] = kept
            out_f, in_f = module.lora_B["default"].shape[0], module.lora_A["default"].shape[1]
            final_params += kept * (in_f + out_f + 1)
    return {
        "adalora_rank_pattern": ranks,
        "adalora_initial_rank": init_r,
        "adalora_rank_budget_initial": init_r * len(ranks),
        "adalora_rank_budget_final": sum(ranks.values()),
        "trainable_params_final": final_params,
    }


class FailAtStep(TrainerCallback):
    """Test hook: ``PERL_TEST_FAIL_AT_STEP=N[:oom][:always]`` raises as step N begins.

    ``oom`` raises a real ``torch.cuda.OutOfMemoryError`` (what the scheduler's retry
    logic looks for), otherwise a RuntimeError. It fires once per experiment
    directory (a marker file remembers it), so a retried run gets past step N — unless
    ``always`` is given.
    """

    ENV = "PERL_TEST_FAIL_AT_STEP"

    def __init__(self, spec: str, exp_dir: Path) -> None:
        parts = spec.split(":")
        self.step = int(parts[0])
        self.oom = "oom" in parts[1:]
        self.always = "always" in parts[1:]
        self.marker = exp_dir / ".perl_test_failed_once"

    @classmethod
    def from_env(cls, exp_dir: Path) -> FailAtStep | None:
        spec = os.environ.get(cls.ENV, "").strip()
        return cls(spec, exp_dir) if spec else None

    def on_step_begin(self, args: Any, state_: Any, control: Any, **kwargs: Any) -> None:
        if state_.global_step + 1 != self.step:
            return
        if not self.always:
            if self.marker.exists():
                return
            self.marker.write_text(f"{self.step}\n")
        if self.oom:
            import torch

            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total capacity; "
                f"21.80 GiB already allocated) [{self.ENV} test hook at step {self.step}]"
            )
        raise RuntimeError(f"{self.ENV} test hook: failing at step {self.step}")
