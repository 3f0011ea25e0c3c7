"""Model shapes without weights (architectures.py) and the memory estimate built on them.

The estimate's terms are pinned for the seed suites' configs and for a long-completion math
config: a change to the formula (scheduler/memory.py) must change these numbers on purpose.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perl_cli import architectures
from perl_cli import config as configlib
from perl_cli.architectures import ArchitectureError, model_shape, parse_shape_name
from perl_cli.scheduler import memory

REPO = Path(__file__).resolve().parent.parent
R1_15B = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
R1_7B = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
QWEN2_1_5B = {  # the numbers of the real config.json (architectures.toml cites where they come from)
    "model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
    "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": False,
}


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads this machine's real hub cache; the lookup cache starts empty."""
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    architectures._model_config_cached.cache_clear()
    return hub


def test_parameter_counts_of_the_seed_models() -> None:
    # Qwen2: biases on q/k/v, untied embeddings. 1.5B minus one embedding matrix (151936 x 1536)
    # is Qwen2.5-1.5B's published 1.54B (tied); 7B matches Qwen2.5-7B's 7.61B.
    assert model_shape(R1_15B)[1].parameters() == 1_777_088_000
    assert model_shape(R1_7B)[1].parameters() == 7_615_616_512
    assert model_shape("DeepSeek-R1-Distill-Qwen-1.5B")[0] == "architectures.toml"  # by its last component
    assert memory.model_parameters(R1_15B) == 1_777_088_000
    # Two layers at the 1.5B widths: what transformers counts for the built model (test_realshape).
    assert model_shape("builtin:shape:DeepSeek-R1-Distill-Qwen-1.5B:layers=2")[1].parameters() == 560_344_576


def test_tied_embeddings_are_counted_once() -> None:
    untied = architectures.shape_from_config(QWEN2_1_5B)
    tied = architectures.shape_from_config({**QWEN2_1_5B, "tie_word_embeddings": True})
    assert untied.parameters() - tied.parameters() == 151936 * 1536


def test_a_local_config_beats_the_name(tmp_path: Path) -> None:
    """Before: a directory named "...-7B" counted as 7e9 parameters whatever its config.json said."""
    model = tmp_path / "my-finetune-7B"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(QWEN2_1_5B))
    assert memory.model_parameters(str(model)) == 1_777_088_000
    assert memory.resolve_shape(str(model))[0] == "local config.json"
    (tmp_path / "empty-7B").mkdir()
    assert memory.model_parameters(str(tmp_path / "empty-7B")) == 7e9  # no config.json: the name


def test_the_hub_cache_is_read_before_the_table_and_the_name(empty_hub_cache: Path) -> None:
    repo = empty_hub_cache / "models--someone--Tiny-7B"
    old, new = repo / "snapshots" / "aaa", repo / "snapshots" / "bbb"
    for snap, layers in ((old, 2), (new, 4)):
        snap.mkdir(parents=True)
        (snap / "config.json").write_text(json.dumps({**QWEN2_1_5B, "num_hidden_layers": layers}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("aaa")  # refs/main wins over the newest snapshot
    source, shape = model_shape("someone/Tiny-7B")
    assert (source, shape.num_layers) == ("hub cache", 2)
    # A cached copy of a seed model wins over the table (it is the real file).
    seed = empty_hub_cache / "models--deepseek-ai--DeepSeek-R1-Distill-Qwen-1.5B" / "snapshots" / "c1"
    seed.mkdir(parents=True)
    (seed / "config.json").write_text(json.dumps({**QWEN2_1_5B, "num_hidden_layers": 3}))
    architectures._model_config_cached.cache_clear()
    assert model_shape(R1_15B)[0] == "hub cache" and model_shape(R1_15B)[1].num_layers == 3


def test_unknown_models_fall_back_to_the_name() -> None:
    assert model_shape("someone/Unknown-3B") is None
    assert memory.model_parameters("someone/Unknown-3B") == 3e9
    assert memory.resolve_shape("someone/Unknown-3B")[0] == "guessed from the name"
    assert memory.model_parameters("org/model-" + "9" * 400 + "B") == memory.DEFAULT_PARAMS


def test_shape_names() -> None:
    full, numbers, layers = parse_shape_name("builtin:shape:DeepSeek-R1-Distill-Qwen-7B:layers=3")
    assert (full, numbers["hidden_size"], layers) == (R1_7B, 3584, 3)
    assert architectures.shape_config("builtin:shape:DeepSeek-R1-Distill-Qwen-1.5B:layers=2")["max_window_layers"] == 2
    with pytest.raises(ArchitectureError, match="known: builtin:shape:DeepSeek-R1-Distill-Qwen-1.5B"):
        parse_shape_name("builtin:shape:Llama-70B")
    with pytest.raises(ArchitectureError, match="at least 1"):
        parse_shape_name("builtin:shape:DeepSeek-R1-Distill-Qwen-1.5B:layers=0")


def test_an_unknown_shape_name_is_a_plan_time_error(tmp_path: Path) -> None:
    toml = tmp_path / "experiments.toml"
    toml.write_text(
        '[suites.s]\nname = "{method}"\n[suites.s.base.model]\nmodel_name_or_path = "builtin:shape:Nope-1B"\n'
        '[suites.s.matrix]\nmethod = ["lora"]\n'
    )
    with pytest.raises(configlib.ConfigError, match=r"model.model_name_or_path: unknown architecture 'Nope-1B'"):
        configlib.expand(configlib.load(toml), "s")


def test_peft_layers_are_checked_against_a_shape_models_layers() -> None:
    from perl_cli.methods import validate_method_settings
    from perl_cli.schema import defaults

    peft = {**defaults()["peft"], "layers": [5]}
    problems = validate_method_settings("lora", peft, model_name="builtin:shape:DeepSeek-R1-Distill-Qwen-1.5B:layers=2")
    assert any("has 2 layers" in p for p in problems), problems


@settings(max_examples=60, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=20), inner, max_size=6),
                    max_leaves=12))
