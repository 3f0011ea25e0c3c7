"""Every PEFT method at the real 1.5B model's shapes: widths, heads and vocabulary, two layers.

The tiny tests (test_methods_train.py) never exercise PiSSA's and MiLoRA's SVDs on a
1536 x 8960 weight, logits over 151,936 tokens, or the spectral snapshot at real widths;
this does, through the real worker (`run_experiment`), with random weights of the shape of
DeepSeek-R1-Distill-Qwen-1.5B (architectures.toml, perl_cli/shapes.py): each method
builds, initialises, trains two GRPO steps with 2-token completions, saves, reloads to the
same outputs and records a spectral snapshot.

The base model (560M parameters in float32) is built once per module and copied for
each run, instead of being built three times per method.

Markers: `slow` and `realshape` on CPU (`pytest -m realshape`); `gpu` for the same test on
CUDA, skipped where CUDA is absent (the reason is in pytest's summary, `-ra`).
"""

from __future__ import annotations

import copy
import gc
import json
from pathlib import Path
from typing import Any

import pytest
from training_support import capture_session, make_config, method_overrides, probe_logits, write_experiment

torch = pytest.importorskip("torch")

from perl_cli.methods import METHOD_NAMES  # noqa: E402

SHAPE = "builtin:shape:DeepSeek-R1-Distill-Qwen-1.5B:layers=2"
WIDTHS = {"hidden": 1536, "intermediate": 8960, "vocab": 151936, "kv": 256}
STEPS = 2
# Two tokens: the prefill and one cached decoding step. Every forward of HRA (a 8960 x 8960
# product of reflections per down_proj) and DoRA (the norms of every adapted weight) costs
# the same whatever its tokens, so each generated token is a whole forward of those methods.
COMPLETION = 2
# Methods whose update has no low-rank form: the spectral snapshot records no layer for them.
# HRA: a product of Householder reflections (I - 2uu^T), not a factored B·A; the tracker has no
# factored form for it yet, so its snapshot is empty too (issue 21 added HRA after the tracker).
NO_SPECTRUM = {"ia3", "ln_tuning", "miss", "hra", "slicefine"}
# HRA everywhere but down_proj. peft's HRALinear rebuilds its weight on every forward, starting
# with an in x in identity times the product of reflections: at down_proj's in = 8960 that is
# a dense 8960^3 product (1.4 TFLOP) per layer and forward, and again in the backward; two
# layers had not finished the first of two steps after 6 minutes on one core. The others see
# both real widths (gate/up: 1536 in, 8960 out); HRA's 8960-wide input is measured by the bench
# (bench/real_shape_memory.py --methods hra, docs/memory.md) and its memory pinned in
# tests/test_architectures.py.
HRA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"]
FULL_METHODS = {"full"}  # methods that train the embeddings and the head too
# Full fine-tuning at these widths trains 560M float32 parameters (about 9 GB with AdamW) on the
# CPU: too big for CI; its save and reload are tested end to end on a tiny model
# (tests/test_math_e2e.py) and its memory terms in tests/test_architectures.py.
ADAPTER_METHODS = [m for m in METHOD_NAMES if m not in FULL_METHODS]
CUDA_MISSING = "CUDA is not available (torch.cuda.is_available() is False): the gpu tests need a CUDA GPU"


@pytest.fixture(scope="module")
def bases() -> dict[Any, Any]:
    """One base model per dtype, built on first use and copied for every run (and its probe logits)."""
    return {}


@pytest.fixture(scope="module")
def subspace_cache() -> dict[Any, Any]:
    """geometry.subspaces results by the weight's exact bytes, shared by every run of the module."""
    return {}


def _cache_subspaces(monkeypatch: pytest.MonkeyPatch, cache: dict[Any, Any]) -> None:
    """Compute each base weight's singular subspaces once per module, not once per method.

    The spectral snapshot's update geometry (tracking/geometry.py) eigendecomposes every
    tracked base weight's Gram matrix in float64 at the start of each run: 14 weights of up
    to 8960 x 1536, about 17 s a method, the same weights for every method that keeps the
    base (PiSSA/MiLoRA's W = residual + B0A0 differs in rounding, so gets its own entry). The
    key is the weight's exact bytes, so a cached answer is the answer `subspaces` would give.
    """
    import hashlib

    from perl_cli.tracking import geometry

    compute = geometry.subspaces

    def cached(weight: Any, k: int) -> Any:
        data = weight.detach().contiguous().cpu()
        digest = hashlib.sha1(data.view(torch.uint8).numpy().data).hexdigest()
        key = (tuple(data.shape), str(data.dtype), int(k), digest)
        if key not in cache:
            cache[key] = compute(weight, k)
        found = cache[key]
        return geometry.Subspaces(found.left.to(weight.device), found.right.to(weight.device), found.scale)

    monkeypatch.setattr(geometry, "subspaces", cached)


def _base(bases: dict[Any, Any], dtype: Any) -> Any:
    from perl_cli.models import load_model

    if dtype not in bases:
        bases.clear()  # at most one base (and its probe logits) in memory
        gc.collect()
        model = load_model({"model_name_or_path": SHAPE, "dtype": "float32"}, on_gpu=False)
        bases[dtype] = model.to(dtype)
    return bases[dtype]


