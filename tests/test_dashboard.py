"""W&B and trackio: what a run's record holds, read back from the files the libraries wrote.

The end-to-end tests train the tiny model offline (WANDB_MODE=offline, no network) and read
the W&B run record (`wandb/*/run-<id>.wandb`, wandb's own protobuf records, through
perl_cli/tracking/wandb_records.py) and trackio's local SQLite database; they compare what
was logged with the worker's own files (spectral_history.json, gradient_flow.json,
metrics.jsonl, eval.json), so a value is checked, not just a key.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perl_cli.tracking import wandb_records

ROOT = Path(__file__).resolve().parent.parent
SEED_TAGS = {"lora", "seed42", "r4", "ultra_low_rank", "data_scarcity", "spectral_tracking", "gradient_tracking"}


# --- the record reader (a writer of the same format, for round trips) ---------------------


def write_records(path: Path, payloads: list[bytes]) -> None:
    """A .wandb file of `payloads` in W&B's framing (LevelDB log blocks), as wandb-core writes it."""
    out = bytearray(wandb_records.MAGIC + b"\x00")
    for payload in payloads:
        rest, first = payload, True
        while True:
            room = wandb_records.BLOCK - len(out) % wandb_records.BLOCK
            if room < wandb_records.CHUNK_HEADER:
                out += b"\x00" * room
                continue
            take = room - wandb_records.CHUNK_HEADER
            chunk, rest = rest[:take], rest[take:]
            last = not rest
            kind = (
                wandb_records.FULL if first and last else wandb_records.FIRST if first
                else wandb_records.LAST if last else wandb_records.MIDDLE
            )
            crc = zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF
            out += struct.pack("<IHB", crc, len(chunk), kind) + chunk
            first = False
            if last:
                break
    path.write_bytes(bytes(out))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=70_000), max_size=6), st.data())
def test_reader_returns_every_record_across_blocks_and_a_prefix_of_a_cut_file(tmp_path_factory, payloads, data) -> None:
    path = tmp_path_factory.mktemp("rec") / "run-x.wandb"
    write_records(path, payloads)
    assert list(wandb_records.raw_records(path)) == payloads
    whole = path.read_bytes()
    cut = data.draw(st.integers(min_value=7, max_value=len(whole)))
    path.write_bytes(whole[:cut])
    got = list(wandb_records.raw_records(path))
    assert got == payloads[: len(got)]  # a killed writer leaves a readable prefix


def test_reader_refuses_what_is_not_a_wandb_record(tmp_path: Path) -> None:
    path = tmp_path / "run-x.wandb"
    path.write_bytes(b"not a record")
    with pytest.raises(wandb_records.RecordError, match="not a W&B run record"):
        list(wandb_records.raw_records(path))
    write_records(path, [b"abc"])
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(wandb_records.RecordError, match="checksum"):
        list(wandb_records.raw_records(path))
    assert wandb_records.last_step(tmp_path, "x") is None  # the worker never fails on it


# --- tags, group, run id -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "size"),
    [
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", None, "1.5B"),
        ("Qwen/Qwen2.5-7B-Instruct", None, "7B"),
        ("Qwen/Qwen2.5-Math-1.5B", None, "1.5B"),
        ("org/model-1_5b", None, "1.5B"),
        ("tiny-countdown", 137_920, "138K"),
        ("/models/mine", 1_543_714_304, "1.54B"),
        ("/models/mine", None, "unknown"),
    ],
)
def test_model_size_from_the_name_else_the_parameter_count(name: str, params: int | None, size: str) -> None:
    from perl_cli.tracking.dashboard import model_size

    assert model_size(name, params) == size


def _identity(exp, tmp_path: Path):
    from perl_cli.methods import get_method
    from perl_cli.tracking.dashboard import identity

    method = get_method(exp.method)
    return identity(tmp_path / exp.name, exp.resolved(), method.name, method.uses_rank, None)


