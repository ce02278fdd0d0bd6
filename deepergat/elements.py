"""The periodic table as this package needs it, without torch or pymatgen: element symbols and
Pauling electronegativities (for writing formulas as pymatgen does), and the compositions of many
structures at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from math import gcd

import numpy as np

__all__ = ["SYMBOLS", "atomic_number", "compositions", "formula", "symbol"]

#: (symbol, Pauling electronegativity or None) of Z = 1..118 (pymatgen's values).
_TABLE: tuple[tuple[str, float | None], ...] = (
    ("H", 2.2), ("He", None), ("Li", 0.98), ("Be", 1.57), ("B", 2.04), ("C", 2.55), ("N", 3.04),
    ("O", 3.44), ("F", 3.98), ("Ne", None), ("Na", 0.93), ("Mg", 1.31), ("Al", 1.61), ("Si", 1.9),
    ("P", 2.19), ("S", 2.58), ("Cl", 3.16), ("Ar", None), ("K", 0.82), ("Ca", 1.0), ("Sc", 1.36),
    ("Ti", 1.54), ("V", 1.63), ("Cr", 1.66), ("Mn", 1.55), ("Fe", 1.83), ("Co", 1.88),
    ("Ni", 1.91), ("Cu", 1.9), ("Zn", 1.65), ("Ga", 1.81), ("Ge", 2.01), ("As", 2.18),
    ("Se", 2.55), ("Br", 2.96), ("Kr", 3.0), ("Rb", 0.82), ("Sr", 0.95), ("Y", 1.22),
    ("Zr", 1.33), ("Nb", 1.6), ("Mo", 2.16), ("Tc", 1.9), ("Ru", 2.2), ("Rh", 2.28), ("Pd", 2.2),
    ("Ag", 1.93), ("Cd", 1.69), ("In", 1.78), ("Sn", 1.96), ("Sb", 2.05), ("Te", 2.1),
    ("I", 2.66), ("Xe", 2.6), ("Cs", 0.79), ("Ba", 0.89), ("La", 1.1), ("Ce", 1.12), ("Pr", 1.13),
    ("Nd", 1.14), ("Pm", 1.13), ("Sm", 1.17), ("Eu", 1.2), ("Gd", 1.2), ("Tb", 1.1), ("Dy", 1.22),
    ("Ho", 1.23), ("Er", 1.24), ("Tm", 1.25), ("Yb", 1.1), ("Lu", 1.27), ("Hf", 1.3), ("Ta", 1.5),
    ("W", 2.36), ("Re", 1.9), ("Os", 2.2), ("Ir", 2.2), ("Pt", 2.28), ("Au", 2.54), ("Hg", 2.0),
    ("Tl", 1.62), ("Pb", 2.33), ("Bi", 2.02), ("Po", 2.0), ("At", 2.2), ("Rn", 2.2), ("Fr", 0.7),
    ("Ra", 0.9), ("Ac", 1.1), ("Th", 1.3), ("Pa", 1.5), ("U", 1.38), ("Np", 1.36), ("Pu", 1.28),
    ("Am", 1.3), ("Cm", 1.3), ("Bk", 1.3), ("Cf", 1.3), ("Es", 1.3), ("Fm", 1.3), ("Md", 1.3),
    ("No", 1.3), ("Lr", 1.3), ("Rf", None), ("Db", None), ("Sg", None), ("Bh", None),
    ("Hs", None), ("Mt", None), ("Ds", None), ("Rg", None), ("Cn", None), ("Nh", None),
    ("Fl", None), ("Mc", None), ("Lv", None), ("Ts", None), ("Og", None),
)
#: SYMBOLS[Z] is the symbol of element Z (index 0: "X", no element).
SYMBOLS: tuple[str, ...] = ("X", *(s for s, _ in _TABLE))


def symbol(z: int) -> str:
    """The symbol of element ``z``, or ``Z<z>`` outside 1..118."""
    return SYMBOLS[z] if 0 < z < len(SYMBOLS) else f"Z{z}"


def formula(atomic_numbers: Iterable[int]) -> str:
    """The reduced formula of a structure's atoms, elements by increasing electronegativity
    (ties by symbol, those without a value last), as pymatgen's ``reduced_formula`` writes
    it (``SrTiO3``) except its special names for elemental gases (``N``, not ``N2``).
    """
    counts: dict[int, int] = {}
    for z in atomic_numbers:
        counts[int(z)] = counts.get(int(z), 0) + 1
    return _written(counts)


def _written(counts: dict[int, int]) -> str:
    """`formula` of element counts {Z: n} (reduced here)."""
    if not counts:
        return ""
    div = 0
    for n in counts.values():
        div = gcd(div, n)
    return "".join(
        symbol(z) + (str(counts[z] // div) if counts[z] // div != 1 else "")
        for z in sorted(counts, key=_order)
    )


def _order(z: int) -> tuple[float, str]:
    x = _TABLE[z - 1][1] if 0 < z <= len(_TABLE) else None
    return (float("inf") if x is None else x, symbol(z))


def atomic_number(sym: str) -> int:
    """Z of an element symbol (``"Fe"`` → 26), 0 when it names none."""
    return _NUMBER.get(sym, 0)


_NUMBER = {s: z for z, s in enumerate(SYMBOLS) if z}


def compositions(atomic_numbers: np.ndarray, n_atoms: np.ndarray
                 ) -> tuple[list[str], np.ndarray]:
    """The reduced formula and the number of distinct elements of each of M structures.

    Args:
        atomic_numbers: [N] Z of every atom, structure after structure (0–255).
        n_atoms: [M] atoms per structure, summing to N.

    Returns:
        (M reduced formulas as `formula` writes them, "" for a structure without atoms;
        [M] uint8 distinct elements). Each distinct composition is written once, so the cost is
        a few array operations per structure.
    """
    m = len(n_atoms)
    z = np.asarray(atomic_numbers, dtype=np.int64)
    which = np.repeat(np.arange(m, dtype=np.int64), np.asarray(n_atoms, dtype=np.int64))
    counts = np.bincount(which * 256 + z, minlength=m * 256).reshape(m, 256)
    present = counts > 0
    n_elements = present.sum(1).astype(np.uint8)
    if not m:
        return [], n_elements
    divisor = np.gcd.reduce(counts, axis=1)
    reduced = (counts // np.maximum(divisor, 1)[:, None]).astype(np.uint64)
    # two 64-bit hashes of each reduced composition stand for it (a collision of both for two
    # different compositions among millions has probability ~1e-26); each is written once
    keys = np.stack([reduced @ _HASH[0], reduced @ _HASH[1]], axis=1)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    names = []
    for i in first:
        nz = np.flatnonzero(reduced[i])
        names.append(_written(dict(zip(nz.tolist(), reduced[i, nz].tolist(), strict=True))))
    return [names[i] for i in inverse.reshape(-1)], n_elements


_HASH = np.random.default_rng(20261206).integers(1, 2**63, size=(2, 256), dtype=np.uint64) | 1
