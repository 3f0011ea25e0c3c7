"""`perl eval --backend slurm`: benchmark evaluations of completed experiments as Slurm array tasks.

Against the real one-node Slurm of scripts/local-slurm.sh (marker `slurm`, fixtures from
test_slurm.py). Experiments are trained by the synthetic trainer (tests/fake_worker.py) on
the local backend, then evaluated by the synthetic evaluator (tests/fake_eval_worker.py,
which follows the real eval worker's protocol: saved problem by problem, continued after a
stop) so each test takes seconds. Before `perl eval` had the Slurm backend, `--backend` was
an unknown option (exit 2), and a Slurm task was always given the training worker.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_scheduler import DRIVER, SUITE, env_for, launches, perl, wait_until, write_config
from test_slurm import cluster, perl_cmd, slurm_cluster, squeue_state, task_of  # noqa: F401 (fixtures)

from perl_cli import benchmarks, state

BENCHMARK = """
[benchmarks.fakeb]
source = "builtin:tiny-math"
n = 2
k = [1, 2]
limit = {limit}
"""
RERUN = "perl eval t --benchmarks fakeb --backend slurm"
# Every test here uses the cluster (test_slurm's fixtures: started if need be; the queue emptied after each test).
pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("cluster")]


def trained(tmp: Path, methods: tuple[str, ...], *, limit: int) -> None:
    """A suite whose experiments the synthetic trainer completed on the local backend."""
    write_config(tmp, steps=4, save_steps=2, methods=methods, seeds=(1,))
    with open(tmp / "experiments.toml", "a", encoding="utf-8") as f:
        f.write(BENCHMARK.format(limit=limit))
    result = perl(tmp, env=env_for(tmp, gpus="[]"))
    assert result.returncode == 0, result.stdout + result.stderr


def perl_eval(tmp: Path, *args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real `perl eval` command line, with the synthetic workers (tests/run_with_fake_worker.py)."""
    return subprocess.run([sys.executable, DRIVER, "eval", SUITE, "--benchmarks", "fakeb", "--config",
                           str(tmp / "experiments.toml"), "--output", str(tmp / "out"), *args],
                          env=env, capture_output=True, text=True, timeout=timeout)


def eval_env(tmp: Path, seconds: float = 0.02) -> dict[str, str]:
    return env_for(tmp, gpus="[]", PERL_FAKE_EVAL_SECONDS=str(seconds), PERL_FAKE_EVAL_LOG=str(tmp / "evals.log"))


def evals(tmp: Path) -> list[str]:
    path = tmp / "evals.log"
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def saved_rows(exp: Path) -> int:
    return len(state.read_jsonl(exp / benchmarks.RESULTS_DIR / ".fakeb.partial.jsonl"))


# What the local backend and the Slurm backend must agree on in status.json after an evaluation.
SAME = ("state", "exit_code", "step", "total_steps", "fingerprint", "attempt", "cause", "error")


