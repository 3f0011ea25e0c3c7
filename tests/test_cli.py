"""The `perl` console script: help, the Perl passthrough, and no heavy imports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from perl_cli.passthrough import find_system_perl, is_perl_invocation

BIN = Path(sys.executable).parent
PERL_SCRIPT = BIN / "perl"
REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "trl", "peft", "textual", "matplotlib", "datasets", "sklearn")
SYSTEM_PERL = shutil.which("perl", path=os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p).resolve() != BIN.resolve()))

needs_system_perl = pytest.mark.skipif(SYSTEM_PERL is None, reason="no system Perl on this machine")


def venv_env() -> dict[str, str]:
    """PATH as inside an activated virtualenv: our bin directory first."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    return env


def perl(*args: str, stdin: str | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(PERL_SCRIPT), *args], input=stdin, capture_output=True, text=True, env=venv_env(), cwd=cwd, timeout=60
    )


def test_console_script_is_installed() -> None:
    assert PERL_SCRIPT.exists(), "install the package (pip install -e .) so the `perl` script exists"


def test_help_lists_every_command() -> None:
    result = perl("--help")
    assert result.returncode == 0
    for command in ("plan", "run", "status", "diagnose", "report", "watch"):
        assert command in result.stdout


def test_python_dash_m_works() -> None:
    result = subprocess.run([sys.executable, "-m", "perl_cli", "plan", "demo"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "lora_r16_s42" in result.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["plan"],
        ["plan", "core-1.5b"],
        ["plan", "core-1.5b", "--json"],
        ["plan", "ica"],
        ["plan", "placement-demo", "--json"],
        ["plan", "nosuch"],
        ["status", "--output", "{tmp}"],
        ["status", "demo", "--output", "{tmp}"],
        ["diagnose", "--output", "{tmp}"],
        ["report", "--help"],
        ["run", "--help"],
        ["watch", "--help"],
    ],
)
def test_read_only_commands_never_import_the_training_stack(argv: list[str], tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from perl_cli.__main__ import main\n"
        "sys.argv = ['perl', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "sys.stderr.write('HEAVY=' + ','.join(heavy) + '\\n')\n"
    )
    args = [a.format(tmp=tmp_path) for a in argv]
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, timeout=60)
    line = [row for row in out.stderr.splitlines() if row.startswith("HEAVY=")]
    assert line, out.stderr
    assert line[-1] == "HEAVY=", f"{argv} imported {line[-1]}"


# --- the Perl passthrough ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "tty", "ours"),
    [
        (["plan"], False, True),
        (["run", "demo"], False, True),
        (["--help"], False, True),
        ([], True, True),
        ([], False, False),
        (["-e", "print 1"], True, False),
        (["-ne", "print"], False, False),
        (["-pi", "-e", "s/a/b/", "f"], False, False),
        (["-MFoo", "-e1"], False, False),
        (["-w", "x.pl"], False, False),
        (["x.pl"], False, False),
        (["--version"], True, False),
        (["-v"], True, False),
    ],
)
def test_passthrough_decision(args: list[str], tty: bool, ours: bool) -> None:
    assert is_perl_invocation(args, stdin_is_tty=tty) is (not ours)


def test_find_system_perl_skips_our_directory(tmp_path: Path) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    ours = fake_bin / "perl"
    ours.write_text("#!/usr/bin/env python\nfrom perl_cli.__main__ import main\n")
    ours.chmod(0o755)
    other_copy = tmp_path / "other"
    other_copy.mkdir()
    (other_copy / "perl").write_text("#!/venv2/bin/python\n# perl_cli console script\nfrom perl_cli.__main__ import main\n")
    (other_copy / "perl").chmod(0o755)
    real = tmp_path / "real"
    real.mkdir()
    (real / "perl").write_text("#!/bin/sh\necho real\n")
    (real / "perl").chmod(0o755)
    path = os.pathsep.join([str(fake_bin), str(other_copy), str(real)])
    assert find_system_perl(str(ours), path=path) == str(real / "perl")
    assert find_system_perl(str(ours), path=os.pathsep.join([str(fake_bin), str(other_copy)])) is None


@needs_system_perl
def test_perl_e_prints_5_inside_the_venv() -> None:
    result = perl("-e", "print 2+3")
    assert (result.returncode, result.stdout) == (0, "5")


@needs_system_perl
def test_perl_reads_program_from_stdin_and_keeps_exit_status(tmp_path: Path) -> None:
    assert perl(stdin='print "hi\\n"; exit 3;').returncode == 3
    assert perl(stdin='print "hi\\n"').stdout == "hi\n"


@needs_system_perl
def test_perl_pi_edits_files_in_place_and_runs_scripts(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("apple\n")
    assert perl("-pi", "-e", "s/apple/pear/", str(target)).returncode == 0
    assert target.read_text() == "pear\n"
    script = tmp_path / "x.pl"
    script.write_text('use strict; print "args:@ARGV\\n"; exit 7;\n')
    result = perl("-w", str(script), "a", "b")
    assert (result.returncode, result.stdout) == (7, "args:a b\n")
    assert perl("-ne", "print if /b/", stdin="a\nb\nc\n").stdout == "b\n"
    assert perl("-MList::Util=sum", "-e", "print sum(1,2,3)").stdout == "6"


def test_system_perl_beside_the_system_python_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A venv made from /usr/bin/python3: the interpreter's real directory also holds the system Perl."""
    system_bin, venv_bin = tmp_path / "usr-bin", tmp_path / "venv-bin"
    system_bin.mkdir()
    venv_bin.mkdir()
    (system_bin / "python3").write_text("")
    system_perl = system_bin / "perl"
    system_perl.write_text("#!/bin/sh\necho perl\n")
    system_perl.chmod(0o755)
    ours = venv_bin / "perl"
    ours.write_text(PERL_SCRIPT.read_text())
    monkeypatch.setattr(sys, "executable", str(system_bin / "python3"))
    assert find_system_perl(str(ours), path=f"{venv_bin}{os.pathsep}{system_bin}") == str(system_perl)
