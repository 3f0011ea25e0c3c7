"""How long the readers take on the hostile experiment files of issue 9 §2 (target: < 1 s each).

Builds the mixed test suite, damages one experiment per case, and times in-process
`load_suite` + `diagnose_suite` (verbose tail) + `report.build` (no plots), each case in a
child process with a timeout, so a reader that blocks (a FIFO, /dev/zero) is reported as
a hang instead of hanging the benchmark:

- train.log is a named pipe; metrics.jsonl links to /dev/zero;
- a 60 MB `error` string in status.json; a 4 MB one-line traceback in train.log;
- train.log links to a file outside the experiment (is its content shown?).

    python bench/hostile_files.py [--budget 1.0]

Exit code 1 when a case takes longer than the budget, hangs, or leaks the outside file.
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
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

CASES = ("fifo_log", "metrics_dev_zero", "error_60mb", "log_line_4mb", "log_link_outside")
HANG_S = 60.0


def damage(case: str, out: Path) -> None:
    from perl_cli import state as st

    d = out / "core" / "adalora_r16_s42"
    if case == "fifo_log":
        (d / st.LOG_FILE).unlink()
        os.mkfifo(d / st.LOG_FILE)
    elif case == "metrics_dev_zero":
        (d / st.METRICS_FILE).unlink()
        (d / st.METRICS_FILE).symlink_to("/dev/zero")
    elif case == "error_60mb":
        status = st.read_json(d / st.STATUS_FILE)
        (d / st.STATUS_FILE).write_text(json.dumps({**status, "error": "RuntimeError: " + "x" * 60_000_000}))
    elif case == "log_line_4mb":
        (d / st.LOG_FILE).write_text("Traceback (most recent call last):\nRuntimeError: " + "y" * 4_000_000 + "\n")
    elif case == "log_link_outside":
        secret = out.parent / "shadow"
        secret.write_text("root:SECRETHASH:19000::::::\n")
        (d / st.LOG_FILE).unlink()
        (d / st.LOG_FILE).symlink_to(secret)


def measure(case: str) -> None:
    """In the child: build, damage, time the three readers; print one JSON line."""
    from suite_fixtures import build_mixed_suite

    from perl_cli import config as configlib
    from perl_cli import diagnose as dg
    from perl_cli import experiments_view as views
    from perl_cli import report as reportlib

    tmp = Path(tempfile.mkdtemp(prefix="perl-hostile-"))
    cfg_path, out, _ = build_mixed_suite(tmp)
    damage(case, out)
    cfg = configlib.load(cfg_path)
    start = time.perf_counter()
    view = views.load_suite(out, "core", cfg)
    diagnoses = dg.diagnose_suite(view, tail=dg.VERBOSE_LINES)
    shown = json.dumps(dg.to_json(view, diagnoses))
    text, _ = reportlib.build(view, draw=False, config_path=cfg_path, output=out)
    seconds = time.perf_counter() - start
    print(json.dumps({"case": case, "seconds": seconds, "leaked": "SECRETHASH" in shown + text}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=1.0)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        measure(args.case)
        return 0
    ok = True
    for case in CASES:
        try:
            proc = subprocess.run([sys.executable, __file__, "--case", case], capture_output=True, text=True, timeout=HANG_S)
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        except subprocess.TimeoutExpired:
            print(f"{case:18s} HANG (> {HANG_S:g} s)")
            ok = False
            continue
        except (IndexError, ValueError):
            print(f"{case:18s} ERROR\n{proc.stderr[-2000:]}")
            ok = False
            continue
        bad = result["seconds"] > args.budget or result["leaked"]
        ok &= not bad
        leak = "  LEAKS the outside file" if result["leaked"] else ""
        print(f"{case:18s} {result['seconds']:.3f} s (status + diagnose --verbose + report){leak}{'  OVER BUDGET' if bad else ''}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
