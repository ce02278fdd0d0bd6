"""Which structures are the same crystal: pymatgen's `StructureMatcher`, asked only where it can
say yes.

Two structures match when pymatgen's `StructureMatcher` fits them with the tolerances of
`MatchTolerance` (pymatgen's defaults: ltol 0.2, stol 0.3, angle_tol 5°), reducing both to their
primitive cells and scaling their volumes first (its defaults too): a supercell, a permutation of
the atoms, a rigid move or a small jitter of a structure match it; another polymorph of the same
formula does not. A fit costs milliseconds, so structures are compared only when they can match:
the same reduced formula (a necessary condition — the matcher compares compositions first) —
never by a lossy pre-filter.

`StructureRows` turns rows of a store into pymatgen structures (read in blocks, kept once built);
`KnownStructures` indexes the structures of known stores (training data, a group's database) by
reduced formula and tells whether a structure is one of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepergat.contract import DEFAULT_MATCH_TOL
from deepergat.elements import SYMBOLS, compositions
from deepergat.errors import DeepergatError, SettingError, literal

from .store import Store, StructureBatch

__all__ = ["KnownStructures", "MatchTolerance", "Matcher", "StructureRows", "to_pymatgen"]


@dataclass(frozen=True)
class MatchTolerance:
    """`StructureMatcher` tolerances: ``ltol`` (fractional length), ``stol`` (site distance, in
    units of (V/n)^(1/3)), ``angle_tol`` (degrees). The defaults are pymatgen's; CDVAE's and
    DiffCSP's metric code uses 0.3, 0.5, 10."""

    ltol: float = DEFAULT_MATCH_TOL[0]
    stol: float = DEFAULT_MATCH_TOL[1]
    angle_tol: float = DEFAULT_MATCH_TOL[2]

    def __post_init__(self) -> None:
        for name in ("ltol", "stol", "angle_tol"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and np.isfinite(v) and v > 0):
                raise SettingError(f"{{match_tol}}: {name} must be a positive number, got "
                                   f"{literal(repr(v))}")

    @classmethod
    def parse(cls, text: str) -> MatchTolerance:
        """``"LTOL,STOL,ANGLE"`` (``"0.3,0.5,10"``) → tolerances.

        Raises:
            SettingError: not three positive numbers.
        """
        parts = [p.strip() for p in str(text).split(",")]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 3:
            raise SettingError(f"{{match_tol}} {literal(repr(text))}: give LTOL,STOL,ANGLE, "
                               "e.g. 0.2,0.3,5 (pymatgen's defaults)")
        return cls(*values)

    def __str__(self) -> str:
        return f"{self.ltol:g},{self.stol:g},{self.angle_tol:g}"


def to_pymatgen(batch: StructureBatch, k: int) -> Any:
    """The k-th structure of a batch as a pymatgen ``Structure`` (a ``Molecule`` when no axis is
    periodic). Species beyond the periodic table (Z > 118) are refused by pymatgen: callers
    match only structures that passed the screen's checks."""
    from pymatgen.core import Lattice, Molecule, Structure

    a, n = int(batch.offset[k]), int(batch.n_atoms[k])
    species = [SYMBOLS[int(z)] for z in batch.atomic_numbers[a : a + n]]
    coords = batch.positions[a : a + n]
    pbc = tuple(bool(x) for x in batch.pbc[k])
    if not any(pbc):
        return Molecule(species, coords)
    return Structure(Lattice(batch.lattice[k], pbc=pbc), species, coords,
                     coords_are_cartesian=True)


class StructureRows:
    """Rows of a store as pymatgen structures, read in blocks of nearby rows and kept.

    Args:
        store: an open `Store`.
        block: rows read at once around a wanted row (stores are chunked along the rows, so
            nearby rows cost little more than one).
    """

    def __init__(self, store: Store, *, block: int = 256) -> None:
        self.store = store
        self.block = int(block)
        self._built: dict[int, Any] = {}

    def get(self, row: int) -> Any:
        """The structure of ``row``."""
        got = self._built.get(row)
        if got is None:
            self.prefetch([row])
            got = self._built[row]
        return got

    def prefetch(self, rows: Iterable[int]) -> None:
        """Build the structures of ``rows`` (in sorted blocks)."""
        want = sorted({int(r) for r in rows} - self._built.keys())
        i = 0
        while i < len(want):
            a = want[i]
            b = min(self.store.n_structures, a + self.block)
            batch = self.store.read(a, b)
            while i < len(want) and want[i] < b:
                self._built[want[i]] = to_pymatgen(batch, want[i] - a)
                i += 1


