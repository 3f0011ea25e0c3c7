"""How fast `perl status` answers on a suite of 103 experiments (target: well under 0.5 s).

Builds a realistic suite in a temporary directory: 60 completed experiments (1,000
metric rows, two checkpoints, a 2 MB log, eval.json, tracking files), 8 running, 5
failed with real tracebacks and 30 pending (in the config, no directory yet). Then it
times the whole command, `perl status SUITE` as a user types it (interpreter start,
imports, config expansion, reading every directory), as the median of several runs,
plus the in-process `load_suite` alone.

    python bench/status_speed.py [--repeats 7] [--budget 0.5]

Exit code 1 when the median wall time of the command is over the budget.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from suite_fixtures import CUDA_OOM, FAILURE_LOGS, failure, write_experiment  # noqa: E402

from perl_cli import config as configlib  # noqa: E402
from perl_cli import experiments_view as views  # noqa: E402
from perl_cli import state as st  # noqa: E402

N_EXPERIMENTS = 103
COMPLETED, RUNNING, FAILED = 60, 8, 5
BENCH_TOML = f"""
[base.training]
max_steps = 1000
logging_steps = 1
per_device_train_batch_size = 4
gradient_accumulation_steps = 8
num_generations = 8

[suites.bench]
name = "{{method}}_r{{rank}}_s{{seed}}"
[suites.bench.matrix]
method = ["lora"]
seed = {list(range(N_EXPERIMENTS))}
"""
LOG_LINE = "{'loss': 0.0123, 'grad_norm': 0.41, 'learning_rate': 1e-05, 'reward': 0.31, 'epoch': 0.02}\n"


def build(root: Path) -> tuple[Path, Path]:
    """(config path, output dir) of the benchmark suite."""
    cfg_path = root / "experiments.toml"
    cfg_path.write_text(BENCH_TOML)
    exps = configlib.expand(configlib.load(cfg_path), "bench")
    assert len(exps) == N_EXPERIMENTS
    sd = root / "output" / "bench"
    big_log = LOG_LINE * (2 * 1024 * 1024 // len(LOG_LINE))
    causes = list(FAILURE_LOGS)
    for i, exp in enumerate(exps):
        if i < COMPLETED:
            d = write_experiment(sd, exp, metrics_rows=1000, log=big_log, tracking=True, step_seconds=30.0)
        elif i < COMPLETED + RUNNING:
            d = write_experiment(sd, exp, state=st.RUNNING, step=400, metrics_rows=400, log=big_log,
                                 host="gpu-node-7", step_seconds=30.0)
        elif i < COMPLETED + RUNNING + FAILED:
            d = failure(sd, exp, causes[i % len(causes)])
            with open(d / st.LOG_FILE, "a") as f:
                f.write(CUDA_OOM)
        else:
            continue
    return cfg_path, root / "output"


def time_command(args: list[str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--budget", type=float, default=0.5, help="seconds allowed for the median command")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="perl-status-bench-") as tmp:
        cfg_path, out = build(Path(tmp))
        cfg = configlib.load(cfg_path)
        inproc = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            view = views.load_suite(out, "bench", cfg)
            inproc.append(time.perf_counter() - started)
        assert len(view.experiments) == N_EXPERIMENTS
        base = [sys.executable, "-m", "perl_cli", "status", "bench", "--config", str(cfg_path), "--output", str(out)]
        table = time_command(base, args.repeats)
        as_json = time_command([*base, "--json"], args.repeats)
        baseline = time_command([sys.executable, "-c", "pass"], args.repeats)
        size = views.disk_usage(out)
    median = statistics.median(table)
    print(f"suite: {N_EXPERIMENTS} experiments ({COMPLETED} completed, {RUNNING} running, {FAILED} failed, "
          f"{N_EXPERIMENTS - COMPLETED - RUNNING - FAILED} pending), {size / 1e6:.0f} MB on disk")
    print(f"load_suite in process:     median {statistics.median(inproc) * 1000:6.1f} ms")
    print(f"`perl status bench`:       median {median * 1000:6.1f} ms (min {min(table) * 1000:.1f})")
    print(f"`perl status bench --json`: median {statistics.median(as_json) * 1000:6.1f} ms")
    print(f"bare `python -c pass`:     median {statistics.median(baseline) * 1000:6.1f} ms")
    ok = median < args.budget
    print(f"{'OK' if ok else 'TOO SLOW'}: budget {args.budget * 1000:.0f} ms")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
