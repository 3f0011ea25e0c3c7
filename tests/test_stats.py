"""perl_cli/stats.py: the one definition of each number the report prints."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from perl_cli import stats

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
anything = st.one_of(st.none(), st.booleans(), st.text(max_size=3), st.floats(), st.integers(), st.lists(st.integers(), max_size=2))


@given(anything)
def test_number_accepts_only_finite_numbers(value) -> None:
    out = stats.number(value)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    assert (out is not None) == ok and (out is None or out == float(value))


def test_one_run_carries_its_own_error_several_runs_the_spread_over_seeds() -> None:
    runs = [{"acc": 0.4, "se": 0.03}, {"acc": None, "se": 0.9}]
    one = stats.Stat.over(runs, lambda r: r["acc"], lambda r: r["se"])
    assert (one.n, one.mean, one.se) == (1, 0.4, 0.03)  # the measured run's own error
    two = stats.Stat.over([{"acc": 0.4, "se": 0.03}, {"acc": 0.6, "se": 0.03}], lambda r: r["acc"], lambda r: r["se"])
    assert two.se == pytest.approx(statistics.stdev([0.4, 0.6]) / math.sqrt(2))
    assert stats.Stat.over([], lambda r: r).text() == "-"
    assert stats.Stat([0.5], 0.01).text(sign=True) == "+0.500 ± 0.010"


@given(st.lists(finite, min_size=1, max_size=60))
def test_tail_and_head_mean_take_a_tenth_at_least_one(values) -> None:
    k = max(1, round(0.1 * len(values)))
    assert stats.tail_mean(values) == pytest.approx(statistics.fmean(values[-k:]))
    assert stats.head_mean(values) == pytest.approx(statistics.fmean(values[:k]))


@given(st.lists(st.tuples(st.one_of(st.none(), finite), st.one_of(st.none(), finite)), max_size=30))
def test_paired_differences_skip_unknown_pairs(pairs) -> None:
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    diff = stats.paired(a, b)
    known = [y - x for x, y in pairs if x is not None and y is not None]
    assert diff.values == known
    if len(known) > 1:
        assert diff.se == pytest.approx(statistics.stdev(known) / math.sqrt(len(known)))


def test_paired_refuses_unequal_lengths() -> None:
    with pytest.raises(ValueError, match="same length"):
        stats.paired([1.0], [1.0, 2.0])


@given(st.dictionaries(st.sampled_from(["accuracy_sampled", "accuracy_sampled_se", "eval_problems"]), anything))
def test_eval_se_never_raises_on_any_eval_json(ev) -> None:
    se = stats.eval_se(ev, "accuracy_sampled")
    assert se is None or (math.isfinite(se) and se >= 0 or stats.number(ev.get("accuracy_sampled_se")) == se)


def test_eval_se_bounds_from_problems_when_the_worker_did_not_write_it() -> None:
    assert stats.eval_se({"accuracy_sampled": 0.5, "eval_problems": 100}, "accuracy_sampled") == pytest.approx(0.05)
    assert stats.eval_se({"accuracy_sampled": 0.5, "accuracy_sampled_se": 0.02}, "accuracy_sampled") == 0.02
    assert stats.eval_se({"accuracy_sampled": 2.0, "eval_problems": 100}, "accuracy_sampled") is None  # no crash


def test_standard_error_and_spread() -> None:
    assert stats.standard_error([1.0, 0.0]) == pytest.approx(0.5)
    assert stats.spread([0.1, 0.3], ".2f") == "+0.20 ± 0.14"
    assert stats.spread([0.1], ".2f").endswith("(one pair: no spread)")
