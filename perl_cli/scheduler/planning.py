"""Planning: what `perl run` does with each chosen experiment, from facts alone.

The caller gathers the facts (the experiment's records, the process table, Slurm's
queue) and `decide` turns them into one decision, with no I/O, so every rule is
unit-tested in milliseconds (tests/test_planning.py). The rules:

- unreadable records: refused (never redone on a guess) unless --fresh;
- a task still queued or running in Slurm: watched by the Slurm backend (never submitted
  twice), refused by the local one;
- running on another host (and not stalled): refused;
- a live worker on this host: adopted (or stopped and started over with --fresh), but
  refused when it runs other settings;
- --fresh on an existing directory: started over (the old directory is kept);
- completed with the same fingerprint: skipped; completed with `--set` overrides that
  still resolve to what ran, by a run without --set: kept; otherwise completed is
  `stale`: refused;
- checkpoints from other settings: refused;
- else resumed from its last checkpoint, or run from the start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Decisions.
RUN, RESUME, FRESH, ADOPT = "run", "resume", "fresh", "adopt"  # become jobs
SKIP, KEEP, WATCH, REFUSE = "skip", "keep", "watch", "refuse"  # do not
# The refusal of an experiment Slurm still has a task for: --fresh cannot lift it, `perl cancel` can.
IN_SLURM = "queued or running in Slurm"


@dataclass(frozen=True)
class Facts:
    """What is known about one experiment before `perl run` acts on it."""

    fingerprint: str  # what experiments.toml (+ this run's --set) resolves it to now
    state: str  # the effective state of its status (pending, completed, stale, ...)
    exists: bool = False  # its directory exists
    problem: str | None = None  # unreadable status.json/config.json: what is wrong
    recorded_fingerprint: str | None = None
    overrides: tuple[str, ...] = ()  # the --set it ran with
    runtime: dict[str, Any] | None = None  # the scheduler's adjustments it last ran with
    has_checkpoint: bool = False
    live_pid: int | None = None  # a live worker on its directory, on this host
    other_host: str | None = None  # running (not stalled) on another host
    slurm_task: str | None = None  # a Slurm task still queued or running for it
    complete_under_own_overrides: bool = False  # completed with --set that still resolve to what ran

    @property
    def changed(self) -> bool:
        return self.recorded_fingerprint is not None and self.recorded_fingerprint != self.fingerprint


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str = ""  # for refusals
    runtime: dict[str, Any] = field(default_factory=dict)  # carried over to the next attempt


def settings(overrides: tuple[str, ...]) -> str:
    """How an experiment's settings were chosen, for messages."""
    return "with " + " ".join(f"--set {o}" for o in overrides) if overrides else "without --set"


def stale_reason(ran_with: tuple[str, ...], asked: tuple[str, ...]) -> str:
    if ran_with == asked:
        return "completed with settings experiments.toml no longer gives (stale)"
    asks = " ".join(f"--set {o}" for o in asked) if asked else "no --set"
    return f"completed {settings(ran_with)}; this command has {asks} (stale under it)"


def decide(f: Facts, *, fresh: bool, asked: tuple[str, ...] = (), slurm: bool = False) -> Decision:
    """The one decision for one experiment (see the module docstring for the rules)."""
    if f.problem:
        if fresh:
            return Decision(FRESH)
        return Decision(REFUSE, f"unreadable ({f.problem}): restore or delete the file, or start it over")
    if f.slurm_task:
        if slurm and not fresh:
            return Decision(WATCH)
        return Decision(REFUSE, f"{IN_SLURM} (task {f.slurm_task}): `perl cancel` it first")
    if f.live_pid is None and f.other_host:
        return Decision(REFUSE, f"running on host {f.other_host}")
    if f.live_pid is not None:
        if fresh:
            return Decision(FRESH)  # its live worker is stopped first
        if f.changed:
            return Decision(REFUSE, f"still running with other settings ({settings(f.overrides)})")
        return Decision(ADOPT)
    if fresh and f.exists:
        return Decision(FRESH)
    if f.state == "completed":
        return Decision(SKIP)
    if f.state == "stale":
        if f.complete_under_own_overrides and not asked:
            return Decision(KEEP)
        return Decision(REFUSE, stale_reason(f.overrides, asked))
    if f.changed and f.has_checkpoint:
        return Decision(REFUSE, f"has checkpoints from other settings ({settings(f.overrides)})")
    runtime = dict(f.runtime) if f.runtime and not f.changed else {}
    return Decision(RESUME if f.has_checkpoint else RUN, runtime=runtime)
