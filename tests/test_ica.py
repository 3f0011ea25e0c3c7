"""PEFT + ICA masking: the mask's size, that masked neurons contribute nothing, the file, and A/B fairness."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any

import pytest
from training_support import make_config, shaped_reward_functions, write_experiment
from typer.testing import CliRunner

from perl_cli import config as configlib
from perl_cli import ica
from perl_cli.cli import app

FFN = 256  # builtin:tiny-random's MLP neurons per layer
LAYERS = 2
COMPONENTS = 5
PERCENTILE = 98.0


# --- plan time ---------------------------------------------------------------------------------


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, values in config.items() for k, v in values.items()}


@pytest.mark.parametrize(("suite", "seeds"), [("ica", [42, 123, 456]), ("ica-demo", [42, 123])])
def test_shipped_ab_pairs_differ_only_in_the_mask(suite: str, seeds: list[int]) -> None:
    cfg = configlib.load(configlib.PACKAGED_CONFIG)
    exps = configlib.expand(cfg, suite)
    by_mode: dict[str, dict[int, Any]] = {}
    for e in exps:
        by_mode.setdefault(e.config["ica"]["mode"], {})[e.seed] = e
    assert set(by_mode) == {"off", "key"} and sorted(by_mode["off"]) == sorted(by_mode["key"]) == sorted(seeds)
    for seed in seeds:
        a, b = by_mode["off"][seed], by_mode["key"][seed]
        fa, fb = _flat(a.config), _flat(b.config)
        assert {k for k in fa if fa[k] != fb[k]} == {"ica.mode"}, (a.name, b.name)
        assert a.fingerprint != b.fingerprint
        assert b.config["ica"] == {"mode": "key", "components": 20, "percentile": 98.0, "sample_prompts": 64}


def test_a_mask_that_is_off_keeps_fingerprints_and_ignores_its_unused_settings() -> None:
    config = make_config()
    earlier = {k: v for k, v in config.items() if k != "ica"}
    earlier["peft"] = {k: v for k, v in config["peft"].items() if k != "layers"}
    assert configlib.fingerprint(config) == configlib.fingerprint(earlier)
    config["ica"]["components"] = 7  # unused while the mask is off
    assert configlib.fingerprint(config) == configlib.fingerprint(earlier)
    config["ica"]["mode"] = "key"
    assert configlib.fingerprint(config) != configlib.fingerprint(earlier)


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ('ica = { mode = "mask" }', "ica.mode = 'mask' must be one of off, key, complement"),
        ("ica = { mode = \"key\", components = 0 }", "ica.components = 0 must be >= 1"),
        ("ica = { mode = \"key\", percentile = 101 }", "ica.percentile = 101.0 must be in [0, 100]"),
        ("ica = { mode = \"key\", components = 600 }", "exceeds the 512 MLP neurons per layer"),
        ("ica = { mode = \"key\" }\ntraining = { use_vllm = true }", "vLLM"),
    ],
)
def test_bad_ica_settings_are_exit_2_errors_at_plan_time(tmp_path: Path, settings: str, needle: str) -> None:
    path = tmp_path / "experiments.toml"
    path.write_text(textwrap.dedent("""
        [suites.s]
        name = "x_s{seed}"
        [suites.s.base]
        model = { model_name_or_path = "builtin:tiny-countdown" }
        %s
        [suites.s.matrix]
        seed = [1]
    """) % settings)
    result = CliRunner().invoke(app, ["plan", "s", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert needle in " ".join(result.output.replace("│", " ").split()), result.output


# --- the mask -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> dict[str, Any]:
    """builtin:tiny-random, its tokenizer, and its mask over 16 training prompts."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from perl_cli.data import countdown
    from perl_cli.models import load_model, load_tokenizer

    config = make_config(ica__mode="key", ica__components=COMPONENTS, ica__sample_prompts=16)
    tokenizer = load_tokenizer(config["model"])
    model = load_model(config["model"], on_gpu=False)
    splits = countdown.load_splits(config["dataset"])
    prompts = [countdown.render_prompt(p, "compact", tokenizer) for p in ica.sample(splits.train, 16, 42)]
    mask = ica.compute_mask(model, tokenizer, prompts, ica.mask_settings(config))
    return {"config": config, "tokenizer": tokenizer, "model": model, "mask": mask, "prompts": prompts}


def test_mask_has_the_expected_size_per_layer(tiny: dict[str, Any]) -> None:
    mask = tiny["mask"]
    assert mask["intermediate_size"] == FFN and sorted(mask["layers"]) == [str(i) for i in range(LAYERS)]
    # Neurons at or above the 98th percentile of FFN distinct scores (numpy's linear interpolation).
    expected = FFN - math.ceil(PERCENTILE / 100 * (FFN - 1))
    for neurons in mask["layers"].values():
        assert len(neurons) == expected == 6
        assert neurons == sorted(set(neurons)) and all(0 <= n < FFN for n in neurons)
    assert mask["selected"] == LAYERS * expected and mask["tokens"] > 16 and mask["seconds"] > 0


def test_selection_is_the_neurons_that_carry_an_independent_source() -> None:
    """Ten neurons driven by one non-Gaussian source get the largest mixing weights, whatever their scale."""
    np = pytest.importorskip("numpy")
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    tokens, neurons = 2000, 100
    activations = rng.normal(size=(tokens, neurons))
    source = rng.laplace(size=tokens)
    activations[:, 40:50] += 3 * source[:, None]
    activations[:, 40:50] *= np.arange(1, 11) * 100  # neurons are standardised: scale must not matter
    selected, converged = ica.select_neurons(activations, components=3, percentile=90.0, seed=0)
    assert converged and selected == list(range(40, 50))


