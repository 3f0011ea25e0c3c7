"""Controlling a running suite never loses, misreports or misplaces work (issue 22).

Hand-off (a second `perl run`), `perl cancel` and `--notify` against real processes with
the synthetic worker. Workers wait at a barrier (fake_worker's `hold_at`/`until`: a file
the test creates) instead of the test sleeping, so every interleaving here is forced.
The numbers in the test names are the reproductions of the issue.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_scheduler import (
    SUITE,
    env_for,
    launches,
    perl,
    perl_args,
    start_perl,
    tmpfs_at,
    wait_until,
    write_config,
)

from perl_cli import state

BUSY = 20.0  # generous deadline for conditions (the machine is shared)


def suite_dir(tmp: Path) -> Path:
    return tmp / "out" / SUITE


def cancel(tmp: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "perl_cli", "cancel", SUITE, *args, "--output", str(tmp / "out")],
                          env=env, capture_output=True, text=True, timeout=90)


def hold(tmp: Path, **plans: dict) -> str:
    """PERL_FAKE_PLAN where each named experiment holds at its step until tmp/go-<name> exists."""
    return json.dumps({name: {"until": str(tmp / f"go-{name}"), **plan} for name, plan in plans.items()})


def release(tmp: Path, name: str) -> None:
    (tmp / f"go-{name}").touch()


def status_of(tmp: Path, name: str) -> dict:
    return state.read_status(suite_dir(tmp) / name) or {}


def at_step(tmp: Path, name: str, step: int) -> bool:
    s = status_of(tmp, name)
    return s.get("state") == "running" and (s.get("step") or 0) >= step


def scheduler_state(tmp: Path) -> dict:
    data = state.read_json(suite_dir(tmp) / state.RUN_STATUS_FILE) or {}
    return data.get("scheduler") or {}


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


# --- 1. a hand-off is answered, per experiment, and never dropped ------------------------


def test_1a_a_failed_experiment_handed_over_is_queued_again_and_runs(tmp_path: Path) -> None:
    """Before: "handed 1 experiment(s) ..." (exit 0), and the killed experiment never ran again."""
    write_config(tmp_path, steps=6, save_steps=2, methods=("vera", "lora"), seeds=(1,))
    env = env_for(tmp_path, gpus="[]", PERL_FAKE_PLAN=hold(tmp_path, vera_s1={"hold_at": 3}, lora_s1={"hold_at": 2}))
    run = start_perl(tmp_path, "--jobs", "1", env=env)
    wait_until(lambda: at_step(tmp_path, "vera_s1", 3), BUSY, "vera at its barrier")
    os.kill(status_of(tmp_path, "vera_s1")["pid"], signal.SIGKILL)  # kill -9 the vera worker
    wait_until(lambda: status_of(tmp_path, "vera_s1").get("state") == "failed" and at_step(tmp_path, "lora_s1", 2),
               BUSY, "vera recorded failed, lora running")
    release(tmp_path, "vera_s1")  # its next attempt runs through
    second = perl(tmp_path, "--only", "vera_s1", env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "vera_s1: queued (it had failed in this run; resumes from its last checkpoint)" in second.stdout
    assert "handed 1 experiment(s)" in second.stdout
    release(tmp_path, "lora_s1")
    code, out, err = finish(run)
    assert code == 0, out + err
    assert status_of(tmp_path, "vera_s1")["state"] == "completed"
    assert status_of(tmp_path, "vera_s1")["resumed_from"] == 2
    assert launches(tmp_path).count("vera_s1") == 2 and launches(tmp_path).count("lora_s1") == 1


def test_1b_a_hand_off_reaching_a_stopping_run_is_refused_with_the_reason(tmp_path: Path) -> None:
    """Before: "nothing to add" (the recorded queue was stale) or "handed 1" (then dropped), exit 0."""
    write_config(tmp_path, steps=6, methods=("lora", "vera"), seeds=(1,))
    # lora ignores SIGTERM and is never released: the run stays `stopping` for its grace period.
    env = env_for(tmp_path, gpus="[]", PERL_FAKE_PLAN=hold(tmp_path, lora_s1={"hold_at": 2, "ignore_term": True}))
    run = start_perl(tmp_path, "--jobs", "1", "--grace-seconds", "120", env=env)
    wait_until(lambda: at_step(tmp_path, "lora_s1", 2) and scheduler_state(tmp_path).get("queued") == ["vera_s1"],
               BUSY, "lora running, vera queued")
    run.send_signal(signal.SIGTERM)  # stopping: lora ignores SIGTERM, so the run stays in `stopping`
    wait_until(lambda: scheduler_state(tmp_path).get("state") == "stopping", BUSY, "the run stopping")
    assert scheduler_state(tmp_path)["queued"] == []  # the recorded queue is not stale
    second = perl(tmp_path, "--only", "vera_s1", env=env)
    assert second.returncode == 1, second.stdout + second.stderr
    assert "vera_s1: refused (the run is stopping" in second.stdout
    assert "not handed over" in second.stderr
    run.send_signal(signal.SIGTERM)  # a second request kills the worker at once
    code, out, err = finish(run)
    assert code == 130
    assert "vera_s1" not in launches(tmp_path)


def test_1c_a_hand_off_to_a_run_that_ends_first_is_run_by_the_requester(tmp_path: Path) -> None:
    """The run ended (or was ending) without taking the request: it is withdrawn, and the second
    `perl run` takes the lock and runs the work itself; nothing is left behind in the spool."""
    from perl_cli.scheduler import requests

    write_config(tmp_path, steps=3, methods=("lora", "vera"), seeds=(1,))
    env = env_for(tmp_path, gpus="[]")
    from perl_cli.scheduler.lock import RunLock

    suite_dir(tmp_path).mkdir(parents=True)
    held = RunLock(suite_dir(tmp_path))
    held.acquire()  # a run that holds the suite but never answers (e.g. it is writing its summary)
    state.atomic_write_json(suite_dir(tmp_path) / state.RUN_STATUS_FILE, {"scheduler": {
        "backend": "local", "pid": os.getpid(), "host": state.hostname(), "overrides": []}})
    second = start_perl(tmp_path, "--only", "vera_s1", env=env)
    wait_until(lambda: requests.pending(suite_dir(tmp_path)), BUSY, "the request in the spool")
    held.release()  # the run ends without answering
    code, out, err = finish(second)
    assert code == 0, out + err
    assert status_of(tmp_path, "vera_s1")["state"] == "completed"
    assert not list(requests.spool_dir(suite_dir(tmp_path)).iterdir())


# --- 2. the exit code, the summary and --notify cover handed-off experiments -----------


def test_2_a_failed_hand_off_experiment_fails_the_run_and_is_in_the_summary_and_notify(tmp_path: Path) -> None:
    """Before: "completed 1, failed 1; exit code 0." and PERL_EXIT_CODE=0."""
    write_config(tmp_path, steps=6, methods=("lora", "dora"), seeds=(1,))
    plan = json.loads(hold(tmp_path, lora_s1={"hold_at": 2}))
    plan["dora_s1"] = {"fail_at": 2}
    env = env_for(tmp_path, gpus="[]", PERL_FAKE_PLAN=json.dumps(plan))
    got = tmp_path / "notified.txt"
    run = start_perl(tmp_path, "--only", "lora_s1", "--jobs", "2", "--notify", f'{{ cat; echo "code=$PERL_EXIT_CODE"; }} > {got}',
                     env=env)
    wait_until(lambda: at_step(tmp_path, "lora_s1", 2), BUSY, "lora at its barrier")
    second = perl(tmp_path, "--only", "dora_s1", env=env)
    assert second.returncode == 0 and "dora_s1: queued" in second.stdout, second.stdout + second.stderr
    wait_until(lambda: status_of(tmp_path, "dora_s1").get("state") == "failed", BUSY, "dora failed")
    release(tmp_path, "lora_s1")
    code, out, err = finish(run)
    assert code == 1, out + err
    assert "the run's 2 experiments" in out and "completed 1, failed 1; exit code 1." in out
    text = got.read_text()
    assert "dora_s1" in text and "code=1" in text


# --- 3 and 9. cancel by name or glob: queued, running, completed ------------------------


def test_3_cancel_only_stops_a_queued_experiment_that_never_started_and_takes_globs(tmp_path: Path) -> None:
    """Before: "--only vera_s1: no such experiment ..." (exit 2) for a queued experiment, and no globs."""
    write_config(tmp_path, steps=6, methods=("lora", "vera", "dora"), seeds=(1,))
    env = env_for(tmp_path, gpus="[]", PERL_FAKE_PLAN=hold(tmp_path, lora_s1={"hold_at": 2}))
    run = start_perl(tmp_path, "--jobs", "1", env=env)
    wait_until(lambda: at_step(tmp_path, "lora_s1", 2), BUSY, "lora at its barrier")
    result = cancel(tmp_path, "--only", "vera_s1,do*", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "vera_s1: cancelled (it was queued and had not started)" in result.stdout
    assert "dora_s1: cancelled (it was queued and had not started)" in result.stdout
    wait_until(lambda: scheduler_state(tmp_path).get("queued") == [], BUSY, "the queue recorded empty")
    release(tmp_path, "lora_s1")
    code, out, err = finish(run)
    assert code == 1, out + err  # not everything it was asked to run completed
    assert launches(tmp_path) == ["lora_s1"]


def test_9_cancelling_a_completed_experiment_says_so(tmp_path: Path) -> None:
    """Before: "asked perl run ... to stop lora_s1" and "cancelled" for a completed experiment."""
    write_config(tmp_path, steps=3, methods=("lora", "vera"), seeds=(1,))
    env = env_for(tmp_path, gpus="[]", PERL_FAKE_PLAN=hold(tmp_path, vera_s1={"hold_at": 2}))
    run = start_perl(tmp_path, "--jobs", "1", env=env)
    wait_until(lambda: status_of(tmp_path, "lora_s1").get("state") == "completed" and at_step(tmp_path, "vera_s1", 2),
               BUSY, "lora completed, vera at its barrier")
    result = cancel(tmp_path, "--only", "lora_s1", env=env)
    assert result.returncode == 0, result.stderr
    assert "lora_s1: ended (it is completed: nothing to cancel)" in result.stdout
    assert "nothing queued or running to cancel" in result.stdout and "asked perl run" not in result.stdout
    unknown = cancel(tmp_path, "--only", "vera_s1,nosuch*", env=env)  # like the readers' --only: a usage error
    assert unknown.returncode == 2 and "--only nosuch*: no such experiment" in unknown.stderr
    assert "nothing was cancelled" in unknown.stderr and at_step(tmp_path, "vera_s1", 2)
    release(tmp_path, "vera_s1")
    assert finish(run)[0] == 0
    after = cancel(tmp_path, "--only", "lora_*", env=env)  # no run: the files say it
    assert after.returncode == 0 and "lora_s1: completed: nothing to cancel" in after.stdout


# --- 4. workers left by a SIGKILLed scheduler --------------------------------------------


@pytest.mark.parametrize("only", [None, "lo*"])
def test_4_cancel_stops_the_workers_a_killed_scheduler_left(tmp_path: Path, only: str | None) -> None:
    """Before: "nothing queued or running to cancel" (exit 0) while `perl status` showed them running."""
    write_config(tmp_path, steps=6, methods=("lora",), seeds=(1,))
    env = env_for(tmp_path, gpus="[]", PERL_FAKE_PLAN=hold(tmp_path, lora_s1={"hold_at": 2}))
    run = start_perl(tmp_path, env=env)
    wait_until(lambda: at_step(tmp_path, "lora_s1", 2), BUSY, "lora at its barrier")
    run.kill()
    run.communicate(timeout=30)
    pid = status_of(tmp_path, "lora_s1")["pid"]
    assert state.process_alive(pid)
    result = cancel(tmp_path, *(["--only", only] if only else []), env=env)
    assert result.returncode == 0, result.stderr
    assert f"lora_s1: its worker (pid {pid}) was left by a `perl run` that ended" in result.stdout
    assert status_of(tmp_path, "lora_s1")["state"] == "interrupted"
    wait_until(lambda: not state.process_alive(pid), BUSY, "the worker gone")


# --- 5. nothing from a request runs outside the suite ------------------------------------


def _hostile_experiment(tmp: Path, name: str) -> dict:
    from perl_cli import config

    exp = config.expand(config.load(tmp / "experiments.toml"), SUITE, only=["dora_s1"])[0]
    return {**exp.resolved(), "name": name}


@pytest.mark.parametrize("name", ["../escaped", "../other-suite/x", "sub/dir"])
def test_5_a_hand_off_entry_naming_a_path_outside_the_suite_is_refused(tmp_path: Path, name: str) -> None:
    """Before: an `.add` entry named `../escaped` created and ran O/escaped/ outside the suite.

    The hostile request is written by hand in both forms a scheduler may read: the old
    shared `.add` file and a spool request (tmp + rename); neither may run anything, and
    the spool request is answered with the reason."""
    write_config(tmp_path, steps=6, methods=("lora", "dora"), seeds=(1,))
    env = env_for(tmp_path, gpus="[]", PERL_FAKE_PLAN=hold(tmp_path, lora_s1={"hold_at": 2}))
    run = start_perl(tmp_path, "--only", "lora_s1", "--jobs", "2", env=env)  # a free slot: it would start at once
    wait_until(lambda: at_step(tmp_path, "lora_s1", 2), BUSY, "lora at its barrier")
    entry = _hostile_experiment(tmp_path, name)
    state.atomic_write_json(suite_dir(tmp_path) / ".add", [entry])
    spool = suite_dir(tmp_path) / ".requests"
    state.atomic_write_json(spool / "1-hostile.request.json", {
        "version": 1, "kind": "add", "id": "1-hostile", "suite": SUITE, "overrides": [], "experiments": [entry]})
    reply = spool / "1-hostile.reply.json"
    wait_until(lambda: reply.exists() or len(launches(tmp_path)) > 1, BUSY, "an answer, or a launch")
    release(tmp_path, "lora_s1")
    code, out, err = finish(run)
    assert launches(tmp_path) == ["lora_s1"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [SUITE]
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "out" / "escaped").exists()
    assert code == 0, out + err
    answer = json.loads(reply.read_text())
    assert [r["outcome"] for r in answer["results"]] == ["refused"] and answer["results"][0]["code"] == 2
    assert "cannot be an experiment name" in answer["results"][0]["reason"]


def test_5_settings_and_fingerprints_of_a_request_are_checked_like_the_suite_file(tmp_path: Path) -> None:
    from perl_cli.scheduler import requests

    write_config(tmp_path, methods=("lora", "dora"), seeds=(1,))
    good = _hostile_experiment(tmp_path, "dora_s1")
    suite = tmp_path / "out" / SUITE
    assert requests.check_experiment(good, SUITE, suite)[1] is None
    forged = {**good, "fingerprint": "0" * 12}
    assert "fingerprint" in requests.check_experiment(forged, SUITE, suite)[1]
    bad_type = {**good, "training": {**good["training"], "max_steps": "many"}}
    assert "training.max_steps must be a number" in requests.check_experiment(bad_type, SUITE, suite)[1]
    unknown = {**good, "training": {**good["training"], "rm_rf": True}}
    assert "unknown setting training.rm_rf" in requests.check_experiment(unknown, SUITE, suite)[1]
    other = {**good, "suite": "other-suite"}
    assert "belongs to suite 'other-suite'" in requests.check_experiment(other, SUITE, suite)[1]
    suite.mkdir(parents=True)
    (suite / "linked").symlink_to(tmp_path)  # a link planted where the experiment's directory would be
    linked = {**good, "name": "linked"}
    assert "leads outside the suite directory" in requests.check_experiment(linked, SUITE, suite)[1]


# --- 6. races, forced with barriers ---------------------------------------------------------


def _is_request(path: Path) -> bool:
    """A hand-off request file, in the old (one shared `.add`) or the new (spool) form."""
    name = Path(path).name
    return name == ".add" or name.endswith((".request.json", ".taken.json"))


def _options(tmp: Path, only: list[str] | None, env: dict):
    from perl_cli import config, scheduler

    cfg = config.load(tmp / "experiments.toml")
    return scheduler.RunOptions(
        suite=SUITE, experiments=config.expand(cfg, SUITE, only=only or ()), suite_experiments=config.expand(cfg, SUITE),
        output=tmp / "out", config_file=cfg, worker_cmd=(sys.executable, str(Path(__file__).with_name("fake_worker.py"))),
        tty=False, environ=env, gpus=None, jobs=3, grace_seconds=5,
    )


def _in_thread(target) -> tuple[threading.Thread, list]:
    box: list = []
    thread = threading.Thread(target=lambda: box.append(target()), daemon=True)
    thread.start()
    return thread, box


def test_6a_two_simultaneous_hand_offs_both_arrive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: request_add was an unlocked read-modify-write of one file: two requesters that
    read it before either wrote (forced here with a barrier) overwrote each other."""
    from perl_cli.scheduler.session import RunSession

    write_config(tmp_path, steps=6, methods=("lora", "vera", "dora"), seeds=(1,))
    env = env_for(tmp_path, gpus="[]", PERL_FAKE_PLAN=hold(tmp_path, lora_s1={"hold_at": 2}))
    run = start_perl(tmp_path, "--only", "lora_s1", "--jobs", "3", env=env)
    wait_until(lambda: at_step(tmp_path, "lora_s1", 2) and scheduler_state(tmp_path).get("pid") == run.pid,
               BUSY, "lora at its barrier")
    barrier = threading.Barrier(2, timeout=BUSY)
    real_write = state.atomic_write_json

    def write(path, obj):
        if _is_request(path):
            barrier.wait()  # both requesters have read whatever was there; now both write
        return real_write(path, obj)

    monkeypatch.setattr(state, "atomic_write_json", write)
    env.pop("PERL_FAKE_PLAN")
    a, got_a = _in_thread(lambda: RunSession(_options(tmp_path, ["vera_s1"], env)).run())
    b, got_b = _in_thread(lambda: RunSession(_options(tmp_path, ["dora_s1"], env)).run())
    a.join(BUSY * 2)
    b.join(BUSY * 2)
    assert got_a == [0] and got_b == [0]
    release(tmp_path, "lora_s1")
    code, out, err = finish(run)
    assert code == 0, out + err
    assert sorted(launches(tmp_path)) == ["dora_s1", "lora_s1", "vera_s1"]


