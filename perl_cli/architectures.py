"""A model's shape (config.json numbers) and parameter count, without loading the model.

Read-only commands use this (`perl plan`, the scheduler's memory estimate), so it imports
neither torch nor transformers: a config is a plain dict.

Where a model's config comes from, first found wins (`model_config`):

1. ``builtin:shape:NAME[:layers=N]``: the table in architectures.toml (random weights of
   that shape are built by perl_cli/shapes.py; N layers instead of the real count);
2. a local directory holding a config.json;
3. the Hugging Face hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
   ``~/.cache/huggingface/hub``): the snapshot ``refs/main`` points at, else the newest;
4. the table in architectures.toml, by full hub name or by its last path component.

None when nothing is found: the caller falls back to guessing from the name.
"""

from __future__ import annotations

import functools
import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TABLE_FILE = Path(__file__).with_name("architectures.toml")
SHAPE_PREFIX = "builtin:shape:"
_LAYERS_RE = re.compile(r"^(?P<name>.+?):layers=(?P<layers>\d+)$")
_MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few KiB; anything larger is not one
# Model types whose q/k/v projections carry a bias whatever the config says (Qwen2 has no
# `attention_bias` key; its attention always adds one to q, k and v).
_QKV_BIAS_TYPES = {"qwen2"}
# config.json keys a parameter count needs.
_SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


class ArchitectureError(ValueError):
    """A ``builtin:shape:`` name that names no known architecture; the message lists them."""


