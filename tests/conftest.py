"""Shared test setup: pin threads (docs/stack.md: stalls with 2 threads), keep caches in tmp.

Slurm: SLURM_CONF points at the local test cluster (scripts/local-slurm.sh) before any
Slurm command can run, so no client ever looks a cluster up in DNS. Tests marked
`slurm` are skipped only where Slurm is not installed (or cannot be started), and the
run then ends with a loud line saying so.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Set before torch is imported anywhere in the test process.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SLURM_DIR = Path(os.environ.get("PERL_SLURM_DIR", "/tmp/perl-slurm"))
os.environ["SLURM_CONF"] = str(SLURM_DIR / "etc" / "slurm.conf")

_slurm_skipped: list[str] = []


def slurm_unavailable() -> str | None:
    """Why the Slurm tests cannot run here, or None."""
    missing = [c for c in ("sbatch", "squeue", "sacct") if shutil.which(c) is None]
    missing += [d for d in ("slurmctld", "slurmd", "slurmdbd", "munged") if not Path("/usr/sbin", d).exists()]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing; scripts/local-slurm.sh install)"
    if os.geteuid() != 0 and not (SLURM_DIR / "run" / "slurmctld.pid").exists():
        return "the local Slurm cluster is not running and starting it needs root (scripts/local-slurm.sh start)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = [item for item in items if item.get_closest_marker("slurm")]
    reason = slurm_unavailable() if marked else None
    if reason:
        _slurm_skipped.append(f"{len(marked)} SLURM TESTS NOT RUN: {reason}")
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=f"SLURM TESTS NOT RUN: {reason}"))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    for line in _slurm_skipped:
        terminalreporter.write_sep("!", line, red=True, bold=True)
