"""`perl logs SUITE EXP [-f] [-n N]`: print or follow one experiment's log, safely."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from suite_fixtures import this_host, write_config, write_experiment
from typer.testing import CliRunner

from perl_cli import config as configlib
from perl_cli import logs as logslib
from perl_cli import state as st
from perl_cli.cli import app

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def running(tmp_path: Path):
    """A running experiment of suite core whose worker is this (live) process."""
    cfg_path = write_config(tmp_path)
    exp = configlib.expand(configlib.load(cfg_path), "core")[0]
    out = tmp_path / "output"
    d = write_experiment(out / "core", exp, state=st.RUNNING, step=40, host=this_host(), pid=os.getpid(),
                         status_extra={"pid_start_time": st.process_start_time(os.getpid())},
                         log="".join(f"line {i}\n" for i in range(1, 6)))
    return d, ("--config", str(cfg_path), "--output", str(out))


def test_prints_the_whole_log_or_its_last_lines(running) -> None:
    d, common = running
    code, text = run_cli("logs", "core", d.name, *common)
    assert code == 0 and text == "".join(f"line {i}\n" for i in range(1, 6))
    code, text = run_cli("logs", "core", d.name, "-n", "2", *common)
    assert code == 0 and text == "line 4\nline 5\n"


def test_unknown_experiment_and_missing_log(running) -> None:
    d, common = running
    code, text = run_cli("logs", "core", "lora_r16_s4", *common)
    assert code == 2 and "no experiment 'lora_r16_s4'" in text and "lora_r16_s42" in text
    code, text = run_cli("logs", "core", "pissa_r16_s42", *common)  # pending: no directory yet
    assert code == 1 and "has no train.log yet (pending)" in text


def test_a_fifo_or_a_link_outside_is_refused_at_once(running, tmp_path: Path) -> None:
    d, common = running
    (d / st.LOG_FILE).unlink()
    os.mkfifo(d / st.LOG_FILE)
    code, text = run_cli("logs", "core", d.name, *common)
    assert code == 2 and "FIFO" in text
    (d / st.LOG_FILE).unlink()
    secret = tmp_path / "secret.txt"
    secret.write_text("password\n")
    (d / st.LOG_FILE).symlink_to(secret)
    code, text = run_cli("logs", "core", d.name, *common)
    assert code == 2 and "password" not in text and "outside" in text


def test_follow_prints_appended_bytes_until_the_experiment_ends(running, monkeypatch) -> None:
    d, common = running
    monkeypatch.setattr(logslib, "POLL_SECONDS", 0.02)

    def worker() -> None:
        time.sleep(0.5)  # after the first print
        for i in range(6, 9):
            time.sleep(0.1)
            with open(d / st.LOG_FILE, "a") as f:
                f.write(f"line {i}\n")
        with open(d / st.LOG_FILE, "a") as f:
            f.write("done\n")
        st.update_status(d, state=st.COMPLETED, ended=time.time())

    thread = threading.Thread(target=worker)
    thread.start()
    code, text = run_cli("logs", "core", d.name, "-f", "-n", "1", *common)
    thread.join()
    assert code == 0
    printed = text.splitlines()
    assert printed[-5:-1] == ["line 6", "line 7", "line 8", "done"]  # each appended line once, in order
    assert printed[0] in ("line 5", "line 6")
    assert "is completed; no more output will come" in text


def test_follow_stops_when_the_worker_is_gone(running, monkeypatch) -> None:
    d, common = running
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    st.update_status(d, pid=dead.pid, pid_start_time=None)
    code, text = run_cli("logs", "core", d.name, "-f", *common)
    assert code == 0 and "line 5" in text and "stalled (its worker is gone)" in text


def test_ctrl_c_stops_following_cleanly(running) -> None:
    d, common = running
    proc = subprocess.Popen(
        [sys.executable, "-m", "perl_cli", "logs", "core", d.name, "-f", *common],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout.readline() == "line 1\n"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Traceback" not in err, (out, err)  # README: 130 interrupted


def test_logs_imports_no_heavy_module(running) -> None:
    d, common = running
    code = (
        "import sys\n"
        "from perl_cli.cli import app\n"
        f"try:\n    app(['logs', 'core', {d.name!r}, *{list(common)!r}])\n"
        "except SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'peft', 'textual', 'matplotlib', 'wandb')"
        " if m in sys.modules)\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "HEAVY []" in proc.stderr and "line 5" in proc.stdout, proc.stderr


def test_ctrl_c_inside_opening_a_file_stays_a_ctrl_c(running, monkeypatch) -> None:
    """Ctrl+C can land while open_safe hands its descriptor to a file object. io.open then
    closes the descriptor itself before re-raising; closing it a second time turned the
    KeyboardInterrupt into OSError(EBADF), the read model called the experiment
    "unreadable" and `perl logs -f` ended with exit 0 (seen in CI)."""
    from perl_cli import experiments_view as views
    from perl_cli import logtail

    d, _ = running
    real_fdopen = os.fdopen

    def interrupted_fdopen(fd, *args, **kwargs):
        real_fdopen(fd, *args, **kwargs).close()  # what io.open does when interrupted after taking fd
        raise KeyboardInterrupt

    monkeypatch.setattr(logtail.os, "fdopen", interrupted_fdopen)
    with pytest.raises(KeyboardInterrupt):
        views.read_records(d)
