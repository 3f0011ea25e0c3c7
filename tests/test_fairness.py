"""The rules that keep methods comparable (docs/fairness.md), one test per rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from training_support import make_config

from perl_cli import config as configlib
from perl_cli.methods import METHOD_NAMES

PROBE = "nums: 3 7 9 target: 30\n<answer>7*3+9</answer>"

SUITE = """
[base.peft]
lora_dropout = 0.05

[suites.shared]
[suites.shared.matrix]
method = ["lora", "pissa", "milora"]
[[suites.shared.when]]
if = { rank = 16 }
set = { "peft.lora_dropout" = 0.1 }

[suites.chosen]
[suites.chosen.matrix]
method = ["lora", "pissa"]
[[suites.chosen.when]]
if = { method = "pissa" }
set = { "peft.lora_dropout" = 0.02 }
[[suites.chosen.experiments]]
name = "milora_own"
peft = { type = "milora", lora_dropout = 0.03 }
"""


def _dropouts(tmp_path: Path, suite: str, sets: tuple[str, ...] = ()) -> dict[str, float]:
    path = tmp_path / "experiments.toml"
    path.write_text(SUITE)
    return {e.method: e.config["peft"]["lora_dropout"] for e in configlib.expand(configlib.load(path), suite, sets=sets)}


def test_pissa_and_milora_do_not_inherit_shared_dropout(tmp_path: Path) -> None:
    # [base] and a rule not about the method are shared settings: PiSSA/MiLoRA use 0.
    assert _dropouts(tmp_path, "shared") == {"lora": 0.1, "pissa": 0.0, "milora": 0.0}


def test_dropout_set_for_pissa_or_milora_explicitly_is_kept(tmp_path: Path) -> None:
    assert _dropouts(tmp_path, "chosen") == {"lora": 0.05, "pissa": 0.02, "milora": 0.03}
    assert set(_dropouts(tmp_path, "shared", sets=("peft.lora_dropout=0.04",)).values()) == {0.04}


def test_shipped_suites_resolve_pissa_dropout_to_zero() -> None:
    cfg = configlib.load(configlib.PACKAGED_CONFIG)
    seen = set()
    for suite in cfg.suite_names():
        for e in configlib.expand(cfg, suite):
            # Suites that reproduce upstream's quirk on purpose say so with the switch.
            if e.method in ("pissa", "milora") and not e.config["peft"].get("dropout_on_svd_methods"):
                assert e.config["peft"]["lora_dropout"] == 0.0, e.name
                seen.add(e.method)
    assert seen == {"pissa", "milora"}


def test_pissa_records_a_near_exact_svd_by_default() -> None:
    from perl_cli.schema import defaults

    assert defaults()["peft"]["pissa_niter"] == 16  # peft: 16 iterations ~ a full SVD


# --- with torch ------------------------------------------------------------------------


def _base(dtype: Any = None) -> Any:
    from perl_cli.models import load_model

    model = load_model(make_config()["model"], on_gpu=False)
    return model if dtype is None else model.to(dtype)


def _inputs() -> Any:
    from perl_cli.models import load_tokenizer

    return load_tokenizer(make_config()["model"])(PROBE, return_tensors="pt")


def _adapted(method: str, base: Any, **peft: Any) -> Any:
    from perl_cli.methods import build_adapter

    cfg = make_config(peft__type=method)
    return build_adapter(base, {**cfg["peft"], **peft}, cfg["training"])


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_trainable_tensors_are_float32_on_a_bf16_base(method: str) -> None:
    torch = pytest.importorskip("torch")
    model = _adapted(method, _base(torch.bfloat16))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and {p.dtype for p in trainable.values()} == {torch.float32}, {
        n: p.dtype for n, p in trainable.items()
    }
    model.train()
    ids = _inputs()
    out = model(**ids, labels=ids["input_ids"])  # the bf16 model still runs and back-propagates
    out.loss.backward()
    assert all(p.grad is not None for p in trainable.values())


@pytest.mark.parametrize("method", ["pissa", "milora"])
def test_svd_methods_equal_the_base_at_step_0_in_train_mode(method: str, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    peft = {e.method: e.config["peft"] for e in configlib.expand(_load(tmp_path), "shared")}[method]
    ids = _inputs()
    base = _base()
    base.train()
    with torch.no_grad():
        expected = torch.log_softmax(base(**ids).logits.float(), -1)
        model = _adapted(method, base, **{k: v for k, v in peft.items() if k != "type"})
        model.train()  # TRL samples rollouts in train mode, where dropout is active
        torch.manual_seed(0)
        got = torch.log_softmax(model(**ids).logits.float(), -1)
    assert (got - expected).abs().max().item() < 1e-4


def _load(tmp_path: Path) -> configlib.ConfigFile:
    path = tmp_path / "experiments.toml"
    path.write_text(SUITE)
    return configlib.load(path)


def test_adalora_regulariser_is_peft_s_and_has_a_gradient() -> None:
    torch = pytest.importorskip("torch")
    from perl_cli.methods import adalora_orthogonality

    model = _adapted("adalora", _base())
    ids = _inputs()
    with torch.no_grad():
        plain = model.base_model.model(**ids, labels=ids["input_ids"]).loss  # bypasses peft's forward
        with_term = model(**ids, labels=ids["input_ids"]).loss  # AdaLoraModel.forward adds its term
        ours = adalora_orthogonality(model)
    assert ours.item() > 0
    assert torch.allclose(with_term - plain, ours, rtol=1e-5, atol=1e-6)
    ours = adalora_orthogonality(model)
    ours.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n and p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_lora_fa_counts_only_what_its_optimizer_updates() -> None:
    pytest.importorskip("torch")
    from perl_cli.methods import get_method
    from perl_cli.train.trainer import optimizer_trainable_params

    cfg = make_config(peft__type="lora_fa")
    model = _adapted("lora_fa", _base())
    before = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = get_method("lora_fa").optimizer(model, cfg["peft"], cfg["training"])
    a_size = sum(p.numel() for n, p in model.named_parameters() if "lora_A" in n)
    assert optimizer_trainable_params(optimizer) == before - a_size
    assert optimizer_trainable_params(optimizer) == sum(p.numel() for p in model.parameters() if p.requires_grad)
