"""PEFT method registry (placeholder until the worker's registry lands: validation only)."""

from __future__ import annotations

from perl_cli.schema import PEFT_METHODS

METHOD_NAMES = PEFT_METHODS


def validate_method_settings(method: str, peft: dict) -> list[str]:
    problems = []
    if method == "adalora" and peft.get("adalora_init_r") is not None and peft["adalora_init_r"] < peft["r"]:
        problems.append("peft.adalora_init_r must be >= peft.r (AdaLoRA prunes from init_r down to r)")
    return problems
