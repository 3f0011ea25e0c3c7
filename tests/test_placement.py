"""Selective placement: `targets` × `layers` adapt exactly the requested modules; bad specs are exit 2."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from training_support import make_config
from typer.testing import CliRunner

from perl_cli import config as configlib
from perl_cli import placement
from perl_cli.cli import app

runner = CliRunner()

# builtin:tiny-random: 2 layers, hidden 64, 4 heads of 16 with 2 KV heads, MLP 256.
SHAPES = {  # (in, out)
    "self_attn.q_proj": (64, 64),
    "self_attn.k_proj": (64, 32),
    "self_attn.v_proj": (64, 32),
    "self_attn.o_proj": (64, 64),
    "mlp.gate_proj": (64, 256),
    "mlp.up_proj": (64, 256),
    "mlp.down_proj": (256, 64),
}
ATTENTION = [m for m in SHAPES if m.startswith("self_attn.")]
MLP = [m for m in SHAPES if m.startswith("mlp.")]
RANK = 4


# --- plan time -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "num_layers", "expected"),
    [
        ("all", 4, [0, 1, 2, 3]),
        ("0:2", 4, [0, 1]),
        ("2:", 4, [2, 3]),
        ("::2", 4, [0, 2]),
        ("1::2", 6, [1, 3, 5]),
        ("-1:", 4, [3]),
        ([3, 0], 4, [0, 3]),
        ("0:14", 28, list(range(14))),
        ("14:", 28, list(range(14, 28))),
    ],
)
def test_layer_specs_select_the_expected_layers(spec: Any, num_layers: int, expected: list[int]) -> None:
    assert placement.layer_spec_problem(spec) is None
    assert placement.select_layers(spec, num_layers) == expected


@pytest.mark.parametrize("spec", ["first", "0-12", "1:2:3:4", "::0", "a:b", [], [0, 0], [-1], ["0"], [True], 3])
def test_bad_layer_specs_are_refused(spec: Any) -> None:
    assert placement.layer_spec_problem(spec) is not None


def _suite(tmp_path: Path, settings: str, model: str = "builtin:tiny-countdown", method: str = "lora") -> Path:
    path = tmp_path / "experiments.toml"
    path.write_text(textwrap.dedent(f"""
        [suites.s]
        name = "x_s{{seed}}"
        [suites.s.base.model]
        model_name_or_path = "{model}"
        [suites.s.base.peft]
        type = "{method}"
        {settings}
        [suites.s.matrix]
        seed = [1]
    """))
    return path


@pytest.mark.parametrize(
    ("settings", "needles"),
    [
        ('layers = "0-2"', ["peft.layers", "0:12"]),
        ('layers = "::0"', ["step must not be 0"]),
        ("layers = [1, 1]", ["names a layer twice"]),
        ("layers = []", ["at least one layer"]),
        ('target_modules = "attn"', ["peft.target_modules", "attention", "mlp"]),
        ('layers = "4:"', ["selects none of the model's 4 layers", "builtin:tiny-countdown"]),
        ("layers = [0, 7]", ["names layer 7", "4 layers"]),
    ],
)
def test_bad_placements_are_exit_2_errors_at_plan_time(tmp_path: Path, settings: str, needles: list[str]) -> None:
    result = runner.invoke(app, ["plan", "s", "--config", str(_suite(tmp_path, settings))])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.replace("│", " ").split())
    assert "experiments.toml" in text
    for needle in needles:
        assert needle in text, text


@pytest.mark.parametrize(
    ("method", "settings", "needle"),
    [
        ("ln_tuning", 'target_modules = "attention"', "places its own vectors"),
        ("ia3", 'layers = "0:2"', "its all-linear is a placement of its own"),
    ],
)
def test_presets_and_layer_subsets_need_names_for_methods_with_their_own_placement(
    tmp_path: Path, method: str, settings: str, needle: str
) -> None:
    result = runner.invoke(app, ["plan", "s", "--config", str(_suite(tmp_path, settings, method=method))])
    assert result.exit_code == 2 and needle in " ".join(result.output.split()), result.output


def test_targets_and_layers_are_short_names_in_matrices_and_sets(tmp_path: Path) -> None:
    path = tmp_path / "experiments.toml"
    path.write_text(textwrap.dedent("""
        [suites.s]
        name = "{targets}_s{seed}"
        [suites.s.base.model]
        model_name_or_path = "builtin:tiny-countdown"
        [suites.s.matrix]
        targets = ["all-linear", "attention", "mlp"]
        seed = [1]
        [[suites.s.experiments]]
        name = "half_s1"
        layers = "0:2"
        seed = 1
    """))
    cfg = configlib.load(path)
    exps = {e.name: e.config["peft"] for e in configlib.expand(cfg, "s", sets=["layers=::2"])}
    assert {n: (p["target_modules"], p["layers"]) for n, p in exps.items()} == {
        "all-linear_s1": ("all-linear", "::2"),
        "attention_s1": ("attention", "::2"),
        "mlp_s1": ("mlp", "::2"),
        "half_s1": ("all-linear", "::2"),
    }


def test_default_placement_keeps_fingerprints_of_earlier_experiments() -> None:
    """Experiments that finished before `peft.layers` existed must not turn stale."""
    config = make_config()
    earlier = {k: v for k, v in config.items() if k != "ica"}
    earlier["peft"] = {k: v for k, v in config["peft"].items() if k != "layers"}
    assert configlib.fingerprint(config) == configlib.fingerprint(earlier)
    config["peft"]["layers"] = "0:1"
    assert configlib.fingerprint(config) != configlib.fingerprint(earlier)


def test_shipped_placement_suites_have_the_six_variants_per_seed() -> None:
    cfg = configlib.load(configlib.PACKAGED_CONFIG)
    for suite, seeds, layers in (("placement", [42, 123, 456], 28), ("placement-demo", [42], 4)):
        exps = configlib.expand(cfg, suite)
        variants = {}
        for e in exps:
            p = e.config["peft"]
            assert p["type"] == "lora"
            variants.setdefault((p["target_modules"], str(p["layers"])), []).append(e.seed)
        half = layers // 2
        assert variants == {
            ("all-linear", "all"): seeds,
            ("attention", "all"): seeds,
            ("mlp", "all"): seeds,
            ("all-linear", f"0:{half}"): seeds,
            ("all-linear", f"{half}:"): seeds,
            ("all-linear", "::2"): seeds,
        }, suite
        # Identical but for the placement: the comparison is fair.
        rest = {
            configlib.fingerprint({**e.config, "peft": {**e.config["peft"], "target_modules": "", "layers": ""}})
            for e in exps if e.seed == seeds[0]
        }
        assert len(rest) == 1, suite


# --- load time: what is adapted ----------------------------------------------------------------


def _adapted(targets: Any, layers: Any, method: str = "lora") -> tuple[set[str], int]:
    """(adapted module names "layer.module", trainable parameters) on builtin:tiny-random."""
    from perl_cli.methods import build_adapter
    from perl_cli.models import load_model

    config = make_config(peft__type=method, peft__target_modules=targets, peft__layers=layers)
    model = build_adapter(load_model(config["model"], on_gpu=False), config["peft"], config["training"])
    names = set()
    for name, module in model.named_modules():
        if hasattr(module, "base_layer") and placement.layer_index(name) is not None:
            names.add(f"{placement.layer_index(name)}.{name.split('.layers.')[1].split('.', 1)[1]}")
    return names, int(model.get_nb_trainable_parameters()[0])


def _expected(modules: list[str], layers: list[int]) -> tuple[set[str], int]:
    names = {f"{i}.{m}" for i in layers for m in modules}
    return names, sum(RANK * sum(SHAPES[m]) for _ in layers for m in modules)


@pytest.mark.parametrize(
    ("targets", "layers", "modules", "chosen"),
    [
        ("all-linear", "all", list(SHAPES), [0, 1]),
        ("attention", "all", ATTENTION, [0, 1]),
        ("mlp", "all", MLP, [0, 1]),
        ("all-linear", "0:1", list(SHAPES), [0]),
        ("all-linear", "1:", list(SHAPES), [1]),
        ("all-linear", "::2", list(SHAPES), [0]),
        ("mlp", [1], MLP, [1]),
        (["q_proj", "v_proj"], "1:", ["self_attn.q_proj", "self_attn.v_proj"], [1]),
        (["down_proj"], "all", ["mlp.down_proj"], [0, 1]),
    ],
)
def test_adapted_modules_and_parameters_are_exactly_the_requested_ones(
    targets: Any, layers: Any, modules: list[str], chosen: list[int]
) -> None:
    pytest.importorskip("torch")
    assert _adapted(targets, layers) == _expected(modules, chosen)


def test_layer_subsets_work_for_other_methods_and_ia3_with_names() -> None:
    pytest.importorskip("torch")
    names, _ = _adapted("attention", "1:", method="dora")
    assert names == {f"1.{m}" for m in ATTENTION}
    names, params = _adapted(["k_proj", "down_proj"], [0], method="ia3")
    assert names == {"0.self_attn.k_proj", "0.mlp.down_proj"}
    assert params == 32 + 256  # IA3 scales k's output and down_proj's input


@pytest.mark.parametrize(
    ("targets", "layers", "needle"),
    [
        ("all-linear", [2], "names layer 2, but the model has 2 layers"),
        ("all-linear", "5:", "selects none of the model's 2 layers"),
        (["q_proj", "nope_proj"], "all", "no module named nope_proj"),
        (["nope_proj"], "0:1", "no module named nope_proj"),
    ],
)
def test_placements_the_model_cannot_satisfy_are_clear_errors(targets: Any, layers: Any, needle: str) -> None:
    pytest.importorskip("torch")
    with pytest.raises(placement.PlacementError, match=needle):
        _adapted(targets, layers)
