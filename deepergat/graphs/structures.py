"""What the searches need to know about each structure of a batch: the checks that give status
codes 1–5 and 8 (docs/design.md §9), the search's candidate counts, the effective lattice of a
partly periodic cell, the flags of a batch, and where each structure's atoms lie in the batch's
flat atom arrays."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from deepergat.contract import (
    FLAG_TRANSLATIONS_UNTESTED,
    FLAG_UNSEEN_ELEMENT,
    MAX_ATOM_CANDIDATES,
    MAX_STRUCTURE_CANDIDATES,
    MAX_TRANSLATION_ATOMS,
    Status,
)
from deepergat.io.store import StructureBatch

__all__ = [
    "atom_rows",
    "check_structures",
    "effective_lattice",
    "images_per_pair",
    "may_translate",
    "structure_flags",
]

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


def images_per_pair(lattice: np.ndarray, pbc: np.ndarray, cutoff: float) -> np.ndarray:
    """[S] float64: the most lattice images the search enumerates for one atom pair,
    ∏_k (⌊2·cutoff·|b_k|⌋ + 1) over the periodic axes (b_k the reciprocal vectors; 1 for a
    molecule), inf where it overflows (docs/design.md §4).

    Args:
        lattice: [S, 3, 3] rows, Å, non-singular on the periodic axes (status 5 passed).
        pbc: [S, 3] bool. cutoff: Å.
    """
    if not len(lattice):
        return np.zeros(0)
    recip = np.linalg.norm(np.linalg.inv(effective_lattice(lattice, pbc)), axis=1)  # [S, 3]
    with np.errstate(over="ignore", invalid="ignore"):
        side = np.where(pbc, np.floor(2.0 * float(cutoff) * recip) + 1.0, 1.0)
        count = np.prod(side, axis=1)
    return np.where(np.isfinite(count), count, np.inf)


def _too_many_images(batch: StructureBatch, rows: np.ndarray, cutoff: float) -> np.ndarray:
    """[S] bool: the search of ``rows`` at the cutoff would enumerate more than
    `MAX_ATOM_CANDIDATES` (atom, image) candidates around one atom or
    `MAX_STRUCTURE_CANDIDATES` (atom pair, image) ones in the structure (status 8)."""
    n = batch.n_atoms[rows].astype(np.float64)
    per_atom = n * images_per_pair(batch.lattice[rows], batch.pbc[rows], cutoff)
    return (per_atom > MAX_ATOM_CANDIDATES) | (n * per_atom > MAX_STRUCTURE_CANDIDATES)


def check_structures(
    batch: StructureBatch,
    *,
    max_atoms: int | None = None,
    max_z: int | None = None,
    cutoff: float | None = None,
) -> np.ndarray:
    """Status codes 1-5 and 8 of docs/design.md §9 for each structure (6 and 9 need the
    search).

    Args:
        batch: M structures.
        max_atoms: structures with more atoms get status 2 (None: no limit).
        max_z: atomic numbers outside 1..max_z get status 3 (None: only Z < 1 fails).
        cutoff: the search's cutoff, Å: structures whose search would pass the candidate
            bounds (`MAX_ATOM_CANDIDATES`, `MAX_STRUCTURE_CANDIDATES`) get status 8; None:
            not checked.

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
    if cutoff is not None:  # from the lattice and the atom count, before the search
        good = np.flatnonzero(status == Status.OK)
        status[good[_too_many_images(batch, good, cutoff)]] = Status.TOO_MANY_IMAGES
    return status


def may_translate(batch: StructureBatch, rows: np.ndarray) -> np.ndarray:
    """[S] bool: the structure could have a pure translation — more than one atom, a periodic
    axis, and element counts that share a divisor above 1 (a cell whose counts do not is
    primitive)."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.zeros(len(rows), dtype=bool)
    maybe = np.flatnonzero((batch.n_atoms[rows] > 1) & batch.pbc[rows].any(1))
    if not len(maybe):
        return out
    counts_n = batch.n_atoms[rows[maybe]]
    atom = atom_rows(batch, rows[maybe])
    owner = np.repeat(np.arange(len(maybe)), counts_n)
    key = owner * 1024 + np.clip(batch.atomic_numbers[atom], 0, 1023)
    uniq, per = np.unique(key, return_counts=True)
    group = uniq // 1024
    first = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    out[maybe[group[first]]] = np.gcd.reduceat(per, first) > 1
    return out


def structure_flags(
    batch: StructureBatch,
    *,
    seen_elements: Iterable[int],
    graph: str,
    translation_max_atoms: int = MAX_TRANSLATION_ATOMS,
) -> np.ndarray:
    """[M] uint8 flag bits of each structure (docs/design.md §9), the same for every path that
    predicts: `FLAG_UNSEEN_ELEMENT` where an atom's Z is not among ``seen_elements``;
    `FLAG_TRANSLATIONS_UNTESTED` where a ``"minimum-image"`` graph's structure has more than
    ``translation_max_atoms`` atoms and may have a pure translation (`may_translate`).

    Args:
        batch: M structures. seen_elements: atomic numbers seen in training.
        graph: the model's graph construction. translation_max_atoms: the model's limit.
    """
    m = len(batch)
    seen = np.zeros(256, dtype=bool)
    z_seen = np.array([v for v in seen_elements if 0 <= v < 256], dtype=np.int64)
    seen[z_seen] = True
    z = batch.atomic_numbers
    unseen = (z < 0) | (z >= len(seen))
    unseen[~unseen] = ~seen[z[~unseen]]
    owner = np.repeat(np.arange(m), batch.n_atoms)
    flags = np.where(np.bincount(owner[unseen], minlength=m) > 0, FLAG_UNSEEN_ELEMENT, 0)
    if graph == "minimum-image":
        big = np.flatnonzero(batch.n_atoms > translation_max_atoms)
        flags[big[may_translate(batch, big)]] |= FLAG_TRANSLATIONS_UNTESTED
    return flags.astype(np.uint8)


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
