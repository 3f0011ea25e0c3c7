"""Realistic output directories for the readers' tests and the status benchmark.

`build_suite` writes output/<suite>/<experiment>/ the way the scheduler and worker do
(config.json from config.expand, status.json, metrics.jsonl, eval.json, train.log,
adapter and checkpoint files). `FAILURE_LOGS` holds real-looking logs of the failures
that cannot be provoked on a CPU: the texts are what PyTorch, NCCL, huggingface_hub and
the kernel actually print.
"""

from __future__ import annotations

import json
import math
import socket
import time
from pathlib import Path

from perl_cli import config as configlib
from perl_cli import state as st

TEST_TOML = """
[base.model]
model_name_or_path = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"

[base.dataset]
dataset_name_or_path = "Jiayi-Pan/Countdown-Tasks-3to4"

[base.training]
max_steps = 100
per_device_train_batch_size = 4
gradient_accumulation_steps = 8
num_generations = 8
learning_rate = 1e-5

[suites.core]
description = "methods x seeds"
name = "{method}_r{rank}_s{seed}"
[suites.core.matrix]
method = ["lora", "dora", "adalora", "milora", "lora_plus", "pissa"]
seed = [42, 123]

[suites.wide]
description = "room for one experiment per failure kind"
name = "{method}_r{rank}_s{seed}"
[suites.wide.matrix]
method = ["lora", "dora", "adalora", "milora", "lora_plus", "pissa"]
seed = [1, 2, 3, 4]

[suites.rank]
description = "methods x ranks"
name = "{method}_r{rank}_s{seed}"
[suites.rank.matrix]
method = ["lora", "dora"]
rank = [4, 16, 64]
seed = [42, 123]

[suites.data]
description = "methods x data sizes"
name = "{method}_r{rank}_n{data_size}_s{seed}"
[suites.data.matrix]
method = ["lora", "pissa"]
data_size = [1000, 4000]
seed = [42]

[suites.odd]
description = "odd batches and one completion per step"
name = "{method}_r{rank}_s{seed}"
[suites.odd.base.training]
per_device_train_batch_size = 1
gradient_accumulation_steps = 8
num_generations = 8
[suites.odd.matrix]
method = ["lora"]
seed = [1]
[[suites.odd.experiments]]
name = "odd_batch"
training = { per_device_train_batch_size = 3, gradient_accumulation_steps = 8, num_generations = 8 }
"""

SITE = "/home/researcher/.venv/lib/python3.11/site-packages"

CUDA_OOM = f"""{{'loss': 0.0123, 'grad_norm': 0.41, 'learning_rate': 1e-05, 'reward': 0.31, 'epoch': 0.02}}
  2%|▏         | 17/1000 [08:41<8:22:10, 30.65s/it]
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "<frozen runpy>", line 88, in _run_code
  File "/home/researcher/perl/perl_cli/train/__main__.py", line 12, in <module>
    main()
  File "{SITE}/transformers/trainer.py", line 2328, in train
    return inner_training_loop(
  File "{SITE}/trl/trainer/grpo_trainer.py", line 1742, in _generate_and_score_completions
    old_per_token_logps, _ = self._get_per_token_logps_and_entropies(
  File "{SITE}/torch/nn/modules/module.py", line 1773, in _wrapped_call_impl
    return self._call_impl(*args, **kwargs)
  File "{SITE}/transformers/models/qwen2/modeling_qwen2.py", line 449, in forward
    logits = self.lm_head(hidden_states[:, slice_indices, :])
  File "{SITE}/torch/nn/modules/linear.py", line 125, in forward
    return F.linear(input, self.weight, self.bias)
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.32 GiB. GPU 0 has a total capacity of 79.15 GiB of which 1.26 GiB is free. Including non-PyTorch memory, this process has 77.88 GiB memory in use. Of the allocated memory 74.12 GiB is allocated by PyTorch, and 2.98 GiB is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)
wandb: 🚀 View run lora_r16_s42 at: https://wandb.ai/lab/peft-rlvr-mechanistic/runs/1x2y3z
"""

