"""The pure rules of perl_cli/outcomes.py and the Slurm option parsing: no processes, no sleeps."""

from __future__ import annotations

import re
import signal

import pytest

from perl_cli import outcomes
from perl_cli.outcomes import Ending, final_fields, retry_plan, smaller_batch
from perl_cli.scheduler import slurm, slurm_cli
from perl_cli.scheduler.slurm_cli import SlurmError

TRAINING = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}


# --- exit status → state ------------------------------------------------------------------


def test_the_worker_s_own_final_state_wins_over_its_exit_code() -> None:
    status = {"state": "failed", "pid": 10, "error": "RuntimeError: boom"}
    assert final_fields(Ending(1, pid=10), status) == {"exit_code": 1}
    assert final_fields(Ending(143, pid=10), {"state": "interrupted", "pid": 10}) == {"exit_code": 143}


def test_exit_codes_without_a_final_state() -> None:
    running = {"state": "running", "pid": 10}
    assert final_fields(Ending(0, pid=10), running)["state"] == "completed"
    assert final_fields(Ending(130, pid=10), running)["state"] == "interrupted"
    assert final_fields(Ending(143, pid=10), running)["state"] == "interrupted"
    failed = final_fields(Ending(3, pid=10), running)
    assert failed["state"] == "failed" and failed["error"] == "worker exited with code 3; see train.log"


def test_a_final_state_written_by_another_pid_does_not_count() -> None:
    # A stale status from an earlier attempt: the exit code decides.
    assert final_fields(Ending(0, pid=11), {"state": "failed", "pid": 10})["state"] == "completed"


def test_signals() -> None:
    killed = final_fields(Ending(-signal.SIGKILL, pid=10), {"state": "running", "pid": 10})
    assert killed == {"exit_code": 137, "signal": "SIGKILL", "state": "failed", "error": "killed by SIGKILL"}
    stopped = final_fields(Ending(-signal.SIGTERM, pid=10, stop_sent=True), {"state": "running", "pid": 10})
    assert stopped["state"] == "interrupted" and stopped["error"] == "stopped by perl run (SIGTERM)"
    # Killed after the grace period: interrupted even though the worker wrote a final state.
    late = final_fields(Ending(-9, pid=10, stop_sent=True, killed=True), {"state": "failed", "pid": 10})
    assert late["state"] == "interrupted" and late["signal"] == "SIGKILL"


def test_stall_kill_and_unknown_exit_of_an_adopted_worker() -> None:
    stalled = final_fields(Ending(-9, pid=10, stall_killed=True, stall_timeout="10m"), {"state": "running"})
    assert stalled["cause"] == "stalled" and stalled["state"] == "failed" and "10m" in stalled["error"]
    gone = final_fields(Ending(None, pid=10), {"state": "running", "pid": 10})
    assert gone["state"] == "failed" and "exit code unknown" in gone["error"]
    asked = final_fields(Ending(None, pid=10, stop_sent=True), {"state": "queued"})
    assert asked["state"] == "interrupted"
    assert final_fields(Ending(None, pid=10), {"state": "completed", "pid": 10}) == {}


def test_signal_names_and_codes() -> None:
    assert outcomes.signal_name(9) == "SIGKILL" and outcomes.signal_name("sigterm") == "SIGTERM"
    assert outcomes.signal_name(77) == "signal 77" and outcomes.signal_name(None) is None
    assert outcomes.was_killed({"exit_code": 137}) and outcomes.was_killed({"signal": 9})
    assert outcomes.was_interrupted({"exit_code": 143}) and not outcomes.was_interrupted({"exit_code": 1})


# --- retries ----------------------------------------------------------------------------


def plan(rc: int | None, status: dict | None = None, log: str = "", *, tries: int = 1, runtime: dict | None = None,
         training: dict | None = None, **flags: bool):
    return retry_plan(Ending(rc, **flags), status or {}, log, tries_left=tries, training=training or TRAINING,
                      runtime=runtime or {})


def test_cuda_oom_is_retried_with_a_smaller_batch_and_the_same_effective_batch() -> None:
    retry = plan(1, {"error": "OutOfMemoryError: CUDA out of memory"})
    assert retry == outcomes.Retry("CUDA out of memory", {"per_device_train_batch_size": 2,
                                                          "gradient_accumulation_steps": 4})
    # The second OOM halves what the first retry ran with.
    again = plan(1, log="torch.OutOfMemoryError: CUDA out of memory", runtime=retry.runtime)
    assert again.runtime == {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 8}
    # An odd batch goes to the largest divisor of the effective batch at most half (3 × 8 → 1 × 24): not refused.
    odd = plan(1, log="CUDA out of memory", training={"per_device_train_batch_size": 3,
                                                      "gradient_accumulation_steps": 8})
    assert odd.runtime == {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 24}
    assert plan(1, log="CUDA out of memory", runtime={"per_device_train_batch_size": 1,
                                                      "gradient_accumulation_steps": 8}) is None


