"""A model's errors on a labelled store: MAE, RMSE, R², the spread's metrics for an ensemble,
the screening metrics of its top-K lists, and the parity plot."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from deepergat.contract import DEFAULT_RANK_K
from deepergat.errors import DeepergatError, SettingError
from deepergat.system.plotting import plain_text

from .metrics import (
    DEFAULT_TOP_FRACTIONS,
    Goal,
    ScreeningMetrics,
    check_screening_settings,
    screening_metrics,
)
from .predict import load_predictor

__all__ = ["EvaluationResult", "evaluate", "parity_plot"]


@dataclass
class EvaluationResult:
    """Metrics of a model on a labelled store.

    Attributes:
        target, units: the evaluated target. n: structures evaluated.
        mae, rmse, r2: in the target's units (R² unitless).
        y_true, y_pred: [n] float64 values. ids: [n]. skipped: structures left out (status ≠ 0).
        y_std: [n] float64 calibrated spread of an ensemble, else None.
        uncertainty: for an ensemble, `deepergat.uncertainty.uncertainty_metrics` of the
            spread (``coverage_1sigma``, ``coverage_2sigma``, ``spearman_std_abs_error``,
            ``mean_std``), else None.
        screening: with a ``goal``, precision, recall and DAF of the top-K lists
            (`deepergat.api.metrics.screening_metrics`), else None.
    """

    target: str
    units: str
    n: int
    mae: float
    rmse: float
    r2: float
    y_true: np.ndarray
    y_pred: np.ndarray
    ids: list[str]
    skipped: int = 0
    y_std: np.ndarray | None = None
    uncertainty: dict[str, Any] | None = None
    screening: ScreeningMetrics | None = None

    def as_json(self) -> dict[str, Any]:
        """The ``--json`` document (docs/design.md §6): ``screening`` only with a goal."""
        out = {"target": self.target, "units": self.units, "n": self.n, "mae": self.mae,
               "rmse": self.rmse, "r2": self.r2, **(self.uncertainty or {})}
        if self.screening is not None:
            out["screening"] = self.screening.as_json()
        return out


def evaluate(model_path: str | os.PathLike[str], data: str | os.PathLike[str], target: str, *,
             batch_size: int = 100, device: str = "cpu",
             cache_dir: str | os.PathLike[str] | None = None,
             trust: bool = False, goal: Goal | None = None,
             top_fractions: Sequence[float] = DEFAULT_TOP_FRACTIONS,
             hit_threshold: float | None = None,
             rank_k: float = DEFAULT_RANK_K) -> EvaluationResult:
    """MAE, RMSE and R² of a model on a labelled store (and, for an ensemble, how well its
    spread describes the errors).

    Args:
        goal: ``min`` or ``max``: also score the top-K lists a screen for that end of the
            target would send on (None: no screening metrics).
        top_fractions: K of each list as a share of the evaluated structures.
        hit_threshold: a hit's true value passes it (≤ for ``min``, ≥ for ``max``); None: a
            hit is in the true top K.
        rank_k: k of the confidence bound mean ± k·σ an ensemble's lists are also ranked by.

    Raises:
        SettingError: a bad screening setting (before the model runs).
        DeepergatError: the model lacks the target, the store lacks it (lists the available
            ones) or has no usable labelled structure.
    """
    from deepergat.training.data import load_graphs

    if goal is None and hit_threshold is not None:
        raise SettingError("{hit_threshold} needs {goal} min or max")
    if goal is not None:
        check_screening_settings(goal=goal, top_fractions=top_fractions,
                                 hit_threshold=hit_threshold, rank_k=rank_k)

    ck = load_predictor(model_path, device=device, trust=trust)
    if target not in ck.targets:
        raise DeepergatError(
            f"{ck.path}: the model predicts {', '.join(ck.targets)}, not {target!r}"
        )
    column = ck.targets.index(target)
    g = load_graphs(data, **ck.graph_settings, cache_dir=cache_dir)
    if not g.targets:
        raise DeepergatError(f"{data}: the store has no targets; pack it with --target")
    if target not in g.targets:
        raise DeepergatError(
            f"{data}: no target {target!r}; available: {', '.join(sorted(g.targets))}"
        )
    y_all = g.targets[target]
    rows = g.usable
    rows = rows[np.isfinite(y_all[rows])]
    skipped = len(g) - len(rows)
    if len(rows) == 0:
        raise DeepergatError(f"{data}: no structure with a finite {target!r} passes the checks")
    outs = [ck.predict(g.batch(rows[a : a + batch_size])) for a in range(0, len(rows), batch_size)]
    y_pred = np.concatenate([o.prediction for o in outs])[:, column].astype(np.float64)
    y_true = y_all[rows]
    err = y_pred - y_true
    ss_tot = float(((y_true - y_true.mean()) ** 2).sum())
    r2 = 1.0 - float((err**2).sum()) / ss_tot if ss_tot > 0 else math.nan
    y_std = uncertainty = None
    if ck.has_std:
        from deepergat.training.uncertainty import uncertainty_metrics

        y_std = np.concatenate([o.std for o in outs])[:, column].astype(np.float64)
        uncertainty = uncertainty_metrics(y_true, y_pred, y_std)
    screening = None
    if goal is not None:
        screening = screening_metrics(y_true, y_pred, goal=goal, y_std=y_std,
                                      top_fractions=top_fractions,
                                      hit_threshold=hit_threshold, rank_k=rank_k)
    return EvaluationResult(
        target=target, units=ck.units[column], n=len(rows), mae=float(np.abs(err).mean()),
        rmse=float(np.sqrt((err**2).mean())), r2=r2, y_true=y_true, y_pred=y_pred,
        ids=[g.ids[r] for r in rows], skipped=skipped, y_std=y_std, uncertainty=uncertainty,
        screening=screening,
    )


def parity_plot(result: EvaluationResult, path: str | os.PathLike[str], *,
                title: str = "") -> None:
    """Predicted vs true values, with the MAE in the title (PNG, matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result, title = replace(result, target=plain_text(result.target),  # drawn as written
                            units=plain_text(result.units)), plain_text(title)
    u = f" ({result.units})" if result.units else ""
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.scatter(result.y_true, result.y_pred, s=6, alpha=0.5)
    lo = float(min(result.y_true.min(), result.y_pred.min()))
    hi = float(max(result.y_true.max(), result.y_pred.max()))
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
    ax.set_xlabel(f"true {result.target}{u}")
    ax.set_ylabel(f"predicted {result.target}{u}")
    unit = f" {result.units}" if result.units else ""
    ax.set_title(f"{title + ': ' if title else ''}MAE {result.mae:.4g}{unit} "
                 f"(R² {result.r2:.3f}, n = {result.n})")
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
