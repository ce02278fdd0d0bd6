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

Two entry points share one vectorized search: `neighbor_list` (one structure, the reference
form) and `build_inputs` (a batch of structures straight to the padded model inputs, self loop
in slot 0, with per-structure status codes for screening; `search_inputs` is its search alone,
with each structure's padded width, for callers that cut batches by their real size). The
search is bounded before it allocates: status 8 for a structure with too many periodic images
within the cutoff, status 9 for an atom with more tied neighbors than
`deepergat.contract.max_degree` (docs/design.md §4). `structure_flags` gives the flag bits
every predicting path reports (docs/design.md §9).

====================  ========================================================================
``settings``          the graph settings: `check_graph`, `graph_settings`
``structures``        structure checks (status 1–5, 8), the effective lattice, flags, atom
                      indexing
``periodic``          the periodic search: numpy reference, kernel call, nearest-with-ties
``minimum_image``     minimum images and `translation_classes`
``search``            `neighbor_list`, `batch_neighbor_lists`: each construction to its search
``inputs``            `search_inputs` → `BatchEdges` → `GraphBatch`, the padded model inputs
``_kernels``          the compiled (numba) kernels; ``DEEPERGAT_NUMBA=0`` selects the numpy
                      references in ``periodic`` and ``minimum_image``
====================  ========================================================================

Numpy and numba only: the screening path imports it without torch.
"""

from __future__ import annotations

from deepergat.contract import (
    DEFAULT_CUTOFF,
    DEFAULT_GRAPH,
    DEFAULT_MAX_NEIGHBORS,
    GRAPH_CONSTRUCTIONS,
    INPUT_NAMES,
    MAX_TRANSLATION_ATOMS,
    OUTPUT_NAMES,
    TRANSLATION_TOLERANCE,
    GraphConstruction,
)

from .inputs import BatchEdges, GraphBatch, build_inputs, search_inputs, warm_kernels
from .minimum_image import translation_classes
from .periodic import ORDER_SCALE, TIE_TOLERANCE, NeighborList
from .search import batch_neighbor_lists, neighbor_list
from .settings import check_graph, graph_settings
from .structures import check_structures, structure_flags

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
    "BatchEdges",
    "GraphBatch",
    "GraphConstruction",
    "NeighborList",
    "batch_neighbor_lists",
    "build_inputs",
    "check_graph",
    "check_structures",
    "graph_settings",
    "neighbor_list",
    "search_inputs",
    "structure_flags",
    "translation_classes",
    "warm_kernels",
]
