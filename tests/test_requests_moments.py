"""Requests reaching a run at awkward moments, served by the local backend of a real run session
(session.RunSession -> local.LocalBackend -> local_requests): while it is stopping, after an
experiment failed, on a full disk, the same cancel twice in one tick, a malformed request beside
a valid one. In-process and synthetic (no training): each is one `serve_requests` tick.

The end-to-end counterparts (real `perl run` / `perl cancel` processes) are in test_control.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_requests_property import session
from test_scheduler import SUITE, write_config

from perl_cli import config, state
from perl_cli.scheduler import requests
from perl_cli.scheduler.handles import ChildHandle


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> config.ConfigFile:
    root = tmp_path_factory.mktemp("cfg")
    return config.load(write_config(root, methods=("lora", "dora", "vera"), seeds=(1, 2)))


def valid(cfg: config.ConfigFile, name: str) -> dict:
    return next(e.resolved() for e in config.expand(cfg, SUITE) if e.name == name)


def serve(runner, *bodies: dict | bytes) -> list[dict]:
    """Write the requests (oldest first), serve one tick, return each reply."""
    spool = requests.spool_dir(runner.suite_dir)
    spool.mkdir(exist_ok=True)
    for i, body in enumerate(bodies):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        (spool / f"{i:03d}-req{requests.REQUEST_SUFFIX}").write_bytes(raw)
    runner.backend.serve_requests()
    replies = [json.loads((spool / f"{i:03d}-req{requests.REPLY_SUFFIX}").read_text()) for i in range(len(bodies))]
    assert not requests.pending(runner.suite_dir)
    return replies


def add(cfg: config.ConfigFile, *names: str) -> dict:
    return {"version": 1, "suite": SUITE, "kind": "add", "overrides": [], "experiments": [valid(cfg, n) for n in names]}


def cancel(*patterns: str) -> dict:
    return {"version": 1, "suite": SUITE, "kind": "cancel", "patterns": list(patterns)}


def outcomes(reply: dict) -> dict[str, tuple[str, str]]:
    return {r["name"]: (r["outcome"], r.get("reason") or "") for r in reply["results"]}


def test_while_the_run_is_stopping_a_hand_off_is_refused_and_a_cancel_says_what_is_left(cfg, tmp_path: Path) -> None:
    """Ctrl+C went through the backend's own stop (queue dropped, workers told): a hand-off is
    refused with exit 1 and the reason, a cancel answers the stopping worker truly, and nothing
    is queued again."""
    runner = session(cfg, tmp_path)
    runner.stop_requests = 1
    runner.backend._stop_all()
    assert runner.backend.stopping and not runner.backend.queue
    handed, cancelled = serve(runner, add(cfg, "dora_s1", "lora_s1"), cancel("*"))
    assert requests.Reply.from_json(handed, "000-req").exit_code == 1  # the requester exits 1: try again later
    got = outcomes(handed)
    assert {n: o for n, (o, _) in got.items()} == {"dora_s1": requests.REFUSED, "lora_s1": requests.REFUSED}
    assert all("the run is stopping" in why for _, why in got.values())
    got = outcomes(cancelled)
    assert got["vera_s1"] == (requests.CANCELLED, "it was already stopping")
    # Dropped from the queue by the stop, never started: nothing left to cancel, and said so.
    assert got["lora_s1"] == (requests.ENDED, "it is pending: nothing to cancel")
    assert not runner.backend.queue and "dora_s1" not in runner.run_experiments


def test_after_an_experiment_failed_a_cancel_says_so_and_a_hand_off_queues_it_again(cfg, tmp_path: Path) -> None:
    runner = session(cfg, tmp_path)
    failed = runner.backend.queue.popleft()  # lora_s1 ran and failed in this run
    failed.dir.mkdir(parents=True)
    state.write_status(failed.dir, {"state": state.FAILED, "fingerprint": failed.exp.fingerprint, "exit_code": 1,
                                    "error": "boom", "attempt": 1})
    runner.results[failed.name] = state.FAILED
    first, second = serve(runner, cancel("lora_s1"), add(cfg, "lora_s1"))
    assert outcomes(first) == {"lora_s1": (requests.ENDED, "it is failed: nothing to cancel")}
    assert outcomes(second) == {"lora_s1": (requests.QUEUED, "it had failed in this run; starts from the beginning")}
    assert [j.name for j in runner.backend.queue].count("lora_s1") == 1
    assert "lora_s1" not in runner.results  # its new attempt decides the run's result


def test_on_a_full_disk_a_hand_off_is_refused_and_a_cancel_still_works(cfg, tmp_path: Path) -> None:
    runner = session(cfg, tmp_path)
    runner.disk_full = "No space left on device (/x)"
    handed, cancelled = serve(runner, add(cfg, "dora_s1"), cancel("lora_s2"))
    assert outcomes(handed)["dora_s1"][0] == requests.REFUSED
    assert "the disk is full (No space left on device (/x))" in outcomes(handed)["dora_s1"][1]
    assert outcomes(cancelled) == {"lora_s2": (requests.CANCELLED, "it was queued and had not started")}
    assert [j.name for j in runner.backend.queue] == ["lora_s1"]


def test_the_same_cancel_twice_in_one_tick_stops_the_worker_once(cfg, tmp_path: Path) -> None:
    """Two `perl cancel --only vera_s1` at once: the worker is asked once (one SIGTERM, one kill
    deadline); the second answer says it was already stopping."""
    runner = session(cfg, tmp_path)
    job = runner.backend.running["vera_s1"]
    job.stop_sent = False
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        job.handle = ChildHandle(job.name, proc, job.gpu_label)
        job.pid = proc.pid
        first, second = serve(runner, cancel("vera_s1"), cancel("vera_*"))
        assert outcomes(first) == {"vera_s1": (requests.CANCELLED, "it was running: it saves a checkpoint and exits")}
        assert outcomes(second) == {"vera_s1": (requests.CANCELLED, "it was already stopping")}
        assert job.stop_sent and job.kill_at is not None
        assert proc.wait(timeout=30) == -15  # SIGTERM, once
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_malformed_request_beside_valid_ones_is_answered_and_the_valid_ones_carried_out(cfg, tmp_path: Path) -> None:
    runner = session(cfg, tmp_path)
    garbage, handed, wrong_kind, cancelled = serve(
        runner, b"{not json", add(cfg, "dora_s1"), {"version": 1, "suite": SUITE, "kind": "frobnicate"}, cancel("lora_s2"))
    assert "unreadable" in garbage["error"]
    assert outcomes(handed) == {"dora_s1": (requests.QUEUED, "starts from the beginning")}
    assert wrong_kind["error"]
    assert outcomes(cancelled) == {"lora_s2": (requests.CANCELLED, "it was queued and had not started")}
    assert [j.name for j in runner.backend.queue] == ["lora_s1", "dora_s1"]


def test_cancel_only_of_a_suite_a_slurm_wait_run_holds_does_not_wait_for_an_answer_that_never_comes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`perl run --backend slurm --wait` holds the suite but serves no requests (its tasks are
    Slurm's). Before: `perl cancel --only` scancelled the task, then sent the run a cancel request
    and waited for its reply: 120 s (REPLY_WAIT_S), then went on as if the run had ended."""
    import threading

    from perl_cli.scheduler import cancel as cancellib
    from perl_cli.scheduler.lock import RunLock

    suite_dir = tmp_path / "out" / SUITE
    (suite_dir / "lora_s1").mkdir(parents=True)
    state.write_status(suite_dir / "lora_s1", {"state": "interrupted", "backend": "slurm",
                                               "slurm": {"job_id": "7_0", "args": ["--backend", "slurm"]}})
    lock = RunLock(suite_dir)
    lock.acquire()  # this process plays the Slurm --wait run
    state.atomic_write_json(suite_dir / state.RUN_STATUS_FILE, {"scheduler": {
        "backend": "slurm", "pid": os.getpid(), "host": state.hostname(), "job_ids": ["7_0"]}})
    monkeypatch.setattr(cancellib.slurm, "cancel_suite",
                        lambda suite_dir, names, **kw: {"lora_s1": ["run", "--backend", "slurm"]})  # slurm.rerun_words
    said: list[str] = []
    got: list[int] = []
    worker = threading.Thread(target=lambda: got.append(cancellib.cancel_suite(
        SUITE, output=tmp_path / "out", names=["lora_s1"], out=said.append, err=said.append)), daemon=True)
    try:
        worker.start()
        worker.join(15)
        assert got == [0], f"perl cancel still waiting after 15 s; said {said}"
        assert not requests.pending(suite_dir)  # no request left for a run that never serves one
        assert any("cancelled" in line and "--backend slurm" in line for line in said), said
    finally:
        lock.release()


def test_the_first_stop_request_is_on_disk_before_the_loop_sleeps(cfg, tmp_path: Path) -> None:
    """`perl cancel` reads run_status.json to tell a run that is already stopping (leave it alone)
    from one that is not (SIGTERM it): a second SIGTERM means "kill the workers now". So the
    first Ctrl+C must be recorded at once, not with the next throttled aggregate (up to
    AGGREGATE_EVENT_S later), or a cancel landing in that window kills workers it promised to spare."""
    from perl_cli.scheduler import cancel as cancel_cmd

    runner = session(cfg, tmp_path)
    runner.write_aggregate(force=True)  # a fresh aggregate: the throttle would hold the next one back
    assert not cancel_cmd._stopping(runner.suite_dir, os.getpid())
    runner.stop_requests = 1
    runner.backend._stop_all()
    assert cancel_cmd._stopping(runner.suite_dir, os.getpid())
