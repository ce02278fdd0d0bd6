"""Shared test helpers: the shared data folder, small structure factories, store builders.

Add fixtures here for everyone; do not rewrite others' content.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

#: ../shared/data relative to the repository root; tests that need it skip when it is absent.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(name: str) -> Path:
    """A file from the shared data folder, or skip the test when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture
def shared_data() -> Path:
    """The shared data folder (skips when absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


# ---- small structures ------------------------------------------------------------------------


def nacl_structure(a: float = 5.64) -> Any:
    """Rock-salt NaCl conventional cell (8 atoms), a pymatgen Structure."""
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def triclinic_structure(seed: int = 0) -> Any:
    """A 3-atom triclinic pymatgen Structure with non-trivial coordinates (one outside [0, 1))."""
    from pymatgen.core import Lattice, Structure

    rng = np.random.default_rng(seed)
    lattice = Lattice.from_parameters(3.1, 4.2, 5.3, 81.0, 97.0, 109.0)
    coords = rng.random((3, 3))
    coords[0, 0] = 1.25  # not wrapped: stored as given
    return Structure(lattice, ["Si", "O", "Ti"], coords)


def disordered_structure() -> Any:
    """A pymatgen Structure with a 50/50 Fe/Co site."""
    from pymatgen.core import Lattice, Structure

    return Structure(
        Lattice.cubic(2.87), [{"Fe": 0.5, "Co": 0.5}, "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def pt_cluster(n: int = 4, seed: int = 0, box: float = 20.0) -> Any:
    """A non-periodic ASE Pt cluster in a cubic box."""
    from ase import Atoms

    rng = np.random.default_rng(seed)
    positions = box / 2 + rng.normal(scale=1.5, size=(n, 3))
    return Atoms(["Pt"] * n, positions=positions, cell=np.eye(3) * box, pbc=False)


def random_structures(m: int, *, seed: int = 0, targets: tuple[str, ...] = ()) -> list[dict]:
    """m random structure dicts (``StructureBatch.from_structures`` form), 1-6 atoms each."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(m):
        n = int(rng.integers(1, 7))
        out.append(
            {
                "id": f"s{seed}-{k}",
                "lattice": np.diag(rng.uniform(3, 6, 3)) + rng.normal(scale=0.1, size=(3, 3)),
                "pbc": rng.random(3) < 0.8,
                "atomic_numbers": rng.integers(1, 90, n),
                "positions": rng.normal(scale=3, size=(n, 3)),
                "targets": {t: float(rng.normal()) for t in targets},
            }
        )
    return out


# ---- model and training helpers (perovskite rows, tiny stores) ------------------------------


_PEROV_CACHE: dict[str, dict] = {}


def perov_structures(limit: int = 20, *, ids: tuple[str, ...] = ()) -> list[dict]:
    """The first ``limit`` rows of perov5_dev.csv plus the rows with the given material ids, as
    ``StructureBatch.from_structures`` dicts with target ``heat_ref`` (parsed with pymatgen;
    skips when the data or pymatgen is absent)."""
    import csv

    path = shared_file("perov5_dev.csv")
    pytest.importorskip("pymatgen")
    from pymatgen.core import Structure

    wanted = set(ids)
    csv.field_size_limit(1 << 30)
    out: list[dict] = []
    with open(path, newline="") as f:
        for k, row in enumerate(csv.DictReader(f)):
            mid = row["material_id"]
            if k >= limit and not wanted:
                break
            if k >= limit and mid not in wanted:
                continue
            wanted.discard(mid)
            if mid not in _PEROV_CACHE:
                s = Structure.from_str(row["cif"], fmt="cif")
                _PEROV_CACHE[mid] = {
                    "id": mid,
                    "lattice": s.lattice.matrix.copy(),
                    "pbc": (True, True, True),
                    "atomic_numbers": np.array([site.specie.Z for site in s], dtype=np.int64),
                    "positions": s.cart_coords.copy(),
                    "targets": {"heat_ref": float(row["heat_ref"])},
                }
            out.append(_PEROV_CACHE[mid])
    return out


def model_inputs(structures: list[dict], **graph_settings: Any) -> dict[str, Any]:
    """Padded model inputs (torch tensors) of structure dicts, via deepergat.graphs."""
    import torch

    from deepergat.graphs import build_inputs
    from deepergat.store import StructureBatch

    g = build_inputs(StructureBatch.from_structures(structures), **graph_settings)
    assert (g.status == 0).all(), g.status
    return {k: torch.from_numpy(v) for k, v in g.inputs.items()}


def agree(y1: Any, y2: Any, std: float) -> bool:
    """DESIGN.md's agreement rule: |y1 - y2| ≤ 1e-5·std + 4·ulp32(|y1|), elementwise."""
    a = np.asarray(y1, dtype=np.float64)
    b = np.asarray(y2, dtype=np.float64)
    ulp = np.spacing(np.abs(a).astype(np.float32)).astype(np.float64)
    return bool(np.all(np.abs(a - b) <= 1e-5 * std + 4 * ulp))


@pytest.fixture
def tiny_store(tmp_path: Path) -> Path:
    """A 60-structure perovskite store with target heat_ref (eV) (skips without the data)."""
    from deepergat.store import StructureBatch, write_store

    path = tmp_path / "tiny.h5"
    write_store(path, StructureBatch.from_structures(perov_structures(60)),
                units={"heat_ref": "eV"})
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
    from deepergat.checkpoint import save_checkpoint
    from deepergat.model import DeeperGATGNN

    out = tmp_path_factory.mktemp("small-model")
    torch.manual_seed(1234)
    model = DeeperGATGNN(layers=2, target_mean=[-1.0], target_std=[0.5]).eval()
    ckpt = out / "small.ckpt"
    save_checkpoint(ckpt, model, targets=["heat_ref"], units=["eV"],
                    elements=list(SMALL_MODEL_ELEMENTS))
    result = export.export_model(ckpt, out, formats="onnx", n_check=export.exporter.MIN_CHECK)
    return {"checkpoint": ckpt, "onnx": Path(result.files[0].path), "target": "heat_ref",
            "units": "eV", "std": 0.5}


# ---- a tiny model exported to every format, once per session (export tests) -----------------


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
    from deepergat.checkpoint import save_checkpoint
    from deepergat.model import DeeperGATGNN

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
    result = export.export_model(ckpt, out / "exported", formats="all",
                                 n_check=export.exporter.MIN_CHECK, big_batch=1024)
    files = {f.format: Path(f.path) for f in result.files}
    return {"checkpoint": ckpt, "dir": out / "exported", **files, "result": result, "std": 0.8}
