"""Spectral and gradient tracking: exact singular values without dense SVDs."""

from __future__ import annotations

import math

import pytest
import torch

from perl_cli.tracking import gradients, spectral


def tiny_model() -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return Qwen2ForCausalLM(cfg)


def peft_model(method: str) -> torch.nn.Module:
    import peft

    targets = ["q_proj", "v_proj", "down_proj"]
    configs = {
        "lora": peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets),
        "rslora": peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_rslora=True),
        "dora": peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_dora=True),
        "pissa": peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights="pissa"),
        "adalora": peft.AdaLoraConfig(init_r=6, target_r=4, lora_alpha=8, target_modules=targets, total_step=10),
        "vera": peft.VeraConfig(r=8, target_modules=["q_proj", "v_proj"]),
    }
    return peft.get_peft_model(tiny_model(), configs[method])


def perturb(model: torch.nn.Module, seed: int = 1) -> None:
    """Move every trainable parameter, as training would, so that ΔW ≠ 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


def dense_delta(module) -> torch.Tensor:
    return module.get_delta_weight("default").detach().float()


@pytest.mark.parametrize("method", ["lora", "rslora", "dora", "adalora", "vera"])
def test_singular_values_match_a_dense_svd(method: str) -> None:
    model = peft_model(method)
    perturb(model)
    checked = 0
    for _, module in model.named_modules():
        factors = spectral.update_factors(module)
        if factors is None:
            continue
        ours = spectral.singular_values(*factors)
        dense = torch.linalg.svdvals(dense_delta(module))[: len(ours)]
        assert torch.allclose(ours, dense, rtol=1e-4, atol=1e-6), (method, ours, dense)
        checked += 1
    assert checked >= 4


def test_pissa_update_is_measured_against_its_initial_factors() -> None:
    model = peft_model("pissa")
    initial = spectral.capture_initial(model)
    before = spectral.snapshot(model, initial)
    assert all(layer["spectral_norm"] < 1e-5 for layer in before.values())  # nothing learned yet
    perturb(model)
    after = spectral.snapshot(model, initial)
    for name, module in model.named_modules():
        if name in initial:
            b0, a0 = initial[name]
            dense = torch.linalg.svdvals(dense_delta(module) - b0 @ a0)
            got = after[spectral.short_name(name)]["singular_values"]
            assert torch.allclose(torch.tensor(got), dense[: len(got)], rtol=1e-4, atol=1e-6)


def test_summary_statistics() -> None:
    flat = spectral.summarize(torch.tensor([1.0, 1.0, 1.0, 1.0]))
    assert flat["effective_rank"] == pytest.approx(4.0) and flat["stable_rank"] == pytest.approx(4.0)
    spike = spectral.summarize(torch.tensor([10.0, 0.0, 0.0]))
    assert spike["effective_rank"] == pytest.approx(1.0) and spike["condition_number"] == pytest.approx(1.0)
    zero = spectral.summarize(torch.zeros(3))
    assert zero["effective_rank"] == 0.0 and zero["condition_number"] is None
    assert math.isclose(spectral.summarize(torch.tensor([3.0, 4.0]))["frobenius_norm"], 5.0)


def test_ia3_is_skipped_not_crashed() -> None:
    import peft

    model = peft.get_peft_model(tiny_model(), peft.IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]))
    assert spectral.snapshot(model) == {}


def test_gradient_norms_by_layer_and_kind() -> None:
    model = peft_model("lora")
    perturb(model)
    out = model(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]]))
    out.loss.backward()
    norms = gradients.gradient_norms(model)
    assert set(norms) >= {"layers.0.self_attn.q_proj", "layers.1.mlp.down_proj"}
    assert set(norms["layers.0.self_attn.q_proj"]) == {"A", "B"}
    expected = model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight.grad.norm()
    assert norms["layers.0.self_attn.q_proj"]["B"] == pytest.approx(float(expected), rel=1e-5)


def test_split_name_kinds() -> None:
    assert gradients.split_name("base_model.model.model.layers.3.mlp.up_proj.lora_magnitude_vector.default.weight") == ("layers.3.mlp.up_proj", "magnitude")
    assert gradients.split_name("base_model.model.model.layers.0.self_attn.v_proj.vera_lambda_d.default") == ("layers.0.self_attn.v_proj", "lambda_d")


# --- in a real GRPO run -----------------------------------------------------------------


@pytest.mark.parametrize("method", ["pissa", "adalora"])
def test_worker_writes_tracking_histories(tmp_path, monkeypatch, method: str) -> None:
    """Spectra at steps 0, 2, 4 (and the end), gradient flow at 2 and 4; readable without torch."""
    from training_support import make_config, shaped_reward_functions, write_experiment

    from perl_cli import rewards
    from perl_cli.state import read_json
    from perl_cli.tracking.callback import GRADIENT_FILE, SPECTRAL_FILE
    from perl_cli.train import run_experiment

    monkeypatch.setattr(rewards, "reward_functions", shaped_reward_functions)
    config = make_config(
        f"track_{method}",
        peft__type=method,
        training__max_steps=4,
        tracker__enable_spectral_tracking=True,
        tracker__enable_gradient_tracking=True,
        tracker__spectral_log_frequency=2,
        tracker__gradient_log_frequency=2,
        eval__enabled=False,
    )
    if method == "adalora":
        config["peft"].update(adalora_tinit=1, adalora_tfinal=1, adalora_delta_t=1)
    exp = write_experiment(tmp_path, config)
    assert run_experiment(exp) == 0
    spectra = read_json(exp / SPECTRAL_FILE)["history"]
    flow = read_json(exp / GRADIENT_FILE)["history"]
    assert [row["step"] for row in spectra] == [0, 2, 4]
    assert [row["step"] for row in flow] == [2, 4]
    assert (exp / SPECTRAL_FILE.replace(".json", ".pt")).exists()
    first, last = spectra[0]["layers"], spectra[-1]["layers"]
    assert set(first) == set(last) and len(first) >= 4
    if method == "pissa":
        # PiSSA starts from the principal components: nothing learned yet at step 0.
        assert max(layer["spectral_norm"] for layer in first.values()) < 1e-5
    assert max(layer["spectral_norm"] for layer in last.values()) > 0
    assert all(set(kinds) <= {"A", "B", "E"} and kinds for kinds in flow[-1]["layers"].values())
