"""Summary statistics for benchmark samples (pure: values in, values out).

Everything here works on plain sequences of floats (seconds, bytes per second, ...). Percentiles use
linear interpolation between closest ranks (numpy's default), so the p50 of an even-sized sample is
the mean of its two middle values, as a median should be.

Ratios come from paired rounds: the harness measures A then B in each round, so each round yields
one ratio measured under nearly the same machine conditions; the median of those per-round ratios
is what BENCHMARKS.md reports, with their spread as an honest error bar.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "EmptySample",
    "RatioSummary",
    "Summary",
    "percentile",
    "ratio_of_medians",
    "round_ratios",
    "summarize",
    "summarize_ratios",
]


class EmptySample(ValueError):
    """A statistic was asked of an empty sample: the measurement produced nothing."""


def _checked(values: Sequence[float], what: str) -> np.ndarray:
    if len(values) == 0:
        raise EmptySample(f"cannot compute {what} of an empty sample; the measurement produced no values")
    array = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"cannot compute {what}: the sample holds NaN or infinite values")
    return array


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 <= q <= 100), linearly interpolated between closest ranks.

    Raises:
        EmptySample: ``values`` is empty.
        ValueError: ``q`` is outside 0..100, or a value is NaN or infinite.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, not {q}")
    return float(np.percentile(_checked(values, f"p{q:g}"), q))


@dataclass(frozen=True, slots=True)
class Summary:
    """Order statistics of one sample."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    minimum: float
    maximum: float

    @property
    def median(self) -> float:
        return self.p50


def summarize(values: Sequence[float]) -> Summary:
    """Count, mean, p50/p90/p99, min and max of ``values``.

    Raises:
        EmptySample: ``values`` is empty.
    """
    array = _checked(values, "a summary")
    p50, p90, p99 = (float(v) for v in np.percentile(array, [50, 90, 99]))
    return Summary(
        count=int(array.size),
        mean=float(array.mean()),
        p50=p50,
        p90=p90,
        p99=p99,
        minimum=float(array.min()),
        maximum=float(array.max()),
    )


def ratio_of_medians(candidate: Sequence[float], baseline: Sequence[float]) -> float:
    """median(candidate) / median(baseline); ``inf`` when the baseline median is 0.

    Raises:
        EmptySample: either sample is empty.
    """
    top = percentile(candidate, 50)
    bottom = percentile(baseline, 50)
    if bottom == 0:
        return math.inf if top else 1.0
    return top / bottom


def round_ratios(candidate: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """Per-round ratios candidate[i] / baseline[i] of two paired samples (one value per round).

    Raises:
        ValueError: the samples are not paired (different lengths) or a baseline value is 0.
    """
    if len(candidate) != len(baseline):
        raise ValueError(
            f"paired samples must have one value per round each, got {len(candidate)} and {len(baseline)}"
        )
    ratios = []
    for index, (top, bottom) in enumerate(zip(candidate, baseline, strict=True)):
        if bottom == 0:
            raise ValueError(f"round {index}: the baseline value is 0, so the ratio is undefined")
        ratios.append(top / bottom)
    return ratios


@dataclass(frozen=True, slots=True)
class RatioSummary:
    """The median of per-round ratios and their range."""

    median: float
    low: float
    high: float
    rounds: int

    def format(self, digits: int = 2) -> str:
        """``0.97x (0.93 to 1.01, 5 rounds)``: the median ratio, then the lowest and highest."""
        if self.rounds == 1:
            return f"{self.median:.{digits}f}x (1 round)"
        low, high = f"{self.low:.{digits}f}", f"{self.high:.{digits}f}"
        return f"{self.median:.{digits}f}x ({low} to {high}, {self.rounds} rounds)"


def summarize_ratios(candidate: Sequence[float], baseline: Sequence[float]) -> RatioSummary:
    """Median and range of the per-round ratios of two paired samples.

    Raises:
        EmptySample: no rounds.
        ValueError: the samples are not paired, or a baseline value is 0.
    """
    ratios = _checked(round_ratios(candidate, baseline), "a ratio summary")
    return RatioSummary(float(np.median(ratios)), float(ratios.min()), float(ratios.max()), int(ratios.size))
