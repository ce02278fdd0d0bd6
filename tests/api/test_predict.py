"""`deepergat evaluate`, `predict` and `models` with a tiny trained checkpoint."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from model_helpers import perov_structures
from structure_helpers import damaged_store

from deepergat.api import predict as predict_mod
from deepergat.cli import main
from deepergat.io.store import StructureBatch, write_store
from deepergat.training.config import TrainConfig
from deepergat.training.trainer import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a 30-structure labelled store, a checkpoint trained on it for one epoch)."""
    root = tmp_path_factory.mktemp("predict")
    store = root / "s.h5"
    write_store(store, StructureBatch.from_structures(perov_structures(30)),
                units={"heat_ref": "eV"})
    train(TrainConfig.from_dict(dict(data=str(store), target="heat_ref", out=str(root / "run"),
                                     layers=2, epochs=1, batch_size=10, model={"dim": 16},
                                     device="cpu", cache_dir=str(root))))
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
    from deepergat.api.evaluate import evaluate

    res = evaluate(ckpt, store, "heat_ref")
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
    assert rows[0] == ["id", "heat_ref", "status", "flags"]
    assert rows[1][0] == "a" and rows[1][2:] == ["0", "0"] and float(rows[1][1])
    assert rows[2] == ["overlap", "", "6", "1"]  # Na and Cl: elements the model never saw
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
    assert r.exit_code == 0 and r.output.splitlines()[0] == "id,heat_ref,status,flags"
    assert torch.load(folder / "best.ckpt", weights_only=True)["targets"] == ["heat_ref"]


def test_shipped_bundled_model_card() -> None:
    from deepergat.export.resolve import bundled_dir, bundled_models

    for name in bundled_models():
        card = (bundled_dir() / name / "card.md").read_text()
        assert "test MAE" in card, name
    listed = json.loads(CliRunner().invoke(main, ["models", "--json"]).output)
    assert set(listed) == set(bundled_models())
    for entry in listed.values():  # the checkpoint it names is the one it ships
        assert Path(entry["path"]).is_file() and Path(entry["onnx"]).is_file()


