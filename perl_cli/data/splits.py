"""How any task's problems become a training set and a held-out set.

One rule for every task (Countdown, math): de-duplicate by the problem's `key`, order by
it (so the split does not depend on the source's order), shuffle by the split seed, hold
out the first `eval_size`, keep the first `data_size` of the rest for training. Held-out
sets are prefixes of the shuffle, so a smaller eval_size holds out a subset of a larger one.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

P = TypeVar("P")


class DataError(Exception):
    """A dataset that cannot be loaded or used; the message says how to fix it."""


@dataclass(frozen=True)
class Splits(Generic[P]):
    train: list[P]
    eval: list[P]


def split_problems(problems: Iterable[Any], *, eval_size: int, data_size: int | None, seed: int) -> Splits[Any]:
    """De-duplicate, shuffle by `seed`, hold out `eval_size`, keep `data_size` for training."""
    seen: dict[Any, Any] = {}
    for p in problems:
        seen.setdefault(p.key, p)
    unique = sorted(seen.values(), key=lambda p: p.key)
    random.Random(seed).shuffle(unique)
    if eval_size < 0 or eval_size >= len(unique):
        raise DataError(f"dataset.eval_size={eval_size} leaves no training problems out of {len(unique)} distinct")
    held_out, train = unique[:eval_size], unique[eval_size:]
    if data_size is not None:
        if data_size < 1:
            raise DataError(f"dataset.data_size must be >= 1 or null, got {data_size}")
        if data_size > len(train):
            raise DataError(
                f"dataset.data_size={data_size} but only {len(train)} distinct training problems "
                f"exist after holding out {eval_size}; lower data_size or use null (all)"
            )
        train = train[:data_size]
    return Splits(train=train, eval=held_out)
