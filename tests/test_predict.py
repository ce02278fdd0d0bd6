"""`deepergat evaluate`, `predict` and `models` with a tiny trained checkpoint."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from model_helpers import perov_structures

from deepergat import predict as predict_mod
from deepergat.cli import main
from deepergat.store import StructureBatch, write_store
from deepergat.train import TrainConfig, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a 30-structure labelled store, a checkpoint trained on it for one epoch)."""
    root = tmp_path_factory.mktemp("predict")
    store = root / "s.h5"
    write_store(store, StructureBatch.from_structures(perov_structures(30)),
                units={"heat_ref": "eV"})
    train(TrainConfig(data=str(store), target="heat_ref", out=str(root / "run"), layers=2,
                      epochs=1, batch_size=10, model={"dim": 16}, device="cpu",
                      cache_dir=str(root)))
    return store, root / "run" / "best.ckpt"


def test_evaluate_prints_and_writes_metrics(trained: tuple[Path, Path], tmp_path: Path) -> None:
    store, ckpt = trained
    plot, js = tmp_path / "parity.png", tmp_path / "m.json"
    r = CliRunner().invoke(main, ["evaluate", str(ckpt), "--data", str(store), "--target",
                                  "heat_ref", "--plot", str(plot), "--json", str(js)])
    assert r.exit_code == 0, r.output
    assert "MAE" in r.output and "RMSE" in r.output and "R²" in r.output
    metrics = json.loads(js.read_text())
    assert set(metrics) == {"target", "units", "n", "mae", "rmse", "r2"}
    assert metrics["n"] == 30 and metrics["units"] == "eV"
    assert plot.stat().st_size > 1000
    res = predict_mod.evaluate(ckpt, store, "heat_ref")
    assert res.mae == pytest.approx(np.abs(res.y_pred - res.y_true).mean())
    assert res.rmse >= res.mae
    r = CliRunner().invoke(main, ["evaluate", str(ckpt), "--data", str(store), "--target", "x"])
    assert r.exit_code == 2 and "predicts heat_ref, not 'x'" in r.output


def test_predict_files_and_stores_with_status_rows(trained: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    from pymatgen.core import Lattice, Structure

    store, ckpt = trained
    cif = tmp_path / "a.cif"
    s = perov_structures(1)[0]
    Structure(Lattice(s["lattice"]), s["atomic_numbers"].tolist(), s["positions"],
              coords_are_cartesian=True).to(filename=str(cif))
    bad = tmp_path / "overlap.cif"
    Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.001, 0, 0]]).to(filename=str(bad))
    out = tmp_path / "p.csv"
    r = CliRunner().invoke(main, ["predict", str(ckpt), str(cif), str(bad), str(store),
                                  "--csv", str(out)])
    assert r.exit_code == 0, r.output
    rows = list(csv.reader(io.StringIO(out.read_text())))
    assert rows[0] == ["id", "heat_ref", "status"]
    assert rows[1][0] == "a" and rows[1][2] == "0" and float(rows[1][1])
    assert rows[2] == ["overlap", "", "6"]
    assert len(rows) == 3 + 30
    # the file and the same structure from the store agree
    from_store = {row[0]: row for row in rows[3:]}
    assert float(from_store[s["id"]][1]) == pytest.approx(float(rows[1][1]), abs=1e-5)
    assert "status 6" in r.output  # reported on stderr (mixed into the runner's output)
    r = CliRunner().invoke(main, ["predict", str(ckpt), str(tmp_path / "missing.cif")])
    assert r.exit_code == 2 and "no such file" in r.output


def test_bundled_models_by_name(trained: tuple[Path, Path], tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    store, ckpt = trained
    folder = tmp_path / "models" / "tiny-heat"
    folder.mkdir(parents=True)
    (folder / "best.ckpt").write_bytes(ckpt.read_bytes())
    (folder / "card.md").write_text("# tiny-heat\nA test model.\n")
    from deepergat.export import resolve

    monkeypatch.setattr(resolve, "bundled_dir", lambda: tmp_path / "models")
    # without its ONNX file a bundled name predicts with its checkpoint; export uses it anyway
    assert resolve.resolve_model("tiny-heat") == folder / "best.ckpt"
    assert resolve.resolve_model("tiny-heat", prefer="checkpoint") == folder / "best.ckpt"
    (folder / "model.onnx").write_bytes(b"an ONNX file")
    assert resolve.resolve_model("tiny-heat") == folder / "model.onnx"  # one rule everywhere
    (folder / "model.onnx").unlink()
    with pytest.raises(Exception, match="bundled: tiny-heat"):
        resolve.resolve_model("nope")
    # a run folder is its ensemble, else its kept model
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.ckpt").write_bytes(ckpt.read_bytes())
    assert resolve.resolve_model(run) == run / "best.ckpt"
    (run / "ensemble.ckpt").write_bytes(ckpt.read_bytes())
    assert resolve.resolve_model(run) == run / "ensemble.ckpt"
    r = CliRunner().invoke(main, ["models"])
    assert r.exit_code == 0 and "== tiny-heat" in r.output and "A test model." in r.output
    r = CliRunner().invoke(main, ["predict", "tiny-heat", str(store)])
    assert r.exit_code == 0 and r.output.splitlines()[0] == "id,heat_ref,status"
    assert torch.load(folder / "best.ckpt", weights_only=True)["targets"] == ["heat_ref"]


def test_shipped_bundled_model_card() -> None:
    from deepergat.export.resolve import bundled_dir, bundled_models

    for name in bundled_models():
        card = (bundled_dir() / name / "card.md").read_text()
        assert "test MAE" in card, name


def test_a_minimum_image_model_warns_that_its_prediction_depends_on_the_cell(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from deepergat.checkpoint import save_checkpoint
    from deepergat.model import DeeperGATGNN

    for graph, warned in (("minimum-image", True), ("periodic", False)):
        path = tmp_path / f"{graph}.ckpt"
        save_checkpoint(path, DeeperGATGNN(dim=8, layers=1, graph=graph), targets=["heat_ref"],
                        units=["eV"], elements=[8, 22])
        caplog.clear()
        with caplog.at_level("WARNING", logger="deepergat.predict"):
            predict_mod.load_predictor(path)
        assert ("depends on the cell chosen" in caplog.text) is warned