def test_a_minimum_image_model_warns_that_larger_primitive_cells_are_new_graphs(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from deepergat.nn.checkpoint import save_checkpoint
    from deepergat.nn.deepergatgnn import DeeperGATGNN

    for graph, warned in (("minimum-image", True), ("periodic", False)):
        path = tmp_path / f"{graph}.ckpt"
        save_checkpoint(path, DeeperGATGNN(dim=8, layers=1, graph=graph), targets=["heat_ref"],
                        units=["eV"], elements=[8, 22])
        caplog.clear()
        with caplog.at_level("WARNING", logger="deepergat.api.predict"):
            predict_mod.load_predictor(path)
        assert ("primitive cell is larger" in caplog.text) is warned


# --------------------------------------------------- predict's output and messages (issue 10)


def _store(path: Path, n: int = 20) -> Path:
    from deepergat.export.samples import parity_structures

    write_store(path, parity_structures(n))
    return path


def _one_line(r: Any, *needles: str) -> str:
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_predict_csv_replaces_out_only_when_complete(small_model: dict[str, Any],
                                                     tmp_path: Path) -> None:
    """--csv OUT is written beside OUT and renamed at the end: an error leaves an existing
    OUT as it was and no temporary file (it truncated OUT to its header); a killed run's
    temporary file is removed by the next run."""
    import socket

    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "p.csv"
    out.write_text("earlier results\n")
    good = _store(tmp_path / "s.h5")
    for dataset in ("positions", "lattice", "atomic_numbers", "ids"):
        bad = damaged_store(good, tmp_path / f"damaged-{dataset}.h5", dataset)
        r = CliRunner().invoke(main, ["predict", str(small_model["onnx"]), str(bad), "--csv",
                                      str(out)])
        _one_line(r, bad.name, "damaged structure store", dataset)
        assert out.read_text() == "earlier results\n"
        assert [p.name for p in folder.iterdir()] == ["p.csv"]
    host = socket.gethostname().replace("-", "_") or "host"
    stale = folder / f".p.csv.tmp-{host}-{_dead_pid()}"
    stale.write_text("id,heat_ref,status\n")
    r = CliRunner().invoke(main, ["predict", str(small_model["onnx"]), str(good), "--csv",
                                  str(out)])
    assert r.exit_code == 0, r.output
    rows = list(csv.reader(io.StringIO(out.read_text())))
    assert rows[0] == ["id", "heat_ref", "status", "flags"] and len(rows) == 21
    assert [p.name for p in folder.iterdir()] == ["p.csv"]


def test_predict_to_stdout_prints_nothing_before_an_early_error(
        small_model: dict[str, Any], tmp_path: Path) -> None:
    """Without --csv the model, the inputs and the first block are read before the header is
    printed: a damaged store prints one line on stderr and nothing on stdout."""
    bad = damaged_store(_store(tmp_path / "s.h5"), tmp_path / "damaged.h5")
    r = CliRunner().invoke(main, ["predict", str(small_model["onnx"]), str(bad)])
    _one_line(r, "damaged.h5: damaged structure store")
    assert r.stdout == ""


def test_predict_names_what_it_skipped(small_model: dict[str, Any], tmp_path: Path) -> None:
    """Each skipped file or CIF block is named with its reason (a few, then "and N more"),
    not only counted."""
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter

    nacl = str(CifWriter(Structure(Lattice.cubic(4.0), ["Na", "Cl"],
                                   [[0, 0, 0], [0.5, 0.5, 0.5]])))
    blocks = [nacl.replace("data_NaCl", f"data_s{k}") for k in range(3)]
    blocks[1] = blocks[1].replace("_cell_length_a   4.00000000", "_cell_length_a   0.0")
    multi = tmp_path / "multi.cif"
    multi.write_text("\n".join(blocks))
    r = CliRunner().invoke(main, ["predict", str(small_model["onnx"]), str(multi)])
    assert r.exit_code == 0, r.output
    assert [row.split(",")[0] for row in r.stdout.splitlines()] == ["id", "multi_0", "multi_2"]
    assert "skipped 1 input that could not be read: " in r.stderr
    assert f"{multi}:block 1 (data_s1) (" in r.stderr

    folder = tmp_path / "cifs"
    folder.mkdir()
    (folder / "good.cif").write_text(nacl)
    for k in range(7):
        (folder / f"bad{k}.cif").write_text("not a CIF\n")
    r = CliRunner().invoke(main, ["predict", str(small_model["onnx"]), str(folder)])
    assert r.exit_code == 0, r.output
    line = next(x for x in r.stderr.splitlines() if x.startswith("skipped"))
    assert line.startswith("skipped 7 inputs that could not be read: 7 unreadable: "), line
    assert all(f"bad{k}.cif (" in line for k in range(5)), line
    assert "bad5.cif" not in line and line.endswith("; and 2 more"), line


def test_predict_messages_name_the_users_files(small_model: dict[str, Any],
                                               tmp_path: Path) -> None:
    """A truncated store, a file that holds no structure and files of the same name: one
    line naming the user's file (never the temporary store predict packs files into) and
    options predict has (--id-from path)."""
    from pymatgen.core import Lattice, Structure

    model = str(small_model["onnx"])
    store = _store(tmp_path / "s.h5")
    cut = tmp_path / "cut.h5"
    cut.write_bytes(store.read_bytes()[:1000])
    _one_line(CliRunner().invoke(main, ["predict", model, str(cut)]),
              f"{cut}: not a readable HDF5 file (truncated")
    bad = tmp_path / "bad.cif"
    bad.write_text("not a CIF\n")
    line = _one_line(CliRunner().invoke(main, ["predict", model, str(bad)]),
                     "no structure could be read", f"{bad} (")
    assert "deepergat-predict-" not in line and "inputs.h5" not in line

    nacl = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    for run in ("a", "b"):
        (tmp_path / "runs" / run).mkdir(parents=True)
        nacl.to(filename=str(tmp_path / "runs" / run / "POSCAR"), fmt="poscar")
    pattern = str(tmp_path / "runs" / "*" / "POSCAR")
    line = _one_line(CliRunner().invoke(main, ["predict", model, pattern]),
                     "duplicate id 'POSCAR'", "pass --id-from path")
    assert "deepergat-predict-" not in line
    r = CliRunner().invoke(main, ["predict", model, pattern, "--id-from", "path"])
    assert r.exit_code == 0, r.output
    ids = [row.split(",")[0] for row in r.stdout.splitlines()[1:]]
    assert ids == [str(tmp_path / "runs" / run / "POSCAR") for run in ("a", "b")]


# --------------------------------------------------- flags and statuses as the screen's (issue 25)


def test_predict_reports_the_flags_a_screen_writes(screen_store: Path,
                                                   small_model: dict[str, Any],
                                                   reference_predictions: Path) -> None:
    """Every path that predicts reports the same flags: ``predict_inputs`` on the screen's
    store gives the flags (and statuses) the screen wrote, unseen elements included."""
    from screen_helpers import read_predictions

    _, rows = predict_inputs_rows(small_model["onnx"], [screen_store])
    p = read_predictions(reference_predictions)
    assert [r.id for r in rows] == p["ids"]
    assert [r.flags for r in rows] == p["flags"].tolist()
    assert [r.status for r in rows] == p["status"].tolist()
    assert sum(r.flags == 1 for r in rows) >= 3  # U-bearing and out-of-table candidates


def predict_inputs_rows(model: Any, inputs: list[Path], **kw: Any) -> tuple[Any, list[Any]]:
    predictor, rows = predict_mod.predict_inputs(model, inputs, **kw)
    return predictor, list(rows)


def _supercell(reps: int, z: tuple[int, ...] = (38, 22, 8, 8, 8), a: float = 3.9
               ) -> dict[str, Any]:
    frac = np.array([[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]])
    shifts = np.stack(np.meshgrid(*[np.arange(reps)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return {"id": f"x{reps}", "lattice": np.eye(3) * a * reps, "pbc": (True, True, True),
            "atomic_numbers": list(z) * len(shifts),
            "positions": (frac[None] + shifts[:, None]).reshape(-1, 3) * a}


def test_minimum_image_supercells_above_the_translation_limit_are_flagged(
        tmp_path: Path) -> None:
    """A minimum-image model's supercells above its ``translation_max_atoms`` (256) are not
    tested for translations, so they need not predict as their cell: flag bit 1 says so in
    the CSV (a periodic model, whose graphs do not depend on the cell, never sets it)."""
    from deepergat.nn.checkpoint import save_checkpoint
    from deepergat.nn.deepergatgnn import DeeperGATGNN

    store = tmp_path / "supercells.h5"
    cells = [_supercell(1), _supercell(3), _supercell(4)]  # 5, 135 and 320 atoms
    nacl = {"id": "nacl", "lattice": np.eye(3) * 5.64, "pbc": (True, True, True),
            "atomic_numbers": [11, 17], "positions": [[0, 0, 0], [2.82, 2.82, 2.82]]}
    write_store(store, StructureBatch.from_structures([*cells, nacl]))
    want = {"minimum-image": ["0", "0", "2", "1"], "periodic": ["0", "0", "0", "1"]}
    for graph, flags in want.items():
        torch.manual_seed(0)
        ckpt = tmp_path / f"{graph}.ckpt"
        save_checkpoint(ckpt, DeeperGATGNN(dim=8, layers=1, graph=graph), targets=["heat_ref"],
                        units=["eV"], elements=[8, 22, 38])
        r = CliRunner().invoke(main, ["predict", str(ckpt), str(store)])
        assert r.exit_code == 0, r.output
        rows = list(csv.reader(io.StringIO(r.stdout)))
        assert rows[0] == ["id", "heat_ref", "status", "flags"]
        assert [row[-1] for row in rows[1:]] == flags, graph
        assert [row[-2] for row in rows[1:]] == ["0"] * 4


def test_predict_splits_a_batch_that_fails_for_memory(trained: tuple[Path, Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch the model cannot allocate is predicted again in halves: the same numbers; the
    structures that fail alone get status 10; a model that fails on anything is one error."""
    from deepergat.errors import DeepergatError
    from deepergat.io.store import Store

    store, ckpt = trained
    _, ref = predict_inputs_rows(ckpt, [store], batch_size=30)
    with Store(store) as s:
        b = s.read(0, len(s))
    zsum = np.array([b.atomic_numbers[o:o + n].sum() for o, n in zip(b.offset, b.n_atoms,
                                                                      strict=True)])
    marked = zsum[7]
    real = predict_mod.load_predictor

    class Tight:
        """The model, but its runtime fails to allocate some batches (PyTorch's message)."""

        def __init__(self, inner: Any, fail: Any) -> None:
            self.inner, self.fail = inner, fail

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def predict(self, inputs: dict[str, np.ndarray]) -> Any:
            if self.fail(inputs):
                raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                                   "allocate 7834000000 bytes")
            return self.inner.predict(inputs)

    def crystal_zsum(x: dict[str, np.ndarray]) -> np.ndarray:
        return (x["atomic_numbers"][x["crystal_atoms"]] * x["crystal_mask"]).sum(1)

    cases = [(lambda x: len(x["crystal_mask"]) > 4, np.zeros(len(zsum), bool)),
             (lambda x: (crystal_zsum(x) == marked).any(), zsum == marked)]
    for fail, lost in cases:
        monkeypatch.setattr(predict_mod, "load_predictor",
                            lambda *a, fail=fail, **k: Tight(real(*a, **k), fail))
        _, got = predict_inputs_rows(ckpt, [store], batch_size=30)
        assert [r.id for r in got] == [r.id for r in ref]
        want = np.where(lost, 10, [r.status for r in ref])
        assert [r.status for r in got] == want.tolist()
        np.testing.assert_allclose([r.values for r in np.array(got)[~lost]],
                                   [r.values for r in np.array(ref)[~lost]], rtol=1e-5, atol=1e-6)
        assert all(np.isnan(r.values).all() for r in np.array(got)[lost])
    monkeypatch.setattr(predict_mod, "load_predictor",
                        lambda *a, **k: Tight(real(*a, **k), lambda x: True))
    with pytest.raises(DeepergatError, match="out of memory even on a one-atom structure"):
        predict_inputs_rows(ckpt, [store], batch_size=30)


def test_the_bundled_mic_model_is_the_ensembles_member_0() -> None:
    """perovskite-heat-mic is member 0 of perovskite-heat run alone: the same weights and
    target scaling, so the same predictions, and its shipped ONNX file agrees with them."""
    from deepergat import export
    from deepergat.export.resolve import bundled_dir
    from deepergat.graphs import build_inputs
    from deepergat.nn.checkpoint import load_checkpoint

    mic = load_checkpoint(bundled_dir() / "perovskite-heat-mic" / "best.ckpt").model
    member = load_checkpoint(bundled_dir() / "perovskite-heat" / "ensemble.ckpt").model.members[0]
    assert mic.config == member.config
    mine, theirs = mic.state_dict(), member.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    batch = StructureBatch.from_structures(perov_structures(20))
    g = build_inputs(batch, cutoff=mic.config["cutoff"], max_neighbors=mic.config["max_neighbors"],
                     graph=mic.config["graph"])
    inputs = [torch.from_numpy(v) for v in g.inputs.values()]
    with torch.no_grad():
        want = member(*inputs)[0].numpy()[:, 0]
        assert np.array_equal(mic(*inputs)[0].numpy()[:, 0], want)
    shipped = export.load("perovskite-heat-mic", device="cpu", runtime="onnxruntime")
    got = np.asarray(shipped.predict(g.inputs)[0])[:, 0]
    np.testing.assert_allclose(got, want, atol=1e-5)
