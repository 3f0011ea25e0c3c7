"""Each experiment records what produced it; `perl report` shows it once and flags mixed stacks."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from suite_fixtures import write_config, write_experiment
from typer.testing import CliRunner

from perl_cli import config as configlib
from perl_cli import provenance, report_provenance
from perl_cli.cli import app

ROOT = Path(__file__).resolve().parent.parent


def test_record_names_the_stack(tmp_path: Path) -> None:
    data = provenance.record(tmp_path)
    saved = json.loads((tmp_path / provenance.PROVENANCE_FILE).read_text())
    assert saved == data
    assert data["trl"] == metadata.version("trl") and data["peft"] == metadata.version("peft")
    assert data["torch"] == metadata.version("torch") and data["transformers"] == metadata.version("transformers")
    assert data["python"] == ".".join(map(str, sys.version_info[:3]))
    assert data["host"] and data["perl"]
    assert "vllm" in data  # None when it is not installed, recorded all the same
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    if (ROOT / ".git").exists() and commit:
        assert data["perl_commit"].removesuffix("+dirty") == commit


def test_a_resume_on_another_stack_keeps_the_first(tmp_path: Path) -> None:
    first = provenance.record(tmp_path)
    provenance.record(tmp_path)  # same stack: nothing to keep
    assert "previous" not in provenance.read(tmp_path)
    older = {**first, "trl": "0.0.1"}
    (tmp_path / provenance.PROVENANCE_FILE).write_text(json.dumps(older))
    now = provenance.record(tmp_path)
    assert now["previous"] == [older] and now["trl"] == metadata.version("trl")


def test_provenance_imports_no_torch() -> None:
    code = "import sys, perl_cli.provenance as p; p.collect(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.split() == ["False"]


def _suite(tmp_path: Path, trl_versions: list[str]) -> tuple[Path, Path]:
    cfg_path = write_config(tmp_path)
    out = tmp_path / "output"
    exps = configlib.expand(configlib.load(cfg_path), "core")
    for i, exp in enumerate(exps):
        d = write_experiment(out / "core", exp, eval_accuracy=0.3)
        if i < len(trl_versions):
            stack = {**provenance.collect(), "trl": trl_versions[i], "host": f"node{i % 2}"}
            (d / provenance.PROVENANCE_FILE).write_text(json.dumps(stack))
    return cfg_path, out


def _section(md: str) -> str:
    return md.split("## Environment", 1)[1].split("\n## ", 1)[0]


def test_report_prints_the_environment_once(tmp_path: Path) -> None:
    cfg_path, out = _suite(tmp_path, ["1.16.0"] * 4)
    result = CliRunner().invoke(app, ["report", "core", "--config", str(cfg_path), "--output", str(out)])
    assert result.exit_code == 0, result.output
    env = _section((out / "core" / "SUMMARY.md").read_text())
    assert "| trl | 1.16.0 |" in env and "Warning" not in env
    assert "node0: " in env and "node1: " in env  # hosts differ: shown, not a warning
    assert "have no `provenance.json`" in env  # the other experiments of the fixture


def test_report_warns_when_library_versions_differ(tmp_path: Path) -> None:
    cfg_path, out = _suite(tmp_path, ["1.16.0", "1.16.0", "1.17.0"])
    # result.output holds stdout (the summary) and stderr (the console's warning line).
    result = CliRunner().invoke(app, ["report", "core", "--config", str(cfg_path), "--output", str(out), "--stdout"])
    assert result.exit_code == 0, result.output
    env = _section(result.output)
    assert report_provenance.WARNING in env and ": trl." in env
    assert "1.17.0: " in env and "1.16.0: " in env
    assert "core: Warning: the runs compared here were produced by different library versions" in " ".join(
        result.output.split()
    )
