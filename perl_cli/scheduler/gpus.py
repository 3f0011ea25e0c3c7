"""The GPU inventory: the one module that talks to NVML (nvidia-ml-py).

NVML is initialised once and device handles are cached; `refresh()` re-reads only
memory and utilisation through those handles. The environment variable
`PERL_FAKE_GPUS` (contract) replaces NVML entirely: inline JSON, or the path of a JSON
file, holding a list of ``{"index", "name", "memory_total_mb", "memory_used_mb"}``, each
optionally with ``"processes": [{"pid", "used_memory_mb"}]`` (what `processes()` reports).
Fake GPUs are for tests and "what if" planning: jobs placed on them still get
`CUDA_VISIBLE_DEVICES`, and run on the CPU. A file is re-read on every refresh, so a
test (or a curious user) can change a fake GPU's used memory while a suite runs.

With no driver, no GPU, or a broken fake list, the inventory is empty and `reason`
says why, in one sentence the scheduler shows once.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

FAKE_GPUS_ENV = "PERL_FAKE_GPUS"
MAX_FAKE_NUMBER = 2**53  # indices and MiB beyond this are typos (1e999 is infinity)
MIB = 1024 * 1024


@dataclass
class GPU:
    index: int
    name: str
    memory_total_mb: int
    memory_used_mb: int
    uuid: str = ""
    utilization: int | None = None  # percent, None when unknown

    @property
    def memory_free_mb(self) -> int:
        return max(0, self.memory_total_mb - self.memory_used_mb)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "memory_free_mb": self.memory_free_mb}


@dataclass
class GPUProcess:
    """A compute process on a GPU (NVML's running-process query): its pid and memory (None: unknown)."""

    pid: int
    used_memory_mb: int | None = None


class GPUInventoryError(Exception):
    """PERL_FAKE_GPUS is set but unusable; the message says how to fix it."""


class Inventory:
    """The GPUs of this machine (or the fake ones), with NVML handles cached."""

    def __init__(self) -> None:
        self.gpus: list[GPU] = []
        self.source = "none"  # "nvml" | "fake" | "none"
        self.reason = ""
        self._handles: dict[int, Any] = {}
        self._nvml: Any = None
        self._fake_path: Path | None = None
        self._fake_processes: dict[int, list[GPUProcess]] = {}

    @property
    def fake(self) -> bool:
        return self.source == "fake"

    @property
    def static(self) -> bool:
        """Inline fake GPUs: their used memory never changes, so it never frees up."""
        return self.fake and self._fake_path is None

    def by_index(self) -> dict[int, GPU]:
        return {g.index: g for g in self.gpus}

    def refresh(self) -> list[GPU]:
        """Re-read used memory and utilisation (cheap: handles are cached)."""
        if self.source == "nvml":
            for gpu in self.gpus:
                handle = self._handles[gpu.index]
                try:
                    mem = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                    gpu.memory_total_mb = int(mem.total // MIB)
                    gpu.memory_used_mb = int(mem.used // MIB)
                    gpu.utilization = int(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                except self._nvml.NVMLError:
                    pass  # keep the last reading; a transient NVML error must not stop a suite
        elif self.source == "fake" and self._fake_path is not None:
            try:
                fresh = {g.index: g for g in _parse_fake(self._fake_path.read_text(encoding="utf-8"))}
            except (OSError, GPUInventoryError):
                return self.gpus
            for gpu in self.gpus:
                if gpu.index in fresh:
                    gpu.memory_used_mb = fresh[gpu.index].memory_used_mb
                    gpu.memory_total_mb = fresh[gpu.index].memory_total_mb
        return self.gpus

    def processes(self) -> dict[int, list[GPUProcess]]:
        """The compute processes on each GPU, by GPU index (for the monitor; the scheduler never asks).

        A GPU whose query fails is left out: nothing is known about it.
        """
        if self.source == "fake":
            if self._fake_path is not None:
                try:
                    _parse_fake(self._fake_path.read_text(encoding="utf-8"), self._fake_processes)
                except (OSError, GPUInventoryError):
                    pass  # keep the last reading
            return {g.index: list(self._fake_processes.get(g.index, [])) for g in self.gpus}
        out: dict[int, list[GPUProcess]] = {}
        if self.source != "nvml":
            return out
        for gpu in self.gpus:
            try:
                found = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handles[gpu.index])
            except self._nvml.NVMLError:
                continue
            out[gpu.index] = [
                GPUProcess(int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory // MIB)) for p in found
            ]
        return out

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass
            self._nvml = None


def load_inventory(environ: dict[str, str] | None = None) -> Inventory:
    """Fake GPUs when PERL_FAKE_GPUS is set, else NVML, else none (CPU mode)."""
    environ = os.environ if environ is None else environ
    inv = Inventory()
    fake = environ.get(FAKE_GPUS_ENV, "").strip()
    if fake:
        inv.source = "fake"
        if fake.startswith("["):
            inv.gpus = _parse_fake(fake, inv._fake_processes)
        else:
            inv._fake_path = Path(fake)
            try:
                inv.gpus = _parse_fake(inv._fake_path.read_text(encoding="utf-8"), inv._fake_processes)
            except OSError as exc:
                raise GPUInventoryError(
                    f"{FAKE_GPUS_ENV}={fake}: cannot read it ({exc.strerror}). Set it to inline JSON "
                    'like \'[{"index": 0, "name": "A100", "memory_total_mb": 81920, "memory_used_mb": 0}]\' '
                    "or to the path of a file holding that list, or unset it."
                ) from None
        if not inv.gpus:
            inv.source, inv.reason = "none", f"{FAKE_GPUS_ENV} lists no GPUs"
        return inv
    _load_nvml(inv)
    return inv


def _load_nvml(inv: Inventory) -> None:
    try:
        import pynvml
    except ImportError:
        inv.reason = "nvidia-ml-py is not installed"
        return
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        inv.reason = f"no NVIDIA driver found ({_nvml_text(exc)})"
        return
    inv._nvml = pynvml
    try:
        count = pynvml.nvmlDeviceGetCount()
        for i in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            inv._handles[i] = handle
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            inv.gpus.append(
                GPU(
                    index=i,
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                    memory_total_mb=int(mem.total // MIB),
                    memory_used_mb=int(mem.used // MIB),
                )
            )
    except pynvml.NVMLError as exc:
        inv.gpus, inv._handles = [], {}
        inv.reason = f"NVML could not list the GPUs ({_nvml_text(exc)})"
        inv.close()
        return
    if inv.gpus:
        inv.source = "nvml"
        inv.refresh()
    else:
        inv.reason = "the NVIDIA driver reports no GPU"
        inv.close()


def _parse_fake(text: str, processes: dict[int, list[GPUProcess]] | None = None) -> list[GPU]:
    """The fake GPUs in `text`; their "processes" lists go into `processes` (by GPU index) when given."""
    hint = (
        f"{FAKE_GPUS_ENV} must be a JSON list like "
        '[{"index": 0, "name": "A100", "memory_total_mb": 81920, "memory_used_mb": 0}]'
    )
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise GPUInventoryError(f"{hint}; it is not valid JSON ({exc}).") from None
    if not isinstance(data, list):
        raise GPUInventoryError(f"{hint}; got a {type(data).__name__}.")
    gpus: list[GPU] = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise GPUInventoryError(f"{hint}; item {i} is not an object.")
        if "memory_total_mb" not in item:
            raise GPUInventoryError(f"{hint}; item {i} has no memory_total_mb.")
        fields = {}
        for key, default in (("index", i), ("memory_total_mb", None), ("memory_used_mb", 0)):
            value = item.get(key, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < MAX_FAKE_NUMBER:
                raise GPUInventoryError(f"{hint}; item {i} has {key} = {value!r}: expected a whole number >= 0.")
            fields[key] = int(value)
        gpus.append(
            GPU(
                index=fields["index"],
                name=str(item.get("name", "fake GPU")),
                uuid=str(item.get("uuid", f"GPU-fake-{fields['index']}")),
                memory_total_mb=fields["memory_total_mb"],
                memory_used_mb=fields["memory_used_mb"],
            )
        )
    if len({g.index for g in gpus}) != len(gpus):
        raise GPUInventoryError(f"{hint}; two items have the same index.")
    found = {g.index: _parse_fake_processes(item.get("processes"), i, hint) for i, (g, item) in enumerate(zip(gpus, data, strict=True))}
    if processes is not None:
        processes.clear()
        processes.update(found)
    return gpus


def _parse_fake_processes(value: Any, i: int, hint: str) -> list[GPUProcess]:
    if value is None:
        return []
    what = f'{hint}; item {i} has "processes" = {value!r}: expected a list of {{"pid": int, "used_memory_mb": int}}.'
    if not isinstance(value, list):
        raise GPUInventoryError(what)
    out = []
    for p in value:
        if not isinstance(p, dict):
            raise GPUInventoryError(what)
        pid, mem = p.get("pid"), p.get("used_memory_mb")
        if not _whole(pid) or not (mem is None or _whole(mem)):
            raise GPUInventoryError(what)
        out.append(GPUProcess(int(pid), None if mem is None else int(mem)))
    return out


def _whole(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value < MAX_FAKE_NUMBER


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml_text(exc: Exception) -> str:
    return type(exc).__name__.removeprefix("NVMLError_") or str(exc)
