"""Screening test helpers, imported by the tests and conftest.py: a candidate store with one
structure per status code, running the screen in-process or as (MPI) subprocesses, and comparing
predictions files by docs/design.md's rule."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from deepergat.io.store import StoreWriter, StructureBatch

REPO = Path(__file__).resolve().parents[1]


def load_make_candidates() -> Any:
    """benchmarks/make_candidates.py as a module."""
    spec = importlib.util.spec_from_file_location(
        "make_candidates", REPO / "benchmarks" / "make_candidates.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cell(z: list[int], frac: list[list[float]], a: float = 4.0, **kw: Any) -> dict[str, Any]:
    lattice = np.eye(3) * a
    return {"lattice": lattice, "pbc": (True, True, True), "atomic_numbers": z,
            "positions": np.asarray(frac, dtype=float).reshape(-1, 3) @ lattice, **kw}


_PEROV = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]

#: id -> (structure dict, expected status, expected flags); Z 92 is outside the session model's
#: seen elements (1..83) but inside its table (1..MAX_Z).
SPECIAL: dict[str, tuple[dict[str, Any], int, int]] = {
    "bad-zero-atoms": (_cell([], np.zeros((0, 3)).tolist()), 1, 0),
    "bad-too-many": (
        {"lattice": np.eye(3) * 40.0, "pbc": (True, True, True),
         "atomic_numbers": [6] * 1001,
         "positions": np.stack(np.meshgrid(*[np.arange(11) * 3.5] * 3, indexing="ij"), -1)
         .reshape(-1, 3)[:1001]},
        2, 0),
    "bad-element-120": (_cell([38, 120, 8, 8, 8], _PEROV), 3, 1),
    "bad-element-0": (_cell([38, 0, 8, 8, 8], _PEROV), 3, 1),
    "bad-nan-position": (
        {**_cell([38, 22, 8, 8, 8], _PEROV), "positions": [[np.nan, 0, 0], *[[1.0, 1, 1]] * 4]},
        4, 0),
    "bad-singular-lattice": ({**_cell([38, 22, 8, 8, 8], _PEROV),
                              "lattice": [[3.9, 0, 0], [3.9, 0, 0], [0, 0, 3.9]]}, 5, 0),
    "bad-overlap": (_cell([38, 22, 8, 8, 8], [*_PEROV[:4], [0.5, 0.01, 0.5]]), 6, 0),
    "flag-uranium": (_cell([92, 22, 8, 8, 8], _PEROV), 0, 1),
    "cluster-nonperiodic": ({"lattice": np.zeros((3, 3)), "pbc": (False, False, False),
                             "atomic_numbers": [78, 78, 78],
                             "positions": [[0, 0, 0], [2.6, 0, 0], [0, 2.6, 0]]}, 0, 0),
}
#: Where the special structures go among the candidates (spread over the chunks).
SPECIAL_AT = [3, 17, 40, 41, 77, 130, 131, 199, 250]


def write_screen_store(path: Path, n_candidates: int = 291, seed: int = 7) -> Path:
    """A store of generated candidates with the `SPECIAL` structures inserted at `SPECIAL_AT`."""
    mc = load_make_candidates()
    _, arrays = next(mc.batches(n_candidates, seed))
    cands = StructureBatch(
        index=np.arange(n_candidates), ids=mc.candidate_ids(0, n_candidates),
        n_atoms=arrays["n_atoms"],
        offset=np.concatenate([[0], np.cumsum(arrays["n_atoms"])[:-1]]).astype(np.int64),
        lattice=arrays["lattice"], pbc=arrays["pbc"], atomic_numbers=arrays["atomic_numbers"],
        positions=arrays["positions"],
    )
    structures = [cands.structure(k) for k in range(n_candidates)]
    for at, (sid, (s, _, _)) in zip(SPECIAL_AT, SPECIAL.items(), strict=True):
        structures.insert(at, {**s, "id": sid})
    batch = StructureBatch.from_structures(structures)
    with StoreWriter(path) as w:
        w.append(ids=batch.ids, n_atoms=batch.n_atoms, lattice=batch.lattice, pbc=batch.pbc,
                 atomic_numbers=batch.atomic_numbers, positions=batch.positions)
    return path


def run_inprocess(store: Path, model: Path, output: Path, **options: Any) -> Any:
    """`deepergat.screening.run.screen` in this process, one rank; everything in this process
    (``workers=0``) unless ``workers`` is given (None: the default worker processes)."""
    from deepergat.screening.mpi import SingleProcess
    from deepergat.screening.run import ScreenOptions, screen

    options.setdefault("workers", 0)
    opts = ScreenOptions.create(store, model=str(model), output=output, **options)
    return screen(opts, SingleProcess())


def screen_env(**extra: str) -> dict[str, str]:
    """Environment for screening subprocesses: no SLURM/MPI variables of the test runner."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "PMI_", "OMPI_", "PMIX_", "MPI_LOCALRANKID"))}
    env.update(extra)
    return env


