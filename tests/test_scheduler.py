"""`perl run` (local backend) with real processes: the synthetic worker on fake GPUs.

Every test runs the scheduler as users do (`perl run ...` in a subprocess), with
tests/fake_worker.py in place of `python -m perl_cli.train` (see run_with_fake_worker.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perl_cli import state
from perl_cli.scheduler import gpus as gpulib
from perl_cli.scheduler.lock import LockHeld, RunLock
from perl_cli.scheduler.memory import estimate_mb

HERE = Path(__file__).parent
DRIVER = str(HERE / "run_with_fake_worker.py")
SUITE = "t"


def fake_gpus(*totals: int, used: int = 0) -> str:
    return json.dumps([
        {"index": i, "name": "FakeGPU", "memory_total_mb": t, "memory_used_mb": used} for i, t in enumerate(totals)
    ])


def write_config(tmp: Path, *, steps: int = 10, save_steps: int = 5, memory_mb: int = 1000,
                 methods: tuple[str, ...] = ("lora", "dora", "vera"), seeds: tuple[int, ...] = (1, 2)) -> Path:
    path = tmp / "experiments.toml"
    path.write_text(f"""
[suites.{SUITE}]
name = "{{method}}_s{{seed}}"
[suites.{SUITE}.base.model]
model_name_or_path = "builtin:tiny-random"
[suites.{SUITE}.base.training]
max_steps = {steps}
save_steps = {save_steps}
per_device_train_batch_size = 4
gradient_accumulation_steps = 2
num_generations = 4
[suites.{SUITE}.base.resources]
memory_mb = {memory_mb}
[suites.{SUITE}.matrix]
method = {json.dumps(list(methods))}
seed = {json.dumps(list(seeds))}
""")
    return path


def env_for(tmp: Path, *, gpus: str | None = None, step_s: float = 0.02, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop(gpulib.FAKE_GPUS_ENV, None)
    if gpus is not None:
        env[gpulib.FAKE_GPUS_ENV] = gpus
    env.update(
        PERL_FAKE_STEP_SECONDS=str(step_s),
        PERL_FAKE_LAUNCH_LOG=str(tmp / "launches.log"),
        PERL_FAKE_TIMING_LOG=str(tmp / "timing.jsonl"),
        **extra,
    )
    return env


def perl_args(tmp: Path, *args: str) -> list[str]:
    return [sys.executable, DRIVER, "run", SUITE, "--config", str(tmp / "experiments.toml"),
            "--output", str(tmp / "out"), *args]


def perl(tmp: Path, *args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(perl_args(tmp, *args), env=env, capture_output=True, text=True, timeout=timeout)


def start_perl(tmp: Path, *args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(perl_args(tmp, *args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def statuses(tmp: Path) -> dict[str, dict]:
    suite_dir = tmp / "out" / SUITE
    return {name: state.read_status(d) or {} for name, d in state.experiment_dirs(suite_dir).items()}


def launches(tmp: Path) -> list[str]:
    path = tmp / "launches.log"
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def timings(tmp: Path) -> list[dict]:
    return state.read_jsonl(tmp / "timing.jsonl")


def max_overlap(rows: list[dict]) -> int:
    events = sorted([(r["start"], 1) for r in rows] + [(r["end"], -1) for r in rows])
    best = now = 0
    for _, delta in events:
        now += delta
        best = max(best, now)
    return best


def tmpfs_at(mount: Path, size: str, not_run: str):
    """Mount a tmpfs of `size` at `mount` for a test (unmounted afterwards); skips, loudly saying
    `not_run`, where mounting is not allowed (not root)."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"{not_run}: cannot mount a tmpfs here ({done.stderr.strip()}); run as root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def wait_until(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def running_workers(tmp: Path) -> list[int]:
    """Live synthetic workers on this test's directories."""
    import psutil

    out = str(tmp / "out")
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if len(cmd) >= 2 and cmd[-2].endswith("fake_worker.py") and cmd[-1].startswith(out) and proc.status() != "zombie":
            pids.append(proc.info["pid"])
    return pids


# --- spreading and packing ------------------------------------------------------------


def test_jobs_spread_over_fake_gpus_and_slots(tmp_path: Path) -> None:
    write_config(tmp_path, steps=15)
    env = env_for(tmp_path, gpus=fake_gpus(8000, 8000), step_s=0.03)
    result = perl(tmp_path, "--jobs-per-gpu", "2", env=env)
    assert result.returncode == 0, result.stderr + result.stdout
    final = statuses(tmp_path)
    assert len(final) == 6 and all(s["state"] == "completed" for s in final.values())
    rows = timings(tmp_path)
    assert {r["gpu"] for r in rows} == {"0", "1"}
    assert all(r["perl_gpu"] == r["gpu"] for r in rows)
    assert {str(s["gpu"]) for s in final.values()} == {"0", "1"}
    for gpu in ("0", "1"):
        assert max_overlap([r for r in rows if r["gpu"] == gpu]) <= 2
    assert max_overlap(rows) >= 3  # the four slots were used together
    assert sorted(launches(tmp_path)) == sorted(final)
    aggregate = state.read_json(tmp_path / "out" / SUITE / state.RUN_STATUS_FILE)
    assert aggregate["counts"]["completed"] == 6


def test_packing_respects_memory_and_refuses_what_never_fits(tmp_path: Path) -> None:
    # 10 GB with 4 GB used by someone else: 6 GB free, 2.5 GB jobs → 2 at a time, not 4.
    write_config(tmp_path, steps=12, memory_mb=2500, methods=("lora", "dora"))
    env = env_for(tmp_path, gpus=fake_gpus(10000, used=4000), step_s=0.03)
    result = perl(tmp_path, "--jobs-per-gpu", "4", env=env)
    assert result.returncode == 0, result.stderr
    assert max_overlap(timings(tmp_path)) == 2

    write_config(tmp_path, memory_mb=7000)
    result = perl(tmp_path, "--fresh", env=env)
    assert result.returncode == 2
    assert "can never fit" in result.stderr and "7,000 MB" in result.stderr
    assert "Traceback" not in result.stderr


def test_cpu_mode_says_so_once_and_honours_jobs(tmp_path: Path) -> None:
    write_config(tmp_path, steps=15, methods=("lora", "dora"))
    env = env_for(tmp_path, gpus=None, step_s=0.03, PERL_FAKE_GPUS="[]")
    result = perl(tmp_path, "--jobs", "2", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("running on the CPU") == 1
    rows = timings(tmp_path)
    assert {r["gpu"] for r in rows} == {""} and {r["perl_gpu"] for r in rows} == {"cpu"}
    assert max_overlap(rows) == 2


# --- failures -------------------------------------------------------------------------


def test_worker_killed_by_sigkill_is_failed_while_others_complete(tmp_path: Path) -> None:
    write_config(tmp_path)
    env = env_for(tmp_path, gpus=fake_gpus(8000), PERL_FAKE_PLAN=json.dumps({"dora_s1": {"kill_self_at": 3}}))
    result = perl(tmp_path, "--jobs-per-gpu", "3", env=env)
    assert result.returncode == 1
    final = statuses(tmp_path)
    assert final["dora_s1"]["state"] == "failed"
    assert final["dora_s1"]["signal"] == "SIGKILL" and final["dora_s1"]["exit_code"] == 137
    assert all(s["state"] == "completed" for n, s in final.items() if n != "dora_s1")
    assert launches(tmp_path).count("dora_s1") == 1  # a signal is not a retryable cause


def test_code_error_is_not_retried(tmp_path: Path) -> None:
    write_config(tmp_path, methods=("lora",), seeds=(1,))
    env = env_for(tmp_path, gpus=fake_gpus(8000), PERL_FAKE_PLAN=json.dumps({"lora_s1": {"fail_at": 2}}))
    result = perl(tmp_path, "--retries", "3", env=env)
    assert result.returncode == 1
    assert launches(tmp_path) == ["lora_s1"]
    assert statuses(tmp_path)["lora_s1"]["error"] == "RuntimeError: synthetic failure"


def test_oom_is_retried_with_half_the_batch(tmp_path: Path) -> None:
    write_config(tmp_path, methods=("lora",), seeds=(1,))
    env = env_for(tmp_path, gpus=fake_gpus(8000), PERL_TEST_FAIL_AT_STEP="2:oom")
    result = perl(tmp_path, env=env)
    assert result.returncode == 0, result.stderr + result.stdout
    exp_dir = tmp_path / "out" / SUITE / "lora_s1"
    status = state.read_status(exp_dir)
    assert status["state"] == "completed" and status["attempt"] == 2
    assert status["retries"][0]["cause"] == "CUDA out of memory"
    config = state.read_json(exp_dir / state.CONFIG_FILE)
    assert config["runtime"] == {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4}
    assert "runtime" not in status  # config.json is its one home
    assert config["training"]["per_device_train_batch_size"] == 4  # the experiment itself is unchanged
    log = (exp_dir / state.LOG_FILE).read_text()
    assert "retrying with per_device_train_batch_size=2, gradient_accumulation_steps=4" in log
    assert "batch 2, accumulation 4" in log
    assert "retrying" in result.stdout
    assert launches(tmp_path) == ["lora_s1", "lora_s1"]

    # With no retries left the OOM is final.
    result = perl(tmp_path, "--fresh", "--retries", "0", env=env)
    assert result.returncode == 1
    assert state.read_status(exp_dir)["state"] == "failed"


# --- crashes, signals, locks ---------------------------------------------------------------


def test_scheduler_sigkill_then_rerun_runs_each_experiment_once(tmp_path: Path) -> None:
    # 100 steps of 0.05 s: the orphans still run when the second scheduler starts, even on a busy machine.
    write_config(tmp_path, steps=100, save_steps=10)
    env = env_for(tmp_path, gpus=fake_gpus(8000, 8000), step_s=0.05)
    first = start_perl(tmp_path, env=env)
    try:
        wait_until(lambda: len(launches(tmp_path)) >= 2 and sum(
            1 for s in statuses(tmp_path).values() if s.get("state") == "running" and (s.get("step") or 0) >= 3
        ) >= 2, what="two running workers")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    orphans = running_workers(tmp_path)
    assert orphans, "the workers outlive a SIGKILLed scheduler (own sessions)"
    result = perl(tmp_path, env={**env, "PERL_FAKE_STEP_SECONDS": "0.005"})  # the new launches are quick
    assert result.returncode == 0, result.stderr + result.stdout
    assert "adopted" in result.stdout
    final = statuses(tmp_path)
    assert len(final) == 6 and all(s["state"] == "completed" for s in final.values())
    assert sorted(launches(tmp_path)) == sorted(final)  # none lost, none twice
    assert not running_workers(tmp_path)


def test_sigint_interrupts_workers_then_rerun_resumes(tmp_path: Path) -> None:
    write_config(tmp_path, steps=60, save_steps=1000, methods=("lora", "dora"), seeds=(1,))
    env = env_for(tmp_path, gpus=fake_gpus(8000), step_s=0.05)
    proc = start_perl(tmp_path, "--jobs-per-gpu", "2", env=env)
    wait_until(lambda: sum(1 for s in statuses(tmp_path).values() if (s.get("step") or 0) >= 5) == 2,
               what="both workers stepping")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert not running_workers(tmp_path)
    final = statuses(tmp_path)
    assert {s["state"] for s in final.values()} == {"interrupted"}
    steps_then = {n: s["step"] for n, s in final.items()}
    assert all(state.read_status(tmp_path / "out" / SUITE / n)["exit_code"] == 143 for n in final)

    result = perl(tmp_path, env={**env, "PERL_FAKE_STEP_SECONDS": "0.002"})
    assert result.returncode == 0, result.stderr
    for name in final:
        status = state.read_status(tmp_path / "out" / SUITE / name)
        assert status["state"] == "completed"
        assert status["resumed_from"] == steps_then[name]  # from the checkpoint saved on SIGTERM


def test_second_ctrl_c_kills_at_once(tmp_path: Path) -> None:
    write_config(tmp_path, steps=400, methods=("lora",), seeds=(1,))
    env = env_for(tmp_path, gpus=fake_gpus(8000), step_s=0.02)
    # A worker that ignores SIGTERM: the grace period is long, the second Ctrl+C must not wait for it.
    env["PERL_FAKE_PLAN"] = json.dumps({"lora_s1": {"ignore_term": True}})
    proc = start_perl(tmp_path, "--grace-seconds", "60", env=env)
    wait_until(lambda: (statuses(tmp_path).get("lora_s1", {}).get("step") or 0) >= 3, what="worker stepping")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    proc.communicate(timeout=10)
    assert proc.returncode == 130 and time.monotonic() - t0 < 5
    assert not running_workers(tmp_path)
    status = statuses(tmp_path)["lora_s1"]
    assert status["state"] == "interrupted" and status["signal"] == "SIGKILL"


def test_second_concurrent_run_starts_nothing_twice(tmp_path: Path) -> None:
    write_config(tmp_path, steps=300, methods=("lora",), seeds=(1,))
    env = env_for(tmp_path, gpus=fake_gpus(8000), step_s=0.02)
    first = start_perl(tmp_path, env=env)
    try:
        wait_until(lambda: len(launches(tmp_path)) == 1, what="first run launching")
        wait_until(lambda: "lora_s1" in (tmp_path / "out" / SUITE / state.RUN_STATUS_FILE).read_text(), what="run status")
        second = perl(tmp_path, env=env)
        # The lock holds: no second scheduler; what it would add is already running (test_run_end.py adds work).
        assert second.returncode == 0, second.stderr
        assert f"already running, queued or completed in `perl run` (pid {first.pid})" in second.stdout
        assert "lora_s1: already running" in second.stdout  # its answer, per experiment
        assert launches(tmp_path) == ["lora_s1"]
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=20)
    assert first.returncode == 130


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    suite_dir = tmp_path / "out" / SUITE
    suite_dir.mkdir(parents=True)
    (suite_dir / state.RUN_LOCK_FILE).write_text(json.dumps({"pid": 999999, "started": 1.0}))
    write_config(tmp_path, methods=("lora",), seeds=(1,))
    result = perl(tmp_path, env=env_for(tmp_path, gpus=fake_gpus(8000)))
    assert result.returncode == 0, result.stderr


def test_lock_in_process(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        with pytest.raises(LockHeld, match=rf"already running \(pid {os.getpid()}, since"):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path):
        pass


# --- resume, stale, aggregate -------------------------------------------------------------


def test_corrupt_run_status_is_rebuilt(tmp_path: Path) -> None:
    write_config(tmp_path, methods=("lora", "dora"), seeds=(1,))
    env = env_for(tmp_path, gpus=fake_gpus(8000))
    assert perl(tmp_path, env=env).returncode == 0
    aggregate = tmp_path / "out" / SUITE / state.RUN_STATUS_FILE
    aggregate.write_text('{"counts": {"completed": 0}, "experiments": {"lora_s1": {"state": "fa')
    result = perl(tmp_path, env=env)
    assert result.returncode == 0
    assert "2 already completed (skipped)" in result.stdout
    data = state.read_json(aggregate)
    assert data["counts"]["completed"] == 2 and data["experiments"]["lora_s1"]["state"] == "completed"
    assert launches(tmp_path).count("lora_s1") == 1


def test_config_change_marks_finished_experiment_stale(tmp_path: Path) -> None:
    write_config(tmp_path, methods=("lora", "dora"), seeds=(1,))
    env = env_for(tmp_path, gpus=fake_gpus(8000))
    assert perl(tmp_path, env=env).returncode == 0
    result = perl(tmp_path, "--set", "training.learning_rate=1e-4", env=env)
    assert result.returncode == 2
    assert "lora_s1" in result.stderr and "dora_s1" in result.stderr and "stale" in result.stderr
    assert "--fresh" in result.stderr and "Traceback" not in result.stderr
    data = state.read_json(tmp_path / "out" / SUITE / state.RUN_STATUS_FILE)
    assert data["experiments"]["lora_s1"]["state"] == "stale"
    assert len(launches(tmp_path)) == 2

    result = perl(tmp_path, "--set", "training.learning_rate=1e-4", "--only", "lora_s1", "--fresh", env=env)
    assert result.returncode == 0, result.stderr
    kept = [p.name for p in (tmp_path / "out" / SUITE).iterdir() if p.name.startswith("lora_s1.old-")]
    assert len(kept) == 1
    assert state.read_status(tmp_path / "out" / SUITE / kept[0])["state"] == "completed"
    assert state.read_status(tmp_path / "out" / SUITE / "lora_s1")["attempt"] == 1


def test_failed_experiment_is_resumed_and_completed_skipped(tmp_path: Path) -> None:
    write_config(tmp_path, steps=10, save_steps=4, methods=("lora", "dora"), seeds=(1,))
    env = env_for(tmp_path, gpus=fake_gpus(8000), PERL_FAKE_PLAN=json.dumps({"dora_s1": {"fail_at": 6}}))
    assert perl(tmp_path, env=env).returncode == 1
    env["PERL_FAKE_PLAN"] = "{}"
    result = perl(tmp_path, env=env)
    assert result.returncode == 0
    assert launches(tmp_path) .count("lora_s1") == 1 and launches(tmp_path).count("dora_s1") == 2
    status = statuses(tmp_path)["dora_s1"]
    assert status["state"] == "completed" and status["resumed_from"] == 4 and status["attempt"] == 2


# --- dry run, imports, inventory ----------------------------------------------------------


def test_dry_run_prints_commands_and_does_not_import_torch(tmp_path: Path) -> None:
    write_config(tmp_path, methods=("lora", "dora", "vera"), seeds=(1,))
    env = env_for(tmp_path, gpus=fake_gpus(8000, 8000))
    cmd = [sys.executable, "-X", "importtime", "-m", "perl_cli", "run", SUITE, "--dry-run",
           "--config", str(tmp_path / "experiments.toml"), "--output", str(tmp_path / "out")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert not imported & {"torch", "transformers", "trl", "peft"}
    out = result.stdout
    assert "-m perl_cli.train" in out and str(tmp_path / "out" / SUITE / "lora_s1") in out
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=0 PERL_GPU=0" in out
    assert "CUDA_VISIBLE_DEVICES=1 PERL_GPU=1" in out
    assert "waits for a free slot" in out
    assert not (tmp_path / "out").exists()


def test_scheduler_process_never_imports_torch(tmp_path: Path) -> None:
    write_config(tmp_path, methods=("lora",), seeds=(1,))
    env = env_for(tmp_path, gpus=fake_gpus(8000))
    cmd = [sys.executable, "-X", "importtime", DRIVER, "run", SUITE, "--config", str(tmp_path / "experiments.toml"),
           "--output", str(tmp_path / "out")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert "perl_cli" in imported and "torch" not in imported


def test_gpu_selection_errors(tmp_path: Path) -> None:
    write_config(tmp_path, methods=("lora",), seeds=(1,))
    result = perl(tmp_path, "--gpus", "0,5", env=env_for(tmp_path, gpus=fake_gpus(8000, 8000)))
    assert result.returncode == 2 and "no GPU with index 5" in result.stderr
    # Slurm options without the Slurm backend are a usage error, not silently ignored.
    result = perl(tmp_path, "--partition", "gpu", env=env_for(tmp_path, gpus=fake_gpus(8000)))
    assert result.returncode == 2 and "--partition: Slurm options need --backend slurm" in result.stderr
    result = perl(tmp_path, env=env_for(tmp_path, gpus="[{not json"))
    assert result.returncode == 2 and "PERL_FAKE_GPUS" in result.stderr


def test_fake_inventory_inline_and_file(tmp_path: Path) -> None:
    inv = gpulib.load_inventory({gpulib.FAKE_GPUS_ENV: fake_gpus(1000, 2000, used=300)})
    assert inv.fake and [g.memory_free_mb for g in inv.gpus] == [700, 1700]
    path = tmp_path / "gpus.json"
    path.write_text(fake_gpus(1000))
    inv = gpulib.load_inventory({gpulib.FAKE_GPUS_ENV: str(path)})
    path.write_text(fake_gpus(1000, used=900))
    assert inv.refresh()[0].memory_free_mb == 100
    with pytest.raises(gpulib.GPUInventoryError, match="cannot read"):
        gpulib.load_inventory({gpulib.FAKE_GPUS_ENV: str(tmp_path / "missing.json")})
    inv = gpulib.load_inventory({})
    assert inv.source in ("nvml", "none") and (inv.gpus or inv.reason)


def test_memory_estimate() -> None:
    from perl_cli import schema

    config = schema.defaults()
    config["model"]["model_name_or_path"] = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    small = estimate_mb(config)
    config["model"]["model_name_or_path"] = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
    big = estimate_mb(config)
    assert 4000 < small < big
    config["training"]["gradient_checkpointing"] = True
    assert estimate_mb(config) < big
    config["resources"]["memory_mb"] = 1234
    assert estimate_mb(config) == 1234


def test_library_api_in_process_with_progress_bars(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from perl_cli import config as configlib
    from perl_cli.scheduler import RunOptions, run_suite

    cfg = configlib.load(write_config(tmp_path, methods=("lora", "dora"), seeds=(1,)))
    experiments = configlib.expand(cfg, SUITE)
    env = env_for(tmp_path, gpus=fake_gpus(8000, 8000))
    before = signal.getsignal(signal.SIGINT)
    code = run_suite(RunOptions(
        suite=SUITE, experiments=experiments, output=tmp_path / "out", tty=True, environ=env,
        worker_cmd=(sys.executable, str(HERE / "fake_worker.py")),
    ))
    assert code == 0
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    out = capsys.readouterr().out
    assert "completed" in out and "suite" in out
    assert {s["state"] for s in statuses(tmp_path).values()} == {"completed"}


def test_job_waits_for_memory_instead_of_failing(tmp_path: Path) -> None:
    write_config(tmp_path, methods=("lora",), seeds=(1,), memory_mb=3000)
    gpu_file = tmp_path / "gpus.json"
    gpu_file.write_text(fake_gpus(4000, used=3500))  # a file is re-read: its "used" memory can change
    proc = start_perl(tmp_path, env=env_for(tmp_path, gpus=str(gpu_file)))
    # That it does not start is placement's decision (tests/test_slots.py); here: the run
    # says it waits, launches nothing, and starts the job once the memory is free.
    seen = []
    while not any("waiting for GPU memory" in line for line in seen):
        line = proc.stdout.readline()
        assert line, "perl run ended without waiting: " + "".join(seen)
        seen.append(line)
    assert "waiting for GPU memory: lora_s1 needs 3,000 MB" in seen[-1]
    assert launches(tmp_path) == [] and proc.poll() is None
    gpu_file.write_text(fake_gpus(4000, used=0))
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert launches(tmp_path) == ["lora_s1"]