NCCL = f"""[rank1]:[E1122 03:12:44.123456789 ProcessGroupNCCL.cpp:616] [Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=4521, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600012 milliseconds before timing out.
[rank1]:[E1122 03:12:44.124 ProcessGroupNCCL.cpp:1785] [PG ID 0 PG GUID 0(default_pg) Rank 1] Exception (either an error or timeout) detected by watchdog at work: 4521, last enqueued NCCL work: 4521, last completed NCCL work: 4520.
[rank0]: Traceback (most recent call last):
[rank0]:   File "{SITE}/accelerate/accelerator.py", line 2454, in backward
[rank0]:     loss.backward(**kwargs)
[rank0]:   File "{SITE}/torch/distributed/distributed_c10d.py", line 2501, in all_reduce
[rank0]:     work = group.allreduce([tensor], opts)
[rank0]: torch.distributed.DistBackendError: NCCL error in: /pytorch/torch/csrc/distributed/c10d/NCCLUtils.hpp:275, unhandled system error (run with NCCL_DEBUG=INFO for details), NCCL version 2.21.5
[rank0]: ncclSystemError: System call (e.g. socket, malloc) or external library call failed or device error.
[rank0]: Last error:
[rank0]: socketStartConnect: Connect to 10.0.0.2<46523> failed : Software caused connection abort
"""

HUB_OFFLINE = f"""Traceback (most recent call last):
  File "{SITE}/transformers/utils/hub.py", line 479, in cached_files
    hf_hub_download(
  File "{SITE}/huggingface_hub/file_download.py", line 1007, in hf_hub_download
    return _hf_hub_download_to_cache_dir(
  File "{SITE}/huggingface_hub/file_download.py", line 1114, in _hf_hub_download_to_cache_dir
    _raise_on_head_call_error(head_call_error, force_download, local_files_only)
  File "{SITE}/huggingface_hub/file_download.py", line 1655, in _raise_on_head_call_error
    raise LocalEntryNotFoundError(
huggingface_hub.errors.LocalEntryNotFoundError: Cannot find the requested files in the disk cache and outgoing traffic has been disabled. To enable hf.co look-ups and downloads online, set 'local_files_only' to False.

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/home/researcher/perl/perl_cli/train/__main__.py", line 12, in <module>
    main()
  File "/home/researcher/perl/perl_cli/models.py", line 88, in load_model
    model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
  File "{SITE}/transformers/utils/hub.py", line 543, in cached_files
    raise OSError(
OSError: We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in the cached files.
Check your internet connection or see how to run the library in offline mode at 'https://huggingface.co/docs/transformers/installation#offline-mode'.
"""

HUB_OFFLINE_MODE = f"""Traceback (most recent call last):
  File "{SITE}/huggingface_hub/utils/_http.py", line 102, in send
    raise OfflineModeIsEnabled(
huggingface_hub.errors.OfflineModeIsEnabled: Cannot reach https://huggingface.co/api/models/deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B: offline mode is enabled. To disable it, please unset the `HF_HUB_OFFLINE` environment variable.
"""

HUB_GATED = f"""Traceback (most recent call last):
  File "{SITE}/huggingface_hub/utils/_http.py", line 409, in hf_raise_for_status
    response.raise_for_status()
requests.exceptions.HTTPError: 401 Client Error: Unauthorized for url: https://huggingface.co/meta-llama/Llama-3.1-8B/resolve/main/config.json

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "{SITE}/huggingface_hub/file_download.py", line 1484, in _get_metadata_or_catch_error
    metadata = get_hf_file_metadata(
huggingface_hub.errors.GatedRepoError: 401 Client Error. (Request ID: Root=1-6740a1b2-4c5d6e7f8a9b0c1d2e3f4a5b;1f2e3d4c)

Cannot access gated repo for url https://huggingface.co/meta-llama/Llama-3.1-8B/resolve/main/config.json.
Access to model meta-llama/Llama-3.1-8B is restricted. You must have access to it and be authenticated to access it. Please log in.
"""

