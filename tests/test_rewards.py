"""The Countdown verifier: correct, wrong, malformed and hostile completions."""

from __future__ import annotations

import time
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perl_cli import rewards
from perl_cli.rewards import countdown_correct

NUMS = [3, 7, 9]


@pytest.mark.parametrize(
    ("completion", "numbers", "target", "expected"),
    [
        ("<answer>7*3+9</answer>", NUMS, 30, True),
        ("<answer> 7 * 3 + 9 </answer>", NUMS, 30, True),
        ("<answer>(9 - 3) * 7</answer>", NUMS, 42, True),
        ("<answer>9/3*7</answer>", NUMS, 21, True),
        ("<answer>7/2*2</answer>", [7, 2, 2], 7, True),  # exact fractions, not floats
        ("<answer>(1+2)/3</answer>", [1, 2, 3], 1, True),
        ("<think>try 7*3</think> <answer>7*3+9</answer>", NUMS, 30, True),
        ("<answer>1+1</answer> then <answer>7*3+9</answer>", NUMS, 30, True),  # the last answer counts
        ("<answer>7*3+9</answer>\n", NUMS, 30, True),
        ("<answer>3+7+9</answer>", [9, 7, 3], 19, True),  # order of the numbers is free
        ("<answer>7*3+9</answer>", NUMS, 31, False),  # wrong value
        ("<answer>7*3</answer>", NUMS, 21, False),  # a number unused
        ("<answer>7*3+9+9</answer>", NUMS, 39, False),  # a number used twice
        ("<answer>7*3+8</answer>", NUMS, 29, False),  # a number not given
        ("<answer>7*3+9</answer>", [3, 7, 9, 9], 30, False),  # duplicates must all be used
        ("<answer>9/(3-3)*7</answer>", [9, 3, 3, 7], 0, False),  # division by zero
        ("<answer>-3+7+9</answer>", NUMS, 13, False),  # unary minus is not an operator here
        ("<answer>+3+7+9</answer>", NUMS, 19, False),  # nor unary plus
        ("<answer>7.0*3+9</answer>", NUMS, 30, False),  # floats are not integers
        ("<answer>7*3+9=30</answer>", NUMS, 30, True),  # the stated result equals the target
        ("<answer>(9 - 3) * 7 = 42</answer>", NUMS, 42, True),
        ("<answer>7*3+9 = 30\n</answer>", NUMS, 30, True),
        ("<answer>5*9/2 = 22.5</answer>", [5, 9, 2], 22.5, True),
        ("<answer>7*3+9 = 31</answer>", NUMS, 31, False),  # the stated result is right, the expression is not
        ("<answer>7*3+9 = 31</answer>", NUMS, 30, False),  # the expression is right, the stated result is not
        ("<answer>7*3 = 21</answer>", NUMS, 21, False),  # a number unused on the left
        ("<answer>30 = 7*3+9</answer>", NUMS, 30, False),  # the expression goes on the left
        ("<answer>7*3+9 = 30 = 30</answer>", NUMS, 30, False),  # one = at most
        ("<answer>7*3+9 = 3*10</answer>", NUMS, 30, False),  # the right side is a number, not an expression
        ("<answer>7*3+9 =</answer>", NUMS, 30, False),
        ("<answer>= 30</answer>", NUMS, 30, False),
        ("<answer>7*3+9 == 30</answer>", NUMS, 30, False),
        ("<answer>7*3+9 = ٣٠</answer>", NUMS, 30, False),  # ASCII digits only
        ("<answer>3**2+7+9</answer>", NUMS, 25, False),  # no powers
        ("<answer>7//3+9</answer>", NUMS, 11, False),  # no floor division
        ("<answer>7%3+9</answer>", NUMS, 10, False),
        ("<answer>0x7*3+9</answer>", NUMS, 30, False),
        ("<answer>7_0</answer>", [70], 70, False),
        ("<answer></answer>", NUMS, 30, False),
        ("<answer>7*3+9", NUMS, 30, False),  # unclosed
        ("7*3+9</answer>", NUMS, 30, False),  # unopened
        ("7*3+9", NUMS, 30, False),  # no tags at all
        ("<answer>(7*3+9</answer>", NUMS, 30, False),  # unbalanced
        ("<answer>7*3+9)</answer>", NUMS, 30, False),
        ("<answer>7 3 9</answer>", NUMS, 30, False),
        ("", NUMS, 30, False),
    ],
)
def test_table(completion: str, numbers: list[int], target: int, expected: bool) -> None:
    assert countdown_correct(completion, numbers, target) is expected


# A hang guard, not a speed target: hostile inputs take well under 10 ms (bench/verifier_speed.py
# measures that); a catastrophic parse would take seconds. Timed unit tests on a loaded
# 2-core machine must leave room for noise.
HANG_LIMIT_S = 0.5

