"""t-intervals, verdicts and seed pairing, against hand computations."""
import math
import statistics

import pytest

from exfm_plugin.report.figures import ci_series
from exfm_plugin.report.stats import format_interval, paired_differences, t_interval, verdict

T_975_2 = 4.302653   # t quantile 0.975 with 2 degrees of freedom (tables)
T_975_4 = 2.776445   # ... with 4


def test_t_interval_matches_hand_formula():
    xs = [0.010, 0.014, 0.021]
    mean = sum(xs) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / 2)
    iv = t_interval(xs)
    assert iv.n == 3 and iv.mean == pytest.approx(mean)
    assert iv.lo == pytest.approx(mean - T_975_2 * sd / math.sqrt(3), rel=1e-6)
    assert iv.hi == pytest.approx(mean + T_975_2 * sd / math.sqrt(3), rel=1e-6)
    ys = [1.0, 2.0, 4.0, 8.0, 16.0]
    iv = t_interval(ys)
    assert iv.half_width == pytest.approx(T_975_4 * statistics.stdev(ys) / math.sqrt(5), rel=1e-6)


def test_one_seed_has_no_interval_and_is_not_resolved():
    iv = t_interval([0.3])
    assert (iv.mean, iv.n, iv.lo, iv.hi) == (0.3, 1, None, None)
    assert verdict(iv) == "not resolved (n=1)"
    assert format_interval(iv) == "+0.3000 (n=1)"
    with pytest.raises(ValueError, match="at least one value"):
        t_interval([])


def test_verdicts():
    assert verdict(t_interval([0.010, 0.011, 0.012])) == "holds"
    assert verdict(t_interval([-0.010, -0.011, -0.012])) == "reversed"
    assert verdict(t_interval([-0.005, 0.006, 0.001])) == "not resolved"
    # for a loss, lower is better: a negative difference holds
    assert verdict(t_interval([-0.010, -0.011, -0.012]), higher_is_better=False) == "holds"
    assert verdict(t_interval([0.010, 0.011, 0.012]), higher_is_better=False) == "reversed"
    # identical differences: zero width, still resolved on the right side
    assert verdict(t_interval([0.01, 0.01])) == "holds"


def test_paired_differences_pair_by_seed_not_by_order():
    first = {2: 0.62, 0: 0.60, 1: 0.61, 7: 0.5}   # seed 7 has no partner
    second = {0: 0.63, 1: 0.61, 2: 0.64, 9: 0.9}
    d = paired_differences(first, second)
    assert d == pytest.approx({0: 0.03, 1: 0.0, 2: 0.02})
    r = paired_differences(first, second, relative=True)
    assert r == pytest.approx({0: 100 * 0.03 / 0.60, 1: 0.0, 2: 100 * 0.02 / 0.62})


def test_error_bars_are_the_interval_over_seed_means():
    # x=1: seed 0 has two records (averaged first), seeds 1, 2 one each; x=2: one seed -> no bar
    xs, means, (below, above) = ci_series({1: {0: [1.0, 3.0], 1: [4.0], 2: [6.0]}, 2: {0: [5.0]}})
    per_seed = [2.0, 4.0, 6.0]
    half = T_975_2 * statistics.stdev(per_seed) / math.sqrt(3)
    assert xs == [1, 2] and means == pytest.approx([4.0, 5.0])
    assert below == pytest.approx([half, 0.0]) and above == pytest.approx([half, 0.0])
