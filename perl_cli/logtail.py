"""Read the end of a file without reading the file: logs and metrics can be gigabytes.

Readers seek to the end and read backwards in blocks until they have the lines they
need or hit a byte budget, so the cost depends on what is asked, not on the file size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

BLOCK_BYTES = 64 * 1024
# Never read more than this from the end of a log, however many lines are asked for.
MAX_TAIL_BYTES = 8 * 1024 * 1024


def tail_bytes(path: Path | str, n_bytes: int) -> bytes:
    """The last `n_bytes` bytes of `path` (fewer if the file is shorter; b'' if missing)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - max(0, n_bytes))
            f.seek(start)
            return f.read(size - start)
    except OSError:
        return b""


def tail_lines(path: Path | str, n: int, *, max_bytes: int = MAX_TAIL_BYTES) -> list[str]:
    """The last `n` lines of `path`, decoded leniently; [] if it is missing or empty.

    Reads blocks from the end until it holds n+1 line breaks or `max_bytes`; a line cut
    by the byte budget is dropped, so every returned line is whole.
    """
    if n <= 0:
        return []
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            pos, data = size, b""
            while pos > 0 and data.count(b"\n") <= n and size - pos < max_bytes:
                step = min(BLOCK_BYTES, pos, max_bytes - (size - pos))
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
    except OSError:
        return []
    chunks = data.split(b"\n")
    if chunks and chunks[-1] == b"":
        chunks.pop()
    if pos > 0 and chunks:
        chunks.pop(0)  # the first line may be cut
    # Progress bars rewrite a line with '\r': keep what was last shown.
    return [c.decode("utf-8", errors="replace").rstrip("\r").rsplit("\r", 1)[-1] for c in chunks[-n:]]


def last_json_rows(path: Path | str, n: int) -> list[dict]:
    """The last `n` complete JSON-object lines of a .jsonl file (oldest first)."""
    rows = []
    for line in tail_lines(path, n + 1, max_bytes=BLOCK_BYTES * 4):
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a torn last line while the writer appends
        if isinstance(row, dict):
            rows.append(row)
    return rows[-n:]
