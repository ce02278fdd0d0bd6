"""`deepergat.graphs.build_inputs`: the padded model inputs equal `neighbor_list` plus one self
loop per atom, in the layout of docs/design.md §5."""

from __future__ import annotations

import numpy as np
from graph_helpers import batch_of, csv_structures

from deepergat.graphs import build_inputs, neighbor_list


def test_batched_builder_equals_neighbor_list_plus_self_loops() -> None:
    structures = csv_structures("perov5_dev.csv", 30) + csv_structures("carbon24_dev.csv", 10)
    batch = batch_of(structures)
    g = build_inputs(batch)
    x = g.inputs
    assert (g.status == 0).all()
    n = len(batch.atomic_numbers)
    assert x["neighbors"].shape[0] == n and x["neighbors"].dtype == np.int64
    assert x["distances"].dtype == np.float32 and x["neighbor_mask"].dtype == bool
    assert (x["neighbors"][:, 0] == np.arange(n)).all() and x["neighbor_mask"][:, 0].all()
    assert (x["distances"][:, 0] == 0).all()
    empty = ~x["neighbor_mask"]
    assert (x["neighbors"][empty] == np.nonzero(empty)[0]).all()  # empty slots -> itself
    assert (x["distances"][empty] == 0).all()
    np.testing.assert_array_equal(x["batch"], np.repeat(np.arange(len(batch)), batch.n_atoms))
    np.testing.assert_array_equal(x["atomic_numbers"], batch.atomic_numbers)
    for k, (_, s) in enumerate(structures):
        nl = neighbor_list(s.lattice.matrix, s.cart_coords, atomic_numbers=s.atomic_numbers)
        first = batch.offset[k]
        rows = x["crystal_atoms"][k][x["crystal_mask"][k]]
        np.testing.assert_array_equal(rows, np.arange(first, first + len(s)))
        assert (x["crystal_atoms"][k][~x["crystal_mask"][k]] == first).all()
        for a in range(len(s)):
            m = x["neighbor_mask"][first + a, 1:]
            got_n = x["neighbors"][first + a, 1:][m] - first
            got_d = x["distances"][first + a, 1:][m]
            want = nl.center == a
            np.testing.assert_array_equal(got_n, nl.neighbor[want])
            np.testing.assert_allclose(got_d, nl.distance[want].astype(np.float32))

