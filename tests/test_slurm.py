"""`perl run --backend slurm` and `perl cancel` against a real one-node Slurm (no mocks).

The cluster is scripts/local-slurm.sh's: slurmctld, slurmd, slurmdbd + MariaDB and munge
on 127.0.0.1, 2 CPUs and 4 fake GPUs as GRES. The session fixture starts it when it is
not running (and stops it afterwards); .ci/run starts and stops it around pytest. Most
tests use the synthetic worker (tests/fake_worker.py) so they take seconds; the real
worker runs once (marked slow). Tests that need the cluster are marked `slurm` and are
skipped, loudly, only where Slurm is not installed (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SLURM_DIR
from test_scheduler import SUITE, env_for, launches, perl, perl_args, statuses, timings, wait_until, write_config
from tiny_suite import TINY_SUITE

from perl_cli import state

HERE = Path(__file__).parent
SCRIPT = HERE.parent / "scripts" / "local-slurm.sh"
slurm = pytest.mark.slurm


@pytest.fixture(scope="session")
def slurm_cluster():
    """The local Slurm cluster, started for this session unless it already runs."""
    up = subprocess.run([str(SCRIPT), "status"], capture_output=True, timeout=60).returncode == 0
    if not up:
        started = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, f"scripts/local-slurm.sh start failed:\n{started.stderr}"
    yield
    if not up:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=120)


@pytest.fixture
def cluster(slurm_cluster, tmp_path: Path):
    """One test's use of the cluster; whatever it left in the queue is cancelled afterwards."""
    yield
    subprocess.run(["scancel", "--quiet", "--name", f"perl-{SUITE}"], capture_output=True, timeout=30)


def squeue_ids() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "--name", f"perl-{SUITE}"], capture_output=True,
                         text=True, timeout=30)
    return out.stdout.split()


def task_of(tmp: Path, name: str) -> str:
    return state.read_status(tmp / "out" / SUITE / name)["slurm"]["job_id"]


