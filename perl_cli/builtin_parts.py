"""What the built-in models share: their character vocabulary and tokenizer, the cache they
live in, their Qwen2 configuration, the supervised warm start and the build digest's
library versions.

A module of its own so that perl_cli/models.py, perl_cli/shapes.py, perl_cli/models_math.py
and perl_cli/data/tiny_math.py share them without importing each other.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PAD, EOS = "<pad>", "<eos>"
# Every character a compact Countdown prompt or completion can contain.
CHARSET = "0123456789 \n+-*/()=:<>abcdefghijklmnopqrstuvwxyz"


def cache_dir() -> Path:
    return Path(os.environ.get("PERL_CACHE_DIR") or Path.home() / ".cache" / "perl").expanduser()


def _tiny_config(recipe: Any, vocab_size: int, pad_id: int, eos_id: int) -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.ffn_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_kv_heads,
        max_position_embeddings=recipe.max_positions,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=eos_id,
    )


def char_tokenizer(charset: str, vocab_size: int | None = None) -> Any:
    """A fast tokenizer with one token per character of `charset` and no normalisation.

    Loaded through PreTrainedTokenizerFast (not AutoTokenizer, which would pick Qwen2's
    class from the model config and replace the pre-tokenizer, losing spaces and newlines).
    `vocab_size` pads the vocabulary with tokens no text encodes to (a real model's width).
    """
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1}
    for ch in charset:
        vocab[ch] = len(vocab)
    for i in range(len(vocab), vocab_size or 0):
        vocab[f"<|{i}|>"] = i  # no merges reach them: encoding never produces one, decoding shows it
    # A BPE with no merges splits text into single characters; Fuse joins them back
    # without inserting spaces on decode.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, ignore_merges=True))
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, padding_side="left")


def build_digest(functions: Sequence[Callable[..., Any]], extra: Sequence[str] = ()) -> str:
    """A hash of the code that builds a built-in model and of the libraries it runs on.

    Part of the cache entry's name, so that a model built by other code (an older PeRL,
    another torch) is never reused: a changed build gets a new directory, not a stale model.
    `functions`: the model's own build code (its tokenizer, pairs, data); the shared build
    steps of this module are always counted.
    """
    import inspect
    from importlib import metadata

    shared = (char_tokenizer, _tiny_config, warm_start, build_model)
    parts = [inspect.getsource(f) for f in (*shared, *functions)] + list(extra)
    for lib in ("torch", "transformers", "tokenizers"):
        try:
            parts.append(f"{lib}=={metadata.version(lib)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{lib} missing")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def warm_start(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    progress: Callable[[str, int, int], None] | None = None,
) -> None:
    """Supervised training on (prompt, completion) pairs, loss on the completion only.

    AdamW with a cosine schedule over `steps`, batches drawn with replacement from a
    generator seeded with `seed`: the same pairs and seed give the same weights.
    """
    import torch

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

    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    model.train()
    started = time.time()
    for step in range(steps):
        batch = torch.randint(0, len(prompts), (batch_size,), generator=gen)
        out = model(input_ids=ids[batch], attention_mask=mask[batch], labels=labels[batch])
        out.loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if progress is not None:
            progress("warm start", step + 1, steps)
        if (step + 1) % 100 == 0:
            print(f"[perl] warm start {step + 1}/{steps} loss {out.loss.item():.3f} ({time.time() - started:.0f}s)", flush=True)
    model.eval()


def build_model(
    recipe: Any,
    tokenizer: Any,
    pairs: Callable[[], Sequence[tuple[str, str]]],
    out_dir: Path,
    progress: Callable[[str, int, int], None] | None = None,
) -> None:
    """A Qwen2 of `recipe`'s size, seeded, warm-started on `pairs()` if it asks for steps, saved."""
    import json
    from dataclasses import asdict

    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(recipe.seed)
    config = _tiny_config(recipe, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if recipe.sft_steps:
        warm_start(model, tokenizer, pairs(), steps=recipe.sft_steps, lr=recipe.sft_lr,
                   batch_size=recipe.sft_batch_size, seed=recipe.seed, progress=progress)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "perl_recipe.json").write_text(json.dumps(asdict(recipe), indent=2, sort_keys=True) + "\n")
