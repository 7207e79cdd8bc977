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


def test_no_test_for_zero_spread_or_fewer_than_three():
    # the same difference on every seed: no spread, nothing to test (never "significant")
    flat = paired_difference([0.60, 0.61, 0.62], [0.55, 0.56, 0.57])
    assert flat["verdict"] == "no test" and not flat["significant"]
    two = paired_difference([0.9, 0.8], [0.1, 0.2])
    assert two["verdict"] == "no test" and not two["significant"]
    assert paired_difference([0.60, 0.61, 0.62], [0.50, 0.51, 0.515])["verdict"] == "significant"
    assert paired_difference([0.50, 0.52, 0.51], [0.50, 0.51, 0.52])["verdict"] == "not significant"


def test_detectable_difference_and_observations_needed_invert_each_other():
    from rankadaptor.stats import detectable_difference, observations_needed

    mde = detectable_difference(0.4, 1000)
    assert mde == pytest.approx((1.959964 + 0.841621) * 0.4 / math.sqrt(1000), rel=1e-5)
    assert observations_needed(0.4, mde) in (1000, 1001)
    with pytest.raises(ValueError):
        observations_needed(0.4, 0.0)
