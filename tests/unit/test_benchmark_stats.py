"""benchmarks.stats: mean ± std over seeds and the t-tests that call a gap real, against scipy's reference values."""

import math

import pytest

from benchmarks.stats import (
    confidence_interval,
    format_mean_std,
    mean_std,
    paired_t_test,
    t_factor,
    welch_t_test,
)

# LGC and RD joint, unified, seeds 0-4 (benchmarks/results/lgc_claim.json at 4599570)
LGC = [0.860, 0.880, 0.897, 0.863, 0.890]
RD = [0.887, 0.880, 0.877, 0.890, 0.877]


def test_mean_std_is_the_sample_standard_deviation():
    mean, std = mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3)
    assert std == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert math.isnan(mean_std([0.5])[1])
    assert format_mean_std([0.5]) == "0.500"
    assert format_mean_std(LGC) == "0.878 ± 0.016"
    with pytest.raises(ValueError, match="at least one"):
        mean_std([])


def test_t_factor_is_the_two_sided_95_percent_quantile():
    # scipy.stats.t.ppf(0.975, df); textbook tables: 12.706, 4.303, 2.776, 1.960 (df -> infinity)
    assert t_factor(1) == pytest.approx(12.706204736174698)
    assert t_factor(2) == pytest.approx(4.302652729749462)  # 3 seeds: not the "2 standard errors" of before
    assert t_factor(4) == pytest.approx(2.7764451051977934)
    assert t_factor(1e9) == pytest.approx(1.959963984540054)
    assert t_factor(2, 0.99) == pytest.approx(9.924843200918272)
    assert math.isnan(t_factor(0))
    low, high = confidence_interval([1.0, 2.0, 3.0])  # mean 2, std 1, n 3
    assert (low, high) == pytest.approx((2 - 4.302652729749462 / math.sqrt(3), 2 + 4.302652729749462 / math.sqrt(3)))


def test_paired_t_test_matches_scipy_reference_values():
    # scipy.stats.ttest_rel(LGC, RD): statistic, p-value, 95 % interval of the mean difference
    result = paired_t_test(LGC, RD)
    assert result.test == "paired"
    assert result.degrees_of_freedom == 4
    assert result.difference == pytest.approx(-0.0042)
    assert result.statistic == pytest.approx(-0.42657734090051536)
    assert result.p_value == pytest.approx(0.6916432512402961)
    assert (result.low, result.high) == pytest.approx((-0.03153635456870245, 0.023136354568702444))
    assert not result.beyond_noise
    assert result.verdict("LGC", "RD").startswith("within noise: LGC − RD = -0.004")


def test_three_seeds_need_the_t_factor_not_two_standard_errors():
    # the all-in-all gaps lgc_claim called "beyond noise (over 2 standard errors)": -0.083 ± 0.058 over 3 seeds
    gaps = [-0.135, -0.021, -0.094]
    mean, std = mean_std(gaps)
    assert abs(mean) > 2 * std / math.sqrt(3)  # the old rule
    result = paired_t_test(gaps, [0.0, 0.0, 0.0])
    assert result.degrees_of_freedom == 2
    assert result.p_value == pytest.approx(0.1296433689781265)  # scipy.stats.ttest_1samp(gaps, 0)
    assert not result.beyond_noise
    assert result.low < 0 < result.high


def test_a_clear_gap_is_beyond_noise():
    result = paired_t_test([0.90, 0.91, 0.93], [0.80, 0.80, 0.82])
    assert result.beyond_noise
    assert result.low > 0
    assert result.verdict("A", "B").startswith("A ahead beyond noise")
    assert paired_t_test([0.80, 0.80, 0.82], [0.90, 0.91, 0.93]).verdict("A", "B").startswith("B ahead beyond noise")


def test_welch_t_test_matches_scipy_reference_values():
    a, b = [0.625, 0.760, 0.729], [0.760, 0.781, 0.823, 0.80]
    result = welch_t_test(a, b)  # scipy.stats.ttest_ind(a, b, equal_var=False)
    assert result.test == "Welch"
    assert result.n == (3, 4)
    assert result.statistic == pytest.approx(-2.0086876363113455)
    assert result.p_value == pytest.approx(0.1589467463770761)
    # Welch-Satterthwaite by hand
    va, vb = mean_std(a)[1] ** 2 / 3, mean_std(b)[1] ** 2 / 4
    assert result.degrees_of_freedom == pytest.approx((va + vb) ** 2 / (va**2 / 2 + vb**2 / 3))
    assert result.degrees_of_freedom == pytest.approx(2.4375683350312043)
    assert (result.low, result.high) == pytest.approx((-0.24282416860501682, 0.0701575019383503))
    assert not result.beyond_noise


def test_too_few_seeds_or_no_spread_is_not_tested():
    for result in (paired_t_test([0.9], [0.8]), paired_t_test([0.9, 0.9], [0.8, 0.8]), welch_t_test([0.9], [0.8, 0.7])):
        assert math.isnan(result.p_value)
        assert not result.beyond_noise
        assert result.verdict().startswith("not tested")
    with pytest.raises(ValueError, match="as many values"):
        paired_t_test([0.9, 0.8], [0.8])
