"""A fast CIF reader that gives exactly the structure pymatgen's CIF path gives, or declines.

`parse_cif_text` (``cif``) reads a CIF as ``CifParser.from_str(text).parse_structures(
primitive=False)`` and ``Structure.from_sites`` read it. That path spends most of its time in
Python: a regex tokenizer, a space-group table rebuilt on every call, a merge of symmetry copies
one ``find_in_coord_list_pbc`` call at a time, sorting sites by comparing pymatgen objects.

`read_cif` does the same work with gemmi's C++ tokenizer (``gemmi.cif.read_string``) and numpy,
and follows pymatgen step by step, so that the record is the same to the last bit:

* the lattice: the usual setting of ``Lattice.from_parameters`` (c along z, a in the xz plane),
  each product formed in pymatgen's order;
* the symmetry operations: the first listed ``*_as_xyz`` / ``*_operation_xyz`` key whose
  operations all parse, each parsed by pymatgen's own ``SymmOp.from_xyz_str`` (cached);
* the sites: type symbols read as ``CifParser._parse_symbol`` reads them (``O2-`` is O),
  fractional coordinates within 1e-4 of 1/3 or 2/3 set to them (``_sanitize_data``);
* the expansion: every operation applied to every site (``SymmOp.operate``: the same ``np.dot``
  call where an operation's rounding could depend on the order of the sum), wrapped to [0, 1)
  with ``x - floor(x)``, and a copy dropped when it lies within 1e-4 (fractional, every axis,
  periodic) of a copy already kept for the same species — pymatgen's ``_unique_coords``, with
  the same arithmetic, in the same order;
* the order: species groups sorted as pymatgen sorts ``Composition`` s, then the sites sorted
  by ``Site.__lt__`` (electronegativity, then the species string; Python's stable sort given
  the same comparisons, NaN electronegativities included);
* Cartesian positions: ``np.dot(frac, matrix)`` per site, as ``PeriodicSite.coords``.

Whatever this reader cannot reproduce with certainty it declines, with a reason, and the caller
parses with pymatgen: text gemmi rejects or may tokenize differently from pymatgen (non-ASCII,
``#`` after other text on a line, CIF 2 quotes, reserved words in other case, several blocks),
partial or other than 1 occupancies, sites that pymatgen would merge into one, type symbols that
are missing or not plain (``Wat``, ``OH``, ``Nb,Zr``), magnetic CIFs, implicit hydrogens,
operations that must come from a space-group symbol or number, a missing or degenerate cell,
coordinates that are not numbers, and blocks over the atom limit (pymatgen's path refuses them
with its message).
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["SYMOP_KEYS", "FastCif", "gemmi_available", "read_cif"]

#: Where pymatgen finds a block's symmetry operations, in the order it looks.
SYMOP_KEYS = ("_symmetry_equiv_pos_as_xyz", "_symmetry_equiv_pos_as_xyz_",
               "_space_group_symop_operation_xyz", "_space_group_symop_operation_xyz_")
_CELL_KEYS = ("_cell_length_a", "_cell_length_b", "_cell_length_c",
              "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma")
_SITE_KEYS = ("_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x",
              "_atom_site_fract_y", "_atom_site_fract_z")
_OXI_KEYS = ("_atom_type_symbol", "_atom_type_oxidation_number")
#: Substrings of keys that make pymatgen read the block as magnetic (``is_magcif``).
_MAGNETIC = ("_space_group_magn", "_atom_site_moment", "_space_group_symop_magn")
#: pymatgen's block split (`CifFile.from_str`).
_PYMATGEN_BLOCK = re.compile(r"^\s*data_", re.MULTILINE | re.DOTALL)
#: Words that gemmi and pymatgen read differently: frames, global blocks, ``_eof``; and
#: ``loop_`` in any case but lower or glued to more text (pymatgen starts a loop at any token
#: that begins with ``loop_``, in lower case only).
_RESERVED = re.compile(r"(?<!\S)(?:save_|global_|stop_|_eof(?!\S))", re.IGNORECASE)
_LOOP_GLUED = re.compile(r"loop_\S")
#: Line breaks that Python's ``splitlines`` (pymatgen) knows and gemmi may not.
_ODD_BREAKS = re.compile(r"[\x0b\x0c\x1c\x1d\x1e]")
#: pymatgen's special type symbols (``_parse_symbol``): water, hydroxide, nitrate.
_SPECIAL_SYMBOL = re.compile("Hw|Ow|Wat|wat|OH|OH2|NO3")
#: Type symbols read here: an element symbol, digits, a charge (``Fe``, ``O2-``, ``Fe2.5+``).
_PLAIN_SYMBOL = re.compile(r"[A-Za-z]{1,2}\d*(?:\.\d+)?[+-]?")
#: pymatgen's ``site_tolerance`` (fractional) for merging symmetry copies.
_SITE_TOL = 1e-4
#: pymatgen's ``frac_tolerance``: coordinates this close to 1/3 or 2/3 are set to them.
_FRAC_TOL = 1e-4
#: pymatgen refuses cells thinner than 0.01 Å; this close to the bound, pymatgen decides.
_MIN_THICKNESS = 0.02
#: Candidate copies compared against the others per numpy step (bounds memory).
_CHUNK = 256
#: Up to this many pairs, coordinates are compared on all axes at once; beyond, on x first.
_DENSE = 1 << 16


class _Decline(Exception):
    """The fast reader cannot be sure to match pymatgen; the message says why."""


@dataclass(frozen=True, slots=True)
class FastCif:
    """The structure of one CIF block, as pymatgen's path would give it.

    Attributes:
        lattice: [3, 3] float64 lattice vectors as rows, Å.
        atomic_numbers: [n] int64.
        positions: [n, 3] float64 Cartesian positions, Å.
    """

    lattice: np.ndarray
    atomic_numbers: np.ndarray
    positions: np.ndarray


def gemmi_available() -> bool:
    """Whether gemmi imports (the fast reader needs it; without it every CIF declines)."""
    return _gemmi() is not None


@lru_cache(maxsize=1)
def _gemmi() -> Any:
    try:
        import gemmi
    except ImportError:
        return None
    return gemmi


def read_cif(text: str, max_atoms: int) -> FastCif | str:
    """The structure of a one-block CIF text exactly as pymatgen's path builds it, or the
    reason (one line) why this reader declines it.

    Args:
        text: the CIF text (one data block).
        max_atoms: the most atoms the block may expand to (sites × operations); a block over
            it is declined, so that pymatgen's path refuses it with its own message.
    """
    try:
        return _read(text, max_atoms)
    except _Decline as e:
        return str(e)
    except Exception as e:  # anything unforeseen: pymatgen decides
        return f"error: {type(e).__name__}"


# ---- tokens -------------------------------------------------------------------------------------


def _items(text: str) -> dict[str, Any]:
    """The block's items as pymatgen's ``CifBlock.data`` holds them: a single value as its text
    (quotes removed), a loop column as a list of texts (stripped); each value is kept with its
    loop's index (-1 for a single value) as ``(value, loop)``."""
    gemmi = _gemmi()
    if gemmi is None:
        raise _Decline("gemmi is not installed")
    if not text.isascii():
        raise _Decline("non-ASCII text")
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if "\r" in text:
            raise _Decline("odd line breaks")
    if _ODD_BREAKS.search(text):
        raise _Decline("odd line breaks")
    if "#" in text and _inline_hash(text):
        raise _Decline("'#' after text on a line")
    if "'''" in text or '"""' in text:
        raise _Decline("CIF 2 quotes")
    low = text.lower()
    if ((any(w in low for w in ("save_", "global_", "stop_", "_eof")) and _RESERVED.search(text))
            or low.count("loop_") != text.count("loop_") or _LOOP_GLUED.search(text)):
        raise _Decline("reserved words pymatgen reads differently")
    if text.count("data_") != 1 and len(_PYMATGEN_BLOCK.findall(text)) != 1:
        raise _Decline("not one data block")
    start = _PYMATGEN_BLOCK.search(text)
    if start is None:
        raise _Decline("not one data block")
    if "powder_pattern" in text[start.end():].split("\n", 1)[0]:
        raise _Decline("a powder-pattern block")
    try:
        doc = gemmi.cif.read_string(text)
    except Exception as e:
        raise _Decline(f"gemmi: {' '.join(str(e).split())[:80]}") from None
    if len(doc) != 1:
        raise _Decline("not one data block")
    data: dict[str, Any] = {}
    for k, item in enumerate(doc[0]):
        pair = item.pair
        if pair is not None:
            data[pair[0]] = (pair[1], -1)
            continue
        loop = item.loop
        if loop is None:
            raise _Decline("a save frame")
        values = list(loop.values)
        width = loop.width()
        if not values:
            raise _Decline("an empty loop")
        for j, tag in enumerate(loop.tags):
            data[tag] = (values[j::width], k)
    return data


