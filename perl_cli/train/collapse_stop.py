"""`training.stop_on_collapse`: the worker stops a run as soon as its metrics say it collapsed.

The rule is perl_cli/collapse.py's, the one `perl status` flags with, evaluated on
metrics.jsonl after each log (ProgressCallback, registered before this callback, has just
appended the row). The worker then records the run `failed` with cause `collapsed` and the
curve's numbers in `error`; a collapse is never retried (outcomes.retry_plan), since the same
settings would collapse again: `perl diagnose` suggests what to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from perl_cli import collapse, state


class StopOnCollapse(TrainerCallback):
    def __init__(self, metrics_path: Path) -> None:
        self.metrics_path = metrics_path
        self.verdict: collapse.Collapse | None = None

    def on_log(self, args: Any, state_: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        if self.verdict is None:
            found = collapse.detect(state.read_jsonl(self.metrics_path))
            if found is not None:
                self.verdict = found
                print(f"[perl] training collapsed (from step {found.step:g}): {found.text()}; stopping "
                      "(training.stop_on_collapse)", flush=True)
                control.should_training_stop = True
        return control
