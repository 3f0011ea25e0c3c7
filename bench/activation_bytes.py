"""Bytes autograd keeps per token and layer, per method, at the 1.5B shape (memory.ACT).

One layer of DeepSeek-R1-Distill-Qwen-1.5B's shape in bf16 with each method's adapter; one
forward of 2 x 128 tokens through TRL's fused LM head with saved-tensor hooks (parameters
excluded), with and without bf16 autocast (TRL on a GPU runs under autocast). Prints the
bytes per token split as act_h x hidden + act_i x intermediate.

    python bench/activation_bytes.py lora dora vera ...
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from trl.trainer.utils import add_fused_lm_head  # noqa: E402

from perl_cli import shapes  # noqa: E402
from perl_cli.methods import build_adapter  # noqa: E402
from perl_cli.schema import defaults  # noqa: E402

NAME = "builtin:shape:DeepSeek-R1-Distill-Qwen-1.5B:layers=1"
HIDDEN, INTERMEDIATE = 1536, 8960


def measure(method: str, autocast: bool, tokens: int = 128, batch: int = 2) -> tuple[float, float]:
    torch.manual_seed(0)
    model = shapes.build_model(NAME, torch.bfloat16)
    add_fused_lm_head(model)
    if method != "none":
        peft = {**defaults()["peft"], "type": method, "r": 16, "lora_alpha": 32.0, "lora_dropout": 0.05}
        model = build_adapter(model, peft, {"max_steps": 100})
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, tuple[int, int]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved.setdefault(storage.data_ptr(), (storage.nbytes(), t.shape[-1] if t.dim() else 1))
        return t

    ids = torch.randint(0, 1000, (batch, tokens))
    labels = ids.clone()
    labels[:, : tokens // 2] = -100
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, fused_lm_head=True)
    n = batch * tokens
    act_i = sum(b for b, w in saved.values() if w == INTERMEDIATE) / n / INTERMEDIATE
    act_h = sum(b for b, w in saved.values() if w != INTERMEDIATE) / n / HIDDEN
    return act_h, act_i


if __name__ == "__main__":
    for method in sys.argv[1:] or ["none", "lora"]:
        for autocast in (False, True):
            h, i = measure(method, autocast)
            print(f"{method:10s} {'autocast' if autocast else 'plain   '} act_h={h:6.1f} act_i={i:6.1f}", flush=True)
