"""Loading policy models: local paths, hub names, and the built-in tiny models.

The built-in models need no download. ``builtin:tiny-countdown`` is a ~1M-parameter
Qwen2 with a character-level tokenizer, warm-started by a short supervised run on
Countdown solutions so that GRPO has reward to work with (RL needs about 30%
accuracy to start from). ``builtin:tiny-random`` is a smaller random model for
fast tests. Both are built once per machine under
``${PERL_CACHE_DIR:-~/.cache/perl}/models/<name>-<hash>/``, the hash covering the recipe,
the build code and the torch/transformers versions, so that a changed build never reuses
an old model. A file lock makes parallel workers wait for one builder, and the model is
built in a temporary directory that is renamed into place, so a killed build leaves
nothing half-written.

``builtin:shape:NAME[:layers=N]`` is a real architecture's shape with random weights,
built in memory by perl_cli/shapes.py (architectures.toml lists the shapes).

torch and transformers are imported inside functions: ``perl plan`` never pays for them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# progress(phase, done, total): hears what a worker does before its first step (train/status.py).
Progress = Callable[[str, int | None, int | None], None]

BUILTIN_PREFIX = "builtin:"
from perl_cli.builtin_parts import (  # noqa: E402,F401  (CHARSET, EOS, PAD, cache_dir re-exported)
    CHARSET,
    EOS,
    PAD,
    _tiny_config,
    build_digest,
    build_model,
    cache_dir,
    char_tokenizer,
)


class ModelError(Exception):
    """A model that cannot be loaded; the message says how to fix it."""


@dataclass(frozen=True)
class TinyRecipe:
    """Everything that determines a built-in model; its hash names the cache entry."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    ffn_size: int
    seed: int = 0
    # Supervised warm start (0 steps = random weights).
    sft_steps: int = 0
    sft_lr: float = 3e-3
    sft_batch_size: int = 64
    # The Countdown problems it is warm-started on: the built-in generator's default,
    # minus the first `eval_size` problems of the split_seed-0 shuffle, which it never sees.
    # Held-out sets are prefixes of that shuffle, so any eval_size up to this one is unseen.
    num_count: int = 3
    min_number: int = 1
    max_number: int = 10
    operators: str = "+-*"
    split_seed: int = 0
    eval_size: int = 400
    max_positions: int = 128
    version: int = 1  # bump when the build code changes what it produces

    def digest(self) -> str:
        blob = json.dumps({**asdict(self), "charset": CHARSET, "build": build_code_digest()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_code_digest() -> str:
    """builtin_parts.build_digest of the Countdown models' own build code."""
    from perl_cli.data import countdown

    return build_digest((build_char_tokenizer, _sft_pairs, _build, countdown.generate_problems,
                         countdown.split_problems, countdown.compact_prompt, countdown.compact_completion))


BUILTIN_MODELS: dict[str, TinyRecipe] = {
    # 600 steps of 32 prompts: built in about 2 minutes on 2 cores (600 of 64 took 4m43s);
    # held-out sampled accuracy about 21%, from which the demo's GRPO gains 6-8 points on
    # every seed measured (docs/architecture.md, "The demo recipe").
    "tiny-countdown": TinyRecipe(
        hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, ffn_size=512, sft_steps=600, sft_batch_size=32
    ),
    "tiny-random": TinyRecipe(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_size=256),
}


def _register_math_model() -> None:
    """builtin:tiny-math (perl_cli/models_math.py), kept in its own module."""
    from perl_cli.models_math import TINY_MATH

    BUILTIN_MODELS["tiny-math"] = TINY_MATH  # type: ignore[assignment]


_register_math_model()


def is_builtin(name: str) -> bool:
    return name.startswith(BUILTIN_PREFIX)


def builtin_recipe(name: str) -> TinyRecipe | None:
    """The recipe of a built-in model ("builtin:<name>"); None for any other model (builtin:shape: included)."""
    return BUILTIN_MODELS.get(name.removeprefix(BUILTIN_PREFIX)) if is_builtin(name) else None


# --- the character-level tokenizer ---------------------------------------------------


def build_char_tokenizer() -> Any:
    """One token per character of CHARSET (builtin_parts.char_tokenizer says why)."""
    return char_tokenizer(CHARSET)


# --- building a built-in model -------------------------------------------------------


def _sft_pairs(recipe: TinyRecipe) -> list[tuple[str, str]]:
    """The warm start's (prompt, solution) pairs: the training split of the built-in problems."""
    from perl_cli.data import countdown

    splits = countdown.split_problems(
        countdown.generate_problems(
            recipe.num_count,
            recipe.min_number,
            recipe.max_number,
            recipe.operators,
            seed=recipe.split_seed,
            wanted=None,
        ),
        eval_size=recipe.eval_size,
        data_size=None,
        seed=recipe.split_seed,
    )
    return [(countdown.compact_prompt(p), countdown.compact_completion(p)) for p in splits.train]


def _build(recipe: TinyRecipe, out_dir: Path, progress: Progress | None = None) -> None:
    build_model(recipe, build_char_tokenizer(), lambda: _sft_pairs(recipe), out_dir, progress)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def builtin_model_path(name: str, progress: Progress | None = None) -> Path:
    """The directory of built-in model `name` (``builtin:...``), building it if needed.

    `progress(phase, done, total)` hears of the build and its warm start (a worker puts
    them in status.json), and of waiting while another worker builds it.
    """
    short = name.removeprefix(BUILTIN_PREFIX)
    if short not in BUILTIN_MODELS:
        known = ", ".join(BUILTIN_PREFIX + k for k in BUILTIN_MODELS)
        raise ModelError(f"unknown built-in model {name!r}; known: {known}")
    recipe = BUILTIN_MODELS[short]
    final = cache_dir() / "models" / f"{short}-{recipe.digest()}"
    if (final / "perl_recipe.json").exists():
        return final
    if progress is not None:
        progress(f"waiting for {name} to be built", None, None)
    with _file_lock(final.parent / f".{final.name}.lock"):
        if (final / "perl_recipe.json").exists():  # another worker built it while we waited
            return final
        print(f"[perl] building {name} into {final} (once per machine)", flush=True)
        if progress is not None:
            progress(f"building {name}", None, None)
        started = time.time()
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            import torch

            # Seeded inside; forking keeps the caller's RNG stream untouched. One thread:
            # a built-in model's matrices are too small for torch to gain from more, and
            # with other work on the cores OpenMP's barriers wait on descheduled threads
            # (tiny-math's warm start, 100 steps: 213 s with 2 threads beside three busy
            # processes, 12.6 s with 1; quiet, 2 threads built tiny-countdown at ~5 steps/s,
            # 1 thread under that load at ~8). The weights do not depend on it.
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                with torch.random.fork_rng(devices=[]):
                    if hasattr(recipe, "build"):  # a recipe that builds itself (models_math.py)
                        recipe.build(tmp, progress)
                    else:
                        _build(recipe, tmp, progress)
            finally:
                torch.set_num_threads(threads)
            if final.exists():  # a leftover without a recipe file is an aborted build
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        print(f"[perl] built {name} in {time.time() - started:.0f}s", flush=True)
    return final


# --- loading any model ---------------------------------------------------------------

_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def _torch_dtype(requested: str, on_gpu: bool) -> Any:
    import torch

    if not on_gpu:
        return torch.float32  # CPU kernels for half precision are slow or missing
    if requested == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if requested not in _DTYPES:
        raise ModelError(f"model.dtype must be auto, bfloat16, float16 or float32, got {requested!r}")
    return getattr(torch, _DTYPES[requested])


def _hub_error(name: str, exc: Exception) -> ModelError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelError(
        f"could not load model {name!r}: it is not a local directory and the Hugging Face Hub "
        f"could not provide it ({type(exc).__name__}: {first}). Offline machine? Set "
        "HF_HUB_OFFLINE=1 and use a local path, or pre-download the model "
        "(huggingface-cli download NAME) and point model_name_or_path at the directory."
    )


def is_shape(name: str) -> bool:
    """A real architecture's shape with random weights, built in memory (perl_cli/shapes.py)."""
    from perl_cli.architectures import SHAPE_PREFIX

    return name.startswith(SHAPE_PREFIX)


def _check_shape(name: str) -> None:
    from perl_cli.architectures import ArchitectureError, parse_shape_name

    try:
        parse_shape_name(name)
    except ArchitectureError as exc:
        raise ModelError(str(exc)) from None


def resolve_model_path(name: str, progress: Progress | None = None) -> str:
    """A local directory for built-in names; other names are passed to from_pretrained."""
    if is_shape(name):
        raise ModelError(f"{name!r} is built in memory and has no directory (models.load_model builds it)")
    if is_builtin(name):
        return str(builtin_model_path(name, progress))
    # Something written as a path must exist: do not let it fall through to a hub lookup.
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().is_dir():
        raise ModelError(f"model directory {name!r} does not exist (model.model_name_or_path)")
    return str(Path(name).expanduser()) if name.startswith("~") else name


def load_tokenizer(model_cfg: dict[str, Any], progress: Progress | None = None) -> Any:
    name = str(model_cfg["model_name_or_path"])
    if is_shape(name):
        from perl_cli import shapes

        _check_shape(name)
        return shapes.build_tokenizer(name)
    path = resolve_model_path(name, progress)
    if is_builtin(name):
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(path)
    from huggingface_hub.errors import HFValidationError
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=bool(model_cfg.get("trust_remote_code")))
    except (OSError, HFValidationError) as exc:  # HFValidationError: not even a valid repo id
        raise _hub_error(name, exc) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # decoder-only generation pads on the left
    return tokenizer


def load_model(model_cfg: dict[str, Any], *, on_gpu: bool, progress: Progress | None = None) -> Any:
    """The causal LM named by the config's `model` section, ready for training."""
    from huggingface_hub.errors import HFValidationError
    from transformers import AutoModelForCausalLM

    name = str(model_cfg["model_name_or_path"])
    if is_shape(name):
        from perl_cli import shapes

        _check_shape(name)
        if progress is not None:
            progress(f"building {name} (random weights)", None, None)
        return shapes.build_model(name, _torch_dtype(str(model_cfg.get("dtype", "auto")), on_gpu))
    path = resolve_model_path(name, progress)
    if progress is not None:
        progress(f"loading {name}", None, None)
    kwargs: dict[str, Any] = {
        "dtype": _torch_dtype(str(model_cfg.get("dtype", "auto")), on_gpu),
        "trust_remote_code": bool(model_cfg.get("trust_remote_code")),
    }
    if on_gpu and model_cfg.get("attn_implementation"):
        kwargs["attn_implementation"] = model_cfg["attn_implementation"]
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, HFValidationError) as exc:  # HFValidationError: not even a valid repo id
        raise _hub_error(name, exc) from exc
