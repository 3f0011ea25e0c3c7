"""`perl status`: states derived from the experiment directories, stalls, JSON, edge cases."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st_
from suite_fixtures import RUNNING_NOISY, ReadCounter, build_mixed_suite, this_host, write_config, write_experiment
from typer.testing import CliRunner

from perl_cli import config as configlib
from perl_cli import experiments_view as views
from perl_cli import logtail
from perl_cli import state as st
from perl_cli.cli import app
from perl_cli.logtail import last_json_rows, tail_bytes, tail_lines

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT_KEYS = {
    "name", "state", "step", "total_steps", "reward", "started", "ended", "duration_s", "eta_s", "gpu",
    "size_bytes", "stalled",
}


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def mixed(tmp_path: Path):
    return build_mixed_suite(tmp_path)


def test_states_of_a_partial_suite(mixed) -> None:
    cfg_path, out, exps = mixed
    view = views.load_suite(out, "core", configlib.load(cfg_path))
    states = {e.name: (e.state, e.stalled) for e in view.experiments}
    assert states == {
        "lora_r16_s42": ("completed", False),
        "lora_r16_s123": ("completed", False),
        "dora_r16_s42": ("running", False),
        "dora_r16_s123": ("running", True),
        "adalora_r16_s42": ("failed", False),
        "adalora_r16_s123": ("failed", False),
        "milora_r16_s42": ("interrupted", False),
        "milora_r16_s123": ("stale", False),
        "lora_plus_r16_s42": ("pending", False),
        "lora_plus_r16_s123": ("pending", False),
        "pissa_r16_s42": ("pending", False),
        "pissa_r16_s123": ("pending", False),
    }
    assert view.counts == {"pending": 4, "queued": 0, "running": 2, "completed": 2, "failed": 2, "interrupted": 1,
                           "stale": 1, "unreadable": 0}
    assert view.stalled == 1
    assert 0 < view.progress < 1
    assert view.size_bytes > 0


def test_eta_from_observed_step_times(mixed) -> None:
    cfg_path, out, _ = mixed
    view = views.load_suite(out, "core", configlib.load(cfg_path))
    running = {e.name: e for e in view.experiments}
    # 60 steps left at 2 s per step; a stalled run has no ETA.
    assert running["dora_r16_s42"].eta_s == pytest.approx(120)
    assert running["dora_r16_s123"].eta_s is None
    # One healthy slot: its 120 s + 4 pending x 100 steps + 67 interrupted steps, at 2 s.
    assert view.eta_s == pytest.approx(120 + (400 + 67) * 2)


def test_json_schema(mixed) -> None:
    cfg_path, out, _ = mixed
    code, text = run_cli("status", "core", "--json", "--config", str(cfg_path), "--output", str(out))
    assert code == 0
    data = json.loads(text)
    assert {"suite", "counts", "experiments", "progress", "eta_s", "size_bytes", "stalled"} <= set(data)
    assert data["suite"] == "core"
    assert set(data["counts"]) == set(st.STATES)
    assert len(data["experiments"]) == 12
    for e in data["experiments"]:
        assert EXPERIMENT_KEYS <= set(e)
        assert e["state"] in st.STATES and isinstance(e["stalled"], bool)
    completed = next(e for e in data["experiments"] if e["name"] == "lora_r16_s42")
    assert completed["step"] == completed["total_steps"] == 100
    assert completed["duration_s"] > 0 and completed["size_bytes"] > 0 and completed["gpu"] == 0
    pending = next(e for e in data["experiments"] if e["name"] == "pissa_r16_s42")
    assert pending["step"] is None and pending["total_steps"] == 100 and pending["size_bytes"] == 0


def test_a_slurm_experiment_names_its_task(tmp_path: Path) -> None:
    """An experiment run by `--backend slurm` shows its "<array>_<task>" id in --json and the table."""
    cfg_path = write_config(tmp_path)
    exp = configlib.expand(configlib.load(cfg_path), "core")[0]
    out = tmp_path / "out"
    write_experiment(out / "core", exp, state=st.COMPLETED, step=100,
                     status_extra={"slurm": {"job_id": "812_3", "array_job_id": "812", "node": "gpu-07"}})
    common = ("--config", str(cfg_path), "--output", str(out))
    code, text = run_cli("status", "core", "--json", *common)
    jobs = {e["name"]: e["slurm_job_id"] for e in json.loads(text)["experiments"]}
    assert jobs[exp.name] == "812_3" and {v for k, v in jobs.items() if k != exp.name} == {None}
    code, text = run_cli("status", "core", "--verbose", *common)
    assert code == 0 and "(slurm 812_3)" in text


def test_table_shows_attention_first_and_summarises_the_rest(mixed) -> None:
    cfg_path, out, _ = mixed
    code, text = run_cli("status", "core", "--config", str(cfg_path), "--output", str(out))
    assert code == 0
    assert "stalled" in text and "4 more (pending 4)" in text and "perl diagnose core" in text
    assert text.index("dora_r16_s123") < text.index("adalora_r16_s42") < text.index("lora_r16_s42 ")
    assert "pissa_r16_s42" not in text
    code, text = run_cli("status", "core", "--verbose", "--config", str(cfg_path), "--output", str(out))
    assert code == 0 and "pissa_r16_s42" in text and "more (" not in text


def test_overview_of_every_suite(mixed, tmp_path: Path) -> None:
    cfg_path, out, exps = mixed
    other = configlib.expand(configlib.load(cfg_path), "rank")
    write_experiment(out / "rank", other[0])
    code, text = run_cli("status", "--config", str(cfg_path), "--output", str(out))
    assert code == 0 and "core" in text and "rank" in text
    code, text = run_cli("status", "--json", "--config", str(cfg_path), "--output", str(out))
    data = json.loads(text)
    assert [s["suite"] for s in data["suites"]] == ["core", "rank"]
    assert data["suites"][1]["counts"]["completed"] == 1 and data["suites"][1]["counts"]["pending"] == 11


def test_stalled_is_a_flag_from_heartbeat_and_pid_not_from_log_text(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path)
    exps = configlib.expand(configlib.load(cfg_path), "core")
    sd = tmp_path / "output" / "core"
    me, start = os.getpid(), st.process_start_time(os.getpid())
    write_experiment(sd, exps[0], state=st.RUNNING, step=5, log=RUNNING_NOISY, host="elsewhere")     # fresh beat
    write_experiment(sd, exps[1], state=st.RUNNING, step=5, heartbeat_ago=601, host="elsewhere")     # old beat
    write_experiment(sd, exps[2], state=st.RUNNING, step=5, host=this_host(), pid=me,
                     status_extra={"pid_start_time": start})                                         # alive here
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_experiment(sd, exps[3], state=st.RUNNING, step=5, host=this_host(), pid=dead.pid)          # gone here
    view = views.load_suite(tmp_path / "output", "core", configlib.load(cfg_path))
    flags = {e.name: e.stalled for e in view.experiments if e.state == st.RUNNING}
    assert flags == {"lora_r16_s42": False, "lora_r16_s123": True, "dora_r16_s42": False, "dora_r16_s123": True}
    # The threshold is configurable.
    view = views.load_suite(tmp_path / "output", "core", configlib.load(cfg_path), stall_after_s=3600)
    assert not next(e for e in view.experiments if e.name == "lora_r16_s123").stalled
    code, text = run_cli("status", "core", "--json", "--stall-after", "3600", "--config", str(cfg_path),
                         "--output", str(tmp_path / "output"))
    assert json.loads(text)["stalled"] == 1


def test_suite_not_in_config_works_from_directories(mixed) -> None:
    cfg_path, out, _ = mixed
    (out / "core").rename(out / "laptop-copy")
    code, text = run_cli("status", "laptop-copy", "--json", "--config", str(cfg_path), "--output", str(out))
    assert code == 0
    data = json.loads(text)
    assert data["in_config"] is False and len(data["experiments"]) == 8
    assert data["counts"]["completed"] == 3  # no config to call one of them stale
    assert data["counts"]["pending"] == 0


def test_suite_in_config_without_directory_is_all_pending(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path)
    code, text = run_cli("status", "core", "--json", "--config", str(cfg_path), "--output", str(tmp_path / "out"))
    assert code == 0
    data = json.loads(text)
    assert data["counts"]["pending"] == 12 and data["progress"] == 0 and data["eta_s"] is None


def test_empty_output_and_unknown_suite(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path)
    code, text = run_cli("status", "--config", str(cfg_path), "--output", str(tmp_path / "nothing"))
    assert code == 0 and "No suites under" in text
    code, text = run_cli("status", "--json", "--config", str(cfg_path), "--output", str(tmp_path / "nothing"))
    assert code == 0 and json.loads(text)["suites"] == []
    code, text = run_cli("status", "nope", "--config", str(cfg_path), "--output", str(tmp_path / "nothing"))
    assert code == 2 and "no suite 'nope'" in text and "Traceback" not in text
    code, text = run_cli("status", "core", "--config", str(tmp_path / "missing.toml"))
    assert code == 2 and "missing.toml" in text


def test_tiny_and_odd_directories_do_not_break(tmp_path: Path) -> None:
    sd = tmp_path / "output" / "odd"
    (sd / "only_status").mkdir(parents=True)
    st.atomic_write_json(sd / "only_status" / st.STATUS_FILE, {"state": "running"})
    (sd / "only_config").mkdir()
    st.atomic_write_json(sd / "only_config" / st.CONFIG_FILE, {"name": "only_config"})
    (sd / "zero_steps").mkdir()
    st.atomic_write_json(sd / "zero_steps" / st.STATUS_FILE, {"state": "completed", "step": 0, "total_steps": 0,
                                                              "started": 1.0, "ended": 1.0})
    (sd / "garbage").mkdir()
    (sd / "garbage" / st.STATUS_FILE).write_text("{not json")
    (sd / "garbage" / st.METRICS_FILE).write_text('{"step": 1, "reward": 0.5}\n{"step": 2, "rew')
    (sd / "weird_state").mkdir()
    st.atomic_write_json(sd / "weird_state" / st.STATUS_FILE, {"state": "exploded", "step": "x", "gpu": [0, 1]})
    (sd / "lora.old-1700000000").mkdir()  # a kept previous attempt is not an experiment
    st.atomic_write_json(sd / "lora.old-1700000000" / st.STATUS_FILE, {"state": "failed"})
    cfg_path = write_config(tmp_path)
    for extra in ([], ["--json"], ["--verbose"]):
        code, text = run_cli("status", "odd", *extra, "--config", str(cfg_path), "--output", str(tmp_path / "output"))
        assert code == 0, text
    view = views.load_suite(tmp_path / "output", "odd")
    by_name = {e.name: e for e in view.experiments}
    assert set(by_name) == {"only_status", "only_config", "zero_steps", "garbage", "weird_state"}
    # Present but malformed status files make their experiment alone unreadable, naming the problem.
    assert by_name["garbage"].state == "unreadable" and "status.json is not valid JSON" in by_name["garbage"].problem
    assert by_name["weird_state"].state == "unreadable" and '"state" is \'exploded\'' in by_name["weird_state"].problem
    assert by_name["only_status"].state == "running" and by_name["only_config"].state == "pending"
    assert view.progress == 0.0


@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_watch_refreshes_until_ctrl_c(mixed, inherited: str) -> None:
    """Ctrl+C stops `status --watch`, also when it was started with SIGINT ignored.

    A shell without job control (`pytest ... &` in a script, some CI runners) starts
    background jobs with SIGINT ignored, and Python then installs no KeyboardInterrupt
    handler: that is how this test timed out in a full run, though it passed alone.
    The signal is sent only after the first snapshot, so it never races the start-up.
    """
    cfg_path, out, _ = mixed
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if inherited == "ignored" else None
    proc = subprocess.Popen(
        [sys.executable, "-m", "perl_cli", "status", "core", "--watch", "--json", "--interval", "0.2",
         "--config", str(cfg_path), "--output", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, preexec_fn=ignore,
    )
    try:
        first = json.loads(proc.stdout.readline())
        second = json.loads(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert first["suite"] == second["suite"] == "core"
    assert proc.returncode == 130, err  # interrupted, as the README promises (issue 22: it was 0)
    assert "Traceback" not in err


def test_status_imports_no_heavy_module(mixed) -> None:
    cfg_path, out, _ = mixed
    for command in ("status", "diagnose"):
        code = (
            "import sys\n"
            "from perl_cli.cli import app\n"
            f"try:\n    app([{command!r}, 'core', '--config', {str(cfg_path)!r}, '--output', {str(out)!r}])\n"
            "except SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'peft', 'textual', 'matplotlib', 'wandb')"
            " if m in sys.modules)\n"
            "print('HEAVY', heavy, file=sys.stderr)\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert "HEAVY []" in proc.stderr, proc.stderr


def test_logtail_reads_only_the_end(tmp_path: Path, monkeypatch) -> None:
    log = tmp_path / "train.log"
    assert tail_lines(log, 5) == [] and tail_bytes(log, 10) == b""
    log.write_text("")
    assert tail_lines(log, 5) == []
    with open(log, "w") as f:
        for i in range(200_000):
            f.write(f"line {i} {'x' * 60}\n")
        f.write("progress 1%\rprogress 50%\rprogress 99%")  # no final newline, \r rewrites
    reads = ReadCounter().install(monkeypatch)
    lines = tail_lines(log, 3)
    assert 0 < reads.bytes <= logtail.BLOCK_BYTES  # one block from the end of a 14 MB file
    assert lines == [f"line 199998 {'x' * 60}", f"line 199999 {'x' * 60}", "progress 99%"]
    assert len(tail_lines(log, 5000)) == 5000 and tail_lines(log, 5000)[0].startswith("line 195001 ")
    # A byte budget caps the read: only whole lines come back.
    capped = tail_lines(log, 10_000, max_bytes=1000)
    assert 0 < len(capped) < 20 and all(line.startswith(("line", "progress")) for line in capped)
    assert tail_bytes(log, 12) == b"progress 99%"
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": i}) + "\n" for i in range(1, 50)) + '{"step": 50, "rew')
    assert [r["step"] for r in last_json_rows(metrics, 3)] == [47, 48, 49]


@settings(max_examples=200, deadline=None)
@given(
    text=st_.text(alphabet="ab\n", max_size=300),
    n=st_.integers(min_value=1, max_value=40),
    block=st_.integers(min_value=1, max_value=16),
)
def test_tail_lines_matches_reading_the_whole_file(tmp_path_factory, text: str, n: int, block: int) -> None:
    path = tmp_path_factory.mktemp("tail") / "log"
    path.write_text(text)
    with patch.object(logtail, "BLOCK_BYTES", block):
        assert tail_lines(path, n) == text.splitlines()[-n:]


def test_broken_default_config_only_warns(mixed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Results copied to a laptop with a half-edited ./experiments.toml still show, from their directories."""
    _, out, _ = mixed
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments.toml").write_text("[suites.core\n")
    result = CliRunner().invoke(app, ["status", "core", "--json", "--output", str(out)])
    assert result.exit_code == 0
    assert "TOML syntax error" in result.stderr
    assert json.loads(result.stdout)["in_config"] is False
    # An explicit --config that is broken is a usage error.
    code, text = run_cli("status", "core", "--config", "experiments.toml", "--output", str(out))
    assert code == 2 and "TOML syntax error" in text
    code, text = run_cli("status", "core", "--watch", "--interval", "0", "--output", str(out))
    assert code == 2 and "--interval" in text
