"""Why experiments failed, stalled or stopped, and the `perl run` command that fixes it.

Each failed, interrupted, stalled or unreadable experiment (as the read model,
perl_cli.experiments_view, sees it) is classified from its status.json
(state, exit code, signal) and the *tail* of its train.log (read from the end, never
whole) by the first matching rule of `RULES`. Running experiments are never failures:
a running one appears only when it is stalled, which status.is_stalled decides from the
heartbeat and the pid, never from log text.

To add a cause: write a fix function and add one `Rule` to `RULES` (order = priority).

JSON object of `perl diagnose SUITE --json` (contract; fields are only ever added):

    {"suite": str, "checked": int, "problems": int, "failures": int,
     "counts": {cause: int},
     "groups": [{"cause", "title", "experiments": [name]}],
     "experiments": [{"name", "state", "stalled", "cause", "title", "summary",
                      "exit_code", "signal", "error", "lines": [str],
                      "traceback": str | null, "fix": {"text": str, "commands": [str]}}]}

`failures` counts failed, unreadable and stalled experiments; the exit code is 1 when it is
not 0. An `unreadable` experiment's `summary` names the file and what is wrong with it.
Log lines and status errors are read through perl_cli.logtail (bounded, safe) and shown
as plain text, never as Rich markup.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.text import Text

from perl_cli import collapse as collapselib
from perl_cli import outcomes, schema
from perl_cli import state as st
from perl_cli.experiments_view import ExperimentView, SuiteView, judge_collapse, needs_attention
from perl_cli.logtail import last_json_rows, tail_lines
from perl_cli.ui import human_bytes

DEFAULT_LINES = 30
# Lines of the log tail that classification looks at (independent of --lines).
CLASSIFY_LINES = 400
# With --verbose the whole last traceback is shown: look further back for its start.
VERBOSE_LINES = 5000
DEFAULT_OUTPUT = Path("output")
SUMMARY_CHARS = 160  # the one-line summary on screen (JSON has up to 300)

TRACEBACK_START = "Traceback (most recent call last):"
CHAIN_MARKERS = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)
RANK_PREFIX = re.compile(r"^\[(?:rank|default)\d+\]:\s?")
EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Interrupt|Exit|Enabled)\b.*")


@dataclass
class Evidence:
    """What a rule may look at: the status, the log tail and the last metrics."""

    status: dict
    config: dict
    tail: list[str]
    text: str  # the last traceback (with its chained causes) + status error, else the whole tail
    traceback: str | None
    metrics: list[dict]
    stalled: bool
    problem: str | None = None  # an unreadable experiment: which file, and what is wrong
    collapse: dict | None = None  # perl_cli/collapse.py's verdict on metrics.jsonl

    @property
    def signal(self) -> str | None:
        sig = self.status.get("signal")
        return outcomes.signal_name(sig) if isinstance(sig, (int, str)) and not isinstance(sig, bool) else None

    def killed(self) -> bool:
        return outcomes.was_killed(self.status)


@dataclass
class Fix:
    text: str
    commands: list[str] = field(default_factory=list)


@dataclass
class Context:
    """How to spell a `perl run` command for this experiment that `perl run` accepts.

    `perl run` resumes only when the settings still match what ran (the fingerprint); a
    fix that changes settings of an experiment with checkpoints needs `--fresh`. When the
    experiment ran with `--set` overrides, the command repeats them so it still resumes.
    """

    suite: str
    name: str
    config: dict  # config.json: what ran
    status: dict
    config_path: Path | None = None
    output: Path = DEFAULT_OUTPUT
    expected: dict | None = None  # what the config file resolves to now (None: suite not in the config)
    has_checkpoint: bool = False

    def run(self, sets: dict[str, Any] | None = None, *, fresh: bool = False, slurm: dict[str, str] | None = None) -> str:
        """The command; an experiment that ran on Slurm keeps `--backend slurm` and the options it was
        submitted with (`slurm` replaces some of them, e.g. {"--time": "4:00:00"})."""
        parts = ["perl", "run", self.suite, "--only", self.name]
        if self.config_path is not None:
            parts += ["--config", str(self.config_path)]
        if Path(self.output) != DEFAULT_OUTPUT:
            parts += ["--output", str(self.output)]
        for path, value in (self.ran_overrides() | (sets or {})).items():
            parts += ["--set", f"{path}={_toml(value)}"]
        parts += self.backend_args(slurm)
        if fresh or (sets and self.has_checkpoint):
            parts.append("--fresh")
        return " ".join(shlex.quote(p) for p in parts)

    @property
    def evaluating(self) -> bool:
        """Whether the job that ended was `perl eval`'s (status.json's `job`; a Slurm task's `slurm.kind`)."""
        slurm = self.status.get("slurm") if isinstance(self.status.get("slurm"), dict) else {}
        return "eval" in (self.status.get("job"), slurm.get("kind"))  # scheduler/jobkinds.EVAL

    def eval(self) -> str:
        """The `perl eval` command that evaluates this experiment again, continuing from its saved batches."""
        slurm = self.status.get("slurm") if isinstance(self.status.get("slurm"), dict) else {}
        words = slurm.get("rerun") if isinstance(slurm.get("rerun"), list) else ["eval"]
        parts = ["perl", "eval", self.suite, "--only", self.name, *[str(w) for w in words[1:]]]
        if self.config_path is not None:
            parts += ["--config", str(self.config_path)]
        if Path(self.output) != DEFAULT_OUTPUT:
            parts += ["--output", str(self.output)]
        parts += self.backend_args()
        return " ".join(shlex.quote(p) for p in parts)

    @property
    def on_slurm(self) -> bool:
        return self.status.get("backend") == "slurm" or isinstance(self.status.get("slurm"), dict)

    def backend_args(self, replace: dict[str, str] | None = None) -> list[str]:
        if not self.on_slurm and not replace:
            return []
        from perl_cli.scheduler.slurm import rerun_args  # light: submitit is imported only to submit

        args = rerun_args(self.status)
        for flag, value in (replace or {}).items():
            if flag in args:
                args[args.index(flag) + 1] = value
            else:
                args += [flag, value]
        return args

    @property
    def slurm_task(self) -> str | None:
        slurm = self.status.get("slurm") if isinstance(self.status.get("slurm"), dict) else {}
        return str(slurm["job_id"]) if slurm.get("job_id") else None

    def slurm_option(self, flag: str) -> str | None:
        args = self.backend_args()
        return args[args.index(flag) + 1] if flag in args[:-1] else None

    def ran_overrides(self) -> dict[str, Any]:
        """section.key = value where what ran differs from what the config resolves to now."""
        if not self.expected:
            return {}
        out = {}
        for section, fields in schema.SCHEMA.items():
            ran, now = self.config.get(section), self.expected.get(section)
            if not isinstance(ran, dict) or not isinstance(now, dict):
                continue
            for key in fields:
                if key in ran and ran[key] != now.get(key) and ran[key] is not None:
                    out[f"{section}.{key}"] = ran[key]
        return out

    def setting(self, section: str, key: str) -> Any:
        """The value the worker ran with: the scheduler's adjustments ("runtime") first."""
        runtime = self.config.get(st.RUNTIME_KEY)
        if section == "training" and isinstance(runtime, dict) and key in runtime:
            return runtime[key]
        values = self.config.get(section)
        return values.get(key) if isinstance(values, dict) else None


