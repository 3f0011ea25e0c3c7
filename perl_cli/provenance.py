"""What produced an experiment: PeRL, its git commit, Python, the libraries, CUDA, GPUs, host.

The worker records it in the experiment directory (`provenance.json`) when it starts, so
that a number can be traced to the stack that made it, and `perl report` can say when
the runs it compares were made by different library versions (report_provenance.py).

Cheap and import-light: versions come from the installed distributions' metadata
(`importlib.metadata`), never from importing the libraries; CUDA and GPU names are read
only when torch is already imported (the worker's case), so readers stay fast.
"""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from perl_cli import __version__, state

PROVENANCE_FILE = "provenance.json"
# The libraries whose versions decide what a run computes. vLLM only when installed.
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "vllm")
# Keys whose difference between compared runs is worth a warning (the stack), and keys that
# are only shown (where it ran).
STACK_KEYS = ("perl", "perl_commit", "python", *LIBRARIES, "cuda")
PLACE_KEYS = ("gpus", "host")
GIT_TIMEOUT_S = 5.0


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(root: Path | None = None) -> str | None:
    """The commit of the PeRL checkout this code runs from ("+dirty" with local changes), if any."""
    root = root or Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():  # an installed wheel: no checkout
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def cuda_facts() -> dict[str, Any]:
    """CUDA version and GPU names, from torch if this process has imported it already."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {"cuda": None, "gpus": None}
    cuda = getattr(torch.version, "cuda", None)
    gpus: list[str] = []
    try:
        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - a broken driver must not stop training; it shows as no GPU
        gpus = []
    return {"cuda": cuda, "gpus": gpus}


def collect() -> dict[str, Any]:
    return {
        "perl": __version__,
        "perl_commit": git_commit(),
        "python": platform.python_version(),
        **library_versions(),
        **cuda_facts(),
        "host": socket.gethostname(),
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def same_stack(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in STACK_KEYS)


def record(exp_dir: Path) -> dict[str, Any]:
    """Write this process's provenance into `exp_dir`; a resumed run on another stack keeps
    the earlier one under "previous" (an experiment trained on two stacks says so)."""
    now = collect()
    old = read(exp_dir)
    previous: list[dict[str, Any]] = []
    if old is not None:
        previous = list(old.get("previous") or [])
        earlier = {k: v for k, v in old.items() if k != "previous"}
        if not same_stack(earlier, now):
            previous.append(earlier)
    if previous:
        now["previous"] = previous
    state.atomic_write_json(exp_dir / PROVENANCE_FILE, now)
    return now


def read(exp_dir: Path | None) -> dict[str, Any] | None:
    if exp_dir is None:
        return None
    data = state.read_json(Path(exp_dir) / PROVENANCE_FILE)
    return data if isinstance(data, dict) else None