class Matcher:
    """`StructureMatcher` with `MatchTolerance` (primitive cells, scaled volumes), counting its
    fits; a fit that raises (a degenerate cell) counts as no match.

    Each structure's primitive cell is found once and kept (the matcher would find it again for
    every comparison); fitting the primitive cells is what `StructureMatcher` does with
    ``primitive_cell=True``.
    """

    def __init__(self, tolerance: MatchTolerance | None = None) -> None:
        from pymatgen.analysis.structure_matcher import StructureMatcher

        self.tolerance = tolerance or MatchTolerance()
        t = self.tolerance
        self._matcher = StructureMatcher(ltol=t.ltol, stol=t.stol, angle_tol=t.angle_tol,
                                         primitive_cell=False, scale=True,
                                         attempt_supercell=False)
        self._primitive: dict[int, tuple[Any, Any]] = {}
        self.fits = 0

    def primitive(self, structure: Any) -> Any:
        """``structure``'s primitive cell (pymatgen's default tolerance, as the matcher's)."""
        key = id(structure)
        got = self._primitive.get(key)
        if got is None or got[0] is not structure:
            try:
                prim = structure.get_primitive_structure()
            except Exception:  # a degenerate cell: compared as it is
                prim = structure
            got = self._primitive[key] = (structure, prim)
        return got[1]

    def same(self, a: Any, b: Any) -> bool:
        """Whether structures ``a`` and ``b`` (of one reduced formula) are the same crystal."""
        self.fits += 1
        if type(a) is not type(b):  # a molecule never matches a crystal
            return False
        if not hasattr(a, "lattice"):  # molecules: the same species at the same distances
            return _same_molecule(a, b)
        try:
            return bool(self._matcher.fit(self.primitive(a), self.primitive(b)))
        except Exception:  # pymatgen on a degenerate cell: not provably the same
            return False


def _same_molecule(a: Any, b: Any, tol: float = 1e-3) -> bool:
    """Two molecules with the same sorted species and sorted pair distances (within ``tol``
    Å): the same up to a rigid move and a permutation, as far as these invariants say."""
    if sorted(str(s) for s in a.species) != sorted(str(s) for s in b.species):
        return False
    da, db = (np.sort(m.distance_matrix[np.triu_indices(len(m), 1)]) for m in (a, b))
    return bool(len(da) == len(db) and np.allclose(da, db, atol=tol))


@dataclass(frozen=True)
class _Known:
    store: int
    row: int
    id: str


class KnownStructures:
    """The structures of known stores, by reduced formula: whether a structure is one of them.

    Args:
        paths: structure stores (`deepergat pack` writes them from any format).
        tolerance: the matching tolerances.

    Raises:
        DeepergatError: a path that is not a readable structure store.
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]],
                 tolerance: MatchTolerance | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.matcher = Matcher(tolerance)
        self._stores: list[Store] = []
        self._rows: list[StructureRows] = []
        self._by_formula: dict[str, list[_Known]] = {}
        self.n_structures = 0
        try:
            for i, path in enumerate(self.paths):
                store = Store(path)
                self._stores.append(store)
                self._rows.append(StructureRows(store))
                self._index(i, store)
        except BaseException:
            self.close()
            raise

    def _index(self, i: int, store: Store) -> None:
        block = 1 << 16
        for a in range(0, store.n_structures, block):
            b = min(store.n_structures, a + block)
            names, _ = compositions(store.atomic_numbers(a, b), store.n_atoms[a:b])
            ids = store.ids(a, b)
            for k, name in enumerate(names):
                if name:
                    self._by_formula.setdefault(name, []).append(_Known(i, a + k, ids[k]))
        self.n_structures += store.n_structures

    def candidates(self, formula: str) -> int:
        """How many known structures have this reduced formula."""
        return len(self._by_formula.get(formula, ()))

    def match(self, structure: Any, formula: str) -> str | None:
        """The id of a known structure that matches ``structure`` (of reduced ``formula``),
        or None. Known stores are searched in the order given, rows in store order."""
        for known in self._by_formula.get(formula, ()):
            if self.matcher.same(self._rows[known.store].get(known.row), structure):
                return known.id
        return None

    def close(self) -> None:
        for store in self._stores:
            store.close()
        self._stores.clear()

    def __enter__(self) -> KnownStructures:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_stores(paths: Sequence[str | os.PathLike[str]]) -> None:
    """Refuse paths that are not structure stores before a long run starts.

    Raises:
        DeepergatError: naming the path (and that ``deepergat pack`` makes stores).
    """
    for path in paths:
        try:
            Store(path).close()
        except DeepergatError as e:
            raise DeepergatError(f"{e}; known structures are read from structure stores "
                                 "(`deepergat pack FILES -o known.h5` makes one)") from None