def test_any_config_json_gives_a_shape_or_none(value: object) -> None:
    """A hostile config.json never crashes the estimate: a shape with positive numbers, or None."""
    if isinstance(value, dict):
        shape = architectures.shape_from_config({**value})
        assert shape is None or (shape.parameters() > 0 and shape.kv_width > 0)
        shape = architectures.shape_from_config({**QWEN2_1_5B, **value})
        assert shape is None or shape.parameters() > 0


def test_an_unreadable_config_json_is_ignored(tmp_path: Path) -> None:
    model = tmp_path / "broken-7B"
    model.mkdir()
    for text in ("{not json", "[1, 2]", '{"hidden_size": "wide"}', "x" * (2 << 20)):
        (model / "config.json").write_text(text)
        architectures._model_config_cached.cache_clear()
        assert memory.model_parameters(str(model)) == 7e9


# --- the memory estimate, term by term -------------------------------------------------


def _experiment(suite: str):
    return configlib.expand(configlib.load(REPO / "experiments.toml"), suite)[0]


def _terms(config: dict) -> dict[str, float]:
    return {k: round(v) for k, v in memory.estimate(config).as_dict().items() if isinstance(v, float)}


def test_estimate_terms_for_the_core_suites() -> None:
    # core-1.5b: 4 completions x (256 + 1024) tokens, accumulation 8, bf16, LoRA r16 all-linear.
    exp = _experiment("core-1.5b")
    assert exp.method == "lora"
    est = memory.estimate(exp.config)
    assert est.source == "architectures.toml" and est.trainable == 18_464_768  # 16 x sum(in+out) x 28
    assert _terms(exp.config) == {
        "weights": 3390, "optimizer": 282, "activations": 23922, "logits": 280, "generation": 1577, "peak": 27874,
    }
    # 4 x 1280 tokens x 28 layers x (41 x 1536 + 12.5 x 8960) bytes: measured coefficients (memory.ACT).
    assert round(4 * 1280 * 28 * (41 * 1536 + 12.5 * 8960) / 2**20) == 23922
    assert memory.estimate_mb(exp.config) == 34473
    exp7 = _experiment("core-7b")  # 2 completions per micro-step
    assert _terms(exp7.config) == {
        "weights": 14526, "optimizer": 616, "activations": 26232, "logits": 156, "generation": 1583, "peak": 41530,
    }
    dora = json.loads(json.dumps(exp.config))
    dora["peft"]["type"] = "dora"
    # DoRA keeps every adapted weight combined with its update: 28 layers x 46.8M elements x 4 bytes.
    extra = memory.estimate(dora).activations - memory.estimate(exp.config).activations
    assert round(extra) == round(28 * (1536 * 1536 * 2 + 1536 * 256 * 2 + 3 * 1536 * 8960) * 4 / 2**20) == 4998


