"""Structure factories and the locator of the fixtures in tests/data.

A module of its own (not conftest.py): `from conftest import ...` is ambiguous once a test
subfolder has its own conftest.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: The fixtures cut from the public data sets (tests/data/README.md).
DATA = Path(__file__).resolve().parent / "data"


def data_file(name: str) -> Path:
    """A fixture file of tests/data (a missing one is an error: the fixtures are committed)."""
    path = DATA / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: test fixture missing from the repository")
    return path


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


def damaged_store(store: Path, path: Path, dataset: str = "positions") -> Path:
    """A copy of ``store`` at ``path`` with 16 bytes of ``dataset``'s first stored chunk
    overwritten (the damage a bad disk block does: HDF5 cannot decompress or resolve it)."""
    import h5py

    path.write_bytes(store.read_bytes())
    with h5py.File(path, "r") as f:
        chunk = f[dataset].id.get_chunk_info(0)
    data = bytearray(path.read_bytes())
    data[chunk.byte_offset + 8: chunk.byte_offset + 24] = b"\xff" * 16
    path.write_bytes(bytes(data))
    return path
