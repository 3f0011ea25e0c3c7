"""Every PEFT method in the registry really trains under GRPO, saves, and reloads exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from training_support import (
    capture_session,
    make_config,
    method_overrides,
    probe_logits,
    read_metrics,
    write_experiment,
)

torch = pytest.importorskip("torch")

from perl_cli import methods  # noqa: E402
from perl_cli.methods import METHOD_NAMES, validate_method_settings  # noqa: E402

_logits = probe_logits
_overrides = method_overrides


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    return capture_session(monkeypatch)


# Full fine-tuning saves a whole model, not an adapter: tests/test_math_e2e.py trains, saves and
# reloads it (full_model/, from_pretrained).
@pytest.mark.parametrize("method", [m for m in METHOD_NAMES if m != "full"])
def test_method_trains_saves_and_reloads(method: str, tmp_path: Path, captured: dict[str, Any]) -> None:
    from peft import PeftModel

    from perl_cli.models import load_model, load_tokenizer
    from perl_cli.train import run_experiment

    config = make_config(f"{method}_r4", **_overrides(method))
    exp = write_experiment(tmp_path, config)
    assert run_experiment(exp) == 0, (exp / "status.json").read_text()

    status = json.loads((exp / "status.json").read_text())
    assert status["state"] == "completed" and status["step"] == 3
    assert (exp / "adapter_model.safetensors").exists() and (exp / "adapter_config.json").exists()
    results = json.loads((exp / "eval.json").read_text())
    assert results["method"] == method and 0 < results["trainable_params"] < results["total_params"]

    session = captured["session"]
    _check_counts(method, exp, results, session, captured)
    tokenizer = load_tokenizer(config["model"])
    trained = _logits(session.model, tokenizer)
    base = load_model(config["model"], on_gpu=False)
    base_logits = _logits(base, tokenizer)
    assert not torch.allclose(trained, base_logits, atol=1e-4), "training did not change the model"

    reloaded = PeftModel.from_pretrained(load_model(config["model"], on_gpu=False), str(exp))
    diff = (_logits(reloaded, tokenizer) - trained).abs().max().item()
    assert diff < 1e-4, f"{method}: reloaded adapter differs from the trained model by {diff:g}"

    if method == "adalora":
        ranks = results["adalora_rank_pattern"]
        assert results["adalora_initial_rank"] == 8
        assert any(r != 8 for r in ranks.values()), ranks  # ranks were reallocated
        assert sum(ranks.values()) == 4 * len(ranks)  # down to the target budget r=4 per layer
        assert results["adalora_rank_budget_initial"] == 8 * len(ranks)
        assert results["adalora_rank_budget_final"] == 4 * len(ranks)
        assert 0 < results["trainable_params_final"] < results["trainable_params"]


def _check_counts(method: str, exp: Path, results: dict[str, Any], session: Any, captured: dict[str, Any]) -> None:
    """Trainable parameters are what the optimizer updates; the adapter size is at its own rank."""
    optimizer = session.trainer.optimizer
    updated = {id(p): p.numel() for g in optimizer.param_groups for p in g["params"] if p.requires_grad}
    assert results["trainable_params"] == sum(updated.values())
    assert results["trainable_params"] == sum(p.numel() for p in session.model.parameters() if p.requires_grad)
    if method == "lora_fa":  # A is frozen by the optimizer: only B counts
        assert results["trainable_params"] == sum(
            p.numel() for n, p in session.model.named_parameters() if "lora_B" in n
        )
    on_disk = (exp / "adapter_model.safetensors").stat().st_size
    if method in ("pissa", "milora"):
        assert results["converted_adapter_size_bytes"] == on_disk
        own = sum(p.numel() * p.element_size() for n, p in session.model.named_parameters() if "lora_" in n)
        assert own < results["adapter_size_bytes"] < own + 8192 < on_disk  # rank r, not the rank-2r file
    else:
        assert "converted_adapter_size_bytes" not in results and results["adapter_size_bytes"] == on_disk
    if method == "adalora":
        rows = read_metrics(exp)
        assert all(r["regulariser"] > 0 for r in rows), rows
        # The term is back-propagated once per micro-batch, scaled for gradient accumulation.
        assert captured["regulariser_grads"] and all(g == 1.0 for g in captured["regulariser_grads"])


def test_milora_init_uses_minor_components_and_keeps_the_output() -> None:
    from peft import LoraConfig, get_peft_model

    from perl_cli.models import load_model, load_tokenizer

    model_cfg = make_config()["model"]
    tokenizer = load_tokenizer(model_cfg)
    base = load_model(model_cfg, on_gpu=False)
    before = _logits(base, tokenizer)
    weight = base.model.layers[0].self_attn.q_proj.weight.detach().clone().double()
    peft_section = make_config()["peft"]
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    methods.milora_init(model, peft_section)
    after = _logits(model, tokenizer)
    assert (after - before).abs().max().item() < 1e-4
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    delta = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight).double() * layer.scaling["default"]
    minor = torch.linalg.svdvals(weight)[-4:]
    assert torch.allclose(torch.linalg.svdvals(delta)[:4], minor, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize(
    ("method", "over", "fragment"),
    [
        ("adalora", {"adalora_init_r": 8}, "adalora_init_r (8) must be >= peft.r (16)"),
        ("lora", {"r": 0}, "peft.r must be a positive integer"),
        ("lora_plus", {"lora_plus_ratio": -1}, "lora_plus_ratio"),
        ("vera", {"vera_d_initial": 0}, "vera_d_initial"),
        ("pissa", {"pissa_niter": -1}, "pissa_niter"),
        ("lora", {"target_modules": []}, "target_modules"),
        ("nope", {}, "not a known method"),
    ],
)
def test_validate_method_settings(method: str, over: dict, fragment: str) -> None:
    peft = {**make_config()["peft"], "r": 16, **over}
    problems = validate_method_settings(method, peft)
    assert any(fragment in p for p in problems), problems


def test_valid_settings_have_no_problems() -> None:
    peft = make_config()["peft"]
    for method in METHOD_NAMES:
        assert validate_method_settings(method, peft, max_steps=100) == [], method


def test_adalora_needs_a_scored_step_before_its_final_phase() -> None:
    """Two steps with tfinal 1 passed the old check and crashed peft at step 1 (KeyError in mask_to_budget)."""
    peft = {**make_config()["peft"], "adalora_init_r": 8, "adalora_tinit": 0, "adalora_tfinal": 1, "adalora_delta_t": 1}
    assert any("at least one step before its final phase" in p for p in validate_method_settings("adalora", peft, max_steps=2))
    assert validate_method_settings("adalora", {**peft, "adalora_tfinal": 0}, max_steps=2) == []


def test_adalora_schedule_must_leave_steps() -> None:
    peft = {**make_config()["peft"], "adalora_tinit": 50, "adalora_tfinal": 50}
    assert any("tinit + adalora_tfinal" in p for p in validate_method_settings("adalora", peft, max_steps=100))


def test_methods_module_imports_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, perl_cli.methods; print('torch' in sys.modules, 'peft' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_adalora_resumes_from_a_checkpoint_with_a_rank_pattern(tmp_path: Path, captured: dict[str, Any]) -> None:
    """peft saves resized AdaLoRA tensors once ranks are allocated; resume must still load."""
    import shutil

    from perl_cli.train import run_experiment

    config = make_config(
        "ada_resume",
        **{**_overrides("adalora"), "peft__adalora_tfinal": 2},
        training__max_steps=6,
        training__save_steps=5,
        eval__enabled=False,
    )
    exp = write_experiment(tmp_path, config)
    assert run_experiment(exp) == 0
    checkpoint = exp / "checkpoints" / "checkpoint-5"
    assert json.loads((checkpoint / "perl_adalora.json").read_text())["rank_pattern"]
    shutil.rmtree(exp / "checkpoints" / "checkpoint-6", ignore_errors=True)
    assert run_experiment(exp) == 0, (exp / "status.json").read_text()
    ranks = json.loads((exp / "eval.json").read_text())["adalora_rank_pattern"]
    assert sum(ranks.values()) == 4 * len(ranks)


def test_adalora_without_reallocation_is_upstream_s_adalora(tmp_path: Path, captured: dict[str, Any]) -> None:
    """peft.adalora_reallocation = false: AdaLoRA as TRL runs it upstream, no reallocation, no regulariser."""
    from perl_cli.train import run_experiment

    config = make_config("ada_upstream", **_overrides("adalora"), peft__adalora_reallocation=False)
    exp = write_experiment(tmp_path, config)
    assert run_experiment(exp) == 0, (exp / "status.json").read_text()
    results = json.loads((exp / "eval.json").read_text())
    ranks = results["adalora_rank_pattern"]
    assert ranks and set(ranks.values()) == {8}  # every layer keeps init_r: nothing was pruned
    assert all("regulariser" not in r for r in read_metrics(exp))
    assert captured["regulariser_grads"] == []


def test_run_records_provenance_and_no_checkpointing_deprecation(tmp_path: Path, captured: dict[str, Any]) -> None:
    """provenance.json names the stack; transformers' `is_gradient_checkpointing` FutureWarning,
    raised by peft and TRL at start and at each save, no longer reaches train.log."""
    import warnings
    from importlib import metadata

    from perl_cli.train import run_experiment

    config = make_config("prov", training__max_steps=2, training__save_steps=1, eval__enabled=False)
    exp = write_experiment(tmp_path, config)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # every warning that would reach the worker's stderr
        assert run_experiment(exp) == 0, (exp / "status.json").read_text()
    recorded = json.loads((exp / "provenance.json").read_text())
    assert recorded["trl"] == metadata.version("trl") and recorded["torch"] == metadata.version("torch")
    assert recorded["cuda"] == torch.version.cuda
    assert not [str(w.message) for w in seen if "is_gradient_checkpointing" in str(w.message)]


def test_milora_plus_starts_at_the_base_with_a_on_the_minor_directions() -> None:
    """Upstream's MiLoRA++ (modules/trl/perl/lora/milora_plus.py, read, not copied): A = the r minor
    right singular vectors of W (orthonormal rows, no singular values), B = 0, W untouched, so the
    model is the base at step 0; the minor subspace is the thin SVD's, also for wide matrices."""
    from peft import LoraConfig, get_peft_model

    from perl_cli.models import load_model, load_tokenizer

    model_cfg = make_config()["model"]
    tokenizer = load_tokenizer(model_cfg)
    base = load_model(model_cfg, on_gpu=False)
    before = _logits(base, tokenizer)
    weights = {n: m.weight.detach().clone() for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    methods.milora_plus_init(model, make_config()["peft"])
    assert (_logits(model, tokenizer) - before).abs().max().item() == 0.0
    shapes = set()
    for name, layer in model.base_model.model.named_modules():
        if not hasattr(layer, "lora_A") or "default" not in layer.lora_A:
            continue
        w = layer.get_base_layer().weight
        assert torch.equal(w, weights[name])  # the base is untouched (unlike MiLoRA's residual)
        a, b = layer.lora_A["default"].weight.double(), layer.lora_B["default"].weight
        assert torch.count_nonzero(b) == 0
        assert torch.allclose(a @ a.T, torch.eye(4, dtype=torch.float64), atol=1e-5)  # orthonormal rows
        vh = torch.linalg.svd(w.double(), full_matrices=False).Vh[-4:]  # the 4 smallest of the thin SVD
        assert torch.allclose(a.T @ a, vh.T @ vh, atol=1e-4), name  # the same subspace (projectors)
        shapes.add(w.shape[0] < w.shape[1])
    assert shapes == {True, False}  # tall and wide matrices both checked


def test_slicefine_trains_a_column_slice_of_each_weight() -> None:
    """SliceFine on peft's SHiRA: the trained entries of every weight are one contiguous block of
    whole columns from column 0 (filled column by column), r·(in + out) of them (LoRA's budget at
    the same r); the model starts at the base, and a step moves only those entries."""
    from peft import get_peft_model

    from perl_cli.models import load_model, load_tokenizer

    model_cfg = make_config()["model"]
    tokenizer = load_tokenizer(model_cfg)
    base = load_model(model_cfg, on_gpu=False)
    before = _logits(base, tokenizer)
    peft_section = {**make_config()["peft"], "type": "slicefine", "r": 2, "target_modules": ["q_proj", "down_proj"]}
    model = get_peft_model(base, methods.get_method("slicefine").build_config(peft_section, {}))
    assert (_logits(model, tokenizer) - before).abs().max().item() == 0.0
    layers = [m for m in model.modules() if hasattr(m, "shira_indices") and "default" in m.shira_indices]
    assert layers
    for layer in layers:
        out_f, in_f = layer.out_features, layer.in_features
        rows, cols = layer.shira_indices["default"].long()
        count = 2 * (in_f + out_f)
        assert rows.numel() == count == layer.shira_weight["default"].numel()
        # column-major order from (0, 0): entry k sits at row k % out, column k // out
        order = torch.argsort(cols * out_f + rows)
        assert torch.equal((cols * out_f + rows)[order], torch.arange(count))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = tokenizer("12 + 7 = 19", return_tensors="pt").input_ids
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    layer = layers[0]
    delta = layer.get_delta_weight("default").to_dense()
    changed = delta != 0
    width = (2 * (layer.in_features + layer.out_features)) // layer.out_features
    assert changed.any() and not changed[:, width + 1:].any()  # nothing beyond the slice moved
