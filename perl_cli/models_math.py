"""The built-in ``builtin:tiny-math`` model: a tiny Qwen2 warm-started on the tiny math set.

Built like ``builtin:tiny-countdown`` (perl_cli/models.py: cached by the digest of its
recipe, of this build code and of the library versions; one builder at a time), with a
character tokenizer whose alphabet covers the math set's problems and ``\\boxed{}``
answers. Its warm start is supervised on (``q: PROBLEM``, ``\\boxed{ANSWER}``) pairs of
the training pool minus the default held-out split (split_seed 0, eval_size 200); the
`tiny-math` benchmark (data/tiny_math.py's test.jsonl) is never seen.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MATH_CHARSET = "0123456789 \n+-*/()=:<>abcdefghijklmnopqrstuvwxyz\\{}.,^"


@dataclass(frozen=True)
class TinyMathRecipe:
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    ffn_size: int = 512
    seed: int = 0
    # 300 steps of 32 (half tiny-countdown's warm start): the machine this was tuned on
    # built it at 8 steps a minute under load; see docs/math.md for what it reaches.
    sft_steps: int = 300
    sft_lr: float = 3e-3
    sft_batch_size: int = 32
    split_seed: int = 0
    eval_size: int = 200
    max_positions: int = 64
    version: int = 1

    def digest(self) -> str:
        import inspect
        from importlib import metadata

        from perl_cli.data import math as mathdata
        from perl_cli.data import tiny_math

        parts = [inspect.getsource(f) for f in (math_tokenizer, _sft_pairs, _warm_start, TinyMathRecipe.build,
                                                 mathdata.split_problems, mathdata.compact_prompt,
                                                 mathdata.compact_completion)]
        parts += [MATH_CHARSET, tiny_math.digest(), json.dumps(asdict(self), sort_keys=True)]
        for lib in ("torch", "transformers", "tokenizers"):
            try:
                parts.append(f"{lib}=={metadata.version(lib)}")
            except metadata.PackageNotFoundError:
                parts.append(f"{lib} missing")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]

    def build(self, out_dir: Path, progress: Any = None) -> None:
        import torch
        from transformers import Qwen2ForCausalLM

        from perl_cli.builtin_parts import _tiny_config

        tokenizer = math_tokenizer()
        torch.manual_seed(self.seed)
        config = _tiny_config(self, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)  # type: ignore[arg-type]
        model = Qwen2ForCausalLM(config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        if self.sft_steps:
            _warm_start(model, tokenizer, self, progress)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        (out_dir / "perl_recipe.json").write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")


def math_tokenizer() -> Any:
    """One token per character of MATH_CHARSET (see models.build_char_tokenizer for why)."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    from perl_cli.builtin_parts import EOS, PAD

    vocab = {PAD: 0, EOS: 1}
    for ch in MATH_CHARSET:
        vocab[ch] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, ignore_merges=True))
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, padding_side="left")


def _sft_pairs(recipe: TinyMathRecipe) -> list[tuple[str, str]]:
    from perl_cli.data import math as mathdata
    from perl_cli.data import tiny_math

    rows = tiny_math.split_rows()["train"]
    problems = [mathdata.MathProblem(r["problem"], r["answer"]) for r in rows]
    splits = mathdata.split_problems(problems, eval_size=recipe.eval_size, data_size=None, seed=recipe.split_seed)
    return [(mathdata.compact_prompt(p), mathdata.compact_completion(p.answer)) for p in splits.train]


def _warm_start(model: Any, tokenizer: Any, recipe: TinyMathRecipe, progress: Any = None) -> None:
    """Supervised steps on the training pairs, loss on the completion only."""
    import torch

    pairs = _sft_pairs(recipe)
    prompts = [tokenizer.encode(p) for p, _ in pairs]
    answers = [tokenizer.encode(a) + [tokenizer.eos_token_id] for _, a in pairs]
    width = max(len(a) + len(b) for a, b in zip(prompts, answers, strict=True))
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        seq = p + a
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, len(p) : len(seq)] = torch.tensor(a)
        mask[i, : len(seq)] = 1
    gen = torch.Generator().manual_seed(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.sft_lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / recipe.sft_steps))
    )
    model.train()
    started = time.time()
    for step in range(recipe.sft_steps):
        batch = torch.randint(0, len(prompts), (recipe.sft_batch_size,), generator=gen)
        out = model(input_ids=ids[batch], attention_mask=mask[batch], labels=labels[batch])
        out.loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if progress is not None:
            progress("warm start", step + 1, recipe.sft_steps)
        if (step + 1) % 100 == 0:
            print(f"[perl] warm start {step + 1}/{recipe.sft_steps} loss {out.loss.item():.3f} "
                  f"({time.time() - started:.0f}s)", flush=True)
    model.eval()


TINY_MATH = TinyMathRecipe()
