"""experiments.toml: expansion, naming, overrides, fingerprints and every validation error."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from perl_cli import config as configlib
from perl_cli.cli import app
from perl_cli.config import ConfigError

runner = CliRunner()
REPO_CONFIG = Path(__file__).resolve().parents[1] / "experiments.toml"


def plan(*args: str):
    return runner.invoke(app, ["plan", *args])


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiments.toml"
    path.write_text(textwrap.dedent(text))
    return path


MINIMAL = """
[base.training]
max_steps = 10

[suites.mini]
name = "{method}_r{rank}_s{seed}"
[suites.mini.matrix]
method = ["lora", "vera"]
seed = [1, 2]
"""


# --- the shipped suites -------------------------------------------------------------


@pytest.mark.parametrize(
    ("suite", "count"), [("core-1.5b", 24), ("core-7b", 15), ("stress-rank", 32), ("stress-data", 32)]
)
def test_seed_suites_expand_to_their_sizes(suite: str, count: int) -> None:
    cfg = configlib.load(REPO_CONFIG)
    assert len(configlib.expand(cfg, suite)) == count


def test_seed_suites_total_103() -> None:
    cfg = configlib.load(REPO_CONFIG)
    total = sum(len(configlib.expand(cfg, s)) for s in ("core-1.5b", "core-7b", "stress-rank", "stress-data"))
    assert total == 103


def test_core_15b_settings_match_the_paper() -> None:
    cfg = configlib.load(REPO_CONFIG)
    exps = {e.name: e for e in configlib.expand(cfg, "core-1.5b")}
    assert set(exps) == {
        f"{m}_r16_s{s}"
        for m in ("lora", "dora", "adalora", "pissa", "milora", "vera", "lora_plus", "miss")
        for s in (42, 123, 456)
    }
    for e in exps.values():
        t = e.config["training"]
        assert e.learning_rate == (1e-4 if e.method == "vera" else 1e-5)
        assert (e.rank, e.alpha) == (16, 32)
        assert (t["max_steps"], t["save_steps"], t["logging_steps"]) == (1000, 100, 10)
        assert (t["per_device_train_batch_size"], t["gradient_accumulation_steps"], t["num_generations"]) == (4, 8, 8)
        assert e.model == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
        assert e.config["dataset"]["dataset_name_or_path"] == "Jiayi-Pan/Countdown-Tasks-3to4"
        assert e.config["tracker"]["enable_spectral_tracking"] and e.config["tracker"]["enable_gradient_tracking"]
        assert e.config["tracker"]["spectral_log_frequency"] == 100
        assert e.config["wandb"]["project"] == "peft-rlvr-mechanistic"


def test_core_7b_uses_batch_2_and_five_methods() -> None:
    exps = configlib.expand(configlib.load(REPO_CONFIG), "core-7b")
    assert {e.method for e in exps} == {"lora", "dora", "adalora", "pissa", "milora"}
    assert {e.config["training"]["per_device_train_batch_size"] for e in exps} == {2}
    assert all("7B" in e.model for e in exps)


def test_stress_rank_alpha_is_twice_rank_and_names() -> None:
    exps = configlib.expand(configlib.load(REPO_CONFIG), "stress-rank")
    assert all(e.alpha == 2 * e.rank for e in exps)
    assert {e.rank for e in exps} == {4, 16, 64, 256}
    assert "dora_r64_s123" in {e.name for e in exps}


def test_stress_data_names_carry_the_data_size() -> None:
    exps = configlib.expand(configlib.load(REPO_CONFIG), "stress-data")
    names = {e.name for e in exps}
    assert "lora_r16_n4000_s42" in names and "milora_r16_n17000_s123" in names
    assert {e.data_size for e in exps} == {1000, 4000, 8500, 17000}


def test_plan_core_prints_24_with_vera_at_1e4() -> None:
    result = plan("core-1.5b", "--config", str(REPO_CONFIG), "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) == 24
    required = {"name", "method", "rank", "alpha", "seed", "data_size", "learning_rate", "max_steps", "model", "fingerprint"}
    assert all(required <= set(r) for r in rows)
    assert {r["learning_rate"] for r in rows if r["method"] == "vera"} == {1e-4}


def test_plan_table_shows_every_experiment_and_totals() -> None:
    result = plan("core-1.5b", "--config", str(REPO_CONFIG))
    assert result.exit_code == 0
    assert "vera_r16_s456" in result.output and "0.0001" in result.output
    assert "24 experiments" in result.output


def test_plan_without_suite_lists_suites_with_counts() -> None:
    result = plan("--config", str(REPO_CONFIG), "--json")
    counts = {r["suite"]: r["experiments"] for r in json.loads(result.output)}
    assert counts["core-1.5b"] == 24 and counts["stress-data"] == 32 and "demo" in counts


def test_plan_keys_lists_settings() -> None:
    result = plan("--keys", "--json")
    keys = json.loads(result.output)
    assert "training.learning_rate" in keys and "peft.lora_plus_ratio" in keys


# --- expansion mechanics ------------------------------------------------------------


def test_when_rules_extras_and_only_exclude(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + """
    [[suites.mini.when]]
    if = { method = "vera", seed = [2] }
    set = { "training.learning_rate" = 1e-3, peft = { r = 64 } }

    [[suites.mini.experiments]]
    name = "custom_lora_r32_s42"
    peft = { type = "lora", r = 32, lora_alpha = 64 }
    training = { learning_rate = 5e-6, max_steps = 2000 }
    common = { seed = 42 }
    """)
    cfg = configlib.load(path)
    exps = {e.name: e for e in configlib.expand(cfg, "mini")}
    assert set(exps) == {"lora_r16_s1", "lora_r16_s2", "vera_r16_s1", "vera_r64_s2", "custom_lora_r32_s42"}
    assert exps["vera_r64_s2"].learning_rate == 1e-3
    assert exps["vera_r16_s1"].learning_rate == pytest.approx(1e-4)  # VeRA: 10x the shared rate (METHOD_LR_SCALE)
    assert exps["custom_lora_r32_s42"].max_steps == 2000 and exps["lora_r16_s1"].max_steps == 10
    only = configlib.expand(cfg, "mini", only=["lora_r16_s1", "vera_r16_s1"], exclude=["vera_r16_s1"])
    assert [e.name for e in only] == ["lora_r16_s1"]


def test_fingerprint_is_stable_and_sensitive(tmp_path: Path) -> None:
    cfg = configlib.load(write(tmp_path, MINIMAL))
    first = {e.name: e.fingerprint for e in configlib.expand(cfg, "mini")}
    again = {e.name: e.fingerprint for e in configlib.expand(configlib.load(tmp_path / "experiments.toml"), "mini")}
    assert first == again
    assert len(set(first.values())) == len(first)  # every experiment differs
    changed = {e.name: e.fingerprint for e in configlib.expand(cfg, "mini", sets=["training.learning_rate=2e-5"])}
    assert all(changed[n] != first[n] for n in first)
    # Reordering keys in the file does not change anything.
    reordered = write(tmp_path, MINIMAL.replace('method = ["lora", "vera"]\nseed = [1, 2]', 'seed = [1, 2]\nmethod = ["lora", "vera"]'))
    assert {e.name: e.fingerprint for e in configlib.expand(configlib.load(reordered), "mini")} == first


def test_set_overrides_keep_names_and_parse_values(tmp_path: Path) -> None:
    cfg = configlib.load(write(tmp_path, MINIMAL))
    exps = configlib.expand(cfg, "mini", sets=["training.per_device_train_batch_size=2", "training.gradient_accumulation_steps=16", "lr=0.001", "model.model_name_or_path=/models/local"])
    e = exps[0]
    assert e.name == "lora_r16_s1"
    assert e.config["training"]["per_device_train_batch_size"] == 2
    assert e.learning_rate == 0.001
    assert e.model == "/models/local"


def test_resolved_config_is_json_and_complete(tmp_path: Path) -> None:
    e = configlib.expand(configlib.load(write(tmp_path, MINIMAL)), "mini")[0]
    resolved = json.loads(json.dumps(e.resolved()))
    assert resolved["fingerprint"] == e.fingerprint == configlib.fingerprint(resolved)
    assert resolved["peft"]["type"] == "lora" and resolved["common"]["seed"] == 1


# --- validation: exit code 2, the file, the key or line, the fix --------------------


BAD_CASES = [
    # (description, toml body, extra CLI args, expected fragments of the message)
    ("syntax error", MINIMAL + "\n[broken\n", [], ["TOML syntax error", "line 11"]),
    ("unknown key in a section", MINIMAL.replace("max_steps = 10", "max_steps = 10\nlearning_rte = 1e-5"), [], ["learning_rte", "did you mean 'training.learning_rate'", ":4"]),
    ("unknown section", MINIMAL + "\n[base.trainer]\nx = 1\n", [], ["unknown section 'trainer'", "training"]),
    ("unknown suite key", MINIMAL.replace('name = "{method}', 'nmae = "x"\nname = "{method}'), [], ["unknown key 'nmae'", "did you mean 'name'"]),
    ("unknown top-level key", "[bsae.training]\nmax_steps = 1\n" + MINIMAL, [], ["unknown key 'bsae'", "did you mean 'base'"]),
    ("unknown matrix axis", MINIMAL.replace("seed = [1, 2]", "seeds = [1, 2]"), [], ["unknown key 'seeds'", "did you mean"]),
    ("unknown method", MINIMAL.replace('"vera"]', '"vera", "dora2"]'), [], ["dora2", "did you mean 'dora'"]),
    ("rank < 1", MINIMAL + "\n[base.peft]\nr = 0\n", [], ["peft.r = 0", ">= 1"]),
    ("alpha <= 0", MINIMAL + "\n[base.peft]\nlora_alpha = 0\n", [], ["lora_alpha", "> 0"]),
    ("lr out of range", MINIMAL.replace("max_steps = 10", "max_steps = 10\nlearning_rate = 1.5"), [], ["learning_rate = 1.5", "(0, 1)"]),
    ("lr zero", MINIMAL.replace("max_steps = 10", "max_steps = 10\nlearning_rate = 0.0"), [], ["learning_rate", "(0, 1)"]),
    ("steps < 1", MINIMAL.replace("max_steps = 10", "max_steps = 0"), [], ["max_steps = 0", ">= 1"]),
    ("negative seed", MINIMAL.replace("seed = [1, 2]", "seed = [1, -2]"), [], ["common.seed = -2", ">= 0"]),
    ("data size < 1", MINIMAL + "\n[base.dataset]\ndata_size = 0\n", [], ["data_size = 0", ">= 1"]),
    ("wrong type", MINIMAL.replace("max_steps = 10", 'max_steps = "ten"'), [], ["max_steps", "number"]),
    ("duplicate names", MINIMAL.replace('name = "{method}_r{rank}_s{seed}"', 'name = "{method}_r{rank}"'), [], ["two experiments named 'lora_r16'", "name template"]),
    ("bad name chars", MINIMAL.replace('name = "{method}_r{rank}_s{seed}"', 'name = "{method} r{rank}/s{seed}"'), [], ["not allowed", "letters, digits"]),
    ("dotdot name", MINIMAL + '\n[[suites.mini.experiments]]\nname = "..x"\n', [], ["'..x'", "never '..'"]),
    ("unknown suite", MINIMAL, ["SUITE:mnii"], ["unknown suite 'mnii'", "did you mean 'mini'", "Valid suites: mini"]),
    ("--only no match", MINIMAL, ["--only", "lora_r16_s9"], ["--only", "lora_r16_s9", "matches no experiment"]),
    ("--exclude no match", MINIMAL, ["--exclude", "nope"], ["--exclude", "nope", "matches no experiment"]),
    ("batch not multiple of generations", MINIMAL.replace("max_steps = 10", "max_steps = 10\nper_device_train_batch_size = 3\ngradient_accumulation_steps = 1"), [], ["multiple of", "num_generations"]),
    ("bad when", MINIMAL + '\n[[suites.mini.when]]\nif = { method = "vera" }\n', [], ["needs both `if` and `set`"]),
    ("adalora init_r below r", MINIMAL.replace('"vera"]', '"adalora"]') + "\n[base.peft]\nadalora_init_r = 4\n", [], ["adalora_init_r"]),
]


@pytest.mark.parametrize(("body", "args", "fragments"), [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_bad_config_exits_2_with_clear_message(tmp_path: Path, body: str, args: list[str], fragments: list[str]) -> None:
    path = write(tmp_path, body)
    suite = "mini"
    extra = []
    for a in args:
        if a.startswith("SUITE:"):
            suite = a.split(":", 1)[1]
        else:
            extra.append(a)
    result = plan(suite, "--config", str(path), *extra)
    assert result.exit_code == 2, result.output
    message = result.output
    assert "Traceback" not in message
    assert str(path) in message or "--only" in message or "--exclude" in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    result = plan("demo", "--config", str(tmp_path / "nope.toml"))
    assert result.exit_code == 2
    assert "no such config file" in result.output


@pytest.mark.parametrize("bad", ["training.learnin_rate=1", "training.learning_rate=2", "nokey", "peft.type=lorra"])
def test_bad_set_is_rejected(tmp_path: Path, bad: str) -> None:
    cfg = configlib.load(write(tmp_path, MINIMAL))
    with pytest.raises(ConfigError, match="--set"):
        configlib.expand(cfg, "mini", sets=[bad])


def test_every_shipped_suite_is_valid() -> None:
    cfg = configlib.load(REPO_CONFIG)
    for suite in cfg.suite_names():
        assert configlib.expand(cfg, suite)


def test_repo_config_is_the_packaged_default() -> None:
    assert REPO_CONFIG.resolve() == configlib.PACKAGED_CONFIG.resolve()


# --- [suites.X.run]: defaults for `perl run` flags ------------------------------------


def test_suite_run_defaults_apply_and_the_command_line_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, MINIMAL + "\n[suites.mini.run]\njobs = 2\nretries = 0\n")
    assert configlib.load(path).run_defaults("mini") == {"jobs": 2, "retries": 0}
    env_args = ["run", "mini", "--config", str(path), "--output", str(tmp_path / "out"), "--dry-run"]
    monkeypatch.delenv("PERL_FAKE_GPUS", raising=False)
    assert "2 at a time" in runner.invoke(app, env_args).output
    assert "3 at a time" in runner.invoke(app, [*env_args, "--jobs", "3"]).output


@pytest.mark.parametrize(
    ("table", "fragment"),
    [("jobz = 2", "unknown key 'jobz'"), ("jobs = 0", "jobs = 0 must be a whole number >= 1"), ('retries = "x"', "retries")],
)
def test_bad_suite_run_defaults(tmp_path: Path, table: str, fragment: str) -> None:
    path = write(tmp_path, MINIMAL + f"\n[suites.mini.run]\n{table}\n")
    result = runner.invoke(app, ["run", "mini", "--config", str(path), "--output", str(tmp_path / "o"), "--dry-run"])
    assert result.exit_code == 2 and fragment in result.output, result.output
