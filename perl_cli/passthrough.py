"""Keep the real Perl working although our console script is also called `perl`.

Inside a virtualenv our `perl` comes first on PATH, and git, autotools and many build
scripts call `perl -e ...` or `perl script.pl`. Anything that is not a PeRL command is
handed, unchanged, to the next `perl` on PATH that is not ours (exec: same arguments,
stdin, stdout and exit status).
"""

from __future__ import annotations

import os
import sys

COMMANDS = frozenset({"plan", "run", "cancel", "status", "diagnose", "report", "watch"})
# Flags that mean "PeRL" rather than "Perl" when they come first.
OUR_FLAGS = frozenset({"--help", "--install-completion", "--show-completion"})
_MARKER = b"perl_cli"


def is_perl_invocation(args: list[str], *, stdin_is_tty: bool) -> bool:
    """True when `args` are meant for the Perl interpreter, not for PeRL."""
    if not args:
        # `perl` alone reads a program from stdin; typed at a terminal it means our help.
        return not stdin_is_tty
    first = args[0]
    return first not in COMMANDS and first not in OUR_FLAGS


def find_system_perl(our_script: str, path: str | None = None) -> str | None:
    """The first `perl` on PATH that is neither this script nor another copy of PeRL."""
    ours = os.path.realpath(our_script) if our_script else ""
    skip_dirs = {os.path.dirname(ours), os.path.dirname(os.path.realpath(sys.executable))}
    for directory in (path if path is not None else os.environ.get("PATH", "")).split(os.pathsep):
        if not directory or os.path.realpath(directory) in skip_dirs:
            continue
        candidate = os.path.join(directory, "perl")
        if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            continue
        if os.path.realpath(candidate) == ours or _is_perl_cli_script(candidate):
            continue
        return candidate
    return None


def _is_perl_cli_script(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return head.startswith(b"#!") and _MARKER in head


def exec_system_perl(args: list[str], *, our_script: str) -> None:
    perl = find_system_perl(our_script)
    if perl is None:
        sys.stderr.write(
            "perl: this is PeRL (commands: plan, run, status, diagnose, report, watch), "
            "and no Perl interpreter was found on PATH to hand these arguments to.\n"
        )
        sys.exit(127)
    os.execv(perl, [perl, *args])
