"""The periodic table as this package needs it, without torch or pymatgen: element symbols and
Pauling electronegativities (for writing formulas as pymatgen does).
"""

from __future__ import annotations

from collections.abc import Iterable
from math import gcd

__all__ = ["SYMBOLS", "formula", "symbol"]

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
    if not counts:
        return ""
    div = 0
    for n in counts.values():
        div = gcd(div, n)

    def key(z: int) -> tuple[float, str]:
        x = _TABLE[z - 1][1] if 0 < z <= len(_TABLE) else None
        return (float("inf") if x is None else x, symbol(z))

    return "".join(
        symbol(z) + (str(counts[z] // div) if counts[z] // div != 1 else "")
        for z in sorted(counts, key=key)
    )
