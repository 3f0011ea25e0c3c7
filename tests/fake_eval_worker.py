"""A synthetic evaluation worker that follows `python -m perl_cli.train.eval_worker`'s protocol, in milliseconds.

    python tests/fake_eval_worker.py <exp_dir>

Like the real one it reads config.json and eval_request.json (the benchmark specs asked
for), evaluates every benchmark with no result for this fingerprint, saves each problem as
it goes (benchmarks/.<name>.partial.jsonl) so a stopped evaluation continues after the
saved ones (and says so in train.log, as benchmark_eval does), writes benchmarks/<name>.json
({spec, fingerprint, problems}) and the summaries into eval.json, and leaves the experiment
`completed` at the step training reached. SIGTERM/SIGINT: exit 143/130, `interrupted`.

A problem's samples are a pure function of (fingerprint, benchmark, index), so a local and a
Slurm evaluation of the same experiment write the same files. Training leaves eval.json
behind (the real worker's final eval), which `perl eval` counts on to continue a stopped
evaluation: this worker writes an empty one first when the synthetic trainer left none.
Knobs, from the environment:

- PERL_FAKE_EVAL_SECONDS: seconds per problem (default 0.02)
- PERL_FAKE_EVAL_FAST_AFTER: a path; once it exists, 0.01 s per problem (to outlive a time limit once)
- PERL_FAKE_EVAL_LOG: append one line "<name> <pid>" per launch
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from perl_cli import benchmarks, outcomes, state

REQUEST_FILE = "eval_request.json"
received: list[int] = []


def on_signal(signum: int, frame: object) -> None:
    received.append(signum)


def samples(fingerprint: str, name: str, index: int, n: int) -> list[bool]:
    digest = hashlib.sha256(f"{fingerprint}/{name}/{index}".encode()).digest()
    return [digest[i] % 3 == 0 for i in range(n)]


def evaluate(exp_dir: Path, name: str, spec: dict, fingerprint: str, step_s: float) -> dict | None:
    """The benchmark's summary, or None when a signal stopped it (what was done is saved)."""
    partial = benchmarks.result_path(exp_dir, name).with_name(f".{name}.partial.jsonl")
    partial.parent.mkdir(parents=True, exist_ok=True)
    rows = [r for r in state.read_jsonl(partial) if r.get("fingerprint") == fingerprint]
    total = int(spec.get("limit") or 8)
    if rows:
        print(f"benchmark {name}: continuing after {len(rows)} of {total} problems", flush=True)
    fast_after = os.environ.get("PERL_FAKE_EVAL_FAST_AFTER")
    while len(rows) < total:
        if received:
            return None
        time.sleep(0.01 if fast_after and os.path.exists(fast_after) else step_s)
        row = {"index": len(rows), "correct": samples(fingerprint, name, len(rows), int(spec.get("n") or 1)),
               "fingerprint": fingerprint}
        state.append_jsonl(partial, row)
        rows.append(row)
        state.update_status(exp_dir, heartbeat=state.now())
    problems = [{"index": r["index"], "correct": r["correct"]} for r in rows]
    state.atomic_write_json(benchmarks.result_path(exp_dir, name),
                            {"spec": spec, "fingerprint": fingerprint, "problems": problems})
    partial.unlink()
    correct = [sum(p["correct"]) / len(p["correct"]) for p in problems]
    return {"problems": len(problems), "pass@1": sum(correct) / len(correct)}


def main() -> int:
    exp_dir = Path(sys.argv[1])
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    config = json.loads((exp_dir / state.CONFIG_FILE).read_text())
    request = json.loads((exp_dir / REQUEST_FILE).read_text())
    fingerprint = config["fingerprint"]
    if os.environ.get("PERL_FAKE_EVAL_LOG"):
        with open(os.environ["PERL_FAKE_EVAL_LOG"], "a", encoding="utf-8") as f:
            f.write(f"{config['name']} {os.getpid()}\n")
    pid = os.getpid()
    state.update_status(exp_dir, state=state.RUNNING, pid=pid, pid_start_time=state.process_start_time(pid),
                        heartbeat=state.now())
    if not (exp_dir / state.EVAL_FILE).exists():
        state.atomic_write_json(exp_dir / state.EVAL_FILE, {})
    step_s = float(os.environ.get("PERL_FAKE_EVAL_SECONDS", "0.02"))
    summaries = {}
    for name, spec in request["benchmarks"].items():
        if benchmarks.is_done(exp_dir, name, spec, fingerprint):
            continue
        summary = evaluate(exp_dir, name, spec, fingerprint, step_s)
        if summary is None:
            code = outcomes.EXIT_SIGINT if received[0] == signal.SIGINT else outcomes.EXIT_SIGTERM
            print("[perl] evaluation interrupted; `perl eval` continues it from the last saved batch", flush=True)
            state.update_status(exp_dir, state=state.INTERRUPTED, exit_code=code, ended=state.now())
            return code
        summaries[name] = summary
    results = state.read_json(exp_dir / state.EVAL_FILE) or {}
    results["benchmarks"] = {**(results.get("benchmarks") or {}), **summaries}
    state.atomic_write_json(exp_dir / state.EVAL_FILE, results)
    state.update_status(exp_dir, state=state.COMPLETED, exit_code=outcomes.EXIT_OK, ended=state.now(), heartbeat=state.now())
    return outcomes.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
