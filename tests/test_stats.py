import math

import pytest

from rankadaptor.stats import mean_ci, paired_difference


def test_mean_ci_matches_t_interval():
    ci = mean_ci([1.0, 2.0, 3.0])
    # t_{0.975, 2} = 4.3027; sd = 1; half width = 4.3027 / sqrt(3)
    assert ci.mean == pytest.approx(2.0)
    assert ci.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert ci.fmt() == "2.00 ± 2.48"


def test_single_value_has_no_interval():
    ci = mean_ci([0.5])
    assert math.isnan(ci.low) and ci.fmt(scale=100) == "50.00"


def test_paired_difference_significance():
    same = paired_difference([0.50, 0.52, 0.51], [0.50, 0.51, 0.52])
    assert not same["significant"]
    better = paired_difference([0.60, 0.61, 0.62], [0.50, 0.51, 0.515])
    assert better["significant"] and better["mean"] > 0
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 2.0])