def _logits(model: Any, tokenizer: Any, prompts: list[str]) -> Any:
    import torch

    enc = tokenizer(prompts[:4], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits


def _zero_columns(model: Any, mask: dict[str, Any], keep_selected: bool) -> None:
    """What the mask should do, done by hand: zero the down projection's input columns."""
    import torch

    for index, down in ica.down_projections(model).items():
        selected = torch.zeros(FFN, dtype=torch.bool)
        selected[mask["layers"][str(index)]] = True
        zero = ~selected if keep_selected else selected
        down.weight.data[:, zero] = 0


@pytest.mark.parametrize("mode", ["key", "complement"])
def test_masked_neurons_contribute_exactly_zero(tiny: dict[str, Any], mode: str) -> None:
    import copy

    import torch

    masked = copy.deepcopy(tiny["model"])
    handles = ica.apply_mask(masked, tiny["mask"], mode)
    by_hand = copy.deepcopy(tiny["model"])
    _zero_columns(by_hand, tiny["mask"], keep_selected=mode == "complement")
    plain = _logits(tiny["model"], tiny["tokenizer"], tiny["prompts"])
    got = _logits(masked, tiny["tokenizer"], tiny["prompts"])
    assert torch.allclose(got, _logits(by_hand, tiny["tokenizer"], tiny["prompts"]), atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # the mask changes the model
    for handle in handles:
        handle.remove()
    assert torch.allclose(_logits(masked, tiny["tokenizer"], tiny["prompts"]), plain)


def test_complement_is_the_inverse_of_key(tiny: dict[str, Any]) -> None:
    neurons = tiny["mask"]["layers"]["0"]
    key = ica.keep_vector(neurons, FFN, "key")
    complement = ica.keep_vector(neurons, FFN, "complement")
    assert (key + complement == 1).all() and int(complement.sum()) == len(neurons)
    assert complement[neurons].eq(1).all() and key[neurons].eq(0).all()


def test_the_mask_reaches_the_adapter_as_well_as_the_base_weight(tiny: dict[str, Any]) -> None:
    """On a LoRA model the hook sits on the wrapper: base layer and lora_A both see the zeros."""
    import copy

    from perl_cli.methods import build_adapter

    config = make_config(peft__target_modules=["down_proj"])
    model = build_adapter(copy.deepcopy(tiny["model"]), config["peft"], config["training"])
    ica.apply_mask(model, tiny["mask"], "key")
    seen: dict[str, Any] = {}
    for name, module in model.named_modules():
        if name.endswith("layers.0.mlp.down_proj.base_layer") or name.endswith("layers.0.mlp.down_proj.lora_A.default"):
            module.register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[0].detach()))
    _logits(model, tiny["tokenizer"], tiny["prompts"])
    assert len(seen) == 2
    selected = tiny["mask"]["layers"]["0"]
    for x in seen.values():
        assert x[..., selected].abs().max() == 0
        assert x.abs().sum() > 0


def test_the_mask_file_round_trips(tiny: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / ica.MASK_FILE
    ica.save_mask(path, tiny["mask"])
    settings = tiny["mask"]["settings"]
    assert ica.load_mask(path, settings) == json.loads(json.dumps(tiny["mask"]))
    assert ica.load_mask(path, {**settings, "components": 6}) is None  # other settings: recompute
    path.write_text(json.dumps({**tiny["mask"], "layers": {"0": [FFN]}}))
    assert ica.load_mask(path, settings) is None  # out of range: recompute
    path.write_text("{")
    assert ica.load_mask(path, settings) is None


# --- in a run --------------------------------------------------------------------------------------


def test_a_masked_run_saves_its_mask_reports_its_time_and_reuses_it_on_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from perl_cli import rewards
    from perl_cli.train import run_experiment

    monkeypatch.setattr(rewards, "reward_functions", shaped_reward_functions)
    calls = []
    original = ica.compute_mask
    monkeypatch.setattr(ica, "compute_mask", lambda *a, **k: calls.append(1) or original(*a, **k))
    config = make_config(
        "masked", ica__mode="key", ica__components=COMPONENTS, ica__sample_prompts=8,
        training__max_steps=2, training__save_steps=1, eval__eval_base=False,
    )
    exp = write_experiment(tmp_path, config)
    assert run_experiment(exp) == 0, (exp / "status.json").read_text()
    mask = json.loads((exp / ica.MASK_FILE).read_text())
    results = json.loads((exp / "eval.json").read_text())
    assert results["ica_mode"] == "key" and results["ica_reused"] is False
    assert results["ica_seconds"] == mask["seconds"] > 0
    assert results["ica_selected_neurons"] == mask["selected"] == 2 * 6
    assert calls == [1]

    # A rerun from the last checkpoint reuses the saved mask instead of recomputing it.
    (exp / "eval.json").unlink()
    config["training"]["max_steps"] = 3
    write_experiment(tmp_path, config)
    assert run_experiment(exp) == 0, (exp / "status.json").read_text()
    results = json.loads((exp / "eval.json").read_text())
    assert calls == [1] and results["ica_reused"] is True and results["ica_seconds"] == mask["seconds"]
