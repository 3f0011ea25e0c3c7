"""`perl diagnose`: every classification rule, running never a failure, fixes `perl run` accepts."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from suite_fixtures import (
    CUDA_OOM,
    EXPECTED_CAUSE,
    FAILURE_LOGS,
    RUNNING_NOISY,
    ReadCounter,
    build_mixed_suite,
    failure,
    sparse_prefix,
    write_config,
    write_experiment,
)
from typer.testing import CliRunner

from perl_cli import config as configlib
from perl_cli import diagnose as dg
from perl_cli import experiments_view as views
from perl_cli import logtail
from perl_cli import state as st
from perl_cli.cli import app

ROOT = Path(__file__).resolve().parent.parent
# `perl run` flags a suggested command may use (the README's command table).
RUN_FLAGS_WITH_VALUE = {"--only", "--set", "--config", "--output", "--backend", "--time", "--mem", "--slurm-arg",
                        "--partition", "--account", "--gpus-per-job", "--cpus-per-job", "--array-parallelism"}
RUN_FLAGS = {"--fresh"}


# The failures were on GPUs: dry runs of their fixes see one (large) GPU, not this CPU.
ONE_GPU = {"PERL_FAKE_GPUS": '[{"index": 0, "name": "A100", "memory_total_mb": 81920}]'}


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=ONE_GPU)
    return result.exit_code, result.output


@pytest.fixture
def every_failure(tmp_path: Path):
    """Suite "wide" with one failed experiment per FAILURE_LOGS entry: (config, output, {name: key})."""
    cfg_path = write_config(tmp_path)
    exps = configlib.expand(configlib.load(cfg_path), "wide")
    assert len(exps) >= len(FAILURE_LOGS)
    out = tmp_path / "output"
    names = {}
    for key, exp in zip(FAILURE_LOGS, exps, strict=False):
        failure(out / "wide", exp, key)
        names[exp.name] = key
    return cfg_path, out, names


def diagnose_dir(out: Path, cfg_path: Path | None = None, suite: str = "core", **kw):
    cfg = configlib.load(cfg_path) if cfg_path else None
    view = views.load_suite(out, suite, cfg)
    return view, dg.diagnose_suite(view, config_path=cfg_path, output=out, **kw)


def test_every_rule_classifies_its_failure(every_failure) -> None:
    cfg_path, out, names = every_failure
    _, diagnoses = diagnose_dir(out, cfg_path, "wide")
    got = {d.name: d.cause for d in diagnoses}
    assert got == {name: EXPECTED_CAUSE[key] for name, key in names.items()}
    assert set(EXPECTED_CAUSE.values()) | {"stalled", "unreadable"} == set(dg.CAUSES)


@pytest.mark.parametrize("key", sorted(FAILURE_LOGS))
def test_rule_from_log_tail_alone(tmp_path: Path, key: str, monkeypatch) -> None:
    """The same logs after 4 GB of earlier output: only the tail is read."""
    cfg_path = write_config(tmp_path)
    exp = configlib.expand(configlib.load(cfg_path), "core")[0]
    d = failure(tmp_path / "output" / "core", exp, key)
    log, _ = FAILURE_LOGS[key]
    sparse_prefix(d / st.LOG_FILE, 4 * 2**30)
    with open(d / st.LOG_FILE, "a") as f:
        f.write("{'loss': 0.02, 'grad_norm': 0.4, 'learning_rate': 1e-05, 'reward': 0.3}\n" * 1000)
        f.write(log)
    reads = ReadCounter().install(monkeypatch)
    _, diagnoses = diagnose_dir(tmp_path / "output", cfg_path)
    assert [d.cause for d in diagnoses] == [EXPECTED_CAUSE[key]]
    assert 0 < reads.bytes <= logtail.MAX_TAIL_BYTES + logtail.BLOCK_BYTES


def test_running_experiments_are_never_failures(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path)
    exps = configlib.expand(configlib.load(cfg_path), "core")
    sd = tmp_path / "output" / "core"
    write_experiment(sd, exps[0], state=st.RUNNING, step=5, log=RUNNING_NOISY, host="elsewhere")
    write_experiment(sd, exps[1], state=st.RUNNING, step=5, log=CUDA_OOM + "timeout error Traceback", host="elsewhere")
    write_experiment(sd, exps[2])
    _, diagnoses = diagnose_dir(tmp_path / "output", cfg_path)
    assert diagnoses == []
    code, text = run_cli("diagnose", "core", "--config", str(cfg_path), "--output", str(tmp_path / "output"))
    assert code == 0 and "no failed, interrupted or stalled" in text and "2 running" in text


def test_stalled_running_experiment_is_diagnosed_as_stalled(mixed_suite) -> None:
    cfg_path, out, _ = mixed_suite
    _, diagnoses = diagnose_dir(out, cfg_path)
    stalled = [d for d in diagnoses if d.stalled]
    assert [(d.name, d.cause, d.state) for d in stalled] == [("dora_r16_s123", "stalled", "running")]
    assert "no heartbeat" in stalled[0].summary


@pytest.fixture
def mixed_suite(tmp_path: Path):
    return build_mixed_suite(tmp_path)


def test_exit_codes(mixed_suite, tmp_path: Path) -> None:
    cfg_path, out, _ = mixed_suite
    code, text = run_cli("diagnose", "core", "--config", str(cfg_path), "--output", str(out))
    assert code == 1
    assert "CUDA out of memory" in text and "--set training.per_device_train_batch_size=2" in text
    # Interrupted alone is not a failure.
    cfg = configlib.load(cfg_path)
    exps = configlib.expand(cfg, "core")
    out2 = tmp_path / "out2"
    failure(out2 / "core", exps[0], "interrupted")
    write_experiment(out2 / "core", exps[1])
    code, text = run_cli("diagnose", "core", "--config", str(cfg_path), "--output", str(out2))
    assert code == 0 and "interrupted" in text and f"perl run core --only {exps[0].name}" in text
    # Empty output, missing suite, bad flags.
    code, text = run_cli("diagnose", "--config", str(cfg_path), "--output", str(tmp_path / "none"))
    assert code == 0 and "nothing to diagnose" in text
    code, text = run_cli("diagnose", "core", "--config", str(cfg_path), "--output", str(tmp_path / "none"))
    assert code == 0 and "no failed" in text
    code, text = run_cli("diagnose", "ghost", "--config", str(cfg_path), "--output", str(tmp_path / "none"))
    assert code == 2 and "no suite 'ghost'" in text
    code, text = run_cli("diagnose", "core", "--lines", "-1", "--config", str(cfg_path), "--output", str(out))
    assert code == 2 and "--lines" in text


def test_json_schema(mixed_suite) -> None:
    cfg_path, out, _ = mixed_suite
    code, text = run_cli("diagnose", "core", "--json", "--config", str(cfg_path), "--output", str(out))
    assert code == 1
    data = json.loads(text)
    assert {"suite", "checked", "problems", "failures", "counts", "groups", "experiments"} <= set(data)
    assert data["checked"] == 12 and data["problems"] == 4 and data["failures"] == 3
    assert data["counts"] == {"host_oom": 1, "cuda_oom": 1, "stalled": 1, "interrupted": 1}
    for group in data["groups"]:
        assert {"cause", "title", "experiments"} <= set(group)
    for e in data["experiments"]:
        assert {"name", "state", "stalled", "cause", "title", "summary", "exit_code", "signal", "error", "lines",
                "traceback", "fix"} <= set(e)
        assert {"text", "commands"} <= set(e["fix"]) and e["fix"]["text"]
    oom = next(e for e in data["experiments"] if e["cause"] == "cuda_oom")
    assert oom["summary"].startswith("torch.OutOfMemoryError: CUDA out of memory")
    assert oom["traceback"].startswith("Traceback (most recent call last):")


def test_lines_and_verbose(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path)
    exp = configlib.expand(configlib.load(cfg_path), "core")[0]
    failure(tmp_path / "output" / "core", exp, "hub_offline")
    args = ("--config", str(cfg_path), "--output", str(tmp_path / "output"))
    code, text = run_cli("diagnose", "core", "--json", "--lines", "4", *args)
    (entry,) = json.loads(text)["experiments"]
    assert len(entry["lines"]) == 4 and any("couldn't connect" in line for line in entry["lines"])
    code, text = run_cli("diagnose", "core", "--lines", "4", *args)
    assert "LocalEntryNotFoundError" not in text  # outside the 4 lines
    code, text = run_cli("diagnose", "core", "--verbose", "--lines", "4", *args)
    # The full traceback, with the chained cause.
    assert "LocalEntryNotFoundError" in text and "direct cause" in text and "_raise_on_head_call_error" in text
    assert "HF_HUB_OFFLINE=1 perl run core --only lora_r16_s42" in text


def parse_run(command: str) -> tuple[dict[str, str], dict]:
    """(environment assignments, parsed `perl run` arguments) of a suggested command."""
    words = shlex.split(command)
    env = {}
    while words and "=" in words[0] and not words[0].startswith("-"):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    assert words[:2] == ["perl", "run"], command
    suite, rest = words[2], words[3:]
    parsed: dict = {"suite": suite, "--set": [], "flags": []}
    while rest:
        flag = rest.pop(0)
        if flag in RUN_FLAGS_WITH_VALUE:
            value = rest.pop(0)
            if flag == "--set":
                parsed["--set"].append(value)
            else:
                parsed[flag] = value
        else:
            assert flag in RUN_FLAGS, f"{command}: unknown flag {flag}"
            parsed["flags"].append(flag)
    return env, parsed


def run_supports_dry_run() -> bool:
    code, text = run_cli("run", "--help")
    return code == 0 and "--dry-run" in text


def test_every_suggested_command_is_accepted_by_perl_run(every_failure, mixed_suite) -> None:
    checked = 0
    dry_run = run_supports_dry_run()
    for (cfg_path, out, _), suite in ((every_failure, "wide"), (mixed_suite, "core")):
        cfg = configlib.load(cfg_path)
        _, diagnoses = diagnose_dir(out, cfg_path, suite)
        for d in diagnoses:
            assert d.fix.commands or d.cause == "unknown", d.cause
            for command in d.fix.commands:
                if command.startswith("perl plan"):
                    words = shlex.split(command)
                    assert configlib.expand(configlib.load(words[words.index("--config") + 1]), words[2],
                                            only=[words[words.index("--only") + 1]])
                    continue
                env, parsed = parse_run(command)
                assert set(env) <= {"HF_HUB_OFFLINE", "NCCL_DEBUG"}
                assert parsed["--only"] == d.name and parsed["--config"] == str(cfg_path)
                # The exact validation `perl run` does: expand with --only and --set.
                (exp,) = configlib.expand(cfg, parsed["suite"], only=[parsed["--only"]], sets=parsed["--set"])
                assert exp.name == d.name
                checked += 1
                if dry_run:
                    argv = shlex.split(command)[len(env) + 1:] + ["--dry-run"]
                    code, text = run_cli(*argv)
                    assert code == 0, f"{command}: {text}"
    assert checked >= len(FAILURE_LOGS)


def test_oom_fix_keeps_the_effective_batch(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path)
    cfg = configlib.load(cfg_path)
    out = tmp_path / "output"
    core = configlib.expand(cfg, "core")
    failure(out / "core", core[0], "cuda_oom")
    # The scheduler already halved the batch once (config.json "runtime"): halve what ran.
    failure(out / "core", core[1], "cuda_oom")
    resolved = st.read_json(out / "core" / core[1].name / st.CONFIG_FILE)
    resolved["runtime"] = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 16}  # as the scheduler writes it
    st.atomic_write_json(out / "core" / core[1].name / st.CONFIG_FILE, resolved)
    odd = {e.name: e for e in configlib.expand(cfg, "odd")}
    failure(out / "odd", odd["lora_r16_s1"], "cuda_oom")   # batch 1 x 8
    failure(out / "odd", odd["odd_batch"], "cuda_oom")     # batch 3 x 8
    fixes = {}
    for suite in ("core", "odd"):
        _, diagnoses = diagnose_dir(out, cfg_path, suite)
        fixes.update({d.name: parse_run(d.fix.commands[0])[1]["--set"] for d in diagnoses})
    assert fixes == {
        "lora_r16_s42": ["training.per_device_train_batch_size=2", "training.gradient_accumulation_steps=16"],
        "lora_r16_s123": ["training.per_device_train_batch_size=1", "training.gradient_accumulation_steps=32"],
        "lora_r16_s1": ["training.gradient_checkpointing=true"],
        "odd_batch": ["training.per_device_train_batch_size=1", "training.gradient_accumulation_steps=24"],
    }
    for name, sets in fixes.items():
        suite = "odd" if name in odd else "core"
        (exp,) = configlib.expand(cfg, suite, only=[name], sets=sets)
        t = exp.config["training"]
        assert (t["per_device_train_batch_size"] * t["gradient_accumulation_steps"]) % t["num_generations"] == 0


def test_commands_name_non_default_output_and_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg_path = write_config(tmp_path)
    exp = configlib.expand(configlib.load(cfg_path), "core")[0]
    failure(tmp_path / "output" / "core", exp, "host_oom")
    monkeypatch.chdir(tmp_path)
    view = views.load_suite(Path("output"), "core", configlib.load(cfg_path))
    (d,) = dg.diagnose_suite(view, config_path=None, output=Path("output"))
    assert d.fix.commands == ["perl run core --only lora_r16_s42"]
    (tmp_path / "output").rename(tmp_path / "results dir")
    view = views.load_suite(Path("results dir"), "core", configlib.load(cfg_path))
    (d,) = dg.diagnose_suite(view, config_path=Path("experiments.toml"), output=Path("results dir"))
    assert d.fix.commands == ["perl run core --only lora_r16_s42 --config experiments.toml --output 'results dir'"]


def test_rule_table_order_and_evidence() -> None:
    """Chained tracebacks are read whole; a SIGKILL without traceback beats log noise."""
    lines = FAILURE_LOGS["hub_offline"][0].splitlines()
    tb = dg.last_traceback(lines)
    assert tb.startswith("Traceback") and "LocalEntryNotFoundError" in tb and "OSError: We couldn't" in tb
    noisy_kill = dg.Evidence({"state": "failed", "exit_code": 137}, {}, ["We couldn't connect to 'https://x' (retrying)"],
                             "We couldn't connect to 'https://x' (retrying)", None, [], False)
    assert dg.classify(noisy_kill).cause == "host_oom"
    nan_metrics = dg.Evidence({"state": "failed", "exit_code": 1}, {}, [], "", None, [{"loss": float("nan")}], False)
    assert dg.classify(nan_metrics).cause == "nan"
    nothing = dg.Evidence({"state": "failed"}, {}, [], "", None, [], False)
    assert dg.classify(nothing).cause == "unknown"


def test_diagnose_imports_no_torch(mixed_suite) -> None:
    cfg_path, out, _ = mixed_suite
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "perl_cli", "diagnose", "core", "--config", str(cfg_path),
         "--output", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert proc.returncode == 1
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert "perl_cli" in imported
    assert not imported & {"torch", "transformers", "trl", "peft", "textual", "matplotlib"}


def test_resume_command_repeats_the_settings_it_ran_with(tmp_path: Path) -> None:
    """An experiment started with --set resumes only with the same settings: the fix repeats them."""
    cfg_path = write_config(tmp_path)
    cfg = configlib.load(cfg_path)
    sets = ["training.per_device_train_batch_size=2", "training.gradient_accumulation_steps=16"]
    (ran,) = configlib.expand(cfg, "core", only=["lora_r16_s42"], sets=sets)
    out = tmp_path / "output"
    failure(out / "core", ran, "interrupted")
    failure(out / "core", ran, "interrupted")
    _, (d,) = diagnose_dir(out, cfg_path)
    (command,) = d.fix.commands
    _, parsed = parse_run(command)
    assert parsed["--set"] == sets and parsed["flags"] == []  # no --fresh: the checkpoints are reused
    (again,) = configlib.expand(cfg, "core", only=["lora_r16_s42"], sets=parsed["--set"])
    assert again.fingerprint == ran.fingerprint
    if run_supports_dry_run():
        code, text = run_cli(*shlex.split(command)[1:], "--dry-run")
        assert code == 0 and "[resume]" in text, text
    # An OOM fix on top of those settings changes them: --fresh, since checkpoints exist.
    failure(out / "core", ran, "cuda_oom")
    _, (d,) = diagnose_dir(out, cfg_path)
    _, parsed = parse_run(d.fix.commands[0])
    assert parsed["--set"] == ["training.per_device_train_batch_size=1", "training.gradient_accumulation_steps=32"]
    assert parsed["flags"] == ["--fresh"]


def nan_failure(tmp_path: Path) -> tuple[configlib.Experiment, tuple[str, ...]]:
    cfg_path = write_config(tmp_path)
    exp = configlib.expand(configlib.load(cfg_path), "core")[0]
    failure(tmp_path / "output" / "core", exp, "nan")
    return exp, ("--config", str(cfg_path), "--output", str(tmp_path / "output"))


def test_verbose_shows_more_than_the_default_never_less(tmp_path: Path) -> None:
    """The `{'loss': nan}` line printed before the traceback is the evidence: --verbose keeps it."""
    _, args = nan_failure(tmp_path)
    _, default = run_cli("diagnose", "core", *args)
    _, verbose = run_cli("diagnose", "core", "--verbose", *args)
    assert "{'loss': nan" in default and "{'loss': nan" in verbose
    shown = [line for line in default.splitlines() if "│" in line]
    assert shown and all(line in verbose for line in shown)
    _, verbose_few = run_cli("diagnose", "core", "--verbose", "--lines", "2", *args)
    _, default_few = run_cli("diagnose", "core", "--lines", "2", *args)
    assert "_generate_single_turn" in verbose_few and "_generate_single_turn" not in default_few


def test_the_nan_fix_sets_every_change_its_advice_names(tmp_path: Path) -> None:
    exp, args = nan_failure(tmp_path)
    _, text = run_cli("diagnose", "core", "--json", *args)
    (entry,) = json.loads(text)["experiments"]
    assert entry["cause"] == "nan"
    advice, (command,) = entry["fix"]["text"], entry["fix"]["commands"]
    _, parsed = parse_run(command)
    assert "learning rate" in advice and "max_grad_norm" in advice and "float32" in advice
    assert set(parsed["--set"]) == {"training.learning_rate=5e-06", "training.max_grad_norm=0.5", "training.bf16=false"}


def test_status_and_diagnose_agree_on_how_many_need_attention(mixed_suite) -> None:
    cfg_path, out, _ = mixed_suite
    args = ("--config", str(cfg_path), "--output", str(out))
    _, status_text = run_cli("status", "core", *args)
    _, diagnose_text = run_cli("diagnose", "core", *args)
    in_status = int(re.search(r"(\d+) need attention", status_text).group(1))
    in_diagnose = int(re.search(r"(\d+) of \d+ experiments need attention", diagnose_text).group(1))
    assert in_status == in_diagnose == 4  # cuda_oom, host_oom, stalled, interrupted


def test_no_advice_names_a_tool_that_is_not_installed(mixed_suite, every_failure, monkeypatch) -> None:
    monkeypatch.setattr(dg, "installed", lambda tool: False)
    seen = []
    for cfg_path, out, suite in ((*mixed_suite[:2], "core"), (*every_failure[:2], "wide")):
        view = views.load_suite(out, suite, configlib.load(cfg_path))
        seen += [d.fix.text + " ".join(d.fix.commands) for d in dg.diagnose_suite(view)]
    text = "\n".join(seen)
    for tool in ("py-spy", "huggingface-cli", "hf download", "nvidia-smi"):
        assert tool not in text, tool
    assert "snapshot_download" in text  # the hub download spelled with what is installed: Python


def test_diagnose_wraps_its_prose_and_keeps_commands_whole(every_failure) -> None:
    cfg_path, out, _ = every_failure
    result = CliRunner().invoke(app, ["diagnose", "wide", "--config", str(cfg_path), "--output", str(out)],
                                env={**ONE_GPU, "COLUMNS": "80"})
    lines = result.output.splitlines()
    prose = [line for line in lines if not line.lstrip().startswith(("│", "$"))]
    assert max(len(line) for line in prose) <= 80
    commands = [line.strip()[2:] for line in lines if line.lstrip().startswith("$ ")]
    assert commands and all(c.startswith(("perl ", "HF_HUB_OFFLINE=1 perl", "NCCL_DEBUG=INFO perl")) for c in commands)
    assert any(len(line) > 80 for line in lines if line.lstrip().startswith("$ "))  # whole, not wrapped
    # A wrapped fix keeps its indentation, up to its commands.
    start = next(i for i, line in enumerate(lines) if line.startswith("    fix: "))
    end = next(i for i in range(start, len(lines)) if lines[i].lstrip().startswith("$ "))
    assert end - start > 1 and all(line.startswith("    ") and not line.endswith(" ") for line in lines[start:end])


def test_a_failed_evaluation_is_sent_to_perl_eval_not_to_retraining(tmp_path: Path) -> None:
    """Before: an OOM in `perl eval`'s worker (status.json `job: eval`) got training's remedy,
    `perl run ... --set training.per_device_train_batch_size=... --fresh`: it would train the
    completed experiment over again and still not evaluate it. Now: `perl eval --only NAME`, said to
    continue from the saved batches; a failed *training* keeps its own remedy."""
    cfg_path = write_config(tmp_path)
    out = tmp_path / "output"
    core = configlib.expand(configlib.load(cfg_path), "core")
    exp_dir = failure(out / "core", core[0], "cuda_oom")
    st.write_status(exp_dir, {**st.read_status(exp_dir), "job": "eval", "error": "evaluation: OutOfMemoryError: x"})
    failure(out / "core", core[1], "cuda_oom")
    _, diagnoses = diagnose_dir(out, cfg_path, "core")
    fixes = {d.name: d.fix for d in diagnoses}
    evaluated = fixes[core[0].name]
    assert evaluated.commands == [f"perl eval core --only {core[0].name} --config {cfg_path} --output {out}"]
    assert "not its training" in evaluated.text and "--fresh" not in evaluated.text
    assert parse_run(fixes[core[1].name].commands[0])[1]["--set"]  # training's OOM remedy is unchanged
    code, text = run_cli("eval", "core", "--config", str(cfg_path), "--output", str(out), "--only", core[0].name,
                         "--benchmarks", "nonesuch")
    assert code == 2 and "nonesuch" in text  # the suggested command's options are perl eval's own
