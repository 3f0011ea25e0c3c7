"""`perl logs SUITE EXP [-f] [-n N]`: print, or follow, one experiment's train.log.

The log is opened only through perl_cli.logtail.open_safe (a regular file inside the
experiment directory: a FIFO or a link elsewhere is refused) and read in blocks, so a
huge log streams without being held in memory. Following prints the bytes appended
since the last read until the experiment is no longer running (its state changed, or
its worker is gone: the read model's stalled flag), then says how it ended. Text is
written as it is (never parsed as markup). Nothing here imports torch.
"""

from __future__ import annotations

import codecs
import difflib
import os
import sys
import time
from pathlib import Path
from typing import TextIO

from perl_cli import config as configlib
from perl_cli import experiments_view as views
from perl_cli import logtail
from perl_cli import state as st

BLOCK_BYTES = 64 * 1024
# How often a follow looks for new bytes and checks that the experiment still runs.
POLL_SECONDS = 0.5


def command(
    suite: str, name: str, *, config_path: Path | None, output: Path, follow: bool = False,
    lines: int | None = None, stall_after_s: float = views.DEFAULT_STALL_AFTER_S, out: TextIO | None = None,
) -> int:
    """0 when the log was printed (and, following, the experiment ended); 1 when it has no log
    yet; 130 when Ctrl+C stopped a follow."""
    out = out or sys.stdout
    if lines is not None and lines < 0:
        raise configlib.ConfigError(f"-n {lines}: must be 0 or more lines.")
    exp = _experiment(output, suite, name, config_path, stall_after_s)
    log = exp.dir / st.LOG_FILE if exp.dir is not None else None
    from perl_cli.status import ctrl_c_interrupts

    if follow and exp.state == st.QUEUED and log is not None and not log.exists():
        # A task waiting in Slurm's queue: its log comes when it starts. Wait for it.
        task = f" (Slurm task {exp.slurm_job_id})" if exp.slurm_job_id else ""
        print(f"perl: {name} is queued{task}; waiting for it to start (Ctrl+C stops).", file=sys.stderr)
        try:
            with ctrl_c_interrupts():
                while not log.exists() and _state(exp.dir) == st.QUEUED:
                    time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            return 130
    if log is None or not log.exists():
        print(f"perl: {name} has no {st.LOG_FILE} yet ({exp.state}).", file=sys.stderr)
        return 1

    try:
        with ctrl_c_interrupts():
            offset = _print_start(log, exp.dir, lines, out)
            if not follow:
                return 0
            state = _follow(log, exp.dir, offset, out, stall_after_s)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `perl logs ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    print(f"perl: {name} is {state}; no more output will come.", file=sys.stderr)
    return 0


def _experiment(output: Path, suite: str, name: str, config_path: Path | None, stall_after_s: float) -> views.ExperimentView:
    cfg = views.load_config(config_path)
    views.resolve_suite(output, suite, cfg)
    view = views.load_suite(output, suite, cfg, stall_after_s=stall_after_s, with_size=False)
    for e in view.experiments:
        if e.name == name:
            return e
    names = [e.name for e in view.experiments]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise configlib.ConfigError(
        f"suite '{suite}' has no experiment '{name}'.{hint} See the names with `perl status {suite} --verbose`."
    )


def _print_start(log: Path, root: Path, lines: int | None, out: TextIO) -> int:
    """Print the whole log, or its last `lines` lines; return the offset printed up to."""
    try:
        with logtail.open_safe(log, root) as f:
            size = f.seek(0, os.SEEK_END)
            if lines is not None:
                for line in logtail.tail_lines(log, lines, root=root):
                    out.write(line + "\n")
                out.flush()
                return size
            f.seek(0)
            return _copy(f, 0, size, out)
    except logtail.UnsafeFile as exc:
        raise configlib.ConfigError(f"{log}: {exc}; PeRL does not read it. Replace it with a regular file.") from None


def _copy(f, offset: int, end: int, out: TextIO, decoder=None) -> int:
    """Write bytes [offset, end) of `f` to `out` in blocks; return the new offset."""
    decoder = decoder or codecs.getincrementaldecoder("utf-8")(errors="replace")
    f.seek(offset)
    while offset < end:
        data = f.read(min(BLOCK_BYTES, end - offset))
        if not data:
            break
        offset += len(data)
        out.write(decoder.decode(data))
    out.flush()
    return offset


def _follow(log: Path, root: Path, offset: int, out: TextIO, stall_after_s: float) -> str:
    """Print what is appended to `log` until its experiment stops running; return the state it ended in."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        records = views.read_records(root)
        state = _state(root)
        # Queued: a Slurm task waiting (again, after a requeue) to run; its log goes on when it does.
        running = state == st.QUEUED or (state == st.RUNNING and not st.is_stalled(records.status, stall_after_s=stall_after_s))
        offset = _append(log, root, offset, out, decoder)
        if not running:
            return "stalled (its worker is gone)" if state == st.RUNNING else state
        time.sleep(POLL_SECONDS)


def _state(root: Path) -> str:
    """The experiment's state; a queued Slurm task is checked with Slurm (answers reused for 20 s),
    so a task cancelled while it waited does not keep a follow waiting forever."""
    records = views.read_records(root)
    state = st.UNREADABLE if records.problem else st.effective_state(records.status)
    if state == st.QUEUED and isinstance(records.status.get("slurm"), dict):
        from perl_cli.scheduler.slurm import seen_by_slurm

        state = seen_by_slurm({root.name: records.status}).get(root.name, {}).get("state", state)
    return state


def _append(log: Path, root: Path, offset: int, out: TextIO, decoder) -> int:
    try:
        with logtail.open_safe(log, root) as f:
            size = f.seek(0, os.SEEK_END)
            if size < offset:  # truncated or replaced (a --fresh run): start over
                out.write(f"--- {log.name} was truncated; from its start ---\n")
                offset = 0
            return _copy(f, offset, size, out, decoder)
    except OSError:
        return offset  # moved away for a moment (a --fresh run renames the directory)
