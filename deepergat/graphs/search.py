"""The neighbor search's entry points: `neighbor_list` for one structure (the reference form)
and `batch_neighbor_lists` for a batch in one vectorized search, each construction to its own
search (`deepergat.graphs.periodic`, `deepergat.graphs.minimum_image`)."""

from __future__ import annotations

import numpy as np

from deepergat.contract import (
    DEFAULT_CUTOFF,
    DEFAULT_GRAPH,
    DEFAULT_MAX_NEIGHBORS,
    DEFAULT_OVERLAP_THRESHOLD,
    GraphConstruction,
    Status,
)
from deepergat.errors import GeometryError
from deepergat.io.store import StructureBatch

from .minimum_image import minimum_image_edges
from .periodic import NeighborList, Searched, periodic_edges
from .settings import check_graph
from .structures import check_structures

__all__ = ["batch_neighbor_lists", "neighbor_list", "search_select"]


def search_select(
    batch: StructureBatch,
    rows: np.ndarray,
    *,
    cutoff: float,
    max_neighbors: int,
    graph: GraphConstruction = DEFAULT_GRAPH,
    merge_translations: bool = True,
) -> Searched:
    """Selected, sorted edges of the given rows, [S] their shortest pair distance and [S]
    whether an atom kept too many tied neighbors (`Searched`): the compiled kernel when
    available, else the vectorized numpy search (the reference). ``merge_translations=False``
    builds minimum-image graphs without the translation rule."""
    rows = np.asarray(rows, dtype=np.int64)
    if check_graph(graph) == "minimum-image":
        return minimum_image_edges(batch, rows, cutoff=cutoff, max_neighbors=max_neighbors,
                                   merge_translations=merge_translations)
    return periodic_edges(batch, rows, cutoff=cutoff, max_neighbors=max_neighbors)


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
        graph: ``"periodic"`` or ``"minimum-image"`` (docs/design.md §4).
        atomic_numbers: [n] Z, used to order tied neighbors and, for minimum-image graphs,
            to find translated copies of atoms (without them the elements are unknown and no
            copies are merged).
        overlap_threshold: two atoms (or an atom and an image) closer than this, Å, raise
            `GeometryError` status 6; None disables the check.

    Returns:
        `NeighborList` sorted by (center, distance, neighbor Z, neighbor, image).

    Raises:
        GeometryError: status 4 (non-finite coordinates), 5 (singular or non-finite lattice
            on a periodic axis), 8 (too many periodic images within the cutoff), 6
            (overlapping atoms) or 9 (an atom with more tied neighbors than
            `deepergat.contract.max_degree`).
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
    status = check_structures(batch, cutoff=cutoff)
    if status[0] in (Status.NONFINITE_COORDINATES, Status.SINGULAR_LATTICE,
                     Status.TOO_MANY_IMAGES):
        code = Status(int(status[0]))
        raise GeometryError(code, code.meaning)
    edges, min_dist, tied = search_select(
        batch, np.zeros(1, np.int64), cutoff=cutoff, max_neighbors=max_neighbors, graph=graph,
        merge_translations=atomic_numbers is not None,
    )
    if overlap_threshold is not None and min_dist[0] < overlap_threshold:
        raise GeometryError(Status.OVERLAP,
                            f"two atoms closer than {overlap_threshold} Å ({min_dist[0]:.4g} Å)")
    if tied[0]:
        raise GeometryError(Status.TOO_MANY_TIES, Status.TOO_MANY_TIES.meaning)
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

    Structures get their status before the search (1–5, and 8 from the lattice and the atom
    count, so no search is ever larger than the bounds of docs/design.md §4), then from it:
    6 (overlap), then 9 (an atom with more tied neighbors than
    `deepergat.contract.max_degree`).

    Returns:
        (edges with atom indices into ``batch.atomic_numbers`` for structures whose status is 0,
        [M] uint8 `Status` per structure, docs/design.md §9; `Status.OK` where every
        check passed).
    """
    status = check_structures(batch, max_atoms=max_atoms, max_z=max_z, cutoff=cutoff)
    good = np.flatnonzero(status == Status.OK)
    edges, min_dist, tied = search_select(batch, good, cutoff=cutoff,
                                          max_neighbors=max_neighbors, graph=graph)
    if len(good):
        if overlap_threshold is not None:
            status[good[min_dist < overlap_threshold]] = Status.OVERLAP
        status[good[tied & (status[good] == Status.OK)]] = Status.TOO_MANY_TIES
        if (status[good] != Status.OK).any():
            owner = np.repeat(np.arange(len(batch)), batch.n_atoms)
            keep = status[owner[edges.center]] == Status.OK
            edges = NeighborList(*(a[keep] for a in edges))
    return edges, status
