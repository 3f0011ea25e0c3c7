"""Math answers: the equivalence table, the time bound under hostile answers, never raising."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perl_cli import math_rewards
from perl_cli.math_rewards import extract_boxed, has_boxed_format, math_correct
from perl_cli.math_verifier import MathVerifier, shared


def boxed(answer: str) -> str:
    return f"Let me think step by step. ... So the answer is \\boxed{{{answer}}}."


# (completion, reference, expected). The completion is the model's whole output.
CASES = [
    # integers and the same number written differently
    (boxed("42"), "42", True),
    (boxed("41"), "42", False),
    (boxed("042"), "42", True),
    (boxed("-3"), "-3", True),
    (boxed("-3"), "3", False),
    (boxed("1,000"), "1000", True),
    (boxed("1.0"), "1", True),
    (boxed("100"), "10^2", True),
    # fractions: \frac, \dfrac, a/b, decimals
    (boxed("\\frac{1}{2}"), "\\frac{1}{2}", True),
    (boxed("1/2"), "\\frac{1}{2}", True),
    (boxed("0.5"), "\\frac{1}{2}", True),
    (boxed("0.5"), "1/2", True),
    (boxed("\\dfrac{3}{4}"), "0.75", True),
    (boxed("\\frac{2}{4}"), "\\frac{1}{2}", True),
    (boxed("\\frac12"), "0.5", True),
    (boxed("\\frac{1}{3}"), "\\frac{1}{2}", False),
    (boxed("0.333"), "\\frac{1}{3}", False),
    (boxed("\\frac{5}{6}"), "5/6", True),
    (boxed("-\\frac{7}{2}"), "-3.5", True),
    # radicals, pi and expressions
    (boxed("2\\sqrt{2}"), "\\sqrt{8}", True),
    (boxed("\\sqrt{2}"), "\\sqrt{3}", False),
    (boxed("2\\pi"), "2\\pi", True),
    (boxed("x^2+2x+1"), "(x+1)^2", True),
    (boxed("x^2+1"), "(x+1)^2", False),
    (boxed("x=3"), "3", True),
    (boxed("\\infty"), "\\infty", True),
    # units, percent and money around the number
    (boxed("5\\text{ cm}"), "5", True),
    (boxed("5 \\text{cm}"), "5", True),
    (boxed("6\\text{ cm}"), "5", False),
    (boxed("10\\%"), "10", True),
    (boxed("\\$5"), "5", True),
    (boxed("12^\\circ"), "12", True),
    # intervals: open and closed ends matter
    (boxed("[1,2)"), "[1,2)", True),
    (boxed("(1,2)"), "[1,2]", False),
    (boxed("(-\\infty, 3]"), "(-\\infty,3]", True),
    (boxed("(-\\infty, 3)"), "(-\\infty,3]", False),
    # several answers: any order, all of them
    (boxed("1,2"), "2,1", True),
    (boxed("3"), "2,3", False),
    (boxed("\\{1,2\\}"), "\\{2,1\\}", True),
    (boxed("2, 3, 5"), "2,3,5", True),
    (boxed("2, 3"), "2,3,5", False),
    # where the answer is (or is not)
    ("The answer is 42.", "42", False),  # no \boxed: not an answer
    ("42", "42", False),
    ("\\boxed{41} ... wait, no: \\boxed{42}", "42", True),  # the last box counts
    ("\\boxed{42} ... wait, no: \\boxed{41}", "42", False),
    ("\\fbox{7}", "7", True),
    ("\\boxed{}", "0", False),
    ("\\boxed{42", "42", False),  # unclosed
    ("$\\boxed{\\frac{1}{2}}$", "0.5", True),
    (boxed("\\text{no answer}"), "42", False),
]


@pytest.mark.parametrize(("completion", "reference", "expected"), CASES)
def test_equivalence_table(completion: str, reference: str, expected: bool) -> None:
    assert math_correct(completion, reference) is expected


def test_table_size_and_balance() -> None:
    assert len(CASES) >= 40
    assert sum(e for _, _, e in CASES) >= 15 and sum(not e for _, _, e in CASES) >= 15


# --- the time bound --------------------------------------------------------------------

# Each must come back wrong, well within this many seconds (the verifier's timeout is 2 s,
# plus killing and restarting its process on a loaded machine).
HOSTILE_BOUND_S = 10.0


def _nested_frac(depth: int) -> str:
    return "\\frac{1}{" * depth + "2" + "}" * depth


HOSTILE = {
    "50 KB nested \\frac": "\\boxed{" + _nested_frac(5000) + "}",
    "50 KB of digits": "\\boxed{" + "9" * 50_000 + "}",
    "power tower": "\\boxed{2^{2^{2^{2^{2^{2}}}}}}",
    "huge factorial": "\\boxed{(10^{10})!}",
    "10^10^10": "\\boxed{10^{10^{10}}}",
    "nested within the depth limit": "\\boxed{" + _nested_frac(11) + "}",  # = 1/2
    "a megabyte of braces": "{" * 500_000 + "\\boxed{1}" + "}" * 500_000,  # 1 is not 2
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_answers_are_wrong_within_a_bound(name: str) -> None:
    shared().equal("1/2", "0.5")  # the verifier process is up: its start is not what is measured
    t0 = time.monotonic()
    assert math_correct(HOSTILE[name], "2") is False
    assert time.monotonic() - t0 < HOSTILE_BOUND_S


def test_a_slow_comparison_is_killed_at_the_timeout_and_the_next_answer_works() -> None:
    verifier = MathVerifier(timeout=0.5)
    try:
        assert verifier.equal("0.5", "\\frac{1}{2}")
        t0 = time.monotonic()
        assert verifier.equal("2^{2^{2^{2^{2^{2}}}}}", "1") is False  # sympy would take seconds
        elapsed = time.monotonic() - t0
        assert elapsed < 0.5 + 5.0
        assert verifier.timeouts == 1
        assert verifier.equal("\\frac{3}{4}", "0.75")  # a new process answers
    finally:
        verifier.close()


def test_works_from_a_thread_too() -> None:
    """math-verify's own SIGALRM timeout refuses threads; ours does not need the main thread."""
    out: list[bool] = []
    thread = threading.Thread(target=lambda: out.append(math_correct(boxed("0.5"), "1/2")))
    thread.start()
    thread.join(timeout=60)
    assert out == [True]


