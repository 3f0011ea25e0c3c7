"""Keep the real Perl working although our console script is also called `perl`.

Inside a virtualenv our `perl` comes first on PATH, and git, autotools and many build
scripts call `perl -e ...` or `perl script.pl`. Anything that is not a PeRL command is
handed, unchanged, to the next `perl` on PATH that is not ours (exec: same arguments,
stdin, stdout and exit status).
"""

from __future__ import annotations

import difflib
import os
import sys

# Kept in step with cli.py's commands by a test (importing Typer here would slow git's perl calls).
COMMANDS = frozenset({"plan", "run", "status", "diagnose", "report", "watch", "cancel", "logs", "version", "eval"})
# Flags that mean "PeRL" rather than "Perl" when they come first (`--version`, `-h`, `-v` stay Perl's).
OUR_FLAGS = frozenset({"--help", "--install-completion", "--show-completion", "--perl-version"})
_MARKER = b"perl_cli"


def is_perl_invocation(args: list[str], *, stdin_is_tty: bool) -> bool:
    """True when `args` are meant for the Perl interpreter, not for PeRL."""
    if not args:
        # `perl` alone reads a program from stdin; typed at a terminal it means our help.
        return not stdin_is_tty
    first = args[0]
    return first not in COMMANDS and first not in OUR_FLAGS


def near_miss(args: list[str]) -> str | None:
    """The PeRL command the user probably meant (`perl stauts`), or None.

    Only for a first argument that is no file (a Perl script) and no flag: those are Perl's.
    """
    if not args or args[0].startswith("-") or os.path.exists(args[0]):
        return None
    match = difflib.get_close_matches(args[0], sorted(COMMANDS), n=1, cutoff=0.7)
    return match[0] if match else None


def find_system_perl(our_script: str, path: str | None = None) -> str | None:
    """The first `perl` on PATH that is neither this script nor another copy of PeRL."""
    ours = os.path.realpath(our_script) if our_script else ""
    # Only our own script's directory: the interpreter's real directory is often /usr/bin
    # (a venv made from the system Python), where the system Perl lives too. Other copies
    # of PeRL are recognised by their contents below.
    skip_dirs = {os.path.dirname(ours)}
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
    meant = near_miss(args)
    if meant:
        sys.stderr.write(
            f"perl: '{args[0]}' is not a PeRL command; did you mean `perl {meant}`? "
            "Handing it to the Perl interpreter, as for any non-PeRL arguments.\n"
        )
    perl = find_system_perl(our_script)
    if perl is None:
        sys.stderr.write(
            f"perl: this is PeRL (commands: {', '.join(sorted(COMMANDS))}), "
            "and no Perl interpreter was found on PATH to hand these arguments to.\n"
        )
        sys.exit(127)
    os.execv(perl, [perl, *args])
