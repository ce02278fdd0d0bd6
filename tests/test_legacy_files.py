"""Files written by the starting commit of issue 23 (4a91ba8) keep loading and mean the same.

The fixtures in tests/data/legacy/ were written by that commit (`make_legacy.py`, run with its
code; tests/data/README.md): three checkpoints (DeeperGATGNN format 1, CGCNN format 3, a
2-member ensemble with a local error term, format 2), the ensemble's ONNX and ``.pt2`` files, a
20-structure store, its graph cache and a screen of it. ``expected.json`` holds what that
commit computed and printed for them and for the bundled models. Here the current code reads
each: predictions agree by docs/design.md §10's rule, ids, statuses and metadata are identical,
and ``deepergat info`` prints what it printed.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from model_helpers import cpu_onnx_backend

import deepergat
from deepergat.cli import main
from deepergat.contract import DEFAULT_MAX_ATOMS, DEFAULT_OVERLAP_THRESHOLD, MAX_Z
from deepergat.export import load
from deepergat.graphs import build_inputs
from deepergat.io.store import Store

LEGACY = Path(__file__).resolve().parent / "data" / "legacy"
EXPECTED: dict[str, Any] = json.loads((LEGACY / "expected.json").read_text())
#: The folder holding the package: the bundled models' paths in expected.json are relative to it.
PACKAGE_PARENT = Path(deepergat.__file__).resolve().parent.parent
BUNDLED = [name for name in EXPECTED["models"] if name.startswith("deepergat/models/")]
CHECKPOINTS = {"deepergatgnn.ckpt": (1, "DeeperGATGNN"), "cgcnn.ckpt": (3, "CGCNN"),
               "ensemble.ckpt": (2, "DeeperGATGNNEnsemble")}


def _path(name: str) -> Path:
    return PACKAGE_PARENT / name if name in BUNDLED else LEGACY / name


def _array(values: list[Any] | None) -> np.ndarray:
    """expected.json's nested lists (None for NaN) as a float64 array."""
    return np.array([[math.nan if v is None else v for v in row] for row in values or []],
                    dtype=np.float64)


def _assert_agree(got: np.ndarray, want: np.ndarray, std: list[float], what: str) -> None:
    """docs/design.md §10: |y1 − y2| ≤ 1e-5 · std + 4 · ulp32(|y1|), per target; NaN alike."""
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape, what
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=what)
    ok = ~np.isnan(want)
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    allowed = 1e-5 * np.asarray(std, dtype=np.float64)[None, :] + 4 * ulp
    diff = np.abs(got - want)
    assert (diff[ok] <= allowed[ok]).all(), f"{what}: max |diff| {diff[ok].max():.3g}"


@pytest.fixture(scope="module")
def structures() -> Any:
    with Store(LEGACY / "store.h5") as store:
        return store.read(0, len(store))


@pytest.mark.parametrize("name", list(EXPECTED["models"]))
def test_models_predict_what_the_starting_commit_predicted(name: str, structures: Any) -> None:
    want = EXPECTED["models"][name]
    predictor = load(_path(name), device="cpu")
    # a single model's .onnx file runs on OpenVINO on the CPU where it is installed (same
    # numbers to float32 rounding, which _assert_agree allows); an ensemble's on ONNX Runtime
    onnx_cpu = "onnxruntime" if want["std"] is not None else cpu_onnx_backend()
    assert predictor.backend == (onnx_cpu if want["backend"] == "onnxruntime"
                                 else want["backend"])
    graph = predictor.metadata.graph.as_kwargs()
    assert graph == want["graph_settings"]
    g = build_inputs(structures, **graph, max_z=MAX_Z, max_atoms=DEFAULT_MAX_ATOMS,
                     overlap_threshold=DEFAULT_OVERLAP_THRESHOLD)
    assert g.status.tolist() == want["status"] and g.rows.tolist() == want["rows"]
    out = predictor.predict(g.inputs)
    std = list(predictor.metadata.target_std)
    assert std == want["target_std"]
    _assert_agree(out.prediction, _array(want["prediction"]), std, f"{name} prediction")
    if want["std"] is None:
        assert out.std is None
    else:
        _assert_agree(out.std, _array(want["std"]), std, f"{name} std")
    np.testing.assert_allclose(out.embedding, _array(want["embedding"]), rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["ensemble.ckpt", "exported/model.onnx", "exported/model.pt2"])
