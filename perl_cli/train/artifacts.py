"""What a training session leaves in the experiment directory besides metrics: the adapter's
files (saved atomically), their size, the base model's evaluation kept for resumes, and the
peak memory figure of eval.json.

Its own module so that the session (train/session.py) and the worker's entry point
(train/worker.py) do not import each other: the worker starts the session, the session
uses these.
"""

from __future__ import annotations

import os
import resource
import shutil
from pathlib import Path
from typing import Any

BASE_EVAL_FILE = "base_eval.json"  # the base model's accuracy, kept for resumed runs
INITIAL_ADAPTER_DIR = "initial_adapter"  # PiSSA/MiLoRA: needed to convert on save


def peak_memory_mb(on_gpu: bool) -> float:
    """Peak CUDA allocation on GPU, peak resident set size of this process on CPU."""
    if on_gpu:
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def atomic_save_adapter(model: Any, exp_dir: Path, **save_kwargs: Any) -> int:
    """save_pretrained into a temporary directory, then rename the files into place.

    Returns the size in bytes of the adapter's weights file(s).
    """
    tmp = exp_dir / ".adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), **save_kwargs)
    size = _weights_size(tmp)
    for path in sorted(tmp.iterdir()):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(path, exp_dir / path.name)
    shutil.rmtree(tmp, ignore_errors=True)
    return size


def adapter_size(model: Any, exp_dir: Path) -> int:
    """Bytes of the adapter's weights file as saved at its own rank, without keeping it.

    Measured the same way for every method (a plain save_pretrained), so that PiSSA and
    MiLoRA are not charged for their rank-2r converted file.
    """
    tmp = exp_dir / ".adapter-size.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp))
        return _weights_size(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _weights_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file() and p.name.startswith("adapter_model"))


FULL_MODEL_DIR = "full_model"  # method = "full": the trained model, loadable with from_pretrained


def save_full_model(model: Any, tokenizer: Any, exp_dir: Path) -> int:
    """Full fine-tuning's checkpoint: the whole model (and tokenizer) in exp_dir/full_model,
    written in a temporary directory that replaces it at once; returns the weights' bytes."""
    final = exp_dir / FULL_MODEL_DIR
    tmp = exp_dir / ".full_model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    size = sum(p.stat().st_size for p in tmp.iterdir() if p.is_file() and p.name.endswith(".safetensors"))
    for path in tmp.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    old = exp_dir / ".full_model.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return size
