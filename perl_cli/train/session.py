"""One training session: model, data, adapter and GRPOTrainer, from setup to eval.json.

Imported by the worker only once config.json has been checked; this module pulls in
torch, transformers, peft and TRL.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import PrinterCallback, set_seed

from perl_cli import ica, learning, state
from perl_cli.config import ConfigError
from perl_cli.data import countdown, tasks
from perl_cli.methods import Method, build_adapter, get_method
from perl_cli.models import TinyRecipe, builtin_recipe, load_model, load_tokenizer
from perl_cli.placement import PlacementError
from perl_cli.stats import head_mean, tail_mean
from perl_cli.tracking.dashboard import make_callback as make_dashboard
from perl_cli.train import callbacks as cb
from perl_cli.train.artifacts import (
    BASE_EVAL_FILE,
    INITIAL_ADAPTER_DIR,
    adapter_size,
    atomic_save_adapter,
    peak_memory_mb,
    save_full_model,
)
from perl_cli.train.evaluate import evaluate_accuracy
from perl_cli.train.grpo import grpo_args
from perl_cli.train.status import StatusWriter
from perl_cli.train.trainer import MethodGRPOTrainer, optimizer_trainable_params


def quiet_known_deprecations() -> None:
    """peft (get_peft_model) and TRL (generation, saving) still read transformers 5's
    deprecated `is_gradient_checkpointing` alias; the FutureWarning it raises is theirs to
    fix, says nothing about the run, and was printed into train.log again and again.
    Only it is silenced (called when a session starts, so a test harness that resets the
    warning filters between tests still gets it)."""
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


class TrainingSession:
    def __init__(self, exp_dir: Path, config: dict[str, Any], status: StatusWriter, stopper: cb.StopOnSignal) -> None:
        self.exp_dir = exp_dir
        self.config = config
        self.status = status
        self.stopper = stopper
        self.training = config["training"]
        self.peft_section = config["peft"]
        self.method: Method = get_method(self.peft_section["type"])
        self.seed = int(config["common"]["seed"])
        self.on_gpu = torch.cuda.is_available()
        self.metrics_path = exp_dir / state.METRICS_FILE
        self.global_step = 0
        self.base_eval: dict[str, Any] | None = None
        self.progress: cb.ProgressCallback | None = None
        self.trainer: MethodGRPOTrainer | None = None
        self.trainable_params = 0
        self.train_seconds = 0.0
        self.ica_summary: dict[str, Any] = {}
        self.dashboard: Any = None

    # --- setup -------------------------------------------------------------------------

    def prepare(self, resume: Path | None) -> None:
        quiet_known_deprecations()
        model_cfg = self.config["model"]
        name = str(model_cfg["model_name_or_path"])
        set_seed(self.seed)
        self.tokenizer = load_tokenizer(model_cfg, progress=self.status.phase)
        self.task = tasks.for_config(self.config)
        self.prompt_format = countdown.resolve_prompt_format(self.config["dataset"].get("prompt_format", "auto"), name)
        template = (self.config.get("task") or {}).get("chat_template")
        if template and self.task.name == tasks.MATH:
            self.tokenizer.chat_template = template
        if self.prompt_format == countdown.CHAT and not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(
                f"dataset.prompt_format is chat but the tokenizer of {name!r} has no chat template; "
                'use a chat/instruct model or set dataset.prompt_format = "compact"'
            )
        splits = self.task.load_splits()
        if self.task.name == tasks.COUNTDOWN:
            self._warn_if_warm_start_saw_eval(name)
        self.train_problems = self._fit_prompts(splits.train, "training")
        self.eval_problems = self._fit_prompts(splits.eval, "held-out")
        print(
            f"[perl] data: {len(self.train_problems)} training / {len(self.eval_problems)} held-out problems, "
            f"{self.prompt_format} prompts",
            flush=True,
        )
        model = load_model(model_cfg, on_gpu=self.on_gpu, progress=self.status.phase)
        if self.on_gpu:
            model = model.to("cuda")
        self.status.phase("base model evaluation")
        self.base_eval = self._base_eval(model, resumed=resume is not None)
        mask = self._ica_mask(model) if ica.mode(self.config) != ica.OFF else None
        set_seed(self.seed)  # adapter init must not depend on what ran before it
        self.status.phase(f"{self.method.name} adapter")
        try:
            model = build_adapter(model, self.peft_section, self.training)
        except PlacementError as exc:
            raise ConfigError(str(exc)) from None
        if mask is not None:
            ica.apply_mask(model, mask, ica.mode(self.config))
        if self.method.needs_weight_conversion_on_save:
            self._save_initial_adapter(model)
        if self.training.get("gradient_checkpointing"):
            model.enable_input_require_grads()  # checkpointed PEFT layers need input grads
        self.model = model
        self.total_params = (
            sum(p.numel() for p in model.parameters()) if self.method.full
            else int(model.get_nb_trainable_parameters()[1])
        )
        if float(self.training.get("beta", 0.0)) > 0 and self.method.needs_weight_conversion_on_save:
            print(
                f"[perl] warning: beta > 0 with {self.method.name}: TRL's reference model is the adapter-disabled "
                "model, which for this method is the residual base, not the original one",
                flush=True,
            )
        self.status.phase("first step")  # generation warms up; step 1 clears the phase

    def _warn_if_warm_start_saw_eval(self, model_name: str) -> None:
        """The tiny model's warm start excludes a held-out prefix of the default split only."""
        d = self.config["dataset"]
        recipe = builtin_recipe(model_name)
        if not isinstance(recipe, TinyRecipe) or not recipe.sft_steps:
            return
        default_split = (recipe.split_seed, recipe.num_count, recipe.min_number, recipe.max_number)
        this_split = (d.get("split_seed"), d.get("num_count"), d.get("min_number"), d.get("max_number"))
        # Held-out sets are prefixes of the same shuffle: a smaller one is unseen too.
        unseen = this_split == default_split and int(d.get("eval_size") or 0) <= recipe.eval_size
        if d.get("dataset_name_or_path") == countdown.BUILTIN_NAME and not unseen:
            print(
                f"[perl] warning: {model_name} was warm-started on the built-in problems outside its held-out set "
                f"(split_seed {recipe.split_seed}, the first {recipe.eval_size} problems, {recipe.num_count} numbers "
                f"{recipe.min_number}-{recipe.max_number}); with this split some held-out problems were seen in its "
                "warm start, so base and trained accuracy are both optimistic",
                flush=True,
            )

    def _fit_prompts(self, problems: list[Any], which: str) -> list[Any]:
        """Drop problems whose prompt exceeds max_prompt_length tokens.

        TRL 1.16 no longer truncates prompts; cutting tokens off a Countdown prompt
        would remove its numbers or its instructions, so such problems are skipped.
        """
        limit = int(self.training.get("max_prompt_length") or 0)
        if not limit or not problems:
            return problems
        texts = [self.task.render_prompt(p, self.prompt_format, self.tokenizer) for p in problems]
        special = self.prompt_format != countdown.CHAT
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=special)["input_ids"]]
        kept = [p for p, n in zip(problems, lengths, strict=True) if n <= limit]
        if len(kept) < len(problems):
            print(
                f"[perl] warning: {len(problems) - len(kept)} {which} prompts are longer than "
                f"max_prompt_length={limit} tokens and were skipped (longest {max(lengths)})",
                flush=True,
            )
        if not kept:
            raise ConfigError(
                f"every {which} prompt is longer than training.max_prompt_length={limit} tokens "
                f"(shortest {min(lengths)}); raise max_prompt_length"
            )
        return kept

    def _eval_settings(self) -> dict[str, Any]:
        e = self.config["eval"]
        return {
            "num_samples": int(e.get("num_samples", 4)),
            "temperature": float(e.get("temperature", 1.0)),
            "top_p": float(e.get("top_p", 1.0)),
            "max_new_tokens": int(e.get("max_new_tokens") or self.training["max_completion_length"]),
            "seed": self.seed,
        }

    def _base_eval(self, model: Any, *, resumed: bool) -> dict[str, Any] | None:
        e = self.config["eval"]
        if not (e.get("enabled", True) and e.get("eval_base", True)):
            return None
        path = self.exp_dir / BASE_EVAL_FILE
        saved = state.read_json(path)
        if resumed and isinstance(saved, dict) and saved.get("fingerprint") == self.config.get("fingerprint"):
            return saved
        t0 = time.time()
        result = evaluate_accuracy(
            model, self.tokenizer, self.eval_problems, self.prompt_format, **self._eval_settings(), task=self.task
        )
        result["fingerprint"] = self.config.get("fingerprint")
        state.atomic_write_json(path, result)
        print(
            f"[perl] base model: greedy {100 * result['accuracy_greedy']:.1f}%, sampled "
            f"{100 * result['accuracy_sampled']:.1f}% on {len(self.eval_problems)} held-out ({time.time() - t0:.0f}s)",
            flush=True,
        )
        return result

    def _ica_mask(self, model: Any) -> dict[str, Any]:
        """The ICA mask of the base model: ica_mask.json when a previous run saved it, else computed and saved."""
        path = self.exp_dir / ica.MASK_FILE
        settings = ica.mask_settings(self.config)
        mask = ica.load_mask(path, settings)
        if mask is not None:
            print(f"[perl] ica: reusing {ica.MASK_FILE} ({mask['selected']} neurons, computed in {mask['seconds']:.1f}s)", flush=True)
            self.ica_summary = {"ica_seconds": mask["seconds"], "ica_reused": True}
        else:
            problems = ica.sample(self.train_problems, settings["sample_prompts"], self.seed)
            texts = [self.task.render_prompt(p, self.prompt_format, self.tokenizer) for p in problems]
            try:
                mask = ica.compute_mask(
                    model, self.tokenizer, texts, settings, add_special_tokens=self.prompt_format != countdown.CHAT
                )
            except ica.MaskError as exc:
                raise ConfigError(str(exc)) from None
            ica.save_mask(path, mask)
            print(
                f"[perl] ica: {mask['selected']} of {mask['intermediate_size'] * len(mask['layers'])} MLP neurons "
                f"selected over {len(mask['layers'])} layers from {mask['tokens']} tokens ({mask['seconds']:.1f}s)"
                + (f"; FastICA did not converge in layers {mask['unconverged_layers']}" if mask["unconverged_layers"] else ""),
                flush=True,
            )
            self.ica_summary = {"ica_seconds": mask["seconds"], "ica_reused": False}
        neurons = mask["intermediate_size"] * len(mask["layers"])
        self.ica_summary.update(
            ica_mode=ica.mode(self.config),
            ica_selected_neurons=mask["selected"],
            ica_selected_pct=100 * mask["selected"] / max(1, neurons),
        )
        return mask

    def _save_initial_adapter(self, model: Any) -> None:
        """PiSSA/MiLoRA: the adapter at init, saved as plain LoRA, for conversion on save."""
        init_dir = self.exp_dir / INITIAL_ADAPTER_DIR
        if (init_dir / "adapter_config.json").exists():
            return  # saved by the first run; a resumed run recomputes the same init
        cfg = model.peft_config["default"]
        original = cfg.init_lora_weights
        cfg.init_lora_weights = True  # peft requires this for the conversion
        try:
            model.save_pretrained(str(init_dir))
        finally:
            cfg.init_lora_weights = original

    # --- training ----------------------------------------------------------------------

    def train(self, resume: Path | None) -> None:
        reward_funcs, weights = self.task.reward_functions(self.prompt_format)
        args = grpo_args(
            self.config, self.exp_dir, on_gpu=self.on_gpu, report_to=[], reward_weights=weights
        )
        total = int(self.training["max_steps"])
        self.progress = cb.ProgressCallback(self.metrics_path, self.status, total)
        callbacks: list[Any] = [self.progress, self.stopper]
        # W&B or trackio: logged by PeRL's own callback, not TRL's report_to (docs/architecture.md).
        self.dashboard = make_dashboard(
            self.exp_dir, self.config, self.method.name, self.method.uses_rank, self.total_params, self.on_gpu
        )
        tracker = self.config.get("tracker") or {}
        if tracker.get("enable_spectral_tracking") or tracker.get("enable_gradient_tracking"):
            from perl_cli.tracking.callback import TrackingCallback

            listeners = [self.dashboard] if self.dashboard else []
            callbacks.append(TrackingCallback(self.exp_dir, tracker, self.method.name, listeners))
        if self.dashboard:
            callbacks.append(self.dashboard)  # before FailAtStep: a step's row is logged before it fires
        if self.training.get("stop_on_collapse"):
            from perl_cli.train.collapse_stop import StopOnCollapse

            self.collapse_stop = StopOnCollapse(self.metrics_path)
            callbacks.append(self.collapse_stop)
        fail_hook = cb.FailAtStep.from_env(self.exp_dir)
        if fail_hook is not None:
            callbacks.append(fail_hook)
        # peft.adalora_reallocation = false is upstream's AdaLoRA under TRL: neither the
        # reallocation nor the orthogonality term (TRL calls neither).
        as_peft_means = bool(self.peft_section.get("adalora_reallocation", True))
        if self.method.reallocates_rank and as_peft_means:
            callbacks.append(cb.AdaLoraAllocator(self.model))  # last: after every save request
        optimizer = None
        if self.method.optimizer is not None:
            optimizer = self.method.optimizer(self.model, self.peft_section, self.training)
        train_ds = Dataset.from_list(self.task.to_records(self.train_problems, self.prompt_format))
        self.trainer = MethodGRPOTrainer(
            model=self.model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=train_ds,
            processing_class=self.tokenizer,
            callbacks=callbacks,
            optimizers=(optimizer, None),
            regulariser=self.method.regulariser if as_peft_means else None,
        )
        # Counted on the optimizer, after every freezing step (LoRA-FA's optimizer freezes A).
        self.trainer.create_optimizer()
        self.trainable_params = optimizer_trainable_params(self.trainer.optimizer)
        print(
            f"[perl] {self.method.name}: {self.trainable_params:,} trainable of {self.total_params:,} parameters "
            f"({100 * self.trainable_params / max(1, self.total_params):.3f}%)",
            flush=True,
        )
        # With tqdm off, Trainer prints every raw log dict; ProgressCallback prints a summary.
        self.trainer.remove_callback(PrinterCallback)
        done = 0
        if resume is not None:
            done = int(resume.name.removeprefix("checkpoint-"))
            kept = cb.truncate_metrics(self.metrics_path, done)
            print(f"[perl] resuming from {resume.name} ({kept} metrics rows kept)", flush=True)
        elif self.metrics_path.exists():
            cb.truncate_metrics(self.metrics_path, 0)  # a failed start before any checkpoint
        self.status.update(step=done)
        print(f"[perl] training {self.method.name} for {total} steps", flush=True)
        t0 = time.time()
        self.trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
        self.train_seconds = time.time() - t0
        self.global_step = int(self.trainer.state.global_step)

    # --- results -----------------------------------------------------------------------

    def finish(self, started: float) -> dict[str, Any]:
        save_kwargs: dict[str, Any] = {}
        if self.method.needs_weight_conversion_on_save:
            save_kwargs["path_initial_model_for_weight_conversion"] = str(self.exp_dir / INITIAL_ADAPTER_DIR)
        results: dict[str, Any] = {
            "name": self.config.get("name"),
            "method": self.method.name,
            "fingerprint": self.config.get("fingerprint"),
            "steps": self.global_step,
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "trainable_pct": 100 * self.trainable_params / max(1, self.total_params),
        }
        if self.method.reallocates_rank:
            results.update(cb.adalora_budget(self.model))
        # Evaluate before saving: conversion on save touches the adapter weights.
        if self.config["eval"].get("enabled", True):
            t0 = time.time()
            trained = evaluate_accuracy(
                self.model, self.tokenizer, self.eval_problems, self.prompt_format, **self._eval_settings(),
                task=self.task,
            )
            results.update(trained)
            results["eval_seconds"] = time.time() - t0
            if self.base_eval is not None:
                for key in ("accuracy_greedy", "accuracy_sampled", "accuracy_greedy_se", "accuracy_sampled_se",
                            "per_problem_greedy", "per_problem_sampled"):
                    if key in self.base_eval:  # a base eval saved by an older PeRL has no *_se or lists
                        results[f"base_{key}"] = self.base_eval[key]
                # The gain as a paired difference over the same problems (perl_cli/learning.py).
                results.update(learning.held_out_gains(trained, self.base_eval))
        # The adapter's own size at its rank; PiSSA/MiLoRA also keep the converted file
        # (rank 2r, applies to the original base), whose size is reported separately.
        if self.method.full:
            # The checkpoint is the whole model, in its own directory (its config.json
            # must not replace the experiment's).
            results["adapter_size_bytes"] = save_full_model(self.model, self.tokenizer, self.exp_dir)
        else:
            results["adapter_size_bytes"] = adapter_size(self.model, self.exp_dir)
            saved = atomic_save_adapter(self.model, self.exp_dir, **save_kwargs)
            if self.method.needs_weight_conversion_on_save:
                results["converted_adapter_size_bytes"] = saved
        results.update(self._benchmarks())
        results.update(self._reward_summary())
        step_seconds = self.progress.step_seconds if self.progress else []
        results["seconds_per_step"] = sum(step_seconds) / len(step_seconds) if step_seconds else None
        results["train_seconds"] = self.train_seconds
        results["total_seconds"] = time.time() - started
        results.update(self.ica_summary)
        results["peak_memory_mb"] = peak_memory_mb(self.on_gpu)
        results["device"] = "cuda" if self.on_gpu else "cpu"
        results.update(self._wandb_info(results))
        return results

    @property
    def collapsed(self) -> Any:
        """perl_cli/collapse.Collapse when training.stop_on_collapse stopped the run, else None."""
        stop = getattr(self, "collapse_stop", None)
        return stop.verdict if stop is not None else None

    def _benchmarks(self) -> dict[str, Any]:
        """The suite's benchmarks (task.benchmarks) on the trained model: benchmarks/<name>.json."""
        specs = self.config.get("benchmark_specs") or {}
        if not specs:
            return {}
        from perl_cli.train.benchmark_eval import run_benchmarks

        self.status.phase("benchmarks")
        return {"benchmarks": run_benchmarks(
            self.model, self.tokenizer, specs, self.exp_dir, prompt_format=self.prompt_format,
            task_section=self.config.get("task") or {}, seed=self.seed, fingerprint=self.config.get("fingerprint"),
            stop=lambda: self.stopper.received is not None, phase=self.status.phase,
        )}

    def _reward_summary(self) -> dict[str, Any]:
        """Mean training reward over the first and last 10% of logged steps."""
        rows = sorted(
            (r for r in state.read_jsonl(self.metrics_path) if isinstance(r.get("reward"), (int, float))),
            key=lambda r: r["step"],
        )
        if not rows:
            return {"reward_first_10pct": None, "reward_last_10pct": None}
        # The report's own rule (perl_cli/stats.py), so eval.json and SUMMARY.md agree.
        rewards = [r["reward"] for r in rows]
        out: dict[str, Any] = {"reward_first_10pct": head_mean(rewards), "reward_last_10pct": tail_mean(rewards)}
        if all("reward/correct" in r for r in rows):
            correct = [float(r["reward/correct"]) for r in rows]
            out["correct_first_10pct"] = head_mean(correct)
            out["correct_last_10pct"] = tail_mean(correct)
            # The trend over every logged step, with its error, and the quarter means.
            line = learning.trend([float(r["step"]) for r in rows], correct)
            if line is not None:
                out.update({f"correct_{key}": value for key, value in line.items()})
            out["correct_quarter_means"] = learning.quarter_means(correct)
        return out

    def _wandb_info(self, results: dict[str, Any]) -> dict[str, Any]:
        """Held-out results into the dashboard's run summary; the run's directory (and URL)."""
        return self.dashboard.finish(results) if self.dashboard else {}
