"""Models of a real architecture's shape with random weights: ``builtin:shape:NAME[:layers=N]``.

The shape (widths, heads, vocabulary, tied embeddings; architectures.toml) is the real
model's; the weights are random, drawn from a fixed seed, so every load in every process
gives the same model (a saved adapter reloads onto the same base). Nothing is downloaded
or written: the model is built in memory on each load, in a few seconds per billion
parameters, filling each tensor directly (transformers' own initialisation of a 1.5B-shape
model takes about three times as long).

The tokenizer is the built-in character tokenizer (models.build_char_tokenizer) padded
with filler tokens to the architecture's vocabulary, so that every token the model can
sample decodes to text, and prompts use the compact Countdown format.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from typing import Any

from perl_cli import architectures

SEED = 0
INIT_STD = 0.02  # Qwen2's initializer_range


def hf_config(name: str, *, pad_id: int, eos_id: int) -> Any:
    from transformers import AutoConfig

    numbers = architectures.shape_config(name)
    model_type = numbers.pop("model_type")
    numbers.pop("torch_dtype", None)
    numbers.update(pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=eos_id)
    return AutoConfig.for_model(model_type, **numbers)


def build_tokenizer(name: str) -> Any:
    """The character tokenizer with filler tokens up to the architecture's vocabulary size.

    A copy of one built per vocabulary size and process (building one takes seconds;
    callers may change a tokenizer's settings, so each gets its own copy).
    """
    import copy

    return copy.deepcopy(_tokenizer(int(architectures.shape_config(name)["vocab_size"])))


@functools.cache
def _tokenizer(vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    from perl_cli.builtin_parts import CHARSET, EOS, PAD

    vocab = {PAD: 0, EOS: 1}
    for ch in CHARSET:
        vocab[ch] = len(vocab)
    for i in range(len(vocab), vocab_size):
        vocab[f"<|{i}|>"] = i  # no merges reach them: encoding never produces one, decoding shows it
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, ignore_merges=True))
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, padding_side="left")


def _skip_init() -> contextlib.AbstractContextManager:
    """transformers' switch that leaves new parameters uninitialised (they are filled below)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # another transformers: initialise twice, slower but the same result
        return contextlib.nullcontext()
    return no_init_weights()


def _fill(model: Any) -> None:
    """Every parameter from its own seeded generator: independent of module order and of the RNG."""
    import torch

    for name, param in model.named_parameters():
        seed = int.from_bytes(hashlib.sha256(f"{SEED}:{name}".encode()).digest()[:8], "little")
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif name.endswith(".bias"):
                param.zero_()
            else:
                param.normal_(0.0, INIT_STD, generator=generator)


def build_model(name: str, dtype: Any) -> Any:
    """The ``builtin:shape:`` model `name` in `dtype` (a torch dtype), on the CPU, in eval mode."""
    from transformers import AutoModelForCausalLM

    tokenizer_ids = {"pad_id": 0, "eos_id": 1}  # build_tokenizer's PAD and EOS
    config = hf_config(name, **tokenizer_ids)
    with _skip_init():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    _fill(model)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.generation_config.pad_token_id = tokenizer_ids["pad_id"]
    model.generation_config.eos_token_id = tokenizer_ids["eos_id"]
    return model.eval()
