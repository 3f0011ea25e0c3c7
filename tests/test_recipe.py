"""The paper's recipe (issue 21): its keys, upstream's quirks as switches, the method defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from training_support import make_config
from typer.testing import CliRunner

from perl_cli import config as configlib
from perl_cli import schema
from perl_cli.cli import app
from perl_cli.methods import METHOD_LR_SCALE, method_defaults, validate_method_settings

runner = CliRunner()
PROBE = "nums: 3 7 9 target: 30\n<answer>7*3+9</answer>"
RECIPE_KEYS = [
    "training.epsilon_high",
    "training.mask_truncated_completions",
    "training.top_entropy_quantile",
    "training.vllm_mode",
    "training.vllm_gpu_memory_utilization",
    "eval.top_p",
    "peft.adapter_dtype",
    "peft.dropout_on_svd_methods",
    "peft.adalora_reallocation",
    "peft.peft_default_targets",
]


def test_plan_keys_lists_the_recipe_keys() -> None:
    result = runner.invoke(app, ["plan", "--keys", "--json"])
    assert result.exit_code == 0, result.output
    keys = json.loads(result.output)
    assert set(RECIPE_KEYS) <= set(keys)
    assert keys["training.vllm_mode"]["choices"] == ["colocate", "server"]


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ("training.top_entropy_quantile=1.5", "must be in [0, 1]"),
        ("training.vllm_mode=remote", "must be one of colocate, server"),
        ("training.vllm_gpu_memory_utilization=0", "must be in (0, 1]"),
        ("training.vllm_gpu_memory_utilization=1.2", "must be in (0, 1]"),
        ("training.mask_truncated_completions=3", "must be true or false"),
        ("training.epsilon_high=-0.1", "must be > 0"),
        ("eval.top_p=0", "must be in [0.01, 1]"),
        ("peft.adapter_dtype=float16", "must be one of float32, base, bfloat16"),
        ("peft.adalora_reallocation=maybe", "must be true or false"),
    ],
)
def test_bad_recipe_values_are_refused_with_the_key(setting: str, fragment: str, tmp_path: Path) -> None:
    path = tmp_path / "experiments.toml"
    key, value = setting.split("=")
    section, name = key.split(".")
    shown = value if value.replace(".", "").replace("-", "").isdigit() else f'"{value}"'
    path.write_text(f"[suites.s.base.{section}]\n{name} = {shown}\n[suites.s.matrix]\nmethod = [\"lora\"]\n")
    result = runner.invoke(app, ["plan", "s", "--config", str(path)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert name in text and fragment in text, text


def test_recipe_keys_at_their_defaults_leave_fingerprints_unchanged() -> None:
    config = schema.defaults()
    without = {section: dict(values) for section, values in config.items()}
    for path in schema.FINGERPRINT_NEUTRAL_RECIPE:
        section, key = path.split(".")
        del without[section][key]
    assert configlib.fingerprint(config) == configlib.fingerprint(without)
    changed = schema.defaults()
    changed["training"]["mask_truncated_completions"] = True
    assert configlib.fingerprint(changed) != configlib.fingerprint(config)


def test_grpo_args_carry_the_recipe_keys(tmp_path: Path) -> None:
    pytest.importorskip("trl")
    from perl_cli.train.grpo import grpo_args

    config = make_config(
        training__epsilon_high=0.28,
        training__mask_truncated_completions=True,
        training__top_entropy_quantile=0.2,
        training__vllm_mode="server",
        training__vllm_gpu_memory_utilization=0.4,
    )
    args = grpo_args(config, tmp_path, on_gpu=False, report_to=[], reward_weights=[1.0, 0.1])
    assert (args.epsilon, args.epsilon_high) == (0.2, 0.28)
    assert args.mask_truncated_completions is True and args.top_entropy_quantile == 0.2
    assert (args.vllm_mode, args.vllm_gpu_memory_utilization) == ("server", 0.4)
    default = grpo_args(make_config(), tmp_path, on_gpu=False, report_to=[], reward_weights=[1.0, 0.1])
    # Unset: TRL resolves it to epsilon inside the trainer.
    assert default.epsilon_high is None and default.mask_truncated_completions is False


class _Recorder:
    """A model/tokenizer pair that records how evaluation samples (no weights needed)."""

    def __init__(self) -> None:
        import torch

        self.calls: list[dict[str, Any]] = []
        self.training = False
        self.pad_token_id = self.eos_token_id = 0
        self.padding_side = "right"
        self._param = torch.nn.Parameter(torch.zeros(1))

    def parameters(self) -> Any:
        return iter([self._param])

    def eval(self) -> None: ...

    def train(self, mode: bool = True) -> None: ...

    def __call__(self, texts: list[str], **_: Any) -> Any:
        import torch
        from transformers import BatchEncoding

        return BatchEncoding({"input_ids": torch.ones(len(texts), 2, dtype=torch.long)})

    def generate(self, input_ids: Any, **kwargs: Any) -> Any:
        import torch

        self.calls.append(kwargs)
        return torch.ones(input_ids.shape[0] * kwargs.get("num_return_sequences", 1), 3, dtype=torch.long)

    def batch_decode(self, ids: Any, **_: Any) -> list[str]:
        return ["<answer>1+2+3</answer>"] * len(ids)


def test_eval_top_p_reaches_sampled_generation() -> None:
    pytest.importorskip("torch")
    from perl_cli.data.countdown import Problem
    from perl_cli.train.evaluate import evaluate_accuracy

    fake = _Recorder()
    problems = [Problem(numbers=(1, 2, 3), target=6)]
    result = evaluate_accuracy(
        fake, fake, problems, "compact", num_samples=2, temperature=0.7, max_new_tokens=4, seed=0, top_p=0.9
    )
    greedy, sampled = fake.calls
    assert greedy["do_sample"] is False and greedy["top_p"] is None
    assert sampled["do_sample"] is True and (sampled["temperature"], sampled["top_p"]) == (0.7, 0.9)
    assert result["accuracy_sampled"] == 1.0


# --- method defaults and the quirk switches --------------------------------------------


def _expand(tmp_path: Path, text: str, suite: str = "s") -> dict[str, dict]:
    path = tmp_path / "experiments.toml"
    path.write_text(text)
    return {e.name: e.config for e in configlib.expand(configlib.load(path), suite)}


SUITE = """
[base.peft]
lora_dropout = 0.05
[base.training]
learning_rate = 2e-5
[suites.s]
name = "{method}"
[suites.s.matrix]
method = ["lora", "pissa", "milora", "vera", "ia3", "ln_tuning", "hra"]
"""


def test_few_parameter_methods_scale_the_shared_learning_rate(tmp_path: Path) -> None:
    got = {name: c["training"]["learning_rate"] for name, c in _expand(tmp_path, SUITE).items()}
    for method in ("lora", "pissa", "milora", "hra"):
        assert got[method] == 2e-5
    for method, scale in METHOD_LR_SCALE.items():
        assert got[method] == pytest.approx(2e-5 * scale), method
    assert METHOD_LR_SCALE["ln_tuning"] == 10.0  # measured: suite ln-tuning-lr, docs/recipes.md
    assert METHOD_LR_SCALE["ia3"] == 10.0  # measured: suite ia3-lr, docs/recipes.md


def test_a_learning_rate_set_for_the_method_is_kept(tmp_path: Path) -> None:
    text = SUITE + '[[suites.s.when]]\nif = { method = "vera" }\nset = { "training.learning_rate" = 3e-3 }\n'
    assert _expand(tmp_path, text)["vera"]["training"]["learning_rate"] == 3e-3


def test_dropout_on_svd_methods_switch_keeps_the_shared_dropout(tmp_path: Path) -> None:
    off = _expand(tmp_path, SUITE)
    assert (off["pissa"]["peft"]["lora_dropout"], off["milora"]["peft"]["lora_dropout"]) == (0.0, 0.0)
    on = _expand(tmp_path, SUITE.replace("lora_dropout = 0.05", "lora_dropout = 0.05\ndropout_on_svd_methods = true"))
    assert (on["pissa"]["peft"]["lora_dropout"], on["milora"]["peft"]["lora_dropout"]) == (0.05, 0.05)
    assert method_defaults({"peft": {"type": "lora"}, "training": {}}) == {}


def test_hra_needs_an_even_rank_and_default_targets_need_every_layer() -> None:
    peft = {**make_config()["peft"], "r": 3}
    assert any("must be even for hra" in p for p in validate_method_settings("hra", peft))
    assert validate_method_settings("hra", {**peft, "r": 4}) == []
    quirk = {**make_config()["peft"], "peft_default_targets": True, "layers": "0:1"}
    assert any("peft_default_targets" in p for p in validate_method_settings("vera", quirk))
    assert validate_method_settings("lora", quirk) == []  # LoRA is not one of the methods it moves


# --- with torch ------------------------------------------------------------------------


def _adapted(method: str, **peft: Any) -> Any:
    from perl_cli.methods import build_adapter
    from perl_cli.models import load_model

    cfg = make_config(peft__type=method)
    return build_adapter(load_model(cfg["model"], on_gpu=False), {**cfg["peft"], **peft}, cfg["training"])


@pytest.mark.parametrize("method", ["lora", "pissa", "milora", "ln_tuning"])
def test_adapter_dtype_switch_trains_bf16_tensors(method: str) -> None:
    torch = pytest.importorskip("torch")
    model = _adapted(method, adapter_dtype="bfloat16")
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and {p.dtype for p in trainable} == {torch.bfloat16}
    assert {p.dtype for p in _adapted(method).parameters() if p.requires_grad} == {torch.float32}
    # "base" is the base weights' dtype: float32 on the CPU.
    assert {p.dtype for p in _adapted(method, adapter_dtype="base").parameters() if p.requires_grad} == {torch.float32}


def test_bf16_adapters_lose_small_updates() -> None:
    """The reason the switch exists: a small AdamW step rounds away in bf16 (docs/fairness.md)."""
    torch = pytest.importorskip("torch")
    changed = {}
    for dtype in ("float32", "bfloat16"):
        model = _adapted("milora", adapter_dtype=dtype)
        params = [p for n, p in model.named_parameters() if p.requires_grad and "lora_A" in n]
        before = [p.detach().clone() for p in params]
        for p in params:
            p.grad = torch.ones_like(p)
        torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0).step()
        moved = sum(int((p.detach() != b).sum()) for p, b in zip(params, before, strict=True))
        changed[dtype] = moved / sum(p.numel() for p in params)
    assert changed["float32"] > 0.99 and changed["bfloat16"] < 0.5 * changed["float32"], changed


@pytest.mark.parametrize("method", ["vera", "miss", "hra"])
def test_peft_default_targets_switch_uses_peft_s_placement(method: str) -> None:
    pytest.importorskip("torch")
    default = _adapted(method, peft_default_targets=True, r=4)
    targets = set(default.peft_config["default"].target_modules)
    assert targets == {"q_proj", "v_proj"}, targets  # peft's default for Qwen2
    ours = _adapted(method, r=4).peft_config["default"].target_modules
    assert ours == "all-linear" or len(set(ours)) > 2


def test_paper_suite_plans_with_upstream_s_values() -> None:
    cfg = configlib.load(configlib.PACKAGED_CONFIG)
    exps = {e.method: e.config for e in configlib.expand(cfg, "paper-1.5b")}
    lora = exps["lora"]
    assert (lora["peft"]["r"], lora["peft"]["lora_alpha"], lora["peft"]["lora_dropout"]) == (32, 64.0, 0.05)
    assert (lora["training"]["epsilon"], lora["training"]["epsilon_high"]) == (0.2, 0.28)
    assert configlib.prompts_per_step(lora) == 16
    assert (lora["training"]["max_completion_length"], lora["training"]["max_prompt_length"]) == (16384, 512)
    assert (lora["eval"]["temperature"], lora["eval"]["top_p"]) == (0.7, 0.9)
    assert exps["pissa"]["peft"]["lora_dropout"] == 0.05 and exps["pissa"]["peft"]["pissa_niter"] == 4
    assert exps["lora_plus"]["peft"]["lora_plus_ratio"] == 2.0
    assert set(exps) == set(configlib.schema.PEFT_METHODS)


def test_cpu_suites_cover_every_method_and_both_quirk_settings() -> None:
    cfg = configlib.load(configlib.PACKAGED_CONFIG)
    assert {e.method for e in configlib.expand(cfg, "all-methods")} == set(schema.PEFT_METHODS)
    art = configlib.expand(cfg, "artifacts-demo")
    on = [e for e in art if e.config["peft"]["adapter_dtype"] == "bfloat16"]
    assert len(on) == 4 and all(e.config["peft"]["lora_dropout"] == 0.05 for e in on)
    assert all(e.config["peft"]["lora_dropout"] == 0.0 for e in art if e not in on)
