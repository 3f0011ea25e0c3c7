"""`perl` with the synthetic worker instead of `python -m perl_cli.train` (tests, bench).

    python tests/run_with_fake_worker.py run SUITE [perl run options...]

The whole CLI path runs as users run it (option parsing, messages, exit codes); only
the worker command differs.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

FAKE_WORKER = str(Path(__file__).with_name("fake_worker.py"))


def main() -> None:
    from perl_cli import scheduler
    from perl_cli.cli import app

    scheduler.RunOptions = functools.partial(scheduler.RunOptions, worker_cmd=(sys.executable, FAKE_WORKER))
    app(prog_name="perl")


if __name__ == "__main__":
    main()