def test_the_verifier_survives_its_process_being_killed() -> None:
    verifier = MathVerifier()
    try:
        assert verifier.equal("0.25", "1/4")
        assert verifier._proc is not None
        verifier._proc.kill()
        verifier._proc.wait()
        assert verifier.equal("0.25", "1/4")
    finally:
        verifier.close()


# --- never raises ---------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300), st.text(max_size=30))
def test_arbitrary_text_never_raises(completion: str, reference: str) -> None:
    t0 = time.monotonic()
    assert math_correct(completion, reference) in (True, False)
    assert math_correct("\\boxed{" + completion + "}", reference) in (True, False)
    assert has_boxed_format(completion) in (True, False)
    assert time.monotonic() - t0 < 2 * HOSTILE_BOUND_S


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="\\boxed{}fbx 0123456789", max_size=200))
def test_box_extraction_is_total(text: str) -> None:
    answer = extract_boxed(text)
    assert answer is None or answer in text


# --- format and reward functions -----------------------------------------------------


def test_format_term() -> None:
    assert has_boxed_format("so \\boxed{3}.")
    assert not has_boxed_format("so 3.")
    assert not has_boxed_format("\\boxed{3} and then a long ramble that goes on and on and on and on and on.")
    assert has_boxed_format("<think>x</think> \\boxed{3}", require_think=True)
    assert not has_boxed_format("\\boxed{3}", require_think=True)


def test_reward_functions_score_batches() -> None:
    funcs, weights = math_rewards.reward_functions("compact")
    completions = [boxed("1/2"), "1/2", boxed("3")]
    correct = funcs[0](completions, answer=["0.5", "0.5", "0.5"])
    fmt = funcs[1](completions)
    assert correct == [1.0, 0.0, 0.0]
    assert fmt == [1.0, 0.0, 1.0]
    assert weights[0] == 1.0 and 0 < weights[1] < 1
    chat = [[{"role": "assistant", "content": boxed("2")}]]
    assert funcs[0](chat, answer=["2"]) == [1.0]
