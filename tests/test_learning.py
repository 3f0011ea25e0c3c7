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
    """The learning claim, as a statistic with margin (docs/architecture.md, "What counts as learning").

    The held-out gain is a paired difference over the same 400 problems; it must be at least
    5 points *and* at least 2 of its own standard errors. Measured on seeds 42, 123 and 456
    under one and two threads (bench/demo_learning.py): +11.2 ± 1.6, +10.8 ± 1.3 and
    +8.0 ± 1.4 points, 5.7 standard errors at the least, so another machine's float bits do
    not decide the verdict. Training correctness is not a claim here: the built-in model's
    warm start saw the training problems, and its fitted rise straddles 0 on seed 456
    (docs/architecture.md, "What counts as learning").
    """
    from perl_cli.train import run_experiment

    exp_dir = write_experiment(tmp_path, exp.resolved())
    assert run_experiment(exp_dir) == 0, (exp_dir / "status.json").read_text()
    results = json.loads((exp_dir / "eval.json").read_text())
    summary = {k: v for k, v in results.items() if not k.startswith(("per_problem", "base_per_problem"))}
    base = results["base_accuracy_sampled"]
    assert base >= 0.15, f"the warm start should solve a fair share already (about 20%): {summary}"
    assert results["eval_problems"] == 400 and results["eval_samples_per_problem"] == 8, summary
    # The single evaluation's error is what the held-out size was chosen for.
    assert results["accuracy_sampled_se"] <= 0.02 and results["base_accuracy_sampled_se"] <= 0.02, summary
    gain, se = results["gain_sampled"], results["gain_sampled_se"]
    assert gain >= 0.05, f"paired held-out gain {100 * gain:+.1f} ± {100 * se:.1f} points, under 5: {summary}"
    assert gain >= 2 * se, f"paired held-out gain {100 * gain:+.1f} is within 2 standard errors ({100 * se:.1f}): {summary}"


def test_paired_gain_uses_per_problem_differences() -> None:
    """Problem difficulty cancels in the pair: the paired error is far below the unpaired bound."""
    from perl_cli import learning

    base = [0.0, 0.25, 0.5, 0.75, 1.0] * 20
    trained = [min(1.0, b + 0.125) for b in base]  # every problem a little better
    gain, se = learning.paired_gain(base, trained)
    assert gain == pytest.approx(0.1)
    unpaired = math.hypot(learning.standard_error(base), learning.standard_error(trained))
    assert 0 < se < unpaired / 5
    with pytest.raises(ValueError, match="same problems"):
        learning.paired_gain([0.5], [0.5, 0.5])


def test_held_out_gains_need_matching_per_problem_results() -> None:
    from perl_cli import learning

    trained = {"per_problem_sampled": [1.0, 0.5, 0.0], "per_problem_greedy": [1.0, 1.0, 0.0]}
    base = {"per_problem_sampled": [0.5, 0.5, 0.0], "per_problem_greedy": [0.0, 1.0]}  # greedy: other problems
    gains = learning.held_out_gains(trained, base)
    assert gains["gain_sampled"] == pytest.approx(1 / 6)
    assert "gain_greedy" not in gains  # never paired across different problem lists
    assert learning.held_out_gains(trained, {}) == {}


def test_trend_recovers_a_planted_slope_with_an_honest_bound() -> None:
    """A noisy line with a known rise: the 95% bounds cover it, and a flat series' bounds straddle 0."""
    import random

    from perl_cli import learning

    rng = random.Random(0)
    steps = list(range(1, 301))
    covered = 0
    for _ in range(200):
        values = [0.2 + 0.1 * (s - 1) / 299 + rng.gauss(0, 0.08) for s in steps]
        line = learning.trend(steps, values)
        assert line is not None and line["rise_low"] < line["rise"] < line["rise_high"]
        covered += line["rise_low"] <= 0.1 <= line["rise_high"]
    assert covered >= 180  # about 95% of 200 (190 expected; 180 is 2.9 binomial sd below)
    flat = learning.trend(steps, [0.3 + rng.gauss(0, 0.08) for _ in steps])
    assert flat["rise_low"] < 0 < flat["rise_high"] or abs(flat["rise"]) < 3 * flat["rise_se"]
    assert learning.trend([1, 2], [0.1, 0.2]) is None and learning.trend([5, 5, 5], [0.1, 0.2, 0.3]) is None
    assert learning.quarter_means([1, 1, 2, 2, 3, 3, 4, 4]) == [1, 2, 3, 4] and learning.quarter_means([1]) == []


def test_standard_error_is_over_problems() -> None:
    from perl_cli.learning import standard_error

    assert standard_error([]) == 0.0 and standard_error([0.5]) == 0.0
    # Two problems: one solved by every sample, one by none: sd 0.707 / sqrt 2 = 0.5.
    assert standard_error([1.0, 0.0]) == pytest.approx(0.5)
    assert standard_error([0.25, 0.75, 0.5, 0.5]) == pytest.approx(math.sqrt(1 / 24 / 4))


def test_model_cache_entry_changes_with_the_build_code(monkeypatch) -> None:
    """A model built by other code is never reused: the build code is part of the cache key."""
    from perl_cli import models

    recipe = models.BUILTIN_MODELS["tiny-countdown"]
    before = recipe.digest()

    def other_warm_start(model, tokenizer, pairs, **settings):  # a changed warm start
        return None

    from perl_cli import builtin_parts, models_math

    math_before = models_math.TINY_MATH.digest()
    monkeypatch.setattr(builtin_parts, "warm_start", other_warm_start)  # the step both built-in models share
    assert recipe.digest() != before
    assert models_math.TINY_MATH.digest() != math_before


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


def test_learning_statistics_properties() -> None:
    """For arbitrary per-problem results: the paired gain is the difference of the means, its
    error is finite and non-negative, and an exact line's trend has that rise and no error."""
    from hypothesis import given, settings
    from hypothesis import strategies as hs

    from perl_cli import learning

    rates = hs.lists(hs.floats(0, 1), min_size=1, max_size=60)

    @settings(max_examples=200, deadline=None)
    @given(hs.data())
    def check(data) -> None:
        base = data.draw(rates)
        trained = data.draw(hs.lists(hs.floats(0, 1), min_size=len(base), max_size=len(base)))
        gain, se = learning.paired_gain(base, trained)
        assert gain == pytest.approx(learning.mean(trained) - learning.mean(base), abs=1e-9)
        assert se >= 0 and math.isfinite(se)
        slope = data.draw(hs.floats(-1e-2, 1e-2))
        steps = list(range(data.draw(hs.integers(3, 50))))
        line = learning.trend(steps, [0.5 + slope * s for s in steps])
        assert line is not None
        assert line["rise"] == pytest.approx(slope * (len(steps) - 1), abs=1e-9)
        assert line["rise_se"] == pytest.approx(0, abs=1e-7)

    check()
