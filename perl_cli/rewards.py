"""Safe verifiers for Countdown completions, usable as TRL reward functions.

Model output is untrusted input: an answer is parsed, never executed.

The grammar of an answer is integer literals, the binary operators ``+ - * /`` and
parentheses. Unary plus and minus are rejected: the task's operators are binary, and a
leading minus would let the model invent numbers that were not given (``-3`` is not
one of the numbers). Arithmetic is exact (``fractions.Fraction``), so ``7/2*2`` is 7
and division by zero is simply a wrong answer; the target is compared exactly too, so
a target of 22.5 is met by 45/2 and never by an expression equal to 22.

Every check that bounds work happens before the expensive step it protects: the
answer's length before parsing, the character set and parenthesis depth before
``ast.parse`` (which can raise ``RecursionError`` or ``MemoryError`` on deep nesting),
the multiset of literals before any arithmetic. The tag is found with ``str.rfind``,
so megabyte completions cost one linear scan and no regex backtracking.

An answer may state its result: ``(2+3)*4 = 20``. The prompt asks for "an equation"
and never forbids ``= target``, so the answer it invites is scored as meant: the left
side is checked exactly as a bare expression would be (each number once, exact value
equal to the target), and the right side must be a plain number equal to the target.
One ``=`` at most; the left side holds the expression (``20 = 4*5`` is not accepted).
"""

from __future__ import annotations

import ast
import math
import re
from collections import Counter
from fractions import Fraction

ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"
THINK_CLOSE = "</think>"

# Longer answers are rejected unparsed: a real equation over a few numbers is tiny.
MAX_ANSWER_CHARS = 1000
# Parenthesis nesting beyond this is not a plausible solution and risks deep recursion.
MAX_PAREN_DEPTH = 50
# Literal digits: operands larger than this cannot be one of the given numbers anyway.
MAX_LITERAL_DIGITS = 12

_ALLOWED_CHARS = frozenset("0123456789+-*/() \t\n")
EQUALS = "="
# The stated result: digits, an optional sign and decimal part (a target may be 22.5).
_RESULT_RE = re.compile(r"[+-]?[0-9]{1,%d}(?:\.[0-9]{1,%d})?" % (MAX_LITERAL_DIGITS, MAX_LITERAL_DIGITS))  # noqa: UP031
_BINARY_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div)


class _Reject(Exception):
    """Raised inside the evaluator to abandon an answer; never escapes this module."""


def extract_answer(completion: str) -> str | None:
    """The text inside the last ``<answer>...</answer>`` pair, or None."""
    if not isinstance(completion, str):
        return None
    close = completion.rfind(ANSWER_CLOSE)
    if close < 0:
        return None
    start = completion.rfind(ANSWER_OPEN, 0, close)
    if start < 0:
        return None
    return completion[start + len(ANSWER_OPEN) : close]


def _paren_depth_ok(text: str) -> bool:
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
            if depth > MAX_PAREN_DEPTH:
                return False
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def _is_well_formed_text(answer: str) -> bool:
    """Cheap lexical checks that make ``ast.parse`` safe to call."""
    return (
        0 < len(answer) <= MAX_ANSWER_CHARS and all(ch in _ALLOWED_CHARS for ch in answer) and _paren_depth_ok(answer)
    )


def split_result(answer: str) -> tuple[str, str | None] | None:
    """(expression, stated result or None) of an answer; None when it has more than one ``=``."""
    if answer.count(EQUALS) > 1:
        return None
    if EQUALS not in answer:
        return answer, None
    left, right = answer.split(EQUALS)
    return left, right.strip()


def stated_result(text: str) -> Fraction | None:
    """The exact value of the number written after ``=``, or None if it is not a plain number."""
    if not _RESULT_RE.fullmatch(text):
        return None
    return Fraction(text)


def _is_well_formed_answer(answer: str) -> bool:
    """An expression, optionally followed by ``= number``, that passes the lexical checks."""
    sides = split_result(answer)
    if sides is None:
        return False
    left, right = sides
    return _is_well_formed_text(left) and (right is None or stated_result(right) is not None)


def parse_equation(answer: str) -> ast.expr | None:
    """The expression tree of an answer that passes the lexical checks, else None."""
    if not _is_well_formed_text(answer):
        return None
    try:
        tree = ast.parse(answer.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return tree.body


def _literals(node: ast.expr) -> list[int]:
    """The integer operands of `node`, rejecting anything outside the grammar."""
    out: list[int] = []
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, ast.BinOp) and isinstance(cur.op, _BINARY_OPS):
            stack.append(cur.left)
            stack.append(cur.right)
        elif isinstance(cur, ast.Constant) and type(cur.value) is int:
            if len(str(cur.value)) > MAX_LITERAL_DIGITS:
                raise _Reject
            out.append(cur.value)
        else:
            raise _Reject
    return out