def _inline_hash(text: str) -> bool:
    """Whether a ``#`` follows other text on its line (pymatgen strips from it to the end of the
    line as a comment, even inside quotes; gemmi does not)."""
    i = text.find("#")
    while i >= 0:
        if text[text.rfind("\n", 0, i) + 1:i].strip():
            return True
        i = text.find("#", i + 1)
    return False


def _text(raw: str) -> str:
    """A raw gemmi value as pymatgen's token: quotes removed; text fields declined."""
    if raw[:1] in ("'", '"'):
        return raw[1:-1]
    if raw[:1] == ";":
        raise _Decline("a text field where a value is read")
    return raw


def _column(data: dict[str, Any], key: str) -> tuple[list[str], int]:
    """A loop column as pymatgen's stripped texts, with its loop's index."""
    raw, loop = data[key]
    if loop < 0:
        raise _Decline(f"{key} is not a loop")
    if any(v[0] == ";" for v in raw):
        raise _Decline("a text field where a value is read")
    return [(v[1:-1] if v[0] in "'\"" else v).strip() for v in raw], loop


def _num(text: str) -> float:
    """pymatgen's ``str2float``: uncertainty brackets dropped; ``.`` is 0."""
    try:
        return float(re.sub(r"\(.+\)*", "", text) if "(" in text else text)
    except ValueError:
        if text.strip() == ".":
            return 0
        raise


