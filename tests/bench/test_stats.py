"""bench.stats: percentiles, summaries and paired ratios."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.stats import (
    EmptySample,
    percentile,
    ratio_of_medians,
    round_ratios,
    summarize,
    summarize_ratios,
)

finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False)


def test_median_of_even_sample_is_mean_of_middle_values() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5


def test_percentiles_interpolate_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 90) == pytest.approx(90.1)


def test_summary_fields() -> None:
    summary = summarize([3.0, 1.0, 2.0, 10.0])
    assert summary.count == 4
    assert summary.mean == 4.0
    assert summary.median == summary.p50 == 2.5
    assert (summary.minimum, summary.maximum) == (1.0, 10.0)
    assert summary.p50 <= summary.p90 <= summary.p99 <= summary.maximum


@given(st.lists(finite, min_size=1, max_size=200))
def test_percentiles_are_ordered_and_bounded(values: list[float]) -> None:
    summary = summarize(values)
    assert summary.minimum <= summary.p50 <= summary.p90 <= summary.p99 <= summary.maximum


def test_empty_sample_is_refused_with_a_typed_error() -> None:
    with pytest.raises(EmptySample):
        percentile([], 50)
    with pytest.raises(EmptySample):
        summarize([])
    with pytest.raises(EmptySample):
        summarize_ratios([], [])


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_values_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="NaN or infinite"):
        summarize([1.0, bad])


@pytest.mark.parametrize("q", [-1, 100.5])
def test_percentile_out_of_range(q: float) -> None:
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0], q)


def test_round_ratios_pair_values_by_round() -> None:
    assert round_ratios([2.0, 3.0], [1.0, 6.0]) == [2.0, 0.5]
    with pytest.raises(ValueError, match="one value per round"):
        round_ratios([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="round 1"):
        round_ratios([1.0, 2.0], [1.0, 0.0])


def test_ratio_summary_is_the_median_of_per_round_ratios() -> None:
    # Ratios per round: 0.5, 1.0, 2.0, 4.0, 1.5 -> median 1.5. The ratio of the medians (3/2)
    # would differ: pairing is what removes the drift between rounds.
    candidate = [1.0, 2.0, 4.0, 8.0, 3.0]
    baseline = [2.0, 2.0, 2.0, 2.0, 2.0]
    summary = summarize_ratios(candidate, baseline)
    assert summary.median == 1.5
    assert (summary.low, summary.high, summary.rounds) == (0.5, 4.0, 5)
    assert summary.format() == "1.50x (0.50 to 4.00, 5 rounds)"
    assert summarize_ratios([3.0], [2.0]).format() == "1.50x (1 round)"


def test_ratio_of_medians() -> None:
    assert ratio_of_medians([1.0, 3.0, 5.0], [1.0, 2.0, 100.0]) == 1.5
    assert ratio_of_medians([1.0], [0.0]) == math.inf
    assert ratio_of_medians([0.0], [0.0]) == 1.0
