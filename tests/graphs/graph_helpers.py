"""What the graph tests share: the fixtures cut from public data sets (tests/data), brute-force
references, and edge comparisons."""

from __future__ import annotations

import csv
import itertools
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deepergat import graphs
from deepergat.io.store import StructureBatch

DATA = Path(__file__).resolve().parents[1] / "data"
#: The fixtures (tests/data) standing in for the data sets they were cut from.
FIXTURES = {"perov5_dev.csv": "perov5_sample.csv", "carbon24_dev.csv": "carbon24_sample.csv"}


def csv_structures(name: str, limit: int, *, ids: set[str] | None = None) -> list:
    """(id, pymatgen Structure) of the first ``limit`` rows (or of the rows ``ids``) of a
    fixture."""
    path = DATA / FIXTURES[name]
    pytest.importorskip("pymatgen")
    from pymatgen.core import Structure

    csv.field_size_limit(1 << 30)
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if ids is not None and row["material_id"] not in ids:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out.append((row["material_id"], Structure.from_str(row["cif"], fmt="cif")))
            if len(out) >= limit:
                break
    return out


def brute_force(lattice, positions, pbc, *, cutoff=8.0, reach=8):
    """Every (i, j, image) within the cutoff by enumerating a large block of images."""
    lattice = np.asarray(lattice, float)
    positions = np.asarray(positions, float)
    ranges = [range(-reach, reach + 1) if p else range(1) for p in pbc]
    images = np.array(list(itertools.product(*ranges)))
    out = []
    for i in range(len(positions)):
        for j in range(len(positions)):
            vec = positions[j] + images @ lattice - positions[i]
            d = np.linalg.norm(vec, axis=1)
            for n, dist in zip(images, d, strict=True):
                if dist <= cutoff and not (i == j and not n.any()):
                    out.append((i, j, dist, tuple(n)))
    return out


def nearest_with_ties(edges, n_atoms, k=12, tol=1e-6):
    """Per atom: sorted distances of the k nearest plus ties, from a list of (i, j, d, img)."""
    per = []
    for a in range(n_atoms):
        d = np.sort([e[2] for e in edges if e[0] == a])
        if len(d) > k:
            d = d[d <= d[k - 1] + tol]
        per.append(d)
    return per


def per_atom_distances(nl: graphs.NeighborList, n_atoms: int) -> list[np.ndarray]:
    """Each atom's sorted neighbor distances."""
    return [np.sort(nl.distance[nl.center == a]) for a in range(n_atoms)]


def edge_set(nl: graphs.NeighborList, relabel: Any = None) -> set:
    """The edges as a set of (center, neighbor, image, distance to 1e-9 Å), atoms renamed by
    ``relabel``."""
    relabel = (
        np.arange(max(nl.center.max(initial=0), nl.neighbor.max(initial=0)) + 1)
        if relabel is None
        else relabel
    )
    return {
        (int(relabel[c]), int(relabel[n]), tuple(int(x) for x in im), round(float(d), 9))
        for c, n, d, im in zip(nl.center, nl.neighbor, nl.distance, nl.image, strict=True)
    }


def batch_of(structures: list) -> StructureBatch:
    """A batch of (id, pymatgen Structure) pairs."""
    return StructureBatch.from_structures(
        [
            {
                "id": sid,
                "lattice": s.lattice.matrix,
                "atomic_numbers": s.atomic_numbers,
                "positions": s.cart_coords,
            }
            for sid, s in structures
        ]
    )


def ase_minimum_images(lat, pos, cutoff=8.0):
    """Per atom, the sorted minimum-image distances to every other atom within the cutoff."""
    ase = pytest.importorskip("ase")
    d = ase.Atoms(numbers=np.ones(len(pos), int), positions=pos, cell=lat,
                  pbc=True).get_all_distances(mic=True)
    return [np.sort([d[i, j] for j in range(len(pos)) if j != i and d[i, j] <= cutoff])
            for i in range(len(pos))]


def mic(lat: Any, pos: Any, **kw: Any) -> graphs.NeighborList:
    """`neighbor_list` with ``graph="minimum-image"``."""
    return graphs.neighbor_list(lat, pos, graph="minimum-image", **kw)


def per_atom_edges(nl: graphs.NeighborList, z: Any) -> list[list[tuple[int, float]]]:
    """Each center's sorted (neighbor Z, distance rounded to 1e-6 Å)."""
    return [sorted((int(z[j]), round(float(d), 6))
                   for j, d in zip(nl.neighbor[nl.center == a], nl.distance[nl.center == a],
                                   strict=True))
            for a in range(len(z))]

