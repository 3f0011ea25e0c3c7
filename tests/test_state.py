"""state.py: which checkpoint counts (the worker resumes from it, the scheduler decides by it); file modes."""

from __future__ import annotations

import os
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


def test_atomic_writes_honour_the_umask(tmp_path) -> None:
    import stat
    import subprocess
    import sys

    # A fresh process, so the module reads the umask it is started with.
    code = (
        "import sys; from perl_cli import state; "
        "state.atomic_write_json(sys.argv[1] + '/status.json', {'state': 'completed'}); "
        "state.atomic_write_text(sys.argv[1] + '/SUMMARY.md', 'x')"
    )
    for umask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        out = tmp_path / oct(umask)
        out.mkdir()
        subprocess.run([sys.executable, "-c", code, str(out)], check=True, preexec_fn=lambda u=umask: os.umask(u))
        for name in ("status.json", "SUMMARY.md"):
            assert stat.S_IMODE((out / name).stat().st_mode) == mode, (oct(umask), name)


def test_running_without_a_worker_pid_is_stalled_once_its_scheduler_is_gone() -> None:
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    status = {"state": "running", "host": state.hostname(), "pid": None, "heartbeat": state.now(),
              "scheduler_pid": int(dead.stdout)}
    assert state.is_stalled(status)
    assert not state.is_stalled({**status, "scheduler_pid": os.getpid()})


_WRITER = """
import sys
from perl_cli import state
exp, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    state.update_status(exp, **{f"{tag}{i}": i})
"""


def test_concurrent_status_updates_lose_no_field(tmp_path: Path) -> None:
    """Two processes updating one status.json at once (a Slurm task starting while `perl run`
    records its job id): each read-modify-write holds the lock, so no field is lost."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    n = 60
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), tag, str(n)], env=env)
               for tag in ("a", "b")]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    status = state.read_status(tmp_path)
    missing = [f"{tag}{i}" for tag in "ab" for i in range(n) if f"{tag}{i}" not in status]
    assert not missing, f"{len(missing)} updates lost: {missing[:5]}"
