"""`deepergat.export.load` and the `Predictor`: one loader for every model file kind, the device
it runs on, graph settings checked against the model's, which files need trust, and what
`predict` returns for a single model and an ensemble.

Models: the small fixtures in tests/data/legacy/ (a 2-layer DeeperGATGNN checkpoint, a 2-member
ensemble checkpoint with a local error term and its ``.onnx`` and ``.pt2`` exports;
tests/data/README.md). Parity of every format with its checkpoint, TorchScript and AOTInductor
files, and the cutoff/neighbor checks are in test_export_roundtrip.py and test_export_trust.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deepergat.contract import MAX_Z
from deepergat.errors import DeepergatError
from deepergat.export import OnnxPredictor, Predictor, TorchPredictor, load
from deepergat.graphs import build_inputs
from deepergat.io.store import Store
from deepergat.metadata import ModelMetadata

LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy"
SINGLE = LEGACY / "deepergatgnn.ckpt"
ENSEMBLE = {"checkpoint": LEGACY / "ensemble.ckpt", "onnx": LEGACY / "exported" / "model.onnx",
            "pt2": LEGACY / "exported" / "model.pt2"}
# an ensemble's .onnx file stays on ONNX Runtime (deepergat.export.openvino_runtime)
BACKENDS = {"checkpoint": (TorchPredictor, "eager"), "onnx": (OnnxPredictor, "onnxruntime"),
            "pt2": (TorchPredictor, "torch.export")}
#: The fixture models' training standard deviation of heat_ref, eV (read from the ensemble).
TARGET_STD = float(json.loads((LEGACY / "expected.json").read_text())
                   ["models"]["ensemble.ckpt"]["target_std"][0])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _agree(a: np.ndarray, b: np.ndarray) -> bool:
    """docs/design.md §10's rule for the fixtures' one target."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ulp = np.spacing(np.abs(a).astype(np.float32)).astype(np.float64)
    return bool((np.abs(a64 - b64) <= 1e-5 * TARGET_STD + 4 * ulp).all())


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    """Model inputs of the 18 good structures of the legacy store (periodic, 8 Å, 12)."""
    with Store(LEGACY / "store.h5") as store:
        batch = store.read(0, len(store))
    g = build_inputs(batch, cutoff=8.0, max_neighbors=12, graph="periodic", max_z=MAX_Z)
    assert len(g.rows) == 18
    return g.inputs


@pytest.fixture(scope="module")
def ensembles() -> dict[str, Predictor]:
    return {kind: load(path, device="cpu") for kind, path in ENSEMBLE.items()}


@pytest.mark.parametrize("kind", list(ENSEMBLE))
def test_each_file_kind_loads_as_its_backend(kind: str, ensembles: dict[str, Predictor]) -> None:
    p = ensembles[kind]
    cls, backend = BACKENDS[kind]
    assert isinstance(p, cls) and p.backend == backend
    assert p.path == ENSEMBLE[kind] and p.device == "cpu"
    assert p.sha256 == _sha256(ENSEMBLE[kind])
    assert isinstance(p.metadata, ModelMetadata)
    assert p.metadata.source_sha256 == _sha256(ENSEMBLE["checkpoint"])  # the same model
    assert p.targets == ["heat_ref"] and p.units == ["eV"]
    assert p.members == 2 and p.has_std and p.metadata.embedding_dim == 16
    assert p.graph_settings == {"cutoff": 8.0, "max_neighbors": 12, "graph": "periodic"}
    assert backend in repr(p) and "cpu" in repr(p)


def test_none_of_these_kinds_needs_trust(ensembles: dict[str, Predictor]) -> None:
    """Checkpoints, ONNX files and .pt2 programs run no code from the file: the fixture loaded
    them without ``trust``."""
    assert set(ensembles) == {"checkpoint", "onnx", "pt2"}
    assert load(SINGLE, device="cpu", trust=False).path == SINGLE


