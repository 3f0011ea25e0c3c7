"""GRPOTrainer with a method's regulariser added to its loss (AdaLoRA's orthogonality term).

Everything else a method needs is done by callbacks (callbacks.py); a loss term is the
one thing no callback can reach, because TRL computes the loss itself rather than
taking it from the model's forward, where peft adds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trl import GRPOTrainer

REGULARISER_METRIC = "regulariser"  # logged to metrics.jsonl under this name


class MethodGRPOTrainer(GRPOTrainer):
    def __init__(self, *args: Any, regulariser: Callable[[Any], Any] | None = None, **kwargs: Any) -> None:
        self.regulariser = regulariser
        super().__init__(*args, **kwargs)

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.regulariser is None:
            return loss
        term = self.regulariser(self.accelerator.unwrap_model(model))
        mode = "train" if self.model.training else "eval"
        self._metrics[mode][REGULARISER_METRIC].append(float(term.detach()))
        # TRL scales its policy loss for gradient accumulation itself (HF's automatic
        # scaling is off), so the term is scaled the same way: it counts once per
        # optimizer step, as it does under a plain Trainer with peft's forward.
        steps = self.current_gradient_accumulation_steps if mode == "train" else 1
        return loss + term.to(loss.dtype) / steps


def optimizer_trainable_params(optimizer: Any) -> int:
    """Parameters the optimizer updates: the distinct tensors of its groups that require grad."""
    sizes = {id(p): p.numel() for group in optimizer.param_groups for p in group["params"] if p.requires_grad}
    return sum(sizes.values())
