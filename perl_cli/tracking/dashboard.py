"""What a training run shows on its dashboard (W&B or trackio), one row per training step.

The worker's own callbacks feed it; nothing here recomputes anything:

- `train/*`: TRL's log dict as Trainer reports it (the names HF's WandbCallback uses);
- `memory/*`: CPU resident set size every step, and CUDA memory (allocated, reserved, peak)
  on a GPU;
- `spectral*`: from each snapshot TrackingCallback takes (every `spectral_log_frequency`
  steps; the SVD is its, not redone): per layer the singular value distribution
  (histogram), effective rank and condition number, and summaries over layers; images of
  every layer's singular values and of the effective rank over steps (`log_spectral_images`);
- `grad_*`: from each gradient snapshot (every `gradient_log_frequency` steps): the norm of
  every module's A and B (or the method's other parameter kinds), flow statistics over
  modules and depth, and the gradient heatmap (`log_gradient_images`);
- the run's summary: the held-out evaluation (base and trained, sampled and greedy, with
  standard errors) and the other numbers of eval.json.

The dashboard's step is the training step, so a resumed attempt continues the same run;
steps its record already holds (logged after the checkpoint it resumes from, before the
interruption) are not logged again. Tags and group follow the seed's scheme: method,
seedN, model size, rN, special conditions; group `{model_size}_{method}`.
"""

from __future__ import annotations

import atexit
import math
import re
import secrets
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from perl_cli import plots, state
from perl_cli.tracking.dashboard_backends import Backend, make

RUN_FILE = "dashboard.json"  # the run id of this experiment directory, kept across resumes
ULTRA_LOW_RANK = 8  # r below this is tagged ultra_low_rank
HIGH_RANK = 128  # r at or above this is tagged high_rank
DATA_SCARCITY = 5000  # fewer training examples than this is tagged data_scarcity
# Trainer's end-of-training log: a run summary, not a step's metrics.
_SUMMARY_KEYS = ("train_runtime", "train_loss", "train_samples_per_second", "train_steps_per_second", "total_flos")
_EVAL_KEYS = ("accuracy_greedy", "accuracy_greedy_se", "accuracy_sampled", "accuracy_sampled_se", "eval_problems",
              "eval_samples_per_problem")


# --- identity: name, id, tags, group -----------------------------------------------------


@dataclass
class Identity:
    project: str
    name: str
    run_id: str
    group: str
    tags: list[str]
    config: dict[str, Any]


def model_size(model_name: str, total_params: int | None) -> str:
    """'deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B' → '1.5B'; else from the parameter count."""
    base = model_name.rsplit("/", 1)[-1]
    found = re.findall(r"(?<![\d.])(\d+(?:[._]\d+)?)[bB](?![a-zA-Z0-9])", base)
    if found:
        return found[-1].replace("_", ".") + "B"
    if not total_params:
        return "unknown"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if total_params >= scale:
            return f"{total_params / scale:.3g}{unit}"
    return str(total_params)


def tags_for(config: dict[str, Any], method: str, uses_rank: bool, size: str) -> list[str]:
    """The seed's tags: method, seedN, model size, rN, special conditions, then the user's own."""
    peft, tracker = config.get("peft") or {}, config.get("tracker") or {}
    rank = peft.get("r")
    data_size = (config.get("dataset") or {}).get("data_size")
    tags = [method, f"seed{(config.get('common') or {}).get('seed')}", size]
    if uses_rank and isinstance(rank, int):
        tags.append(f"r{rank}")
        if rank < ULTRA_LOW_RANK:
            tags.append("ultra_low_rank")
        if rank >= HIGH_RANK:
            tags.append("high_rank")
    if isinstance(data_size, int) and data_size < DATA_SCARCITY:
        tags.append("data_scarcity")
    if tracker.get("enable_spectral_tracking"):
        tags.append("spectral_tracking")
    if tracker.get("enable_gradient_tracking"):
        tags.append("gradient_tracking")
    tags += [str(t) for t in (config.get("wandb") or {}).get("tags") or []]
    return list(dict.fromkeys(t[:64] for t in tags))  # W&B caps a tag at 64 characters


def run_id(exp_dir: Path, name: str, fingerprint: str) -> str:
    """This experiment directory's run id: made once and kept, so every resumed attempt
    continues the same run, while a `--fresh` redo (a new directory) starts a new one."""
    path = exp_dir / RUN_FILE
    saved = state.read_json(path)
    if isinstance(saved, dict) and isinstance(saved.get("run_id"), str) and saved["run_id"]:
        return saved["run_id"]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40]
    new = f"{safe}-{fingerprint[:8]}-{secrets.token_hex(3)}"
    state.atomic_write_json(path, {"run_id": new})
    return new


