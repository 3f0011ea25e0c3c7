"""Entry point of the `perl` console script and of `python -m perl_cli`."""

from __future__ import annotations

import os
import sys


def main() -> None:
    # Decide before importing Typer: a call meant for the Perl interpreter must reach
    # it untouched and fast (git and build tools call `perl` all the time).
    from perl_cli.passthrough import exec_system_perl, is_perl_invocation

    args = sys.argv[1:]
    # Shell completion calls us with no arguments and _PERL_COMPLETE set: that is ours.
    completing = "_PERL_COMPLETE" in os.environ
    if not completing and is_perl_invocation(args, stdin_is_tty=sys.stdin.isatty()):
        exec_system_perl(args, our_script=sys.argv[0])
    from perl_cli.cli import app

    app(prog_name="perl")


if __name__ == "__main__":
    main()
