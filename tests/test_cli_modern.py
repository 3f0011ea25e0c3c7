"""`perl` behaves like a modern CLI: a version, completion, near-miss hints, widths and units."""

from __future__ import annotations

import subprocess
from pathlib import Path

from test_cli import PERL_SCRIPT, REPO, needs_system_perl, venv_env
from typer.main import get_command
from typer.testing import CliRunner

from perl_cli import config as configlib
from perl_cli import passthrough
from perl_cli.cli import app
from perl_cli.ui import human_bytes

runner = CliRunner()


def perl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(PERL_SCRIPT), *args], capture_output=True, text=True, env=env or venv_env(),
                          cwd=REPO, timeout=60, stdin=subprocess.DEVNULL)


def test_passthrough_knows_every_command_of_the_app() -> None:
    assert set(get_command(app).commands) <= passthrough.COMMANDS


def test_perl_version_and_perl_version_flag_are_perls_own() -> None:
    from importlib.metadata import version

    for args in (["version"], ["--perl-version"]):
        result = perl(*args)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"PeRL {version('perl-cli')}"
    verbose = perl("version", "--verbose")
    assert "torch " in verbose.stdout and "trl " in verbose.stdout


@needs_system_perl
def test_dash_dash_version_stays_the_interpreters() -> None:
    result = perl("--version")
    assert "This is perl 5" in result.stdout


@needs_system_perl
def test_a_near_miss_gets_a_hint_and_still_goes_to_perl() -> None:
    result = perl("stauts")
    assert "did you mean `perl status`?" in result.stderr
    assert 'Can\'t open perl script "stauts"' in result.stderr


@needs_system_perl
def test_no_hint_for_a_real_script(tmp_path: Path) -> None:
    script = tmp_path / "stats"
    script.write_text('print "ok\\n";\n')
    result = subprocess.run([str(PERL_SCRIPT), str(script)], capture_output=True, text=True, env=venv_env())
    assert result.stdout == "ok\n" and "did you mean" not in result.stderr


def test_shell_completion_is_offered_and_answers() -> None:
    assert "--install-completion" in runner.invoke(app, ["--help"]).output
    env = {**venv_env(), "_PERL_COMPLETE": "complete_bash", "COMP_WORDS": "perl sta", "COMP_CWORD": "1"}
    result = perl(env=env)
    assert result.stdout.split() == ["status"], result.stderr


def test_piped_output_honours_columns() -> None:
    env = {**venv_env(), "COLUMNS": "70"}
    result = perl("plan", "stress-data", env=env)
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 70
    assert "lora_r16_n17000_s123" in result.stdout  # names are never cut
    assert "Left out to fit 70 columns: alpha, data size, model" in " ".join(result.stdout.split())


def test_plan_at_80_columns_keeps_every_name_whole() -> None:
    env = {**venv_env(), "COLUMNS": "80"}
    out = perl("plan", "stress-rank", env=env).stdout
    for name in ("milora_r256_s123", "pissa_r4_s42", "dora_r64_s123"):
        assert name in out
    assert "…" not in out


def test_human_bytes_names_binary_units() -> None:
    assert human_bytes(81_559 * 1024 * 1024) == "79.6 GiB"
    assert human_bytes(1536) == "1.5 KiB" and human_bytes(12) == "12 B"


def test_only_and_exclude_accept_globs() -> None:
    cfg = configlib.load(REPO / "experiments.toml")
    names = [e.name for e in configlib.expand(cfg, "core-1.5b", only=["lora_*"], exclude=["*_s456"])]
    assert names == ["lora_r16_s42", "lora_r16_s123", "lora_plus_r16_s42", "lora_plus_r16_s123"]
    result = CliRunner().invoke(app, ["plan", "core-1.5b", "--only", "zzz_*", "--config", str(REPO / "experiments.toml")])
    assert result.exit_code == 2 and "zzz_* matches no experiment" in result.output