@pytest.mark.parametrize(
    ("suite", "pick", "tags", "group"),
    [
        ("core-1.5b", lambda e: e.method == "lora" and e.seed == 42,
         {"lora", "seed42", "1.5B", "r16", "spectral_tracking", "gradient_tracking"}, "1.5B_lora"),
        ("core-7b", lambda e: e.method == "dora" and e.seed == 123, {"dora", "seed123", "7B", "r16"}, "7B_dora"),
        ("stress-rank", lambda e: e.rank == 4, {"r4", "ultra_low_rank"}, None),
        ("stress-rank", lambda e: e.rank == 256, {"r256", "high_rank"}, None),
        ("stress-data", lambda e: e.data_size == 1000, {"data_scarcity"}, None),
    ],
)
def test_the_shipped_suites_get_the_seeds_tags_and_group(tmp_path: Path, suite, pick, tags, group) -> None:
    from perl_cli import config as configlib

    exp = next(e for e in configlib.expand(configlib.load(ROOT / "perl_cli" / "experiments.toml"), suite) if pick(e))
    (tmp_path / exp.name).mkdir()
    ident = _identity(exp, tmp_path)
    assert tags <= set(ident.tags), ident.tags
    assert group is None or ident.group == group
    if exp.rank >= 8:
        assert "ultra_low_rank" not in ident.tags
    if exp.rank < 128:
        assert "high_rank" not in ident.tags


def test_rankless_methods_get_no_rank_tag(tmp_path: Path) -> None:
    from perl_cli.tracking.dashboard import tags_for

    config = {"peft": {"type": "ia3", "r": 4}, "common": {"seed": 1}, "dataset": {}, "tracker": {}, "wandb": {"tags": ["mine"]}}
    assert tags_for(config, "ia3", False, "1.5B") == ["ia3", "seed1", "1.5B", "mine"]


def test_the_run_id_is_kept_by_the_directory_and_new_for_a_fresh_one(tmp_path: Path) -> None:
    from perl_cli.tracking.dashboard import run_id

    (tmp_path / "a").mkdir()
    first = run_id(tmp_path / "a", "lora r16/s42", "0123456789ab")
    assert run_id(tmp_path / "a", "lora r16/s42", "0123456789ab") == first  # a resumed attempt
    assert first.startswith("lora_r16_s42-01234567-") and "/" not in first
    (tmp_path / "b").mkdir()
    assert run_id(tmp_path / "b", "lora r16/s42", "0123456789ab") != first  # `perl run --fresh`: a new run


# --- metrics from what the tracking callbacks computed ------------------------------------


def test_gradient_metrics_by_module_kind_and_flow() -> None:
    from perl_cli.tracking.dashboard import gradient_metrics

    layers = {
        "layers.0.self_attn.q_proj": {"A": 3.0, "B": 4.0},
        "layers.1.self_attn.q_proj": {"A": 0.0, "B": 1.0},
    }
    m = gradient_metrics(layers)
    assert m["grad_norm/layers.0.self_attn.q_proj/A"] == 3.0 and m["grad_norm/layers.1.self_attn.q_proj/B"] == 1.0
    assert m["grad_flow/total_norm"] == pytest.approx(math.sqrt(9 + 16 + 1))
    assert m["grad_flow/norm_A"] == 3.0 and m["grad_flow/norm_B"] == pytest.approx(math.sqrt(17))
    assert m["grad_flow/ratio_B_over_A"] == pytest.approx(math.sqrt(17) / 3)
    assert (m["grad_flow/module_norm_max"], m["grad_flow/module_norm_min"]) == (5.0, 1.0)
    assert m["grad_flow/last_over_first_layer"] == pytest.approx(1 / 5)
    assert m["grad_flow/module_norm_cv"] == pytest.approx(2 / 3)


def test_spectral_metrics_per_layer_and_over_layers() -> None:
    from perl_cli.tracking.dashboard import spectral_metrics

    layers = {
        "a": {"effective_rank": 2.0, "condition_number": 10.0, "stable_rank": 1.5, "spectral_norm": 0.5},
        "b": {"effective_rank": 4.0, "condition_number": None, "stable_rank": 2.5, "spectral_norm": 0.25},
    }
    m = spectral_metrics(layers)
    assert m["spectral_effective_rank/a"] == 2.0 and "spectral_condition_number/b" not in m
    assert m["spectral/effective_rank_mean"] == 3.0 and m["spectral/condition_number_max"] == 10.0
    assert m["spectral/stable_rank_mean"] == 2.0 and m["spectral/spectral_norm_max"] == 0.5


