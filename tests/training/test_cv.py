"""Cross-validation: every structure predicted out of fold by the member that never saw it,
the summary's numbers, one shared validation split, resume of finished folds, one fold alone."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from train_helpers import run_config

from deepergat.errors import SettingError
from deepergat.training.cv import cross_validate, plan_folds
from deepergat.training.data import load_graphs
from deepergat.training.trainer import Trainer, load_kept_model, predict_rows


def _read_oof(path: Path) -> dict[str, tuple[float, float]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "true", "predicted"]
    return {r[0]: (float(r[1]), float(r[2])) for r in rows[1:]}


def test_cross_validation_predicts_every_structure_out_of_fold(
    tiny_store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cv"
    cfg = run_config(tiny_store, out, epochs=1, cv=3, val_fraction=0.1)
    summary = cross_validate(cfg)
    assert json.loads((out / "cv_metrics.json").read_text()) == summary
    assert b"\r" not in (out / "oof.csv").read_bytes()
    oof = _read_oof(out / "oof.csv")
    splits = [json.loads((out / f"fold-{k}" / "splits.json").read_text()) for k in range(3)]
    val = set(splits[0]["val"])
    assert all(set(s["val"]) == val for s in splits)  # one validation split, shared
    g = load_graphs(tiny_store, cache_dir=tmp_path / "cache")
    usable = {g.ids[r] for r in g.usable}
    test = usable - val - set(splits[0]["train"]) - set(oof)
    assert len(oof) == summary["n"] == sum(summary["fold_n"])
    assert not (set(oof) & val) and not (set(oof) & test) and len(test) == summary["test_n"]
    assert set(oof) | val | test == usable
    assert list(oof) == [i for i in g.ids if i in oof]  # store order
    fold_ids = []
    for k, s in enumerate(splits):
        held = set(oof) - set(s["train"])  # what member k never trained on
        assert len(held) == summary["fold_n"][k]
        fold_ids.append(held)
        # the out-of-fold value is member k's own prediction of the structure
        member = load_kept_model(out / f"fold-{k}" / "best.ckpt")
        rows = np.array([g.ids.index(i) for i in sorted(held)])
        pred, _ = predict_rows(member, g, rows)
        np.testing.assert_allclose([oof[i][1] for i in sorted(held)], pred[:, 0], rtol=1e-6)
        mae = np.mean([abs(oof[i][1] - oof[i][0]) for i in held])
        assert summary["fold_mae"][k] == pytest.approx(mae, rel=1e-5)
    assert set().union(*fold_ids) == set(oof) and sum(map(len, fold_ids)) == len(oof)
    assert summary["mae_mean"] == pytest.approx(np.mean(summary["fold_mae"]))
    assert summary["mae_std"] == pytest.approx(np.std(summary["fold_mae"], ddof=1))
    errors = np.array([p - t for t, p in oof.values()])
    assert summary["oof_mae"] == pytest.approx(np.abs(errors).mean(), rel=1e-5)
    assert summary["oof_rmse"] == pytest.approx(np.sqrt((errors**2).mean()), rel=1e-5)
    seeds = [yaml.safe_load((out / f"fold-{k}" / "config.yaml").read_text())["seed"]
             for k in range(3)]
    assert seeds == [0, 1, 2]
    assert len(summary["test_mae"]) == 3


def test_cross_validation_resumes_finished_folds(
    tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "cv"
    first = cross_validate(run_config(tiny_store, out, epochs=1, cv=2))
    with pytest.raises(SettingError, match="already holds a run"):
        cross_validate(run_config(tiny_store, out, epochs=1, cv=2))

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr(Trainer, "take_step", no_training)
    again = cross_validate(run_config(tiny_store, out, epochs=1, cv=2, resume=True))
    assert again == first


def test_one_fold_alone_writes_only_its_folder(tiny_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "cv"
    summary = cross_validate(run_config(tiny_store, out, epochs=1, cv=2, member=1))
    assert summary == {"member": 1, "of": 2, "out": str(out / "fold-1"), "epochs": 1}
    assert sorted(p.name for p in out.iterdir()) == ["fold-1"]


def test_fold_plans_are_refused_with_one_line(tiny_store: Path, tmp_path: Path) -> None:
    cfg = run_config(tiny_store, tmp_path / "x", cv=2)
    with pytest.raises(SettingError, match=r"^cv 1: need at least 2 folds$"):
        plan_folds(cfg, 1)
    with pytest.raises(SettingError, match=r"^cv 40: only 36 usable training structures$"):
        plan_folds(cfg, 40)
    plan = plan_folds(run_config(tiny_store, tmp_path / "x", cv=3, distance_scale="data"), 3)
    assert [len(f) for f in plan.folds] == [12, 12, 12] and plan.distance_scale > 0
    g, pool = plan.splits.train
    assert plan.distance_scale >= g.max_distance(pool)
