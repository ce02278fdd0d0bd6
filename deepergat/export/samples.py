"""Deterministic structures for parity checks when the user gives no data (numpy only).

`parity_structures` makes a varied, reproducible set: ABX3 perovskite cells on a strained and
jittered cubic prototype (the family screening runs on), their 2×1×1 and 2×2×1 supercells,
small random cells of 1-8 atoms with any element of the model's table (Z = 1..MAX_Z), slabs
periodic on two axes, and non-periodic clusters. `edge_case_structures` adds the sizes
exporters get wrong: a one-atom crystal and atoms whose only edge is their self loop.

Positions are kept at least ~1.2 Å apart, so no structure trips the overlap check.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deepergat.contract import DEFAULT_CUTOFF, MAX_Z
from deepergat.io.store import StructureBatch

__all__ = ["edge_case_structures", "parity_structures"]

#: A, B, X element pools of the perovskite-like cells (atomic numbers).
_A_SITES = (11, 19, 37, 55, 20, 38, 56, 82, 57, 39, 47, 81, 83, 48, 12, 21, 49, 50, 3, 72)
_B_SITES = (22, 40, 72, 41, 73, 23, 24, 25, 26, 27, 28, 29, 30, 13, 31, 49, 50, 21, 12, 32,
            42, 74, 44, 45, 77, 78, 76, 75, 14, 51, 52, 46, 47, 79)
_X_SITES = (8, 8, 8, 9, 7, 16, 17, 35, 53)
_PROTOTYPE = np.array(
    [[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]]
)
#: Element table of the model (docs/design.md): Z = 1..MAX_Z.


def _perovskite(rng: np.random.Generator, reps: tuple[int, int, int]) -> dict[str, Any]:
    a = rng.uniform(3.6, 4.6)
    strain = np.eye(3) + rng.normal(scale=0.02, size=(3, 3))
    strain = (strain + strain.T) / 2
    cell = a * strain
    shifts = np.array([[i, j, k] for i in range(reps[0]) for j in range(reps[1])
                       for k in range(reps[2])], dtype=float)
    frac = (_PROTOTYPE[None, :, :] + shifts[:, None, :]).reshape(-1, 3)
    z = []
    for _ in range(len(shifts)):
        x = int(rng.choice(_X_SITES))
        z += [int(rng.choice(_A_SITES)), int(rng.choice(_B_SITES)), x, x, x]
    lattice = cell * np.array(reps, dtype=float)[:, None]
    positions = frac @ cell + rng.normal(scale=0.03, size=frac.shape)
    return {"lattice": lattice, "pbc": (True, True, True), "atomic_numbers": z,
            "positions": positions}


def _spread_points(
    rng: np.random.Generator, n: int, box: np.ndarray, min_dist: float
) -> np.ndarray:
    """n Cartesian points in the parallelepiped ``box`` (rows), pairwise ≥ min_dist apart
    (ignoring periodic images, which the callers' cells are large enough for)."""
    points: list[np.ndarray] = []
    while len(points) < n:
        p = rng.random(3) @ box
        if all(np.linalg.norm(p - q) >= min_dist for q in points):
            points.append(p)
    return np.array(points).reshape(-1, 3)


def _random_cell(rng: np.random.Generator) -> dict[str, Any]:
    n = int(rng.integers(1, 9))
    length = 2.6 * max(n, 2) ** (1 / 3) + rng.uniform(0.5, 1.5)
    lattice = np.diag(rng.uniform(0.9, 1.1, 3) * length) + rng.normal(scale=0.2, size=(3, 3))
    frac = _spread_points(rng, n, np.eye(3), 0.35)
    return {"lattice": lattice, "pbc": (True, True, True),
            "atomic_numbers": rng.integers(1, MAX_Z + 1, n).tolist(), "positions": frac @ lattice}


def _slab(rng: np.random.Generator) -> dict[str, Any]:
    n = int(rng.integers(2, 7))
    a = rng.uniform(3.0, 5.0)
    lattice = np.diag([a, a * rng.uniform(0.9, 1.1), 15.0])
    positions = _spread_points(rng, n, np.diag([a, a, 4.0]), 1.6)
    positions[:, 2] += 5.0
    return {"lattice": lattice, "pbc": (True, True, False),
            "atomic_numbers": rng.integers(1, MAX_Z + 1, n).tolist(), "positions": positions}


def _cluster(rng: np.random.Generator) -> dict[str, Any]:
    n = int(rng.integers(2, 13))
    positions = _spread_points(rng, n, np.eye(3) * 2.4 * n ** (1 / 3), 2.0) + 10.0
    return {"lattice": np.eye(3) * 20.0, "pbc": (False, False, False),
            "atomic_numbers": rng.integers(1, MAX_Z + 1, n).tolist(), "positions": positions}


def parity_structures(n: int = 1024, *, seed: int = 0) -> StructureBatch:
    """n varied structures for parity checks, deterministic by ``seed``.

    Shares: 60% perovskite cells (5 atoms), 10% 2×1×1 and 5% 2×2×1 supercells (10, 20 atoms),
    10% random cells (1-8 atoms, any Z in 1..MAX_Z), 7% slabs (periodic on two axes), 8%
    non-periodic clusters (2-12 atoms).

    Returns:
        `StructureBatch` with ids ``parity-<k>``.
    """
    rng = np.random.default_rng(seed)
    kinds = rng.choice(6, size=n, p=[0.60, 0.10, 0.05, 0.10, 0.07, 0.08])
    out = []
    for k, kind in enumerate(kinds):
        if kind == 0:
            s = _perovskite(rng, (1, 1, 1))
        elif kind == 1:
            s = _perovskite(rng, (2, 1, 1))
        elif kind == 2:
            s = _perovskite(rng, (2, 2, 1))
        elif kind == 3:
            s = _random_cell(rng)
        elif kind == 4:
            s = _slab(rng)
        else:
            s = _cluster(rng)
        s["id"] = f"parity-{k}"
        out.append(s)
    return StructureBatch.from_structures(out)


def edge_case_structures(cutoff: float = DEFAULT_CUTOFF) -> dict[str, StructureBatch]:
    """Batches with the sizes 1 that traced and exported graphs get wrong.

    Args:
        cutoff: the model's graph cutoff, Å (isolated atoms are placed beyond it).

    Returns:
        label -> batch: ``one-crystal`` (C = 1), ``one-atom-crystal`` (N = A = C = 1, periodic:
        its neighbors are its own images), ``self-loop-only`` (one isolated atom: N = K = C =
        A = 1), ``self-loop-in-batch`` (atoms whose only edge is the self loop next to ordinary
        crystals, K > 1).
    """
    rng = np.random.default_rng(12345)
    perov = _perovskite(rng, (1, 1, 1)) | {"id": "edge-perovskite"}
    one_atom = {"id": "edge-one-atom", "lattice": np.eye(3) * 3.1, "pbc": (True, True, True),
                "atomic_numbers": [29], "positions": np.zeros((1, 3))}
    isolated = {"id": "edge-isolated-atom", "lattice": np.zeros((3, 3)),
                "pbc": (False, False, False), "atomic_numbers": [26], "positions": np.zeros((1, 3))}
    far = cutoff + 2.0
    pair = {"id": "edge-far-pair", "lattice": np.zeros((3, 3)), "pbc": (False, False, False),
            "atomic_numbers": [1, 8], "positions": np.array([[0.0, 0.0, 0.0], [far, 0.0, 0.0]])}
    other = _random_cell(rng) | {"id": "edge-random"}
    return {
        "one-crystal": StructureBatch.from_structures([perov]),
        "one-atom-crystal": StructureBatch.from_structures([one_atom]),
        "self-loop-only": StructureBatch.from_structures([isolated]),
        "self-loop-in-batch": StructureBatch.from_structures([perov, pair, one_atom, other]),
    }
