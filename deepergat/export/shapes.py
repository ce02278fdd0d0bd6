"""Dynamic sizes for tracing and exporting: the example batch and the dynamic-shape spec.

Every size of the model contract is dynamic (docs/design.md): N atoms, K neighbor slots, C crystals,
A atoms of the largest crystal. Exporters specialize sizes 0 and 1 and can confuse two sizes
that happen to be equal, so the example batch has every size ≥ 2 and all four distinct, and
padding in both masks (a graph traced on an all-true mask could drop the masking).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deepergat.contract import (
    DEFAULT_GRAPH,
    DYNAMIC_AXES,
    INPUT_NAMES,
    MAX_Z,
    OUTPUT_NAMES,
    GraphConstruction,
)
from deepergat.graphs import build_inputs

from .samples import parity_structures

__all__ = ["DYNAMIC_AXES", "INPUT_NAMES", "OUTPUT_NAMES", "dynamic_shapes", "example_inputs"]



def sizes(inputs: dict[str, np.ndarray]) -> dict[str, int]:
    """{N, K, C, A} of a batch of model inputs."""
    n, k = inputs["neighbors"].shape
    c, a = inputs["crystal_atoms"].shape
    return {"N": int(n), "K": int(k), "C": int(c), "A": int(a)}


def example_inputs(cutoff: float, max_neighbors: int,
                   graph: GraphConstruction = DEFAULT_GRAPH) -> dict[str, np.ndarray]:
    """A small batch whose sizes are all ≥ 2 and pairwise distinct, with padding in both masks.

    Built from the deterministic parity structures: a 10-atom supercell, a perovskite cell and
    a non-periodic cluster (whose atoms have fewer neighbors than the rest), growing until the
    conditions hold.

    Raises:
        RuntimeError: no such batch found (not expected for any sensible cutoff).
    """
    pool = parity_structures(256, seed=7)
    order = np.argsort(-pool.n_atoms, kind="stable")
    big = [int(r) for r in order if pool.n_atoms[r] == 10][:1]
    small = [int(r) for r in range(len(pool)) if pool.n_atoms[r] == 5][:1]
    clusters = [int(r) for r in range(len(pool)) if not pool.pbc[r].any() and pool.n_atoms[r] >= 2]
    rows = big + small + clusters[:1]
    for extra in range(len(pool)):
        g = build_inputs(pool.select(np.array(rows)), cutoff=cutoff, max_neighbors=max_neighbors,
                         graph=graph, max_z=MAX_Z, overlap_threshold=None)
        s = sizes(g.inputs)
        padded = (~g.inputs["neighbor_mask"]).any() and (~g.inputs["crystal_mask"]).any()
        distinct = len(set(s.values())) == 4
        if min(s.values()) >= 2 and distinct and padded and g.rows.size == len(rows):
            return g.inputs
        rows.append(extra)
    raise RuntimeError("no example batch with distinct sizes found")  # pragma: no cover


def dynamic_shapes() -> dict[str, dict[int, Any]]:
    """The ``dynamic_shapes`` argument of ``torch.export.export`` (and the dynamo ONNX
    exporter): N, K, C, A as `torch.export.Dim` with minimum 1."""
    import torch

    dims = {name: torch.export.Dim(name, min=1) for name in ("N", "K", "C", "A")}
    return {inp: {axis: dims[d] for axis, d in axes.items()} for inp, axes in DYNAMIC_AXES.items()}


def to_tensors(inputs: dict[str, np.ndarray], device: Any = "cpu") -> tuple[Any, ...]:
    """The inputs as a tuple of torch tensors in `INPUT_NAMES` order."""
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(inputs[n])).to(device) for n in INPUT_NAMES)