@dataclass(frozen=True)
class Shape:
    """The numbers of a decoder-only transformer that sizes its memory."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool
    qkv_bias: bool
    attention_bias_out: bool = False

    @property
    def kv_width(self) -> int:
        return self.num_kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear module of one layer, by its Qwen2/Llama name."""
        h, q, kv, i = self.hidden_size, self.num_heads * self.head_dim, self.kv_width, self.intermediate_size
        return {
            "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }

    def parameters(self) -> int:
        """Every parameter: embeddings, output head (unless tied), layers, final norm."""
        h = self.hidden_size
        per_layer = sum(i * o for i, o in self.linear_shapes().values()) + 2 * h  # two RMSNorms
        if self.qkv_bias:
            per_layer += self.num_heads * self.head_dim + 2 * self.kv_width
        if self.attention_bias_out:
            per_layer += h
        embeddings = self.vocab_size * h * (1 if self.tied_embeddings else 2)
        return embeddings + self.num_layers * per_layer + h


@functools.cache
def table() -> dict[str, dict[str, Any]]:
    """architectures.toml: full hub name -> config.json numbers."""
    with open(TABLE_FILE, "rb") as handle:
        return tomllib.load(handle)


def table_entry(name: str) -> tuple[str, dict[str, Any]] | None:
    """(full name, numbers) of the table entry for `name`: its full hub name or last component."""
    entries = table()
    if name in entries:
        return name, entries[name]
    short = name.rstrip("/").rsplit("/", 1)[-1].lower()
    for full, numbers in entries.items():
        if full.rsplit("/", 1)[-1].lower() == short:
            return full, numbers
    return None


def parse_shape_name(name: str) -> tuple[str, dict[str, Any], int | None]:
    """``builtin:shape:NAME[:layers=N]`` -> (full name, numbers, N or None).

    Raises ArchitectureError for an unknown NAME or a layer count below 1.
    """
    rest = name.removeprefix(SHAPE_PREFIX)
    layers: int | None = None
    match = _LAYERS_RE.match(rest)
    if match:
        rest, layers = match["name"], int(match["layers"])
        if layers < 1:
            raise ArchitectureError(f"{name!r}: layers must be at least 1")
    entry = table_entry(rest)
    if entry is None:
        known = ", ".join(SHAPE_PREFIX + full.rsplit("/", 1)[-1] for full in table())
        raise ArchitectureError(
            f"unknown architecture {rest!r} in model name {name!r}; known: {known} "
            f"(optionally with :layers=N), listed in {TABLE_FILE.name}"
        )
    return entry[0], entry[1], layers


def name_problems(name: str) -> list[str]:
    """Plan-time problems with a ``builtin:shape:`` model name (config.settings_problems)."""
    if not name.startswith(SHAPE_PREFIX):
        return []
    try:
        parse_shape_name(name)
    except ArchitectureError as exc:
        return [f"model.model_name_or_path: {exc}"]
    return []


def shape_layers(name: str) -> int | None:
    """The layer count of a ``builtin:shape:`` model, or None for other (or unknown) names."""
    if not name.startswith(SHAPE_PREFIX):
        return None
    try:
        return int(shape_config(name)["num_hidden_layers"])
    except ArchitectureError:
        return None


def shape_config(name: str) -> dict[str, Any]:
    """The config.json numbers of a ``builtin:shape:`` model (its layer count applied)."""
    _, numbers, layers = parse_shape_name(name)
    config = dict(numbers)
    if layers is not None:
        config["num_hidden_layers"] = layers
        config["max_window_layers"] = min(int(config.get("max_window_layers", layers)), layers)
    return config


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def _read_config(path: Path) -> dict[str, Any] | None:
    """A config.json as a dict, or None when it is missing, too large or not a JSON object."""
    try:
        if not path.is_file() or path.stat().st_size > _MAX_CONFIG_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def hub_cached_config(name: str) -> dict[str, Any] | None:
    """The config.json of hub model `name` ("org/model") in the local hub cache, if cached."""
    if name.count("/") != 1 or name.startswith(("/", ".", "~")):
        return None
    repo = hub_cache_dir() / ("models--" + name.replace("/", "--"))
    snapshots = repo / "snapshots"
    try:
        ref = (repo / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        ref = ""
    candidates = [snapshots / ref] if ref else []
    try:
        candidates += sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        pass
    for snapshot in candidates:
        config = _read_config(snapshot / "config.json")
        if config is not None:
            return config
    return None


@functools.lru_cache(maxsize=256)
def _model_config_cached(name: str, hub_cache: str) -> tuple[str, str] | None:
    if name.startswith(SHAPE_PREFIX):
        try:
            return "builtin shape", json.dumps(shape_config(name))
        except ArchitectureError:
            return None
    if name.startswith("builtin:"):
        return None
    local = Path(name).expanduser()
    config = _read_config(local / "config.json") if local.is_dir() else None
    if config is not None:
        return "local config.json", json.dumps(config)
    config = hub_cached_config(name)
    if config is not None:
        return "hub cache", json.dumps(config)
    entry = table_entry(name)
    if entry is not None:
        return TABLE_FILE.name, json.dumps(entry[1])
    return None


def model_config(name: str) -> tuple[str, dict[str, Any]] | None:
    """(where it was found, config.json as a dict) for model `name`, or None (module docstring)."""
    found = _model_config_cached(name, str(hub_cache_dir()))
    return None if found is None else (found[0], json.loads(found[1]))


def shape_from_config(config: dict[str, Any]) -> Shape | None:
    """The Shape of a decoder-only config.json; None when it lacks the numbers (e.g. a multimodal wrapper)."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    if not all(isinstance(text.get(k), int) and not isinstance(text.get(k), bool) and text[k] > 0 for k in _SHAPE_KEYS):
        return None
    heads = int(text["num_attention_heads"])
    kv_heads = text.get("num_key_value_heads") or heads
    head_dim = text.get("head_dim") or text["hidden_size"] // heads
    if not all(isinstance(x, int) and x > 0 for x in (kv_heads, head_dim)):
        return None
    model_type = str(text.get("model_type", ""))
    bias = bool(text.get("attention_bias", False))
    return Shape(
        hidden_size=int(text["hidden_size"]),
        intermediate_size=int(text["intermediate_size"]),
        num_layers=int(text["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(kv_heads),
        head_dim=int(head_dim),
        vocab_size=int(text["vocab_size"]),
        tied_embeddings=bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
        qkv_bias=bias or model_type in _QKV_BIAS_TYPES,
        attention_bias_out=bias,
    )


def model_shape(name: str) -> tuple[str, Shape] | None:
    """(where its config was found, Shape) of model `name`, or None when no config is known."""
    found = model_config(name)
    if found is None:
        return None
    shape = shape_from_config(found[1])
    return None if shape is None else (found[0], shape)