def test_on_a_gpu_the_legacy_ensemble_predicts_what_it_did_on_the_cpu(
    name: str, structures: Any
) -> None:
    """Across devices the kernels differ: 10 times docs/design.md §10's allowance, as
    tests/export/test_export_gpu.py allows."""
    torch = pytest.importorskip("torch")
    from deepergat.export.runtime import cuda_available

    if not (cuda_available() if name.endswith(".onnx") else torch.cuda.is_available()):
        pytest.skip("no CUDA device")
    want = EXPECTED["models"][name]
    predictor = load(LEGACY / name, device="cuda")
    assert predictor.device.startswith("cuda")
    g = build_inputs(structures, **predictor.metadata.graph.as_kwargs(), max_z=MAX_Z,
                     max_atoms=DEFAULT_MAX_ATOMS, overlap_threshold=DEFAULT_OVERLAP_THRESHOLD)
    out = predictor.predict(g.inputs)
    std = [10 * s for s in want["target_std"]]
    _assert_agree(out.prediction, _array(want["prediction"]), std, f"{name} prediction")
    _assert_agree(out.std, _array(want["std"]), std, f"{name} std")


def _plain_values(value: Any, where: str) -> None:
    """Everything but the weights is plain data: no class, module or function by name."""
    import torch

    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, str), where
            _plain_values(v, f"{where}.{k}")
    elif isinstance(value, list | tuple):
        for k, v in enumerate(value):
            _plain_values(v, f"{where}[{k}]")
    elif isinstance(value, str):
        assert not value.startswith(("deepergat.", "torch.", "__main__")), (where, value)
        assert "<class" not in value and "<function" not in value, (where, value)
    else:
        assert value is None or isinstance(value, bool | int | float | torch.Tensor), (
            where, type(value))


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_checkpoints_hold_arguments_and_an_architecture_name(name: str) -> None:
    """A checkpoint is a plain dict (``weights_only`` loads it) whose ``model`` holds the
    constructor arguments: the current code rebuilds the same architecture from them, its
    weights fit exactly, and saving it again writes the same arguments and format."""
    torch = pytest.importorskip("torch")
    from deepergat.nn.checkpoint import load_checkpoint, make_checkpoint

    fmt, cls = CHECKPOINTS[name]
    data = torch.load(LEGACY / name, map_location="cpu", weights_only=True)
    assert data["kind"] == "deepergat-checkpoint" and data["format"] == fmt
    _plain_values({k: v for k, v in data.items() if k != "state_dict"}, name)
    assert ("arch" in data["model"]) == (fmt == 3) and ("members" in data["model"]) == (fmt == 2)
    ckpt = load_checkpoint(LEGACY / name)
    assert type(ckpt.model).__name__ == cls
    state = ckpt.model.state_dict()
    assert list(state) == list(data["state_dict"])
    for key, tensor in data["state_dict"].items():
        assert torch.equal(state[key], tensor), key
    again = make_checkpoint(ckpt.model, targets=data["targets"], units=data["units"],
                            elements=data["elements"], calibration=data.get("calibration"))
    assert again["model"] == data["model"] and again["format"] == fmt
    assert again["graph"] == data["graph"]


