"""Readers' finding aids: --state/--only/--exclude, the worker's phase, a steady ETA, W&B links, 80 columns."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from suite_fixtures import build_mixed_suite, write_config, write_experiment
from typer.testing import CliRunner

from perl_cli import config as configlib
from perl_cli import experiments_view as views
from perl_cli import state as st
from perl_cli.cli import app

WANDB_LINE = "wandb: 🚀 View run lora_r16_s42 at: https://wandb.ai/lab/peft-rlvr/runs/1x2y3z\n"


def run_cli(*args: str, columns: int | None = None) -> tuple[int, str]:
    env = {"COLUMNS": str(columns)} if columns else {}
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


@pytest.fixture
def mixed(tmp_path: Path):
    cfg_path, out, exps = build_mixed_suite(tmp_path)
    return cfg_path, out, exps, ("--config", str(cfg_path), "--output", str(out))


def shown_names(text: str, exps) -> set[str]:
    return {e.name for e in exps if re.search(rf"(^|\s){re.escape(e.name)}(\s|$)", text, re.MULTILINE)}


def test_state_filter_on_every_reader(mixed) -> None:
    _, _, exps, common = mixed
    code, text = run_cli("status", "core", "--state", "failed,running", "--verbose", *common)
    assert code == 0
    assert shown_names(text, exps) == {"dora_r16_s42", "dora_r16_s123", "adalora_r16_s42", "adalora_r16_s123"}
    code, text = run_cli("status", "core", "--state", "failed", "--json", *common)
    assert {e["name"] for e in json.loads(text)["experiments"]} == {"adalora_r16_s42", "adalora_r16_s123"}
    code, text = run_cli("status", "core", "--state", "stalled", "--json", *common)
    assert [e["name"] for e in json.loads(text)["experiments"]] == ["dora_r16_s123"]
    code, text = run_cli("diagnose", "core", "--state", "interrupted", "--json", *common)
    data = json.loads(text)
    assert code == 0 and [e["name"] for e in data["experiments"]] == ["milora_r16_s42"]
    code, text = run_cli("report", "core", "--state", "completed", "--stdout", *common)
    assert code == 0 and "lora_r16_s42" in text and "adalora_r16_s42" not in text


def test_unknown_state_is_a_usage_error_listing_the_valid_ones(mixed) -> None:
    _, _, _, common = mixed
    for command in (("status", "core"), ("diagnose", "core"), ("report", "core", "--stdout"), ("watch", "core")):
        code, text = run_cli(*command, "--state", "failed,crashed", *common)
        assert code == 2, (command, text)
        assert "crashed" in text and all(s in text for s in (*st.STATES, "stalled")), text
        assert "Traceback" not in text


def test_only_and_exclude_take_globs(mixed) -> None:
    _, _, exps, common = mixed
    code, text = run_cli("status", "core", "--only", "*_s123", "--exclude", "lora_*", "--json", *common)
    assert code == 0
    assert {e["name"] for e in json.loads(text)["experiments"]} == {e.name for e in exps if e.name.endswith("_s123") and not e.name.startswith("lora_")}
    code, text = run_cli("diagnose", "core", "--only", "adalora_*", "--json", *common)
    assert {e["name"] for e in json.loads(text)["experiments"]} == {"adalora_r16_s42", "adalora_r16_s123"}
    code, text = run_cli("status", "core", "--only", "nosuch_*", *common)
    assert code == 2 and "nosuch_*" in text and "matches no experiment" in text


def test_report_file_is_never_narrowed(mixed) -> None:
    _, _, _, common = mixed
    code, text = run_cli("report", "core", "--state", "failed", *common)
    assert code == 2 and "--stdout" in text


def test_a_worker_building_its_model_shows_the_phase_not_zero_steps(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path)
    exp = configlib.expand(configlib.load(cfg_path), "core")[0]
    out = tmp_path / "output"
    write_experiment(out / "core", exp, state=st.RUNNING, step=0, metrics_rows=0, host="elsewhere",
                     status_extra={"phase": {"name": "warm start", "done": 500, "total": 600}})
    code, text = run_cli("status", "core", "--config", str(cfg_path), "--output", str(out))
    assert code == 0 and "warm start 500/600" in text and "0/100" not in text
    code, text = run_cli("status", "core", "--json", "--config", str(cfg_path), "--output", str(out))
    entry = next(e for e in json.loads(text)["experiments"] if e["name"] == exp.name)
    assert entry["phase"] == {"name": "warm start", "done": 500, "total": 600}
    # Once training runs the worker clears the phase, and the step counts again.
    st.update_status(out / "core" / exp.name, step=5, phase=None)
    view = views.load_suite(out, "core", configlib.load(cfg_path))
    assert view.experiments[0].phase is None and view.experiments[0].phase_text is None


def test_a_malformed_phase_makes_the_experiment_unreadable(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path)
    exp = configlib.expand(configlib.load(cfg_path), "core")[0]
    out = tmp_path / "output"
    write_experiment(out / "core", exp, state=st.RUNNING, step=0, status_extra={"phase": {"name": 3}})
    view = views.load_suite(out, "core", configlib.load(cfg_path))
    assert view.experiments[0].state == st.UNREADABLE and '"phase"' in view.experiments[0].problem


def test_one_experiment_at_step_1_does_not_swing_the_suite_eta(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path)
    cfg = configlib.load(cfg_path)
    exps = configlib.expand(cfg, "core")
    out = tmp_path / "output"
    sd = out / "core"
    for e in exps[2:]:
        write_experiment(sd, e, state=st.COMPLETED, step_seconds=1.0)
    write_experiment(sd, exps[0], state=st.RUNNING, step=60, step_seconds=1.0, host="elsewhere")
    steady = views.load_suite(out, "core", cfg).eta_s
    # A second worker has just done its first step: 40 s of compilation and warm-up.
    write_experiment(sd, exps[1], state=st.RUNNING, step=1, metrics_rows=1, step_seconds=40.0, started_ago=60,
                     host="elsewhere")
    view = views.load_suite(out, "core", cfg)
    new = next(e for e in view.experiments if e.name == exps[1].name)
    assert new.seconds_per_step is None  # too early to say
    assert new.eta_s is None
    # Both finish at the suite's observed 1 s per step: 99 steps left for the new one.
    assert view.eta_s == pytest.approx(99.0)
    # Before it started it was queued: 40 s + its 100 steps on one slot. Starting it shortens the ETA.
    assert steady == pytest.approx(140.0) and view.eta_s <= steady


def test_wandb_links_in_verbose_and_json(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path)
    exps = configlib.expand(configlib.load(cfg_path), "core")
    out = tmp_path / "output"
    running = write_experiment(out / "core", exps[0], state=st.RUNNING, step=40, host="elsewhere",
                               log=WANDB_LINE + "step 1\n" * 5000)
    done = write_experiment(out / "core", exps[1])
    for d in (running, done):
        config = json.loads((d / st.CONFIG_FILE).read_text())
        config["wandb"]["use_wandb"] = True
        st.atomic_write_json(d / st.CONFIG_FILE, config)
    ev = json.loads((done / st.EVAL_FILE).read_text())
    st.atomic_write_json(done / st.EVAL_FILE, {**ev, "wandb_url": "https://wandb.ai/lab/peft-rlvr/runs/done42"})
    common = ("--config", str(cfg_path), "--output", str(out))
    code, text = run_cli("status", "core", "--verbose", *common)
    assert "https://wandb.ai/lab/peft-rlvr/runs/1x2y3z" in text and "https://wandb.ai/lab/peft-rlvr/runs/done42" in text
    code, text = run_cli("status", "core", "--json", *common)
    urls = {e["name"]: e["wandb_url"] for e in json.loads(text)["experiments"]}
    assert urls[exps[0].name].endswith("/runs/1x2y3z") and urls[exps[1].name].endswith("/runs/done42")
    assert urls[exps[2].name] is None


@pytest.mark.parametrize("columns", [80, 100])
def test_status_never_cuts_a_name_and_fits_the_width(tmp_path: Path, columns: int) -> None:
    """`adalora_r16_…` three times: which one failed? Other columns go first."""
    cfg_path = write_config(tmp_path)
    exps = configlib.expand(configlib.load(cfg_path), "rank")
    out = tmp_path / "output"
    long_names = []
    for i, e in enumerate(exps):
        e = configlib.Experiment(**{**e.__dict__, "name": f"adalora_r16_lr5e-5_warmup0.1_{e.name}"}) if i < 3 else e
        long_names.append(e.name)
        write_experiment(out / "core_rank", e, state=(st.FAILED, st.RUNNING, st.COMPLETED)[i % 3], step=30, host="elsewhere")
    code, text = run_cli("status", "core_rank", "--verbose", "--config", str(cfg_path), "--output", str(out), columns=columns)
    assert code == 0
    for name in long_names:
        assert name in text, text
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= columns, text


def test_status_overview_never_cuts_a_suite_name(mixed) -> None:
    _, out, _, common = mixed
    long = "core-1.5b-adalora-rank-sweep"
    (out / "core").rename(out / long)
    code, text = run_cli("status", *common, columns=80)
    assert code == 0 and long in text and "…" not in text
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80