def test_smaller_batch_matches_diagnose() -> None:
    assert smaller_batch(8, 1) == (4, 2)
    assert smaller_batch(6, 2) == (3, 4)
    assert smaller_batch(6, 1) == (3, 2)
    assert smaller_batch(5, 1) == (1, 5)
    assert smaller_batch(1, 16) is None


def test_what_a_retry_cannot_fix() -> None:
    oom = {"error": "CUDA out of memory"}
    assert plan(1, oom, tries=0) is None
    assert plan(1, {"cause": "disk_full", "error": "CUDA out of memory"}) is None
    assert plan(2, oom) is None  # config error
    assert plan(-9, oom) is None  # a signal
    assert plan(None, oom) is None  # an adopted worker's unknown exit
    assert plan(1, {"error": "RuntimeError: synthetic failure"}) is None
    assert plan(75) is None  # no worker sends EX_TEMPFAIL: it means nothing special


def test_a_stalled_worker_is_retried_from_its_checkpoint() -> None:
    retry = plan(-9, stall_killed=True, runtime={"per_device_train_batch_size": 2})
    assert retry == outcomes.Retry("stalled (no heartbeat)", {"per_device_train_batch_size": 2})
    assert plan(-9, stall_killed=True, tries=0) is None


# --- Slurm values -------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("1", 60), ("90", 5400), ("10:30", 630), ("4:00:00", 14400), ("1-00", 86400), ("2-12:30", 217800),
    ("1-00:00:01", 86401),
])
def test_slurm_time_formats(text: str, seconds: int) -> None:
    assert slurm_cli.parse_time(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "1:99:00", "abc", "1h", "-5", "1:2:3:4"])
def test_bad_slurm_times(text: str) -> None:
    with pytest.raises(ValueError):
        slurm_cli.parse_time(text)


def test_format_time_and_signal_delay() -> None:
    assert slurm_cli.format_time(14400) == "04:00:00" and slurm_cli.format_time(90000) == "1-01:00:00"
    assert slurm.signal_delay_s(60) == 30 and slurm.signal_delay_s(4 * 3600) == 120 and slurm.signal_delay_s(600) == 60


def test_slurm_options_merge_the_config_tables_under_the_command_line() -> None:
    opts = slurm.options_from({"partition": "gpu", "time": None, "slurm_args": ["qos=high"], "wait": True},
                              {"partition": "cpu", "time": "2:00:00", "mem": "64g", "args": {"constraint": "a100"}})
    assert (opts.partition, opts.time, opts.mem, opts.wait) == ("gpu", "2:00:00", "64G", True)
    assert opts.extra == {"constraint": "a100", "qos": "high"}


@pytest.mark.parametrize(("cli", "message"), [
    ({"time": "soon"}, "--time soon: not a Slurm time limit"),
    ({"mem": "many"}, "--mem many: expected a size"),
    ({"gpus_per_job": -1}, "--gpus-per-job -1: must be a whole number >= 0"),
    ({"array_parallelism": 0}, "--array-parallelism 0: must be a whole number >= 1"),
    ({"slurm_args": ["qos"]}, "--slurm-arg qos: expected KEY=VALUE"),
    ({"slurm_args": ["time=5"]}, "PeRL sets --time itself"),
])
def test_bad_slurm_options_are_usage_errors(cli: dict, message: str) -> None:
    with pytest.raises(SlurmError, match=re.escape(message)):
        slurm.options_from(cli, {})


def test_slurm_tables_in_experiments_toml(tmp_path) -> None:
    from perl_cli import config as configlib

    path = tmp_path / "experiments.toml"
    path.write_text("""
[slurm]
partition = "gpu"
time = "4:00:00"
[suites.s]
name = "{method}_s{seed}"
[suites.s.matrix]
method = ["lora"]
[suites.s.slurm]
time = "12:00:00"
args = { qos = "high" }
""")
    assert configlib.load(path).slurm_defaults("s") == {"partition": "gpu", "time": "12:00:00", "args": {"qos": "high"}}
    path.write_text(path.read_text().replace('time = "12:00:00"', "gpus_per_job = -1"))
    with pytest.raises(configlib.ConfigError, match=r"experiments.toml:\d+: suites.s.slurm.gpus_per_job = -1 must be"):
        configlib.load(path).slurm_defaults("s")
    path.write_text(path.read_text().replace("gpus_per_job = -1", 'partiton = "x"'))
    with pytest.raises(configlib.ConfigError, match="unknown key 'partiton'.*partition"):
        configlib.load(path).slurm_defaults("s")
