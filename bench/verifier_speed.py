"""Worst-case time of the Countdown verifier on hostile completions (target: < 10 ms each).

Usage: python bench/verifier_speed.py
"""

from __future__ import annotations

import statistics
import time

from perl_cli.rewards import countdown_correct

CASES = {
    "import call": "<answer>__import__('os').system('echo pwned')</answer>",
    "power tower": "<answer>9**9**9</answer>",
    "100k nested parens": "<answer>" + "(" * 100_000 + "1" + ")" * 100_000 + "</answer>",
    "500k additions": "<answer>" + "1+" * 500_000 + "1</answer>",
    "1 MB number": "<answer>" + "9" * 1_000_000 + "</answer>",
    "200k answer tags": "<answer>" * 200_000 + "</answer>" * 200_000,
    "1 MB of text": "x" * 1_000_000,
    "50-deep correct": "<answer>" + "(" * 50 + "3+7+9" + ")" * 50 + "</answer>",
    "plain correct": "<think>easy</think><answer>(3+7)+9</answer>",
}
REPEATS = 20


def main() -> None:
    worst = 0.0
    for name, completion in CASES.items():
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            countdown_correct(completion, [3, 7, 9], 19)
            times.append(time.perf_counter() - start)
        worst = max(worst, max(times))
        print(f"{name:22s} median {statistics.median(times) * 1000:7.3f} ms   max {max(times) * 1000:7.3f} ms")
    print(f"worst case {worst * 1000:.3f} ms (target < 10 ms): {'OK' if worst < 0.010 else 'OVER'}")


if __name__ == "__main__":
    main()