HOSTILE = [
    "<answer>__import__('os').system('echo pwned')</answer>",
    "<answer>9**9**9</answer>",
    "<answer>" + "(" * 100_000 + "1" + ")" * 100_000 + "</answer>",
    "<answer>" + "(" * 100_000 + "</answer>",
    "<answer>" + "1+" * 500_000 + "1</answer>",
    "<answer>" + "9" * 1_000_000 + "</answer>",
    "<answer>" * 200_000 + "</answer>" * 200_000,
    "x" * 1_000_000,
    "<answer>" + "-" * 999 + "3</answer>",
    "<answer>" + "(" * 51 + "3+7+9" + ")" * 51 + "</answer>",
    "<answer>" + "(" * 50 + "3+7+9" + ")" * 50 + "</answer>",
    "<answer>lambda: 1</answer>",
    "<answer>[x for x in ().__class__.__bases__]</answer>",
    "<answer>\x00\x00</answer>",
    "<answer>١+٢+٣</answer>",  # Arabic-Indic digits are digits to Python, not to us
]


@pytest.mark.parametrize("completion", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_inputs_are_rejected_fast(completion: str) -> None:
    start = time.perf_counter()
    result = countdown_correct(completion, NUMS, 19)
    elapsed = time.perf_counter() - start
    assert elapsed < HANG_LIMIT_S, f"took {elapsed * 1000:.1f} ms"
    # Only the correct equation nested exactly at the depth limit is accepted.
    assert result is (completion.count("(") == rewards.MAX_PAREN_DEPTH)


def test_nesting_limit_counts_depth_not_pairs() -> None:
    sequential = "<answer>" + "+".join(["(3)", "(7)", "(9)"]) + "</answer>"
    assert countdown_correct(sequential, NUMS, 19)


@pytest.mark.parametrize("bad", [None, 123, b"<answer>3+7+9</answer>", ["<answer>3+7+9</answer>"]])
def test_non_string_completions_are_false(bad: object) -> None:
    assert countdown_correct(bad, NUMS, 19) is False  # type: ignore[arg-type]


def test_bad_numbers_or_target_are_false() -> None:
    assert countdown_correct("<answer>3+7+9</answer>", [3, "x", 9], 19) is False  # type: ignore[list-item]
    assert countdown_correct("<answer>3+7+9</answer>", NUMS, "nineteen") is False  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=2000))
def test_arbitrary_text_never_raises(text: str) -> None:
    start = time.perf_counter()
    assert countdown_correct(text, NUMS, 19) in (True, False)
    assert countdown_correct(f"<answer>{text}</answer>", NUMS, 19) in (True, False)
    assert time.perf_counter() - start < HANG_LIMIT_S


_EQUATION_CHARS = st.sampled_from(list("0123456789+-*/() "))


@settings(max_examples=300, deadline=None)
@given(st.lists(_EQUATION_CHARS, max_size=300).map("".join), st.lists(st.integers(-5, 100), max_size=5))
def test_equation_alphabet_never_raises(body: str, numbers: list[int]) -> None:
    start = time.perf_counter()
    assert countdown_correct(f"<answer>{body}</answer>", numbers, 7) in (True, False)
    assert time.perf_counter() - start < HANG_LIMIT_S


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 100), min_size=2, max_size=4), st.data())
def test_sums_and_products_of_given_numbers_are_correct(numbers: list[int], data: st.DataObject) -> None:
    ops = data.draw(st.lists(st.sampled_from("+*"), min_size=len(numbers) - 1, max_size=len(numbers) - 1))
    order = data.draw(st.permutations(numbers))
    equation = str(order[0]) + "".join(f"{op}{n}" for op, n in zip(ops, order[1:], strict=True))
    # Products bind tighter than sums: compute the value the usual way, without eval.
    total, term = 0, order[0]
    for op, n in zip(ops, order[1:], strict=True):
        if op == "*":
            term *= n
        else:
            total, term = total + term, n
    value = total + term
    assert countdown_correct(f"<answer>{equation}</answer>", numbers, value)
    assert not countdown_correct(f"<answer>{equation}</answer>", numbers, value + 1)


def test_format_rewards() -> None:
    good = "<answer>7*3+9</answer>"
    assert rewards.format_reward([good, good + " trailing", "no tags", "<answer>a+b</answer>"]) == [1.0, 0.0, 0.0, 0.0]
    # The form countdown_correct accepts is well formed; two results or a non-number are not.
    stated = ["<answer>7*3+9 = 30</answer>", "<answer>7*3+9 = 30 = 30</answer>", "<answer>7*3+9 = x</answer>"]
    assert rewards.format_reward(stated) == [1.0, 0.0, 0.0]
    assert rewards.think_format_reward(["reason</think><answer>7*3+9</answer>", good]) == [1.0, 0.0]