def test_results_summary_holds_base_trained_sampled_greedy_with_se_and_nested_benchmarks() -> None:
    from perl_cli.tracking.dashboard import results_summary

    results = {
        "accuracy_sampled": 0.3, "accuracy_sampled_se": 0.02, "accuracy_greedy": 0.25, "accuracy_greedy_se": 0.03,
        "base_accuracy_sampled": 0.2, "base_accuracy_sampled_se": 0.02, "base_accuracy_greedy": 0.2,
        "base_accuracy_greedy_se": 0.03, "trainable_pct": 0.5, "method": "lora", "device": "cpu",
        "benchmarks": {"math500": {"accuracy": 0.4}},
    }
    s = results_summary(results)
    assert s["eval/accuracy_sampled"] == 0.3 and s["eval/base_accuracy_greedy_se"] == 0.03
    assert s["eval/gain_sampled"] == pytest.approx(0.1) and s["eval/gain_greedy"] == pytest.approx(0.05)
    assert s["results/trainable_pct"] == 0.5 and s["results/benchmarks/math500/accuracy"] == 0.4
    assert not any("method" in k or "device" in k for k in s)


# --- the callback's rows, with a backend that keeps them in memory ---------------------------


class MemoryBackend:
    """Records what the callback logs (the end-to-end tests below read the real libraries' files)."""

    def __init__(self, name: str = "wandb", recorded: int | None = None, fail: bool = False) -> None:
        self.name, self.recorded, self.fail = name, recorded, fail
        self.rows: list[tuple[int, dict]] = []
        self.summary: dict = {}
        self.finished: int | None = None

    def start(self, identity: Any) -> int | None:
        if self.fail:
            raise ConnectionError("no network")
        return self.recorded

    def log(self, metrics: dict, step: int) -> None:
        self.rows.append((step, dict(metrics)))

    def histogram(self, values: list[float]) -> Any:
        return ("hist", len(values))

    def image(self, png: bytes, caption: str) -> Any:
        return ("png", png[:4])

    def summarize(self, values: dict, step: int | None) -> None:
        self.summary.update(values)

    def finish(self, exit_code: int = 0) -> dict:
        self.finished = exit_code
        return {}


def _callback(backend: MemoryBackend):
    from perl_cli.tracking.dashboard import DashboardCallback, Identity

    ident = Identity("p", "exp", "exp-1", "1.5B_lora", ["lora"], {})
    return DashboardCallback(backend, ident, on_gpu=False, spectral_images=False, gradient_images=False)


class _State:
    def __init__(self, step: int, max_steps: int = 3) -> None:
        self.global_step, self.max_steps = step, max_steps


def _train_steps(cb, steps: range, max_steps: int) -> None:
    for step in steps:
        cb.on_step_begin(None, _State(step - 1, max_steps), None)
        cb.gradient(step, [{"step": step, "seconds": 0.0, "layers": {"layers.0.q": {"A": 1.0, "B": 2.0}}}])
        cb.on_step_end(None, _State(step, max_steps), None)
        cb.on_log(None, _State(step, max_steps), None, logs={"reward": 0.5, "loss": 0.1})
    cb.on_train_end(None, _State(steps[-1], max_steps), None)


def test_one_row_per_step_and_the_results_in_the_summary() -> None:
    backend = MemoryBackend()
    cb = _callback(backend)
    _train_steps(cb, range(1, 4), 3)
    assert [s for s, _ in backend.rows] == [1, 2]  # the last row waits for the evaluation
    cb.finish({"accuracy_sampled": 0.5, "base_accuracy_sampled": 0.25})
    assert [s for s, _ in backend.rows] == [1, 2, 3] and backend.finished == 0
    assert all({"train/reward", "memory/cpu_rss_mb", "grad_norm/layers.0.q/B"} <= set(r) for _, r in backend.rows)
    assert backend.summary["eval/gain_sampled"] == 0.25 and "eval/accuracy_sampled" not in backend.rows[-1][1]


