"""One interface to the tasks a worker can train and evaluate on: Countdown and math.

The session, the evaluation and the reward set-up ask the task, so that neither knows
which one it runs: how to load the splits, render a prompt, make training rows, judge
a completion, and which reward functions to use.
"""

from __future__ import annotations

from typing import Any

from perl_cli.data import countdown
from perl_cli.data import math as mathdata

COUNTDOWN, MATH = "countdown", "math"


class CountdownTask:
    name = COUNTDOWN

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def load_splits(self) -> Any:
        return countdown.load_splits(self.config["dataset"])

    def render_prompt(self, problem: Any, prompt_format: str, tokenizer: Any) -> str:
        return countdown.render_prompt(problem, prompt_format, tokenizer)

    def to_records(self, problems: list[Any], prompt_format: str) -> list[dict[str, Any]]:
        return countdown.to_records(problems, prompt_format)

    def correct(self, completion: str, problem: Any) -> bool:
        from perl_cli.rewards import countdown_correct

        return countdown_correct(completion, list(problem.numbers), problem.target)

    def reward_functions(self, prompt_format: str) -> tuple[list, list[float]]:
        from perl_cli import rewards

        return rewards.reward_functions(prompt_format)


class MathTask:
    name = MATH

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.section = config.get("task") or {}

    def load_splits(self) -> Any:
        return mathdata.load_splits(self.config["dataset"], self.section)

    def render_prompt(self, problem: Any, prompt_format: str, tokenizer: Any) -> str:
        return mathdata.render_prompt(problem, prompt_format, tokenizer, self.section)

    def to_records(self, problems: list[Any], prompt_format: str) -> list[dict[str, Any]]:
        return mathdata.to_records(problems, prompt_format, self.section)

    def correct(self, completion: str, problem: Any) -> bool:
        from perl_cli.math_rewards import math_correct

        return math_correct(completion, problem.answer)

    def reward_functions(self, prompt_format: str) -> tuple[list, list[float]]:
        from perl_cli import math_rewards

        return math_rewards.reward_functions(prompt_format)


def task_name(config: dict[str, Any]) -> str:
    return str((config.get("task") or {}).get("name") or COUNTDOWN)


def for_config(config: dict[str, Any]) -> CountdownTask | MathTask:
    return MathTask(config) if task_name(config) == MATH else CountdownTask(config)


def task_problems(config: dict[str, Any]) -> list[str]:
    """Problems between the task and the dataset/model it is given (plan time and worker)."""
    name = task_name(config)
    dataset = str(config["dataset"]["dataset_name_or_path"])
    problems = []
    if name == MATH and dataset == countdown.BUILTIN_NAME:
        problems.append(f'task.name = "math" cannot train on {dataset}; use dataset_name_or_path = "{mathdata.BUILTIN_NAME}", '
                        "a hub math dataset or a local file")
    if name == COUNTDOWN and dataset == mathdata.BUILTIN_NAME:
        problems.append(f'dataset_name_or_path = "{dataset}" is a math set: set task.name = "math"')
    if name == COUNTDOWN and (config.get("task") or {}).get("benchmarks"):
        problems.append('task.benchmarks are math benchmarks: they need task.name = "math"')
    return problems