NAN_LOSS = f"""{{'loss': 0.0311, 'grad_norm': 3.1, 'learning_rate': 1e-05, 'reward': 0.42, 'epoch': 0.11}}
{{'loss': nan, 'grad_norm': nan, 'learning_rate': 1e-05, 'reward': 0.0, 'epoch': 0.12}}
Traceback (most recent call last):
  File "{SITE}/trl/trainer/grpo_trainer.py", line 1503, in _generate_single_turn
    prompt_completion_ids = unwrapped_model.generate(
  File "{SITE}/transformers/generation/utils.py", line 2886, in _sample
    next_tokens = torch.multinomial(probs, num_samples=1).squeeze(1)
RuntimeError: probability tensor contains either `inf`, `nan` or element < 0
"""

DISK_FULL = f"""Saving model checkpoint to output/core/lora_r16_s42/checkpoints/checkpoint-300
Traceback (most recent call last):
  File "{SITE}/transformers/trainer.py", line 3301, in _save_checkpoint
    self.save_model(output_dir, _internal_call=True)
  File "{SITE}/safetensors/torch.py", line 286, in save_file
    serialize_file(_flatten(tensors), filename, metadata=metadata)
OSError: [Errno 28] No space left on device: 'output/core/lora_r16_s42/checkpoints/checkpoint-300/adapter_model.safetensors'
"""

IMPORT_ERROR = f"""/home/researcher/.venv/lib/python3.11/site-packages/torch/cuda/__init__.py:63: FutureWarning: The pynvml package is deprecated.
Traceback (most recent call last):
  File "/home/researcher/perl/perl_cli/train/__main__.py", line 5, in <module>
    from perl_cli.train.worker import main
  File "/home/researcher/perl/perl_cli/train/worker.py", line 9, in <module>
    from trl import GRPOConfig, GRPOTrainer
  File "{SITE}/trl/__init__.py", line 20, in <module>
    from .import_utils import _LazyModule
  File "{SITE}/transformers/utils/versions.py", line 44, in _compare_versions
    raise ImportError(
ImportError: peft>=0.17.0 is required for a normal functioning of this module, but found peft==0.10.0.
Try: `pip install transformers -U` or `pip install -e '.[dev]'` if you're working with git main
"""

MODULE_MISSING = """Traceback (most recent call last):
  File "/home/researcher/perl/perl_cli/train/worker.py", line 9, in <module>
    import trl
ModuleNotFoundError: No module named 'trl'
"""

FILE_NOT_FOUND = f"""Traceback (most recent call last):
  File "/home/researcher/perl/perl_cli/data/countdown.py", line 61, in load
    table = pq.read_table(path)
  File "{SITE}/pyarrow/parquet/core.py", line 1793, in read_table
    dataset = ParquetDataset(
FileNotFoundError: [Errno 2] No such file or directory: '/data/countdown/train.parquet'
"""

CHECKPOINT_MISSING = f"""Resuming from output/core/lora_r16_s42/checkpoints/checkpoint-200
Traceback (most recent call last):
  File "{SITE}/transformers/trainer.py", line 2210, in train
    self._load_from_checkpoint(resume_from_checkpoint)
FileNotFoundError: [Errno 2] No such file or directory: 'output/core/lora_r16_s42/checkpoints/checkpoint-200/trainer_state.json'
"""

CUDA_DRIVER = f"""Traceback (most recent call last):
  File "{SITE}/torch/nn/modules/linear.py", line 125, in forward
    return F.linear(input, self.weight, self.bias)
RuntimeError: CUDA error: an illegal memory access was encountered
CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below might be incorrect.
For debugging consider passing CUDA_LAUNCH_BLOCKING=1
Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.
"""

