"""Rewards for math word problems: the last ``\\boxed{}`` answer against the reference.

The answer is what the prompt asks for: the content of the completion's last
``\\boxed{...}`` (or ``\\fbox{...}``). A completion without one is wrong, whatever
numbers its reasoning mentions: the reward must not pay for a guess buried in the
text. Equality is math-verify's (``1/2`` = ``\\frac{1}{2}`` = ``0.5``, intervals, sets of
answers in any order, units and ``\\%`` stripped), bounded in time by
perl_cli/math_verifier.py. The format term, like Countdown's, is a small shaping reward
for ending with exactly that form.
"""

from __future__ import annotations

from perl_cli.math_verifier import shared
from perl_cli.rewards import FORMAT_WEIGHT, THINK_CLOSE, _as_text

BOX_COMMANDS = ("\\boxed", "\\fbox")
# Text after the last box that still counts as "ending with the answer" (a full stop,
# closing math delimiters, a short sign-off).
MAX_TRAILING_CHARS = 40


def _box_span(text: str) -> tuple[int, int, int] | None:
    """(start of the command, start of content, end of content) of the last box, or None."""
    best = -1
    command = ""
    for cmd in BOX_COMMANDS:
        at = text.rfind(cmd)
        if at > best:
            best, command = at, cmd
    while best >= 0:
        i = best + len(command)
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):  # linear: no regex backtracking on hostile text
                ch = text[j]
                if ch == "{" and text[j - 1] != "\\":
                    depth += 1
                elif ch == "}" and text[j - 1] != "\\":
                    depth -= 1
                    if depth == 0:
                        return best, i + 1, j
            return None  # an unclosed box: no answer
        # "\boxedx" or a bare "\boxed": look at the box before it
        prev = -1
        for cmd in BOX_COMMANDS:
            at = text.rfind(cmd, 0, best)
            if at > prev:
                prev, command = at, cmd
        best = prev
    return None


def extract_boxed(completion: str) -> str | None:
    """The content of the last ``\\boxed{...}``, or None when there is none."""
    if not isinstance(completion, str):
        return None
    span = _box_span(completion)
    return None if span is None else completion[span[1] : span[2]]


def math_correct(completion: str, reference: str) -> bool:
    """True when the completion's last boxed answer equals `reference`. Never raises."""
    try:
        answer = extract_boxed(completion)
        if answer is None:
            return False
        return shared().equal(answer, str(reference))
    except Exception:
        return False


def has_boxed_format(completion: str, *, require_think: bool = False) -> bool:
    """True when the completion ends with one ``\\boxed{...}`` answer (and, for chat
    prompts, the reasoning was closed with ``</think>`` before it)."""
    try:
        if not isinstance(completion, str):
            return False
        span = _box_span(completion)
        if span is None:
            return False
        start, content_start, end = span
        if not completion[content_start:end].strip():
            return False
        if len(completion[end + 1 :].strip()) > MAX_TRAILING_CHARS:
            return False
        return not require_think or completion.rfind(THINK_CLOSE, 0, start) >= 0
    except Exception:
        return False


# --- TRL reward functions: (completions, **dataset columns) -> list[float] ----------
# Named like Countdown's so that metrics read reward/correct and reward/format for both.


def correct_reward(completions: list, answer: list[str], **_: object) -> list[float]:
    """1.0 when the boxed answer equals the reference answer, else 0.0."""
    return [1.0 if math_correct(_as_text(c), ref) else 0.0 for c, ref in zip(completions, answer, strict=True)]


def format_reward(completions: list, **_: object) -> list[float]:
    """1.0 when the completion ends with a boxed answer."""
    return [1.0 if has_boxed_format(_as_text(c)) else 0.0 for c in completions]


def think_format_reward(completions: list, **_: object) -> list[float]:
    """Like `format_reward`, and the reasoning is closed with ``</think>`` before the answer."""
    return [1.0 if has_boxed_format(_as_text(c), require_think=True) else 0.0 for c in completions]


def reward_functions(prompt_format: str, *, require_think: bool = False) -> tuple[list, list[float]]:
    """The reward functions and their weights (correctness 1, format FORMAT_WEIGHT)."""
    fmt = think_format_reward if require_think and prompt_format == "chat" else format_reward
    return [correct_reward, fmt], [1.0, FORMAT_WEIGHT]
