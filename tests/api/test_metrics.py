"""Screening metrics (`deepergat.api.metrics`): precision, recall and DAF of the top K, as
Matbench Discovery defines them, with the tie, NaN and bootstrap rules of docs/design.md §6."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deepergat.api.metrics import (
    BOOTSTRAP_RESAMPLES,
    DEFAULT_TOP_FRACTIONS,
    bootstrap_indices,
    confident_bound,
    screening_metrics,
    top_k_size,
)
from deepergat.errors import DeepergatError, SettingError


def reference(y_true: list[float], key: list[float], goal: str, k: int,
              threshold: float | None) -> dict[str, float | None]:
    """The definitions written out plainly (Matbench Discovery's `stable_metrics`, with the
    predicted positives = the K best finite keys, earlier row first among equal keys)."""
    better = (lambda a, b: a <= b) if goal == "min" else (lambda a, b: a >= b)
    if threshold is None:
        threshold = sorted(y_true, reverse=goal == "max")[k - 1]
    hit = [better(y, threshold) for y in y_true]
    finite = [i for i, v in enumerate(key) if math.isfinite(v)]
    ranked = sorted(finite, key=lambda i: (key[i] if goal == "min" else -key[i], i))[:k]
    tp = sum(hit[i] for i in ranked)
    fp = len(ranked) - tp
    positives = sum(hit)
    precision = tp / (tp + fp) if tp + fp else None
    prevalence = positives / len(y_true)
    return {"hits": tp, "true_hits": positives, "precision": precision,
            "recall": tp / positives if positives else None, "prevalence": prevalence,
            "daf": precision / prevalence if precision is not None and prevalence else None}


def as_dict(row: object) -> dict[str, float | None]:
    return {k: getattr(row, k) for k in ("hits", "true_hits", "precision", "recall",
                                         "prevalence", "daf")}


def test_a_list_scored_by_hand() -> None:
    # 10 structures; the true best two (min) are rows 0 and 1
    y = np.array([-2.0, -1.5, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    p = np.array([-1.9, 0.5, -1.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    m = screening_metrics(y, p, goal="min", top_fractions=[0.2])
    (row,) = m.rankings["mean"]
    # predicted top 2: rows 0 and 2 → one of the two true hits
    assert (row.top_k, row.selected, row.hits, row.true_hits) == (2, 2, 1, 2)
    assert row.precision == row.recall == 0.5
    assert row.prevalence == 0.2 and row.daf == pytest.approx(2.5)
    # Matbench Discovery's form: a hit is a true value ≤ 0 (rows 0, 1, 2), three of ten
    (row,) = screening_metrics(y, p, goal="min", top_fractions=[0.2],
                               hit_threshold=0.0).rankings["mean"]
    assert (row.hits, row.true_hits) == (2, 3)
    assert row.precision == 1.0 and row.recall == pytest.approx(2 / 3)
    assert row.daf == pytest.approx(1.0 / 0.3)
    assert m.as_json()["rankings"]["mean"][0]["daf"] == pytest.approx(2.5)


@pytest.mark.parametrize("goal", ["min", "max"])
@pytest.mark.parametrize("threshold", [None, 0.3])
def test_equals_the_plain_definitions(goal: str, threshold: float | None) -> None:
    rng = np.random.default_rng(3)
    y = np.round(rng.normal(size=400), 1)  # rounded: ties among the true values
    p = np.round(y + 0.5 * rng.normal(size=400), 1)  # and among the predictions
    p[rng.choice(400, 20, replace=False)] = np.nan
    fractions = [0.01, 0.05, 0.2, 1.0]
    m = screening_metrics(y, p, goal=goal, top_fractions=fractions, hit_threshold=threshold)
    for f, row in zip(fractions, m.rankings["mean"], strict=True):
        expected = reference(y.tolist(), p.tolist(), goal, top_k_size(f, 400), threshold)
        assert as_dict(row) == pytest.approx(expected), f


def test_max_is_min_of_the_negated_target() -> None:
    rng = np.random.default_rng(5)
    y, p = rng.normal(size=300), rng.normal(size=300)
    a = screening_metrics(y, p, goal="max", hit_threshold=0.5)
    b = screening_metrics(-y, -p, goal="min", hit_threshold=-0.5)
    assert [as_dict(r) for r in a.rankings["mean"]] == [as_dict(r) for r in b.rankings["mean"]]


def test_ties_and_nans_are_deterministic() -> None:
    # the 2nd best true value (1.0) is tied three times: the best and all three are hits
    y = np.array([0.0, 1.0, 1.0, 1.0, 5.0, np.nan])
    p = np.array([9.0, 0.0, 0.0, 0.0, np.nan, 0.0])
    m = screening_metrics(y, p, goal="min", top_fractions=[0.4])
    (row,) = m.rankings["mean"]
    assert m.n == 5 and m.excluded == 1  # no true value: left out
    assert (row.top_k, row.true_hits) == (2, 4)
    # predictions tied: the earlier rows are listed (1 and 2), both hits
    assert row.hits == 2 and row.precision == 1.0
    # a NaN prediction is never listed but its structure still counts (a missed hit)
    y2, p2 = np.array([0.0, 1.0, 2.0]), np.array([np.nan, 1.0, 2.0])
    (row,) = screening_metrics(y2, p2, goal="min", top_fractions=[0.34]).rankings["mean"]
    assert (row.selected, row.hits, row.true_hits, row.recall) == (1, 0, 1, 0.0)
    # fewer finite keys than K: the list is shorter, precision over what was listed
    (row,) = screening_metrics(y2, np.array([np.nan, np.nan, 2.0]), goal="max",
                               top_fractions=[1.0]).rankings["mean"]
    assert (row.top_k, row.selected, row.hits) == (3, 1, 1) and row.precision == 1.0
    # nothing finite to list: precision and DAF undefined, not 0
    (row,) = screening_metrics(y2, np.full(3, np.nan), goal="min",
                               top_fractions=[0.5]).rankings["mean"]
    assert row.selected == 0 and row.precision is None and row.daf is None


def test_row_order_does_not_matter_without_ties() -> None:
    rng = np.random.default_rng(11)
    y, p, s = rng.normal(size=500), rng.normal(size=500), rng.uniform(0.1, 1, size=500)
    perm = rng.permutation(500)
    a = screening_metrics(y, p, goal="min", y_std=s)
    b = screening_metrics(y[perm], p[perm], goal="min", y_std=s[perm])
    assert a.as_json() == b.as_json()


def test_the_confident_bound_prefers_the_certain_candidate() -> None:
    # rows 0 and 1 are predicted equally low; row 1 is uncertain and in truth not a hit
    y = np.array([-1.0, 3.0, 0.0, 1.0, 2.0])
    p = np.array([-1.0, -1.0, 0.0, 1.0, 2.0])
    s = np.array([0.1, 5.0, 0.1, 0.1, 0.1])
    m = screening_metrics(y, p, goal="min", y_std=s, top_fractions=[0.4], rank_k=1.0)
    assert list(m.rankings) == ["mean", "upper"] and m.rank_k == 1.0
    assert m.rankings["mean"][0].hits == 1  # rows 0, 1
    assert m.rankings["upper"][0].hits == 2  # rows 0, 2: mean + σ keeps row 1 out
    assert confident_bound("min") == "upper" and confident_bound("max") == "lower"
    assert list(screening_metrics(-y, -p, goal="max", y_std=s).rankings) == ["mean", "lower"]
    both = screening_metrics(y, p, goal="min", y_std=s, rank_by=["lower", "upper"])
    assert list(both.rankings) == ["lower", "upper"]
    # a NaN σ leaves the structure out of the bound's list only
    s2 = s.copy()
    s2[0] = np.nan
    m = screening_metrics(y, p, goal="min", y_std=s2, top_fractions=[0.2])
    assert m.rankings["mean"][0].hits == 1 and m.rankings["upper"][0].hits == 0


def test_bootstrap_intervals_are_reproducible_and_cover_the_estimate() -> None:
    rng = np.random.default_rng(2)
    y = rng.normal(size=1000)
    p = y + 0.4 * rng.normal(size=1000)
    a = screening_metrics(y, p, goal="min", resamples=300, seed=4)
    b = screening_metrics(y, p, goal="min", resamples=300, seed=4)
    assert a.as_json() == b.as_json() and a.resamples == 300
    for row in a.rankings["mean"]:
        assert row.intervals is not None
        for name in ("precision", "recall", "daf"):
            lo, hi = row.intervals[name]
            assert lo is not None and hi is not None
            assert lo <= getattr(row, name) <= hi and lo < hi
    doc = a.as_json()["rankings"]["mean"][0]
    assert len(doc["precision_ci"]) == 2 and "daf_ci" in doc
    # a perfect ranking is perfect in every resample
    (row,) = screening_metrics(y, y, goal="max", top_fractions=[0.05],
                               resamples=50).rankings["mean"]
    assert row.intervals is not None and row.intervals["precision"] == (1.0, 1.0)
    # without resamples: no interval keys
    assert "precision_ci" not in screening_metrics(y, p, goal="min").as_json()["rankings"][
        "mean"][0]
    draws = list(bootstrap_indices(7, 3, seed=1))
    assert [d.tolist() for d in draws] == [d.tolist() for d in bootstrap_indices(7, 3, seed=1)]
    assert BOOTSTRAP_RESAMPLES == 2000 and DEFAULT_TOP_FRACTIONS == (0.01, 0.05)


def test_top_k_size_rounds_half_up() -> None:
    assert top_k_size(0.01, 3408) == 34 and top_k_size(0.05, 3408) == 170
    assert top_k_size(0.07, 100) == 7  # 0.07 · 100 = 7.000000000000001: not 8
    assert top_k_size(0.01, 10) == 1 and top_k_size(0.05, 50) == 3 and top_k_size(1.0, 9) == 9


def test_bad_settings_name_the_setting() -> None:
    y = np.arange(10.0)
    cases = [
        (dict(goal="low"), "goal 'low': choose min or max"),
        (dict(goal="min", top_fractions=[0.0]), "top_fractions 0.0: must lie in (0, 1]"),
        (dict(goal="min", top_fractions=[]), "top_fractions: give at least one"),
        (dict(goal="min", hit_threshold=math.nan), "hit_threshold must be a finite number"),
        (dict(goal="min", rank_k=-1.0), "rank_k must be a finite number ≥ 0"),
        (dict(goal="min", rank_by=["upper"]), "rank_by lower and upper rank by mean ∓ k·std"),
        (dict(goal="min", rank_by=["best"]), "rank_by 'best': choose mean, lower or upper"),
    ]
    for kwargs, message in cases:
        with pytest.raises(SettingError) as e:
            screening_metrics(y, y, **kwargs)  # type: ignore[arg-type]
        assert message in str(e.value), kwargs
    with pytest.raises(DeepergatError, match="no structure has a finite true value"):
        screening_metrics(np.full(3, np.nan), np.zeros(3), goal="min")