def screen_cmd(*args: str, ranks: int | None = None) -> list[str]:
    """The command line of a screen subprocess (under ``mpiexec -n ranks`` when given)."""
    cmd = [sys.executable, "-m", "deepergat.cli.screen", *args]
    if ranks is None:
        return cmd
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("mpiexec not found (pip install mpich)")
    return [mpiexec, "-n", str(ranks), *cmd]


def run_cli(*args: str, ranks: int | None = None, timeout: float = 240,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a screen subprocess; returns the completed process (not checked)."""
    return subprocess.run(
        screen_cmd(*args, ranks=ranks), capture_output=True, text=True, timeout=timeout,
        env=env or screen_env(), cwd=REPO,
    )


def read_predictions(path: Path) -> dict[str, Any]:
    """Every dataset and root attribute of a predictions file."""
    with h5py.File(path, "r") as f:
        out: dict[str, Any] = {
            "attrs": {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()},
            "index": f["index"][:],
            "ids": [s.decode() for s in f["ids"][:]],
            "status": f["status"][:],
            "flags": f["flags"][:],
            "predictions": {k: ds[:] for k, ds in f["predictions"].items()},
            "units": {k: ds.attrs["units"] for k, ds in f["predictions"].items()},
        }
        if "embeddings" in f:
            out["embeddings"] = f["embeddings"][:]
        if "std" in f:
            out["std"] = {k: ds[:] for k, ds in f["std"].items()}
    return out


def agree(y1: Any, y2: Any, std: float) -> bool:
    """docs/design.md's rule: |y1 - y2| ≤ 1e-5·std + 4·ulp32(|y1|), elementwise."""
    a = np.asarray(y1, dtype=np.float64)
    b = np.asarray(y2, dtype=np.float64)
    ulp = np.spacing(np.abs(a).astype(np.float32)).astype(np.float64)
    return bool(np.all(np.abs(a - b) <= 1e-5 * std + 4 * ulp))


def assert_same_predictions(a: Path, b: Path, std: float) -> None:
    """ids, index, status, flags identical; predictions agree by the agreement rule (NaN alike)."""
    x, y = read_predictions(a), read_predictions(b)
    assert x["ids"] == y["ids"]
    np.testing.assert_array_equal(x["index"], y["index"])
    np.testing.assert_array_equal(x["status"], y["status"])
    np.testing.assert_array_equal(x["flags"], y["flags"])
    assert x["predictions"].keys() == y["predictions"].keys()
    for name, p in x["predictions"].items():
        q = y["predictions"][name]
        np.testing.assert_array_equal(np.isnan(p), np.isnan(q))
        ok = ~np.isnan(p)
        assert agree(p[ok], q[ok], std), f"{name}: max |diff| {np.abs(p[ok] - q[ok]).max()}"
    assert ("embeddings" in x) == ("embeddings" in y)
    for key in ("input_digest", "model_sha256", "format", "version"):
        assert x["attrs"][key] == y["attrs"][key]