# ---- pymatgen's tables, loaded once -------------------------------------------------------------


@lru_cache(maxsize=1)
def _element_symbols() -> frozenset[str]:
    from pymatgen.core.periodic_table import Element

    return frozenset(Element.__members__)


@lru_cache(maxsize=4096)
def _element_of(type_symbol: str) -> str | None:
    """The element pymatgen's ``_parse_symbol`` reads from a type symbol (``O2-`` → ``O``), or
    None where it would read something other than a plain element."""
    if not _PLAIN_SYMBOL.fullmatch(type_symbol) or _SPECIAL_SYMBOL.match(type_symbol):
        return None
    valid = _element_symbols()
    two = type_symbol[:2].title()
    if two in valid:
        return two
    one = type_symbol[0].upper()
    return one if one in valid else None


@lru_cache(maxsize=4096)
def _species(symbol: str, oxi: float | None) -> tuple[Any, int, float, str]:
    """pymatgen's species (an ``Element``, or a ``Species`` where the CIF gives oxidation
    states), its Z, electronegativity (NaN where pymatgen has none) and string."""
    from pymatgen.core.periodic_table import Element, Species

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sp = Element(symbol) if oxi is None else Species(symbol, oxi)
        x = sp.X
    return sp, int(sp.Z), x, str(sp)


@lru_cache(maxsize=1024)
def _operations(xyz: tuple[str, ...]) -> tuple[tuple[np.ndarray, bool], ...]:
    """The affine matrices of pymatgen's ``SymmOp.from_xyz_str`` (ValueError as it raises),
    each with whether it is "simple": every row holds at most two nonzero terms (rotation and
    translation) and rotation coefficients 0 or ±1, so that its result has the same bits in any
    order of summation."""
    from pymatgen.core.operations import SymmOp

    ops = []
    for s in xyz:
        a = SymmOp.from_xyz_str(s).affine_matrix
        a.setflags(write=False)
        simple = bool(np.isin(a[:3, :3], (-1.0, 0.0, 1.0)).all()
                      and (np.count_nonzero(a[:3, :4], axis=1) <= 2).all())
        ops.append((a, simple))
    return tuple(ops)


def _oxidation_states(data: dict[str, Any]) -> dict[str, float] | None:
    """pymatgen's ``_parse_oxi_states`` of the block (None where it finds none)."""
    present = [k for k in _OXI_KEYS if k in data]
    if not present:
        return None
    if len(present) != 2:
        raise _Decline("half of the atom-type oxidation states")
    symbols, loop_s = _column(data, _OXI_KEYS[0])
    numbers, loop_n = _column(data, _OXI_KEYS[1])
    if loop_s != loop_n:
        raise _Decline("atom-type columns in different loops")
    from pymatgen.io.cif import CifParser

    return CifParser._parse_oxi_states({_OXI_KEYS[0]: symbols, _OXI_KEYS[1]: numbers})


# ---- the structure ------------------------------------------------------------------------------