def test_perl_eval_on_slurm_writes_what_a_local_perl_eval_writes(tmp_path: Path) -> None:
    on_slurm, here = tmp_path / "slurm", tmp_path / "local"
    for tmp in (on_slurm, here):
        tmp.mkdir()
        trained(tmp, ("lora", "dora"), limit=6)
    local = perl_eval(here, env=eval_env(here))
    assert local.returncode == 0, local.stdout + local.stderr

    env = eval_env(on_slurm)
    result = perl_eval(on_slurm, "--backend", "slurm", "--wait", "--cpus-per-job", "1", "--gpus-per-job", "0", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 to submit" in result.stdout and "submitted 2 experiment(s) as Slurm job array" in result.stdout, result.stdout
    assert "each task runs: " in result.stdout and "fake_eval_worker.py <dir>" in result.stdout, result.stdout
    assert sorted(evals(on_slurm)) == ["dora_s1", "lora_s1"]  # the evaluator, once each
    assert launches(on_slurm) == launches(here) and len(launches(on_slurm)) == 2  # the trainer never ran again
    for name in ("lora_s1", "dora_s1"):
        a, b = on_slurm / "out" / SUITE / name, here / "out" / SUITE / name
        assert state.read_json(a / state.EVAL_FILE) == state.read_json(b / state.EVAL_FILE)
        assert state.read_json(a / state.EVAL_FILE)["benchmarks"]["fakeb"]["problems"] == 6
        assert (a / "benchmarks" / "fakeb.json").read_text() == (b / "benchmarks" / "fakeb.json").read_text()
        assert {p.name for p in a.rglob("*") if p.is_file()} == {p.name for p in b.rglob("*") if p.is_file()}
        sa, sb = state.read_status(a), state.read_status(b)
        assert {k: sa.get(k) for k in SAME} == {k: sb.get(k) for k in SAME}, (sa, sb)
        assert sa["state"] == "completed" and sa["attempt"] == 2, sa
        assert sa["backend"] == "slurm" and sa["slurm"]["kind"] == "eval", sa
        assert sa["slurm"]["rerun"] == ["eval", "--benchmarks", "fakeb"], sa["slurm"]
        log = (a / state.LOG_FILE).read_text()
        assert "(evaluating fakeb): " in log and "fake_eval_worker.py" in log, log[-2000:]
    shown = json.loads(perl_cmd(on_slurm, "status", SUITE, "--json", env=env).stdout)
    assert shown["counts"]["completed"] == 2, shown["counts"]

    # Nothing left to evaluate: nothing is submitted, and it says so in perl eval's words.
    again = perl_eval(on_slurm, "--backend", "slurm", "--wait", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 to submit, 2 already evaluated (skipped)" in again.stdout and "submitted" not in again.stdout, again.stdout


def test_a_slurm_evaluation_requeued_by_slurm_is_watched_and_continues_where_it_stopped(tmp_path: Path) -> None:
    trained(tmp_path, ("lora",), limit=40)
    env = eval_env(tmp_path, seconds=0.1)
    exp = tmp_path / "out" / SUITE / "lora_s1"
    first = perl_eval(tmp_path, "--backend", "slurm", "--time", "10", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"{RERUN} --time 10` later resumes" in first.stdout, first.stdout  # perl eval, not perl run
    task = task_of(tmp_path, "lora_s1")
    wait_until(lambda: saved_rows(exp) >= 3, timeout=60, what="the evaluation saving problems")

    subprocess.run(["scontrol", "requeuehold", task], check=True, timeout=30)
    wait_until(lambda: squeue_state(task) == "PENDING", timeout=30, what="the task pending again")
    wait_until(lambda: (state.read_status(exp) or {}).get("state") == "queued", timeout=30, what="recorded requeued")
    held = state.read_status(exp)
    assert held["requeues"][-1]["cause"] == "requeued" and held["exit_code"] == 143, held  # stopped, then requeued
    stopped_at = saved_rows(exp)
    assert 3 <= stopped_at < 40
    # Held in Slurm: a second perl eval watches it (never a second task); the local backend leaves it.
    again = perl_eval(tmp_path, "--backend", "slurm", "--time", "10", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 already queued or running in Slurm" in again.stdout and "submitted" not in again.stdout, again.stdout
    here = perl_eval(tmp_path, env=env)
    assert "not evaluated: lora_s1: queued or running in Slurm" in here.stdout, here.stdout

    subprocess.run(["scontrol", "release", task], check=True, timeout=30)
    done = perl_eval(tmp_path, "--backend", "slurm", "--time", "10", "--wait", env={**env, "PERL_FAKE_EVAL_SECONDS": "0.01"})
    assert done.returncode == 0, done.stdout + done.stderr
    final = state.read_status(exp)
    assert final["state"] == "completed" and final["step"] == 4, final
    assert f"benchmark fakeb: continuing after {stopped_at} of 40 problems" in (exp / state.LOG_FILE).read_text()
    saved = json.loads((exp / "benchmarks" / "fakeb.json").read_text())
    assert [p["index"] for p in saved["problems"]] == list(range(40))
    assert evals(tmp_path) == ["lora_s1", "lora_s1"]  # one evaluator per attempt, never two
    assert launches(tmp_path) == ["lora_s1"]


def test_perl_cancel_of_a_slurm_evaluation_names_perl_eval_which_continues_it(tmp_path: Path) -> None:
    trained(tmp_path, ("lora",), limit=40)
    env = eval_env(tmp_path, seconds=0.1)
    exp = tmp_path / "out" / SUITE / "lora_s1"
    first = perl_eval(tmp_path, "--backend", "slurm", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    task = task_of(tmp_path, "lora_s1")
    wait_until(lambda: saved_rows(exp) >= 3, timeout=60, what="the evaluation saving problems")

    cancel = perl_cmd(tmp_path, "cancel", SUITE, env=env)
    assert cancel.returncode == 0, cancel.stderr
    assert f"`{RERUN} --output {tmp_path / 'out'}` resumes" in cancel.stdout, cancel.stdout
    assert "perl run" not in cancel.stdout, cancel.stdout
    stopped = state.read_status(exp)
    assert stopped["state"] == "interrupted" and stopped["exit_code"] == 143, stopped
    stopped_at = saved_rows(exp)
    from perl_cli.scheduler import slurm_cli

    wait_until(lambda: (slurm_cli.task_states([task]) or {}).get(task) not in slurm_cli.ACTIVE_STATES,
               timeout=60, what="Slurm to let the cancelled task go")

    done = perl_eval(tmp_path, "--backend", "slurm", "--wait", env={**env, "PERL_FAKE_EVAL_SECONDS": "0.01"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 to submit" in done.stdout, done.stdout
    final = state.read_status(exp)
    assert final["state"] == "completed" and final["attempt"] == 3, final
    assert f"benchmark fakeb: continuing after {stopped_at} of 40 problems" in (exp / state.LOG_FILE).read_text()
    assert state.read_json(exp / state.EVAL_FILE)["benchmarks"]["fakeb"]["problems"] == 40
    assert launches(tmp_path) == ["lora_s1"]


def test_an_evaluation_that_reaches_its_time_limit_is_requeued_and_continues(tmp_path: Path) -> None:
    """--time 2 (not 1: Slurm may warn up to 60 s early): the first attempt is slow and outlives it;
    the task is requeued once (the suite's retries, default 1) and continues after what it saved."""
    trained(tmp_path, ("lora",), limit=400)
    fast = tmp_path / "fast"
    env = {**eval_env(tmp_path, seconds=0.5), "PERL_FAKE_EVAL_FAST_AFTER": str(fast)}
    exp = tmp_path / "out" / SUITE / "lora_s1"
    run = subprocess.Popen([sys.executable, DRIVER, "eval", SUITE, "--benchmarks", "fakeb", "--config",
                            str(tmp_path / "experiments.toml"), "--output", str(tmp_path / "out"), "--backend", "slurm",
                            "--time", "2", "--wait"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: (state.read_status(exp) or {}).get("requeues"), timeout=240, what="the time-limit requeue")
        fast.touch()
        out, _ = run.communicate(timeout=240)
    finally:
        run.kill()
    assert run.returncode == 0, out
    final = state.read_status(exp)
    assert final["state"] == "completed" and [r["cause"] for r in final["requeues"]] == ["time_limit"], final
    stopped_at = int((exp / state.LOG_FILE).read_text().split("benchmark fakeb: continuing after ")[1].split()[0])
    assert 0 < stopped_at < 400
    saved = json.loads((exp / "benchmarks" / "fakeb.json").read_text())
    assert [p["index"] for p in saved["problems"]] == list(range(400))
    assert evals(tmp_path) == ["lora_s1", "lora_s1"] and launches(tmp_path) == ["lora_s1"]


@pytest.mark.slow
def test_the_real_eval_worker_on_slurm_gives_a_local_perl_evals_results(tmp_path: Path) -> None:
    """The real evaluator (python -m perl_cli.train.eval_worker) as a Slurm task, after real training
    on the CPU: the same saved problems and summary as a local `perl eval` of the same experiment."""
    from test_math_e2e import CONFIG, _perl

    config = CONFIG.replace('method = ["lora", "full"]', 'method = ["lora"]') + """
[benchmarks.evalb]
source = "builtin:tiny-math"
n = 2
k = [1, 2]
temperature = 1.0
top_p = 1.0
max_new_tokens = 8
limit = 4
"""
    (tmp_path / "experiments.toml").write_text(config)
    trained_run = _perl(tmp_path, "run", "m", "--jobs", "1")
    assert trained_run.returncode == 0, trained_run.stdout + trained_run.stderr
    exp = tmp_path / "out" / "m" / "lora_s1"
    before = state.read_json(exp / state.EVAL_FILE)
    attempt = state.read_status(exp)["attempt"]

    local = _perl(tmp_path, "eval", "m", "--benchmarks", "evalb")
    assert local.returncode == 0, local.stdout + local.stderr
    here = {"saved": json.loads((exp / "benchmarks" / "evalb.json").read_text()),
            "summary": state.read_json(exp / state.EVAL_FILE)["benchmarks"]["evalb"], "status": state.read_status(exp)}
    assert here["status"]["state"] == "completed" and here["status"]["attempt"] == attempt + 1, here["status"]
    # Undo the local evaluation, then evaluate again as a Slurm task.
    (exp / "benchmarks" / "evalb.json").unlink()
    state.atomic_write_json(exp / state.EVAL_FILE, before)

    on_slurm = _perl(tmp_path, "eval", "m", "--benchmarks", "evalb", "--backend", "slurm", "--wait",
                     "--cpus-per-job", "1", "--gpus-per-job", "0")
    assert on_slurm.returncode == 0, on_slurm.stdout + on_slurm.stderr
    assert "submitted 1 experiment(s) as Slurm job" in on_slurm.stdout, on_slurm.stdout
    status = state.read_status(exp)
    assert {k: status.get(k) for k in SAME if k != "attempt"} == {k: here["status"].get(k) for k in SAME if k != "attempt"}
    assert status["attempt"] == attempt + 2 and status["slurm"]["kind"] == "eval", status
    saved = json.loads((exp / "benchmarks" / "evalb.json").read_text())
    assert saved == here["saved"]
    assert state.read_json(exp / state.EVAL_FILE)["benchmarks"]["evalb"] == here["summary"]
    assert "perl_cli.train.eval_worker" in (exp / state.LOG_FILE).read_text()
