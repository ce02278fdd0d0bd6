"""A batch of structures straight to the padded model inputs (docs/design.md §5): the batch's
neighbor lists plus one self loop per atom in slot 0, with a status code per structure for
screening. `search_inputs` searches first and tells each structure's padded width, so that a
caller can cut the batch by its real size before `BatchEdges.pad` allocates anything."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepergat.contract import (
    DEFAULT_CUTOFF,
    DEFAULT_GRAPH,
    DEFAULT_MAX_NEIGHBORS,
    DEFAULT_OVERLAP_THRESHOLD,
    GRAPH_CONSTRUCTIONS,
    INPUT_DTYPES,
    INPUT_NAMES,
    GraphConstruction,
    Status,
)
from deepergat.io.store import StructureBatch

from .periodic import NeighborList
from .search import batch_neighbor_lists
from .structures import atom_rows

__all__ = ["BatchEdges", "GraphBatch", "build_inputs", "search_inputs", "warm_kernels"]


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


@dataclass
class BatchEdges:
    """The neighbor search of a batch, before padding.

    Attributes:
        batch: M structures.
        edges: the edges of the status-0 structures, sorted by center (atoms indexed in
            ``batch``).
        status: [M] uint8 status per structure (0 = searched).
        width: [M] int64 padded width K each structure needs: 1 + the most neighbors one of
            its atoms keeps (the self loop's slot included); 0 where the status is not 0.
    """

    batch: StructureBatch
    edges: NeighborList
    status: np.ndarray
    width: np.ndarray

    def pad(self, start: int = 0, stop: int | None = None) -> GraphBatch:
        """Padded inputs of the status-0 structures among rows [start, stop) (all rows by
        default): a [N, K] neighbor block with K their largest ``width``. The `GraphBatch`'s
        ``rows`` index the whole batch and its ``status`` is the whole batch's."""
        stop = len(self.batch) if stop is None else stop
        return self.pad_rows(np.arange(start, stop))

    def pad_rows(self, rows: np.ndarray) -> GraphBatch:
        """Padded inputs of the status-0 structures among ``rows`` (any subset of the batch,
        kept in ascending order), as `pad`."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        return _pad(self.batch, rows[self.status[rows] == Status.OK], self.edges, self.status)


def search_inputs(
    batch: StructureBatch,
    *,
    cutoff: float = DEFAULT_CUTOFF,
    max_neighbors: int = DEFAULT_MAX_NEIGHBORS,
    graph: GraphConstruction = DEFAULT_GRAPH,
    max_atoms: int | None = None,
    max_z: int | None = None,
    overlap_threshold: float | None = DEFAULT_OVERLAP_THRESHOLD,
) -> BatchEdges:
    """The neighbor search of a batch with each structure's status and padded width
    (`BatchEdges`); arguments as `build_inputs`'."""
    edges, status = batch_neighbor_lists(
        batch,
        cutoff=cutoff,
        max_neighbors=max_neighbors,
        graph=graph,
        max_atoms=max_atoms,
        max_z=max_z,
        overlap_threshold=overlap_threshold,
    )
    m = len(batch)
    width = np.zeros(m, dtype=np.int64)
    good = np.flatnonzero(status == Status.OK)
    if len(good):
        degree = np.bincount(edges.center, minlength=len(batch.atomic_numbers))
        owner = np.repeat(good, batch.n_atoms[good])
        np.maximum.at(width, owner, degree[atom_rows(batch, good)] + 1)
    return BatchEdges(batch=batch, edges=edges, status=status, width=width)


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
    return search_inputs(batch, cutoff=cutoff, max_neighbors=max_neighbors, graph=graph,
                         max_atoms=max_atoms, max_z=max_z,
                         overlap_threshold=overlap_threshold).pad()


def warm_kernels() -> None:
    """Load the compiled neighbor-search kernels (one per graph construction) now, by searching
    one atom with each: a process about to search many batches (a screening worker, the
    forkserver it forks from) pays numba's cache load here, not in its first batch."""
    one = StructureBatch.from_structures(
        [{"id": "warm", "lattice": np.eye(3) * 3.0, "pbc": (True, True, True),
          "atomic_numbers": [14], "positions": [[0.0, 0.0, 0.0]]}]
    )
    for graph in GRAPH_CONSTRUCTIONS:
        build_inputs(one, max_neighbors=2, cutoff=4.0, graph=graph)  # type: ignore[arg-type]


def _pad(
    batch: StructureBatch, rows: np.ndarray, edges: NeighborList, status: np.ndarray
) -> GraphBatch:
    """The padded inputs of ``rows`` from their edges (sorted by center)."""
    n_s = batch.n_atoms[rows]
    c = len(rows)
    # Global (batch) atom index -> index in the model batch.
    atom_global = atom_rows(batch, rows)
    n = len(atom_global)
    remap = np.full(len(batch.atomic_numbers), -1, dtype=np.int64)
    remap[atom_global] = np.arange(n)
    center = remap[edges.center]
    if len(center) and (center < 0).any():  # edges of rows outside this model batch
        inside = center >= 0
        edges = NeighborList(*(a[inside] for a in edges))
        center = center[inside]
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