def test_correct_reward_reads_dataset_columns() -> None:
    completions = ["<answer>7*3+9</answer>", "<answer>7*3+9</answer>"]
    assert rewards.correct_reward(completions, numbers=[NUMS, NUMS], target=[30, 31], prompts=["p", "p"]) == [1.0, 0.0]


def test_correct_reward_accepts_chat_completions() -> None:
    completion = [{"role": "assistant", "content": "<think>x</think><answer>7*3+9</answer>"}]
    assert rewards.correct_reward([completion], numbers=[NUMS], target=[30]) == [1.0]


def test_reward_functions_per_prompt_format() -> None:
    funcs, weights = rewards.reward_functions("chat")
    assert [f.__name__ for f in funcs] == ["correct_reward", "think_format_reward"]
    assert weights == [1.0, rewards.FORMAT_WEIGHT]
    funcs, _ = rewards.reward_functions("compact")
    assert funcs[1] is rewards.format_reward


def test_non_integer_target_is_compared_exactly() -> None:
    assert not countdown_correct("<answer>3+7*9/3</answer>", [3, 7, 9, 3], 24.5)  # = 24, not 24.5
    assert countdown_correct("<answer>5*9/2</answer>", [5, 9, 2], 22.5)  # = 45/2
    assert not countdown_correct("<answer>2*9+4</answer>", [2, 9, 4], 22.5)  # = 22 (was accepted: int(22.5))
    assert countdown_correct("<answer>2*9+4</answer>", [2, 9, 4], 22.0)
    assert not countdown_correct("<answer>2*9+4</answer>", [2, 9, 4], float("nan"))
    assert not countdown_correct("<answer>2*9+4</answer>", [2, 9, 4], True)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 100), min_size=2, max_size=4),
    st.fractions(min_value=0, max_value=1, max_denominator=1000).filter(lambda f: 0 < f < 1),
    st.booleans(),
)
def test_a_sum_never_meets_a_target_off_by_a_fraction(numbers: list[int], offset: Fraction, as_float: bool) -> None:
    equation = "+".join(map(str, numbers))
    target = sum(numbers) + offset
    shown = float(target) if as_float else target
    assert not countdown_correct(f"<answer>{equation}</answer>", numbers, shown)  # type: ignore[arg-type]
    assert countdown_correct(f"<answer>{equation}</answer>", numbers, float(sum(numbers)))  # type: ignore[arg-type]


def _sum_or_product(numbers: list[int], ops: list[str]) -> tuple[str, int]:
    """An equation over `numbers` and its value (products bind tighter), computed without eval."""
    equation = str(numbers[0]) + "".join(f"{op}{n}" for op, n in zip(ops, numbers[1:], strict=True))
    total, term = 0, numbers[0]
    for op, n in zip(ops, numbers[1:], strict=True):
        if op == "*":
            term *= n
        else:
            total, term = total + term, n
    return equation, total + term


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(1, 100), min_size=2, max_size=4),
    st.data(),
    st.integers(-3, 3),
    st.sampled_from(["=", " = ", " =", "= "]),
)
def test_a_stated_result_is_correct_exactly_when_it_and_the_expression_meet_the_target(
    numbers: list[int], data: st.DataObject, shift: int, equals: str
) -> None:
    ops = data.draw(st.lists(st.sampled_from("+*"), min_size=len(numbers) - 1, max_size=len(numbers) - 1))
    equation, value = _sum_or_product(numbers, ops)
    stated = value + shift
    completion = f"<answer>{equation}{equals}{stated}</answer>"
    for target in (value, stated):
        # Correct iff both sides meet the target: the bare expression's verdict, and the stated number.
        bare = countdown_correct(f"<answer>{equation}</answer>", numbers, target)
        assert countdown_correct(completion, numbers, target) is (bare and stated == target)
    assert rewards.format_reward([completion]) == [1.0]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list("0123456789+-*/() =.")), max_size=300).map("".join), st.integers(-5, 100))
def test_answers_with_equals_never_raise_and_need_a_correct_left_side(body: str, target: int) -> None:
    start = time.perf_counter()
    verdict = countdown_correct(f"<answer>{body}</answer>", NUMS, target)
    assert verdict in (True, False)
    assert time.perf_counter() - start < HANG_LIMIT_S
    if verdict and "=" in body:
        left, right = body.split("=")
        assert countdown_correct(f"<answer>{left}</answer>", NUMS, target)
        assert Fraction(right.strip()) == target