def identity(exp_dir: Path, config: dict[str, Any], method: str, uses_rank: bool, total_params: int | None) -> Identity:
    w = config.get("wandb") or {}
    name = str(config.get("name") or exp_dir.name)
    size = model_size(str((config.get("model") or {}).get("model_name_or_path", "")).removeprefix("builtin:"), total_params)
    settings = {k: v for k, v in config.items() if isinstance(v, dict) and k != state.RUNTIME_KEY}
    return Identity(
        project=str(w.get("project") or "perl"),
        name=name,
        run_id=run_id(exp_dir, name, str(config.get("fingerprint") or "x")),
        group=f"{size}_{method}",
        tags=tags_for(config, method, uses_rank, size),
        config={**settings, "suite": config.get("suite"), "experiment": name, "fingerprint": config.get("fingerprint"),
                "model_size": size, "total_params": total_params},
    )


# --- metrics from what the callbacks already have ----------------------------------------


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def spectral_metrics(layers: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Per layer: effective rank and condition number; over layers: their summaries."""
    out: dict[str, float] = {}
    ranks, conds, stable, norms = [], [], [], []
    for module, summary in layers.items():
        er, cond = _finite(summary.get("effective_rank")), _finite(summary.get("condition_number"))
        if er is not None:
            out[f"spectral_effective_rank/{module}"] = er
            ranks.append(er)
        if cond is not None:
            out[f"spectral_condition_number/{module}"] = cond
            conds.append(cond)
        if (v := _finite(summary.get("stable_rank"))) is not None:
            stable.append(v)
        if (v := _finite(summary.get("spectral_norm"))) is not None:
            norms.append(v)
    out["spectral/layers"] = float(len(layers))
    if ranks:
        out.update({"spectral/effective_rank_mean": statistics.fmean(ranks), "spectral/effective_rank_min": min(ranks),
                    "spectral/effective_rank_max": max(ranks)})
    if conds:
        out.update({"spectral/condition_number_median": statistics.median(conds),
                    "spectral/condition_number_max": max(conds)})
    if stable:
        out["spectral/stable_rank_mean"] = statistics.fmean(stable)
    if norms:
        out["spectral/spectral_norm_max"] = max(norms)
    return out


_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def gradient_metrics(layers: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per module and parameter kind (A, B, ...) the gradient norm; flow statistics over them."""
    out: dict[str, float] = {}
    by_kind: dict[str, float] = {}
    module_norms: list[float] = []
    by_depth: dict[int, float] = {}
    for module, kinds in layers.items():
        squares = 0.0
        for kind, norm in kinds.items():
            if (value := _finite(norm)) is None:
                continue
            out[f"grad_norm/{module}/{kind}"] = value
            by_kind[kind] = by_kind.get(kind, 0.0) + value * value
            squares += value * value
        module_norms.append(math.sqrt(squares))
        if (found := _LAYER_INDEX.search(module)) is not None:
            depth = int(found.group(1))
            by_depth[depth] = by_depth.get(depth, 0.0) + squares
    total = math.sqrt(sum(by_kind.values()))
    out["grad_flow/total_norm"] = total
    for kind, squares in by_kind.items():
        out[f"grad_flow/norm_{kind}"] = math.sqrt(squares)
    if by_kind.get("A") and "B" in by_kind:
        out["grad_flow/ratio_B_over_A"] = math.sqrt(by_kind["B"] / by_kind["A"])
    if module_norms:
        mean = statistics.fmean(module_norms)
        out.update({"grad_flow/module_norm_mean": mean, "grad_flow/module_norm_max": max(module_norms),
                    "grad_flow/module_norm_min": min(module_norms)})
        if mean > 0 and len(module_norms) > 1:
            out["grad_flow/module_norm_cv"] = statistics.pstdev(module_norms) / mean
    if len(by_depth) > 1:
        first, last = by_depth[min(by_depth)], by_depth[max(by_depth)]
        if first > 0:
            # Last decoder layer's gradient over the first's: >1 when gradients shrink toward the input.
            out["grad_flow/last_over_first_layer"] = math.sqrt(last / first)
    return out


class Memory:
    """CPU resident set size of the worker; CUDA memory of its device on a GPU (MiB)."""

    def __init__(self, on_gpu: bool) -> None:
        import psutil

        self.process = psutil.Process()
        self.on_gpu = on_gpu

    def sample(self) -> dict[str, float]:
        out = {"memory/cpu_rss_mb": self.process.memory_info().rss / 2**20}
        if self.on_gpu:
            import torch

            out["memory/gpu_allocated_mb"] = torch.cuda.memory_allocated() / 2**20
            out["memory/gpu_reserved_mb"] = torch.cuda.memory_reserved() / 2**20
            out["memory/gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return out


def results_summary(results: dict[str, Any]) -> dict[str, float]:
    """eval.json's numbers for the run summary: accuracies under eval/, the rest under results/."""
    out: dict[str, float] = {}

    def put(prefix: str, key: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                put(prefix, f"{key}/{k}", v)
        elif (number := _finite(value)) is not None:
            out[f"{prefix}/{key}"] = number

    for key, value in results.items():
        bare = key.removeprefix("base_")
        put("eval" if bare in _EVAL_KEYS else "results", key, value)
    for kind in ("sampled", "greedy"):
        trained, base = out.get(f"eval/accuracy_{kind}"), out.get(f"eval/base_accuracy_{kind}")
        if trained is not None and base is not None:
            out[f"eval/gain_{kind}"] = trained - base
    return out


# --- the callback ------------------------------------------------------------------------


class DashboardCallback(TrainerCallback):
    """Collects each step's metrics into one row and logs it when the step is complete."""

    def __init__(self, backend: Backend, ident: Identity, *, on_gpu: bool, spectral_images: bool,
                 gradient_images: bool) -> None:
        self.backend = backend
        self.identity = ident
        self.memory = Memory(on_gpu)
        self.spectral_images = spectral_images
        self.gradient_images = gradient_images
        self.started = False
        self.closed = False
        self.recorded: int | None = None  # the highest step an earlier attempt already logged
        self.last_logged = -1
        self.pending_step: int | None = None
        self.pending: dict[str, Any] = {}
        self.skipped: list[int] = []
        self.seconds = 0.0  # time spent here (drawing included), for the overhead measurement
        self.image_seconds = 0.0

    # Lazily started: TrackingCallback's first snapshot may come before this on_train_begin.
    def _start(self) -> None:
        if self.started:
            return
        self.started = True
        try:
            self.recorded = self.backend.start(self.identity)
        except Exception as exc:  # noqa: BLE001 - a dashboard that cannot start must not cost the run
            print(f"[perl] warning: {self.backend.name} could not start ({type(exc).__name__}: {exc}); "
                  "training goes on without the dashboard", flush=True)
            self.closed = True
            return
        atexit.register(self.close, 1)  # a failed or killed-by-exception worker still flushes
        if self.recorded is not None:
            print(f"[perl] {self.backend.name}: continuing run {self.identity.run_id}, which holds steps up to "
                  f"{self.recorded}", flush=True)

    def _wanted(self, step: int) -> bool:
        if self.closed:
            return False
        if self.recorded is not None and step <= self.recorded:
            if step not in self.skipped:
                self.skipped.append(step)
            return False
        return step > self.last_logged or step == self.pending_step

    def add(self, step: int, metrics: dict[str, Any]) -> None:
        self._start()
        if not self._wanted(step):
            return
        if self.pending_step is not None and step != self.pending_step:
            self.flush()
        self.pending_step = step
        self.pending.update(metrics)

    def flush(self) -> None:
        if self.pending_step is not None and self.pending:
            self.backend.log(self.pending, step=self.pending_step)
            self.last_logged = self.pending_step
        self.pending_step, self.pending = None, {}

    # --- fed by TrackingCallback (perl_cli/tracking/callback.py) --------------------------

    def spectral(self, step: int, history: list[dict]) -> None:
        started = time.perf_counter()
        self._start()
        if not self._wanted(step):
            return
        layers = history[-1]["layers"]
        metrics: dict[str, Any] = spectral_metrics(layers)
        metrics["spectral/seconds"] = float(history[-1].get("seconds") or 0.0)
        for module, summary in layers.items():
            values = [v for v in summary.get("singular_values", []) if _finite(v) is not None]
            if values:
                metrics[f"spectral_singular_values/{module}"] = self.backend.histogram(values)
        if self.spectral_images:
            drawn = time.perf_counter()
            metrics.update(self._spectral_images(step, history))
            self.image_seconds += time.perf_counter() - drawn
        self.add(step, metrics)
        self.seconds += time.perf_counter() - started

    def gradient(self, step: int, history: list[dict]) -> None:
        started = time.perf_counter()
        self._start()
        if not self._wanted(step):
            return
        metrics: dict[str, Any] = gradient_metrics(history[-1]["layers"])
        metrics["grad_flow/seconds"] = float(history[-1].get("seconds") or 0.0)
        if self.gradient_images:
            drawn = time.perf_counter()
            grid = plots.gradient_grid(plots.snapshots(history))
            if grid is not None:
                metrics["grad_images/heatmap"] = self._draw(
                    lambda fig, ax: plots.draw_gradient_heatmap(fig, ax, grid),
                    f"gradient norms per module, steps {grid[0][0]}–{grid[0][-1]}",
                )
            self.image_seconds += time.perf_counter() - drawn
        self.add(step, metrics)
        self.seconds += time.perf_counter() - started

    def _spectral_images(self, step: int, history: list[dict]) -> dict[str, Any]:
        out = {}
        grid = plots.spectrum_grid(history[-1]["layers"])
        if grid is not None:
            out["spectral_images/singular_values"] = self._draw(
                lambda fig, ax: plots.draw_spectrum(fig, ax, grid), f"singular values of each layer's update, step {step}"
            )
        series = plots.effective_rank_series(plots.snapshots(history))
        if series:
            steps, means = [s for s, _ in series], [m for _, m in series]
            out["spectral_images/effective_rank"] = self._draw(
                lambda fig, ax: plots.draw_effective_rank(ax, [(self.identity.name, steps, means)]),
                f"effective rank, steps {int(steps[0])}–{int(steps[-1])}",
            )
        return out

    def _draw(self, draw: Any, title: str) -> Any:
        fig, ax = plots.figure()
        try:
            draw(fig, ax)
            ax.set_title(f"{self.identity.name}: {title}", fontsize=10)
            return self.backend.image(plots.png(fig), title)
        finally:
            plots.close(fig)

    # --- Trainer events -------------------------------------------------------------------

    def on_train_begin(self, args: Any, state_: Any, control: Any, **kwargs: Any) -> None:
        self._start()

    def on_step_begin(self, args: Any, state_: Any, control: Any, **kwargs: Any) -> None:
        if self.pending_step is not None and self.pending_step <= state_.global_step:
            self.flush()  # the previous step is complete

    def on_step_end(self, args: Any, state_: Any, control: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        self.add(state_.global_step, self.memory.sample())
        self.seconds += time.perf_counter() - started

    def on_log(self, args: Any, state_: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not logs:
            return
        numbers = {k: v for k, v in logs.items() if _finite(v) is not None}
        if any(k in logs for k in _SUMMARY_KEYS):
            self._start()
            if not self.closed:
                self.backend.summarize({f"train/{k}": v for k, v in numbers.items()}, state_.global_step)
            return
        row = {("eval/" + k[5:] if k.startswith("eval_") else f"train/{k}"): v for k, v in numbers.items()}
        row["train/global_step"] = state_.global_step
        self.add(state_.global_step, row)

    def on_train_end(self, args: Any, state_: Any, control: Any, **kwargs: Any) -> None:
        if state_.global_step < state_.max_steps:
            self.close(143)  # stopped early (a stop signal): W&B marks the attempt failed until it resumes
        # Completed: the last row waits for the evaluation (`finish`).

    # --- the end ----------------------------------------------------------------------------

    def finish(self, results: dict[str, Any]) -> dict[str, Any]:
        """The held-out results into the run summary (and the last row, for trackio); close."""
        self._start()
        if self.closed:
            return {}
        summary = results_summary(results)
        step = self.pending_step if self.pending_step is not None else max(self.last_logged, 0)
        self.backend.summarize(summary, step)
        if self.backend.name == "trackio":  # no summary there: the results join the last row
            if self.pending_step is None and step > self.last_logged:
                self.pending_step = step
            if self.pending_step is not None:
                self.pending.update(summary)
        return self.close(0) or {}

    def close(self, exit_code: int = 0) -> dict[str, Any] | None:
        if self.closed or not self.started:
            return None
        self.closed = True
        if self.skipped:
            print(f"[perl] {self.backend.name}: steps {self.skipped[0]}–{self.skipped[-1]} were redone after the "
                  f"checkpoint and are already in the run's record; not logged again", flush=True)
        try:
            self.flush()
        finally:
            info = self.backend.finish(exit_code)
        atexit.unregister(self.close)
        # PeRL's own share of the logging cost (the library's background work is not in it).
        info.update(dashboard_seconds=round(self.seconds, 4), dashboard_image_seconds=round(self.image_seconds, 4))
        return info


def make_callback(exp_dir: Path, config: dict[str, Any], method: str, uses_rank: bool, total_params: int | None,
                  on_gpu: bool) -> DashboardCallback | None:
    """The dashboard callback this experiment asks for (`wandb.use_wandb`), or None."""
    section = config.get("wandb") or {}
    if not section.get("use_wandb"):
        return None
    backend = make(exp_dir, section)
    if backend is None:
        return None
    return DashboardCallback(
        backend,
        identity(exp_dir, config, method, uses_rank, total_params),
        on_gpu=on_gpu,
        spectral_images=bool(section.get("log_spectral_images", True)),
        gradient_images=bool(section.get("log_gradient_images", True)),
    )
