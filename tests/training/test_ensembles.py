"""Training ensembles end to end: of folds and of seeds, members trained one at a time, the
local error term from out-of-fold errors (the oof.csv checks), and the ensemble through
predict, evaluate, info and export."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from model_helpers import perov_structures
from train_helpers import run_config

from deepergat.cli import main
from deepergat.errors import DeepergatError
from deepergat.nn.checkpoint import load_checkpoint
from deepergat.training.config import TrainConfig
from deepergat.training.cv import cross_validate
from deepergat.training.ensembles import train_ensemble
from deepergat.training.splits import make_splits


def _cfg(store: Path, out: Path, **kw: object) -> TrainConfig:
    """An ensemble run: 2 epochs, a 35 % validation split to calibrate on, 15 % test."""
    return run_config(store, out, **{"val_fraction": 0.35, "test_fraction": 0.15, **kw})


@pytest.fixture(scope="module")
def fold_ensemble(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from deepergat.io.store import StructureBatch, write_store

    root = tmp_path_factory.mktemp("ens")
    store = root / "perov.h5"
    write_store(store, StructureBatch.from_structures(perov_structures(120)),
                units={"heat_ref": "eV"})
    out = root / "run"
    summary = train_ensemble(_cfg(store, out, ensemble=3, graph="minimum-image",
                                  distance_scale="data"))
    return {"store": store, "out": out, "summary": summary}


def test_train_ensemble_of_folds(fold_ensemble: dict) -> None:
    out, summary = fold_ensemble["out"], fold_ensemble["summary"]
    assert json.loads((out / "ensemble_metrics.json").read_text()) == summary
    ck = load_checkpoint(out / "ensemble.ckpt")
    assert ck.data["model"]["members"] == 3 and ck.data["graph"]["construction"] == "minimum-image"
    # the members are the folds' kept models, weights unchanged
    for k, member in enumerate(ck.model.members):
        fold = load_checkpoint(out / f"fold-{k}" / "best.ckpt")
        for name, value in fold.model.state_dict().items():
            assert torch.equal(member.state_dict()[name], value), (k, name)
    cal = ck.data["calibration"]
    assert cal["n"] == summary["validation"]["n"] == summary["cv"]["val_n"] == 42
    assert summary["validation"]["coverage_2sigma"] >= 0.95  # fitted there
    assert float(ck.model.std_scale[0]) == pytest.approx(cal["std_scale"][0])
    # the validation split is shared and trains no member; the test split neither
    val = set(json.loads((out / "fold-0" / "splits.json").read_text())["val"])
    for k in range(3):
        split = json.loads((out / f"fold-{k}" / "splits.json").read_text())
        assert set(split["val"]) == val and not (set(split["train"]) & val)
    assert summary["test"]["n"] == 18 and 0 <= summary["test"]["coverage_2sigma"] <= 1
    assert (out / "oof.csv").is_file() and summary["cv"]["folds"] == 3
    # a fold ensemble's std has its local error term from its own out-of-fold errors
    assert summary["local_error"]["references"] == summary["cv"]["n"]
    assert ck.model.neighbors == min(30, summary["cv"]["n"]) == cal["local_neighbors"]
    assert cal["local_weight"][0] == pytest.approx(float(ck.model.local_weight[0]))
    assert cal["local_references"] == len(ck.model.reference_errors) == summary["cv"]["n"]


def test_ensemble_predict_evaluate_export(fold_ensemble: dict, tmp_path: Path) -> None:
    out, store = fold_ensemble["out"], fold_ensemble["store"]
    runner = CliRunner()
    ckpt = str(out / "ensemble.ckpt")
    r = runner.invoke(main, ["predict", ckpt, str(store), "--csv", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "heat_ref", "heat_ref_std", "status", "flags"] and len(rows) == 121
    assert all(float(row[2]) > 0 for row in rows[1:])
    r = runner.invoke(main, ["evaluate", ckpt, "--data", str(store), "--target", "heat_ref",
                             "--json", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "e.json").read_text())
    for key in ("coverage_1sigma", "coverage_2sigma", "spearman_std_abs_error"):
        assert key in metrics
    assert "spread:" in r.output
    from deepergat import export

    r = runner.invoke(main, ["info", ckpt])
    assert r.exit_code == 0 and "local error term: out-of-fold errors of" in r.output
    # every format carries the local error term and passes its parity check
    result = export.export_model(ckpt, tmp_path / "exp", formats=["onnx", "torchscript", "pt2"],
                                 n_check=export.exporter.MIN_CHECK)
    assert [f.path.suffix for f in result.files] == [".onnx", ".pt", ".pt2"]
    onnx_file = result.files[0].path
    import onnx

    proto = onnx.load(str(onnx_file))
    assert [o.name for o in proto.graph.output] == ["prediction", "embedding", "std"]
    p = export.load(onnx_file, device="cpu")
    assert p.has_std and p.members == 3 and p.graph == "minimum-image"
    meta = p.metadata
    assert meta.graph.translations == {"translation_tolerance": 0.25, "translation_max_atoms": 256}
    assert meta.calibration is not None and "local_error" in meta.model
    assert list(meta.calibration.std_scale) == load_checkpoint(ckpt).data["calibration"][
        "std_scale"]
    with pytest.raises(DeepergatError, match="graph 'periodic' given, the model was trained"):
        export.load(onnx_file, device="cpu", graph="periodic")
    # the exported file gives the checkpoint's numbers, std included
    r2 = runner.invoke(main, ["predict", str(onnx_file), str(store),
                              "--csv", str(tmp_path / "q.csv")])
    assert r2.exit_code == 0, r2.output
    with open(tmp_path / "q.csv", newline="") as f:
        again = list(csv.reader(f))
    assert [r[0] for r in again] == [r[0] for r in rows]
    np.testing.assert_allclose(np.array([r[1:3] for r in again[1:]], float),
                               np.array([r[1:3] for r in rows[1:]], float), rtol=1e-4, atol=1e-5)


def test_ensemble_of_seeds_and_its_errors(tiny_store: Path, tmp_path: Path) -> None:
    summary = train_ensemble(_cfg(tiny_store, tmp_path / "s", ensemble=2, members="seeds",
                                  epochs=1))
    ck = load_checkpoint(tmp_path / "s" / "ensemble.ckpt")
    assert ck.data["model"]["members"] == 2 and "cv" not in summary
    splits = [json.loads((tmp_path / "s" / f"member-{k}" / "splits.json").read_text())
              for k in range(2)]
    for part in ("train", "val"):  # one split, two seeds
        assert splits[0][part] == splits[1][part]
    assert [s["seed"] for s in splits] == [0, 1]
    assert [m["seed"] for m in ck.data["extra"]["members"]] == [0, 1]
    with pytest.raises(DeepergatError, match=r"^cv 3 and ensemble 2 differ; give one of them$"):
        train_ensemble(_cfg(tiny_store, tmp_path / "x", ensemble=2, cv=3))
    with pytest.raises(DeepergatError, match="ensemble calibrates its spread on the validation "
                                             "split, which no member trains on: give "
                                             "val_fraction > 0"):
        train_ensemble(_cfg(tiny_store, tmp_path / "y", ensemble=2, val_fraction=0.0,
                            lr_monitor="train", keep="last"))
    with pytest.raises(DeepergatError, match="no validation structures, but lr_monitor"):
        train_ensemble(_cfg(tiny_store, tmp_path / "y", ensemble=2, val_fraction=0.0,
                            members="seeds"))
    with pytest.raises(DeepergatError, match="at least 2 members"):
        train_ensemble(_cfg(tiny_store, tmp_path / "z", ensemble=1))


@pytest.mark.parametrize("kind", ["seeds", "folds"])
def test_members_trained_one_at_a_time_assemble_into_the_same_ensemble(
        tiny_store: Path, tmp_path: Path, kind: str) -> None:
    """--member I trains one member (a SLURM array task, one core each); the run without it and
    with --resume reads them back: the ensemble equals one trained in one go."""
    whole = tmp_path / "whole"
    train_ensemble(_cfg(tiny_store, whole, ensemble=2, members=kind, epochs=1))
    parts = tmp_path / "parts"
    for i in (1, 0):
        summary = train_ensemble(_cfg(tiny_store, parts, ensemble=2, members=kind, epochs=1,
                                      member=i))
        assert summary["member"] == i and summary["of"] == 2
        assert not (parts / "ensemble.ckpt").exists() and not (parts / "oof.csv").exists()
    train_ensemble(_cfg(tiny_store, parts, ensemble=2, members=kind, epochs=1, resume=True))
    a, b = load_checkpoint(whole / "ensemble.ckpt"), load_checkpoint(parts / "ensemble.ckpt")
    for name, value in a.model.state_dict().items():
        assert torch.equal(b.model.state_dict()[name], value), name
    with pytest.raises(DeepergatError, match=r"^member 2: give 0 to 1 "):
        _cfg(tiny_store, parts, ensemble=2, member=2)
    with pytest.raises(DeepergatError, match=r"^member trains one member"):
        _cfg(tiny_store, parts, member=0)


def test_a_seed_ensemble_takes_its_local_term_from_a_cross_validation(
        tiny_store: Path, tmp_path: Path) -> None:
    """``--oof`` gives a seed ensemble the out-of-fold errors of a --cv run on the same split;
    a file naming a validation structure, or not an oof.csv, is refused with one line."""
    cross_validate(_cfg(tiny_store, tmp_path / "cv", cv=2, epochs=1, test_fraction=None))
    oof = tmp_path / "cv" / "oof.csv"
    n = len(oof.read_text().splitlines()) - 1
    r = CliRunner().invoke(main, [
        "train", "--data", str(tiny_store), "--target", "heat_ref", "--out",
        str(tmp_path / "s"), "--layers", "2", "--epochs", "1", "--batch-size", "16",
        "--val-fraction", "0.35", "--ensemble", "2", "--members", "seeds", "--device", "cpu",
        "--cache-dir", str(tmp_path / "cache"), "--oof", str(oof), "--local-neighbors", "5"])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "s" / "ensemble_metrics.json").read_text())
    assert summary["local_error"] == {"oof": str(oof), "references": n, "neighbors": 5}
    ck = load_checkpoint(tmp_path / "s" / "ensemble.ckpt")
    assert ck.data["model"]["local_error"]["references"] == n
    assert "local_weight" in ck.data["calibration"]
    base = dict(test_fraction=None, ensemble=2, members="seeds", epochs=1, resume=True)
    none = train_ensemble(_cfg(tiny_store, tmp_path / "s", **base, oof=str(oof),
                               local_neighbors=0))
    assert "local_error" not in none and load_checkpoint(
        tmp_path / "s" / "ensemble.ckpt").model.neighbors == 0
    val = json.loads((tmp_path / "s" / "member-0" / "splits.json").read_text())["val"][0]
    leaky = tmp_path / "leaky.csv"
    leaky.write_text(oof.read_text() + f"{val},1.0,1.5\n")
    with pytest.raises(DeepergatError, match=f"structure '{val}' is in this run's validation "
                                             "split") as err:
        train_ensemble(_cfg(tiny_store, tmp_path / "s", **base, oof=str(leaky)))
    assert "\n" not in str(err.value)
    header, *lines = oof.read_text().splitlines()
    first_id = lines[0].split(",")[0]
    for name, text, match in (
            ("wrong", "id,heat_ref,status\n", "header must be id,true,predicted"),
            ("empty", header + "\n", "0 out-of-fold predictions"),
            ("twice", "\n".join([header, *lines, lines[0]]) + "\n",
             f"structure '{first_id}' appears more than once"),
            ("nan", "\n".join([header, f"{first_id},nan,1.0", *lines[1:]]) + "\n",
             "must be finite numbers")):
        bad = tmp_path / f"{name}.csv"
        bad.write_text(text)
        with pytest.raises(DeepergatError, match=match):
            train_ensemble(_cfg(tiny_store, tmp_path / "s", **base, oof=str(bad)))
    # a structure of the test split is refused before any member trains
    tested = _cfg(tiny_store, tmp_path / "t", **{**base, "test_fraction": 0.15})
    test_id = make_splits(tested).test
    leak = tmp_path / "test-leak.csv"
    leak.write_text(f"{header}\n{test_id[0].ids[test_id[1][0]]},1.0,1.5\n{lines[0]}\n")
    with pytest.raises(DeepergatError, match="in this run's test split"):
        train_ensemble(tested.replace(oof=str(leak)))
    assert not (tmp_path / "t").exists()
    # a member run never reads the file (a SLURM array may start before the CV has finished)
    member = train_ensemble(_cfg(tiny_store, tmp_path / "m", **{**base, "resume": False},
                                 oof=str(tmp_path / "not-yet.csv"), member=0))
    assert member["member"] == 0
    with pytest.raises(DeepergatError, match=r"^oof gives an ensemble its local error term: "
                                             r"give ensemble K$"):
        _cfg(tiny_store, tmp_path / "s", oof=str(oof))
