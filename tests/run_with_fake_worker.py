"""`perl` with the synthetic worker instead of `python -m perl_cli.train` (tests, bench).

    python tests/run_with_fake_worker.py run SUITE [perl run options...]
    python tests/run_with_fake_worker.py eval SUITE [perl eval options...]

The whole CLI path runs as users run it (option parsing, messages, exit codes); only
the worker commands differ (tests/fake_worker.py trains, tests/fake_eval_worker.py evaluates).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

FAKE_WORKER = str(Path(__file__).with_name("fake_worker.py"))
FAKE_EVAL_WORKER = str(Path(__file__).with_name("fake_eval_worker.py"))


def main() -> None:
    from perl_cli import scheduler
    from perl_cli.cli import app

    scheduler.RunOptions = functools.partial(scheduler.RunOptions, worker_cmd=(sys.executable, FAKE_WORKER),
                                             eval_worker_cmd=(sys.executable, FAKE_EVAL_WORKER))
    app(prog_name="perl")


if __name__ == "__main__":
    main()
