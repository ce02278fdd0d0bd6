"""`deepergat.api.evaluate`: the screening metrics of a model's top-K lists beside its errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from deepergat.api.evaluate import evaluate
from deepergat.api.metrics import screening_metrics
from deepergat.errors import SettingError


def test_goal_adds_the_lists_of_the_evaluated_structures(small_model: dict[str, Any],
                                                         tiny_store: Path,
                                                         tmp_path: Path) -> None:
    plain = evaluate(small_model["checkpoint"], tiny_store, "heat_ref", cache_dir=tmp_path)
    assert plain.screening is None and "screening" not in plain.as_json()
    res = evaluate(small_model["checkpoint"], tiny_store, "heat_ref", cache_dir=tmp_path,
                   goal="max", top_fractions=[0.1, 0.5], hit_threshold=-1.0)
    m = res.screening
    assert m is not None and m.n == res.n == 60 and m.rank_k is None
    assert list(m.rankings) == ["mean"]  # a single model: no bound
    expected = screening_metrics(res.y_true, res.y_pred, goal="max", top_fractions=[0.1, 0.5],
                                 hit_threshold=-1.0)
    assert m.as_json() == expected.as_json()
    doc = res.as_json()
    assert {k: v for k, v in doc.items() if k != "screening"} == plain.as_json()
    assert doc["screening"]["goal"] == "max" and doc["screening"]["hit_threshold"] == -1.0
    assert [r["top_k"] for r in doc["screening"]["rankings"]["mean"]] == [6, 30]


def test_an_ensemble_is_also_ranked_by_its_confident_bound(small_ensemble: dict[str, Any],
                                                            tiny_store: Path,
                                                            tmp_path: Path) -> None:
    res = evaluate(small_ensemble["onnx"], tiny_store, "heat_ref", cache_dir=tmp_path,
                   goal="min", rank_k=2.0)
    m = res.screening
    assert m is not None and res.y_std is not None
    assert list(m.rankings) == ["mean", "upper"] and m.rank_k == 2.0
    expected = screening_metrics(res.y_true, res.y_pred + 2.0 * res.y_std, goal="min")
    assert [r.as_json() for r in m.rankings["upper"]] == [
        r.as_json() for r in expected.rankings["mean"]]


def test_bad_screening_settings_are_refused_before_the_model_loads(tmp_path: Path) -> None:
    missing = tmp_path / "no-such.ckpt"  # never opened: the settings are checked first
    for kwargs, message in [
        (dict(goal="best"), "goal 'best': choose min or max"),
        (dict(goal="min", top_fractions=[2.0]), "top_fractions 2.0: must lie in (0, 1]"),
        (dict(goal="max", rank_k=float("inf")), "rank_k must be a finite number"),
        (dict(hit_threshold=0.5), "hit_threshold needs goal min or max"),
    ]:
        with pytest.raises(SettingError) as e:
            evaluate(missing, tmp_path / "no-such.h5", "heat_ref", **kwargs)  # type: ignore[arg-type]
        assert message in str(e.value)
