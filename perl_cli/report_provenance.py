"""The report's environment section: what produced the runs, once, and a warning when
the runs it compares were made by different library versions (provenance.py)."""

from __future__ import annotations

from typing import Any

from perl_cli import provenance

WARNING = "**Warning: the runs compared here were produced by different library versions**"
LABELS = {"perl": "PeRL", "perl_commit": "PeRL commit", "python": "Python", "cuda": "CUDA", "gpus": "GPUs",
          "host": "host"}


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none (CPU)"
    return str(value)


def records(rows: list[Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """{experiment: provenance} of the rows that have one (each earlier stack of a resumed
    run counts as its own record), and the names of those without one."""
    found: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    for row in rows:
        data = provenance.read(getattr(row.view, "dir", None))
        if data is None:
            missing.append(row.name)
            continue
        found[row.name] = data
        for i, earlier in enumerate(data.get("previous") or []):
            if isinstance(earlier, dict):
                found[f"{row.name} (before resume {i + 1})"] = earlier
    return found, missing


def differing(found: dict[str, dict[str, Any]], keys: tuple[str, ...]) -> dict[str, dict[str, list[str]]]:
    """{key: {shown value: [experiments]}} for the keys with more than one value."""
    out: dict[str, dict[str, list[str]]] = {}
    for key in keys:
        values: dict[str, list[str]] = {}
        for name, data in found.items():
            values.setdefault(_shown(data.get(key)), []).append(name)
        if len(values) > 1:
            out[key] = values
    return out


def markdown(rows: list[Any]) -> list[str]:
    found, missing = records(rows)
    if not found:
        return []
    lines = ["## Environment", ""]
    mixed = differing(found, provenance.STACK_KEYS)
    if mixed:
        lines += [WARNING + ": " + ", ".join(LABELS.get(k, k) for k in mixed) + ". Their numbers may not be comparable.", ""]
    lines += ["| | version |", "|---|---|"]
    first = next(iter(found.values()))
    for key in (*provenance.STACK_KEYS, *provenance.PLACE_KEYS):
        spread = differing(found, (key,)).get(key)
        if spread is None:
            if key == "vllm" and first.get(key) is None:
                continue  # not installed anywhere: nothing to say
            lines.append(f"| {LABELS.get(key, key)} | {_shown(first.get(key))} |")
        else:
            cell = "; ".join(f"{value}: {', '.join(sorted(names))}" for value, names in sorted(spread.items()))
            lines.append(f"| {LABELS.get(key, key)} | {cell.replace('|', '/')} |")
    lines.append("")
    if missing:
        lines += [f"{len(missing)} experiments have no `{provenance.PROVENANCE_FILE}` (not started, or run by a PeRL "
                  "that did not record it): " + ", ".join(sorted(missing)[:10]) + ("…" if len(missing) > 10 else ""), ""]
    return lines


def warning_lines(text: str) -> list[str]:
    """The summary's warning lines, for the console."""
    return [line for line in text.splitlines() if line.startswith(WARNING)]
