"""`perl watch`'s panels as Rich Text: the GPUs with their processes, and one experiment in detail.

GPU processes (NVML's running-process query, perl_cli.scheduler.gpus) are mapped to the
experiments whose worker has that pid on this host (or is its parent). All user text is
appended as plain text, never parsed as markup. Sizes use binary units (GiB).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.text import Text

from perl_cli import experiments_view as views
from perl_cli import state as st
from perl_cli.scheduler.gpus import GPU, GPUProcess
from perl_cli.tui.rows import bar, gpu_text, state_text, step_text
from perl_cli.ui import human_bytes, human_seconds

MIB = 1024 * 1024
SUMMARY_CHARS = 160  # a failure's one-line summary, as `perl diagnose` shows it
# Parent processes looked at when a GPU process is a child of a worker (a data loader, a spawn).
PARENT_DEPTH = 3
# Metrics shown in the detail view, in this order, when the last row has them.
DETAIL_METRICS = ("reward", "reward/correct", "reward_std", "loss", "kl", "grad_norm", "learning_rate",
                  "completion_length", "step_seconds")
DETAIL_CONFIG = (("peft", "type"), ("peft", "r"), ("peft", "lora_alpha"), ("training", "learning_rate"),
                 ("training", "max_steps"), ("training", "per_device_train_batch_size"),
                 ("training", "gradient_accumulation_steps"), ("training", "num_generations"),
                 ("common", "seed"), ("dataset", "data_size"), ("model", "model_name_or_path"))


@dataclass
class GPUView:
    gpu: GPU
    processes: list[tuple[GPUProcess, str | None]] = field(default_factory=list)  # (process, experiment name)


def parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
        return int(text[text.rindex(")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def owners(view: views.SuiteView) -> dict[int, str]:
    """Worker pid -> experiment, for the running experiments whose worker runs on this host."""
    here = st.hostname()
    return {
        e.pid: e.name for e in view.experiments
        if e.state == st.RUNNING and e.pid and e.status.get("host") in (None, here)
    }


def map_processes(gpus: list[GPU], processes: dict[int, list[GPUProcess]], view: views.SuiteView) -> list[GPUView]:
    by_pid = owners(view)

    def owner(pid: int) -> str | None:
        for _ in range(PARENT_DEPTH + 1):
            if pid in by_pid:
                return by_pid[pid]
            parent = parent_pid(pid)
            if parent is None or parent <= 1:
                return None
            pid = parent
        return None

    return [GPUView(g, [(p, owner(p.pid)) for p in processes.get(g.index, [])]) for g in gpus]


def memory_text(used_mb: float, total_mb: float) -> str:
    return f"{human_bytes(used_mb * MIB)}/{human_bytes(total_mb * MIB)}"


def gpu_panel(gpus: list[GPUView], note: str) -> Text:
    """The right-hand panel: each GPU's memory and utilisation, and its processes."""
    text = Text("GPUs\n", style="bold")
    if not gpus:
        text.append(f"none: {note}\njobs run on the CPU\n", style="dim")
        return text
    for gv in gpus:
        g = gv.gpu
        util = "" if g.utilization is None else f"  util {g.utilization}%"
        text.append(f"[{g.index}] {g.name}{util}\n")  # Text.append: literal, no markup
        used = g.memory_used_mb / g.memory_total_mb if g.memory_total_mb else 0.0
        text.append_text(bar(used, width=12))
        text.append(f" {memory_text(g.memory_used_mb, g.memory_total_mb)}\n")
        for proc, name in gv.processes:
            mem = "?" if proc.used_memory_mb is None else human_bytes(proc.used_memory_mb * MIB)
            text.append(f"  {proc.pid:>7} ", style="dim")
            text.append(f"{name or '(not this suite)'}", style="" if name else "dim")
            text.append(f"  {mem}\n")
    if note:
        text.append(note + "\n", style="dim")
    return text


def gpu_line(gpus: list[GPUView], note: str) -> Text:
    """One line for narrow screens: each GPU's memory."""
    if not gpus:
        return Text(f"GPUs: none ({note}); jobs run on the CPU", style="dim")
    text = Text("GPUs:")
    for gv in gpus:
        text.append(f"  [{gv.gpu.index}] {memory_text(gv.gpu.memory_used_mb, gv.gpu.memory_total_mb)}")
        if gv.processes:
            text.append(f" ({len(gv.processes)} proc)", style="dim")
    return text


def details(e: views.ExperimentView, suite: str, diagnosis: Any, gpus: list[GPUView], metrics: dict) -> Text:
    """Everything about one experiment: state, cause and fix, config, last metrics, W&B, GPU memory."""
    text = Text()
    text.append(e.name, style="bold")
    text.append("  ")
    text.append_text(state_text(e))
    text.append(f"  step {step_text(e)}")
    if e.eta_s is not None:
        text.append(f"  ETA {human_seconds(e.eta_s)}")
    text.append("\n")
    facts = []
    if e.pid:
        facts.append(f"pid {e.pid}")
    if e.heartbeat_age_s is not None:
        facts.append(f"heartbeat {human_seconds(e.heartbeat_age_s)} ago")
    if e.gpu is not None:
        facts.append(f"GPU {gpu_text(e.gpu)}")
    for gv in gpus:
        for proc, name in gv.processes:
            if name == e.name and proc.used_memory_mb is not None:
                facts.append(f"{human_bytes(proc.used_memory_mb * MIB)} on GPU {gv.gpu.index}")
    if facts:
        text.append("  " + " · ".join(facts) + "\n", style="dim")
    if e.problem:
        text.append("unreadable  ", style="bold red")
        text.append(e.problem + "\n")
    if diagnosis is not None:
        text.append("cause  ", style="bold red")
        summary = diagnosis.summary if len(diagnosis.summary) <= SUMMARY_CHARS else diagnosis.summary[: SUMMARY_CHARS - 1] + "…"
        text.append(f"{diagnosis.rule.title} ({diagnosis.cause}): {summary}\n")
        text.append("fix  ", style="bold green")
        text.append(diagnosis.fix.text + "\n")
        for command in diagnosis.fix.commands:
            text.append(f"  $ {command}\n", style="green")
    config = [f"{keys[-1]}={value}" for keys in DETAIL_CONFIG if (value := views.dig(e.config, *keys)) is not None]
    if config:
        text.append("config  ", style="bold")
        text.append(" ".join(config) + "\n")
    if e.overrides:
        text.append("ran with  ", style="bold")
        text.append(" ".join(f"--set {o}" for o in e.overrides) + "\n")
    if metrics:
        text.append("last metrics  ", style="bold")
        shown = [f"{k.split('/')[-1] if k != 'reward/correct' else 'correct'} {metrics[k]:.4g}"
                 for k in DETAIL_METRICS if isinstance(metrics.get(k), (int, float)) and not isinstance(metrics.get(k), bool)]
        step = metrics.get("step")
        text.append((f"(step {step}) " if isinstance(step, int) else "") + "  ".join(shown) + "\n")
    if e.wandb_url:
        text.append("W&B  ", style="bold")
        text.append(e.wandb_url + "\n")
    if e.dir is not None:
        text.append(f"the whole log: perl logs {suite} {e.name}\n", style="dim")
    return text
