"""One rule for the names that become paths: suite and experiment names.

A suite writes into ``<output>/<suite>/`` and an experiment into
``<output>/<suite>/<experiment>/``, so a name must be a single, visible, portable path
component that readers do not skip: letters, digits, ``_``, ``.`` and ``-``; starting
with a letter, digit or ``_`` (not ``.``, which hides it, nor ``-``, which reads as a
flag); never ``..``; never containing ``.old-`` (``--fresh`` keeps old attempts as
``<name>.old-<timestamp>``); at most 100 characters (file systems allow 255 bytes per
component, and checkpoints and backups append to it).
"""

from __future__ import annotations

import re
from typing import Any

from perl_cli.state import OLD_DIR_MARK

MAX_NAME_LENGTH = 100
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
RULE = (
    "use letters, digits, '_', '.' and '-', start with a letter, digit or '_', "
    f"at most {MAX_NAME_LENGTH} characters, never '..' or '{OLD_DIR_MARK}'"
)


def name_problem(name: Any) -> str | None:
    """Why `name` cannot be a suite or experiment name, or None when it can."""
    if not isinstance(name, str):
        return f"it is a {type(name).__name__}, not a string"
    if not name:
        return "it is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"it is {len(name)} characters long"
    if not _NAME_RE.fullmatch(name):
        bad = sorted({c for c in name if not re.fullmatch(r"[A-Za-z0-9_.-]", c)})
        if bad:
            return f"it contains {', '.join(repr(c) for c in bad)}"
        return f"it starts with {name[0]!r}"
    if ".." in name:
        return "it contains '..'"
    if OLD_DIR_MARK in name:
        return f"it contains '{OLD_DIR_MARK}', which marks the old attempts `--fresh` keeps"
    return None