CONFIG_ERROR = f"""Traceback (most recent call last):
  File "{SITE}/trl/trainer/grpo_config.py", line 812, in __post_init__
    raise ValueError(
ValueError: The global train batch size (1 x 4) must be evenly divisible by the number of generations per prompt (8). Given the current train batch size, the valid values for the number of generations are: [2, 4].
"""

USER_INTERRUPT = f"""{{'loss': 0.0203, 'grad_norm': 0.33, 'learning_rate': 1e-05, 'reward': 0.37, 'epoch': 0.05}}
Traceback (most recent call last):
  File "{SITE}/torch/_tensor.py", line 647, in backward
    torch.autograd.backward(
KeyboardInterrupt
"""

KILLED = """{'loss': 0.0187, 'grad_norm': 0.29, 'learning_rate': 1e-05, 'reward': 0.45, 'epoch': 0.31}
 31%|███       | 312/1000 [2:41:07<5:55:12, 30.98s/it]
"""

UNKNOWN = """Traceback (most recent call last):
  File "/home/researcher/perl/perl_cli/rewards.py", line 40, in score
    return correct / total
ZeroDivisionError: division by zero
"""

# PeRL's own worker errors: one message, no traceback (perl_cli/train/worker.py, models.py).
WORKER_HUB_ERROR = (
    "[perl] error: could not load model 'deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B': it is not a local directory "
    "and the Hugging Face Hub could not provide it (LocalEntryNotFoundError: Cannot find the requested files in the "
    "disk cache and outgoing traffic has been disabled.). Offline machine? Set HF_HUB_OFFLINE=1 and use a local "
    "path, or pre-download the model (huggingface-cli download NAME) and point model_name_or_path at the directory.\n"
)
WORKER_CONFIG_ERROR = (
    "[perl] error: invalid /data/output/core/lora_r16_s42/config.json: training.per_device_train_batch_size x "
    "gradient_accumulation_steps (6 x 1) must be a multiple of training.num_generations (4)\n"
)

# A running experiment whose log happens to say "timeout" and "error": never a failure.
RUNNING_NOISY = """Loading checkpoint shards: 100%|██████████| 2/2 [00:03<00:00,  1.6s/it]
warning: request timeout while syncing to W&B, retrying (error 503)
{'loss': 0.0301, 'grad_norm': 0.5, 'learning_rate': 1e-05, 'reward': 0.22, 'epoch': 0.01}
"""

# A Slurm task stopped at its time limit with no requeue left (perl_cli/scheduler/slurm_task.py):
# the worker saved a checkpoint on SIGTERM and exited 143; the task recorded the cause.
SLURM_TIME_LIMIT = """{'loss': 0.0199, 'grad_norm': 0.31, 'learning_rate': 1e-05, 'reward': 0.41, 'epoch': 0.2}
[perl] interrupted at step 212; exiting with 143

[perl run 2026-11-23 03:12:44] the Slurm time limit: stopped at step 212; no requeue left
"""
SLURM_PREEMPTED = SLURM_TIME_LIMIT.replace("the Slurm time limit", "preemption")
# A Slurm task that left no final word (its node died, Slurm killed it): the log just stops.
SLURM_NO_WORD = """{'loss': 0.0199, 'grad_norm': 0.31, 'learning_rate': 1e-05, 'reward': 0.41, 'epoch': 0.2}
"""

