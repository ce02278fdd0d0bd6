"""How good is the short list: screening metrics of predictions against true values (numpy).

A screen sends the top K of its ranking to DFT; these metrics say how many of those K are real
hits. They follow Matbench Discovery's definitions (``matbench_discovery.metrics.discovery.
stable_metrics``): precision = TP / (TP + FP) over the predicted positives (here the K
selected), recall = TP / (all true hits), prevalence = true hits / n, DAF (discovery
acceleration factor) = precision / prevalence — how many times more hits the list holds than K
structures drawn at random. A hit is a structure in the true top K or, with a threshold, one
whose true value passes it (Matbench Discovery's form, ``≤`` inclusive for ``goal="min"``).
docs/design.md §6 ("Screening metrics") has the rules for ties, NaNs and the bootstrap.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

import numpy as np

from deepergat.contract import DEFAULT_RANK_K, RANK_BY, RankBy
from deepergat.errors import DeepergatError, SettingError, literal

__all__ = [
    "BOOTSTRAP_CONFIDENCE",
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "DEFAULT_TOP_FRACTIONS",
    "GOALS",
    "Goal",
    "ScreeningMetrics",
    "TopK",
    "bootstrap_indices",
    "check_screening_settings",
    "confident_bound",
    "percentile_interval",
    "screening_metrics",
    "top_k_size",
]

#: Which end of the target is wanted: ``min`` (e.g. a low heat of formation) or ``max``.
Goal = Literal["min", "max"]
GOALS: tuple[str, ...] = get_args(Goal)
#: The lists measured by default: the top 1 % and 5 % of the set (issue 24).
DEFAULT_TOP_FRACTIONS: tuple[float, ...] = (0.01, 0.05)
#: Bootstrap resamples of the structures for a percentile interval (docs/design.md §6).
BOOTSTRAP_RESAMPLES = 2000
#: Seed of the bootstrap's generator: the same data give the same interval.
BOOTSTRAP_SEED = 0
#: Coverage of the percentile interval: the 2.5th to the 97.5th percentile.
BOOTSTRAP_CONFIDENCE = 0.95
#: The metrics a bootstrap gives an interval for.
_INTERVAL_KEYS = ("precision", "recall", "daf")


@dataclass(frozen=True)
class TopK:
    """One short list: the top K of one ranking, scored against the true values.

    Attributes:
        fraction: K as a share of the set. top_k: K = max(1, round(fraction · n)).
        selected: structures in the list (K, fewer when fewer keys are finite).
        hits: true hits in the list (true positives). true_hits: hits in the whole set.
        precision: hits / selected. recall: hits / true_hits. prevalence: true_hits / n.
        daf: precision / prevalence. Each is None where its denominator is 0.
        intervals: with a bootstrap, ``{"precision" | "recall" | "daf": (low, high)}`` (a
            bound is None when no resample defines the metric), else None.
    """

    fraction: float
    top_k: int
    selected: int
    hits: int
    true_hits: int
    precision: float | None
    recall: float | None
    prevalence: float
    daf: float | None
    intervals: dict[str, tuple[float | None, float | None]] | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "fraction": self.fraction, "top_k": self.top_k, "selected": self.selected,
            "hits": self.hits, "true_hits": self.true_hits, "precision": self.precision,
            "recall": self.recall, "prevalence": self.prevalence, "daf": self.daf,
        }
        for name, (lo, hi) in (self.intervals or {}).items():
            out[f"{name}_ci"] = [lo, hi]
        return out


@dataclass(frozen=True)
class ScreeningMetrics:
    """Screening metrics of one set of predictions.

    Attributes:
        goal: ``min`` or ``max``. hit_threshold: the true value a hit passes, or None (a hit
            is then a structure in the true top K of each list).
        rank_k: k of the bounds mean ± k·σ when a spread was given, else None.
        n: structures scored (finite true value). excluded: left out for a non-finite true
            value.
        rankings: ranking key (``mean``, ``lower`` = mean − k·σ, ``upper`` = mean + k·σ) → one
            `TopK` per fraction, in the order given.
        resamples: bootstrap resamples behind the intervals (0: none).
    """

    goal: Goal
    hit_threshold: float | None
    rank_k: float | None
    n: int
    excluded: int
    rankings: dict[str, list[TopK]] = field(default_factory=dict)
    resamples: int = 0

    def as_json(self) -> dict[str, Any]:
        """The ``screening`` document of ``deepergat evaluate --json`` (docs/design.md §6)."""
        return {
            "goal": self.goal, "hit_threshold": self.hit_threshold, "rank_k": self.rank_k,
            "n": self.n, "rankings": {name: [row.as_json() for row in rows]
                                      for name, rows in self.rankings.items()},
        }


def confident_bound(goal: Goal) -> RankBy:
    """The bound that ranks candidates good even at the unfavourable end of their spread:
    ``upper`` (mean + k·σ) for ``min``, ``lower`` (mean − k·σ) for ``max``."""
    return "upper" if goal == "min" else "lower"


def top_k_size(fraction: float, n: int) -> int:
    """K of a list holding ``fraction`` of ``n`` structures: round half up, at least 1."""
    return max(1, math.floor(fraction * n + 0.5))


def check_screening_settings(
    *,
    goal: str,
    top_fractions: Sequence[float] = DEFAULT_TOP_FRACTIONS,
    hit_threshold: float | None = None,
    rank_k: float = DEFAULT_RANK_K,
    rank_by: Sequence[str] | None = None,
) -> None:
    """Refuse bad screening settings before any work (one `SettingError` naming the setting).

    Raises:
        SettingError: ``goal`` not min/max; no fraction or one outside (0, 1]; a non-finite
            ``hit_threshold``; ``rank_k`` negative or not finite; an unknown ``rank_by``.
    """
    if goal not in GOALS:
        raise SettingError(f"{{goal}} {literal(repr(goal))}: choose min or max")
    if len(top_fractions) == 0:
        raise SettingError("{top_fractions}: give at least one fraction of the set")
    for f in top_fractions:
        if not (0 < f <= 1):
            raise SettingError(f"{{top_fractions}} {literal(f)}: must lie in (0, 1]")
    if hit_threshold is not None and not math.isfinite(hit_threshold):
        raise SettingError(f"{{hit_threshold}} must be a finite number, got {hit_threshold}")
    if not (rank_k >= 0 and math.isfinite(rank_k)):
        raise SettingError(f"{{rank_k}} must be a finite number ≥ 0, got {rank_k}")
    for name in rank_by or ():
        if name not in RANK_BY:
            raise SettingError(f"{{rank_by}} {literal(repr(name))}: choose "
                               f"{', '.join(RANK_BY[:-1])} or {RANK_BY[-1]}")


def screening_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    goal: Goal,
    y_std: np.ndarray | None = None,
    top_fractions: Sequence[float] = DEFAULT_TOP_FRACTIONS,
    hit_threshold: float | None = None,
    rank_k: float = DEFAULT_RANK_K,
    rank_by: Sequence[RankBy] | None = None,
    resamples: int = 0,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = BOOTSTRAP_CONFIDENCE,
) -> ScreeningMetrics:
    """Precision, recall and DAF of the top K of each ranking.

    Rules (deterministic, independent of how the caller sorted the rows where the values
    allow it):

    * A structure with a non-finite true value is left out (``excluded``).
    * The list of a ranking is its K best finite keys (lowest for ``min``), ties going to the
      earlier row, as the screen's top-K CSV breaks them; a non-finite prediction (or σ, for
      a bound) is never selected but still counts in n — a hit the model could not score is
      a hit it missed (Matbench Discovery's ``fillna``).
    * Without ``hit_threshold`` the hits of a list are the structures whose true value is at
      least as good as the K-th best true value: ties at the K-th value are all hits, so
      ``true_hits`` ≥ K. With it, a hit's true value is ≤ the threshold (``min``) or ≥ it
      (``max``), the same for every list.

    Args:
        y_true, y_pred: [n] true and predicted values (any units, the same for both).
        goal: ``min`` or ``max``: which end of the target is wanted.
        y_std: [n] an ensemble's calibrated σ (same units), or None.
        top_fractions: K of each list as a share of n (in (0, 1]).
        hit_threshold: the true value a hit passes; None: a hit is in the true top K.
        rank_k: k of the bounds mean ± k·σ.
        rank_by: the rankings to score [default: ``mean``, and with ``y_std`` also the
            `confident_bound` of ``goal``]; a bound needs ``y_std``.
        resamples: bootstrap resamples for percentile intervals (0: none;
            `BOOTSTRAP_RESAMPLES` is the documented number).
        seed: the bootstrap's seed. confidence: the interval's coverage.

    Returns:
        the metrics, one `TopK` per ranking and fraction.

    Raises:
        SettingError: bad settings (`check_screening_settings`), or a bound without ``y_std``.
        DeepergatError: no structure has a finite true value.
    """
    check_screening_settings(goal=goal, top_fractions=top_fractions,
                             hit_threshold=hit_threshold, rank_k=rank_k, rank_by=rank_by)
    y_true, y_pred, std = _arrays(y_true, y_pred, y_std)
    if rank_by is None:
        rank_by = ["mean"] if std is None else ["mean", confident_bound(goal)]
    if std is None and any(r != "mean" for r in rank_by):
        raise SettingError("{rank_by} lower and upper rank by mean ∓ k·std and need a "
                           "model with a spread (an ensemble); use {rank_by} mean")
    if not (0 < confidence < 1):
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    keep = np.isfinite(y_true)
    if not keep.any():
        raise DeepergatError("no structure has a finite true value to score the list against")
    y_true, y_pred = y_true[keep], y_pred[keep]
    keys = {name: _ranking_key(y_pred, None if std is None else std[keep], name, rank_k)
            for name in dict.fromkeys(rank_by)}
    fractions = [float(f) for f in top_fractions]
    rankings = {name: _score(y_true, key, goal, fractions, hit_threshold)
                for name, key in keys.items()}
    if resamples > 0:
        rankings = _with_intervals(rankings, y_true, keys, goal, fractions, hit_threshold,
                                   resamples=resamples, seed=seed, confidence=confidence)
    return ScreeningMetrics(
        goal=goal, hit_threshold=None if hit_threshold is None else float(hit_threshold),
        rank_k=None if std is None else float(rank_k), n=len(y_true),
        excluded=int((~keep).sum()), rankings=rankings, resamples=max(int(resamples), 0),
    )


def bootstrap_indices(n: int, resamples: int = BOOTSTRAP_RESAMPLES, *,
                      seed: int = BOOTSTRAP_SEED) -> Iterator[np.ndarray]:
    """The bootstrap's resamples: ``resamples`` arrays of n row indices drawn with
    replacement from one `numpy.random.default_rng(seed)` — the same for every statistic of
    one data set, so intervals of MAE and of the lists come from the same resamples."""
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        yield rng.integers(0, n, size=n)


def percentile_interval(values: np.ndarray, confidence: float = BOOTSTRAP_CONFIDENCE,
                        ) -> tuple[float | None, float | None]:
    """The percentile interval of bootstrap values (NaNs — resamples where the statistic is
    undefined — left out; None when none is defined)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return None, None
    tail = 50.0 * (1.0 - confidence)
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


# ---- the steps ------------------------------------------------------------------------------


def _arrays(y_true: np.ndarray, y_pred: np.ndarray, y_std: np.ndarray | None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The inputs as [n] float64 arrays of one length."""
    true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    std = None if y_std is None else np.asarray(y_std, dtype=np.float64).reshape(-1)
    if len(pred) != len(true) or (std is not None and len(std) != len(true)):
        raise ValueError(f"y_true, y_pred and y_std differ in length: {len(true)}, "
                         f"{len(pred)}, {'-' if std is None else len(std)}")
    return true, pred, std


def _ranking_key(y_pred: np.ndarray, std: np.ndarray | None, rank_by: str,
                 rank_k: float) -> np.ndarray:
    """[n] the key a ranking sorts by: the prediction, or mean ∓ k·σ (NaN where either is)."""
    key = y_pred.copy()
    if rank_by != "mean":
        assert std is not None
        key += (rank_k if rank_by == "upper" else -rank_k) * std
    key[~np.isfinite(key)] = np.nan
    return key


def _ranked(key: np.ndarray, goal: Goal) -> np.ndarray:
    """Rows of the finite keys, best first (ties to the earlier row; NaN never ranked)."""
    order = np.argsort(key if goal == "min" else -key, kind="stable")
    return order[: int(np.isfinite(key).sum())]


def _hit_mask(y_true: np.ndarray, goal: Goal, k: int, hit_threshold: float | None
              ) -> np.ndarray:
    """[n] bool: which structures are hits (the true top K with its ties, or past the
    threshold)."""
    if hit_threshold is None:
        if goal == "min":
            hit_threshold = float(np.partition(y_true, k - 1)[k - 1])
        else:
            hit_threshold = float(-np.partition(-y_true, k - 1)[k - 1])
    return y_true <= hit_threshold if goal == "min" else y_true >= hit_threshold


def _score(y_true: np.ndarray, key: np.ndarray, goal: Goal, fractions: list[float],
           hit_threshold: float | None) -> list[TopK]:
    n = len(y_true)
    ranked = _ranked(key, goal)
    rows = []
    for f in fractions:
        k = top_k_size(f, n)
        hit = _hit_mask(y_true, goal, k, hit_threshold)
        chosen = ranked[:k]
        tp, true_hits, sel = int(hit[chosen].sum()), int(hit.sum()), len(chosen)
        precision = tp / sel if sel else None
        prevalence = true_hits / n
        rows.append(TopK(
            fraction=f, top_k=k, selected=sel, hits=tp, true_hits=true_hits,
            precision=precision, recall=tp / true_hits if true_hits else None,
            prevalence=prevalence,
            daf=precision / prevalence if precision is not None and prevalence > 0 else None,
        ))
    return rows


def _with_intervals(rankings: dict[str, list[TopK]], y_true: np.ndarray,
                    keys: dict[str, np.ndarray], goal: Goal, fractions: list[float],
                    hit_threshold: float | None, *, resamples: int, seed: int,
                    confidence: float) -> dict[str, list[TopK]]:
    """The same scores on bootstrap resamples of the structures: percentile intervals of
    precision, recall and DAF for every list (undefined values, e.g. recall of a resample
    without hits, are left out of the percentiles)."""
    draws = {name: np.full((resamples, len(fractions), len(_INTERVAL_KEYS)), np.nan)
             for name in keys}
    for b, idx in enumerate(bootstrap_indices(len(y_true), resamples, seed=seed)):
        for name, key in keys.items():
            for j, row in enumerate(_score(y_true[idx], key[idx], goal, fractions,
                                           hit_threshold)):
                draws[name][b, j] = [np.nan if v is None else v
                                     for v in (row.precision, row.recall, row.daf)]
    out = {}
    for name, rows in rankings.items():
        out[name] = [
            replace(row, intervals={m: percentile_interval(draws[name][:, j, i], confidence)
                                    for i, m in enumerate(_INTERVAL_KEYS)})
            for j, row in enumerate(rows)
        ]
    return out

