"""The demo recipe really learns: GRPO + LoRA lifts held-out sampled accuracy.

The slow test runs the `demo` suite's own LoRA experiment, with the settings read from
the shipped experiments.toml (not a copy), from a freshly built model: the warm-started
tiny model is built once per test session, about two minutes (set PERL_TEST_CACHE_DIR to
reuse one across sessions; .ci/run always builds a fresh one inside the clone). The gain
on three seeds is measured by bench/demo_learning.py (numbers in docs/architecture.md).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from training_support import write_experiment

from perl_cli import config as configlib
from perl_cli.config import PACKAGED_CONFIG


def demo_lora_experiments() -> list[configlib.Experiment]:
    experiments = [e for e in configlib.expand(configlib.load(PACKAGED_CONFIG), "demo") if e.method == "lora"]
    assert experiments, "the demo suite has no LoRA experiment"
    return experiments


@pytest.mark.slow
@pytest.mark.parametrize("exp", demo_lora_experiments(), ids=lambda e: e.name)
def test_demo_lora_improves_sampled_accuracy(tmp_path: Path, exp: configlib.Experiment) -> None:
    from perl_cli.train import run_experiment

    exp_dir = write_experiment(tmp_path, exp.resolved())
    assert run_experiment(exp_dir) == 0, (exp_dir / "status.json").read_text()
    results = json.loads((exp_dir / "eval.json").read_text())
    base, trained = results["base_accuracy_sampled"], results["accuracy_sampled"]
    assert base >= 0.15, "the warm start should solve a fair share already (about 21%)"
    gain = trained - base
    assert gain >= 0.05, f"sampled held-out accuracy moved by {100 * gain:+.1f} points only: {results}"
    # ... by more than its standard error (an upper bound: both evaluations use the same problems).
    se = math.hypot(results["accuracy_sampled_se"], results["base_accuracy_sampled_se"])
    assert gain > se, f"gain {100 * gain:+.1f} points is within noise (se {100 * se:.1f}): {results}"
    # Training correctness visibly rises from the first to the last 10% of logged steps.
    first, last = results["correct_first_10pct"], results["correct_last_10pct"]
    assert last - first >= 0.03, f"training correctness {first:.3f} -> {last:.3f}"


def test_standard_error_is_over_problems() -> None:
    from perl_cli.train.evaluate import standard_error

    assert standard_error([]) == 0.0 and standard_error([0.5]) == 0.0
    # Two problems: one solved by every sample, one by none: sd 0.707 / sqrt 2 = 0.5.
    assert standard_error([1.0, 0.0]) == pytest.approx(0.5)
    assert standard_error([0.25, 0.75, 0.5, 0.5]) == pytest.approx(math.sqrt(1 / 24 / 4))


def test_model_cache_entry_changes_with_the_build_code(monkeypatch) -> None:
    """A model built by other code is never reused: the build code is part of the cache key."""
    from perl_cli import models

    recipe = models.BUILTIN_MODELS["tiny-countdown"]
    before = recipe.digest()

    def other_warm_start(model, tokenizer, recipe):  # a changed warm start
        return None

    monkeypatch.setattr(models, "_warm_start", other_warm_start)
    assert recipe.digest() != before


def test_ci_builds_models_into_a_fresh_cache_in_the_clone(tmp_path: Path) -> None:
    """.ci/run ignores a developer's PERL_CACHE_DIR / PERL_TEST_CACHE_DIR and an old cache in the clone."""
    import os
    import shutil
    import stat
    import subprocess

    root = Path(__file__).resolve().parent.parent
    clone = tmp_path / "clone"
    (clone / ".ci").mkdir(parents=True)
    shutil.copy(root / ".ci" / "run", clone / ".ci" / "run")
    stale = clone / ".cache" / "perl" / "models" / "tiny-countdown-old"
    stale.mkdir(parents=True)
    fake = tmp_path / "bin"
    fake.mkdir()
    scripts = {  # stand-ins for the install; "pytest" reports the environment it was given
        "python3": "#!/bin/sh\nmkdir -p .venv/bin && : > .venv/bin/activate\n",
        "pip": "#!/bin/sh\nexit 0\n",
        "pytest": '#!/bin/sh\necho "cache=$PERL_CACHE_DIR test=$PERL_TEST_CACHE_DIR"; ls -A "$PERL_CACHE_DIR" 2>/dev/null; exit 0\n',
    }
    for name, text in scripts.items():
        (fake / name).write_text(text)
        (fake / name).chmod(stat.S_IRWXU)
    # The local Slurm cluster (scripts/local-slurm.sh): a stand-in that records what CI asks of it.
    (clone / "scripts").mkdir()
    slurm = clone / "scripts" / "local-slurm.sh"
    slurm.write_text('#!/bin/sh\ncase "$1" in env) echo "export SLURM_CONF=$PWD/slurm.conf" ;; '
                     'status) exit 1 ;; *) echo "$1 SLURM_CONF=$SLURM_CONF" >> slurm-calls ;; esac\n')
    slurm.chmod(stat.S_IRWXU)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}",
           "PERL_CACHE_DIR": str(tmp_path / "mine"), "PERL_TEST_CACHE_DIR": str(tmp_path / "mine")}
    proc = subprocess.run(["bash", str(clone / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    cache = clone.resolve() / ".cache" / "perl"
    assert proc.stdout.splitlines()[0] == f"cache={cache} test={cache}"
    assert not stale.exists() and "tiny-countdown-old" not in proc.stdout
    # Slurm: installed, started with SLURM_CONF exported, and stopped on exit (trap).
    conf = f"SLURM_CONF={clone.resolve()}/slurm.conf"
    assert (clone / "slurm-calls").read_text().splitlines() == [f"install {conf}", f"start {conf}", f"stop {conf}"]
