"""`perl watch` as it looks at 80x24 and 200x50 (pytest-textual-snapshot; SVGs in tests/__snapshots__/).

The suite is written at a fixed time and the app's clock is fixed to it, so every cell is
the same on every run. After an intended change of the screen, review the SVGs and update
them with `pytest tests/test_watch_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("pytest_textual_snapshot", reason="the dev extra's pytest-textual-snapshot is not installed")

from test_watch import NAMES, settle, watch_app  # noqa: E402
from textual.widgets import DataTable  # noqa: E402


@pytest.fixture(autouse=True)
def utc(monkeypatch, tmp_path: Path):
    """UTC times, tmp_path as the working directory (paths shown are `output/...` on every run),
    and a fixed disk use per experiment (the fixtures' file sizes follow the config schema)."""
    from perl_cli import experiments_view

    monkeypatch.setattr(experiments_view, "disk_usage", lambda path: 8192)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("size", [(80, 24), (200, 50)])
def test_monitor(snap_compare, tmp_path: Path, size: tuple[int, int]) -> None:
    assert snap_compare(watch_app(tmp_path, relative=True), terminal_size=size, run_before=settle)


@pytest.mark.parametrize("size", [(80, 24), (200, 50)])
def test_details_of_a_failure(snap_compare, tmp_path: Path, size: tuple[int, int]) -> None:
    async def open_details(pilot) -> None:
        await settle(pilot)
        pilot.app.query_one(DataTable).move_cursor(row=NAMES.index("adalora_r16_s42"))
        await pilot.press("d")
        await pilot.pause()

    assert snap_compare(watch_app(tmp_path, relative=True), terminal_size=size, run_before=open_details)
