"""What the searches need to know about each structure of a batch: the checks that give status
codes 1–5 (docs/design.md §9), the effective lattice of a partly periodic cell, and where each
structure's atoms lie in the batch's flat atom arrays."""

from __future__ import annotations

import numpy as np

from deepergat.contract import Status
from deepergat.io.store import StructureBatch

__all__ = ["atom_rows", "check_structures", "effective_lattice"]

#: Lattices whose normalized volume |det| / (|a| |b| |c|) falls below this are singular.
_MIN_NORMALIZED_VOLUME = 1e-6
_MIN_VECTOR_LENGTH = 1e-6


def effective_lattice(lattice: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Replace non-periodic rows by unit vectors orthogonal to the periodic ones.

    Args:
        lattice: [S, 3, 3] rows. pbc: [S, 3] bool.

    Returns:
        [S, 3, 3] full-rank frame whose periodic rows are the given ones; fractional coordinates
        in it give tight image bounds on the periodic axes.
    """
    eff = np.where(pbc[:, :, None], lattice, 0.0)
    n_per = pbc.sum(1)
    for s in np.nonzero(n_per < 3)[0]:
        per = [k for k in range(3) if pbc[s, k]]
        basis = [eff[s, k] for k in per]
        ortho: list[np.ndarray] = []
        for v in basis:
            w = v.astype(np.float64).copy()
            for u in ortho:
                w -= (w @ u) * u
            norm = np.linalg.norm(w)
            if norm > 0:
                ortho.append(w / norm)
        for k in range(3):
            if pbc[s, k]:
                continue
            for cand in np.eye(3):
                w = cand.copy()
                for u in ortho:
                    w -= (w @ u) * u
                norm = np.linalg.norm(w)
                if norm > 1e-3:
                    w /= norm
                    ortho.append(w)
                    eff[s, k] = w
                    break
    return eff


def check_structures(
    batch: StructureBatch,
    *,
    max_atoms: int | None = None,
    max_z: int | None = None,
) -> np.ndarray:
    """Status codes 1-5 of docs/design.md for each structure (6, overlap, needs the search).

    Args:
        batch: M structures.
        max_atoms: structures with more atoms get status 2 (None: no limit).
        max_z: atomic numbers outside 1..max_z get status 3 (None: only Z < 1 fails).

    Returns:
        [M] uint8, 0 where every check passed.
    """
    m = len(batch)
    status = np.zeros(m, dtype=np.uint8)
    if m == 0:
        return status
    n = batch.n_atoms
    owner = np.repeat(np.arange(m), n)
    z = batch.atomic_numbers
    bad_z = z < 1
    if max_z is not None:
        bad_z |= z > max_z
    z_fail = np.bincount(owner[bad_z], minlength=m) > 0
    pos_fail = np.bincount(owner[~np.isfinite(batch.positions).all(1)], minlength=m) > 0
    lat_fail = _lattice_bad(batch.lattice, batch.pbc)
    checks = [
        (n == 0, Status.ZERO_ATOMS),
        ((n > max_atoms) if max_atoms is not None else np.zeros(m, bool), Status.TOO_MANY_ATOMS),
        (z_fail, Status.UNKNOWN_ELEMENT),
        (pos_fail, Status.NONFINITE_COORDINATES),
        (lat_fail, Status.SINGULAR_LATTICE),
    ]
    for fail, code in reversed(checks):  # the first failing check wins
        status[fail] = code
    return status


def _lattice_bad(lattice: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """[S] bool: non-finite, zero-length or (nearly) linearly dependent periodic rows."""
    per = np.where(pbc[:, :, None], lattice, 0.0)
    bad = ~np.isfinite(per).all((1, 2))
    safe = np.where(np.isfinite(per), per, 0.0)
    lengths = np.linalg.norm(safe, axis=2)
    bad |= ((lengths < _MIN_VECTOR_LENGTH) & pbc).any(1)
    # Gram determinant of the periodic rows, normalized by their lengths: 1 for orthogonal
    # rows, 0 for dependent ones; works for 1, 2 and 3 periodic axes alike.
    unit = safe / np.where(lengths > 0, lengths, 1.0)[:, :, None]
    gram = unit @ unit.transpose(0, 2, 1)
    gram = np.where(pbc[:, :, None] & pbc[:, None, :], gram, np.eye(3)[None])
    bad |= np.linalg.det(gram) < _MIN_NORMALIZED_VOLUME**2
    return bad


def atom_rows(batch: StructureBatch, rows: np.ndarray) -> np.ndarray:
    """[n] indices into the batch's atom arrays of the atoms of ``rows``, in order."""
    n_s = batch.n_atoms[rows]
    if not len(n_s):  # every structure of the batch failed a check
        return np.zeros(0, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(n_s)[:-1]]).astype(np.int64)
    return np.arange(int(n_s.sum())) - np.repeat(starts, n_s) + np.repeat(batch.offset[rows], n_s)
