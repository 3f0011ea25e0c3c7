"""state.py: which checkpoint counts (the worker resumes from it, the scheduler decides by it)."""

from __future__ import annotations

from pathlib import Path

from perl_cli import state


def test_last_checkpoint_is_the_newest_complete_one(tmp_path: Path) -> None:
    assert state.last_checkpoint(tmp_path) is None
    root = tmp_path / state.CHECKPOINT_DIR
    for step, complete in ((5, True), (40, True), (100, False)):  # 100: killed while saving
        (root / f"checkpoint-{step}").mkdir(parents=True)
        if complete:
            (root / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (root / "checkpoint-x").mkdir()
    # Numeric order, not text order ("5" > "40" as text); the incomplete 100 does not count.
    assert state.last_checkpoint(tmp_path) == root / "checkpoint-40"