def test_a_run_folder_loads_its_ensemble_else_its_kept_model(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(DeepergatError, match=rf"{run}: is a folder without"):
        load(run, device="cpu")
    shutil.copy(SINGLE, run / "best.ckpt")
    assert load(run, device="cpu").path == run / "best.ckpt"
    shutil.copy(ENSEMBLE["checkpoint"], run / "ensemble.ckpt")
    p = load(run, device="cpu")
    assert p.path == run / "ensemble.ckpt" and p.members == 2


def test_a_bundled_name_loads_its_onnx_file() -> None:
    from deepergat.export import bundled_models

    if "perovskite-heat-single" not in bundled_models():
        pytest.skip("bundled models not installed")
    p = load("perovskite-heat-single", device="cpu")
    assert isinstance(p, OnnxPredictor) and p.path.name == "model.onnx"
    assert p.path.parent.name == "perovskite-heat-single" and p.members == 1 and not p.has_std


def test_auto_without_a_visible_gpu_runs_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    gpu = torch.cuda.is_available()  # before hiding the GPUs: torch counts them only once
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    p = load(ENSEMBLE["onnx"], device="auto")
    assert p.device == "cpu" and p.providers == ["CPUExecutionProvider"]
    if gpu:
        pytest.skip("torch sees a GPU in this process")
    assert load(SINGLE, device="auto").device == "cpu"
    with pytest.raises(DeepergatError, match=r"device 'cuda' requested"):
        load(SINGLE, device="cuda:0")


@pytest.mark.parametrize("kind", list(ENSEMBLE))
def test_other_graph_settings_are_refused_naming_both_values(
    kind: str, ensembles: dict[str, Predictor]
) -> None:
    path = ENSEMBLE[kind]
    if kind != "pt2":  # loading a .pt2 takes seconds: its predictor checks the same way
        load(path, device="cpu", cutoff=8.0, max_neighbors=12, graph="periodic")
        with pytest.raises(DeepergatError) as e:
            load(path, device="cpu", graph="minimum-image", max_neighbors=16)
    else:
        ensembles[kind].check_settings(cutoff=8.0, max_neighbors=12, graph="periodic")
        with pytest.raises(DeepergatError) as e:
            ensembles[kind].check_settings(graph="minimum-image", max_neighbors=16)
    message = str(e.value)
    assert message.startswith(f"{path}: graph settings do not match the model")
    assert "graph 'minimum-image' given, the model was trained with 'periodic'" in message
    assert "max_neighbors 16 given, the model was trained with 12" in message
    assert "\n" not in message


def test_a_single_model_predicts_values_and_embeddings(inputs: dict[str, np.ndarray]) -> None:
    p = load(SINGLE, device="cpu")
    assert not p.has_std and p.members == 1
    out = p.predict(inputs)
    assert out._fields == ("prediction", "embedding", "std")
    assert out.prediction.shape == (18, 1) and out.prediction.dtype == np.float32
    assert out.embedding.shape == (18, p.metadata.embedding_dim)
    assert out.embedding.dtype == np.float32
    assert out.std is None
    assert np.isfinite(out.prediction).all() and np.isfinite(out.embedding).all()


@pytest.mark.parametrize("kind", list(ENSEMBLE))
def test_an_ensemble_predicts_a_calibrated_spread(kind: str, ensembles: dict[str, Predictor],
                                                  inputs: dict[str, np.ndarray]) -> None:
    out = ensembles[kind].predict(inputs)
    assert out.prediction.shape == out.std.shape == (18, 1)
    assert out.std.dtype == np.float32 and (out.std > 0).all() and np.isfinite(out.std).all()
    assert out.embedding.shape == (18, 16)
    reference = ensembles["checkpoint"].predict(inputs)
    assert _agree(out.prediction, reference.prediction) and _agree(out.std, reference.std)
    empty = ensembles[kind].predict({k: v[:0] for k, v in inputs.items()})
    assert empty.prediction.shape == empty.std.shape == (0, 1) and empty.embedding.shape == (0, 16)


@pytest.mark.parametrize("kind", ["checkpoint", "onnx"])
def test_one_crystal_at_a_time_agrees_with_the_whole_batch(
    kind: str, ensembles: dict[str, Predictor], inputs: dict[str, np.ndarray]
) -> None:
    """docs/design.md §5: results do not depend on how crystals are batched (up to float32
    rounding), the ensemble's spread included."""
    p = ensembles[kind]
    whole = p.predict(inputs)
    for c in range(len(inputs["crystal_atoms"])):
        one = p.predict(_crystal(inputs, c))
        assert _agree(one.prediction, whole.prediction[c : c + 1]), c
        assert _agree(one.std, whole.std[c : c + 1]), c


def _crystal(inputs: dict[str, np.ndarray], c: int) -> dict[str, Any]:
    """The inputs of crystal ``c`` alone (its atoms renumbered from 0)."""
    atoms = inputs["crystal_atoms"][c][inputs["crystal_mask"][c]]
    first, n = int(atoms.min()), len(atoms)
    rows = slice(first, first + n)
    k = int(inputs["neighbor_mask"][rows].sum(1).max())
    return {
        "atomic_numbers": inputs["atomic_numbers"][rows],
        "neighbors": inputs["neighbors"][rows, :k] - first,
        "distances": inputs["distances"][rows, :k],
        "neighbor_mask": inputs["neighbor_mask"][rows, :k],
        "crystal_atoms": (atoms - first)[None, :],
        "crystal_mask": np.ones((1, n), bool),
        "batch": np.zeros(n, np.int64),
    }


def test_inputs_of_other_dtypes_are_converted(ensembles: dict[str, Predictor],
                                              inputs: dict[str, np.ndarray]) -> None:
    other = {k: (v.astype(np.int32) if v.dtype == np.int64 else
                 v.astype(np.float64) if v.dtype == np.float32 else v.astype(np.uint8))
             for k, v in inputs.items()}
    for p in ensembles.values():
        want, got = p.predict(inputs), p.predict(other)
        np.testing.assert_array_equal(got.prediction, want.prediction)
        np.testing.assert_array_equal(got.std, want.std)


def test_inputs_of_the_wrong_rank_are_refused(ensembles: dict[str, Predictor],
                                              inputs: dict[str, np.ndarray]) -> None:
    bad = {**inputs, "distances": inputs["distances"].reshape(-1)}
    for p in ensembles.values():
        with pytest.raises(DeepergatError, match=r"model input distances has shape \(\d+,\); "
                                                 r"expected 2 axes"):
            p.predict(bad)


# ------------------------------------------------- exported metadata against the file's weights


def _forged(kind: str, tmp_path: Path, changes: dict[str, Any]) -> Path:
    """A copy of the legacy ensemble's exported file whose metadata document says ``changes``
    (``"graph.cutoff": 6.0``; ``None`` deletes the key)."""
    from deepergat.export.files import read_metadata
    from deepergat.export.onnx import set_onnx_metadata
    from deepergat.export.pt2 import set_pt2_metadata

    src = ENSEMBLE[kind]
    meta = read_metadata(src)
    for key, value in changes.items():
        *path, last = key.split(".")
        doc: Any = meta
        for part in path:
            doc = doc[int(part)] if isinstance(doc, list) else doc[part]
        if value is None:
            del doc[last]
        else:
            doc[int(last) if isinstance(doc, list) else last] = value
    dst = tmp_path / src.name
    shutil.copy(src, dst)
    (set_onnx_metadata if kind == "onnx" else set_pt2_metadata)(dst, meta)
    return dst


#: Metadata documents that contradict the exported ensemble (2 members, 12 neighbors, 8 Å,
#: dim 16, 84 local error references, std_scale 0.0007): each loaded before, and a caller
#: built graphs, labelled outputs or ruled agreement by the lie.
EXPORTED_LIES = {
    "neighbors": ({"graph.max_neighbors": 40, "model.max_neighbors": 40},
                  "graph.max_neighbors is 40 but the weights are built for 12"),
    "cutoff": ({"graph.cutoff": 6.0, "model.cutoff": 6.0},
               "graph.cutoff is 6.0 but the weights scale distances by 8 Å"),
    "graph only": ({"graph.max_neighbors": 16},
                   "graph.max_neighbors is 16 but model.max_neighbors is 12"),
    "target mean": ({"targets.0.mean": 2.5}, "targets[0].mean is 2.5 but the weights scale by"),
    "members": ({"model.members": 3}, "model.members is 3 but the weights hold 2 members"),
    "single": ({"model.members": None, "model.local_error": None, "calibration": None},
               "it describes a single model (no model.members) but the weights hold an "
               "ensemble of 2 members"),
    "dim": ({"model.dim": 64}, "model.dim is 64 but members.0.node_embedding.weight has 16 rows"),
    "calibration": ({"calibration.std_scale": [1.0]},
                    "calibration.std_scale is [1.0] but the weights hold"),
    "references": ({"model.local_error.references": 100},
                   "model.local_error is {'references': 100, 'features': 32} but "
                   "reference_errors has shape (84, 1)"),
}


@pytest.mark.parametrize(("kind", "lie"), [
    *(("onnx", lie) for lie in EXPORTED_LIES),
    # loading a .pt2 takes seconds; its state_dict is checked as a checkpoint's
    *(("pt2", lie) for lie in ("neighbors", "target mean", "members"))])
def test_exported_metadata_its_weights_contradict_is_refused(
        kind: str, lie: str, tmp_path: Path) -> None:
    """ONNX initializers and ``.pt2`` constants hold the buffers the metadata describes; a
    document that contradicts them is refused on load with one line naming the key and both
    values (the ONNX screen reads the initializers without torch or onnx)."""
    changes, words = EXPORTED_LIES[lie]
    path = _forged(kind, tmp_path, changes)
    with pytest.raises(DeepergatError) as e:
        load(path, device="cpu")
    line = str(e.value)
    assert line.startswith(f"{path}: the metadata contradicts the model's weights: ")
    assert words in line and "\n" not in line


def test_a_torchscript_files_metadata_is_checked_against_its_weights(
        exported_tiny: dict[str, Any], tmp_path: Path) -> None:
    from deepergat.export.files import read_metadata
    from deepergat.export.torchscript import set_torchscript_metadata

    meta = read_metadata(exported_tiny["torchscript"])
    meta["model"]["layers"] = 3
    path = tmp_path / "model.pt"
    shutil.copy(exported_tiny["torchscript"], path)
    set_torchscript_metadata(path, meta)
    with pytest.raises(DeepergatError, match=r"model\.layers is 3 but the weights hold 2 layers"):
        load(path, device="cpu", trust=True)


def test_onnx_initializers_are_read_without_onnx(exported_tiny: dict[str, Any]) -> None:
    """The hand-written protobuf reader gives the names, shapes and small values onnx does."""
    import onnx
    from onnx import numpy_helper

    from deepergat.export.files import ONNX_VALUE_LIMIT, onnx_initializers

    path = exported_tiny["onnx"]
    got = onnx_initializers(path.read_bytes())
    want = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    assert sorted(got) == sorted(want)
    for name, array in want.items():
        shape, values = got[name]
        assert shape == array.shape, name
        if array.size <= ONNX_VALUE_LIMIT:
            np.testing.assert_array_equal(values, array, err_msg=name)
        else:
            assert values is None
