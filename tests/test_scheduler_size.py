"""No module of perl_cli/scheduler/ grows past ~500 lines (issue 18): the run session and each
backend are read in one sitting. The guard is 550 so that a small fix does not trip it; a
module that needs more is split along a seam (see docs/architecture.md's module map)."""

from __future__ import annotations

from pathlib import Path

SCHEDULER = Path(__file__).resolve().parent.parent / "perl_cli" / "scheduler"
MAX_LINES = 550


def test_no_scheduler_module_is_over_550_lines() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in sorted(SCHEDULER.glob("*.py"))}
    assert len(sizes) > 10, f"found only {sorted(sizes)} in {SCHEDULER}"
    too_long = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not too_long, (f"over {MAX_LINES} lines: {too_long}. Split the module along a seam "
                          "(docs/architecture.md, 'The run session and its backends').")