def test_the_logits_term_is_trls_chunked_head_not_full_logits() -> None:
    """TRL >= 1.16 never materialises batch x sequence x vocabulary logits (trl.kernels.chunked_logprob).

    A math run with 4,096-token completions: the old term (4 x 4352 x 152,064 x 4 bytes =
    10.1 GiB) dominated; the chunked head needs one 4096 x 32768 bf16 tile and the fp32
    gradient of the scored hidden states.
    """
    exp = _experiment("core-1.5b")
    config = json.loads(json.dumps(exp.config))
    config["training"].update(max_prompt_length=256, max_completion_length=4096, gradient_checkpointing=True)
    terms = _terms(config)
    assert terms["logits"] == round((4096 * 32768 * 2 + 4 * 4096 * 1536 * 4) / 2**20) == 352
    # Checkpointing keeps each layer's input (bf16) plus one layer's activations.
    assert terms["activations"] == round(4 * 4352 * (28 * 1536 * 2 + 41 * 1536 + 12.5 * 8960) / 2**20) == 4333
    # 32 completions of 4,352 tokens in the KV cache (k and v, 2 KV heads x 128, bf16), one
    # layer's MLP over the 32 prompts during prefill, and the sampled position's fp32 logits.
    kv_cache = 32 * 4352 * 28 * 2 * 256 * 2
    prefill = 32 * 256 * 3 * 8960 * 2
    sampling = 32 * 151936 * 4 * 2
    assert terms["generation"] == round((kv_cache + prefill + sampling) / 2**20) == 4265
    rebuilt = terms["weights"] + terms["optimizer"] + max(terms["activations"] + terms["logits"], terms["generation"])
    assert abs(rebuilt - terms["peak"]) <= 2  # the terms are rounded to MiB each


def test_hra_keeps_its_reflections_for_the_backward() -> None:
    """HRA rebuilds each weight from r Householder reflections on every forward (peft's HRALinear).

    Autograd keeps every partial product (in x in) for the vectors' gradients, plus the cast
    base weight and the rebuilt weight (out x in): at down_proj's in = 8960 that is r + 1
    matrices of 80M elements per layer, measured by bench/real_shape_memory.py (docs/memory.md).
    """
    config = json.loads(json.dumps(_experiment("core-1.5b").config))
    config["peft"]["type"] = "hra"
    lora = memory.estimate(_experiment("core-1.5b").config)
    est = memory.estimate(config)
    # r Householder vectors of length `in` per module: 16 x (6 x 1536 + 8960) x 28 layers.
    assert est.trainable == 16 * (6 * 1536 + 8960) * 28 == 8_142_848
    mods = [(1536, 1536), (1536, 256), (1536, 256), (1536, 1536), (1536, 8960), (1536, 8960), (8960, 1536)]
    per_layer = sum(17 * i * i + 2 * o * i for i, o in mods)
    assert memory.hra_elements(memory.resolve_shape(R1_15B)[1], config["peft"]) == per_layer
    extra = est.activations - lora.activations  # the same per-token coefficients as LoRA
    assert round(extra) == round(28 * per_layer * 2 / 2**20) == 90_738
    # A CPU run without autocast keeps them in float32; gradient checkpointing keeps one layer's.
    cpu_extra = memory.estimate(config, autocast=False).activations - lora.activations
    assert abs(cpu_extra - 2 * extra) < 1e-6
    config["training"]["gradient_checkpointing"] = True
    checkpointed = memory.estimate(config).activations
    lora_cfg = json.loads(json.dumps(_experiment("core-1.5b").config))
    lora_cfg["training"]["gradient_checkpointing"] = True
    assert round(checkpointed - memory.estimate(lora_cfg).activations) == round(per_layer * 2 / 2**20)
    # Far beyond an 80 GB GPU without checkpointing: `plan` shows it, the scheduler never places it there.
    assert memory.estimate_mb(config | {"training": {**config["training"], "gradient_checkpointing": False}}) > 80_000


def test_full_fine_tuning_counts_gradients_and_moments() -> None:
    config = json.loads(json.dumps(_experiment("core-1.5b").config))
    config["peft"]["type"] = "full"
    est = memory.estimate(config)
    assert est.trainable == 1_777_088_000
    # Every parameter in float32 (methods.full_model): fp32 weights, plus fp32 gradient and two moments.
    assert round(est.weights) == round(1_777_088_000 * 4 / 2**20)
    assert round(est.optimizer) == round(1_777_088_000 * 12 / 2**20)


def test_plan_json_shows_each_experiments_estimate_from_the_config() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "perl_cli", "plan", "core-1.5b", "--json"], capture_output=True, text=True, cwd=REPO,
        check=True, timeout=60,
    ).stdout
    rows = json.loads(out)
    assert len(rows) == 24
    for row in rows:
        est = row["memory_estimate"]
        assert est["shape_from"] == "architectures.toml" and est["parameters"] == 1_777_088_000
        assert row["memory_mb"] == est["estimated_mb"] > est["peak"] > est["weights"] == 3390
    by_method = {row["method"]: row["memory_estimate"]["trainable_parameters"] for row in rows}
    assert by_method["vera"] < by_method["lora"] < by_method["dora"] < by_method["adalora"]
