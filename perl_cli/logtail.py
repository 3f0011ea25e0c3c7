"""Bounded, safe reads of an experiment's files: readers never hang, never leak, never read gigabytes.

Every reader opens files through `open_safe`: only a regular file whose real path lies
inside the experiment directory (a symlink to /etc/shadow or /dev/zero is refused), opened
without blocking (a FIFO is refused, not waited on). `read_head` reads at most a byte
budget from the start; `tail_lines` and `tail_bytes` seek to the end and read backwards
in blocks until they have what is asked or hit a byte budget, so the cost depends on what
is asked, not on the file size. Lines are capped at `MAX_LINE_CHARS` so one huge line
(a 4 MB traceback) cannot slow down what is done with it.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import BinaryIO

BLOCK_BYTES = 64 * 1024
# Never read more than this from the end of a log, however many lines are asked for.
MAX_TAIL_BYTES = 8 * 1024 * 1024
# A line longer than this is cut (with a marker): readers show and search lines, not megabytes.
MAX_LINE_CHARS = 4000


class UnsafeFile(OSError):
    """A path readers refuse to open: it leads outside its directory or is not a regular file."""


def open_safe(path: Path | str, root: Path | str | None = None) -> BinaryIO:
    """`path` opened for binary reading, if it is a regular file inside `root` (default: its directory).

    Raises FileNotFoundError when it is missing and UnsafeFile when it is a FIFO, a
    device, a directory or a symlink that resolves outside `root`.
    """
    path = Path(path)
    real_root = os.path.realpath(root if root is not None else path.parent)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise UnsafeFile(f"{path.name} is a link that leads outside {root if root is not None else path.parent}")
    # O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOFOLLOW: the path was resolved above.
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode) else "a device or socket"
            raise UnsafeFile(f"{path.name} is {kind}, not a regular file")
    except BaseException:
        os.close(fd)
        raise
    # Outside the try: once fdopen has the descriptor it closes it itself if interrupted, and
    # closing it again here would turn a Ctrl+C into "Bad file descriptor" (a lost Ctrl+C).
    return os.fdopen(fd, "rb")


class TooLarge(OSError):
    """A file over the byte budget of what it holds (a status file of megabytes is not one)."""


def read_head(path: Path | str, max_bytes: int, root: Path | str | None = None) -> bytes:
    """The whole of `path` when it has at most `max_bytes` bytes; TooLarge otherwise (never reads more)."""
    with open_safe(path, root) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TooLarge(f"{Path(path).name} is larger than {max_bytes:,} bytes")
    return data


def tail_bytes(path: Path | str, n_bytes: int, root: Path | str | None = None) -> bytes:
    """The last `n_bytes` bytes of `path` (fewer if the file is shorter; b'' if missing or refused)."""
    try:
        with open_safe(path, root) as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - max(0, n_bytes))
            f.seek(start)
            return f.read(size - start)
    except OSError:
        return b""


def tail_lines(
    path: Path | str, n: int, *, max_bytes: int = MAX_TAIL_BYTES, root: Path | str | None = None
) -> list[str]:
    """The last `n` lines of `path`, decoded leniently; [] if it is missing, empty or refused.

    Reads blocks from the end until it holds n+1 line breaks or `max_bytes`; a line cut
    by the byte budget is dropped, so every returned line is whole (up to MAX_LINE_CHARS).
    """
    if n <= 0:
        return []
    try:
        with open_safe(path, root) as f:
            size = f.seek(0, os.SEEK_END)
            pos, blocks, breaks = size, [], 0
            while pos > 0 and breaks <= n and size - pos < max_bytes:
                step = min(BLOCK_BYTES, pos, max_bytes - (size - pos))
                pos -= step
                f.seek(pos)
                blocks.append(f.read(step))
                breaks += blocks[-1].count(b"\n")
    except OSError:
        return []
    data = b"".join(reversed(blocks))
    chunks = data.split(b"\n")
    if chunks and chunks[-1] == b"":
        chunks.pop()
    if pos > 0 and chunks:
        chunks.pop(0)  # the first line may be cut
    # Progress bars rewrite a line with '\r': keep what was last shown.
    return [cap_line(c.decode("utf-8", errors="replace").rstrip("\r").rsplit("\r", 1)[-1]) for c in chunks[-n:]]


def cap_line(line: str, limit: int = MAX_LINE_CHARS) -> str:
    return line if len(line) <= limit else line[: limit - 1] + "…"


def last_json_rows(path: Path | str, n: int, root: Path | str | None = None, max_bytes: int = BLOCK_BYTES * 4) -> list[dict]:
    """The last `n` complete JSON-object lines of a .jsonl file (oldest first), within `max_bytes` of its end."""
    rows = []
    for line in tail_lines(path, n + 1, max_bytes=max_bytes, root=root):
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            continue  # a torn last line while the writer appends; garbage
        if isinstance(row, dict):
            rows.append(row)
    return rows[-n:]
