"""The notebook API (`deepergat.load(...).predict(...)`): pymatgen, ASE, files and stores in, a
DataFrame out, with the numbers, statuses and flags of ``deepergat predict`` and
``deepergat-screen``."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import deepergat
from deepergat.cli import main
from deepergat.errors import DeepergatError
from deepergat.io.store import StructureBatch, write_store

pytest.importorskip("pandas")


def structures() -> list[Any]:
    """An ordinary perovskite, one with an element the test model never saw (U, flag 1), two
    atoms 0.05 Å apart (status 6), a cluster without a cell, and ASE's fcc copper."""
    from ase.build import bulk
    from pymatgen.core import Lattice, Molecule, Structure

    frac = [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]]
    return [
        Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"], frac),
        Structure(Lattice.cubic(4.3), ["U", "Ti", "O", "O", "O"], frac),
        Structure(Lattice.cubic(3.9), ["Sr", "Ti"], [[0, 0, 0], [0.0128, 0, 0]]),
        Molecule(["Pt", "Pt", "Pt"], [[0, 0, 0], [2.6, 0, 0], [1.3, 2.2, 0]]),
        bulk("Cu", "fcc", a=3.6),
    ]


def as_store(path: Path, items: list[Any]) -> Path:
    from deepergat.api.model import _as_dict

    write_store(path, StructureBatch.from_structures(
        [{"id": str(k), **_as_dict(s)} for k, s in enumerate(items)]))
    return path


def agree(a: np.ndarray, b: np.ndarray, std: float) -> None:
    both = np.isfinite(a) & np.isfinite(b)
    np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
    np.testing.assert_allclose(a[both], b[both], rtol=0, atol=1e-5 * std + 1e-6)


def test_the_api_predict_and_the_screen_agree_on_every_number_status_and_flag(
        small_model: dict[str, Any], tmp_path: Path) -> None:
    items = structures()
    table = deepergat.load(str(small_model["onnx"])).predict(items)
    assert list(table.columns) == ["id", "formula", "heat_ref", "status", "flags"]
    assert table["id"].tolist() == ["0", "1", "2", "3", "4"]
    assert table["formula"].tolist() == ["SrTiO3", "UTiO3", "SrTi", "Pt", "Cu"]
    assert table["status"].tolist() == [0, 0, 6, 0, 0]
    assert table["flags"].tolist()[:2] == [0, 1]  # U: unseen in training
    store = as_store(tmp_path / "s.h5", items)
    r = CliRunner().invoke(main, ["predict", str(small_model["onnx"]), str(store),
                                  "--csv", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    with open(tmp_path / "p.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    from screen_helpers import read_predictions, run_inprocess

    out = tmp_path / "s.predictions.h5"
    run_inprocess(store, small_model["onnx"], out)
    screened = read_predictions(out)
    std = small_model["std"]
    cli_values = np.array([float(r["heat_ref"]) if r["heat_ref"] else np.nan for r in rows])
    agree(table["heat_ref"].to_numpy(np.float64), cli_values, std)
    agree(table["heat_ref"].to_numpy(np.float64),
          screened["predictions"]["heat_ref"].astype(np.float64), std)
    assert [int(r["status"]) for r in rows] == table["status"].tolist() == \
        screened["status"].tolist()
    assert [int(r["flags"]) for r in rows] == table["flags"].tolist() == \
        screened["flags"].tolist()


def test_inputs_of_every_kind_batches_ids_and_embeddings(
        small_model: dict[str, Any], tmp_path: Path) -> None:
    model = deepergat.load(str(small_model["onnx"]))
    items = structures()
    cif = tmp_path / "srtio3.cif"
    items[0].to(filename=str(cif))
    store = as_store(tmp_path / "s.h5", items)
    one_by_one = model.predict(items, batch_size=1, ids=list("abcde"))
    whole = model.predict(items, ids=list("abcde"), embeddings=True)
    assert whole["id"].tolist() == list("abcde")
    agree(one_by_one["heat_ref"].to_numpy(np.float64), whole["heat_ref"].to_numpy(np.float64),
          small_model["std"])
    emb = np.stack(whole["embedding"].to_list())
    assert emb.shape == (5, model.metadata.embedding_dim) and emb.dtype == np.float32
    assert np.isnan(emb[2]).all() and np.isfinite(emb[0]).all()  # status 6: none
    mixed = model.predict([items[0], cif, store, items[4]])
    assert mixed["id"].tolist() == ["0", "srtio3", "0", "1", "2", "3", "4", "1"]
    assert mixed["formula"].tolist()[:3] == ["SrTiO3", "SrTiO3", "SrTiO3"]
    single = model.predict(items[0])  # one structure, not a list
    assert len(single) == 1
    agree(single["heat_ref"].to_numpy(np.float64), mixed["heat_ref"].to_numpy(np.float64)[:1],
          small_model["std"])


def test_an_ensemble_adds_its_spread(small_ensemble: dict[str, Any]) -> None:
    table = deepergat.load(str(small_ensemble["onnx"])).predict(structures()[:3])
    assert list(table.columns) == ["id", "formula", "heat_ref", "heat_ref_std", "status",
                                   "flags"]
    assert np.isfinite(table["heat_ref_std"][:2]).all() and np.isnan(table["heat_ref_std"][2])


def test_what_it_cannot_predict_is_one_clear_error(small_model: dict[str, Any],
                                                  tmp_path: Path) -> None:
    from pymatgen.core import Lattice, Structure

    model = deepergat.load(str(small_model["onnx"]))
    for bad, message in [
        ([42], "cannot predict a int"),
        (tmp_path / "absent.cif", "no such file"),
        ([Structure(Lattice.cubic(4), [{"Sr": 0.5, "Ba": 0.5}], [[0, 0, 0]])], "disordered"),
    ]:
        with pytest.raises(DeepergatError, match=message):
            model.predict(bad)
    with pytest.raises(DeepergatError, match=r"ids: 1 given for 2"):
        model.predict(structures()[:2], ids=["a"])
    with pytest.raises(DeepergatError, match="no such model file"):
        deepergat.load("no-such-model")
