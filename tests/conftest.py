"""Fixtures for every test module: a tiny store cut from tests/data, small models and their
exports.

Add fixtures here for everyone; do not rewrite others' content.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """The suite never sees the user's compiled models (`deepergat compile`): runtimes are
    chosen as on a machine without them, and tests that compile use folders of their own."""
    import os
    import tempfile

    os.environ["DEEPERGAT_COMPILED_CACHE"] = os.path.join(
        tempfile.mkdtemp(prefix="deepergat-test-compiled-"), "cache")


# ---- model and training helpers (perovskite rows, tiny stores) ------------------------------
# The helpers live in tests/model_helpers.py (a unique module name: `from conftest import`
# is ambiguous once a subfolder has its own conftest.py).


@pytest.fixture
def tiny_store(tmp_path: Path) -> Path:
    """A 60-structure perovskite store with target heat_ref (eV), from the fixture."""
    from model_helpers import perov_structures

    from deepergat.io.store import StructureBatch, write_store

    path = tmp_path / "tiny.h5"
    write_store(
        path, StructureBatch.from_structures(perov_structures(60)), units={"heat_ref": "eV"}
    )
    return path


# ---- a small exported model, once per session (screening tests) ------------------------------

#: Elements the session model "saw in training": Z = 1..83 (others are flagged when screened).
SMALL_MODEL_ELEMENTS = tuple(range(1, 84))


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2-layer model with fixed random weights, as a checkpoint and its ONNX export.

    Returns:
        ``{"checkpoint": Path, "onnx": Path, "target": "heat_ref", "units": "eV", "std": 0.5}``
        (skips when torch or deepergat.export is not available).
    """
    torch = pytest.importorskip("torch")
    try:
        from deepergat import export
    except ImportError:
        pytest.skip("deepergat.export is not available")
    from deepergat.nn.checkpoint import save_checkpoint
    from deepergat.nn.deepergatgnn import DeeperGATGNN

    out = tmp_path_factory.mktemp("small-model")
    torch.manual_seed(1234)
    model = DeeperGATGNN(layers=2, target_mean=[-1.0], target_std=[0.5]).eval()
    ckpt = out / "small.ckpt"
    save_checkpoint(
        ckpt, model, targets=["heat_ref"], units=["eV"], elements=list(SMALL_MODEL_ELEMENTS)
    )
    result = export.export_model(ckpt, out, formats="onnx", n_check=export.exporter.MIN_CHECK)
    return {
        "checkpoint": ckpt,
        "onnx": Path(result.files[0].path),
        "target": "heat_ref",
        "units": "eV",
        "std": 0.5,
    }


# ---- a tiny model exported to every format, once per session (export tests) -----------------


@pytest.fixture(scope="session")
def small_ensemble(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 3-member ensemble of 2-layer models with fixed random weights (spread factor 1.5), as
    a checkpoint and its ONNX export: ``{"checkpoint", "onnx", "std": 0.5}``."""
    torch = pytest.importorskip("torch")
    from deepergat import export
    from deepergat.nn.checkpoint import make_checkpoint
    from deepergat.nn.ensemble import DeeperGATGNNEnsemble

    out = tmp_path_factory.mktemp("small-ensemble")
    torch.manual_seed(99)
    model = DeeperGATGNNEnsemble(members=3, layers=2, std_scale=[1.5], target_mean=[-1.0],
                                 target_std=[0.5]).eval()
    ckpt = out / "ensemble.ckpt"
    torch.save(make_checkpoint(model, targets=["heat_ref"], units=["eV"],
                               elements=list(SMALL_MODEL_ELEMENTS),
                               calibration={"std_scale": [1.5]}), ckpt)
    result = export.export_model(ckpt, out, formats="onnx", n_check=export.exporter.MIN_CHECK)
    return {"checkpoint": ckpt, "onnx": Path(result.files[0].path), "std": 0.5}


@pytest.fixture(scope="session")
def exported_tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2-layer, dim-16 model with random weights and non-trivial BatchNorm statistics, as a
    checkpoint and its ``model.onnx``, ``model.pt`` and ``model.pt2`` (one `export_model` run).

    Returns:
        ``{"checkpoint": Path, "dir": Path, "onnx": Path, "torchscript": Path, "pt2": Path,
        "result": ExportResult, "std": 0.8}`` (skips without torch or deepergat.export).
    """
    torch = pytest.importorskip("torch")
    try:
        from deepergat import export
    except ImportError:
        pytest.skip("deepergat.export is not available")
    from deepergat.nn.checkpoint import save_checkpoint
    from deepergat.nn.deepergatgnn import DeeperGATGNN

    out = tmp_path_factory.mktemp("exported-tiny")
    torch.manual_seed(7)
    model = DeeperGATGNN(dim=16, layers=2, target_mean=[-1.2], target_std=[0.8])
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "running_mean"):
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    model.eval()
    ckpt = out / "tiny.ckpt"
    save_checkpoint(ckpt, model, targets=["heat_ref"], units=["eV"], elements=list(range(1, 84)))
    result = export.export_model(
        ckpt, out / "exported", formats="all", n_check=export.exporter.MIN_CHECK, big_batch=1024
    )
    files = {f.format: Path(f.path) for f in result.files}
    return {"checkpoint": ckpt, "dir": out / "exported", **files, "result": result, "std": 0.8}


# ---- screening: the candidate store and a reference run (helpers: screen_helpers.py) ------


@pytest.fixture(scope="session")
def screen_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 structures: 291 candidates and the 9 `SPECIAL` ones (session-wide, read-only)."""
    from screen_helpers import write_screen_store

    return write_screen_store(tmp_path_factory.mktemp("screen-store") / "cands.h5")


@pytest.fixture(scope="session")
def reference_predictions(
    tmp_path_factory: pytest.TempPathFactory, screen_store: Path, small_model: dict[str, Any]
) -> Path:
    """One uninterrupted single-process screen of `screen_store` (chunk size 64, the default
    worker processes: the model runs in them on a multi-core CPU)."""
    from screen_helpers import run_inprocess

    out = tmp_path_factory.mktemp("reference") / "ref.h5"
    run_inprocess(screen_store, small_model["onnx"], out, chunk_size=64, workers=None)
    return out
