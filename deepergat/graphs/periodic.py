"""The periodic search (``graph="periodic"``): every lattice image inside the cutoff, each atom
keeping its ``max_neighbors`` nearest plus every neighbor tied with the last one kept.

`periodic_edges` runs the compiled kernel (`deepergat.graphs._kernels.search_select`) when numba
imports and ``DEEPERGAT_NUMBA`` is not ``0``, else the vectorized numpy search here, which stays
the reference the tests compare the kernel with. The numpy pieces (`search_pairs`,
`select_nearest`) also serve the minimum-image search.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from deepergat.contract import max_degree
from deepergat.io.store import StructureBatch

from .structures import atom_rows, effective_lattice

__all__ = [
    "ORDER_SCALE",
    "TIE_TOLERANCE",
    "Gathered",
    "NeighborList",
    "Searched",
    "Selection",
    "empty_edges",
    "gather",
    "periodic_edges",
    "search_pairs",
    "select_nearest",
    "use_numba",
]

#: Neighbors within this distance (Å) of the last one kept are kept too.
TIE_TOLERANCE = 1e-6
# Edges are ordered by distance counted in 1e-9 Å steps, so that distances equal but for
# rounding (symmetric neighbors; wrapped or unwrapped positions) order by Z, index and image
# on every path, not by the last bit.
ORDER_SCALE = 1e9
#: Candidates (atom pairs × lattice images) evaluated at once; bounds the search's memory.
_CANDIDATE_BUDGET = 1 << 20


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


class Searched(NamedTuple):
    """What a search gives for S structures.

    Attributes:
        edges: the selected edges, sorted by center (`NeighborList`, atoms indexed in the
            batch).
        min_dist: [S] float64 shortest pair distance found, Å (inf when none).
        tied: [S] bool: an atom kept more than `deepergat.contract.max_degree` neighbors
            (status 9); such atoms' edges are left out.
    """

    edges: NeighborList
    min_dist: np.ndarray
    tied: np.ndarray


def empty_edges() -> NeighborList:
    """A `NeighborList` without edges."""
    return NeighborList(
        np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 3), np.int64)
    )


_NUMBA: bool | None = None


def use_numba() -> bool:
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


@dataclass
class Gathered:
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


def gather(batch: StructureBatch, rows: np.ndarray) -> Gathered:
    """The atoms of ``rows``, wrapped into their cells (`Gathered`)."""
    n_s = batch.n_atoms[rows]
    lat = batch.lattice[rows]
    pbc = batch.pbc[rows]
    inv = np.linalg.inv(effective_lattice(lat, pbc))  # frac = r @ inv
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
    return Gathered(
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


def periodic_edges(
    batch: StructureBatch, rows: np.ndarray, *, cutoff: float, max_neighbors: int
) -> Searched:
    """Selected, sorted periodic edges of ``rows`` (`Searched`): the compiled kernel when
    available, else the vectorized numpy search (the reference)."""
    if use_numba() and len(rows):
        from . import _kernels

        g = gather(batch, rows)
        radius = _first_radius(batch, rows, cutoff=cutoff, max_neighbors=max_neighbors)
        c, nb, d, img, min_dist, tied = _kernels.search_select(
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
            max_degree(max_neighbors),
        )
        edges = NeighborList(g.atom_index[c], g.atom_index[nb], d, img - g.shift[nb] + g.shift[c])
        return Searched(edges, min_dist, tied)
    edges, min_dist, tied = _search_exact(batch, rows, cutoff=cutoff, max_neighbors=max_neighbors)
    return Searched(select_nearest(edges, batch.atomic_numbers, max_neighbors=max_neighbors),
                    min_dist, tied)


class Selection:
    """The per-group step of the numpy searches: each center's nearest with ties
    (`select_nearest`, after ``before`` — the minimum-image step), and centers keeping more
    than `deepergat.contract.max_degree` neighbors left out, their structures marked in
    ``tied``. Applied to each group of whole centers, it bounds the edges held at once.

    Args:
        batch: the structures. rows: [S] the rows searched.
        max_neighbors: neighbors kept per atom, plus ties.
        before: applied to a group's edges first (None: nothing).
    """

    def __init__(self, batch: StructureBatch, rows: np.ndarray, *, max_neighbors: int,
                 before: Callable[[NeighborList], NeighborList] | None = None) -> None:
        self.atomic_numbers = batch.atomic_numbers
        self.max_neighbors = int(max_neighbors)
        self.limit = max_degree(max_neighbors)
        self.before = before
        self.owner = np.full(len(batch.atomic_numbers), -1, dtype=np.int64)
        self.owner[atom_rows(batch, rows)] = np.repeat(np.arange(len(rows)), batch.n_atoms[rows])
        self.tied = np.zeros(len(rows), dtype=bool)

    def __call__(self, edges: NeighborList) -> NeighborList:
        if self.before is not None:
            edges = self.before(edges)
        edges = select_nearest(edges, self.atomic_numbers, max_neighbors=self.max_neighbors)
        if not len(edges.center):
            return edges
        centers, degree = np.unique(edges.center, return_counts=True)
        over = centers[degree > self.limit]
        if not len(over):
            return edges
        self.tied[self.owner[over]] = True
        keep = ~np.isin(edges.center, over)
        return NeighborList(*(a[keep] for a in edges))


def search_pairs(
    batch: StructureBatch,
    rows: np.ndarray,
    *,
    radius: np.ndarray,
    reduce: Callable[[NeighborList], NeighborList] | None = None,
) -> tuple[NeighborList, np.ndarray]:
    """All directed pairs within each structure's radius, each group of whole centers passed
    through ``reduce`` (a `Selection`; None: kept as found).

    Candidates are (center, neighbor, image) triples; for each atom pair only the images that
    can reach the sphere are enumerated: along periodic axis k the fractional separation
    Δf_k + n_k must satisfy |Δf_k + n_k| ≤ r·|b_k| (b_k the reciprocal vector), which bounds
    n_k to a short range per pair. Work is cut into groups of at most `_CANDIDATE_BUDGET`
    atom pairs, so memory stays bounded for any structure size.

    Args:
        batch: the structures. rows: [S] rows of ``batch`` to search (status 0 ones).
        radius: [S] search radius per row, Å.
        reduce: applied to the edges of each group (every center's edges lie in one group).

    Returns:
        (edges with atom indices global in ``batch``, grouped by center in search order, [S]
        float64 shortest pair distance per structure, inf when it has no pair within its
        radius).
    """
    rows = np.asarray(rows, dtype=np.int64)
    s_count = len(rows)
    if s_count == 0:
        return empty_edges(), np.zeros(0)
    g = gather(batch, rows)
    reach = np.where(g.pbc, radius[:, None] * g.recip_len, 0.0)  # [S, 3]
    parts: list[tuple[np.ndarray, ...]] = []
    min_dist = np.full(s_count, np.inf)
    for ps, gi, gj in _pair_groups(g, reach):
        part = _pairs_within(g, reach, radius, ps, gi, gj, min_dist)
        if part is not None and reduce is not None:
            part = tuple(reduce(NeighborList(*part)))
        if part is not None and len(part[0]):
            parts.append(part)
    if not parts:
        return empty_edges(), min_dist
    return NeighborList(*(np.concatenate(p) for p in zip(*parts, strict=True))), min_dist


def _pair_groups(g: Gathered, reach: np.ndarray
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Atom pairs in groups of at most `_CANDIDATE_BUDGET` candidates: per group, [P] the
    structure (gathered row) of each pair, its center and its neighbor (gathered atoms).

    Work units are (structure, block of centers) with at most the budget of candidates each;
    consecutive units are grouped up to the budget.
    """
    n_s, local_start = g.n_s, g.local_start
    s_count = len(n_s)
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
        yield ps, gi, gj


def _pairs_within(
    g: Gathered, reach: np.ndarray, radius: np.ndarray, ps: np.ndarray, gi: np.ndarray,
    gj: np.ndarray, min_dist: np.ndarray,
) -> tuple[np.ndarray, ...] | None:
    """The (center, neighbor, distance, image) edges of one group of pairs within the radius,
    atoms indexed in the batch and images for the given (unwrapped) positions, or None when
    there are none; lowers ``min_dist`` [S] in place to each structure's shortest distance."""
    df = g.frac_w[gj] - g.frac_w[gi]  # in (-1, 1) on periodic axes
    r = reach[ps]
    lo = np.ceil(-r - df).astype(np.int64)
    hi = np.floor(r - df).astype(np.int64)
    per = g.pbc[ps]
    lo = np.where(per, lo, 0)
    hi = np.where(per, hi, 0)
    side = np.maximum(hi - lo + 1, 0)
    cnt = side.prod(1)
    keep_pair = cnt > 0
    if not keep_pair.all():
        ps, gi, gj, lo, side, cnt = (a[keep_pair] for a in (ps, gi, gj, lo, side, cnt))
    n_cand = int(cnt.sum())
    if n_cand == 0:
        return None
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
    vec = g.pos_w[cj] - g.pos_w[ci] + np.einsum("ni,nij->nj", img.astype(np.float64),
                                                g.lattice[cs])
    d = np.sqrt(np.einsum("ni,ni->n", vec, vec))
    keep = d <= radius[cs]
    keep &= (ci != cj) | img.any(1)  # no zero-distance self pair
    if not keep.any():
        return None
    cs, ci, cj, img, d = cs[keep], ci[keep], cj[keep], img[keep], d[keep]
    np.minimum.at(min_dist, cs, d)
    # Undo the wrap: the image applies to the given (unwrapped) positions.
    return g.atom_index[ci], g.atom_index[cj], d, img - g.shift[cj] + g.shift[ci]


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
) -> tuple[NeighborList, np.ndarray, np.ndarray]:
    """Each atom's nearest ``max_neighbors`` within ``cutoff`` and their ties, [S] the shortest
    pair distances and [S] the structures with an atom past `max_degree` (`Searched`), via a
    cheap first radius and a full-cutoff pass for structures it left short."""
    radius = _first_radius(batch, rows, cutoff=cutoff, max_neighbors=max_neighbors)
    select = Selection(batch, rows, max_neighbors=max_neighbors)
    edges, min_dist = search_pairs(batch, rows, radius=radius, reduce=select)
    tied = select.tied
    short = radius < cutoff
    if short.any():
        # An atom is settled when its max_neighbors-th distance (ties included) lies safely
        # inside the radius searched; otherwise its structure is searched at the cutoff.
        # (An atom left out for its ties has no edges here: its structure is searched again.)
        owner_row = np.full(len(batch.atomic_numbers), -1, dtype=np.int64)
        for_rows = np.repeat(np.arange(len(rows)), batch.n_atoms[rows])
        atom_ids = atom_rows(batch, rows)
        owner_row[atom_ids] = for_rows
        kth = _kth_distance(edges, len(batch.atomic_numbers), max_neighbors)
        unsettled = kth[atom_ids] > radius[for_rows] - 2 * TIE_TOLERANCE
        redo = short & (np.bincount(for_rows[unsettled], minlength=len(rows)) > 0)
        if redo.any():
            keep = ~redo[owner_row[edges.center]]
            edges = NeighborList(*(a[keep] for a in edges))
            again = Selection(batch, rows[redo], max_neighbors=max_neighbors)
            edges2, min2 = search_pairs(
                batch, rows[redo], radius=np.full(int(redo.sum()), float(cutoff)), reduce=again
            )
            edges = NeighborList(*(np.concatenate(p) for p in zip(edges, edges2, strict=True)))
            min_dist = min_dist.copy()
            min_dist[redo] = min2
            tied = tied.copy()
            tied[redo] = again.tied
    return edges, min_dist, tied


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


def select_nearest(
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
