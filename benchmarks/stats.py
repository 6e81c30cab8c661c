"""Statistics over seeds for the benchmark reports: mean ± standard deviation, t intervals and t-tests.

A benchmark row over seeds is ``mean ± std`` (sample standard deviation, n - 1). "A is ahead of B beyond noise"
is a two-sided t-test at level ``alpha`` (5 %) with the number of seeds fixed before the runs (adding seeds until
a gap looks real is optional stopping, which this module cannot correct for):

- :func:`paired_t_test` when A and B ran with the same seeds (same initial weights and batch order for both):
  a one-sample t-test on the per-seed differences, n - 1 degrees of freedom (``scipy.stats.ttest_rel``);
- :func:`welch_t_test` when they did not: Welch's test, Welch-Satterthwaite degrees of freedom
  (``scipy.stats.ttest_ind(equal_var=False)``).

Both return a :class:`Comparison` with the mean difference A - B, its 95 % confidence interval (t-factor at the
test's degrees of freedom: 4.30 for 3 paired seeds, not 2) and the p-value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

ALPHA = 0.05


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the standard deviation is ``nan`` for fewer than 2 values."""
    if not values:
        raise ValueError("mean_std needs at least one value")
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else math.nan


def format_mean_std(values: Sequence[float], digits: int = 3) -> str:
    """``"0.878 ± 0.016"`` (or ``"0.878"`` for one value)."""
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def t_factor(degrees_of_freedom: float, confidence: float = 1 - ALPHA) -> float:
    """The two-sided t quantile: the half-width of a ``confidence`` interval in standard errors (4.303 at df 2)."""
    if degrees_of_freedom <= 0 or math.isnan(degrees_of_freedom):
        return math.nan
    return float(scipy_stats.t.ppf(0.5 + confidence / 2, degrees_of_freedom))


def confidence_interval(values: Sequence[float], confidence: float = 1 - ALPHA) -> tuple[float, float]:
    """The t interval of the mean of ``values`` (n - 1 degrees of freedom); ``nan`` bounds for fewer than 2."""
    mean, std = mean_std(values)
    half = t_factor(len(values) - 1, confidence) * std / math.sqrt(len(values))
    return mean - half, mean + half


@dataclass(frozen=True)
class Comparison:
    """A two-sided t-test of "A and B have the same mean"; ``difference`` is mean(A) - mean(B)."""

    difference: float
    low: float  # the confidence interval of the difference
    high: float
    statistic: float
    degrees_of_freedom: float
    p_value: float
    test: str  # "paired" or "Welch"
    n: tuple[int, int]
    alpha: float = ALPHA

    @property
    def beyond_noise(self) -> bool:
        """Whether the test rejects equal means at ``alpha`` (``False`` where it cannot be computed)."""
        return not math.isnan(self.p_value) and self.p_value < self.alpha

    def verdict(self, a: str = "A", b: str = "B") -> str:
        """One line for a table: who is ahead, whether beyond noise, the interval and the test."""
        confidence = f"{100 * (1 - self.alpha):g} %"
        if math.isnan(self.p_value):
            return f"not tested ({self.test}, n = {self.n[0]}/{self.n[1]}: too few seeds or no spread)"
        ahead = a if self.difference > 0 else b
        where = f"{ahead} ahead beyond noise" if self.beyond_noise else "within noise"
        return (
            f"{where}: {a} − {b} = {self.difference:+.3f}, {confidence} CI [{self.low:+.3f}, {self.high:+.3f}], "
            f"{self.test} t({self.degrees_of_freedom:.3g}) = {self.statistic:.2f}, p = {self.p_value:.3g}"
        )


def paired_t_test(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA) -> Comparison:
    """Two-sided paired t-test of A against B, value ``i`` of each from the same seed (n - 1 degrees of freedom)."""
    if len(a) != len(b):
        raise ValueError(f"a paired test needs as many values in A as in B: {len(a)} and {len(b)}")
    differences = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(differences)
    mean = float(differences.mean()) if n else math.nan
    if n < 2 or not np.any(differences != differences[0]):  # no spread: the t statistic is undefined
        return Comparison(mean, math.nan, math.nan, math.nan, n - 1, math.nan, "paired", (n, n), alpha)
    return _comparison(scipy_stats.ttest_rel(a, b), mean, "paired", (n, n), alpha)


def welch_t_test(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA) -> Comparison:
    """Two-sided Welch t-test of A against B (independent runs; Welch-Satterthwaite degrees of freedom)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = (len(x), len(y))
    mean = float(x.mean() - y.mean()) if min(n) else math.nan
    if min(n) < 2 or x.var() + y.var() == 0:  # no spread to measure
        return Comparison(mean, math.nan, math.nan, math.nan, math.nan, math.nan, "Welch", n, alpha)
    return _comparison(scipy_stats.ttest_ind(x, y, equal_var=False), mean, "Welch", n, alpha)


def _comparison(result: object, mean: float, test: str, n: tuple[int, int], alpha: float) -> Comparison:
    interval = result.confidence_interval(1 - alpha)  # type: ignore[attr-defined]
    return Comparison(
        difference=mean,
        low=float(interval.low),
        high=float(interval.high),
        statistic=float(result.statistic),  # type: ignore[attr-defined]
        degrees_of_freedom=float(result.df),  # type: ignore[attr-defined]
        p_value=float(result.pvalue),  # type: ignore[attr-defined]
        test=test,
        n=n,
        alpha=alpha,
    )