def _lattice(data: dict[str, Any]) -> np.ndarray:
    """The lattice matrix of the block's cell parameters (Å, degrees), rows a, b, c, as
    pymatgen's ``Lattice.from_parameters`` sets it up (checked bit for bit by the tests)."""
    values = []
    for key in _CELL_KEYS:
        if key not in data:
            raise _Decline("cell parameters missing")
        raw, loop = data[key]
        if loop >= 0:
            raise _Decline("cell parameters in a loop")
        values.append(_num(_text(raw)))
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise _Decline("cell parameters not positive")
    a, b, c, alpha, beta, gamma = values
    # The usual setting: c along z, a in the xz plane, b from the reciprocal angle γ*. Each
    # product is formed in the order pymatgen forms it, so the matrix is the same to the bit.
    cos_abg = np.cos(np.radians([alpha, beta, gamma]))
    sin_abg = np.sin(np.radians([alpha, beta, gamma]))
    cos_star = (cos_abg[0] * cos_abg[1] - cos_abg[2]) / (sin_abg[0] * sin_abg[1])
    gamma_reciprocal = np.arccos(min(max(cos_star, -1.0), 1.0))
    rows = [
        [a * sin_abg[1], 0.0, a * cos_abg[1]],
        [-b * sin_abg[0] * np.cos(gamma_reciprocal), b * sin_abg[0] * np.sin(gamma_reciprocal),
         b * cos_abg[0]],
        [0.0, 0.0, float(c)],
    ]
    matrix = np.array(rows, dtype=np.float64)
    # pymatgen refuses a cell thinner than 0.01 Å between lattice planes (d_hkl): decline one
    # near that (the spacing of planes (100) is the volume over the area of b × c, and so on)
    (ax, ay, az), (bx, by, bz), (cx, cy, cz) = matrix.tolist()
    cross = ((by * cz - bz * cy, bz * cx - bx * cz, bx * cy - by * cx),
             (cy * az - cz * ay, cz * ax - cx * az, cx * ay - cy * ax),
             (ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx))
    volume = abs(ax * cross[0][0] + ay * cross[0][1] + az * cross[0][2])
    spacing = [volume / math.sqrt(x * x + y * y + z * z) if any((x, y, z)) else 0.0
               for x, y, z in cross]
    if not all(math.isfinite(d) and d >= _MIN_THICKNESS for d in spacing):
        raise _Decline("a degenerate cell")
    return matrix


def _symops(data: dict[str, Any]) -> tuple[tuple[np.ndarray, bool], ...]:
    """pymatgen's ``get_symops`` where the block lists its operations."""
    for key in SYMOP_KEYS:
        if key not in data:
            continue
        raw, loop = data[key]
        xyz = tuple(_text(v).strip() for v in raw) if loop >= 0 else (_text(raw),)
        if not (xyz if loop >= 0 else xyz[0]):  # pymatgen skips an empty value
            continue
        try:
            return _operations(xyz)
        except ValueError:
            continue
    raise _Decline("no listed symmetry operations (pymatgen infers them)")


def _apply(ops: tuple[tuple[np.ndarray, bool], ...],
           coords: list[tuple[float, float, float]]) -> np.ndarray:
    """``SymmOp.operate`` of every operation on every site: [sites, ops, 3], not wrapped.

    A simple operation (see `_operations`; most are) gives the same bits in any order of
    summation, so numpy computes it for all sites at once; any other goes through pymatgen's own
    call, ``np.dot(affine, [x, y, z, 1])``.
    """
    points = np.array(coords, dtype=np.float64)
    out = np.empty((len(coords), len(ops), 3))
    for k, (a, simple) in enumerate(ops):
        if simple:
            rot = a[:3, :3]
            out[:, k] = ((points[:, 0, None] * rot[:, 0] + points[:, 1, None] * rot[:, 1])
                         + points[:, 2, None] * rot[:, 2]) + a[:3, 3]
        else:
            for i, p in enumerate(coords):
                out[i, k] = np.dot(a, np.append(p, 1.0))[:3]
    return out


