"""The minimum-image search (``graph="minimum-image"``, the reference implementation's graph):
each other atom of the cell once, at its minimum-image distance, then the nearest
``max_neighbors`` with ties; atoms related by a pure translation of the crystal count as one
(`translation_classes`, docs/design.md §4).

Cells without such a translation go through the compiled kernel
(`deepergat.graphs._kernels.mic_select`) when numba is used; cells with one, and every cell
with ``DEEPERGAT_NUMBA=0``, through the numpy search, which stays the reference.
"""

from __future__ import annotations

import numpy as np

from deepergat.contract import MAX_TRANSLATION_ATOMS, TRANSLATION_TOLERANCE, max_degree
from deepergat.io.store import StructureBatch

from .periodic import (
    TIE_TOLERANCE,
    NeighborList,
    Searched,
    Selection,
    empty_edges,
    gather,
    search_pairs,
    select_nearest,
    use_numba,
)
from .structures import effective_lattice, may_translate

__all__ = ["minimum_image_edges", "translation_classes"]


def minimum_image_edges(
    batch: StructureBatch, rows: np.ndarray, *, cutoff: float, max_neighbors: int,
    merge_translations: bool = True,
) -> Searched:
    """Selected, sorted minimum-image edges of ``rows`` (`Searched`): primitive cells through
    the compiled kernel (or the numpy search), cells with pure translations through the numpy
    search with their atoms grouped by `translation_classes`. ``merge_translations=False``
    builds the graphs without the translation rule."""
    if not len(rows):
        return Searched(empty_edges(), np.zeros(0), np.zeros(0, dtype=bool))
    classes = translation_classes(batch, rows) if merge_translations else {}
    # the compiled kernel takes the cells without translations; the numpy search the rest
    numpy_rows = np.isin(rows, list(classes)) if use_numba() else np.ones(len(rows), bool)
    parts: list[NeighborList] = []
    min_dist = np.full(len(rows), np.inf)
    tied = np.zeros(len(rows), dtype=bool)
    plain = rows[~numpy_rows]
    if len(plain):
        from . import _kernels

        g = gather(batch, plain)
        # the frame the fractional coordinates are in: a non-periodic row may be any vector
        frame = effective_lattice(g.lattice, g.pbc)
        c, nb, d, img, md, tie = _kernels.mic_select(
            g.local_start, g.n_s, np.ascontiguousarray(frame),
            np.ascontiguousarray(g.pbc), np.ascontiguousarray(g.recip_len),
            np.ascontiguousarray(g.pos_w), np.ascontiguousarray(g.frac_w),
            batch.atomic_numbers[g.atom_index].astype(np.int64), float(cutoff),
            int(max_neighbors), TIE_TOLERANCE, max_degree(max_neighbors),
        )
        parts.append(NeighborList(g.atom_index[c], g.atom_index[nb], d,
                                  img - g.shift[nb] + g.shift[c]))
        min_dist[~numpy_rows] = md
        tied[~numpy_rows] = tie
    if numpy_rows.any():
        sub = rows[numpy_rows]
        label = np.arange(len(batch.atomic_numbers), dtype=np.int64)  # each atom its own
        for r, local in classes.items():
            o = int(batch.offset[r])
            label[o : o + len(local)] = o + local
        select = Selection(batch, sub, max_neighbors=max_neighbors,
                           before=lambda e: _minimum_images(e, cutoff, label=label))
        edges, md = search_pairs(batch, sub, radius=_min_image_radius(batch, sub, cutoff),
                                 reduce=select)
        parts.append(select_nearest(edges, batch.atomic_numbers, max_neighbors=max_neighbors))
        min_dist[numpy_rows] = md
        tied[numpy_rows] = select.tied
    if len(parts) == 1:
        return Searched(parts[0], min_dist, tied)
    edges = NeighborList(*(np.concatenate(a) for a in zip(*parts, strict=True)))
    order = np.argsort(edges.center, kind="stable")
    return Searched(NeighborList(*(a[order] for a in edges)), min_dist, tied)


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
    out: dict[int, np.ndarray] = {}
    for r in rows[may_translate(batch, rows)].tolist():
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
    lat = effective_lattice(batch.lattice[row : row + 1], batch.pbc[row : row + 1])[0]
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
    return _group_orbits(images, n)


def _group_orbits(images: list[np.ndarray], n: int) -> np.ndarray | None:
    """[n] orbit labels (connected components of the atoms under the translations, each
    `images` entry the atom every atom lands on), or None when they are not a group's."""
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