def test_trackio_gets_the_results_in_the_last_row() -> None:
    backend = MemoryBackend("trackio")
    cb = _callback(backend)
    _train_steps(cb, range(1, 4), 3)
    cb.finish({"accuracy_sampled": 0.5})
    assert backend.rows[-1][0] == 3 and backend.rows[-1][1]["eval/accuracy_sampled"] == 0.5


def test_steps_the_record_holds_are_not_logged_again_and_a_stop_closes_the_run() -> None:
    backend = MemoryBackend(recorded=5)  # an attempt that died after step 5; the checkpoint was step 3
    cb = _callback(backend)
    _train_steps(cb, range(4, 8), 10)  # stopped by a signal after step 7
    assert [s for s, _ in backend.rows] == [6, 7] and backend.finished == 143


def test_a_dashboard_that_cannot_start_does_not_stop_training(capsys) -> None:
    backend = MemoryBackend(fail=True)
    cb = _callback(backend)
    _train_steps(cb, range(1, 4), 3)
    assert cb.finish({"accuracy_sampled": 0.5}) == {} and backend.rows == []
    assert "could not start (ConnectionError: no network); training goes on" in capsys.readouterr().out


# --- the schema -----------------------------------------------------------------------------


def test_the_dashboard_keys_are_accepted_and_leave_fingerprints_alone(tmp_path: Path) -> None:
    from perl_cli import config as configlib

    base = "[base.training]\nmax_steps = 10\n[suites.mini]\nname = \"{method}_s{seed}\"\n[suites.mini.matrix]\nmethod = [\"lora\"]\nseed = [1]\n"
    path = tmp_path / "experiments.toml"
    path.write_text(base)
    before = configlib.expand(configlib.load(path), "mini")[0]
    path.write_text(base + "[base.wandb]\nuse_wandb = true\nbackend = \"trackio\"\nlog_spectral_images = false\nlog_gradient_images = false\n")
    exp = configlib.expand(configlib.load(path), "mini")[0]
    assert exp.config["wandb"]["backend"] == "trackio" and exp.config["wandb"]["log_gradient_images"] is False
    with_wandb = configlib.expand(configlib.load(path), "mini")[0]
    path.write_text(base + "[base.wandb]\nuse_wandb = true\n")
    assert configlib.expand(configlib.load(path), "mini")[0].fingerprint == with_wandb.fingerprint
    assert before.config["wandb"]["log_spectral_images"] is True  # the seed's default
    path.write_text(base + "[base.wandb]\nbackend = \"tensorboard\"\n")
    with pytest.raises(configlib.ConfigError, match=r"wandb\.backend.*wandb, trackio"):
        configlib.expand(configlib.load(path), "mini")


# --- end to end: a tiny offline run, read back ---------------------------------------------


def _train(root: Path, name: str, **overrides: Any) -> Path:
    from training_support import make_config, write_experiment

    from perl_cli.train import run_experiment

    config = make_config(
        name,
        training__max_steps=4,
        wandb__use_wandb=True,
        tracker__enable_spectral_tracking=True,
        tracker__enable_gradient_tracking=True,
        tracker__spectral_log_frequency=2,
        tracker__gradient_log_frequency=2,
        **overrides,
    )
    exp = write_experiment(root, config)
    assert run_experiment(exp) == 0, (exp / "status.json").read_text()
    return exp


# The worker, with the shaped reward (so that adapters and gradients move), in its own process:
# trackio reads TRACKIO_DIR once, when TRL imports it, and the worker sets it before that.
SHAPED_WORKER = (
    "import sys; sys.path.insert(0, sys.argv[2]); import training_support; from perl_cli import rewards; "
    "rewards.reward_functions = training_support.shaped_reward_functions; "
    "from perl_cli.train import run_experiment; sys.exit(run_experiment(sys.argv[1]))"
)


