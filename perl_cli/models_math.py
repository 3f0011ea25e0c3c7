"""The built-in ``builtin:tiny-math`` model: a tiny Qwen2 warm-started on the tiny math set.

Built like ``builtin:tiny-countdown`` (perl_cli/models.py: cached by the digest of its
recipe, of this build code and of the library versions; one builder at a time), with a
character tokenizer whose alphabet covers the math set's problems and ``\\boxed{}``
answers. Its warm start is supervised on (``q: PROBLEM``, ``\\boxed{ANSWER}``) pairs of
the training pool minus the default held-out split (split_seed 0, eval_size 200); the
`tiny-math` benchmark (data/tiny_math.py's test.jsonl) is never seen.
"""

from __future__ import annotations

import json
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
        from perl_cli.builtin_parts import build_digest
        from perl_cli.data import math as mathdata
        from perl_cli.data import tiny_math

        return build_digest((math_tokenizer, _sft_pairs, TinyMathRecipe.build, mathdata.split_problems,
                             mathdata.compact_prompt, mathdata.compact_completion),
                            [MATH_CHARSET, tiny_math.digest(), json.dumps(asdict(self), sort_keys=True)])

    def build(self, out_dir: Path, progress: Any = None) -> None:
        from perl_cli.builtin_parts import build_model

        build_model(self, math_tokenizer(), lambda: _sft_pairs(self), out_dir, progress)


def math_tokenizer() -> Any:
    """One token per character of MATH_CHARSET (builtin_parts.char_tokenizer says why)."""
    from perl_cli.builtin_parts import char_tokenizer

    return char_tokenizer(MATH_CHARSET)


def _sft_pairs(recipe: TinyMathRecipe) -> list[tuple[str, str]]:
    from perl_cli.data import math as mathdata
    from perl_cli.data import tiny_math

    rows = tiny_math.split_rows()["train"]
    problems = [mathdata.MathProblem(r["problem"], r["answer"]) for r in rows]
    splits = mathdata.split_problems(problems, eval_size=recipe.eval_size, data_size=None, seed=recipe.split_seed)
    return [(mathdata.compact_prompt(p), mathdata.compact_completion(p.answer)) for p in splits.train]


TINY_MATH = TinyMathRecipe()