def _toml(value: Any) -> str:
    """A --set value in TOML syntax (JSON spells numbers, booleans, strings and lists alike)."""
    import json

    return json.dumps(value) if not isinstance(value, str) else (value if re.fullmatch(r"[\w./:-]+", value) else json.dumps(value))


@dataclass(frozen=True)
class Rule:
    cause: str
    title: str
    fix: Callable[[Context, Evidence], Fix]
    patterns: tuple[str, ...] = ()
    when: Callable[[Evidence], bool] | None = None

    def matches(self, ev: Evidence) -> bool:
        if self.when is not None and self.when(ev):
            return True
        return any(re.search(p, ev.text, re.IGNORECASE | re.MULTILINE) for p in self.patterns)

    def matching_line(self, lines: list[str]) -> int | None:
        """Index of the last line a pattern matches (to centre the excerpt on it)."""
        for i in range(len(lines) - 1, -1, -1):
            if any(re.search(p, lines[i], re.IGNORECASE) for p in self.patterns):
                return i
        return None


# --- fixes --------------------------------------------------------------------------


def _for_evaluation(ctx: Context, rule: Rule) -> Fix:
    """The job that ended was an evaluation of a completed experiment: training's remedies (a smaller
    batch, --fresh) do not apply; its adapter is kept and `perl eval` continues from the saved batches."""
    return Fix(
        f"This was its evaluation (`perl eval`), not its training: training completed and its adapter is "
        f"kept. Cause: {rule.title}. Fix that (the log lines above), then evaluate it again; it continues "
        "from the batches it saved.",
        [ctx.eval()],
    )


def fix_unreadable(ctx: Context, ev: Evidence) -> Fix:
    return Fix(
        "PeRL cannot tell what this experiment did, so `perl run` will not redo it on a guess. "
        f"Restore the file (or delete it: without a status.json the experiment reads as pending), "
        f"or start the experiment over with --fresh (the directory is kept as {ctx.name}{st.OLD_DIR_MARK}<time>).",
        [ctx.run(fresh=True)],
    )


def fix_interrupted(ctx: Context, ev: Evidence) -> Fix:
    return Fix(
        "It was stopped (Ctrl+C, the scheduler or the cluster), not broken. "
        "Running it again resumes from its last checkpoint.",
        [ctx.run()],
    )


def fix_stalled(ctx: Context, ev: Evidence) -> Fix:
    pid, host = ev.status.get("pid"), ev.status.get("host") or "its host"
    beat = ev.status.get("heartbeat")
    age = f" (last heartbeat {_ago(beat)})" if isinstance(beat, (int, float)) else ""
    where = f"see where with `py-spy dump --pid {pid}`, then " if installed("py-spy") else ""
    return Fix(
        f"The worker stopped reporting{age}. If pid {pid} on {host} is gone (reboot, killed "
        f"scheduler), run it again to resume from its last checkpoint. If it is still alive but "
        f"hangs, {where}stop it with `kill -TERM -{pid}` (its process group) before running it again.",
        [ctx.run()],
    )


def installed(tool: str) -> bool:
    """Whether `tool` is on PATH: advice names only tools the user can run."""
    import shutil

    return shutil.which(tool) is not None


def hub_download(name: str, *, dataset: bool = False) -> str:
    """The command that downloads `name` from the hub with what is installed here."""
    kind = " --repo-type dataset" if dataset else ""
    for cli in ("hf", "huggingface-cli"):
        if installed(cli):
            return f"`{cli} download{kind} {name}`"
    repo = ", repo_type='dataset'" if dataset else ""
    return f"`python -c \"from huggingface_hub import snapshot_download; snapshot_download('{name}'{repo})\"`"


