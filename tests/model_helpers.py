"""Helpers for the model, training and prediction tests: perovskite rows parsed with pymatgen,
padded model inputs, docs/design.md's agreement rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: The perovskite fixture (tests/data/README.md).
PEROV = Path(__file__).resolve().parent / "data" / "perov5_sample.csv"


_PEROV_CACHE: dict[str, dict] = {}


def perov_structures(limit: int = 20, *, ids: tuple[str, ...] = ()) -> list[dict]:
    """The first ``limit`` rows of the perovskite fixture (tests/data/perov5_sample.csv, 300
    rows) plus the rows with the given material ids, as ``StructureBatch.from_structures`` dicts
    with target ``heat_ref`` (parsed with pymatgen)."""
    import csv

    path = PEROV
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
    from deepergat.io.store import StructureBatch

    g = build_inputs(StructureBatch.from_structures(structures), **graph_settings)
    assert (g.status == 0).all(), g.status
    return {k: torch.from_numpy(v) for k, v in g.inputs.items()}


def agree(y1: Any, y2: Any, std: float) -> bool:
    """docs/design.md's agreement rule: |y1 - y2| ≤ 1e-5·std + 4·ulp32(|y1|), elementwise."""
    a = np.asarray(y1, dtype=np.float64)
    b = np.asarray(y2, dtype=np.float64)
    ulp = np.spacing(np.abs(a).astype(np.float32)).astype(np.float64)
    return bool(np.all(np.abs(a - b) <= 1e-5 * std + 4 * ulp))


def cpu_onnx_backend() -> str:
    """The backend an ``.onnx`` file loads on for the CPU here: ``openvino`` where the
    package is installed (the ``[cpu]`` extra), else ``onnxruntime``."""
    from deepergat.export.openvino_runtime import pick_runtime

    return pick_runtime("auto", on_cuda=False)
