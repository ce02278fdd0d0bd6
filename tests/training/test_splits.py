"""Splits: fractions fixed by the seed, separate stores, target checks, and the one rule for a
run without validation structures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from model_helpers import perov_structures
from train_helpers import run_config

from deepergat.errors import DeepergatError, SettingError
from deepergat.io.store import StructureBatch, write_store
from deepergat.training.cv import cross_validate
from deepergat.training.splits import make_splits, needs_validation, require_validation
from deepergat.training.trainer import train


def test_fractions_cut_the_shuffled_store_by_the_seed(tiny_store: Path, tmp_path: Path) -> None:
    splits = make_splits(run_config(tiny_store, tmp_path / "run"))
    ids = splits.ids()
    assert [len(ids[k]) for k in ("train", "val", "test")] == [36, 12, 12]
    assert len(set().union(*map(set, ids.values()))) == 60  # a partition of the store
    again = make_splits(run_config(tiny_store, tmp_path / "run")).ids()
    other = make_splits(run_config(tiny_store, tmp_path / "run", seed=1)).ids()
    assert again == ids and other["test"] != ids["test"]
    # the default: 10 % validation, no test split
    default = make_splits(run_config(tiny_store, tmp_path / "run", val_fraction=None,
                                     test_fraction=None))
    assert len(default.val[1]) == 6 and default.test is None


def test_separate_validation_and_test_stores(tiny_store: Path, tmp_path: Path) -> None:
    val, test = tmp_path / "val.h5", tmp_path / "test.h5"
    structures = perov_structures(75)
    write_store(val, StructureBatch.from_structures(structures[60:68]), units={"heat_ref": "eV"})
    write_store(test, StructureBatch.from_structures(structures[68:75]),
                units={"heat_ref": "eV"})
    result = train(run_config(tiny_store, tmp_path / "run", epochs=1, val_fraction=None,
                              test_fraction=None, val_data=str(val), test_data=str(test)))
    import json

    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (60, 8, 7)
    assert result.test_count == 7
    with pytest.raises(SettingError, match="give either val_data or val_fraction") as err:
        make_splits(run_config(tiny_store, tmp_path / "x", val_data=str(val)))
    assert err.value.render({"val_data": "--val-data", "val_fraction": "--val-fraction"}) == \
        "give either --val-data or --val-fraction, not both"


@pytest.mark.parametrize("setting", ["val_fraction", "test_fraction"])
def test_fractions_must_lie_in_0_1(tiny_store: Path, tmp_path: Path, setting: str) -> None:
    with pytest.raises(SettingError, match=rf"^{setting} 1.0: must lie in \[0, 1\)$") as err:
        make_splits(run_config(tiny_store, tmp_path / "x", **{setting: 1.0}))
    assert err.value.settings == [setting]


def test_targets_must_exist_and_be_finite(tiny_store: Path, tmp_path: Path) -> None:
    with pytest.raises(DeepergatError, match=r"no target 'gap'; available: heat_ref"):
        make_splits(run_config(tiny_store, tmp_path / "a", target="gap"))
    bare = tmp_path / "bare.h5"
    structures = [{k: v for k, v in s.items() if k != "targets"} for s in perov_structures(10)]
    write_store(bare, StructureBatch.from_structures(structures))
    with pytest.raises(DeepergatError, match="has no targets"):
        make_splits(run_config(bare, tmp_path / "b"))
    nan = tmp_path / "nan.h5"
    structures = [dict(s, targets={"heat_ref": np.nan if k in (2, 7) else 1.0})
                  for k, s in enumerate(perov_structures(10))]
    write_store(nan, StructureBatch.from_structures(structures))
    with pytest.raises(DeepergatError, match=r"NaN or infinite for 2 structures \(ids 3409"):
        make_splits(run_config(nan, tmp_path / "c"))


def test_an_empty_split_is_refused(tiny_store: Path, tmp_path: Path) -> None:
    with pytest.raises(DeepergatError, match=r"the train split is empty \(60 usable"):
        make_splits(run_config(tiny_store, tmp_path / "x", val_fraction=0.5, test_fraction=0.5))
    # a fraction too small for one structure is no test split at all
    assert make_splits(run_config(tiny_store, tmp_path / "x", test_fraction=0.001)).test is None


def test_the_one_rule_for_a_run_without_validation(tiny_store: Path, tmp_path: Path) -> None:
    """A recipe that looks at the validation split (the plateau schedule on the validation
    MAE, the best epoch kept, an early stop) needs one; a single run and a cross-validation
    say so in the same words, before anything trains."""
    looks = [dict(), dict(lr_monitor="train"), dict(lr_monitor="train", keep="last",
                                                   early_stop=3)]
    for recipe in looks:
        cfg = run_config(tiny_store, tmp_path / "a", val_fraction=0.0, **recipe)
        assert needs_validation(cfg)
        with pytest.raises(SettingError, match="no validation structures, but lr_monitor"):
            make_splits(cfg)
    for blind in (dict(lr_monitor="train", keep="last"),
                  dict(lr_schedule="cosine", keep="last")):
        cfg = run_config(tiny_store, tmp_path / "a", val_fraction=0.0, **blind)
        assert not needs_validation(cfg)
        require_validation(cfg, make_splits(cfg))
    with pytest.raises(SettingError) as single:
        train(run_config(tiny_store, tmp_path / "b", val_fraction=0.001))
    with pytest.raises(SettingError) as cv:
        cross_validate(run_config(tiny_store, tmp_path / "c", val_fraction=0.0, cv=2))
    assert str(single.value) == str(cv.value) == (
        f"{tiny_store}: no validation structures, but lr_monitor is 'val' and keep is 'best'; "
        "give val_fraction > 0 (or val_data), or set lr_monitor: train and keep: last")
    assert not (tmp_path / "c").exists()
    with pytest.raises(SettingError) as stop:
        make_splits(run_config(tiny_store, tmp_path / "d", val_fraction=0.0,
                               lr_monitor="train", keep="last", early_stop=3))
    assert stop.value.render({"early_stop": "--early-stop", "val_fraction": "--val-fraction",
                              "val_data": "--val-data"}).endswith(
        "and early_stop is 3; give --val-fraction > 0 (or --val-data), or set lr_monitor: "
        "train and keep: last and no --early-stop")


@pytest.mark.parametrize(("mode", "value"), [("single", 1e308), ("cv", -1e31),
                                           ("ensemble", 3e38), ("single", 2e30)])
def test_targets_beyond_what_a_float32_model_scales_are_refused_before_training(
        tmp_path: Path, value: float, mode: str) -> None:
    """A 1e308 target overflowed the target scaling: NaN metrics, exit 0 and a best.ckpt
    that was never written. Every mode refuses such a store before anything trains."""
    from deepergat.training.ensembles import train_ensemble

    store = tmp_path / "huge.h5"
    structures = [dict(s, targets={"heat_ref": value if k == 4 else s["targets"]["heat_ref"]})
                  for k, s in enumerate(perov_structures(40))]
    write_store(store, StructureBatch.from_structures(structures))
    out = tmp_path / "run"
    run = {"single": lambda: train(run_config(store, out)),
           "cv": lambda: cross_validate(run_config(store, out, cv=2)),
           "ensemble": lambda: train_ensemble(run_config(store, out, ensemble=2,
                                                         members="seeds"))}[mode]
    with pytest.raises(DeepergatError, match=r"target 'heat_ref' is beyond ±1e\+30 for 1 "
                                             r"structures \(ids \d+; largest"):
        run()
    assert not list(out.rglob("*.ckpt")) if out.exists() else True


def test_targets_up_to_the_bound_train(tmp_path: Path) -> None:
    store = tmp_path / "big.h5"
    structures = [dict(s, targets={"heat_ref": s["targets"]["heat_ref"] * 1e29})
                  for s in perov_structures(30)]
    write_store(store, StructureBatch.from_structures(structures))
    result = train(run_config(store, tmp_path / "run", epochs=1))
    assert (tmp_path / "run" / "best.ckpt").is_file() and np.isfinite(result.best_val_mae)
