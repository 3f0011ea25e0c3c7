"""``python -m perl_cli.train <experiment-dir>``: run one experiment, exit with its code."""

from __future__ import annotations

import sys

from perl_cli.train.worker import EXIT_CONFIG_ERROR, run_experiment


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m perl_cli.train <experiment-dir>  (the directory holds config.json)", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return run_experiment(args[0])


if __name__ == "__main__":
    sys.exit(main())
