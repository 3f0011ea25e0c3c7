"""The evaluation worker: benchmarks of a completed experiment (`perl eval`).

Run by the scheduler as an `eval` job (perl_cli/scheduler/jobkinds.py) in the
experiment's directory: it reads config.json and eval_request.json (the benchmark specs
asked for), loads the base model with the trained adapter (or, for full fine-tuning,
the saved full model), evaluates every benchmark not already done for this fingerprint
(benchmark_eval: saved batch by batch, so a stopped evaluation continues where it
stopped), adds the summaries to eval.json and leaves the experiment `completed`.

Exit codes are the training worker's (outcomes.py): 0 done, 1 failed, 2 unusable
request, 130/143 stopped by SIGINT/SIGTERM (the experiment is then `interrupted`;
`perl eval` continues it, `perl run` would finish it too).
"""

from __future__ import annotations

import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from perl_cli import outcomes, state
from perl_cli.train.status import StatusWriter

REQUEST_FILE = "eval_request.json"


def _load_model(exp_dir: Path, config: dict[str, Any], on_gpu: bool, progress: Any) -> Any:
    from perl_cli.methods import get_method
    from perl_cli.models import load_model
    from perl_cli.train.artifacts import FULL_MODEL_DIR

    method = get_method(config["peft"]["type"])
    if method.full:
        from transformers import AutoModelForCausalLM

        path = exp_dir / FULL_MODEL_DIR
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path}: no saved full model (did training complete?)")
        return AutoModelForCausalLM.from_pretrained(str(path))
    from peft import PeftModel

    if not (exp_dir / "adapter_config.json").exists():
        raise FileNotFoundError(f"{exp_dir}: no saved adapter (did training complete?)")
    base = load_model(config["model"], on_gpu=on_gpu, progress=progress)
    # PiSSA/MiLoRA save their adapter converted to apply to the original base model.
    return PeftModel.from_pretrained(base, str(exp_dir))


def run(exp_dir: Path) -> int:
    config = state.read_json(exp_dir / state.CONFIG_FILE)
    request = state.read_json(exp_dir / REQUEST_FILE)
    if not isinstance(config, dict) or not isinstance(request, dict) or not isinstance(request.get("benchmarks"), dict):
        print(f"[perl] error: {exp_dir}: config.json or {REQUEST_FILE} is missing or unreadable", file=sys.stderr)
        return outcomes.EXIT_CONFIG_ERROR
    previous = state.read_status(exp_dir) or {}
    status = StatusWriter(exp_dir, fingerprint=config.get("fingerprint"), total_steps=previous.get("total_steps"),
                          job="eval")  # scheduler/jobkinds.EVAL (not imported: no scheduler in the worker)
    from perl_cli.train.callbacks import Interrupted, StopOnSignal

    stopper = StopOnSignal()  # not training: a signal raises Interrupted at once (batches are saved)
    stopper.install()
    status.start()
    step = previous.get("step")
    try:
        import torch

        from perl_cli.data.countdown import resolve_prompt_format
        from perl_cli.models import load_tokenizer
        from perl_cli.train.benchmark_eval import run_benchmarks

        on_gpu = torch.cuda.is_available()
        torch.manual_seed(int(config["common"]["seed"]))
        tokenizer = load_tokenizer(config["model"], progress=status.phase)
        template = (config.get("task") or {}).get("chat_template")
        if template:
            tokenizer.chat_template = template
        model = _load_model(exp_dir, config, on_gpu, status.phase)
        if on_gpu:
            model = model.to("cuda")
        prompt_format = resolve_prompt_format(config["dataset"].get("prompt_format", "auto"),
                                              str(config["model"]["model_name_or_path"]))
        summaries = run_benchmarks(
            model, tokenizer, request["benchmarks"], exp_dir, prompt_format=prompt_format,
            task_section=config.get("task") or {}, seed=int(config["common"]["seed"]),
            fingerprint=config.get("fingerprint"), phase=status.phase,
        )
        results = state.read_json(exp_dir / state.EVAL_FILE) or {}
        results["benchmarks"] = {**(results.get("benchmarks") or {}), **summaries}
        state.atomic_write_json(exp_dir / state.EVAL_FILE, results)
        status.finish(state.COMPLETED, outcomes.EXIT_OK, step=step, phase=None)
        return outcomes.EXIT_OK
    except Interrupted:
        code = outcomes.EXIT_SIGINT if stopper.received == signal.SIGINT else outcomes.EXIT_SIGTERM
        print("[perl] evaluation interrupted; `perl eval` continues it from the last saved batch", flush=True)
        status.finish(state.INTERRUPTED, code, step=step)
        return code
    except BaseException as exc:  # noqa: BLE001 - every failure must end in status.json
        traceback.print_exc(file=sys.stderr)
        text = str(exc).strip().splitlines()
        status.finish(state.FAILED, outcomes.EXIT_FAILED, error=f"evaluation: {type(exc).__name__}: {text[0] if text else ''}"[:500], step=step)
        return outcomes.EXIT_FAILED
    finally:
        stopper.uninstall()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m perl_cli.train.eval_worker EXPERIMENT_DIR", file=sys.stderr)
        return outcomes.EXIT_CONFIG_ERROR
    return run(Path(args[0]).resolve())


if __name__ == "__main__":
    sys.exit(main())
