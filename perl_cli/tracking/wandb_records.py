"""Read what a W&B run recorded locally: the `run-<id>.wandb` file of `wandb/[offline-]run-*/`.

wandb ≥ 0.19 no longer ships a Python reader for this file (`wandb.sdk.internal.datastore`
is gone; `wandb sync` has no `--view`), so this module reads it: a 7-byte header
(":W&B", magic 0xBEE1, version) and then LevelDB-log blocks of 32 KiB, each record a
7-byte chunk header (CRC-32 of type + data, length, type: full/first/middle/last) and
a chunk of a serialized `wandb_internal_pb2.Record` (wandb's own protobuf).

Used by the worker to learn which steps a resumed run already holds (so no step is
logged twice) and by the tests and `bench/` to check what reached the record. A file
cut short (the process was killed mid-write) ends at its last whole record.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAGIC = b":W&B" + struct.pack("<H", 0xBEE1)
FILE_HEADER = 7  # MAGIC + one version byte
BLOCK = 32768
CHUNK_HEADER = 7  # crc32 (4), length (2), type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class RecordError(ValueError):
    """Not a W&B run record, or a corrupt one."""


def raw_records(path: Path | str) -> Iterator[bytes]:
    """The serialized records of a .wandb file, in order."""
    data = Path(path).read_bytes()
    if data[: len(MAGIC)] != MAGIC:
        raise RecordError(f"{path}: not a W&B run record (no ':W&B' header)")
    pos, pending = FILE_HEADER, b""
    while pos + CHUNK_HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < CHUNK_HEADER:  # a block's tail too short for a header is padding
            pos += room
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        start = pos + CHUNK_HEADER
        chunk = data[start : start + length]
        if kind == 0 and length == 0:  # zero padding up to the block's end
            pos += room
            continue
        if len(chunk) < length:
            return  # cut short: the writer was killed mid-record
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise RecordError(f"{path}: checksum mismatch at byte {pos}")
        pos = start + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""
        else:
            raise RecordError(f"{path}: unknown chunk type {kind} at byte {pos}")


@dataclass
class RunRecord:
    """What one .wandb file holds, in plain Python values."""

    run_id: str = ""
    project: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # one dict per logged step, with "_step"
    summary: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False
    exit_code: int | None = None

    @property
    def steps(self) -> list[int]:
        return [int(row["_step"]) for row in self.history if "_step" in row]

    def keys(self) -> set[str]:
        """Every history key ever logged."""
        return {k for row in self.history for k in row}


def _value(item: Any) -> Any:
    """A history/summary/config item's value (JSON text in the record)."""
    text = item.value_json
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def _put(target: dict[str, Any], item: Any) -> None:
    """Store an item under its key; a media object or histogram (logged as a dict) arrives as
    one item per field with a `nested_key` path, and is put back together as a dict."""
    if item.key or not item.nested_key:
        target[item.key] = _value(item)
        return
    *parents, leaf = item.nested_key
    for name in parents:
        child = target.get(name)
        if not isinstance(child, dict):
            child = target[name] = {}
        target = child
    target[leaf] = _value(item)


def read_run(path: Path | str) -> RunRecord:
    """Parse one .wandb file."""
    from wandb.proto import wandb_internal_pb2 as pb

    out = RunRecord()
    for raw in raw_records(path):
        rec = pb.Record()
        try:
            rec.ParseFromString(raw)
        except Exception as exc:  # noqa: BLE001 - protobuf raises its own DecodeError
            raise RecordError(f"{path}: a record does not parse ({exc})") from None
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run = rec.run
            out.run_id, out.project, out.group = run.run_id, run.project, run.run_group
            out.tags = list(run.tags)
            out.resumed = out.resumed or bool(run.resumed)
            for item in run.config.update:
                _put(out.config, item)
        elif kind == "config":
            for item in rec.config.update:
                _put(out.config, item)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in rec.history.item:
                _put(row, item)
            if rec.history.HasField("step") and "_step" not in row:
                row["_step"] = rec.history.step.num
            out.history.append(row)
        elif kind == "summary":
            for item in rec.summary.update:
                _put(out.summary, item)
            for item in rec.summary.remove:
                out.summary.pop(_key(item), None)
        elif kind == "exit":
            out.exit_code = rec.exit.exit_code
    return out


def run_files(wandb_dir: Path | str, run_id: str | None = None) -> list[Path]:
    """The .wandb files under `wandb_dir` (an experiment's `wandb/`), oldest attempt first."""
    root = Path(wandb_dir)
    pattern = f"*run-*/run-{run_id}.wandb" if run_id else "*run-*/run-*.wandb"
    # Directory names are "[offline-]run-YYYYMMDD_HHMMSS-<id>": sort by the time stamp.
    return sorted(root.glob(pattern), key=lambda p: p.parent.name.split("run-", 1)[-1])


def read_runs(wandb_dir: Path | str, run_id: str | None = None) -> list[RunRecord]:
    """Every attempt's record of the run, oldest first (a resumed run has one per attempt)."""
    return [read_run(p) for p in run_files(wandb_dir, run_id)]


def last_step(wandb_dir: Path | str, run_id: str) -> int | None:
    """The highest step any earlier attempt of `run_id` recorded (None when none did).

    A file that cannot be read counts as holding nothing: the worker must not fail on it.
    """
    best: int | None = None
    for path in run_files(wandb_dir, run_id):
        try:
            steps = read_run(path).steps
        except (OSError, RecordError):
            continue
        if steps:
            best = max(steps) if best is None else max(best, max(steps))
    return best


def describe(wandb_dir: Path | str) -> str:
    """A plain-text account of every attempt's record under `wandb_dir` (see `main`)."""
    lines = []
    for path in run_files(wandb_dir):
        rec = read_run(path)
        families = sorted({k.split("/")[0] for k in rec.keys() if not k.startswith("_")})
        steps = rec.steps
        span = f"{len(steps)} steps ({steps[0]}–{steps[-1]})" if steps else "no steps"
        lines += [
            f"{path.parent.name}: run {rec.run_id}, project {rec.project}, group {rec.group}",
            f"  tags: {', '.join(rec.tags)}",
            f"  history: {span}, {len(rec.keys())} keys in {', '.join(families)}",
        ]
        held_out = [f"{k} = {v:.4g}" for k, v in sorted(rec.summary.items())
                    if k.startswith("eval/") and isinstance(v, (int, float))]
        lines.append("  summary: " + (", ".join(held_out) if held_out else "no held-out evaluation (yet)"))
    return "\n".join(lines) or f"no W&B run records under {wandb_dir}"


def main(argv: list[str] | None = None) -> int:
    """`python -m perl_cli.tracking.wandb_records output/<suite>/<experiment>/wandb`: what an
    offline run will upload, read without network or account."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m perl_cli.tracking.wandb_records EXPERIMENT_DIR/wandb", file=sys.stderr)
        return 2
    try:
        print(describe(args[0]))
    except (OSError, RecordError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