def _copy(base: Any, method: str, device: str) -> Any:
    """A copy of the base model whose layers are its own.

    On the CPU the input embeddings and the output head (1.87 of the 2.24 GB) are shared
    with the base rather than copied: no method here trains them (PiSSA and MiLoRA change
    the adapted layers' weights, which are copied), and copying them dominated the test's
    time. A method that trains every weight (FULL_METHODS) gets a complete copy, as does
    the GPU, where moving the copy would move the shared tensors too.
    """
    memo: dict[int, Any] = {}
    if device == "cpu" and method not in FULL_METHODS:
        for module in (base.get_input_embeddings(), base.get_output_embeddings()):
            memo.update({id(p): p for p in module.parameters()})
    return copy.deepcopy(base, memo)


def _config(method: str) -> dict[str, Any]:
    over = {**method_overrides(method), "model__model_name_or_path": SHAPE}
    if method == "adalora":  # two steps: importance scored at step 1, final ranks at step 2
        over["peft__adalora_tfinal"] = 0
    if method == "hra":
        over["peft__target_modules"] = HRA_TARGETS
    return make_config(
        f"{method}_shape",
        **over,
        dataset__data_size=16,
        training__per_device_train_batch_size=2,
        training__num_generations=2,
        training__max_completion_length=COMPLETION,
        training__max_steps=STEPS,
        eval__enabled=False,
        tracker__enable_spectral_tracking=True,
        tracker__spectral_log_frequency=1,
        tracker__enable_gradient_tracking=False,
    )


def _base_logits(bases: dict[Any, Any], dtype: Any, device: str, tokenizer: Any) -> Any:
    """The untrained base's probe logits: the same for every method, computed once per base."""
    key = ("logits", dtype)
    if key not in bases:
        base = _base(bases, dtype)
        bases[key] = probe_logits(base.to(device), tokenizer)
        base.to("cpu")
    return bases[key]


def _run_real_shape(
    method: str, device: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bases: dict, subspace_cache: dict
) -> None:
    from peft import PeftModel

    from perl_cli.models import load_tokenizer
    from perl_cli.train import run_experiment
    from perl_cli.train import session as session_mod

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    base = _base(bases, dtype)
    config = _config(method)
    tokenizer = load_tokenizer(config["model"])
    base_logits = _base_logits(bases, dtype, device, tokenizer)  # before any run shares its tensors
    if device == "cpu":  # on a GPU machine too: this variant checks the CPU path
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(session_mod, "load_model", lambda cfg, on_gpu, progress=None: _copy(base, method, device))
    captured = capture_session(monkeypatch)
    _cache_subspaces(monkeypatch, subspace_cache)

    exp = write_experiment(tmp_path, config)
    assert run_experiment(exp) == 0, (exp / "status.json").read_text() + (exp / "train.log").read_text()[-3000:]
    status = json.loads((exp / "status.json").read_text())
    assert status["state"] == "completed" and status["step"] == STEPS
    results = json.loads((exp / "eval.json").read_text())
    assert results["method"] == method and results["device"] == device
    assert 0 < results["trainable_params"] < results["total_params"]

    session = captured.pop("session")
    model = session.model
    # The real widths: the adapted layers see 1536 x 8960 weights and the head 151,936 tokens.
    head = model.get_output_embeddings()
    assert tuple(head.weight.shape) == (WIDTHS["vocab"], WIDTHS["hidden"])
    up = model.get_base_model().model.layers[0].mlp.up_proj
    up_base = up.get_base_layer() if hasattr(up, "get_base_layer") else up
    assert tuple(up_base.weight.shape) == (WIDTHS["intermediate"], WIDTHS["hidden"])

    trained = probe_logits(model, tokenizer)
    assert trained.shape[-1] == WIDTHS["vocab"] and torch.isfinite(trained).all()
    assert not torch.allclose(trained, base_logits, atol=1e-5), f"{method}: training did not change the model"

    spectra = json.loads((exp / "spectral_history.json").read_text())["history"]
    assert [row["step"] for row in spectra] == list(range(STEPS + 1))  # at the start and after each step
    last = spectra[-1]["layers"]
    if method in NO_SPECTRUM:
        assert last == {}
    else:
        assert "layers.0.mlp.up_proj" in last and "layers.1.mlp.down_proj" in last, sorted(last)
        assert all(entry["spectral_norm"] >= 0 for entry in last.values())
        assert any(entry["spectral_norm"] > 0 for entry in last.values()), f"{method}: no update after {STEPS} steps"

    del model, session, captured
    gc.collect()
    assert (exp / "adapter_config.json").exists(), f"{method}: no adapter saved in {exp}"
    reloaded = PeftModel.from_pretrained(_copy(base, method, device).to(device), str(exp))
    diff = (probe_logits(reloaded, tokenizer) - trained).abs().max().item()
    # float32 on the CPU; bf16 on the GPU rounds the merged-vs-adapter paths differently.
    tolerance = 1e-3 if device == "cpu" else 0.25
    assert diff < tolerance, f"{method}: the reloaded adapter differs from the trained model by {diff:g}"


@pytest.mark.slow
@pytest.mark.realshape
@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_method_at_real_shape_on_cpu(
    method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bases: dict, subspace_cache: dict
) -> None:
    _run_real_shape(method, "cpu", tmp_path, monkeypatch, bases, subspace_cache)


@pytest.mark.gpu
@pytest.mark.realshape
@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_MISSING)
@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_method_at_real_shape_on_gpu(
    method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bases: dict, subspace_cache: dict
) -> None:
    _run_real_shape(method, "cuda", tmp_path, monkeypatch, bases, subspace_cache)