def perl_cmd(tmp: Path, *args: str, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    """A read-side or cancel command (the real CLI; no worker involved)."""
    return subprocess.run([sys.executable, "-m", "perl_cli", *args, "--output", str(tmp / "out")],
                          env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp)


def tree(root: Path) -> set[str]:
    """Relative paths of an experiment directory's files (checkpoints by name)."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@slurm
def test_array_completes_with_the_files_of_a_local_run_and_gres_gpus(tmp_path: Path, cluster) -> None:
    write_config(tmp_path, steps=10, save_steps=5, methods=("lora", "dora", "vera"), seeds=(1,))
    env = env_for(tmp_path, gpus="[]", step_s=0.05)
    t0 = time.monotonic()
    result = perl(tmp_path, "--backend", "slurm", "--wait", "--cpus-per-job", "1", env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "submitted 3 experiment(s) as Slurm job array" in result.stdout
    print(f"submit -> 3 tasks completed: {time.monotonic() - t0:.1f}s")
    final = statuses(tmp_path)
    assert {s["state"] for s in final.values()} == {"completed"} and len(final) == 3
    rows = timings(tmp_path)
    # CUDA_VISIBLE_DEVICES comes from Slurm's GRES: a fake GPU index per task, never shared at once.
    assert all(r["gpu"] in {"0", "1", "2", "3"} and r["perl_gpu"] == r["gpu"] for r in rows)
    for a in rows:
        for b in rows:
            if a is not b and a["start"] < b["end"] and b["start"] < a["end"]:
                assert a["gpu"] != b["gpu"], rows
    assert all(isinstance(s["gpu"], int) for s in final.values())
    assert all(s["slurm"]["job_id"].startswith(s["slurm"]["array_job_id"] + "_") for s in final.values())

    # The same files as a local run of the same suite.
    local = tmp_path / "local"
    local.mkdir()
    write_config(local, steps=10, save_steps=5, methods=("lora", "dora", "vera"), seeds=(1,))
    assert perl(local, env=env_for(local, gpus="[]")).returncode == 0
    for name in final:
        assert tree(tmp_path / "out" / SUITE / name) == tree(local / "out" / SUITE / name)
    # Readers work unchanged.
    shown = json.loads(perl_cmd(tmp_path, "status", SUITE, "--json", env=env).stdout)
    assert shown["counts"]["completed"] == 3

    # --gpus-per-job 2: two GRES GPUs per task; 0: none (the CPU).
    result = perl(tmp_path, "--backend", "slurm", "--wait", "--fresh", "--only", "lora_s1", "--gpus-per-job", "2",
                  env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(timings(tmp_path)[-1]["gpu"].split(",")) == 2
    result = perl(tmp_path, "--backend", "slurm", "--wait", "--fresh", "--only", "lora_s1", "--gpus-per-job", "0",
                  env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert timings(tmp_path)[-1]["gpu"] == "" and timings(tmp_path)[-1]["perl_gpu"] == "cpu"


@slurm
def test_scancel_of_a_running_task_then_perl_run_resumes_from_its_checkpoint(tmp_path: Path, cluster) -> None:
    write_config(tmp_path, steps=80, save_steps=1000, methods=("lora",), seeds=(1,))
    env = env_for(tmp_path, gpus="[]", step_s=0.1)
    result = perl(tmp_path, "--backend", "slurm", env=env)
    assert result.returncode == 0, result.stderr
    assert "perl status" in result.stdout and "perl cancel" in result.stdout  # how to watch and stop
    exp = tmp_path / "out" / SUITE / "lora_s1"
    wait_until(lambda: ((state.read_status(exp) or {}).get("step") or 0) >= 5, timeout=60, what="task stepping")
    subprocess.run(["scancel", task_of(tmp_path, "lora_s1")], check=True, timeout=30)
    wait_until(lambda: (state.read_status(exp) or {}).get("state") == "interrupted", timeout=60, what="interrupted")
    stopped = state.read_status(exp)
    assert stopped["exit_code"] == 143  # the worker got SIGTERM and saved a checkpoint
    assert state.last_checkpoint(exp).name == f"checkpoint-{stopped['step']}"
    # The worker records `interrupted` before its Slurm task has finished exiting; while Slurm
    # still has the task, a new `perl run` watches it instead of submitting a second one (issue 24).
    from perl_cli.scheduler import slurm_cli

    task = task_of(tmp_path, "lora_s1")
    wait_until(lambda: (slurm_cli.task_states([task]) or {}).get(task) not in slurm_cli.ACTIVE_STATES,
               timeout=60, what="Slurm to let the cancelled task go")

    result = perl(tmp_path, "--backend", "slurm", "--wait", env={**env, "PERL_FAKE_STEP_SECONDS": "0.01"}, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    final = state.read_status(exp)
    assert final["state"] == "completed" and final["resumed_from"] == stopped["step"] and final["attempt"] == 2
    assert launches(tmp_path) == ["lora_s1", "lora_s1"]


@slurm
def test_time_limit_requeues_from_the_checkpoint_and_a_spent_budget_fails_with_cause_time_limit(
    tmp_path: Path, cluster,
) -> None:
    # Attempt 1 is slow (2 s a step): it outlives --time 2 (two minutes); attempt 2 is fast.
    # Not --time 1: Slurm may send the warning up to 60 s early (sbatch --signal), i.e. with a
    # 30 s warning at the very start of a one-minute attempt, the fast one included (seen in CI).
    write_config(tmp_path, steps=60, save_steps=2, methods=("lora", "dora"), seeds=(1,))
    plan = {"lora_s1": {"first_attempt_step_seconds": 2}, "dora_s1": {"first_attempt_step_seconds": 2}}
    env = env_for(tmp_path, gpus="[]", step_s=0.02, PERL_FAKE_PLAN=json.dumps(plan))
    # Submitted separately, so that they run side by side: one requeue allowed, then none.
    assert perl(tmp_path, "--backend", "slurm", "--time", "2", "--retries", "1", "--only", "lora_s1",
                env=env).returncode == 0
    t0 = time.monotonic()
    result = perl(tmp_path, "--backend", "slurm", "--time", "2", "--retries", "0", "--only", "dora_s1", "--wait",
                  env=env, timeout=240)
    assert result.returncode == 1, result.stdout + result.stderr
    spent = statuses(tmp_path)["dora_s1"]
    assert spent["state"] == "failed" and spent["cause"] == "time_limit", spent
    diagnosis = json.loads(perl_cmd(tmp_path, "diagnose", SUITE, "--json", env=env).stdout)
    assert {e["name"]: e["cause"] for e in diagnosis["experiments"]}["dora_s1"] == "time_limit"

    exp = tmp_path / "out" / SUITE / "lora_s1"
    wait_until(lambda: (state.read_status(exp) or {}).get("state") == "completed", timeout=240, what="requeued task")
    print(f"time limit -> requeue -> completed: {time.monotonic() - t0:.1f}s")
    final = state.read_status(exp)
    assert [r["cause"] for r in final["requeues"]] == ["time_limit"]
    assert final["attempt"] == 2 and final["resumed_from"] == final["requeues"][0]["step"]
    assert "requeued" in (exp / state.LOG_FILE).read_text()


def test_a_time_limit_too_short_for_the_warning_is_pointed_out() -> None:
    """Slurm may warn up to 60 s before `limit - delay`: a limit that short can warn at once."""
    from perl_cli.scheduler.slurm import SIGNAL_EARLY_S, early_warning_note, signal_delay_s

    assert SIGNAL_EARLY_S == 60
    note = early_warning_note(60)
    assert note and "as soon as a task starts" in note and "--time 00:02:30" in note
    assert early_warning_note(120) is None and early_warning_note(4 * 3600) is None
    for limit in (120, 600, 3600, 8 * 3600):  # every limit without a note leaves the task time to run
        assert limit - signal_delay_s(limit) - SIGNAL_EARLY_S > 0


@slurm
def test_status_shows_queued_tasks_while_the_node_is_busy_and_perl_cancel_cancels_everything(
    tmp_path: Path, cluster,
) -> None:
    # Each task asks for every CPU of the node: one runs, three wait in the queue.
    cpus = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, timeout=30).stdout.split()[0]
    write_config(tmp_path, steps=2000, save_steps=5000, methods=("lora", "dora"), seeds=(1, 2))
    env = env_for(tmp_path, gpus="[]", step_s=0.05)
    assert perl(tmp_path, "--backend", "slurm", "--cpus-per-job", cpus, env=env).returncode == 0
    wait_until(lambda: sum(s.get("state") == "running" for s in statuses(tmp_path).values()) == 1,
               timeout=60, what="one running task")
    shown = json.loads(perl_cmd(tmp_path, "status", SUITE, "--json", env=env).stdout)
    assert shown["counts"]["running"] == 1 and shown["counts"]["queued"] == 3, shown["counts"]
    queued = [e["name"] for e in shown["experiments"] if e["state"] == "queued"]
    assert len(queued) == 3
    # Each experiment's Slurm task is named in --json and in the table.
    jobs = {e["name"]: e["slurm_job_id"] for e in shown["experiments"]}
    assert all(jobs[name] == task_of(tmp_path, name) for name in jobs), jobs
    table = perl_cmd(tmp_path, "status", SUITE, "--verbose", env={**env, "COLUMNS": "200"}).stdout
    assert f"(slurm {jobs[queued[0]]})" in table, table
    # A queued task cancelled behind PeRL's back: its file still says queued, status asks Slurm.
    subprocess.run(["scancel", task_of(tmp_path, queued[0])], check=True, timeout=30)
    wait_until(lambda: task_of(tmp_path, queued[0]) not in squeue_ids(), what="the task gone from the queue")
    assert statuses(tmp_path)[queued[0]]["state"] == "queued"
    shown = {e["name"]: e["state"] for e in json.loads(perl_cmd(tmp_path, "status", SUITE, "--json", env=env).stdout)["experiments"]}
    assert shown[queued[0]] == "interrupted" and shown[queued[1]] == "queued", shown
    # Submitting again does not submit twice (and resubmits the one cancelled behind its back).
    again = perl(tmp_path, "--backend", "slurm", "--cpus-per-job", cpus, env=env)
    assert again.returncode == 0 and "3 already queued or running in Slurm" in again.stdout, again.stdout
    assert "submitted 1 experiment(s)" in again.stdout

    result = perl_cmd(tmp_path, "cancel", SUITE, env=env)
    assert result.returncode == 0, result.stderr
    assert not squeue_ids() or all(
        s in ("CANCELLED", "COMPLETED") for s in _slurm_states(squeue_ids())
    )
    final = statuses(tmp_path)
    assert {s["state"] for s in final.values()} == {"interrupted"}, final
    shown = json.loads(perl_cmd(tmp_path, "status", SUITE, "--json", env=env).stdout)
    assert shown["counts"]["interrupted"] == 4


def _slurm_states(ids: list[str]) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%T", "-j", ",".join({i.split('_')[0] for i in ids})],
                         capture_output=True, text=True, timeout=30)
    return out.stdout.split()


@slurm
def test_clear_errors_before_anything_is_submitted(tmp_path: Path, cluster) -> None:
    write_config(tmp_path, methods=("lora",), seeds=(1,))
    env = env_for(tmp_path, gpus="[]")
    cases = [
        (("--partition", "nosuch"), "--partition nosuch: this cluster has no such partition; it has debug"),
        (("--time", "1:99:00"), "--time 1:99:00: not a Slurm time limit"),
        (("--mem", "lots"), "--mem lots: expected a size"),
        (("--slurm-arg", "qos"), "--slurm-arg qos: expected KEY=VALUE"),
        (("--slurm-arg", "array=0-3"), "PeRL sets --array itself"),
        # Slurm itself refuses: its own message is shown.
        (("--mem", "999999G"), "Slurm refused the submission: sbatch: error:"),
    ]
    for args, message in cases:
        result = perl(tmp_path, "--backend", "slurm", *args, env=env)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert not launches(tmp_path) and not squeue_ids()
    assert not statuses(tmp_path)  # a refused submission leaves no `queued` behind
    # ... nor submitit's pickles and sbatch script of the submission that does not exist (issue 24).
    left = tmp_path / "out" / SUITE / ".slurm"
    assert not left.exists() or not any(left.iterdir()), sorted(p.name for p in left.iterdir())


def test_no_sbatch_on_path_is_a_clear_error(tmp_path: Path) -> None:
    write_config(tmp_path, methods=("lora",), seeds=(1,))
    env = {**env_for(tmp_path, gpus="[]"), "PATH": str(Path(sys.executable).parent)}
    result = perl(tmp_path, "--backend", "slurm", env=env)
    assert result.returncode == 2
    assert "`sbatch` is not on PATH" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / SUITE / "lora_s1").exists()


REAL_CONFIG = TINY_SUITE + """[suites.{suite}.base.wandb]
use_wandb = false
[suites.{suite}.matrix]
method = ["lora", "dora"]
seed = [1]
"""


@slurm
@pytest.mark.slow
def test_real_worker_suite_on_slurm(tmp_path: Path, cluster) -> None:
    (tmp_path / "experiments.toml").write_text(REAL_CONFIG.format(suite=SUITE))
    env = {**os.environ, "PERL_CACHE_DIR": os.environ.get("PERL_CACHE_DIR", str(tmp_path / "cache"))}
    t0 = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "perl_cli", "run", SUITE, "--backend", "slurm", "--wait",
                             "--cpus-per-job", "1", "--output", str(tmp_path / "out")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"real worker, 2 experiments on Slurm: {time.monotonic() - t0:.1f}s")
    for name in ("lora_s1", "dora_s1"):
        exp = tmp_path / "out" / SUITE / name
        status = state.read_status(exp)
        assert status["state"] == "completed" and status["step"] == 3 and status["slurm"]["job_id"]
        assert (exp / "adapter_model.safetensors").exists() and (exp / state.EVAL_FILE).exists()
    report = subprocess.run([sys.executable, "-m", "perl_cli", "report", SUITE, "--stdout", "--output",
                             str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert report.returncode == 0 and "lora_s1" in report.stdout


def test_dry_run_describes_the_array_and_asks_nothing_of_slurm(tmp_path: Path) -> None:
    write_config(tmp_path, methods=("lora", "dora"), seeds=(1,))
    env = {**env_for(tmp_path, gpus="[]"), "PATH": str(Path(sys.executable).parent)}  # no Slurm client at all
    result = perl(tmp_path, "--backend", "slurm", "--dry-run", "--time", "2:00:00", "--gpus-per-job", "2",
                  "--slurm-arg", "qos=high", env=env)
    assert result.returncode == 0, result.stderr
    assert "sbatch: time=2:00:00, gres=gpu:2, qos=high" in result.stdout
    assert "dry run: 2 to submit as one job array" in result.stdout
    assert not (tmp_path / "out").exists()


def test_refreshing_readers_ask_slurm_at_most_every_read_reuse_s(monkeypatch) -> None:
    """`perl watch` refreshes every 2 s: squeue/sacct are asked once per READ_REUSE_S for the
    same tasks, and an unreachable Slurm (READ_TIMEOUT_S each time) is not retried every frame."""
    from perl_cli.scheduler import slurm as slurmlib

    clock = [1000.0]
    asked: list[frozenset] = []
    answers = {"1_0": "CANCELLED", "1_1": "RUNNING"}

    def task_states(ids, *, timeout):
        asked.append(frozenset(ids))
        if answers is None:
            raise slurmlib.SlurmError("slurm_load_jobs error: Unable to contact slurm controller")
        return {i: answers[i] for i in ids}

    monkeypatch.setattr(slurmlib.slurm_cli, "task_states", task_states)
    monkeypatch.setattr(slurmlib.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(slurmlib, "_read_cache", {}, raising=False)
    statuses = {"a": {"state": "queued", "slurm": {"job_id": "1_0"}},
                "b": {"state": "running", "slurm": {"job_id": "1_1"}}}
    for _ in range(5):  # five refreshes, 2 s apart
        assert {n: f["state"] for n, f in slurmlib.seen_by_slurm(statuses).items()} == {"a": state.INTERRUPTED}
        clock[0] += 2
    assert len(asked) == 1
    clock[0] += slurmlib.READ_REUSE_S
    answers = None  # now unreachable: asked once more, then not again within READ_REUSE_S
    assert slurmlib.seen_by_slurm(statuses) == {} and slurmlib.seen_by_slurm(statuses) == {}
    assert len(asked) == 2


# --- issue 24: Slurm's own requeues, cancel, exit status, a paused controller ------------------


def slurm_state(task: str) -> str:
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "State", "-j", task], capture_output=True, text=True,
                         timeout=30).stdout.split()
    return out[0] if out else ""


def squeue_state(task: str) -> str:
    out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%T", "-j", task], capture_output=True, text=True,
                         timeout=30).stdout.split()
    return out[0] if out else ""


@slurm
def test_a_task_slurm_requeues_stays_queued_and_is_never_submitted_twice(tmp_path: Path, cluster) -> None:
    """Reproduction 1: `scontrol requeuehold` (a requeue waiting in a busy queue) while the worker
    trains. Before: `interrupted`, `requeues: []`, and the next `perl run` submitted the experiment
    again: two workers trained one directory."""
    write_config(tmp_path, steps=80, save_steps=2, methods=("lora",), seeds=(1,))
    env = env_for(tmp_path, gpus="[]", step_s=0.05)
    first = perl(tmp_path, "--backend", "slurm", "--time", "10", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    task = task_of(tmp_path, "lora_s1")
    exp = tmp_path / "out" / SUITE / "lora_s1"
    wait_until(lambda: ((state.read_status(exp) or {}).get("step") or 0) >= 4, timeout=60, what="task stepping")

    subprocess.run(["scontrol", "requeuehold", task], check=True, timeout=30)
    wait_until(lambda: squeue_state(task) == "PENDING", timeout=30, what="the task pending again")
    wait_until(lambda: (state.read_status(exp) or {}).get("state") != "running", timeout=30, what="the worker stopped")
    # Never submitted a second time while Slurm holds the task.
    again = perl(tmp_path, "--backend", "slurm", "--time", "10", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 already queued or running in Slurm" in again.stdout and "submitted" not in again.stdout, again.stdout
    held = state.read_status(exp)
    assert held["state"] == "queued", held
    assert held["requeues"][-1]["cause"] == "requeued" and "held" in held["requeues"][-1]["reason"], held["requeues"]
    shown = json.loads(perl_cmd(tmp_path, "status", SUITE, "--json", env=env).stdout)
    assert shown["counts"].get("queued") == 1, shown["counts"]
    # The local backend refuses it, and points to perl cancel (--fresh is refused the same way).
    local = perl(tmp_path, "--fresh", env=env)
    assert local.returncode == 2 and "perl cancel t --only lora_s1" in local.stderr, local.stderr
    assert "--fresh` (the old" not in local.stderr

    # Released, it runs again from its checkpoint; --wait follows it to the end.
    subprocess.run(["scontrol", "release", task], check=True, timeout=30)
    done = perl(tmp_path, "--backend", "slurm", "--time", "10", "--wait", env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    final = state.read_status(exp)
    assert final["state"] == "completed" and final["attempt"] == 2, final
    assert final["resumed_from"] == held["step"]  # the checkpoint saved on SIGTERM
    assert launches(tmp_path) == ["lora_s1", "lora_s1"]  # one worker per attempt, never two at once
    rows = timings(tmp_path)
    assert rows[0]["end"] <= rows[1]["start"], rows
    # The time shown counts both attempts (it counted the last one only).
    ran = sum(r["end"] - r["start"] for r in rows)
    duration = {e["name"]: e for e in json.loads(perl_cmd(tmp_path, "status", SUITE, "--json", env=env).stdout)
                ["experiments"]}["lora_s1"]["duration_s"]
    assert duration >= ran, (duration, rows)
    assert "requeued 1x" in done.stdout, done.stdout


@slurm
def test_perl_cancel_cancels_a_task_slurm_holds_and_diagnose_knows_it_never_started(tmp_path: Path, cluster) -> None:
    """Reproductions 2 and 6: a task Slurm requeued and holds. Before: `perl cancel` said "nothing
    queued or running to cancel" and the task ran to its end when released; a pending task
    cancelled by scancel was diagnosed "unknown cause ... read the traceback"."""
    write_config(tmp_path, steps=400, save_steps=2, methods=("lora", "dora"), seeds=(1,))
    env = env_for(tmp_path, gpus="[]", step_s=0.05)
    first = perl(tmp_path, "--backend", "slurm", "--time", "10", "--only", "lora_s1", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    task = task_of(tmp_path, "lora_s1")
    exp = tmp_path / "out" / SUITE / "lora_s1"
    wait_until(lambda: ((state.read_status(exp) or {}).get("step") or 0) >= 2, timeout=60, what="task stepping")
    subprocess.run(["scontrol", "requeuehold", task], check=True, timeout=30)
    wait_until(lambda: squeue_state(task) == "PENDING", timeout=30, what="the task pending again")
    wait_until(lambda: (state.read_status(exp) or {}).get("state") != "running", timeout=30, what="the worker stopped")

    cancel = perl_cmd(tmp_path, "cancel", SUITE, env=env)
    assert cancel.returncode == 0, cancel.stderr
    assert "scancel: 1 task(s)" in cancel.stdout and "nothing queued or running" not in cancel.stdout, cancel.stdout
    assert "perl run t --backend slurm --time 10" in cancel.stdout, cancel.stdout  # the backend and options kept
    wait_until(lambda: "CANCELLED" in (squeue_state(task), slurm_state(task)), timeout=30, what="cancelled in Slurm")
    final = state.read_status(exp)
    assert final["state"] == "interrupted" and final["cause"] == "cancelled_pending", final
    diagnosis = {e["name"]: e for e in json.loads(perl_cmd(tmp_path, "diagnose", SUITE, "--json", env=env).stdout)
                 ["experiments"]}["lora_s1"]
    assert diagnosis["cause"] == "cancelled_pending", diagnosis
    assert diagnosis["fix"]["commands"][0].endswith("--backend slurm --time 10"), diagnosis["fix"]
    assert launches(tmp_path) == ["lora_s1"]
    # One experiment is one Slurm job, not "job array N (tasks 0-0)"; the next steps keep the options.
    assert f"as Slurm job {task}," in first.stdout and "(tasks 0-0)" not in first.stdout, first.stdout
    assert "perl run t --backend slurm --time 10" in first.stdout, first.stdout


@slurm
def test_a_failed_experiment_is_failed_in_slurm_and_diagnose_gives_slurm_advice(tmp_path: Path, cluster) -> None:
    """Reproductions 3 and 5: a worker killed with SIGKILL was `failed` in status.json but COMPLETED 0:0
    in sacct; diagnose suggested `dmesg` and a command without --backend slurm."""
    write_config(tmp_path, steps=20, save_steps=2, methods=("lora", "dora"), seeds=(1,))
    plan = {"lora_s1": {"kill_self_at": 3}, "dora_s1": {"fail_at": 3}}
    env = env_for(tmp_path, gpus="[]", step_s=0.02, PERL_FAKE_PLAN=json.dumps(plan))
    result = perl(tmp_path, "--backend", "slurm", "--wait", "--time", "10", "--mem", "1G", env=env, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    final = statuses(tmp_path)
    assert final["lora_s1"]["state"] == "failed" and final["lora_s1"]["exit_code"] == 137
    assert final["dora_s1"]["state"] == "failed"
    for name in final:
        wait_until(lambda name=name: slurm_state(task_of(tmp_path, name)) not in ("", "RUNNING", "COMPLETING"),
                   timeout=30, what="sacct's final state")
        assert slurm_state(task_of(tmp_path, name)) == "FAILED", name

    diagnosis = json.loads(perl_cmd(tmp_path, "diagnose", SUITE, "--json", env=env).stdout)
    killed = {e["name"]: e for e in diagnosis["experiments"]}["lora_s1"]
    assert killed["cause"] == "host_oom"
    assert "sacct -j" in killed["fix"]["text"] and "dmesg" not in killed["fix"]["text"], killed["fix"]
    (command,) = killed["fix"]["commands"]
    assert "--backend slurm --time 10 --mem 2G" in command, command
    failed = {e["name"]: e for e in diagnosis["experiments"]}["dora_s1"]
    assert all("--backend slurm --time 10 --mem 1G" in c for c in failed["fix"]["commands"] if c.startswith("perl run"))


@slurm
def test_a_submission_that_times_out_is_confirmed_with_slurm_not_reported_refused(tmp_path: Path, cluster) -> None:
    """Reproduction 4: slurmctld paused (SIGSTOP) while sbatch waits. Before: "Slurm rejected the
    submission: ... Socket timed out", exit 2 and the directories removed, though Slurm then
    accepted the array (whose tasks failed for want of their directories)."""
    import signal as sig

    write_config(tmp_path, steps=5, save_steps=5, methods=("lora", "dora"), seeds=(1,))
    env = env_for(tmp_path, gpus="[]", step_s=0.02)
    # The controller of the cluster these tests use (PERL_SLURM_DIR): never another one on this machine.
    ctld = int((SLURM_DIR / "run" / "slurmctld.pid").read_text())
    out_path = tmp_path / "run.out"
    os.kill(ctld, sig.SIGSTOP)
    try:
        with open(out_path, "w") as out:
            proc = subprocess.Popen(perl_args(tmp_path, "--backend", "slurm", "--time", "10"), env=env, stdout=out,
                                    stderr=subprocess.STDOUT, text=True)
        # sbatch gives up after Slurm's MessageTimeout (10 s); then PeRL asks whether Slurm has the array.
        wait_until(lambda: "asking Slurm whether it accepted" in out_path.read_text(), timeout=60,
                   what="perl run asking Slurm")
    finally:
        os.kill(ctld, sig.SIGCONT)
    assert proc.wait(timeout=120) == 0, out_path.read_text()
    text = out_path.read_text()
    assert "Slurm did accept it" in text and "rejected" not in text and "refused" not in text, text
    final = statuses(tmp_path)
    assert all(s["slurm"]["job_id"] for s in final.values()), final
    try:
        wait_until(lambda: {s.get("state") for s in statuses(tmp_path).values()} == {"completed"}, timeout=180,
                   what="the accepted tasks to complete")
    except AssertionError:  # say why: the tasks' states and submitit's logs
        logs = {p.name: p.read_text()[-2000:] for p in (tmp_path / "out" / SUITE / ".slurm").rglob("*.out")}
        raise AssertionError(f"{statuses(tmp_path)}\n{logs}") from None


def test_unreachable_and_refused_are_told_apart() -> None:
    from perl_cli.scheduler import slurm_cli
    from perl_cli.scheduler.slurm_backend import _refusal

    down = "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)"
    slow = "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation"
    refused = "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified"
    assert slurm_cli.unreachable(down) == "not sent" and slurm_cli.unreachable(slow) == "unanswered"
    assert slurm_cli.unreachable(refused) is None
    rerun = "perl run demo --backend slurm"
    assert _refusal(refused, rerun).startswith("Slurm refused the submission: ")
    for message in (down, slow):
        text = _refusal(message, rerun)
        assert f"run the same `{rerun}` again" in text, text
        assert "unreachable" in text and "scontrol ping" in text and "refused" not in text, text


def test_a_second_worker_on_a_locked_experiment_refuses_and_writes_nothing(tmp_path: Path) -> None:
    """The per-experiment lock: the last line of defence against two workers on one directory."""
    from perl_cli import worker_lock
    from perl_cli.scheduler.slurm_task import ExperimentBusy, SlurmTask

    exp = tmp_path / "exp"
    exp.mkdir()
    state.atomic_write_json(exp / state.CONFIG_FILE, {"name": "exp", "training": {"max_steps": 3}})
    state.write_status(exp, {"state": "running", "pid": os.getpid(), "step": 7})
    before = (exp / state.STATUS_FILE).read_bytes()
    fd = worker_lock.acquire(exp)  # the live worker
    try:
        worker = subprocess.run([sys.executable, "-c", "import sys; from perl_cli.train.worker import run_experiment; "
                                 f"sys.exit(run_experiment({str(exp)!r}))"], capture_output=True, text=True, timeout=120)
        assert worker.returncode == 75, worker.stderr
        assert "another worker" in worker.stderr and f"pid {os.getpid()}" in worker.stderr
        fake = subprocess.run([sys.executable, str(HERE / "fake_worker.py"), str(exp)], capture_output=True, text=True,
                              timeout=60)
        assert fake.returncode == 75, fake.stderr
        with pytest.raises(ExperimentBusy):  # a Slurm task: it fails in Slurm, records nothing
            SlurmTask(str(exp), [sys.executable, str(HERE / "fake_worker.py")], requeues_left=0, time_limit_s=600,
                      signal_delay_s=60)()
        assert (exp / state.STATUS_FILE).read_bytes() == before
    finally:
        os.close(fd)
    fd = worker_lock.acquire(exp)  # free again once its holder let go
    with pytest.raises(worker_lock.Busy):
        worker_lock.acquire(exp)
    os.close(fd)


def test_readme_states_the_time_limit_the_code_warns_at() -> None:
    from perl_cli.scheduler.slurm import early_warning_note

    threshold = max(t for t in range(30, 600) if early_warning_note(t))
    readme = (HERE.parent / "README.md").read_text()
    assert f"of {threshold} s or less" in readme, threshold


def test_logs_follow_waits_for_a_queued_task(tmp_path: Path) -> None:
    """Reproduction 6: `perl logs -f` on a task waiting in Slurm's queue exited 1 at once."""
    write_config(tmp_path, methods=("lora",), seeds=(1,))
    exp = tmp_path / "out" / SUITE / "lora_s1"
    exp.mkdir(parents=True)
    state.write_status(exp, {"state": "queued", "backend": "slurm", "slurm": {"job_id": None}})
    follow = subprocess.Popen([sys.executable, "-m", "perl_cli", "logs", SUITE, "lora_s1", "-f", "--config",
                               str(tmp_path / "experiments.toml"), "--output", str(tmp_path / "out")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        wait_until(lambda: follow.poll() is not None or _waiting(follow), timeout=30, what="perl logs -f to say it waits")
        assert follow.poll() is None, follow.communicate()
        (exp / state.LOG_FILE).write_text("step 1\n")
        state.write_status(exp, {"state": "running", "host": "node1", "heartbeat": state.now()})
        (exp / state.LOG_FILE).write_text("step 1\nstep 2\n")
        state.write_status(exp, {"state": "completed", "ended": state.now()})
        out, err = follow.communicate(timeout=30)
    finally:
        if follow.poll() is None:
            follow.kill()
    assert follow.returncode == 0, err
    assert "step 2" in out and "completed" in err, (out, err)  # its "queued; waiting" line was read above


def _waiting(proc: subprocess.Popen) -> bool:
    """Whether `perl logs -f` has said that it waits (its first stderr line)."""
    import select

    ready, _, _ = select.select([proc.stderr], [], [], 0)
    return bool(ready) and "waiting for it to start" in proc.stderr.readline()


def test_what_slurm_says_about_a_task_that_left_no_final_status() -> None:
    from perl_cli.scheduler.endings import from_slurm

    queued, running = {"state": "queued"}, {"state": "running"}
    assert from_slurm("CANCELLED", queued, "7_1") == {
        "state": "interrupted", "cause": "cancelled_pending",
        "error": "cancelled by Slurm (scancel) while it waited in Slurm's queue (task 7_1); it did not start"}
    assert from_slurm("GONE", queued, "7_1", cancelled=True)["error"].startswith("cancelled by perl cancel")
    assert from_slurm("CANCELLED", running, "7_1")["state"] == "interrupted"
    assert "cause" not in from_slurm("CANCELLED", running, "7_1")
    assert from_slurm("TIMEOUT", running, "7_1")["cause"] == "time_limit"
    assert from_slurm("NODE_FAIL", running, "7_1")["cause"] == "node_failure"
    assert from_slurm("OUT_OF_MEMORY", running, "7_1")["cause"] == "memory_limit"
    assert from_slurm("PREEMPTED", running, "7_1")["cause"] == "preempted"
    assert from_slurm("FAILED", running, "7_1") == {
        "state": "failed", "error": "Slurm task 7_1 ended without a final status (Slurm state: FAILED)"}


def test_readers_show_a_task_slurm_requeued_as_queued(monkeypatch) -> None:
    """A status that says interrupted or failed while Slurm has the task again is shown queued (or running)."""
    from perl_cli.scheduler import slurm as slurmlib

    answers = {"1_0": "PENDING", "1_1": "RUNNING", "1_2": "FAILED", "1_3": "REQUEUE_HOLD"}
    monkeypatch.setattr(slurmlib.slurm_cli, "task_states", lambda ids, *, timeout: {i: answers[i] for i in ids})
    monkeypatch.setattr(slurmlib, "_read_cache", {}, raising=False)
    statuses = {"a": {"state": "interrupted", "slurm": {"job_id": "1_0"}},
                "b": {"state": "failed", "slurm": {"job_id": "1_1"}},
                "c": {"state": "failed", "slurm": {"job_id": "1_2"}},
                "d": {"state": "completed", "slurm": {"job_id": "1_3"}},  # never asked about
                "e": {"state": "interrupted", "slurm": {"job_id": "1_3"}}}
    shown = slurmlib.seen_by_slurm(statuses)
    assert {n: f["state"] for n, f in shown.items()} == {"a": "queued", "b": "running", "e": "queued"}
    assert "REQUEUE_HOLD" in shown["e"]["error"]


def test_the_time_of_every_attempt_is_carried_over() -> None:
    assert state.earlier_attempts_s({}) == 0
    assert state.earlier_attempts_s({"state": "queued", "started": 100.0, "ended": 130.0, "run_s_before": 12}) == 42
    assert state.earlier_attempts_s({"state": "running", "started": 100.0, "ended": None, "run_s_before": 12}) == 12
    assert state.earlier_attempts_s({"state": "queued", "started": None, "ended": None, "run_s_before": 5}) == 5


def test_suggested_commands_keep_the_backend_and_the_slurm_options(tmp_path: Path) -> None:
    """Reproduction 5: diagnose's fix for an interrupted Slurm task dropped --backend slurm (followed
    literally, it trained on the login node)."""
    from perl_cli import diagnose as dg

    status = {"state": "interrupted", "exit_code": 143, "backend": "slurm",
              "slurm": {"job_id": "9_0", "args": ["--backend", "slurm", "--partition", "gpu", "--time", "4:00:00",
                                                  "--slurm-arg", "qos=high"]}}
    ctx = dg.Context("core", "lora_s1", {}, status)
    ev = dg.Evidence(status, {}, [], "", None, [], False)
    assert dg.classify(ev).cause == "interrupted"
    (command,) = dg.fix_interrupted(ctx, ev).commands
    assert command == "perl run core --only lora_s1 --backend slurm --partition gpu --time 4:00:00 --slurm-arg qos=high"
    timed_out = {**status, "state": "failed", "cause": "time_limit", "slurm": {**status["slurm"], "time_limit_s": 14400}}
    (command,) = dg.fix_time_limit(dg.Context("core", "lora_s1", {}, timed_out),
                                   dg.Evidence(timed_out, {}, [], "", None, [], False)).commands
    assert command == "perl run core --only lora_s1 --backend slurm --partition gpu --time 08:00:00 --slurm-arg qos=high"
    local = dg.Context("core", "lora_s1", {}, {"state": "interrupted"})
    assert dg.fix_interrupted(local, ev).commands == ["perl run core --only lora_s1"]


def _task_dir(tmp_path: Path, **status) -> Path:
    exp = tmp_path / "lora_s1"
    exp.mkdir()
    state.atomic_write_json(exp / state.CONFIG_FILE, {"name": "lora_s1", "training": {
        "max_steps": 4, "save_steps": 2, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}})
    state.write_status(exp, status)
    return exp


def test_a_restart_after_an_attempt_that_left_no_word_is_recorded_as_a_requeue(tmp_path: Path, monkeypatch) -> None:
    """A node that died mid-attempt: Slurm restarts the task while status.json still says running."""
    from perl_cli.scheduler.slurm_task import SlurmTask

    exp = _task_dir(tmp_path, state="running", attempt=1, step=2, host="node7", started=100.0, heartbeat=160.0,
                    slurm={"job_id": "5_0", "node": "node7"})
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    monkeypatch.setenv("PERL_FAKE_STEP_SECONDS", "0.01")
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "PERL_FAKE_PLAN"):
        monkeypatch.delenv(name, raising=False)
    rc = SlurmTask(str(exp), [sys.executable, str(HERE / "fake_worker.py")], requeues_left=0, time_limit_s=600,
                   signal_delay_s=60)()
    final = state.read_status(exp)
    assert rc == 0 and final["state"] == "completed" and final["attempt"] == 2, final
    (requeue,) = final["requeues"]
    assert requeue["cause"] == "requeued" and "node7" in requeue["reason"] and requeue["step"] == 2
    assert final["run_s_before"] == 60.0  # the lost attempt's time counts, up to its last heartbeat


def test_a_failed_experiment_makes_its_slurm_task_fail(tmp_path: Path, monkeypatch) -> None:
    """The task's exit status is the experiment's: it raises, so submitit exits non-zero (sacct FAILED)."""
    from perl_cli.scheduler.slurm_task import ExperimentFailed, SlurmTask

    exp = _task_dir(tmp_path, state="queued")
    monkeypatch.setenv("PERL_FAKE_PLAN", json.dumps({"lora_s1": {"kill_self_at": 2}}))
    monkeypatch.setenv("PERL_FAKE_STEP_SECONDS", "0.01")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(ExperimentFailed, match="killed by SIGKILL"):
        SlurmTask(str(exp), [sys.executable, str(HERE / "fake_worker.py")], requeues_left=0, time_limit_s=600,
                  signal_delay_s=60)()
    assert state.read_status(exp)["state"] == "failed" and state.read_status(exp)["exit_code"] == 137
