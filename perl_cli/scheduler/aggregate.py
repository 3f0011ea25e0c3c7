"""`run_status.json`: the suite's aggregate, derived from the experiment directories.

Derived data: a missing or corrupt file is rebuilt from the directories and never
trusted over them (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from perl_cli import state
from perl_cli.config import Experiment


def build_run_status(suite: str, suite_dir: Path, experiments: Sequence[Experiment], scheduler: dict | None = None) -> dict:
    """The aggregate, derived from the experiment directories (never trusted over them)."""
    expected = {e.name: e.fingerprint for e in experiments}
    rows: dict[str, dict] = {}
    names = list(expected) + [n for n in state.experiment_dirs(suite_dir) if n not in expected]
    for name in names:
        status = state.read_status(suite_dir / name) or {}
        row = {
            "state": state.effective_state(status, expected.get(name)),
            "in_config": name in expected,
            "stalled": state.is_stalled(status),
        }
        for key in ("step", "total_steps", "gpu", "pid", "attempt", "started", "ended", "heartbeat", "exit_code", "signal",
                    "error", "slurm"):
            row[key] = status.get(key)
        row["fingerprint"] = expected.get(name, status.get("fingerprint"))
        rows[name] = row
    counts = {s: 0 for s in state.STATES}
    for row in rows.values():
        if row["in_config"]:
            counts[row["state"]] += 1
    return {
        "suite": suite,
        "updated": state.now(),
        "total": len(expected),
        "counts": counts,
        "scheduler": scheduler or {},
        "experiments": rows,
    }


def write_run_status(suite: str, suite_dir: Path, experiments: Sequence[Experiment], scheduler: dict | None = None) -> dict:
    data = build_run_status(suite, suite_dir, experiments, scheduler)
    state.atomic_write_json(suite_dir / state.RUN_STATUS_FILE, data)
    return data
