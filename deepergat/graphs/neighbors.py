"""Neighbor graphs: the only featurization outside the model (docs/design.md §4).

Two constructions (the graph setting ``graph``, stored with every model like the cutoff):

* ``"periodic"`` — every lattice image inside the cutoff; each atom keeps its ``max_neighbors``
  nearest plus every neighbor tied with the last one kept. Depends on the geometry alone: a
  supercell gives its cell's per-atom neighborhoods.
* ``"minimum-image"`` — the reference implementation's graph: each other atom of the cell once,
  at its minimum-image distance (no atom's own images), then the same nearest-``max_neighbors``
  rule. Atoms related by a pure translation of the crystal (a supercell's copies, found within
  `TRANSLATION_TOLERANCE`) count as one atom, so a supercell gives its primitive cell's graph,
  copied; on a cell without such a translation this is exactly the reference's graph. It
  still depends on the primitive cell's size: a double perovskite is not a perovskite's
  supercell, and its atoms see every atom of its 10-atom cell.

Two entry points share one vectorized search:

* `neighbor_list` — one structure, the reference form.
* `build_inputs` — a batch of structures straight to the padded model inputs (self loop in
  slot 0), with per-structure status codes for screening.

Everything here is numpy only: the screening path imports it without torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from deepergat.contract import (
    DEFAULT_CUTOFF,
    DEFAULT_GRAPH,
    DEFAULT_MAX_NEIGHBORS,
    DEFAULT_OVERLAP_THRESHOLD,
    GRAPH_CONSTRUCTIONS,
    INPUT_DTYPES,
    INPUT_NAMES,
    MAX_TRANSLATION_ATOMS,
    OUTPUT_NAMES,
    TRANSLATION_TOLERANCE,
    GraphConstruction,
    Status,
)
from deepergat.errors import GeometryError
from deepergat.io.store import StructureBatch

__all__ = [
    "DEFAULT_CUTOFF",
    "DEFAULT_GRAPH",
    "DEFAULT_MAX_NEIGHBORS",
    "GRAPH_CONSTRUCTIONS",
    "INPUT_NAMES",
    "MAX_TRANSLATION_ATOMS",
    "ORDER_SCALE",
    "OUTPUT_NAMES",
    "TIE_TOLERANCE",
    "TRANSLATION_TOLERANCE",
    "GraphBatch",
    "GraphConstruction",
    "NeighborList",
    "batch_neighbor_lists",
    "build_inputs",
    "check_graph",
    "check_structures",
    "graph_settings",
    "neighbor_list",
    "translation_classes",
]

#: Neighbors within this distance (Å) of the last one kept are kept too.
TIE_TOLERANCE = 1e-6
# Edges are ordered by distance counted in 1e-9 Å steps, so that distances equal but for
# rounding (symmetric neighbors; wrapped or unwrapped positions) order by Z, index and image
# on every path, not by the last bit.
ORDER_SCALE = 1e9
#: Candidates (atom pairs × lattice images) evaluated at once; bounds the search's memory.
_CANDIDATE_BUDGET = 1 << 20
#: Lattices whose normalized volume |det| / (|a| |b| |c|) falls below this are singular.
_MIN_NORMALIZED_VOLUME = 1e-6
_MIN_VECTOR_LENGTH = 1e-6


def check_graph(value: object) -> GraphConstruction:
    """``value`` if it names a `GraphConstruction`, else ValueError naming the choices."""
    if value not in GRAPH_CONSTRUCTIONS:
        raise ValueError(
            f"graph construction {value!r} is not one of {', '.join(GRAPH_CONSTRUCTIONS)}"
        )
    return value  # type: ignore[return-value]


def graph_settings(source: Mapping[str, Any], *, where: str = "model metadata"
                   ) -> dict[str, Any]:
    """The graph settings ``{cutoff, max_neighbors, construction}`` of a model's constructor
    arguments or of a metadata ``graph`` document (files older than the ``construction``
    setting were all periodic), checked as `deepergat.metadata.GraphSettings.from_dict`
    checks them.

    Args:
        source: the arguments or document.
        where: the file they came from, for messages.

    Raises:
        DeepergatError: a missing setting, or one of the wrong type or out of range (a cutoff
            that is not a finite length in (0, `deepergat.metadata.MAX_CUTOFF`] Å, a neighbor
            count that is not an integer from 1 to `deepergat.metadata.MAX_NEIGHBORS`, an
            unknown construction): NaN or negative settings would hang or silently change
            the neighbor search.
    """
    from deepergat.metadata import GraphSettings

    doc = {k: source[k] for k in ("cutoff", "max_neighbors") if k in source}
    doc["construction"] = source.get("construction", source.get("graph", DEFAULT_GRAPH))
    g = GraphSettings.from_dict(doc, where=where)
    return {"cutoff": g.cutoff, "max_neighbors": g.max_neighbors,
            "construction": g.construction}


class NeighborList(NamedTuple):
    """Directed edges center ← neighbor of one structure (or of a batch, indices global).

    Attributes:
        center: [E] int64 atom index.
        neighbor: [E] int64 atom index.
        distance: [E] float64, Å.
        image: [E, 3] int64 lattice shift applied to the neighbor's given position:
            r_neighbor + image @ lattice - r_center is the edge vector.
    """

    center: np.ndarray
    neighbor: np.ndarray
    distance: np.ndarray
    image: np.ndarray


@dataclass
class GraphBatch:
    """Padded model inputs for the good structures of a batch (docs/design.md §5).

    Attributes:
        inputs: name -> array, exactly the model's inputs: ``atomic_numbers`` [N] int64,
            ``neighbors`` [N, K] int64, ``distances`` [N, K] float32 Å, ``neighbor_mask``
            [N, K] bool, ``crystal_atoms`` [C, A] int64, ``crystal_mask`` [C, A] bool,
            ``batch`` [N] int64.
        rows: [C] int64 rows (within the given batch) of the structures in ``inputs``.
        status: [M] uint8 status per structure of the given batch (0 = in ``inputs``).
        n_edges: number of real edges, self loops included.
    """

    inputs: dict[str, np.ndarray]
    rows: np.ndarray
    status: np.ndarray
    n_edges: int


# ----------------------------------------------------------------------------- geometry checks


def _effective_lattice(lattice: np.ndarray, pbc: np.ndarray) -> np.ndarray:
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


# ----------------------------------------------------------------------------- the search


@dataclass
class _Gathered:
    """The atoms of the searched structures, wrapped into their cells on periodic axes."""

    n_s: np.ndarray  # [S] atoms per structure
    lattice: np.ndarray  # [S, 3, 3]
    pbc: np.ndarray  # [S, 3]
    recip_len: np.ndarray  # [S, 3] |b_k|, 1/Å
    local_start: np.ndarray  # [S] first gathered atom
    atom_index: np.ndarray  # [n] index into the batch's atom arrays
    frac_w: np.ndarray  # [n, 3] wrapped fractional coordinates
    pos_w: np.ndarray  # [n, 3] wrapped Cartesian positions, Å
    shift: np.ndarray  # [n, 3] int64 lattice shift removed by the wrap


def _gather(batch: StructureBatch, rows: np.ndarray) -> _Gathered:
    n_s = batch.n_atoms[rows]
    lat = batch.lattice[rows]
    pbc = batch.pbc[rows]
    inv = np.linalg.inv(_effective_lattice(lat, pbc))  # frac = r @ inv
    atom_struct = np.repeat(np.arange(len(rows)), n_s)
    local_start = np.concatenate([[0], np.cumsum(n_s)[:-1]]).astype(np.int64)
    atom_index = (
        np.arange(len(atom_struct))
        - np.repeat(local_start, n_s)
        + np.repeat(batch.offset[rows], n_s)
    )
    pos = batch.positions[atom_index]
    frac = np.einsum("ni,nij->nj", pos, inv[atom_struct])
    shift = np.where(pbc[atom_struct], np.floor(frac), 0.0)
    return _Gathered(
        n_s=n_s,
        lattice=lat,
        pbc=pbc,
        recip_len=np.linalg.norm(inv, axis=1),
        local_start=local_start,
        atom_index=atom_index,
        frac_w=frac - shift,
        pos_w=pos - np.einsum("ni,nij->nj", shift, lat[atom_struct]),
        shift=shift.astype(np.int64),
    )


def _search_select(
    batch: StructureBatch,
    rows: np.ndarray,
    *,
    cutoff: float,
    max_neighbors: int,
    graph: GraphConstruction = DEFAULT_GRAPH,
    merge_translations: bool = True,
) -> tuple[NeighborList, np.ndarray]:
    """Selected, sorted edges of the given rows and their shortest pair distance: the compiled
    kernel when available, else the vectorized numpy search (the reference).
    ``merge_translations=False`` builds minimum-image graphs without the translation rule."""
    rows = np.asarray(rows, dtype=np.int64)
    if check_graph(graph) == "minimum-image":
        return _search_min_image(batch, rows, cutoff=cutoff, max_neighbors=max_neighbors,
                                 merge_translations=merge_translations)
    if _use_numba() and len(rows):
        from . import _kernels

        g = _gather(batch, rows)
        radius = _first_radius(batch, rows, cutoff=cutoff, max_neighbors=max_neighbors)
        c, nb, d, img, min_dist = _kernels.search_select(
            g.local_start,
            g.n_s,
            np.ascontiguousarray(g.lattice),
            np.ascontiguousarray(g.pbc),
            np.ascontiguousarray(g.recip_len),
            radius,
            np.ascontiguousarray(g.pos_w),
            np.ascontiguousarray(g.frac_w),
            batch.atomic_numbers[g.atom_index].astype(np.int64),
            float(cutoff),
            int(max_neighbors),
            TIE_TOLERANCE,
        )
        edges = NeighborList(g.atom_index[c], g.atom_index[nb], d, img - g.shift[nb] + g.shift[c])
        return edges, min_dist
    edges, min_dist = _search_exact(batch, rows, cutoff=cutoff, max_neighbors=max_neighbors)
    return _select(edges, batch.atomic_numbers, max_neighbors=max_neighbors), min_dist


def _search_min_image(
    batch: StructureBatch, rows: np.ndarray, *, cutoff: float, max_neighbors: int,
    merge_translations: bool = True,
) -> tuple[NeighborList, np.ndarray]:
    """`_search_select` for ``graph="minimum-image"``: primitive cells through the compiled
    kernel (or the numpy search), cells with pure translations through the numpy search with
    their atoms grouped by `translation_classes`."""
    if not len(rows):
        return _empty_edges(), np.zeros(0)
    classes = translation_classes(batch, rows) if merge_translations else {}
    # the compiled kernel takes the cells without translations; the numpy search the rest
    numpy_rows = np.isin(rows, list(classes)) if _use_numba() else np.ones(len(rows), bool)
    parts: list[NeighborList] = []
    min_dist = np.full(len(rows), np.inf)
    plain = rows[~numpy_rows]
    if len(plain):
        from . import _kernels

        g = _gather(batch, plain)
        c, nb, d, img, md = _kernels.mic_select(
            g.local_start, g.n_s, np.ascontiguousarray(g.lattice),
            np.ascontiguousarray(g.pbc), np.ascontiguousarray(g.recip_len),
            np.ascontiguousarray(g.pos_w), np.ascontiguousarray(g.frac_w),
            batch.atomic_numbers[g.atom_index].astype(np.int64), float(cutoff),
            int(max_neighbors), TIE_TOLERANCE,
        )
        parts.append(NeighborList(g.atom_index[c], g.atom_index[nb], d,
                                  img - g.shift[nb] + g.shift[c]))
        min_dist[~numpy_rows] = md
    if numpy_rows.any():
        sub = rows[numpy_rows]
        label = np.arange(len(batch.atomic_numbers), dtype=np.int64)  # each atom its own
        for r, local in classes.items():
            o = int(batch.offset[r])
            label[o : o + len(local)] = o + local
        edges, md = _search(batch, sub, radius=_min_image_radius(batch, sub, cutoff))
        edges = _minimum_images(edges, cutoff, label=label)
        parts.append(_select(edges, batch.atomic_numbers, max_neighbors=max_neighbors))
        min_dist[numpy_rows] = md
    if len(parts) == 1:
        return parts[0], min_dist
    edges = NeighborList(*(np.concatenate(a) for a in zip(*parts, strict=True)))
    order = np.argsort(edges.center, kind="stable")
    return NeighborList(*(a[order] for a in edges)), min_dist


def translation_classes(
    batch: StructureBatch, rows: np.ndarray, *, tolerance: float = TRANSLATION_TOLERANCE
) -> dict[int, np.ndarray]:
    """Atoms related by a pure translation of the crystal, for the rows that have one.

    A structure whose element counts have no common divisor above 1 is primitive and costs
    one ``np.unique`` over the batch; the others are tested translation by translation: the
    vectors from one atom of the rarest element to the others of that element, each kept when
    it maps every atom onto an atom of the same element within ``tolerance`` Å (periodic axes
    wrapped; a translation along a non-periodic axis never maps).

    Args:
        batch: the structures. rows: [S] rows to examine.
        tolerance: Å.

    Returns:
        {row: [n] int64 class of each atom of the row (the lowest atom index of its orbit,
        local to the structure)} for the rows with a translation; primitive rows are absent.
    """
    rows = np.asarray(rows, dtype=np.int64)
    n = batch.n_atoms[rows]
    maybe = rows[n > 1]
    if not len(maybe):
        return {}
    counts_n = batch.n_atoms[maybe]
    starts = batch.offset[maybe]
    atom = np.repeat(starts - np.cumsum(counts_n) + counts_n, counts_n) + np.arange(
        int(counts_n.sum()))
    owner = np.repeat(np.arange(len(maybe)), counts_n)
    key = owner * 1024 + np.clip(batch.atomic_numbers[atom], 0, 1023)
    uniq, per = np.unique(key, return_counts=True)
    group = uniq // 1024
    first = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    common = np.gcd.reduceat(per, first)
    out: dict[int, np.ndarray] = {}
    for r in maybe[common > 1].tolist():
        classes = _orbits(batch, r, tolerance)
        if classes is not None:
            out[r] = classes
    return out


def _orbits(batch: StructureBatch, row: int, tolerance: float) -> np.ndarray | None:
    """[n] orbit label per atom of one structure under its pure translations (the lowest atom
    index of each orbit), or None when it has none but the identity, is larger than
    `MAX_TRANSLATION_ATOMS`, or its translations within the tolerance do not form a group."""
    o, n = int(batch.offset[row]), int(batch.n_atoms[row])
    if n > MAX_TRANSLATION_ATOMS or not batch.pbc[row].any():  # a molecule has no translation
        return None
    pos = batch.positions[o : o + n]
    z = batch.atomic_numbers[o : o + n]
    pbc = batch.pbc[row]
    lat = _effective_lattice(batch.lattice[row : row + 1], batch.pbc[row : row + 1])[0]
    frac = pos @ np.linalg.inv(lat)
    species, counts = np.unique(z, return_counts=True)
    rare = np.flatnonzero(z == species[np.argmin(counts)])
    same = z[:, None] == z[None, :]

    def landing(atoms: np.ndarray, shifts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[C, a] atom of its element each of ``atoms`` lands on when moved by each shift,
        and [C, a] how far from it, Å."""
        diff = frac[None, None, :, :] - (frac[None, atoms, None, :] + shifts[:, None, None, :])
        diff = np.where(pbc, diff - np.round(diff), diff)
        dist = np.where(same[atoms], np.linalg.norm(diff @ lat, axis=-1), np.inf)  # [C, a, n]
        image = np.argmin(dist, axis=-1)
        return image, np.take_along_axis(dist, image[..., None], axis=-1)[..., 0]

    # most candidates fail on the first atoms: probe them on 8 atoms first (chunks bound the
    # memory), then the survivors on every atom
    shifts = frac[rare[1:]] - frac[rare[0]]  # [C, 3]
    probe = np.arange(min(n, 8))
    passed = np.concatenate([(landing(probe, shifts[a : a + 64])[1] <= tolerance).all(-1)
                             for a in range(0, len(shifts), 64)] or [np.zeros(0, bool)])
    images = []
    for t in shifts[passed]:
        image, dist = landing(np.arange(n), t[None])
        if (dist <= tolerance).all() and len(np.unique(image[0])) == n:  # a permutation
            images.append(image[0])
    if not images:
        return None
    # orbits: connected components of the atoms under the translations found
    label = np.arange(n, dtype=np.int64)
    while True:
        new = label.copy()
        for image in images:
            np.minimum.at(new, image, label)
            np.minimum(new, label[image], out=new)
        if (new == label).all():
            break
        label = new
    # a group of m translations (the identity included) puts m atoms in every orbit; anything
    # else (a translation that holds within the tolerance while its double does not) is not
    # one crystal repeated: keep the structure as it is
    sizes = np.bincount(label)[np.unique(label)]
    if not (sizes == len(images) + 1).all():
        return None
    return label