@pytest.mark.parametrize("name", list(EXPECTED["info"]))
def test_info_prints_what_it_printed(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    want = EXPECTED["info"][name]
    monkeypatch.chdir(PACKAGE_PARENT if name in BUNDLED else LEGACY)
    text = CliRunner().invoke(main, ["info", name], catch_exceptions=False)
    assert text.exit_code == 0, text.output
    # the same text, but for the elements line: the starting commit printed their atomic
    # numbers, 30 at most; they are written as symbols now, every one (issue 26)
    from deepergat.elements import symbol

    def elements_as_symbols(line: str) -> str:
        head, _, numbers = line.partition("Z = ")
        if not head.lstrip().startswith("elements (") or not numbers:
            return line
        count = int(head.split("(")[1].split(")")[0])
        assert "…" not in numbers or count > 30
        return head + " ".join(symbol(int(z)) for z in numbers.split("…")[0].split())

    got = text.stdout.splitlines()
    old = [elements_as_symbols(line) for line in want["text"].splitlines()]
    assert len(got) == len(old)
    for mine, theirs in zip(got, old, strict=True):
        if theirs.lstrip().startswith("elements (") and "…" in want["text"]:
            assert mine.startswith(theirs), (mine, theirs)  # all of them now
        else:
            assert mine == theirs
    as_json = CliRunner().invoke(main, ["info", name, "--json"], catch_exceptions=False)
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == want["json"]


def test_the_store_digest_verifies() -> None:
    with Store(LEGACY / "store.h5") as store:
        assert store.compute_digest() == store.content_digest
        assert store.content_digest == EXPECTED["info"]["store.h5"]["json"]["content_digest"]
        assert store.ids() == EXPECTED["read_predictions"]["values"]["id"]


def test_the_predictions_file_reads_with_read_predictions() -> None:
    pytest.importorskip("pandas")
    want = EXPECTED["read_predictions"]
    frame = deepergat.read_predictions(str(LEGACY / "predictions.h5"))
    # the columns it had, then the two formulas gave it (from the input store, only while
    # that is the one screened: not here, where the recorded path is gone)
    assert [str(c) for c in frame.columns] == [*want["columns"], "formula", "n_elements"]
    assert [str(t) for t in frame.dtypes][: len(want["dtypes"])] == want["dtypes"]
    assert frame["formula"].tolist() == [""] * 20 and frame["n_elements"].tolist() == [0] * 20
    for column in want["columns"]:
        got = frame[column].to_numpy()
        if got.dtype.kind == "f":
            expected = np.array([math.nan if v is None else v for v in want["values"][column]],
                                dtype=got.dtype)
            np.testing.assert_array_equal(got, expected, err_msg=column)
        else:
            assert got.tolist() == want["values"][column], column
    embeddings = deepergat.read_predictions(str(LEGACY / "predictions.h5"), embeddings=True)
    assert np.stack(embeddings["embedding"].to_list()).shape == (20, 16)


def _read(path: Path) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        return {
            "attrs": {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()},
            **{k: f[k][:] for k in ("index", "ids", "status", "flags", "embeddings")},
            "predictions": {k: ds[:] for k, ds in f["predictions"].items()},
            "units": {k: ds.attrs["units"] for k, ds in f["predictions"].items()},
            "std": {k: ds[:] for k, ds in f["std"].items()},
        }


def _top(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_screening_the_legacy_store_gives_the_legacy_predictions(tmp_path: Path) -> None:
    """`deepergat screen` of the legacy store with the legacy ONNX file, by the current code,
    with the options the starting commit ran: the same file by docs/design.md §10's rule."""
    out = tmp_path / "predictions.h5"
    r = CliRunner().invoke(main, [
        "screen", "--input", str(LEGACY / "store.h5"), "--model",
        str(LEGACY / "exported" / "model.onnx"), "--output", str(out), "--embeddings",
        "--top", "5", "--rank-by", "upper", "--chunk-size", "8", "--workers", "0",
        "--device", "cpu", "--no-group"])  # the starting commit's list was not grouped
    assert r.exit_code == 0, r.output
    new, old = _read(out), _read(LEGACY / "predictions.h5")
    for key in ("index", "ids", "status", "flags"):
        np.testing.assert_array_equal(new[key], old[key], err_msg=key)
    std = [t["std"] for t in json.loads(old["attrs"]["model_metadata"])["targets"]]
    for name, values in old["predictions"].items():
        _assert_agree(new["predictions"][name][:, None], values[:, None].astype(np.float64),
                      std, name)
        _assert_agree(new["std"][name][:, None], old["std"][name][:, None].astype(np.float64),
                      std, f"{name} std")
    assert new["units"] == old["units"]
    np.testing.assert_allclose(new["embeddings"], old["embeddings"], rtol=1e-4, atol=1e-5)
    for key in ("format", "model_sha256", "input_digest", "screen_settings"):
        assert new["attrs"][key] == old["attrs"][key], key
    assert (new["attrs"]["version"], old["attrs"]["version"]) == (2, 1)  # formulas stored
    # status codes may be added (8–10 came with issue 25); the old ones keep their meanings
    old_codes = json.loads(old["attrs"]["status_codes"])
    new_codes = json.loads(new["attrs"]["status_codes"])
    assert {k: new_codes[k] for k in old_codes} == old_codes
    assert json.loads(new["attrs"]["model_metadata"]) == json.loads(old["attrs"]["model_metadata"])
    top_new, top_old = _top(tmp_path / "predictions.top.csv"), _top(LEGACY / "predictions.top.csv")
    assert list(top_new[0]) == [*top_old[0], "group_size", "known"]
    assert [(r["rank"], r["index"], r["id"], r["formula"], r["flags"]) for r in top_new] == [
        (r["rank"], r["index"], r["id"], r["formula"], r["flags"]) for r in top_old]
    for column in ("heat_ref", "heat_ref_std"):
        _assert_agree(np.array([[float(r[column])] for r in top_new]),
                      np.array([[float(r[column])] for r in top_old]), std, column)


def test_the_legacy_graph_cache_is_reused(tmp_path: Path) -> None:
    """The starting commit's graph cache of the store is found and read, not rebuilt, and holds
    the graphs the current code builds."""
    from deepergat.training.data import load_graphs

    shutil.copy(LEGACY / "store.h5", tmp_path / "store.h5")
    (cache,) = LEGACY.glob("store.graphs-*.npz")
    shutil.copy2(cache, tmp_path / cache.name)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    cached = load_graphs(tmp_path / "store.h5", cutoff=8.0, max_neighbors=12, graph="periodic",
                         cache_dir=tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
    fresh = load_graphs(tmp_path / "store.h5", cutoff=8.0, max_neighbors=12, graph="periodic",
                        use_cache=False)
    assert cached.ids == fresh.ids
    for key in ("status", "n_atoms", "atom_offset", "atomic_numbers", "neighbors", "distances",
                "degree"):
        np.testing.assert_array_equal(getattr(cached, key), getattr(fresh, key), err_msg=key)
