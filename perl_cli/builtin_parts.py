"""What the built-in models share: their character vocabulary, the cache they live in and
their Qwen2 configuration.

A module of its own so that perl_cli/models.py, perl_cli/shapes.py, perl_cli/models_math.py
and perl_cli/data/tiny_math.py share them without importing each other.
"""

from __future__ import annotations

import os
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