def _train_in_process_of_its_own(root: Path, name: str, **overrides: Any) -> Path:
    from training_support import CACHE_DIR, make_config, write_experiment

    config = make_config(name, training__max_steps=4, wandb__use_wandb=True, tracker__enable_spectral_tracking=True,
                         tracker__enable_gradient_tracking=True, tracker__spectral_log_frequency=2,
                         tracker__gradient_log_frequency=2, **overrides)
    exp = write_experiment(root, config)
    env = {k: v for k, v in os.environ.items() if k != "TRACKIO_DIR"}
    env.update(PERL_CACHE_DIR=str(CACHE_DIR), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), WANDB_MODE="offline")
    with open(exp / "train.log", "w") as log:
        code = subprocess.run([sys.executable, "-c", SHAPED_WORKER, str(exp), str(ROOT / "tests")], stdout=log,
                              stderr=log, env=env, timeout=600).returncode
    assert code == 0, (exp / "train.log").read_text()[-3000:]
    return exp


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same tiny experiment logged to W&B (offline) and to trackio (its database in the suite directory)."""
    from training_support import shaped_reward_functions

    from perl_cli import rewards

    root = tmp_path_factory.mktemp("suite")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rewards, "reward_functions", shaped_reward_functions)
        mp.setenv("WANDB_MODE", "offline")
        wandb_run = _train(root, "wb")
    trackio_run = _train_in_process_of_its_own(root, "tio", wandb__backend="trackio", wandb__log_gradient_images=False)
    return {"wandb": wandb_run, "trackio": trackio_run}


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _wandb_record(exp: Path) -> wandb_records.RunRecord:
    records = wandb_records.read_runs(exp / "wandb")
    assert len(records) == 1
    return records[0]


def _trackio(exp: Path) -> tuple[list[tuple[int, dict]], dict]:
    from perl_cli.tracking.dashboard_backends import trackio_config, trackio_rows

    ev = _json(exp / "eval.json")
    run, directory, project = ev["trackio_run"], Path(ev["trackio_dir"]), ev["trackio_project"]
    assert directory == exp.parent / "trackio"  # the suite directory, not the user's home
    return trackio_rows(directory, project, run), trackio_config(directory, project, run)


@pytest.mark.slow
def test_the_wandb_record_holds_spectra_gradients_memory_images_results_tags_and_group(runs) -> None:
    exp = runs["wandb"]
    rec = _wandb_record(exp)
    ev = _json(exp / "eval.json")
    assert rec.run_id == _json(exp / "dashboard.json")["run_id"] and rec.project == "peft-rlvr-mechanistic"
    size = rec.config["model_size"]
    assert size.endswith("K") and rec.group == f"{size}_lora"
    assert SEED_TAGS | {size} <= set(rec.tags), rec.tags
    assert rec.steps == [0, 1, 2, 3, 4]
    rows = {row["_step"]: row for row in rec.history}

    # Spectra at steps 0, 2, 4: the tracking callback's numbers, not recomputed.
    spectra = {s["step"]: s["layers"] for s in _json(exp / "spectral_history.json")["history"]}
    assert sorted(spectra) == [0, 2, 4]
    for step, layers in spectra.items():
        row = rows[step]
        for module, summary in layers.items():
            assert row[f"spectral_effective_rank/{module}"] == pytest.approx(summary["effective_rank"])
            if summary["condition_number"] is not None:
                assert row[f"spectral_condition_number/{module}"] == pytest.approx(summary["condition_number"])
            hist = row[f"spectral_singular_values/{module}"]
            assert hist["_type"] == "histogram" and sum(hist["values"]) == len(summary["singular_values"])
        assert row["spectral/effective_rank_mean"] == pytest.approx(
            sum(v["effective_rank"] for v in layers.values()) / len(layers))
    assert max(rows[4]["spectral/spectral_norm_max"], 0) > 0  # the adapter learned something

    # Gradients at steps 2 and 4, by module and A/B, with flow statistics.
    flow = {s["step"]: s["layers"] for s in _json(exp / "gradient_flow.json")["history"]}
    assert sorted(flow) == [2, 4]
    for step, layers in flow.items():
        for module, kinds in layers.items():
            for kind, norm in kinds.items():
                assert rows[step][f"grad_norm/{module}/{kind}"] == pytest.approx(norm)
        assert rows[step]["grad_flow/total_norm"] > 0 and "grad_flow/ratio_B_over_A" in rows[step]
    assert not any(k.startswith("grad_") for k in rows[1] | rows[3])

    # Images: PNG files in the run's media directory, at the tracking steps.
    run_dir = wandb_records.run_files(exp / "wandb")[0].parent
    for step, keys in ((0, ["spectral_images/singular_values", "spectral_images/effective_rank"]),
                       (2, ["spectral_images/singular_values", "grad_images/heatmap"]),
                       (4, ["spectral_images/effective_rank", "grad_images/heatmap"])):
        for key in keys:
            image = rows[step][key]
            assert image["_type"] == "image-file" and image["width"] > 300
            assert (run_dir / "files" / image["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Memory every step; training metrics as metrics.jsonl has them.
    metrics = {m["step"]: m for m in (json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines())}
    for step in (1, 2, 3, 4):
        assert rows[step]["memory/cpu_rss_mb"] > 50
        assert rows[step]["train/reward"] == pytest.approx(metrics[step]["reward"])
        assert rows[step]["train/global_step"] == step
        if ev["device"] == "cuda":
            assert rows[step]["memory/gpu_allocated_mb"] > 0

    # The held-out evaluation in the summary, as eval.json has it.
    for key in ("accuracy_sampled", "accuracy_sampled_se", "accuracy_greedy", "accuracy_greedy_se",
                "base_accuracy_sampled", "base_accuracy_sampled_se", "base_accuracy_greedy", "base_accuracy_greedy_se"):
        assert rec.summary[f"eval/{key}"] == pytest.approx(ev[key]), key
    assert rec.summary["eval/gain_sampled"] == pytest.approx(ev["accuracy_sampled"] - ev["base_accuracy_sampled"])
    assert rec.summary["results/trainable_params"] == ev["trainable_params"]
    assert rec.summary["train/train_loss"] is not None and rec.exit_code == 0
    assert ev["wandb_dir"] == str(run_dir)


@pytest.mark.slow
def test_the_record_can_be_read_without_network_from_the_command_line(runs) -> None:
    out = subprocess.run([sys.executable, "-m", "perl_cli.tracking.wandb_records", str(runs["wandb"] / "wandb")],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "5 steps (0–4)" in out.stdout and "spectral_images" in out.stdout and "eval/accuracy_sampled = " in out.stdout
    assert re.search(r"group [\d.]+[KMB]_lora\n", out.stdout), out.stdout


def _shape(key: str) -> str:
    """A key with its module name replaced, to compare key families."""
    parts = key.split("/")
    return parts[0] + "/*" if parts[0] in ("spectral_effective_rank", "spectral_condition_number",
                                          "spectral_singular_values", "grad_norm") else key


@pytest.mark.slow
def test_trackio_logs_the_same_keys_into_its_local_database(runs) -> None:
    wb, tio = runs["wandb"], runs["trackio"]
    rows, config = _trackio(tio)
    steps = [step for step, _ in rows]
    assert steps == [0, 1, 2, 3, 4]  # one row per step: no step twice
    by_step = dict(rows)
    tio_keys = {k for _, m in rows for k in m}
    wb_keys = {k for k in _wandb_record(wb).keys() if not k.startswith("_")}
    wb_keys |= {k for k in _wandb_record(wb).summary if k.startswith(("eval/", "results/"))}
    # The same keys, less the gradient heatmap this run switched off, and the end-of-training
    # summary Trainer reports (a W&B summary; trackio has none).
    expected = {k for k in wb_keys if not k.startswith("grad_images/")
                and k not in {f"train/{x}" for x in ("train_runtime", "train_loss", "train_samples_per_second",
                                                     "train_steps_per_second", "total_flos")}}
    assert {_shape(k) for k in tio_keys} == {_shape(k) for k in expected}
    assert {k for k in tio_keys if k.startswith("spectral_effective_rank/")} == {
        k for k in wb_keys if k.startswith("spectral_effective_rank/")}
    assert not any(k.startswith("grad_images/") for k in tio_keys)  # log_gradient_images = false
    # Histograms and images in trackio's own types, images as files in its media directory.
    hist = by_step[2]["spectral_singular_values/" + next(iter(_json(tio / "spectral_history.json")["history"][0]["layers"]))]
    assert hist["_type"] == "trackio.histogram"
    image = by_step[4]["spectral_images/singular_values"]
    assert image["_type"] == "trackio.image"
    media = list((tio.parent / "trackio" / "media").rglob("*.png"))
    assert len(media) == 6  # two spectral images at steps 0, 2, 4
    ev = _json(tio / "eval.json")
    assert by_step[4]["eval/accuracy_sampled"] == pytest.approx(ev["accuracy_sampled"])
    assert by_step[4]["eval/base_accuracy_greedy_se"] == pytest.approx(ev["base_accuracy_greedy_se"])
    assert by_step[3]["memory/cpu_rss_mb"] > 50
    assert SEED_TAGS <= set(config["tags"]) and config["_Group"].endswith("_lora")


# --- resume: the same run, no step twice ------------------------------------------------------


def _spawn(exp: Path, **env: str) -> subprocess.Popen:
    from training_support import CACHE_DIR

    full = {**os.environ, "PERL_CACHE_DIR": str(CACHE_DIR), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
            "WANDB_MODE": "offline", **env}
    log = open(exp / "train.log", "a")  # noqa: SIM115 - closed with the process
    # Its own session, as the scheduler starts it: a stop signal goes to the whole group
    # (wandb's service process included), as `perl cancel` and the scheduler send it.
    return subprocess.Popen([sys.executable, "-m", "perl_cli.train", str(exp)], stdout=log, stderr=log, env=full,
                            start_new_session=True)


def _wait(proc: subprocess.Popen, exp: Path, timeout: float = 180) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError((exp / "train.log").read_text()[-3000:]) from None


@pytest.mark.slow
def test_a_resumed_experiment_continues_the_same_wandb_run_without_duplicate_steps(tmp_path: Path) -> None:
    """A crash after a checkpoint (steps redone), then SIGTERM to the process group, then the end."""
    from training_support import make_config, read_metrics, write_experiment

    from perl_cli.models import builtin_model_path
    from perl_cli.train import run_experiment

    builtin_model_path("builtin:tiny-random")
    total = 20
    config = make_config(
        "resume", training__max_steps=total, training__save_steps=3, eval__enabled=False, wandb__use_wandb=True,
        tracker__enable_gradient_tracking=True, tracker__gradient_log_frequency=1,
    )
    exp = write_experiment(tmp_path, config)

    # 1: fails as step 6 begins; the last checkpoint is step 3, so steps 4 and 5 are redone.
    assert _wait(_spawn(exp, PERL_TEST_FAIL_AT_STEP="6"), exp) == 1, (exp / "train.log").read_text()[-3000:]
    first = wandb_records.read_runs(exp / "wandb")
    assert [r.steps for r in first] == [[1, 2, 3, 4, 5]]

    # 2: stopped by SIGTERM to its process group once it is past step 8.
    proc = _spawn(exp)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if (exp / "metrics.jsonl").exists() and max((r["step"] for r in read_metrics(exp)), default=0) >= 8:
            break
        time.sleep(0.1)
    assert proc.poll() is None, (exp / "train.log").read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGTERM)
    assert _wait(proc, exp, 60) == 143, (exp / "train.log").read_text()[-3000:]
    stopped = _json(exp / "status.json")["step"]
    assert 8 <= stopped < total

    # 3: resumes from the checkpoint saved at the stop, and completes.
    assert run_experiment(exp) == 0
    records = wandb_records.read_runs(exp / "wandb")
    assert len(records) == 3 and len({r.run_id for r in records}) == 1  # one W&B run, three attempts
    steps = [s for r in records for s in r.steps]
    assert len(steps) == len(set(steps)), f"a step logged twice: {[r.steps for r in records]}"
    assert sorted(steps) == list(range(1, total + 1))
    assert records[1].steps[0] == 6 and records[1].steps[-1] == stopped  # 4 and 5 were not logged again
    assert records[2].steps == list(range(stopped + 1, total + 1))
    assert all("grad_flow/total_norm" in row and "memory/cpu_rss_mb" in row for r in records for row in r.history)
    assert "steps 4–5 were redone after the checkpoint and are already in the run's record" in (
        exp / "train.log").read_text()
