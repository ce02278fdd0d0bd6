"""The spread's calibration maths and metrics, each against its formula written out."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deepergat.training.uncertainty import (
    COVERAGE,
    calibration_scale,
    combined_spread,
    local_weight,
    spearman,
    uncertainty_metrics,
)


def test_calibration_scale_is_the_higher_quantile_of_the_scaled_errors() -> None:
    # z = |y - mean| / (2 sigma): [0.5, 0.25, 2, 1, 0.125] and [1, 2, 3, 4, 5]
    y = np.array([[1.0, 2.0], [0.5, 4.0], [4.0, 6.0], [2.0, 8.0], [0.25, 10.0]])
    mean = np.zeros_like(y)
    sigma = np.ones_like(y)
    z = np.abs(y - mean) / (2 * sigma)
    s = calibration_scale(y, mean, sigma, coverage=0.5)
    # numpy's "higher" method: the sorted value at index ceil(q (n - 1))
    k = math.ceil(0.5 * (len(y) - 1))
    assert s.tolist() == [np.sort(z[:, 0])[k], np.sort(z[:, 1])[k]] == [0.5, 3.0]
    s95 = calibration_scale(y, mean, sigma)
    assert s95.tolist() == [2.0, 5.0]  # ceil(0.95 * 4) = 4: the largest
    assert COVERAGE == 0.95


def test_the_calibrated_2_sigma_covers_the_asked_share() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    raw = rng.uniform(0.01, 0.1, (n, 1))
    y = rng.normal(0.0, 3.0 * raw)  # errors three times the raw spread, scaling with it
    mean = np.zeros((n, 1))
    s = calibration_scale(y, mean, raw)
    assert s.shape == (1,) and s[0] == pytest.approx(3.0, rel=0.05)
    covered = np.mean(np.abs(y - mean) <= 2 * s[0] * raw)
    assert covered >= COVERAGE and covered == pytest.approx(COVERAGE, abs=2 / n)


def test_members_that_agree_exactly_do_not_divide_by_zero() -> None:
    y, mean = np.array([[1.0], [0.0], [2.0]]), np.zeros((3, 1))
    s = calibration_scale(y, mean, np.zeros((3, 1)))
    assert np.isfinite(s).all() and s[0] == pytest.approx(2.0 / (2 * 1e-12))


def test_calibration_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="finite"):
        calibration_scale(np.array([[1.0], [np.nan]]), np.zeros((2, 1)), np.ones((2, 1)))
    with pytest.raises(ValueError, match="equal shape with n >= 2"):
        calibration_scale(np.ones((1, 1)), np.ones((1, 1)), np.ones((1, 1)))
    with pytest.raises(ValueError, match="equal shape"):
        calibration_scale(np.ones(4), np.ones(4), np.ones(4))


def test_combined_spread_is_the_root_sum_of_squares() -> None:
    got = combined_spread(np.array([[3.0], [0.0]]), np.array([[2.0], [1.5]]), np.array([2.0]))
    assert got.tolist() == [[5.0], [3.0]]  # sqrt(3² + (2·2)²), sqrt(0 + (2·1.5)²)
    assert combined_spread(np.array([1.0]), np.array([7.0]), 0.0).tolist() == [1.0]


def _profile_nll(y: np.ndarray, mean: np.ndarray, raw: np.ndarray, local: np.ndarray,
                 w: float) -> float:
    """-log likelihood per row of Gaussian errors with variance c (raw² + w² local²), at the
    best c (the profile over the scale), constants dropped."""
    v = raw**2 + w**2 * local**2
    c = np.mean((y - mean) ** 2 / v)
    return float(0.5 * np.log(c) + 0.5 * np.mean(np.log(v)))


def test_local_weight_is_the_grid_point_of_the_highest_likelihood() -> None:
    rng = np.random.default_rng(3)
    n = 300
    raw = rng.uniform(0.5, 1.5, (n, 1))
    local = rng.uniform(0.5, 3.0, (n, 1))
    y = rng.normal(0.0, np.sqrt(raw**2 + (1.3 * local) ** 2))
    mean = np.zeros((n, 1))
    w = local_weight(y, mean, raw, local)[0]
    unit = math.sqrt(np.mean(raw**2) / np.mean(local**2))
    grid = np.concatenate([[0.0], unit * np.logspace(-4, 4, 161)])
    nll = [_profile_nll(y[:, 0], mean[:, 0], raw[:, 0], local[:, 0], g) for g in grid]
    assert w == pytest.approx(grid[int(np.argmin(nll))], rel=1e-12)
    assert w > 0


def test_local_weight_finds_the_share_of_the_error_the_term_explains() -> None:
    rng = np.random.default_rng(1)
    n = 4000
    raw = rng.uniform(0.5, 1.5, (n, 1))
    local = rng.uniform(0.5, 3.0, (n, 1))
    y = np.zeros((n, 1))
    with_term = rng.normal(0.0, np.sqrt(raw**2 + (2.0 * local) ** 2))
    assert local_weight(y, with_term, raw, local)[0] == pytest.approx(2.0, rel=0.15)
    without = rng.normal(0.0, raw)
    assert local_weight(y, without, raw, local)[0] < 0.15
    assert local_weight(y, without, raw, np.zeros_like(local))[0] == 0.0  # no term to weigh


def test_spearman_is_the_pearson_correlation_of_average_ranks() -> None:
    a = np.array([10.0, 20.0, 20.0, 40.0, 5.0])
    b = np.array([1.0, 3.0, 2.0, 5.0, 4.0])
    ra = np.array([1.0, 2.5, 2.5, 4.0, 0.0])  # ties share their average rank
    rb = np.array([0.0, 2.0, 1.0, 4.0, 3.0])
    want = np.sum((ra - ra.mean()) * (rb - rb.mean())) / math.sqrt(
        np.sum((ra - ra.mean()) ** 2) * np.sum((rb - rb.mean()) ** 2))
    assert spearman(a, b) == pytest.approx(want)
    assert spearman(a, a**3) == pytest.approx(1.0) and spearman(b, -b) == pytest.approx(-1.0)
    assert math.isnan(spearman(a, np.ones(5))) and math.isnan(spearman(a[:1], b[:1]))
    from scipy.stats import spearmanr

    rng = np.random.default_rng(2)
    x, z = rng.integers(0, 6, 200).astype(float), rng.normal(size=200)
    assert spearman(x, z) == pytest.approx(spearmanr(x, z).statistic)


def test_uncertainty_metrics_count_the_covered_errors() -> None:
    y = np.array([0.0, 0.0, 0.0, 0.0])
    mean = np.array([0.5, -1.5, 3.0, 0.1])  # |errors| 0.5, 1.5, 3, 0.1
    std = np.array([1.0, 1.0, 1.0, 0.2])
    m = uncertainty_metrics(y, mean, std)
    assert m["coverage_1sigma"] == 0.5  # 0.5 ≤ 1 and 0.1 ≤ 0.2
    assert m["coverage_2sigma"] == 0.75  # and 1.5 ≤ 2
    assert m["mean_std"] == pytest.approx(0.8)
    assert m["spearman_std_abs_error"] == pytest.approx(spearman(std, np.abs(y - mean)))
    assert uncertainty_metrics(y, mean, np.full(4, 0.3))["spearman_std_abs_error"] is None
    empty = uncertainty_metrics(np.zeros(0), np.zeros(0), np.zeros(0))
    assert set(empty.values()) == {None}