def fix_cuda_oom(ctx: Context, ev: Evidence) -> Fix:
    batch = _int(ctx.setting("training", "per_device_train_batch_size"))
    accum = _int(ctx.setting("training", "gradient_accumulation_steps"))
    gens = _int(ctx.setting("training", "num_generations")) or 1
    if batch and accum and batch > 1:
        smaller = outcomes.smaller_batch(batch, accum)  # the same remedy as perl run's OOM retry
        if smaller:
            new_batch, new_accum = smaller
            return Fix(
                f"The GPU ran out of memory at {batch} completions per micro-step. Use {new_batch} per "
                f"micro-step and {new_accum} accumulation steps: the effective batch stays {batch * accum} completions, "
                f"a multiple of num_generations ({gens}), so the results stay comparable.",
                [ctx.run({
                    "training.per_device_train_batch_size": new_batch,
                    "training.gradient_accumulation_steps": new_accum,
                })],
            )
    if not ctx.setting("training", "gradient_checkpointing"):
        return Fix(
            "The GPU ran out of memory with one completion per micro-step already: recompute "
            "activations instead of storing them (slower, much less memory).",
            [ctx.run({"training.gradient_checkpointing": True})],
        )
    length = _int(ctx.setting("training", "max_completion_length"))
    if length and length > 1:
        return Fix(
            "The GPU ran out of memory with one completion per micro-step and gradient "
            "checkpointing on: shorten the completions, or run it on a GPU with more memory.",
            [ctx.run({"training.max_completion_length": length // 2})],
        )
    return Fix("The GPU ran out of memory at the smallest settings: run it on a GPU with more memory.")


def fix_time_limit(ctx: Context, ev: Evidence) -> Fix:
    from perl_cli.scheduler.slurm_cli import format_time

    requeues = len(ev.status.get("requeues") or [])
    slurm = ev.status.get("slurm") if isinstance(ev.status.get("slurm"), dict) else {}
    limit = _int(slurm.get("time_limit_s"))
    return Fix(
        f"The Slurm task hit its time limit{' (' + format_time(limit) + ')' if limit else ''} and had no requeue "
        f"left (requeued {requeues} time(s)). Give it more time (--time) or more requeues (--retries); it resumes "
        "from its last checkpoint.",
        [ctx.run(slurm={"--backend": "slurm", **({"--time": format_time(2 * limit)} if limit else {})})],
    )


def fix_preempted(ctx: Context, ev: Evidence) -> Fix:
    return Fix(
        "Slurm preempted the task (a higher-priority job took its node) and it had no requeue left. "
        "Run it again (more --retries lets Slurm requeue it); it resumes from its last checkpoint.",
        [ctx.run(slurm={"--backend": "slurm"})],
    )


def fix_memory_limit(ctx: Context, ev: Evidence) -> Fix:
    return Fix(
        f"Slurm killed the task for using more memory than it asked for{_mem_text(ctx)} (OUT_OF_MEMORY"
        f"{'; `sacct -j ' + ctx.slurm_task + ' -o JobID,State,MaxRSS,ReqMem` shows what it used' if ctx.slurm_task else ''}). "
        "Ask for more with --mem; it resumes from its last checkpoint.",
        [ctx.run(slurm={"--backend": "slurm", "--mem": _more_mem(ctx)})],
    )


def fix_node_failure(ctx: Context, ev: Evidence) -> Fix:
    node = (ev.status.get("slurm") or {}).get("node") if isinstance(ev.status.get("slurm"), dict) else None
    node = node or ev.status.get("host")
    avoid = {"--slurm-arg": f"exclude={node}"} if node else {}
    return Fix(
        f"The node the task ran on{' (' + node + ')' if node else ''} failed, and Slurm did not requeue the task. "
        "Nothing is wrong with the experiment: run it again (it resumes from its last checkpoint)"
        f"{', away from that node until it is repaired (`sinfo -R` lists failed nodes)' if node else ''}.",
        [ctx.run(slurm={"--backend": "slurm", **avoid})],
    )


def fix_cancelled_pending(ctx: Context, ev: Evidence) -> Fix:
    return Fix(
        "The Slurm task was cancelled while it waited in the queue (scancel or `perl cancel`): it never started "
        "this attempt, and nothing is broken. Run it again to submit it; it resumes from its last checkpoint if it has one.",
        [ctx.run()],
    )


def _mem_text(ctx: Context) -> str:
    mem = ctx.slurm_option("--mem")
    return f" (--mem {mem})" if mem else " (the partition's default memory per task)"


def _more_mem(ctx: Context) -> str:
    """Twice the memory the task asked for; 32G when it asked for none (the partition's default)."""
    mem = ctx.slurm_option("--mem") or ""
    digits = mem.rstrip("KMGTkmgt")
    if digits.isdigit():
        return f"{2 * int(digits)}{mem[len(digits):].upper()}"
    return "32G"


def fix_host_oom(ctx: Context, ev: Evidence) -> Fix:
    if ctx.on_slurm:
        task = ctx.slurm_task
        check = f"`sacct -j {task} -o JobID,State,MaxRSS,ReqMem` (OUT_OF_MEMORY, or MaxRSS near ReqMem)" if task else "`sacct`"
        return Fix(
            "The worker was killed with SIGKILL and left no traceback. On Slurm that is most often the task's "
            f"memory limit{_mem_text(ctx)}: check with {check}; else `scancel --signal=KILL` or a node's "
            "out-of-memory killer. Ask for more memory with --mem; it resumes from its last checkpoint.",
            [ctx.run(slurm={"--backend": "slurm", "--mem": _more_mem(ctx)})],
        )
    return Fix(
        "The worker was killed with SIGKILL and left no traceback: most often the kernel's "
        "out-of-memory killer (confirm with `dmesg -T | grep -i 'killed process'`), else a job "
        "time limit or a manual `kill -9`. Run fewer experiments at once on this machine; the run "
        "resumes from its last checkpoint.",
        [ctx.run()],
    )


def fix_nan(ctx: Context, ev: Evidence) -> Fix:
    """Every change the advice names is in the command (a fix you copy does what it says)."""
    lr = ctx.setting("training", "learning_rate")
    changes: dict[str, Any] = {}
    advice = []
    if isinstance(lr, (int, float)) and lr > 0:
        advice.append(f"halve the learning rate ({lr:g} → {lr / 2:g})")
        changes["training.learning_rate"] = float(f"{lr / 2:g}")
    grad = ctx.setting("training", "max_grad_norm")
    if isinstance(grad, (int, float)) and grad > 0.5:
        advice.append(f"clip gradients harder (max_grad_norm {grad:g} → 0.5)")
        changes["training.max_grad_norm"] = 0.5
    if ctx.setting("training", "bf16"):
        advice.append("train in float32 (bfloat16 can overflow on some methods)")
        changes["training.bf16"] = False
    text = "The loss or the gradients became NaN/Inf: training diverged. "
    if not changes:
        return Fix(text + "Lower the learning rate in experiments.toml, then run it again.", [ctx.run()])
    return Fix(text + "; ".join(advice).capitalize() + ".", [ctx.run(changes)])


def fix_disk_full(ctx: Context, ev: Evidence) -> Fix:
    exp_dir = Path(ctx.output) / ctx.suite / ctx.name
    mount, free = _mount_and_free(exp_dir)
    checkpoint = _largest_checkpoint_bytes(exp_dir)
    # Saving the next checkpoint writes a full new one before the old is removed.
    need = f"at least {human_bytes(2 * checkpoint)} free (two checkpoints of {human_bytes(checkpoint)})" if checkpoint else "space for its checkpoints and logs"
    where = f"{mount} has {human_bytes(free)} free; it needs {need}" if mount else f"it needs {need}"
    return Fix(
        f"The disk or quota is full: {where} (`df -h {ctx.output}`, `du -sh {ctx.output}/*`). Free space, e.g. "
        f"delete kept previous attempts ({ctx.output}/{ctx.suite}/*.old-*); for the next suites keep "
        "fewer checkpoints (training.save_total_limit = 1). Then run it again: it resumes from its "
        "last complete checkpoint.",
        [ctx.run()],
    )


def _mount_and_free(path: Path) -> tuple[str | None, int | None]:
    """The mount point holding `path` and the bytes free there (None, None if unknown)."""
    import shutil

    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return None, None
    mount = path
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    return str(mount), free


def _largest_checkpoint_bytes(exp_dir: Path) -> int:
    """The size of the experiment's largest checkpoint directory (0 when it has none)."""
    best = 0
    try:
        checkpoints = [p for p in (exp_dir / st.CHECKPOINT_DIR).iterdir() if p.name.startswith("checkpoint-")]
    except OSError:
        return 0
    for ckpt in checkpoints[:100]:
        size = 0
        for root, _dirs, files in os.walk(ckpt):
            for name in files:
                with contextlib.suppress(OSError):
                    size += os.lstat(os.path.join(root, name)).st_size
        best = max(best, size)
    return best


def fix_hub_gated(ctx: Context, ev: Evidence) -> Fix:
    model = ctx.setting("model", "model_name_or_path") or "MODEL"
    return Fix(
        f"The model hub refused '{model}': it is gated or private (accept its licence on its hub "
        "page, then export HF_TOKEN=... before `perl run`), or the "
        "name is misspelled. Or download it where you have access and point at the local copy.",
        [ctx.run({"model.model_name_or_path": f"/path/to/{_basename(model)}"})],
    )


def fix_hub_offline(ctx: Context, ev: Evidence) -> Fix:
    model = ctx.setting("model", "model_name_or_path") or "MODEL"
    dataset = ctx.setting("dataset", "dataset_name_or_path") or ""
    if dataset and dataset in ev.text and model not in ev.text:
        return Fix(
            f"The data set '{dataset}' could not be fetched: this machine cannot reach the hub "
            "(or HF_HUB_OFFLINE=1 is set) and it is not in the local cache. Download it where there "
            f"is network ({hub_download(dataset, dataset=True)}) and use the local file.",
            [ctx.run({"dataset.dataset_name_or_path": f"/path/to/{_basename(dataset)}.jsonl"})],
        )
    return Fix(
        f"The model '{model}' could not be fetched: this machine cannot reach the hub (or "
        "HF_HUB_OFFLINE=1 is set) and the model is not in the local cache. On a machine with "
        f"network run {hub_download(model)} and copy ~/.cache/huggingface/hub here, "
        "then run with HF_HUB_OFFLINE=1 so nothing tries the network; or point at a local copy.",
        [f"HF_HUB_OFFLINE=1 {ctx.run()}", ctx.run({"model.model_name_or_path": f"/path/to/{_basename(model)}"})],
    )


def fix_nccl(ctx: Context, ev: Evidence) -> Fix:
    check = "Check `nvidia-smi topo -m` and `nvidia-smi`; run" if installed("nvidia-smi") else "Run"
    return Fix(
        "A collective (NCCL) call failed or timed out: a GPU or its peer link is unhealthy, or "
        f"another job holds it. {check} again with "
        "NCCL_DEBUG=INFO to see the failing call, and with NCCL_P2P_DISABLE=1 if peer-to-peer "
        "transfers are broken on this machine.",
        [f"NCCL_DEBUG=INFO {ctx.run()}"],
    )


def fix_cuda_driver(ctx: Context, ev: Evidence) -> Fix:
    gpu = ev.status.get("gpu")
    which = f"GPU {gpu}" if gpu is not None else "the GPU"
    smi = "`nvidia-smi -q`, and " if installed("nvidia-smi") else ""
    return Fix(
        f"A CUDA driver or device error on {which}: check it ({smi}"
        "`dmesg -T | grep -i xid` for hardware faults), and that the driver supports this torch "
        "build (`python -c 'import torch; print(torch.version.cuda, torch.cuda.is_available())'`). "
        "Leave a faulty GPU out with --gpus, then run it again; CUDA_LAUNCH_BLOCKING=1 shows the "
        "failing kernel.",
        [ctx.run()],
    )


def fix_import(ctx: Context, ev: Evidence) -> Fix:
    module = re.search(r"No module named '([\w.]+)'", ev.text)
    wanted = re.search(r"\b([A-Za-z][\w-]*(?:[<>=!~]=?|==)[\d.]+\w*)\s+is required", ev.text)
    if module:
        what = f"`pip install {module.group(1).split('.')[0]}`"
    elif wanted:
        what = f"`pip install '{wanted.group(1)}'`"
    else:
        what = "reinstall PeRL's dependencies (`pip install -e .` in the PeRL checkout)"
    return Fix(
        f"A package is missing or has an incompatible version in the worker's Python: {what}, "
        "then check with `python -c 'import torch, transformers, trl, peft'` in the same "
        "environment and run it again.",
        [ctx.run()],
    )


def fix_file_not_found(ctx: Context, ev: Evidence) -> Fix:
    path = _missing_path(ev.text)
    model = ctx.setting("model", "model_name_or_path") or ""
    dataset = ctx.setting("dataset", "dataset_name_or_path") or ""
    shown = f" '{path}'" if path else ""
    if path and "checkpoint" in path:
        return Fix(
            f"A checkpoint{shown} is missing or incomplete. Start the experiment over "
            "(the previous attempt is kept as <name>.old-<time>).",
            [ctx.run(fresh=True)],
        )
    if (path and dataset and (dataset in path or path in dataset)) or (not path and dataset and dataset in ev.text):
        return Fix(
            f"The data set{shown} was not found. Point dataset.dataset_name_or_path at an existing "
            ".jsonl/.parquet file (or builtin:countdown).",
            [ctx.run({"dataset.dataset_name_or_path": f"/path/to/{_basename(dataset)}"})],
        )
    if model and (not path or model in path or path in model or "config.json" in (path or "")):
        return Fix(
            f"The model{shown} was not found. Point model.model_name_or_path at a directory "
            "holding config.json and the weights, or at a hub id.",
            [ctx.run({"model.model_name_or_path": f"/path/to/{_basename(model)}"})],
        )
    return Fix(f"A file{shown} was not found: create it or fix the setting that names it, then run it again.", [ctx.run()])


def fix_config(ctx: Context, ev: Evidence) -> Fix:
    plan = ["perl", "plan", ctx.suite, "--only", ctx.name]
    if ctx.config_path is not None:
        plan += ["--config", str(ctx.config_path)]
    return Fix(
        "The worker rejected its settings. Fix them in experiments.toml (or with --set) and check "
        "the result before running it again.",
        [" ".join(shlex.quote(p) for p in plan), ctx.run()],
    )


def fix_unknown(ctx: Context, ev: Evidence) -> Fix:
    return Fix(
        "No known cause matched. Read the traceback (`perl diagnose "
        f"{ctx.suite} --verbose`) or the whole log ({ctx.output}/{ctx.suite}/{ctx.name}/{st.LOG_FILE}); "
        "once fixed, run it again.",
        [ctx.run()],
    )


# --- the rule table (order is priority) ----------------------------------------------


def fix_collapse(ctx: Context, ev: Evidence) -> Fix:
    """The curve's key numbers, the method's known failure mode, and a run with a quarter of the rate."""
    lr = ctx.setting("training", "learning_rate")
    lr = lr if isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0 else None
    method = ctx.setting("peft", "type")
    text = "Training collapsed: " + (ev.collapse or {}).get("text", "the worker stopped it as collapsed") + ". "
    text += collapselib.remedy(method if isinstance(method, str) else None, lr).capitalize() + "."
    if lr is None:
        return Fix(text, [ctx.run(fresh=True)])
    return Fix(text, [ctx.run({"training.learning_rate": float(f"{lr / 4:g}")}, fresh=True)])


def _collapsed(ev: Evidence) -> bool:
    """Stopped by the worker as collapsed, or a collapse in the metrics of a run that did not crash."""
    if ev.status.get("cause") == collapselib.CAUSE:
        return True
    return ev.collapse is not None and ev.status.get("state") != st.FAILED and not ev.stalled  # a stall comes first


def _interrupted(ev: Evidence) -> bool:
    return outcomes.was_interrupted(ev.status)


def _killed_silently(ev: Evidence) -> bool:
    return ev.killed() and ev.traceback is None


def _non_finite_metrics(ev: Evidence) -> bool:
    for row in ev.metrics[-3:]:
        for key in ("loss", "grad_norm"):
            value = row.get(key)
            if isinstance(value, float) and not math.isfinite(value):
                return True
    return False


RULES: tuple[Rule, ...] = (
    Rule("unreadable", "unreadable status or config file", fix_unreadable, when=lambda ev: ev.problem is not None),
    # Recorded by the Slurm task (perl_cli/scheduler/slurm_task.py): before `interrupted`, since the
    # worker itself exited 143 after saving its checkpoint.
    Rule(outcomes.CAUSE_TIME_LIMIT, "Slurm time limit (no requeue left)", fix_time_limit,
         when=lambda ev: ev.status.get("cause") == outcomes.CAUSE_TIME_LIMIT),
    Rule(outcomes.CAUSE_PREEMPTED, "preempted by Slurm (no requeue left)", fix_preempted,
         when=lambda ev: ev.status.get("cause") == outcomes.CAUSE_PREEMPTED),
    Rule(outcomes.CAUSE_MEMORY_LIMIT, "Slurm memory limit (OUT_OF_MEMORY)", fix_memory_limit,
         when=lambda ev: ev.status.get("cause") == outcomes.CAUSE_MEMORY_LIMIT),
    Rule(outcomes.CAUSE_NODE_FAILURE, "Slurm node failure", fix_node_failure,
         when=lambda ev: ev.status.get("cause") == outcomes.CAUSE_NODE_FAILURE),
    Rule(outcomes.CAUSE_CANCELLED_PENDING, "cancelled in Slurm's queue before it started", fix_cancelled_pending,
         when=lambda ev: ev.status.get("cause") == outcomes.CAUSE_CANCELLED_PENDING),
    # perl_cli/collapse.py: the metrics say training collapsed (running, completed or stopped for it).
    Rule("collapse", "training collapsed (correctness, completion length, entropy or KL)", fix_collapse, when=_collapsed),
    Rule("interrupted", "interrupted (Ctrl+C, scheduler or cluster)", fix_interrupted,
         patterns=(r"^KeyboardInterrupt\s*$",), when=_interrupted),
    Rule("stalled", "stalled: running, but no heartbeat", fix_stalled, when=lambda ev: ev.stalled),
    Rule("host_oom", "killed (SIGKILL, exit 137): host out of memory or killed from outside", fix_host_oom,
         when=_killed_silently),
    Rule(outcomes.CAUSE_CUDA_OOM, "CUDA out of memory", fix_cuda_oom, patterns=outcomes.CUDA_OOM_PATTERNS),
    Rule("nan", "NaN or Inf loss or gradients", fix_nan, when=_non_finite_metrics, patterns=(
        r"\bloss\b[^\n]*\b(?:nan|inf)\b", r"\b(?:nan|inf)\b[^\n]*\bloss\b",
        r"returned nan values", r"probability tensor contains either `?inf`?, `?nan`? or element < 0",
        r"non-finite", r"\bgrad(?:ient)?s?\b[^\n]*\b(?:nan|inf)\b",
    )),
    Rule(outcomes.CAUSE_DISK_FULL, "disk full or quota exceeded", fix_disk_full, patterns=outcomes.DISK_FULL_PATTERNS),
    Rule("hub_gated", "model hub refused access (gated, private or misspelled)", fix_hub_gated, patterns=(
        r"GatedRepoError", r"Cannot access gated repo", r"trying to access a gated repo",
        r"RepositoryNotFoundError", r"is not a valid model identifier listed on",
        r"\b40[13] Client Error", r"Invalid (?:user )?token",
    )),
    Rule("hub_offline", "model hub unreachable (offline machine, no cached copy)", fix_hub_offline, patterns=(
        r"OfflineModeIsEnabled", r"LocalEntryNotFoundError", r"couldn't connect to 'https?://",
        r"couldn't find them in the cached files", r"Max retries exceeded with url",
        r"Temporary failure in name resolution", r"Name or service not known", r"Network is unreachable",
        r"^(?:requests\.exceptions\.)?ConnectionError\b", r"ReadTimeout(?:Error)?\b",
        r"Hugging Face Hub could not provide it", r"could not load dataset .* from the Hugging Face Hub",
    )),
    Rule("nccl", "NCCL / distributed error", fix_nccl, patterns=(
        r"\bNCCL (?:error|WARN)", r"\bnccl\w*Error\b", r"ProcessGroupNCCL", r"DistBackendError",
        r"Watchdog caught collective operation timeout", r"torch\.distributed\.elastic",
    )),
    Rule("cuda_driver", "CUDA driver or device error", fix_cuda_driver, patterns=(
        r"CUDA error:", r"CUDA driver version is insufficient", r"NVIDIA driver on your system is too old",
        r"No CUDA GPUs are available", r"Found no NVIDIA driver", r"CUDA-capable device\(s\) is/are busy",
        r"cudaError\w+", r"CUDA_ERROR_\w+", r"device-side assert", r"uncorrectable ECC error",
        r"NVML_ERROR|NVMLError",
    )),
    Rule("import_error", "import error or version mismatch", fix_import, patterns=(
        r"^(?:\w+\.)*(?:ImportError|ModuleNotFoundError):", r"cannot import name",
        r"\bis required for a normal functioning of this module", r"undefined symbol:",
        r"^AttributeError: module '[\w.]+' has no attribute",
        r"^TypeError: [\w.]+\.__init__\(\) got an unexpected keyword argument",
        r"PackageNotFoundError",
    )),
    Rule("file_not_found", "file not found (model, data set or checkpoint)", fix_file_not_found, patterns=(
        r"FileNotFoundError", r"No such file or directory", r"does not appear to have a file named",
        r"Incorrect path_or_model_id", r"Can't load (?:the )?(?:tokenizer|config|model) for",
        r"\[Errno 2\]",
    )),
    Rule("config_error", "configuration error", fix_config, patterns=(
        r"\bConfigError\b", r"must be evenly divisible by", r"^ValueError: .*(?:config|must be|invalid|expected)",
        r"^perl: error:",
    ), when=lambda ev: ev.status.get("exit_code") == outcomes.EXIT_CONFIG_ERROR),
    Rule("host_oom", "host out of memory", fix_host_oom, patterns=(
        r"^MemoryError\b", r"^Killed\s*$", r"oom-kill", r"Out of memory: Killed process",
        r"Cannot allocate memory",
    ), when=lambda ev: ev.killed()),
)
UNKNOWN = Rule("unknown", "unknown cause", fix_unknown)
CAUSES = tuple(dict.fromkeys(r.cause for r in (*RULES, UNKNOWN)))


# --- classification -------------------------------------------------------------------


@dataclass
class Diagnosis:
    name: str
    state: str
    stalled: bool
    rule: Rule
    summary: str
    lines: list[str]
    traceback: str | None
    fix: Fix
    status: dict

    @property
    def cause(self) -> str:
        return self.rule.cause

    @property
    def is_failure(self) -> bool:
        return self.state in (st.FAILED, st.UNREADABLE) or self.stalled

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "stalled": self.stalled,
            "cause": self.cause,
            "title": self.rule.title,
            "summary": self.summary,
            "exit_code": self.status.get("exit_code"),
            "signal": self.status.get("signal"),
            "error": self.status.get("error"),
            "lines": self.lines,
            "traceback": self.traceback,
            "fix": {"text": self.fix.text, "commands": self.fix.commands},
        }


def last_traceback(lines: list[str]) -> str | None:
    """The last traceback in `lines`, with the tracebacks it was chained from, to the end."""
    starts = [i for i, line in enumerate(lines) if line.strip() == TRACEBACK_START]
    if not starts:
        return None
    k = len(starts) - 1
    while k > 0:
        between = [line.strip() for line in lines[starts[k - 1] : starts[k]]]
        if not any(marker in between for marker in CHAIN_MARKERS):
            break
        k -= 1
    return "\n".join(lines[starts[k] :]).rstrip()


def gather(view: ExperimentView, tail: int = CLASSIFY_LINES) -> Evidence:
    path = view.dir
    raw = tail_lines(path / st.LOG_FILE, tail, root=path) if path else []
    tail = [RANK_PREFIX.sub("", line) for line in raw]
    tb = last_traceback(tail)
    error = view.status.get("error") or ""
    text = "\n".join(x for x in (tb if tb is not None else "\n".join(tail), error) if x)
    metrics = last_json_rows(path / st.METRICS_FILE, 3, root=path) if path else []
    return Evidence(view.status, view.config, tail, text, tb, metrics, view.stalled, view.problem, view.collapse)


def classify(ev: Evidence) -> Rule:
    for rule in RULES:
        if rule.matches(ev):
            return rule
    return UNKNOWN


def diagnose_experiment(
    view: ExperimentView, suite: str, *, lines: int = DEFAULT_LINES, tail: int = CLASSIFY_LINES,
    config_path: Path | None = None, output: Path = DEFAULT_OUTPUT, verbose: bool = False,
) -> Diagnosis:
    ev = gather(view, tail)
    rule = classify(ev)
    ctx = _context(view, suite, config_path, output)
    # An evaluation that ended badly gets perl eval's remedy; a collapse is training's, whoever ran last.
    evaluation = ctx.evaluating and rule.cause != "collapse" and view.state != st.COMPLETED
    fix = _for_evaluation(ctx, rule) if evaluation else rule.fix(ctx, ev)
    if any(c.endswith(" --fresh") for c in fix.commands) and "--fresh" not in fix.text:
        fix.text += (
            f" --fresh starts it over: with other settings its checkpoints cannot be resumed "
            f"(the previous attempt is kept as {ctx.name}{st.OLD_DIR_MARK}<time>)."
        )
    return Diagnosis(
        name=view.name,
        state=view.state,
        stalled=view.stalled,
        rule=rule,
        summary=_summary(ev, rule),
        lines=_excerpt(ev.tail, rule, lines, with_traceback=verbose),
        traceback=ev.traceback,
        fix=fix,
        status=view.status,
    )


def _context(view: ExperimentView, suite: str, config_path: Path | None, output: Path) -> Context:
    return Context(
        suite, view.name, view.config, view.status, config_path, output, expected=view.expected,
        has_checkpoint=bool(view.dir and st.last_checkpoint(view.dir)),  # what `perl run` resumes from
    )


def diagnose_suite(
    view: SuiteView, *, lines: int = DEFAULT_LINES, tail: int = CLASSIFY_LINES,
    config_path: Path | None = None, output: Path = DEFAULT_OUTPUT, verbose: bool = False,
) -> list[Diagnosis]:
    judge_collapse(view.experiments)  # a completed run that collapsed needs explaining too
    return [
        diagnose_experiment(
            e, view.suite, lines=lines, tail=tail, config_path=config_path, output=output, verbose=verbose
        )
        for e in view.experiments
        if needs_attention(e)
    ]


def groups(diagnoses: list[Diagnosis]) -> dict[str, list[Diagnosis]]:
    """Diagnoses by cause: failures first (rule-table order), then stalls, then interruptions."""
    out: dict[str, list[Diagnosis]] = {}
    for cause in sorted(CAUSES, key=lambda c: (c == "interrupted", c == "stalled")):
        members = [d for d in diagnoses if d.cause == cause]
        if members:
            out[cause] = members
    return out


def to_json(view: SuiteView, diagnoses: list[Diagnosis]) -> dict[str, Any]:
    grouped = groups(diagnoses)
    return {
        "suite": view.suite,
        "checked": len(view.experiments),
        "problems": len(diagnoses),
        "failures": sum(d.is_failure for d in diagnoses),
        "counts": {cause: len(members) for cause, members in grouped.items()},
        "groups": [
            {"cause": cause, "title": members[0].rule.title, "experiments": [d.name for d in members]}
            for cause, members in grouped.items()
        ],
        "experiments": [d.to_json() for d in diagnoses],
    }


def _summary(ev: Evidence, rule: Rule) -> str:
    """One line that says what happened: the exception line, else the status error or exit."""
    source = ev.traceback.splitlines() if ev.traceback else []
    for line in reversed(source):
        if EXCEPTION_LINE.match(line.strip()):
            return line.strip()[:300]
    if ev.problem:
        return ev.problem
    if ev.status.get("error"):
        return str(ev.status["error"])[:300]
    if rule.cause == "collapse" and ev.collapse:
        return f"collapse from step {ev.collapse.get('step'):g}: {ev.collapse.get('text')}"[:300]
    if rule.cause == "stalled":
        beat = ev.status.get("heartbeat") or ev.status.get("started")
        return f"no heartbeat since {_ago(beat)}" if isinstance(beat, (int, float)) else "no heartbeat"
    code, sig = ev.status.get("exit_code"), ev.signal
    if sig or code is not None:
        return ", ".join(x for x in (f"exit code {code}" if code is not None else "", sig or "") if x)
    return rule.title


def _excerpt(tail: list[str], rule: Rule, n: int, *, with_traceback: bool = False) -> list[str]:
    """`n` log lines around the last line the rule matched, else the last `n` lines.

    With `with_traceback` (--verbose) the excerpt grows to hold the whole last traceback
    too, so it shows everything the default does and more (e.g. the `{'loss': nan}` line
    printed just before the traceback of a NaN failure).
    """
    if n <= 0 or not tail:
        return []
    hit = rule.matching_line(tail)
    end = len(tail) if hit is None else min(len(tail), hit + 3)
    start = max(0, end - n)
    if with_traceback:
        starts = [i for i, line in enumerate(tail) if line.strip() == TRACEBACK_START]
        tb = last_traceback(tail)
        if tb is not None:
            first = next(i for i in starts if "\n".join(tail[i:]).rstrip() == tb)
            start, end = min(start, first), len(tail)
    return tail[start:end]


def _missing_path(text: str) -> str | None:
    for pattern in (
        r"No such file or directory: '([^']+)'",
        r"Incorrect path_or_model_id: '([^']+)'",
        r"^OSError: (\S+) does not appear to have a file named",
        r"Can't load (?:the )?\w+ for '([^']+)'",
    ):
        match = re.search(pattern, text, re.MULTILINE)
        if match:
            return match.group(1)
    return None


def _basename(value: str) -> str:
    name = value.rstrip("/").rsplit("/", 1)[-1] or "model"
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name.split(":", 1)[-1])


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _ago(t: float | None) -> str:
    import time

    from perl_cli.ui import human_seconds

    if not isinstance(t, (int, float)):
        return "?"
    return f"{human_seconds(time.time() - t)} ago"


# --- the command ----------------------------------------------------------------------


class Verbatim(Text):
    """A log line or a command: printed whole (soft-wrapped by the terminal), so it can be copied."""


def render(view: SuiteView, diagnoses: list[Diagnosis], *, verbose: bool = False) -> list[Any]:
    """The report as a list of Rich Texts: prose wraps at word boundaries, `Verbatim` lines never."""
    from rich.markup import escape
    from rich.text import Text

    parts: list[Any] = []
    n = len(view.experiments)
    if not diagnoses:
        running = view.counts[st.RUNNING]
        note = f" ({running} running, none stalled)" if running else ""
        parts.append(Text.from_markup(f"[green]suite {escape(view.suite)}: no failed, interrupted or stalled experiments[/] among {n}{note}."))
        return parts
    failures = sum(d.is_failure for d in diagnoses)
    parts.append(Text.from_markup(
        f"[bold]suite {escape(view.suite)}[/]: {len(diagnoses)} of {n} experiments need attention "
        f"({failures} failed, unreadable or stalled, {len(diagnoses) - failures} interrupted)."
    ))
    for cause, members in groups(diagnoses).items():
        parts.append(Text(""))
        parts.append(Text.from_markup(
            f"[bold red]━━ {members[0].rule.title}[/] [dim]({cause})[/]: {len(members)} — "
            + escape(", ".join(d.name for d in members))
        ))
        for d in members:
            label = d.state + (" (stalled)" if d.stalled else "")
            summary = d.summary if len(d.summary) <= SUMMARY_CHARS else d.summary[: SUMMARY_CHARS - 1] + "…"
            parts.append(Text.assemble("  ", (d.name, "bold"), f"  {label}: ", summary))
            parts.extend(Verbatim("    │ " + line, style="dim") for line in d.lines)
            parts.append(Text.assemble("    ", ("fix: ", "bold green"), d.fix.text))
            parts.extend(Verbatim("      $ " + command, style="green") for command in d.fix.commands)
    return parts


def command(
    suite: str | None,
    *,
    config_path: Path | None,
    output: Path,
    json_out: bool = False,
    verbose: bool = False,
    lines: int = DEFAULT_LINES,
    stall_after_s: float,
    selection: Any = None,
) -> int:
    """`perl diagnose`: 1 when a failed or stalled experiment is found, else 0."""
    import json

    from perl_cli import config as configlib
    from perl_cli import experiments_view as views
    from perl_cli.status import hanging
    from perl_cli.ui import console as make_console

    if lines < 0:
        raise configlib.ConfigError(f"--lines {lines}: must be 0 or more.")
    selection = selection or views.Selection()
    selection.check_suite(suite)
    cfg = views.load_config(config_path)
    names = views.suites_to_read(output, suite, cfg)
    tail = max(lines, VERBOSE_LINES if verbose else CLASSIFY_LINES)
    results = []
    for name in names:
        view = selection.apply(views.load_suite(output, name, cfg, stall_after_s=stall_after_s, with_size=False))
        results.append((view, diagnose_suite(
            view, lines=lines, tail=tail, config_path=config_path, output=output, verbose=verbose,
        )))
    failed = any(d.is_failure for _, diagnoses in results for d in diagnoses)
    if json_out:
        data: Any = to_json(*results[0]) if suite is not None else {
            "output_dir": str(output), "suites": [to_json(v, ds) for v, ds in results],
        }
        print(json.dumps(data, indent=2))
        return 1 if failed else 0
    console = make_console()
    if not results:
        console.print(f"No suites under {output}/ yet: nothing to diagnose.", markup=False)
    for view, diagnoses in results:
        for part in render(view, diagnoses, verbose=verbose):
            # Prose wraps at word boundaries, indented; commands and log lines stay whole, to be copied.
            console.print(part, soft_wrap=True) if isinstance(part, Verbatim) else console.print(hanging(part, console))
    return 1 if failed else 0
