"""Ensemble spread: its calibration and the metrics that judge it (numpy only, no torch).

An ensemble's raw spread σ_raw is the standard deviation of its K members' predictions. It is
calibrated with one factor per target, s, fitted on structures that no member trained on, so
that |y − mean| ≤ 2 s σ_raw holds for `COVERAGE` of them; the calibrated σ = s σ_raw is what
`predict`, `evaluate` and screening report.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["COVERAGE", "calibration_scale", "combined_spread", "local_weight", "spearman",
           "uncertainty_metrics"]

#: Share of unseen structures whose |error| the calibrated 2σ should cover.
COVERAGE = 0.95
#: Smallest raw spread used when calibrating (members that agree to float32 rounding).
_TINY = 1e-12


def calibration_scale(y: np.ndarray, mean: np.ndarray, std_raw: np.ndarray, *,
                      coverage: float = COVERAGE) -> np.ndarray:
    """Per-target factor s with |y − mean| ≤ 2 s σ_raw for ``coverage`` of the rows.

    Args:
        y, mean, std_raw: [n, T] true values, ensemble means and raw member spreads (same
            units), over structures no member trained on.
        coverage: the share to cover.

    Returns:
        [T] float64 factors (the ``coverage`` quantile of |y − mean| / (2 σ_raw)).

    Raises:
        ValueError: fewer than 2 rows, or non-finite values.
    """
    y, mean, std_raw = (np.asarray(a, dtype=np.float64) for a in (y, mean, std_raw))
    if y.ndim != 2 or y.shape != mean.shape or y.shape != std_raw.shape or len(y) < 2:
        raise ValueError("calibration needs [n, T] arrays of equal shape with n >= 2")
    if not (np.isfinite(y).all() and np.isfinite(mean).all() and np.isfinite(std_raw).all()):
        raise ValueError("calibration values must be finite")
    z = np.abs(y - mean) / (2.0 * np.maximum(std_raw, _TINY))
    return np.quantile(z, coverage, axis=0, method="higher")


def local_weight(y: np.ndarray, mean: np.ndarray, std_raw: np.ndarray,
                 local: np.ndarray) -> np.ndarray:
    """Per-target weight w of a local error term in σ ∝ sqrt(σ_raw² + (w ê)²).

    The weight that makes the errors most likely under a Gaussian of that width (with its
    best scale), searched over 0 and 161 values log-spaced over 10⁻⁴…10⁴ × rms σ_raw / rms ê.
    Only the ratio of the two parts matters here; `calibration_scale` sets the overall scale.

    Args:
        y, mean, std_raw, local: [n, T] true values, ensemble means, raw member spreads and
            local errors ê (same units), over structures no member trained on.

    Returns:
        [T] float64 weights (0 where ê does not help or is constant 0).
    """
    y, mean, std_raw, local = (np.asarray(a, dtype=np.float64) for a in (y, mean, std_raw, local))
    if y.ndim != 2 or not y.shape == mean.shape == std_raw.shape == local.shape or len(y) < 2:
        raise ValueError("local_weight needs [n, T] arrays of equal shape with n >= 2")
    out = np.zeros(y.shape[1])
    for j in range(y.shape[1]):
        e2 = (y[:, j] - mean[:, j]) ** 2
        s2, l2 = np.maximum(std_raw[:, j], _TINY) ** 2, local[:, j] ** 2
        if not l2.mean() > 0:
            continue
        unit = np.sqrt(s2.mean() / l2.mean())
        best, out[j] = np.inf, 0.0
        for w in np.concatenate([[0.0], unit * np.logspace(-4, 4, 161)]):
            v = s2 + w * w * l2
            nll = 0.5 * np.log(np.mean(e2 / v)) + 0.5 * np.mean(np.log(v))
            if nll < best - 1e-12:
                best, out[j] = nll, w
    return out


def combined_spread(std_raw: np.ndarray, local: np.ndarray, weight: np.ndarray | float
                    ) -> np.ndarray:
    """sqrt(σ_raw² + (w ê)²): the members' spread and a weighted local error term, before the
    calibration factor (`deepergat.nn.ensemble.DeeperGATGNNEnsemble.spread` in numpy)."""
    return np.sqrt(np.asarray(std_raw, dtype=np.float64) ** 2
                   + (np.asarray(weight, dtype=np.float64) * np.asarray(local)) ** 2)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of [n] values, ties sharing their average rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    start = np.cumsum(counts) - counts
    return (start + (counts - 1) / 2.0)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two [n] arrays (average ranks for ties); NaN when n < 2
    or one side is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def uncertainty_metrics(y: np.ndarray, mean: np.ndarray, std: np.ndarray) -> dict[str, Any]:
    """How well a calibrated spread describes the errors of one target.

    Args:
        y, mean, std: [n] true values, predictions and calibrated standard deviations.

    Returns:
        ``coverage_1sigma`` and ``coverage_2sigma`` (share with |error| ≤ σ, ≤ 2σ),
        ``spearman_std_abs_error`` (rank correlation of σ and |error|), ``mean_std``.
    """
    y, mean, std = (np.asarray(a, dtype=np.float64) for a in (y, mean, std))
    err = np.abs(y - mean)
    if not len(err):
        return {"coverage_1sigma": None, "coverage_2sigma": None,
                "spearman_std_abs_error": None, "mean_std": None}
    rho = spearman(std, err)
    return {
        "coverage_1sigma": float(np.mean(err <= std)),
        "coverage_2sigma": float(np.mean(err <= 2 * std)),
        "spearman_std_abs_error": None if np.isnan(rho) else rho,
        "mean_std": float(std.mean()),
    }