def _matches(queries: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """[len(queries), len(refs)] bool: ``find_in_coord_list_pbc(refs, query, atol=1e-4)`` for
    every query — the same element-wise arithmetic (refs − query, less its rounding, within the
    tolerance on every axis), the y and z axes worked out only where x already matches."""
    if len(queries) * len(refs) <= _DENSE:  # small: all three axes at once
        d = refs[None, :, :] - queries[:, None, :]
        d -= np.round(d)
        return (np.abs(d) < _SITE_TOL).all(axis=2)
    out = np.zeros((len(queries), len(refs)), dtype=bool)
    for lo in range(0, len(queries), _CHUNK):
        q = queries[lo:lo + _CHUNK]
        d = refs[None, :, 0] - q[:, 0, None]
        d -= np.round(d)
        i, j = np.nonzero(np.abs(d) < _SITE_TOL)
        if len(i):
            ok = np.ones(len(i), dtype=bool)
            for axis in (1, 2):
                e = refs[j, axis] - q[i, axis]
                e -= np.round(e)
                ok &= np.abs(e) < _SITE_TOL
            out[lo + i[ok], j[ok]] = True
    return out


def _kept(candidates: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """Which candidates ``_unique_coords`` keeps, the candidates of each species in order: a
    candidate is dropped where it lies within the tolerance of one of its species kept before
    it. [len(candidates)] bool."""
    kept = np.ones(len(candidates), dtype=bool)
    if len(candidates) <= _CHUNK:  # small: one block, species told apart by a mask
        order = np.arange(len(candidates))
        hits = _matches(candidates, candidates)
        hits &= (kind[:, None] == kind[None, :]) & (order[None, :] < order[:, None])
        for r in np.flatnonzero(hits.any(axis=1)):
            kept[r] = not kept[hits[r]].any()
        return kept
    for k in np.unique(kind):
        index = np.flatnonzero(kind == k)
        own = candidates[index]
        mine = np.ones(len(index), dtype=bool)
        order = np.arange(len(index))
        for lo in range(0, len(index), _CHUNK):
            hi = min(lo + _CHUNK, len(index))
            hits = _matches(own[lo:hi], own[:hi])
            hits &= order[None, :hi] < order[lo:hi, None]
            for r in np.flatnonzero(hits.any(axis=1)):
                mine[lo + r] = not mine[:hi][hits[r]].any()
        kept[index] = mine
    return kept


class _SiteOrder:
    """``PeriodicSite.__lt__`` on an ordered site: electronegativity, then species string."""

    __slots__ = ("s", "x")

    def __init__(self, x: float, s: str) -> None:
        self.x = x
        self.s = s

    def __lt__(self, other: _SiteOrder) -> bool:
        if self.x < other.x:
            return True
        if self.x > other.x:
            return False
        return self.s < other.s


def _read(text: str, max_atoms: int) -> FastCif:
    data = _items(text)
    keys = "\n".join(data)
    if any(p in keys for p in _MAGNETIC):
        raise _Decline("a magnetic CIF")
    if "_atom_site_attached_hydrogens" in data:  # pymatgen only warns where all are 0
        raw, loop = data["_atom_site_attached_hydrogens"]
        # (a single value is read character by character, as pymatgen iterates it)
        values = (_column(data, "_atom_site_attached_hydrogens")[0] if loop >= 0
                  else list(_text(raw)))
        try:
            if any(_num(v) != 0 for v in values):
                raise _Decline("implicit hydrogens")
        except ValueError:
            raise _Decline("implicit hydrogens") from None
    if "_atom_site_label" not in data:
        raise _Decline("no atom sites")
    if "_atom_site_type_symbol" not in data:
        raise _Decline("no _atom_site_type_symbol")
    columns = {}
    loops = set()
    for key in (*_SITE_KEYS, "_atom_site_occupancy"):
        if key in data or key != "_atom_site_occupancy":
            if key not in data:
                raise _Decline(f"no {key}")
            columns[key], loop = _column(data, key)
            loops.add(loop)
    if len(loops) != 1:
        raise _Decline("atom-site columns in different loops")
    labels = columns["_atom_site_label"]
    n = len(labels)
    # the expansion bound of `cif._check_expansion`: over it, pymatgen's path refuses the block
    listed = max((len(data[k][0]) if data[k][1] >= 0 else 1) for k in SYMOP_KEYS if k in data) \
        if any(k in data for k in SYMOP_KEYS) else 0
    if n * max(listed, 1) > max_atoms:
        raise _Decline("over the atom limit")
    ops = _symops(data)
    if n * len(ops) > max_atoms:
        raise _Decline("over the atom limit")
    matrix = _lattice(data)

    # _sanitize_data: coordinates within the tolerance of 1/3 or 2/3 become them (math.isclose
    # with rel_tol 0 is |f / ideal - 1| <= tol, element-wise the same)
    try:
        fract = np.array([[_num(v) for v in columns[k]] for k in _SITE_KEYS[2:]],
                         dtype=np.float64).T
    except ValueError:
        raise _Decline("a coordinate that is not a number") from None
    if not np.isfinite(fract).all():
        raise _Decline("a coordinate that is not finite")
    for ideal in (1 / 3, 2 / 3):
        fract[np.abs(fract / ideal - 1) <= _FRAC_TOL] = ideal
    coords: list[tuple[float, float, float]] = list(map(tuple, fract.tolist()))
    if len(set(coords)) != n:
        raise _Decline("two sites at the same coordinates")
    occupancy = columns.get("_atom_site_occupancy")
    if occupancy is not None:
        for v in occupancy:
            try:
                occu = _num(v)
            except ValueError:
                occu = 1
            if occu != 1:
                raise _Decline("partial occupancy")

    oxi_states = _oxidation_states(data)
    types = columns["_atom_site_type_symbol"]
    kinds: list[tuple[str, float | None]] = []
    for t in types:
        symbol = _element_of(t)
        if symbol is None:
            raise _Decline(f"type symbol {t[:12]!r}")
        o_s = None if oxi_states is None else oxi_states.get(t, oxi_states.get(symbol, 0))
        if o_s is not None and not math.isfinite(o_s):
            raise _Decline("an oxidation state that is not finite")
        try:
            _species(symbol, o_s)
        except Exception:
            raise _Decline("an oxidation state pymatgen cannot hold") from None
        kinds.append((symbol, o_s))

    # every operation on every site; a site that an operation maps onto an earlier one would be
    # merged into it (get_matching_coord): decline
    moved = _apply(ops, coords)
    hits = _matches(moved.reshape(-1, 3), fract).reshape(n, len(ops), n)
    earlier = np.arange(n)[None, :] < np.arange(n)[:, None]  # [k, j]: site j before site k
    if (hits & earlier[:, None, :]).any():
        raise _Decline("sites that symmetry merges")
    # _unique_coords wraps with x - math.floor(x): a zero keeps its sign
    wrapped = np.where(moved == 0, moved, moved - np.floor(moved))

    # groups of equal species, ordered as pymatgen sorts Compositions (the reverse of the species
    # order), each expanded and merged on its own (_unique_coords): a group holds its sites in
    # their order (the sort is stable) and each site's copies in the order of the operations
    distinct = list(dict.fromkeys(kinds))  # (symbol, oxidation state): one per species
    species_of = [_species(*kind) for kind in distinct]
    objects = [sp[0] for sp in species_of]
    if len(set(objects)) != len(objects):
        raise _Decline("oxidation states pymatgen holds as one")
    if oxi_states is not None:
        by_element: dict[str, set[float]] = {}
        for sym, oxi in distinct:
            by_element.setdefault(sym, set()).add(oxi)
        if any(len(v) > 1 and 0 in v for v in by_element.values()):
            raise _Decline("oxidation state 0 beside others of the same element")
    ranked = sorted(range(len(objects)), key=objects.__getitem__)  # pymatgen's species order
    rank = np.empty(len(distinct), dtype=np.int64)
    rank[ranked] = np.arange(len(distinct))
    position = {kind: k for k, kind in enumerate(distinct)}
    site_kind = np.array([position[kind] for kind in kinds], dtype=np.int64)
    candidate_kind = np.repeat(site_kind, len(ops))
    candidates = wrapped.reshape(-1, 3)
    kept = _kept(candidates, candidate_kind)
    chosen = np.flatnonzero(kept)
    chosen = chosen[np.argsort(-rank[candidate_kind[chosen]], kind="stable")]
    frac = candidates[chosen]
    site_species = [species_of[k] for k in candidate_kind[chosen].tolist()]

    # Structure.get_sorted_structure: Site.__lt__, a stable sort
    xs = [sp[2] for sp in site_species]
    strings = [sp[3] for sp in site_species]
    if all(x == x for x in xs):
        final = sorted(range(len(xs)), key=lambda i: (xs[i], strings[i]))
    else:  # NaN electronegativities: the same comparisons, in the same order
        keys = [_SiteOrder(x, s) for x, s in zip(xs, strings, strict=True)]
        final = sorted(range(len(xs)), key=keys.__getitem__)
    frac = frac[final]
    numbers = np.array([site_species[i][1] for i in final], dtype=np.int64)
    # PeriodicSite.coords: np.dot of the site's own copy of its coordinates and the matrix
    positions = np.array([np.dot(f.copy(), matrix) for f in frac], dtype=np.float64)
    return FastCif(matrix, numbers, positions.reshape(-1, 3))