# cause -> (log text, status fields); state defaults to failed.
FAILURE_LOGS: dict[str, tuple[str, dict]] = {
    "cuda_oom": (CUDA_OOM, {"exit_code": 1, "error": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.32 GiB."}),
    "nccl": (NCCL, {"exit_code": 1}),
    "hub_offline": (HUB_OFFLINE, {"exit_code": 1}),
    "hub_offline_mode": (HUB_OFFLINE_MODE, {"exit_code": 1}),
    "hub_gated": (HUB_GATED, {"exit_code": 1}),
    "nan": (NAN_LOSS, {"exit_code": 1}),
    "disk_full": (DISK_FULL, {"exit_code": 1}),
    "import_error": (IMPORT_ERROR, {"exit_code": 1}),
    "module_missing": (MODULE_MISSING, {"exit_code": 1}),
    "file_not_found": (FILE_NOT_FOUND, {"exit_code": 1}),
    "checkpoint_missing": (CHECKPOINT_MISSING, {"exit_code": 1}),
    "cuda_driver": (CUDA_DRIVER, {"exit_code": 1}),
    "config_error": (CONFIG_ERROR, {"exit_code": 1}),
    "interrupted": (USER_INTERRUPT, {"state": st.INTERRUPTED, "exit_code": 130, "signal": "SIGINT"}),
    # As the scheduler records a worker it reaped after a SIGKILL (perl_cli/scheduler/local.py).
    "host_oom": (KILLED, {"exit_code": 137, "signal": "SIGKILL", "error": "killed by SIGKILL"}),
    "unknown": (UNKNOWN, {"exit_code": 1}),
    "worker_hub_error": (WORKER_HUB_ERROR, {"exit_code": 1, "error": "ModelError: could not load model"}),
    "worker_config_error": (WORKER_CONFIG_ERROR, {"exit_code": 2}),
    "time_limit": (SLURM_TIME_LIMIT, {"exit_code": 143, "cause": "time_limit", "requeues": [{"cause": "time_limit"}],
                                      "slurm": {"job_id": "4242_7", "time_limit_s": 14400},
                                      "error": "stopped by the Slurm time limit after 1 requeue(s); none left"}),
    "preempted": (SLURM_PREEMPTED, {"exit_code": 143, "cause": "preempted",
                                    "error": "stopped by preemption after 0 requeue(s); none left"}),
    # Recorded from Slurm's own end state (perl_cli/scheduler/endings.py, from_slurm).
    "memory_limit": (SLURM_NO_WORD, {"cause": "memory_limit", "backend": "slurm",
                                     "slurm": {"args": ["--backend", "slurm", "--mem", "8G"]},
                                     "error": "Slurm task 4242_3 exceeded its memory request (OUT_OF_MEMORY)"}),
    "node_failure": (SLURM_NO_WORD, {"cause": "node_failure", "backend": "slurm", "slurm": {"node": "gpu17"},
                                     "error": "the node of Slurm task 4242_4 failed (NODE_FAIL); no requeue followed"}),
    "cancelled_pending": ("", {"state": st.INTERRUPTED, "cause": "cancelled_pending", "backend": "slurm",
                               "error": "cancelled by Slurm (scancel) while it waited in Slurm's queue"}),
    # As the worker records a run training.stop_on_collapse stopped (perl_cli/train/worker.py).
    "collapse": (
        "[perl] step 30/100 reward 0.000\n[perl] training collapsed (from step 20): reward/correct fell from a peak "
        "of 0.31 (step 10) to <= 0.031 at step 20; stopping (training.stop_on_collapse)\n",
        {"exit_code": 1, "cause": "collapsed",
         "error": "training collapsed from step 20: reward/correct fell from a peak of 0.31 (step 10) to <= 0.031"}),
}
# The cause each FAILURE_LOGS entry must be classified as.
EXPECTED_CAUSE = {key: key for key in FAILURE_LOGS} | {
    "hub_offline_mode": "hub_offline",
    "module_missing": "import_error",
    "checkpoint_missing": "file_not_found",
    "worker_hub_error": "hub_offline",
    "worker_config_error": "config_error",
}


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "experiments.toml"
    path.write_text(TEST_TOML)
    return path


def write_experiment(
    suite_dir: Path,
    exp: configlib.Experiment,
    *,
    state: str = st.COMPLETED,
    step: int | None = None,
    log: str = "",
    started_ago: float = 3600.0,
    heartbeat_ago: float = 5.0,
    host: str | None = None,
    pid: int | None = None,
    metrics_rows: int | None = None,
    step_seconds: float = 2.0,
    final_reward: float = 0.6,
    eval_accuracy: float | None = 0.4,
    status_extra: dict | None = None,
    nonfinite_last: bool = False,
    checkpoints: int = 2,
    fingerprint: str | None = None,
    tracking: bool = False,
    now: float | None = None,
) -> Path:
    """One experiment directory as the scheduler and worker leave it (times relative to `now`)."""
    now = time.time() if now is None else now
    d = suite_dir / exp.name
    d.mkdir(parents=True, exist_ok=True)
    total = exp.max_steps
    step = total if step is None and state == st.COMPLETED else (step or 0)
    resolved = exp.resolved()
    if fingerprint:
        resolved["fingerprint"] = fingerprint
    st.atomic_write_json(d / st.CONFIG_FILE, resolved)
    started = now - started_ago
    status = {
        "state": state,
        "step": step,
        "total_steps": total,
        "pid": pid if pid is not None else 4242,
        "pid_start_time": None,
        "host": host or "gpu-node-7",
        "gpu": 0,
        "started": started,
        "ended": None if state == st.RUNNING else started + step * step_seconds + 30,
        "heartbeat": now - heartbeat_ago if state == st.RUNNING else started + step * step_seconds + 30,
        "exit_code": 0 if state == st.COMPLETED else None,
        "error": None,
        "attempt": 1,
        "fingerprint": fingerprint or exp.fingerprint,
    }
    status.update(status_extra or {})
    st.atomic_write_json(d / st.STATUS_FILE, status)
    n_rows = metrics_rows if metrics_rows is not None else step // 10
    with open(d / st.METRICS_FILE, "w", encoding="utf-8") as f:
        for i in range(1, n_rows + 1):
            s = max(1, step * i // max(1, n_rows))
            reward = final_reward * s / max(1, total) + 0.05 * math.sin(i)
            row = {
                "step": s, "reward": reward, "reward/correctness": reward * 0.8, "reward/format": reward * 0.2 + 0.1,
                "reward_std": 0.2, "loss": 0.02, "kl": 0.001 * i, "learning_rate": exp.learning_rate,
                "grad_norm": 0.5 + 0.01 * i, "completion_length": 180.0, "step_seconds": step_seconds,
            }
            if nonfinite_last and i == n_rows:
                row["loss"] = float("nan")
                row["grad_norm"] = float("inf")
            f.write(json.dumps(row) + "\n")
    (d / st.LOG_FILE).write_text(log, encoding="utf-8")
    if state == st.COMPLETED:
        (d / "adapter_model.safetensors").write_bytes(b"\0" * 4096)
        (d / "adapter_config.json").write_text("{}")
        trainable = {"lora": 18_464_768, "dora": 18_800_000, "adalora": 27_700_000}.get(exp.method, 9_000_000) // 16 * exp.rank
        ev = {
            "accuracy_greedy": eval_accuracy, "accuracy_sampled": (eval_accuracy or 0) * 0.9,
            "base_accuracy_greedy": 0.1, "base_accuracy_sampled": 0.08,
            "reward_first_10pct": 0.1, "reward_last_10pct": final_reward,
            "trainable_params": trainable, "total_params": 1_777_088_000,
            "trainable_pct": 100 * trainable / 1_777_088_000, "peak_memory_mb": 30_000.0,
            "seconds_per_step": step_seconds, "total_seconds": step * step_seconds,
            "adapter_size_bytes": 4096, "method": exp.method,
        }
        st.atomic_write_json(d / st.EVAL_FILE, ev)
    if tracking:
        write_tracking(d, exp, step)
    for k in range(checkpoints if step else 0):
        c = d / st.CHECKPOINT_DIR / f"checkpoint-{(k + 1) * 10}"
        c.mkdir(parents=True, exist_ok=True)
        (c / "adapter_model.safetensors").write_bytes(b"\0" * 2048)
        st.atomic_write_json(c / "trainer_state.json", {"global_step": (k + 1) * 10})
    return d


def write_tracking(d: Path, exp: configlib.Experiment, step: int) -> None:
    """spectral_history.json and gradient_flow.json as perl_cli/tracking/callback.py writes them."""
    modules = [f"layers.{i}.self_attn.{m}" for i in range(2) for m in ("q_proj", "v_proj")]
    steps = list(range(0, step + 1, max(1, step // 4)))
    spectral = [
        {"step": s, "seconds": 0.01, "layers": {
            m: {"singular_values": [1.0, 0.5], "effective_rank": 1.0 + s / max(1, step) * (j + 1),
                "stable_rank": 1.2, "condition_number": 2.0, "frobenius_norm": 1.1, "spectral_norm": 1.0}
            for j, m in enumerate(modules)}}
        for s in steps
    ]
    gradient = [
        {"step": s, "seconds": 0.002, "layers": {m: {"A": 0.01 * (j + 1), "B": 0.1 / (s + 1)} for j, m in enumerate(modules)}}
        for s in steps if s
    ]
    st.atomic_write_json(d / "spectral_history.json", {"method": exp.method, "history": spectral})
    st.atomic_write_json(d / "gradient_flow.json", {"method": exp.method, "history": gradient})


def failure(suite_dir: Path, exp: configlib.Experiment, key: str, **kw) -> Path:
    """An experiment that ended with the failure FAILURE_LOGS[key]."""
    log, fields = FAILURE_LOGS[key]
    fields = dict(fields)
    state = fields.pop("state", st.FAILED)
    return write_experiment(
        suite_dir, exp, state=state, step=exp.max_steps // 3, log=log,
        status_extra=fields, nonfinite_last=key == "nan", **kw,
    )


def build_mixed_suite(tmp_path: Path, suite: str = "core") -> tuple[Path, Path, list[configlib.Experiment]]:
    """A partial suite: completed, running, stalled, failed (OOM, killed), interrupted, stale, pending.

    Returns (config path, output dir, experiments).
    """
    cfg_path = write_config(tmp_path)
    exps = configlib.expand(configlib.load(cfg_path), suite)
    out = tmp_path / "output"
    sd = out / suite
    write_experiment(sd, exps[0])                                            # lora_r16_s42 completed
    write_experiment(sd, exps[1], final_reward=0.7, eval_accuracy=0.5)       # lora_r16_s123 completed
    write_experiment(sd, exps[2], state=st.RUNNING, step=40, log=RUNNING_NOISY, host="elsewhere")  # dora s42 running
    write_experiment(sd, exps[3], state=st.RUNNING, step=10, heartbeat_ago=7200, host="elsewhere")  # dora s123 stalled
    failure(sd, exps[4], "cuda_oom")                                        # adalora s42
    failure(sd, exps[5], "host_oom")                                        # adalora s123
    failure(sd, exps[6], "interrupted")                                     # milora s42
    write_experiment(sd, exps[7], fingerprint="0123456789ab")               # milora s123 stale
    # exps[8:] (lora_plus, pissa) pending: no directory
    return cfg_path, out, exps


def this_host() -> str:
    return socket.gethostname()


class ReadCounter:
    """Counts the bytes read through perl_cli.logtail.open_safe (every reader's way in), exactly."""

    def __init__(self) -> None:
        self.bytes = 0

    def install(self, monkeypatch) -> ReadCounter:
        from perl_cli import logtail

        counter = self

        class Counted:
            def __init__(self, handle) -> None:
                self.handle = handle

            def read(self, *args):
                data = self.handle.read(*args)
                counter.bytes += len(data)
                return data

            def __getattr__(self, name):
                return getattr(self.handle, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.handle.close()

        real_open = logtail.open_safe
        monkeypatch.setattr(logtail, "open_safe", lambda *a, **k: Counted(real_open(*a, **k)))
        return self


def sparse_prefix(path: Path, size: int) -> None:
    """Start `path` with `size` bytes of hole: a huge log that costs nothing to write."""
    with open(path, "wb") as f:
        f.truncate(size)