_NUMBA: bool | None = None


def _use_numba() -> bool:
    """Whether the compiled kernel is used (numba importable and DEEPERGAT_NUMBA != 0)."""
    global _NUMBA
    if os.environ.get("DEEPERGAT_NUMBA", "1") == "0":
        return False
    if _NUMBA is None:
        try:
            import numba  # noqa: F401
        except ImportError:
            _NUMBA = False
        else:
            _NUMBA = True
    return _NUMBA


def _search(
    batch: StructureBatch,
    rows: np.ndarray,
    *,
    radius: np.ndarray,
) -> tuple[NeighborList, np.ndarray]:
    """All directed pairs within each structure's radius (no selection yet).

    Candidates are (center, neighbor, image) triples; for each atom pair only the images that
    can reach the sphere are enumerated: along periodic axis k the fractional separation
    Δf_k + n_k must satisfy |Δf_k + n_k| ≤ r·|b_k| (b_k the reciprocal vector), which bounds
    n_k to a short range per pair. Work is cut into groups of at most `_CANDIDATE_BUDGET`
    atom pairs, so memory stays bounded for any structure size.

    Args:
        batch: the structures. rows: [S] rows of ``batch`` to search (status 0 ones).
        radius: [S] search radius per row, Å.

    Returns:
        (edges with atom indices global in ``batch``, [S] float64 shortest pair distance per
        structure, inf when it has no pair within its radius).
    """
    rows = np.asarray(rows, dtype=np.int64)
    s_count = len(rows)
    if s_count == 0:
        return _empty_edges(), np.zeros(0)
    g = _gather(batch, rows)
    n_s, lat, pbc, local_start = g.n_s, g.lattice, g.pbc, g.local_start
    frac_w, pos_w, shift, atom_index = g.frac_w, g.pos_w, g.shift, g.atom_index
    reach = np.where(pbc, radius[:, None] * g.recip_len, 0.0)  # [S, 3]

    # Work units: (structure, block of centers) with ≤ budget candidates each, then groups.
    per_pair = np.prod(np.floor(2 * reach) + 2, axis=1)  # upper bound of images per pair
    per_center = np.maximum(n_s * per_pair, 1)
    block = np.maximum(1, (_CANDIDATE_BUDGET // per_center).astype(np.int64))
    n_blocks = np.where(n_s > 0, -(-n_s // block), 0)
    u_struct = np.repeat(np.arange(s_count), n_blocks)
    u_first = (
        np.arange(int(n_blocks.sum())) - np.repeat(np.cumsum(n_blocks) - n_blocks, n_blocks)
    ) * block[u_struct]
    u_count = np.minimum(block[u_struct], n_s[u_struct] - u_first)
    u_pairs = u_count * n_s[u_struct]
    u_cost = u_count * per_center[u_struct]
    group_id = (np.cumsum(u_cost) - 1) // _CANDIDATE_BUDGET
    bounds = np.flatnonzero(np.diff(group_id)) + 1

    parts: list[tuple[np.ndarray, ...]] = []
    min_dist = np.full(s_count, np.inf)
    for units in np.split(np.arange(len(u_struct)), bounds):
        us, uf, up = u_struct[units], u_first[units], u_pairs[units]
        total = int(up.sum())
        if total == 0:
            continue
        ps = np.repeat(us, up)  # structure of each pair
        t = np.arange(total) - np.repeat(np.cumsum(up) - up, up)
        na = n_s[ps]
        gi = local_start[ps] + np.repeat(uf, up) + t // na
        gj = local_start[ps] + t % na
        df = frac_w[gj] - frac_w[gi]  # in (-1, 1) on periodic axes
        r = reach[ps]
        lo = np.ceil(-r - df).astype(np.int64)
        hi = np.floor(r - df).astype(np.int64)
        per = pbc[ps]
        lo = np.where(per, lo, 0)
        hi = np.where(per, hi, 0)
        side = np.maximum(hi - lo + 1, 0)
        cnt = side.prod(1)
        keep_pair = cnt > 0
        if not keep_pair.all():
            ps, gi, gj, lo, side, cnt = (a[keep_pair] for a in (ps, gi, gj, lo, side, cnt))
        n_cand = int(cnt.sum())
        if n_cand == 0:
            continue
        # Decode each candidate's image with the pair's own mixed radix.
        c_pair = np.repeat(np.arange(len(cnt)), cnt)
        k = np.arange(n_cand) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        s1 = side[c_pair, 1]
        s2 = side[c_pair, 2]
        img = np.empty((n_cand, 3), dtype=np.int64)
        img[:, 0] = k // (s1 * s2)
        img[:, 1] = (k // s2) % s1
        img[:, 2] = k % s2
        img += lo[c_pair]
        cs = ps[c_pair]
        ci = gi[c_pair]
        cj = gj[c_pair]
        vec = pos_w[cj] - pos_w[ci] + np.einsum("ni,nij->nj", img.astype(np.float64), lat[cs])
        d = np.sqrt(np.einsum("ni,ni->n", vec, vec))
        keep = d <= radius[cs]
        keep &= (ci != cj) | img.any(1)  # no zero-distance self pair
        if not keep.any():
            continue
        cs, ci, cj, img, d = cs[keep], ci[keep], cj[keep], img[keep], d[keep]
        np.minimum.at(min_dist, cs, d)
        # Undo the wrap: the image applies to the given (unwrapped) positions.
        parts.append((atom_index[ci], atom_index[cj], d, img - shift[cj] + shift[ci]))
    if not parts:
        return _empty_edges(), min_dist
    return NeighborList(*(np.concatenate(p) for p in zip(*parts, strict=True))), min_dist


def _empty_edges() -> NeighborList:
    return NeighborList(
        np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 3), np.int64)
    )


def _first_radius(
    batch: StructureBatch, rows: np.ndarray, *, cutoff: float, max_neighbors: int
) -> np.ndarray:
    """A search radius likely to hold each atom's nearest ``max_neighbors`` (≤ cutoff).

    For 3D-periodic structures: 1.2× the radius of a sphere that holds max_neighbors + 1 atoms
    at the cell's mean density. Atoms the first pass leaves short are searched again at the
    cutoff (`_search_exact`), so this guess changes speed, never results.
    """
    lat = batch.lattice[rows]
    pbc = batch.pbc[rows]
    n = np.maximum(batch.n_atoms[rows], 1)
    volume = np.abs(np.linalg.det(lat))
    with np.errstate(divide="ignore", invalid="ignore"):
        r_est = 1.2 * np.cbrt(3.0 * (max_neighbors + 1) * volume / (4.0 * np.pi * n))
    full = pbc.all(1) & np.isfinite(r_est) & (r_est > 0)
    return np.where(full, np.minimum(r_est, cutoff), cutoff)


def _search_exact(
    batch: StructureBatch, rows: np.ndarray, *, cutoff: float, max_neighbors: int
) -> tuple[NeighborList, np.ndarray]:
    """Edges that contain every atom's nearest ``max_neighbors`` within ``cutoff`` and their
    ties, via a cheap first radius and a full-cutoff pass for structures it left short."""
    radius = _first_radius(batch, rows, cutoff=cutoff, max_neighbors=max_neighbors)
    edges, min_dist = _search(batch, rows, radius=radius)
    short = radius < cutoff
    if short.any():
        # An atom is settled when its max_neighbors-th distance (ties included) lies safely
        # inside the radius searched; otherwise its structure is searched at the cutoff.
        owner_row = np.full(len(batch.atomic_numbers), -1, dtype=np.int64)
        for_rows = np.repeat(np.arange(len(rows)), batch.n_atoms[rows])
        atom_ids = _atom_rows(batch, rows)
        owner_row[atom_ids] = for_rows
        kth = _kth_distance(edges, len(batch.atomic_numbers), max_neighbors)
        unsettled = kth[atom_ids] > radius[for_rows] - 2 * TIE_TOLERANCE
        redo = short & (np.bincount(for_rows[unsettled], minlength=len(rows)) > 0)
        if redo.any():
            keep = ~redo[owner_row[edges.center]]
            edges = NeighborList(*(a[keep] for a in edges))
            edges2, min2 = _search(
                batch, rows[redo], radius=np.full(int(redo.sum()), float(cutoff))
            )
            edges = NeighborList(*(np.concatenate(p) for p in zip(edges, edges2, strict=True)))
            min_dist = min_dist.copy()
            min_dist[redo] = min2
    return edges, min_dist


def _min_image_radius(batch: StructureBatch, rows: np.ndarray, cutoff: float) -> np.ndarray:
    """[S] search radius, Å, that holds every atom pair's minimum image (or the cutoff).

    On a 3D-periodic cell every pair has an image whose fractional separation lies in
    [-1/2, 1/2]^3, and the longest vector of that cube is one of its corners: half the longest of
    the four diagonals ±a ± b ± c bounds every minimum-image distance. The radius is at least 1 Å
    so that overlapping atoms (or images) are still found; other structures search the cutoff.
    """
    lat = batch.lattice[rows]
    signs = np.array([[1, 1, 1], [1, 1, -1], [1, -1, 1], [-1, 1, 1]], dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diag = np.linalg.norm(np.einsum("dk,skj->sdj", signs, lat), axis=2).max(1) / 2
    full = batch.pbc[rows].all(1) & np.isfinite(diag)
    return np.where(full, np.minimum(np.maximum(diag, 1.0) + 1e-6, cutoff), float(cutoff))


def _minimum_images(edges: NeighborList, cutoff: float, *,
                    label: np.ndarray | None = None) -> NeighborList:
    """One edge per (center, other atom): its shortest image within the cutoff (ties: the
    smallest image), none to the center's own images.

    With ``label`` ([atoms] int64, `translation_classes` made global), atoms sharing a label
    are one atom: one edge per (center, other label), to the nearest of its atoms (ties: the
    lowest index, then the smallest image), none to the center's own label.
    """
    c, nb, d, img = edges
    cls = nb if label is None else label[nb]
    own = c if label is None else label[c]
    keep = (own != cls) & (d <= cutoff)
    c, nb, d, img, cls = c[keep], nb[keep], d[keep], img[keep], cls[keep]
    order = np.lexsort((img[:, 2], img[:, 1], img[:, 0], nb, d, cls, c))
    c, nb, d, img, cls = c[order], nb[order], d[order], img[order], cls[order]
    first = (np.r_[True, (c[1:] != c[:-1]) | (cls[1:] != cls[:-1])] if len(c)
             else np.zeros(0, bool))
    return NeighborList(c[first], nb[first], d[first], img[first])


def _kth_distance(edges: NeighborList, n_atoms: int, k: int) -> np.ndarray:
    """[n_atoms] distance of each atom's k-th nearest edge (inf with fewer than k edges)."""
    out = np.full(n_atoms, np.inf)
    if len(edges.center) == 0:
        return out
    order = np.lexsort((edges.distance, edges.center))
    c = edges.center[order]
    d = edges.distance[order]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    counts = np.diff(np.r_[starts, len(c)])
    has = counts >= k
    out[c[starts[has]]] = d[starts[has] + k - 1]
    return out


def _select(
    edges: NeighborList,
    atomic_numbers: np.ndarray,
    *,
    max_neighbors: int,
) -> NeighborList:
    """Sort by (center, distance in `ORDER_SCALE` steps, neighbor Z, neighbor, image); keep
    each center's ``max_neighbors`` nearest plus every neighbor within `TIE_TOLERANCE` of the
    last kept."""
    if len(edges.center) == 0:
        return edges
    c, nb, d, img = edges
    order = np.lexsort((img[:, 2], img[:, 1], img[:, 0], nb, atomic_numbers[nb],
                        np.floor(d * ORDER_SCALE), c))
    c, nb, d, img = c[order], nb[order], d[order], img[order]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    counts = np.diff(np.r_[starts, len(c)])
    rank = np.arange(len(c)) - np.repeat(starts, counts)
    # Distance of the last neighbor kept by count (the max_neighbors-th, or the farthest).
    last = starts + np.minimum(counts, max_neighbors) - 1
    limit = np.repeat(d[last], counts) + TIE_TOLERANCE
    keep = (rank < max_neighbors) | (d <= limit)
    return NeighborList(c[keep], nb[keep], d[keep], img[keep])


def neighbor_list(
    lattice: np.ndarray,
    positions: np.ndarray,
    pbc: np.ndarray | tuple[bool, bool, bool] = (True, True, True),
    *,
    cutoff: float = DEFAULT_CUTOFF,
    max_neighbors: int = DEFAULT_MAX_NEIGHBORS,
    graph: GraphConstruction = DEFAULT_GRAPH,
    atomic_numbers: np.ndarray | None = None,
    overlap_threshold: float | None = DEFAULT_OVERLAP_THRESHOLD,
) -> NeighborList:
    """Neighbor list of one structure.

    Args:
        lattice: [3, 3] lattice vectors as rows, Å (rows of non-periodic axes are not used).
        positions: [n, 3] Cartesian coordinates, Å; need not be wrapped into the cell.
        pbc: [3] periodicity per axis.
        cutoff: neighbor search radius, Å.
        max_neighbors: neighbors kept per atom, plus ties with the last one kept.
        graph: ``"periodic"`` or ``"minimum-image"`` (module docstring).
        atomic_numbers: [n] Z, used to order tied neighbors and, for minimum-image graphs,
            to find translated copies of atoms (without them the elements are unknown and no
            copies are merged).
        overlap_threshold: two atoms (or an atom and an image) closer than this, Å, raise
            `GeometryError` status 6; None disables the check.

    Returns:
        `NeighborList` sorted by (center, distance, neighbor Z, neighbor, image).

    Raises:
        GeometryError: status 4 (non-finite coordinates), 5 (singular or non-finite lattice
            on a periodic axis) or 6 (overlapping atoms).
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    n = len(positions)
    z = (
        np.zeros(n, np.int64)
        if atomic_numbers is None
        else np.asarray(atomic_numbers, dtype=np.int64).reshape(n)
    )
    batch = StructureBatch(
        index=np.zeros(1, np.int64),
        ids=["structure"],
        n_atoms=np.array([n], np.int64),
        offset=np.zeros(1, np.int64),
        lattice=np.asarray(lattice, dtype=np.float64).reshape(1, 3, 3),
        pbc=np.asarray(pbc, dtype=bool).reshape(1, 3),
        atomic_numbers=np.maximum(z, 1) if atomic_numbers is None else z,
        positions=positions,
    )
    status = check_structures(batch)
    if status[0] in (Status.NONFINITE_COORDINATES, Status.SINGULAR_LATTICE):
        code = Status(int(status[0]))
        raise GeometryError(code, code.meaning)
    edges, min_dist = _search_select(
        batch, np.zeros(1, np.int64), cutoff=cutoff, max_neighbors=max_neighbors, graph=graph,
        merge_translations=atomic_numbers is not None,
    )
    if overlap_threshold is not None and min_dist[0] < overlap_threshold:
        raise GeometryError(Status.OVERLAP,
                            f"two atoms closer than {overlap_threshold} Å ({min_dist[0]:.4g} Å)")
    return edges


def batch_neighbor_lists(
    batch: StructureBatch,
    *,
    cutoff: float = DEFAULT_CUTOFF,
    max_neighbors: int = DEFAULT_MAX_NEIGHBORS,
    graph: GraphConstruction = DEFAULT_GRAPH,
    max_atoms: int | None = None,
    max_z: int | None = None,
    overlap_threshold: float | None = DEFAULT_OVERLAP_THRESHOLD,
) -> tuple[NeighborList, np.ndarray]:
    """Neighbor lists of a whole batch in one vectorized search.

    Returns:
        (edges with atom indices into ``batch.atomic_numbers`` for structures whose status is 0,
        [M] uint8 `Status` per structure, docs/design.md §9; `Status.OK` where every
        check passed).
    """
    status = check_structures(batch, max_atoms=max_atoms, max_z=max_z)
    good = np.flatnonzero(status == Status.OK)
    edges, min_dist = _search_select(batch, good, cutoff=cutoff, max_neighbors=max_neighbors,
                                     graph=graph)
    if overlap_threshold is not None and len(good):
        overlap = good[min_dist < overlap_threshold]
        if len(overlap):
            status[overlap] = Status.OVERLAP
            owner = np.repeat(np.arange(len(batch)), batch.n_atoms)
            keep = status[owner[edges.center]] == Status.OK
            edges = NeighborList(*(a[keep] for a in edges))
    return edges, status


def build_inputs(
    batch: StructureBatch,
    *,
    cutoff: float = DEFAULT_CUTOFF,
    max_neighbors: int = DEFAULT_MAX_NEIGHBORS,
    graph: GraphConstruction = DEFAULT_GRAPH,
    max_atoms: int | None = None,
    max_z: int | None = None,
    overlap_threshold: float | None = DEFAULT_OVERLAP_THRESHOLD,
) -> GraphBatch:
    """Padded model inputs for a batch: `neighbor_list` of every good structure plus one self
    loop per atom, in docs/design.md's layout. Structures failing a check are left out and get their
    status code.

    Args:
        batch: M structures (e.g. one chunk of a store).
        cutoff, max_neighbors, graph: graph settings (Å, count, construction).
        max_atoms: status 2 above this many atoms. max_z: status 3 outside Z = 1..max_z.
        overlap_threshold: status 6 below this pair distance, Å.

    Returns:
        `GraphBatch` with C ≤ M crystals (the status-0 rows, in order).
    """
    edges, status = batch_neighbor_lists(
        batch,
        cutoff=cutoff,
        max_neighbors=max_neighbors,
        graph=graph,
        max_atoms=max_atoms,
        max_z=max_z,
        overlap_threshold=overlap_threshold,
    )
    rows = np.flatnonzero(status == Status.OK)
    return _pad(batch, rows, edges, status)


def _atom_rows(batch: StructureBatch, rows: np.ndarray) -> np.ndarray:
    """[n] indices into the batch's atom arrays of the atoms of ``rows``, in order."""
    n_s = batch.n_atoms[rows]
    if not len(n_s):  # every structure of the batch failed a check
        return np.zeros(0, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(n_s)[:-1]]).astype(np.int64)
    return np.arange(int(n_s.sum())) - np.repeat(starts, n_s) + np.repeat(batch.offset[rows], n_s)


def _pad(
    batch: StructureBatch, rows: np.ndarray, edges: NeighborList, status: np.ndarray
) -> GraphBatch:
    n_s = batch.n_atoms[rows]
    c = len(rows)
    # Global (batch) atom index -> index in the model batch.
    atom_global = _atom_rows(batch, rows)
    n = len(atom_global)
    remap = np.full(len(batch.atomic_numbers), -1, dtype=np.int64)
    remap[atom_global] = np.arange(n)
    center = remap[edges.center]
    neighbor = remap[edges.neighbor]
    degree = np.bincount(center, minlength=n) + 1 if n else np.zeros(0, np.int64)
    k = int(degree.max()) if n else 1
    self_idx = np.arange(n)
    neighbors = np.repeat(self_idx[:, None], k, axis=1)
    distances = np.zeros((n, k), dtype=INPUT_DTYPES["distances"])
    mask = np.zeros((n, k), dtype=INPUT_DTYPES["neighbor_mask"])
    mask[:, 0] = True
    if len(center):
        # Edges are sorted by center: slot = 1 + rank within the center's run.
        starts = np.concatenate([[0], np.cumsum(degree - 1)[:-1]])
        slot = 1 + np.arange(len(center)) - starts[center]
        neighbors[center, slot] = neighbor
        distances[center, slot] = edges.distance
        mask[center, slot] = True
    a = int(n_s.max()) if c else 1
    first = np.concatenate([[0], np.cumsum(n_s)[:-1]]).astype(np.int64) if c else n_s
    pos = np.arange(a)[None, :]
    crystal_mask = pos < n_s[:, None]
    crystal_atoms = np.where(crystal_mask, first[:, None] + pos, first[:, None])
    arrays = {
        "atomic_numbers": batch.atomic_numbers[atom_global],
        "neighbors": neighbors,
        "distances": distances,
        "neighbor_mask": mask,
        "crystal_atoms": crystal_atoms,
        "crystal_mask": crystal_mask,
        "batch": np.repeat(np.arange(c), n_s),
    }
    # Every array is new here, so a cast without a copy aliases nothing.
    inputs = {name: arrays[name].astype(INPUT_DTYPES[name], copy=False) for name in INPUT_NAMES}
    return GraphBatch(inputs=inputs, rows=rows, status=status, n_edges=int(mask.sum()))