def test_6b_a_hand_off_written_while_the_run_reads_another_is_not_deleted(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the run read `.add`, then deleted it: a second hand-off written in between was
    deleted too, yet its requester was told it had been picked up. The run (in this process)
    is held right after it read the first request until the second one is written."""
    from perl_cli.scheduler.session import RunSession

    write_config(tmp_path, steps=6, methods=("lora", "vera", "dora"), seeds=(1,))
    env = env_for(tmp_path, gpus="[]", PERL_FAKE_PLAN=hold(tmp_path, lora_s1={"hold_at": 2}))
    first_read, second_written = threading.Event(), threading.Event()
    real_load, real_write = state.load_json, state.atomic_write_json

    def load(path, **kw):
        data = real_load(path, **kw)
        if _is_request(path) and not first_read.is_set():
            first_read.set()
            assert second_written.wait(BUSY), "the second request was never written"
        return data

    def write(path, obj):
        real_write(path, obj)
        if _is_request(path) and first_read.is_set():
            second_written.set()

    monkeypatch.setattr(state, "load_json", load)
    monkeypatch.setattr(state, "atomic_write_json", write)
    runner, got_run = _in_thread(lambda: RunSession(_options(tmp_path, ["lora_s1"], env)).run())
    wait_until(lambda: at_step(tmp_path, "lora_s1", 2) and scheduler_state(tmp_path).get("running") == ["lora_s1"],
               BUSY, "lora at its barrier")
    plain = {k: v for k, v in env.items() if k != "PERL_FAKE_PLAN"}
    a, got_a = _in_thread(lambda: RunSession(_options(tmp_path, ["vera_s1"], plain)).run())
    assert first_read.wait(BUSY)
    b, got_b = _in_thread(lambda: RunSession(_options(tmp_path, ["dora_s1"], plain)).run())
    a.join(BUSY * 2)
    b.join(BUSY * 2)
    assert got_a == [0] and got_b == [0]
    release(tmp_path, "lora_s1")
    runner.join(BUSY * 3)
    assert got_run == [0]
    assert sorted(launches(tmp_path)) == ["dora_s1", "lora_s1", "vera_s1"]


# --- 7. --notify ---------------------------------------------------------------------------


def test_7a_notify_waits_for_the_notifier_not_its_background_children(tmp_path: Path) -> None:
    """Before: `cat >n; sleep 1000 & exit 0` held the run for 60 s, then was reported stopped."""
    from perl_cli import run_summary

    pidfile = tmp_path / "child.pid"
    command = f"cat > {tmp_path / 'n'}; sleep 1000 & echo $! > {pidfile}; exit 0"
    started = time.monotonic()
    try:
        problem = run_summary.notify(command, run_summary.Summary(None, "the summary\n"), exit_code=0, suite=SUITE,
                                     output=tmp_path)
        took = time.monotonic() - started
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert problem is None
    assert took < 15, f"the run was held {took:.1f}s by the notifier's background child"
    assert (tmp_path / "n").read_text() == "the summary\n"


def test_7b_notify_keeps_a_bounded_tail_of_the_notifier_output(tmp_path: Path) -> None:
    """Before: every byte was kept in memory (`head -c 400M /dev/zero` took the run to 1.26 GB)."""
    code = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from perl_cli import run_summary\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "problem = run_summary.notify('head -c 150M /dev/zero >&2; head -c 150M /dev/zero; echo >&2; echo last words >&2; exit 4',"
        " run_summary.Summary(None, 'x'), exit_code=0, suite='t', output=Path('.'))\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
        "print(problem)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    grew_kb, problem = done.stdout.splitlines()[:2]
    assert int(grew_kb) < 40 * 1024, f"the notifier's output grew the run by {int(grew_kb) // 1024} MB"
    assert problem.endswith("exited with 4: last words.")


# --- 8. a clear error, exit 2, never a traceback -------------------------------------------


def test_8_an_output_that_cannot_be_created_is_a_usage_error(tmp_path: Path) -> None:
    write_config(tmp_path, steps=2, methods=("lora",), seeds=(1,))
    (tmp_path / "afile").write_text("")
    env = env_for(tmp_path, gpus="[]")
    args = perl_args(tmp_path)
    args[args.index("--output") + 1] = str(tmp_path / "afile" / "out")
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "cannot create the suite's output directory" in done.stderr


@pytest.mark.parametrize("where", ["run_status.json", ".requests"])
def test_8_a_directory_or_file_where_perl_keeps_its_own_is_a_clear_error(tmp_path: Path, where: str) -> None:
    """Before: an IsADirectoryError traceback for run_status.json being a directory."""
    write_config(tmp_path, steps=2, methods=("lora",), seeds=(1,))
    suite = suite_dir(tmp_path)
    suite.mkdir(parents=True)
    if where == ".requests":
        (suite / where).write_text("not a directory")
    else:
        (suite / where).mkdir()
    done = perl(tmp_path, env=env_for(tmp_path, gpus="[]"))
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2 and f"{suite / where} is not a" in done.stderr


def test_8_a_hand_off_with_a_directory_named_add_in_the_suite_works(tmp_path: Path) -> None:
    """Before: the second `perl run` died with IsADirectoryError writing `.add`."""
    write_config(tmp_path, steps=6, methods=("lora", "dora"), seeds=(1,))
    env = env_for(tmp_path, gpus="[]", PERL_FAKE_PLAN=hold(tmp_path, lora_s1={"hold_at": 2}))
    run = start_perl(tmp_path, "--only", "lora_s1", "--jobs", "2", env=env)
    wait_until(lambda: at_step(tmp_path, "lora_s1", 2) and scheduler_state(tmp_path).get("pid") == run.pid,
               BUSY, "lora at its barrier")
    (suite_dir(tmp_path) / ".add").mkdir()
    second = perl(tmp_path, "--only", "dora_s1", env=env)
    assert "Traceback" not in second.stderr, second.stderr
    assert second.returncode == 0 and "dora_s1: queued" in second.stdout
    release(tmp_path, "lora_s1")
    code, out, err = finish(run)
    assert code == 0, out + err
    assert sorted(launches(tmp_path)) == ["dora_s1", "lora_s1"]


@pytest.fixture
def read_only_output(tmp_path: Path):
    """A tmpfs with a finished suite on it, remounted read-only (root only)."""
    yield from tmpfs_at(tmp_path / "out", "4m", "READ-ONLY TEST NOT RUN")


def test_8_run_and_report_on_a_read_only_output_are_usage_errors(tmp_path: Path, read_only_output: Path) -> None:
    write_config(tmp_path, steps=2, methods=("lora", "dora"), seeds=(1,))
    env = env_for(tmp_path, gpus="[]")
    assert perl(tmp_path, "--only", "lora_s1", env=env).returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_output)], check=True)
    done = perl(tmp_path, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "cannot write in" in done.stderr or "Read-only file system" in done.stderr
    report = subprocess.run([sys.executable, "-m", "perl_cli", "report", SUITE, "--config", str(tmp_path / "experiments.toml"),
                             "--output", str(read_only_output)], env=env, capture_output=True, text=True, timeout=120)
    assert report.returncode == 2 and "Traceback" not in report.stderr, report.stderr
    assert "Read-only file system" in report.stderr


def test_a_new_run_sweeps_what_nobody_waits_for_and_keeps_fresh_requests(tmp_path: Path) -> None:
    from perl_cli.scheduler import requests

    spool = requests.spool_dir(tmp_path)
    spool.mkdir()
    for name in ("1-old.request.json", "2-old.reply.json", "3-any.taken.json", "4-new.request.json", "5-new.reply.json"):
        (spool / name).write_text("{}")
    old = time.time() - requests.REPLY_WAIT_S - requests.TAKEN_REPLY_WAIT_S - 10
    for name in ("1-old.request.json", "2-old.reply.json"):
        os.utime(spool / name, (old, old))
    assert sorted(requests.sweep(tmp_path)) == ["1-old.request.json", "2-old.reply.json", "3-any.taken.json"]
    assert sorted(p.name for p in spool.iterdir()) == ["4-new.request.json", "5-new.reply.json"]


def test_1d_perl_cancel_of_a_run_already_stopping_does_not_kill_its_workers(tmp_path: Path) -> None:
    """After Ctrl+C the run gives its workers the grace period to save a checkpoint. Before:
    `perl cancel SUITE` then sent the run a second SIGTERM, which counts as "Ctrl+C again: kill
    them now": the worker saving its checkpoint was SIGKILLed, while cancel printed "its workers
    save a checkpoint and exit". Now cancel sees the run is stopping and leaves it to finish."""
    write_config(tmp_path, steps=6, methods=("lora",), seeds=(1,))
    env = env_for(tmp_path, gpus="[]", PERL_FAKE_PLAN=hold(tmp_path, lora_s1={"hold_at": 2, "ignore_term": True}))
    run = start_perl(tmp_path, "--grace-seconds", "120", env=env)
    wait_until(lambda: at_step(tmp_path, "lora_s1", 2), BUSY, "lora at its barrier")
    pid = status_of(tmp_path, "lora_s1")["pid"]
    run.send_signal(signal.SIGINT)  # Ctrl+C: lora ignores SIGTERM, so the run stays `stopping`
    wait_until(lambda: scheduler_state(tmp_path).get("state") == "stopping", BUSY, "the run stopping")
    result = cancel(tmp_path, "--wait-seconds", "0.5", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"perl run (pid {run.pid}) is already stopping" in result.stdout, result.stdout
    assert state.process_alive(pid) and run.poll() is None  # not killed: still within its grace period
    run.send_signal(signal.SIGINT)  # Ctrl+C again: kill now (the documented way)
    code, out, err = finish(run)
    assert code == 130, out + err
    wait_until(lambda: not state.process_alive(pid), BUSY, "the worker gone")
