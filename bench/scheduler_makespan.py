"""Benchmark: how close `perl run` packs 16 short jobs on 4 fake GPU slots.

    python bench/scheduler_makespan.py [--jobs 16] [--gpus 2] [--jobs-per-gpu 2] [--seconds 2.0]

Runs the real scheduler (the `perl run` CLI path) with the synthetic worker
(tests/fake_worker.py) on fake GPUs and prints

- makespan / ideal, where ideal is the sum of the jobs' own durations (as each worker
  measured them) divided by the number of slots (target <= 1.05); makespan is shown from
  the first job's start to the last job's end, and for the whole `perl run` process, and
- dispatch latency: on each slot, the time from a job's end to the next job's start
  (interpreter start), mean and max (target < 1 s).

Not a timed test: numbers depend on the machine; this prints them for the record.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "tests" / "run_with_fake_worker.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--gpus", type=int, default=4)
    parser.add_argument("--jobs-per-gpu", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each job")
    args = parser.parse_args()
    steps = 20
    slots = args.gpus * args.jobs_per_gpu
    with tempfile.TemporaryDirectory(prefix="perl-bench-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "experiments.toml").write_text(f"""
[suites.bench]
name = "job_s{{seed}}"
[suites.bench.base.model]
model_name_or_path = "builtin:tiny-random"
[suites.bench.base.training]
max_steps = {steps}
save_steps = {steps}
per_device_train_batch_size = 4
gradient_accumulation_steps = 2
num_generations = 4
[suites.bench.base.resources]
memory_mb = 1000
[suites.bench.matrix]
seed = {list(range(args.jobs))}
""")
        gpus = [{"index": i, "name": "FakeGPU", "memory_total_mb": 80000, "memory_used_mb": 0} for i in range(args.gpus)]
        timing = tmp_path / "timing.jsonl"
        env = {
            **os.environ,
            "PERL_FAKE_GPUS": json.dumps(gpus),
            "PERL_FAKE_STEP_SECONDS": str(args.seconds / steps),
            "PERL_FAKE_TIMING_LOG": str(timing),
            "OMP_NUM_THREADS": "1",
        }
        cmd = [sys.executable, str(DRIVER), "run", "bench", "--config", str(tmp_path / "experiments.toml"),
               "--output", str(tmp_path / "out"), "--jobs-per-gpu", str(args.jobs_per_gpu)]
        t0 = time.time()
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        makespan = time.time() - t0
        if result.returncode != 0:
            sys.exit(f"perl run failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        rows = [json.loads(line) for line in timing.read_text().splitlines()]
    ideal = sum(r["end"] - r["start"] for r in rows) / slots
    # Reconstruct slots: on each GPU, chain each job to the earliest-ending job before it.
    latencies = []
    for gpu in {r["gpu"] for r in rows}:
        on_gpu = sorted((r for r in rows if r["gpu"] == gpu), key=lambda r: r["start"])
        ends: list[float] = []
        for r in on_gpu:
            if len(ends) >= args.jobs_per_gpu:
                previous = min(e for e in ends if e <= r["start"] + 0.5)
                ends.remove(previous)
                latencies.append(r["start"] - previous)
            ends.append(r["end"])
    first_start = min(r["start"] for r in rows) - t0
    print(f"{len(rows)} jobs of ~{args.seconds:g}s on {slots} slots ({args.gpus} fake GPUs x {args.jobs_per_gpu})")
    scheduling = max(r["end"] for r in rows) - min(r["start"] for r in rows)
    print(f"ideal {ideal:.2f}s (sum of job durations / {slots} slots)")
    print(f"makespan, first job start → last job end: {scheduling:.2f}s → {scheduling / ideal:.3f} x ideal (target <= 1.05)")
    print(f"makespan, whole `perl run` process:        {makespan:.2f}s → {makespan / ideal:.3f} x ideal "
          f"(includes {first_start:.2f}s of Python start-up, config and inventory before the first job)")
    if latencies:
        print(f"dispatch latency (job end → next job start on the slot): mean {1000 * sum(latencies) / len(latencies):.0f} ms, "
              f"max {1000 * max(latencies):.0f} ms over {len(latencies)} hand-overs (target < 1 s)")


if __name__ == "__main__":
    main()
