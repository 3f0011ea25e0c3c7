"""Hostile config and command-line input: every case is exit 2 with a message, never a traceback.

Each case reproduces a report from trying PeRL as a new user would (names that escape or
hide, templates that crash, markup in user text, numbers that overflow).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from typer.testing import CliRunner

from perl_cli import names
from perl_cli.cli import app

runner = CliRunner()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiments.toml"
    path.write_text(textwrap.dedent(text))
    return path


def invoke(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env=env)


def assert_usage_error(result, *needles: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    text = " ".join(result.output.replace("│", " ").split())  # Rich boxes wrap usage errors
    for needle in needles:
        assert needle in text, text


def suite_with_experiment_name(tmp_path: Path, name: str) -> Path:
    # A JSON string literal is a valid TOML basic string ("x\n" stays an escaped newline).
    return write(tmp_path, f"""
        [suites.s]
        [[suites.s.experiments]]
        name = {json.dumps(name)}
        peft = {{ type = "lora" }}
    """)


@pytest.mark.parametrize("name", [".", ".hidden", "x.old-1", "a" * 300, "x\n", "-rf", "a..b", "a/b", ""])
def test_experiment_names_that_would_escape_or_hide_are_refused_at_plan_time(tmp_path: Path, name: str) -> None:
    cfg = suite_with_experiment_name(tmp_path, name)
    for command in (["plan", "s"], ["run", "s", "--dry-run", "--output", str(tmp_path / "out")]):
        result = invoke(*command, "--config", str(cfg))
        assert_usage_error(result, "is not allowed", str(cfg))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("suite", ["../evil", "/tmp/abs", ".", "x y", "a" * 101])
def test_suite_names_are_checked_with_the_same_rule(tmp_path: Path, suite: str) -> None:
    cfg = write(tmp_path, f"""
        [suites."{suite}"]
        [suites."{suite}".matrix]
        seed = [1]
    """)
    result = invoke("run", suite, "--dry-run", "--config", str(cfg), "--output", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    result = invoke("plan", "--config", str(cfg))
    assert_usage_error(result, "suite name", "is not allowed")
    assert not (tmp_path / "evil").exists() and not Path("/tmp/abs").exists()


@pytest.mark.parametrize("command", ["status", "diagnose", "report", "watch", "plan", "run"])
@pytest.mark.parametrize("suite", ["..", "../x", "/etc", "a\nb"])
def test_suite_arguments_cannot_leave_the_output_directory(tmp_path: Path, command: str, suite: str) -> None:
    result = invoke(command, suite, "--output", str(tmp_path / "out"))
    assert_usage_error(result, "cannot be a suite name")
    assert not (tmp_path / "SUMMARY.md").exists()


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('[suites.a]\nname = "{seed[0]}"\n[suites.a.matrix]\nseed = [1]\n', "cannot fill it in"),
        ('[suites.a]\nname = "{method.nope}"\n[suites.a.matrix]\nseed = [1]\n', "cannot fill it in"),
        ("[suites.a]\nexperiments = 5\n", "must be an array of tables"),
        ("[suites.a]\ndescription = 5\n[suites.a.matrix]\nseed = [1]\n", "description must be a string"),
        ("a = " + "[" * 100_000 + "\n", "nested too deeply"),
    ],
)
def test_config_shapes_that_crashed_are_clear_errors(tmp_path: Path, body: str, needle: str) -> None:
    cfg = tmp_path / "experiments.toml"
    cfg.write_text(body)
    for command in (["plan"], ["plan", "a"]):
        result = invoke(*command, "--config", str(cfg))
        assert_usage_error(result, needle)


def test_markup_in_user_text_is_shown_literally(tmp_path: Path) -> None:
    cfg = write(tmp_path, """
        [suites.a]
        description = "rank sweep [/r16] [core]"
        [suites.a.matrix]
        seed = [1]
    """)
    result = invoke("plan", "--config", str(cfg))
    assert result.exit_code == 0, result.output
    assert "rank sweep [/r16] [core]" in result.output
    result = invoke("plan", "a", "--config", str(cfg), "--output", str(tmp_path / "[bold]lost"))
    assert result.exit_code == 0, result.output
    assert "[bold]lost" in result.output


def test_fake_gpus_with_an_infinite_size_is_a_clear_error(tmp_path: Path) -> None:
    env = {"PERL_FAKE_GPUS": '[{"index": 0, "name": "x", "memory_total_mb": 1e999, "memory_used_mb": 0}]'}
    result = invoke("run", "demo", "--dry-run", "--output", str(tmp_path), env=env)
    assert_usage_error(result, "PERL_FAKE_GPUS", "memory_total_mb")


def test_a_model_name_with_an_absurd_size_does_not_overflow_the_estimate() -> None:
    from perl_cli.scheduler.memory import DEFAULT_PARAMS, model_parameters

    assert model_parameters("org/model-" + "9" * 400 + "B") == DEFAULT_PARAMS
    assert model_parameters("Qwen2.5-7B-Instruct") == 7e9


def test_output_that_is_a_file_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "afile"
    out.write_text("not a directory")
    for command in (["run", "demo", "--dry-run"], ["status"], ["report", "demo"], ["plan", "demo"]):
        result = invoke(*command, "--output", str(out))
        assert_usage_error(result, "is a file, not a directory")
    assert out.read_text() == "not a directory"


@pytest.mark.parametrize("flag", ["--only", "--exclude"])
def test_a_selection_that_names_nothing_is_an_error(flag: str) -> None:
    result = invoke("plan", "demo", flag, ",")
    assert_usage_error(result, "names nothing")


@settings(max_examples=300, deadline=None)
@given(hs.text(max_size=120))
def test_the_name_rule_only_admits_single_visible_path_components(name: str) -> None:
    if names.name_problem(name) is None:
        assert name not in (".", "..") and "/" not in name and "\0" not in name
        assert not name.startswith((".", "-")) and ".old-" not in name and ".." not in name
        assert len(name) <= names.MAX_NAME_LENGTH and name == name.strip()
        assert Path("out", name).parent == Path("out")
