"""The Trainer callback that records spectra and gradient flow every N steps.

Writes `spectral_history.json` and `gradient_flow.json` (readable without torch, by
`perl report`) with `.pt` twins for torch users, atomically, into the experiment
directory. Each snapshot records the seconds it took, so its overhead is measured.
On resume, entries after the checkpoint's step are dropped, keeping histories continuous.
Listeners (the dashboard, perl_cli/tracking/dashboard.py) get each snapshot as it is taken:
`spectral(step, history)` and `gradient(step, history)`, so nothing is computed twice.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from perl_cli.state import atomic_write_json, read_json
from perl_cli.tracking import geometry, gradients, spectral

SPECTRAL_FILE = "spectral_history.json"
GRADIENT_FILE = "gradient_flow.json"
# Methods whose initialisation moves the base weights: their update is BA − B₀A₀.
BASE_MOVING_METHODS = ("pissa", "milora")


class TrackingCallback(TrainerCallback):
    def __init__(self, exp_dir: Path | str, tracker: dict[str, Any], method: str, listeners: list[Any] | None = None) -> None:
        self.dir = Path(exp_dir)
        self.listeners = list(listeners or [])
        self.spectral_every = tracker["spectral_log_frequency"] if tracker["enable_spectral_tracking"] else 0
        self.gradient_every = tracker["gradient_log_frequency"] if tracker["enable_gradient_tracking"] else 0
        self.method = method
        self.initial: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.spectral: list[dict] = []
        self.base: geometry.BaseSubspaces | None = None
        self.base_seconds: float | None = None
        self.gradient: list[dict] = []

    @property
    def enabled(self) -> bool:
        return bool(self.spectral_every or self.gradient_every)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        step = state.global_step  # > 0 when resuming from a checkpoint
        self.spectral = _history(self.dir / SPECTRAL_FILE, step)
        self.gradient = _history(self.dir / GRADIENT_FILE, step)
        if self.spectral_every and self.method in BASE_MOVING_METHODS and model is not None:
            initial_dir = self.dir / "initial_adapter"
            # The initial factors are what training started from, even after a resume:
            # the worker saved them before the first step.
            self.initial = _initial_from_saved(model, initial_dir) if step > 0 else spectral.capture_initial(model)
        if self.spectral_every and model is not None and self.base is None:
            # The base weights' subspaces, once per experiment (geometry.py): every snapshot measures
            # the update against them.
            started = time.perf_counter()
            self.base = geometry.BaseSubspaces.of(model, self.initial)
            self.base_seconds = time.perf_counter() - started
        if self.spectral_every and step == 0 and model is not None:
            self._record_spectrum(model, 0)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        step = state.global_step + 1  # the optimizer step about to be taken
        if self.gradient_every and model is not None and step % self.gradient_every == 0:
            started = time.perf_counter()
            norms = gradients.gradient_norms(model)
            self.gradient.append({"step": step, "seconds": time.perf_counter() - started, "layers": norms})
            self._write(GRADIENT_FILE, self.gradient)
            for listener in self.listeners:
                listener.gradient(step, self.gradient)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.spectral_every and model is not None and state.global_step % self.spectral_every == 0:
            self._record_spectrum(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        last = self.spectral[-1]["step"] if self.spectral else -1
        if self.spectral_every and model is not None and last != state.global_step:
            self._record_spectrum(model, state.global_step)

    def _record_spectrum(self, model: torch.nn.Module, step: int) -> None:
        started = time.perf_counter()
        layers = spectral.snapshot(model, self.initial, self.base)
        self.spectral.append({"step": step, "seconds": time.perf_counter() - started, "layers": layers})
        self._write(SPECTRAL_FILE, self.spectral)
        for listener in self.listeners:
            listener.spectral(step, self.spectral)

    def _write(self, name: str, history: list[dict]) -> None:
        payload = {"method": self.method, "history": history}
        if name == SPECTRAL_FILE and self.base_seconds is not None:
            payload["base_subspaces_seconds"] = self.base_seconds  # the one-off cost of the geometry's base
        atomic_write_json(self.dir / name, payload)
        torch.save(payload, self.dir / name.replace(".json", ".pt"))


def _history(path: Path, up_to_step: int) -> list[dict]:
    data = read_json(path)
    rows = data.get("history", []) if isinstance(data, dict) else []
    return [r for r in rows if isinstance(r, dict) and r.get("step", 0) <= up_to_step] if up_to_step else []


def _initial_from_saved(model: torch.nn.Module, initial_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
    """(B₀·s, A₀) from the initial adapter the worker saved for weight conversion."""
    from safetensors.torch import load_file

    path = initial_dir / "adapter_model.safetensors"
    if not path.exists():
        return None
    weights = load_file(str(path))
    initial = {}
    for name, module in model.named_modules():
        factors = spectral.update_factors(module)
        if factors is None or hasattr(module, "lora_E"):
            continue
        prefix = name.replace(".default", "")
        a = next((v for k, v in weights.items() if k.startswith(prefix + ".lora_A")), None)
        b = next((v for k, v in weights.items() if k.startswith(prefix + ".lora_B")), None)
        if a is not None and b is not None:
            initial[name] = (b.float() * float(module.scaling[spectral.ADAPTER]), a.float())
    return initial
