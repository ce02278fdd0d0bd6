"""Write the legacy fixtures of tests/data/legacy/ with the STARTING commit of issue 23.

This script must run with the code as it was at commit 4a91ba8 (before the package moved into
layers: old module names such as ``deepergat.store``, ``deepergat.checkpoint``,
``deepergat.graphs`` as one module, ``deepergat.info``), never with the current code: the files
it writes prove that what that release wrote keeps loading (tests/test_legacy_files.py). The
tests never run it.

    git worktree add /tmp/deepergat-4a91ba8 4a91ba8
    ln -s ../export ../screening /tmp/deepergat-4a91ba8/deepergat/   # its package-dir mapping
    PYTHONPATH=/tmp/deepergat-4a91ba8 python tests/data/legacy/make_legacy.py

It trains three tiny models (dim 16, 2 layers, 10 epochs on the first 120 rows of
tests/data/perov5_sample.csv) with ``deepergat train``, exports the ensemble with
``deepergat export``, writes a 20-structure store and screens it with ``deepergat screen``, and
records what the starting commit computes and prints for each file in ``expected.json``.
Files written into OUT_DIR (default: this script's folder):

==========================  ==================================================================
``deepergatgnn.ckpt``       DeeperGATGNN, checkpoint format 1 (``best.ckpt`` of a run)
``cgcnn.ckpt``              CGCNN, checkpoint format 3
``ensemble.ckpt``           2-fold ensemble with a local error term, checkpoint format 2
``exported/model.onnx``     the ensemble exported to ONNX (parity-checked)
``exported/model.pt2``      the ensemble exported with ``torch.export`` (parity-checked)
``store.h5``                20 structures: 15 perovskites (rows 280–294, never trained on), 2
                            carbon allotropes, a Pt cluster (non-periodic), an overlap (status
                            6), an element outside the table (status 3)
``store.graphs-*.npz``      the store's graph cache (periodic, 8 Å, 12 neighbors)
``predictions.h5``          ``deepergat screen`` of the store with ``exported/model.onnx``
                            (``--embeddings``), and its ``predictions.top.csv``
``expected.json``           per model file (these and the bundled models' files): statuses,
                            predictions, spreads, embeddings of the store's structures; per
                            file: ``deepergat info --json`` and its text; ``read_predictions``
                            of the predictions file
==========================  ==================================================================
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent
#: The files whose `deepergat info` output is recorded, relative to OUT_DIR.
INFO_FILES = ("store.h5", "predictions.h5", "deepergatgnn.ckpt", "cgcnn.ckpt", "ensemble.ckpt",
              "exported/model.onnx", "exported/model.pt2")
#: The bundled models' files, relative to the folder that holds the package (`deepergat info`
#: output is recorded with these paths).
BUNDLED = ("deepergat/models/perovskite-heat-single/best.ckpt",
           "deepergat/models/perovskite-heat-single/model.onnx",
           "deepergat/models/perovskite-heat/ensemble.ckpt",
           "deepergat/models/perovskite-heat/model.onnx")
#: Model files whose predictions are recorded: relative to OUT_DIR, or bundled (`BUNDLED`).
MODELS = ("deepergatgnn.ckpt", "cgcnn.ckpt", "ensemble.ckpt", "exported/model.onnx",
          "exported/model.pt2", *BUNDLED)
TRAIN_ROWS = 120
STORE_ROWS = range(280, 295)


def _check_starting_commit() -> None:
    """Refuse to run on the redesigned layout (the fixtures must come from 4a91ba8)."""
    if importlib.util.find_spec("deepergat.train") is None or (
        importlib.util.find_spec("deepergat.store") is None
    ):
        sys.exit("make_legacy.py: run it with the starting commit 4a91ba8 on PYTHONPATH "
                 "(deepergat.train and deepergat.store are missing here)")


def _cli(*args: str | Path, cwd: Path | None = None) -> str:
    """Run ``python -m deepergat.cli ARGS`` (the starting commit's CLI); its stdout."""
    cmd = [sys.executable, "-m", "deepergat.cli", *map(str, args)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMI_", "OMPI_"))}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stdout}\n{done.stderr}")
    return done.stdout


def _perov_rows(rows: range | None = None, limit: int | None = None) -> list[dict[str, str]]:
    csv.field_size_limit(1 << 30)
    with open(DATA / "perov5_sample.csv", newline="") as f:
        all_rows = list(csv.DictReader(f))
    if limit is not None:
        return all_rows[:limit]
    return [all_rows[k] for k in rows or ()]


def _structure_from_cif(sid: str, cif: str, targets: dict[str, float]) -> dict[str, Any]:
    from pymatgen.core import Structure

    s = Structure.from_str(cif, fmt="cif")
    return {"id": sid, "lattice": s.lattice.matrix.copy(), "pbc": (True, True, True),
            "atomic_numbers": np.array([site.specie.Z for site in s], dtype=np.int64),
            "positions": s.cart_coords.copy(), "targets": targets}


def _cubic(sid: str, z: list[int], frac: list[list[float]], a: float = 4.0) -> dict[str, Any]:
    lattice = np.eye(3) * a
    return {"id": sid, "lattice": lattice, "pbc": (True, True, True),
            "atomic_numbers": np.array(z, dtype=np.int64),
            "positions": np.asarray(frac, dtype=float) @ lattice,
            "targets": {"heat_ref": math.nan}}


def write_structures(path: Path) -> None:
    """The 20-structure store (``deepergat.store.write_store`` of the starting commit)."""
    from deepergat.store import StructureBatch, write_store

    structures = [_structure_from_cif(r["material_id"], r["cif"],
                                      {"heat_ref": float(r["heat_ref"])})
                  for r in _perov_rows(STORE_ROWS)]
    csv.field_size_limit(1 << 30)
    with open(DATA / "carbon24_sample.csv", newline="") as f:
        carbon = [r for _, r in zip(range(2), csv.DictReader(f), strict=False)]
    structures += [_structure_from_cif(f"carbon-{r['material_id']}", r["cif"],
                                       {"heat_ref": math.nan}) for r in carbon]
    structures.append({"id": "pt3-cluster", "lattice": np.zeros((3, 3)),
                       "pbc": (False, False, False), "atomic_numbers": np.array([78, 78, 78]),
                       "positions": np.array([[0, 0, 0], [2.6, 0, 0], [0, 2.6, 0]], float),
                       "targets": {"heat_ref": math.nan}})
    perov = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    structures.append(_cubic("overlap", [38, 22, 8, 8, 8], [*perov[:4], [0.5, 0.01, 0.5]]))
    structures.append(_cubic("element-120", [38, 120, 8, 8, 8], perov))
    assert len(structures) == 20
    write_store(path, StructureBatch.from_structures(structures), units={"heat_ref": "eV"})


def train_models(work: Path, out: Path) -> None:
    """The three checkpoints, trained by ``deepergat train`` of the starting commit."""
    rows = _perov_rows(limit=TRAIN_ROWS)
    with open(work / "train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    _cli("pack", work / "train.csv", "-o", work / "train.h5", "--target", "heat_ref:eV",
         "--workers", "1")
    common = ["--data", work / "train.h5", "--target", "heat_ref", "--epochs", "10",
              "--batch-size", "32", "--seed", "0", "--val-fraction", "0.2",
              "--test-fraction", "0.1", "--device", "cpu", "--cache-dir", work / "cache",
              "--layers", "2"]
    (work / "dgg.yaml").write_text("model:\n  dim: 16\n")
    (work / "cgcnn.yaml").write_text("model:\n  dim: 16\n  hidden: 16\n")
    _cli("train", *common, "--config", work / "dgg.yaml", "--out", work / "dgg")
    shutil.copy(work / "dgg" / "best.ckpt", out / "deepergatgnn.ckpt")
    _cli("train", *common, "--config", work / "cgcnn.yaml", "--arch", "cgcnn",
         "--out", work / "cgcnn")
    shutil.copy(work / "cgcnn" / "best.ckpt", out / "cgcnn.ckpt")
    # 20 neighbors of 84 references: with 5, the ONNX file of this barely trained ensemble
    # missed the export's parity check on its spread (by 2.2x the allowed difference)
    _cli("train", *common, "--config", work / "dgg.yaml", "--ensemble", "2",
         "--members", "folds", "--local-neighbors", "20", "--out", work / "ens")
    shutil.copy(work / "ens" / "ensemble.ckpt", out / "ensemble.ckpt")


def _plain(values: np.ndarray | None) -> list[Any] | None:
    """A float32 array as nested lists (NaN as None), each value written with the fewest
    digits that read back as the same float32."""
    if values is None:
        return None
    return [_plain(v) if np.ndim(v) else
            (None if math.isnan(float(v)) else float(str(np.float32(v)))) for v in values]


def record_predictions(out: Path) -> dict[str, Any]:
    """What each model predicts for the store's structures, through `deepergat.export.load`."""
    import deepergat
    from deepergat.contract import DEFAULT_MAX_ATOMS, DEFAULT_OVERLAP_THRESHOLD, MAX_Z
    from deepergat.export import load
    from deepergat.graphs import build_inputs
    from deepergat.store import Store

    with Store(out / "store.h5") as store:
        batch = store.read(0, len(store))
    models: dict[str, Any] = {}
    package_parent = Path(deepergat.__file__).resolve().parent.parent
    for name in MODELS:
        path = package_parent / name if name in BUNDLED else out / name
        predictor = load(path, device="cpu")
        g = build_inputs(batch, **predictor.graph_settings, max_z=MAX_Z,
                         max_atoms=DEFAULT_MAX_ATOMS,
                         overlap_threshold=DEFAULT_OVERLAP_THRESHOLD)
        result = predictor.predict(g.inputs)
        models[name] = {
            "backend": predictor.backend,
            "graph_settings": predictor.graph_settings,
            "target_std": [float(v) for v in predictor.target_std],
            "status": [int(s) for s in g.status],
            "rows": [int(r) for r in g.rows],
            "prediction": _plain(result.prediction),
            "std": _plain(result.std),
            "embedding": _plain(result.embedding),
        }
    return models


def main() -> None:
    _check_starting_commit()
    out = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else HERE
    out.mkdir(parents=True, exist_ok=True)
    for old in ("deepergatgnn.ckpt", "cgcnn.ckpt", "ensemble.ckpt", "exported", "store.h5",
                "predictions.h5", "predictions.h5.parts", "predictions.top.csv",
                "expected.json"):
        p = out / old
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    for p in out.glob("store.graphs-*.npz"):
        p.unlink()
    with tempfile.TemporaryDirectory(prefix="deepergat-legacy-") as tmp:
        work = Path(tmp)
        train_models(work, out)
        _cli("export", out / "ensemble.ckpt", "--format", "onnx", "--format", "pt2",
             "-o", out / "exported")
    write_structures(out / "store.h5")

    from deepergat.data import load_graphs

    load_graphs(out / "store.h5", cutoff=8.0, max_neighbors=12, graph="periodic",
                cache_dir=out)
    _cli("screen", "--input", "store.h5", "--model", "exported/model.onnx",
         "--output", "predictions.h5", "--embeddings", "--top", "5", "--rank-by", "upper",
         "--chunk-size", "8", "--workers", "0", "--device", "cpu", cwd=out)
    shutil.rmtree(out / "predictions.h5.parts")  # only the run's log is left there

    import onnxruntime
    import torch

    import deepergat
    from deepergat.info import describe, format_text

    # `deepergat info` prints the path as given: recorded relative to OUT_DIR, and for the
    # bundled files to the folder that holds the package
    here = Path.cwd()
    info = {}
    try:
        for folder, names in ((out, INFO_FILES),
                              (Path(deepergat.__file__).resolve().parent.parent, BUNDLED)):
            os.chdir(folder)
            info.update({name: {"json": describe(name), "text": format_text(describe(name), name)}
                         for name in names})
    finally:
        os.chdir(here)
    frame = deepergat.read_predictions(str(out / "predictions.h5"))
    expected = {
        "made_by": {"commit": "4a91ba8", "deepergat": deepergat.__version__,
                    "torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "models": record_predictions(out),
        "info": info,
        "read_predictions": {"columns": [str(c) for c in frame.columns],
                             "dtypes": [str(t) for t in frame.dtypes],
                             "values": {str(c): _plain(frame[c].to_numpy())
                                        if frame[c].dtype.kind == "f"
                                        else frame[c].tolist() for c in frame.columns}},
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    for p in sorted(out.rglob("*")):
        if p.is_file():
            print(f"{p.stat().st_size:>9}  {p.relative_to(out)}")


if __name__ == "__main__":
    main()