def _evaluate(node: ast.expr) -> Fraction:
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    assert isinstance(node, ast.BinOp)  # guaranteed by _literals()
    left = _evaluate(node.left)
    right = _evaluate(node.right)
    if isinstance(node.op, ast.Add):
        return left + right
    if isinstance(node.op, ast.Sub):
        return left - right
    if isinstance(node.op, ast.Mult):
        return left * right
    if right == 0:
        raise _Reject
    return left / right


def evaluate_answer(answer: str, numbers: list[int]) -> Fraction | None:
    """The exact value of `answer` if it is a valid equation over exactly `numbers`."""
    try:
        node = parse_equation(answer)
        if node is None:
            return None
        if Counter(_literals(node)) != Counter(int(n) for n in numbers):
            return None
        return _evaluate(node)
    except (_Reject, RecursionError, MemoryError, TypeError, ValueError, OverflowError):
        return None


def exact_target(target: object) -> Fraction | None:
    """The target as an exact number: ints and Fractions as they are, a float or a
    string by its decimal text (``0.1`` is 1/10); None for anything else (bool, NaN, inf)."""
    if isinstance(target, bool):
        return None
    if isinstance(target, (int, Fraction)):
        return Fraction(target)
    if isinstance(target, float):
        return Fraction(repr(target)) if math.isfinite(target) else None
    if isinstance(target, str):
        try:
            return Fraction(target.strip())
        except (ValueError, ZeroDivisionError):
            return None
    return None


def countdown_correct(completion: str, numbers: list[int], target: int) -> bool:
    """True when the last ``<answer>`` uses each of `numbers` once and equals `target`.

    The answer may state its result (``expr = target``): the stated number must equal
    the target too, and the expression is checked as if it stood alone.
    Never raises: anything malformed, hostile or oversized is simply not correct.
    """
    try:
        answer = extract_answer(completion)
        if answer is None or len(answer) > MAX_ANSWER_CHARS:
            return False
        goal = exact_target(target)
        if goal is None:
            return False
        sides = split_result(answer)
        if sides is None:
            return False
        expression, result = sides
        if result is not None and stated_result(result) != goal:
            return False
        value = evaluate_answer(expression, list(numbers))
        return value is not None and value == goal
    except Exception:  # the contract is "never raises", whatever the inputs are
        return False


def has_answer_format(completion: str, *, require_think: bool = False) -> bool:
    """True when the completion ends with one well-formed ``<answer>`` block.

    Well-formed means: the block's content uses only the equation alphabet (optionally
    followed by ``= number``, the form `countdown_correct` accepts), nothing but
    whitespace follows ``</answer>``, and (for the chat format, where the model reasons
    first) a ``</think>`` closes the reasoning before the answer.
    """
    try:
        if not isinstance(completion, str):
            return False
        close = completion.rfind(ANSWER_CLOSE)
        if close < 0 or completion[close + len(ANSWER_CLOSE) :].strip():
            return False
        start = completion.rfind(ANSWER_OPEN, 0, close)
        if start < 0:
            return False
        if require_think and completion.rfind(THINK_CLOSE, 0, start) < 0:
            return False
        return _is_well_formed_answer(completion[start + len(ANSWER_OPEN) : close])
    except Exception:
        return False


def _as_text(completion: object) -> str:
    """TRL passes strings for plain prompts and message lists for chat prompts."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        return content if isinstance(content, str) else ""
    return ""


# --- TRL reward functions: (completions, **dataset columns) -> list[float] ----------
# TRL logs each as rewards/<__name__>/mean; the worker records it as reward/<name>
# without the "_reward" suffix (reward/correct, reward/format).


def correct_reward(completions: list, numbers: list[list[int]], target: list[int], **_: object) -> list[float]:
    """1.0 for a correct equation, else 0.0."""
    return [
        1.0 if countdown_correct(_as_text(c), nums, tgt) else 0.0
        for c, nums, tgt in zip(completions, numbers, target, strict=True)
    ]


def format_reward(completions: list, **_: object) -> list[float]:
    """1.0 when the completion ends in a well-formed ``<answer>`` block."""
    return [1.0 if has_answer_format(_as_text(c)) else 0.0 for c in completions]


def think_format_reward(completions: list, **_: object) -> list[float]:
    """Like `format_reward`, and the reasoning is closed with ``</think>`` before the answer."""
    return [1.0 if has_answer_format(_as_text(c), require_think=True) else 0.0 for c in completions]


# Weights relative to correctness: the format reward is a small shaping term (as in
# TinyZero's 0.1 format score) so that it cannot outweigh getting the answer right.
FORMAT_WEIGHT = 0.1


def reward_functions(prompt_format: str) -> tuple[list, list[float]]:
    """The reward functions and their weights for a prompt format ("chat"/"compact")."""
    fmt = think_format_reward if prompt_format == "chat" else format_reward
    return [correct_reward, fmt], [1.0, FORMAT_WEIGHT]
