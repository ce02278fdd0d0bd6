"""The entry points (`deepergat.graphs.search`): the compiled kernels agree with the numpy
reference on a whole batch, geometry errors carry their status codes, and ties past the bound
give status 9 on every path."""

from __future__ import annotations

import numpy as np
import pytest
from graph_helpers import batch_of, csv_structures, edge_set

from deepergat import graphs
from deepergat.contract import Status, max_degree
from deepergat.errors import GeometryError
from deepergat.graphs import neighbor_list
from deepergat.io.store import StructureBatch


def test_compiled_and_numpy_search_agree(monkeypatch: pytest.MonkeyPatch, search_path: str) -> None:
    if search_path != "numba":
        pytest.skip("compares both paths once")
    structures = csv_structures("carbon24_dev.csv", 40) + csv_structures("perov5_dev.csv", 40)
    batch = batch_of(structures)
    fast, _ = graphs.batch_neighbor_lists(batch)
    fast_mic, fast_status = graphs.batch_neighbor_lists(batch, graph="minimum-image")
    monkeypatch.setenv("DEEPERGAT_NUMBA", "0")
    ref, _ = graphs.batch_neighbor_lists(batch)
    assert edge_set(fast) == edge_set(ref)
    ref_mic, ref_status = graphs.batch_neighbor_lists(batch, graph="minimum-image")
    # the same (center, neighbor) pairs at the same distances (to rounding); the order of
    # pairs at equal distance and, on exact image ties, the image may differ
    np.testing.assert_array_equal(fast_status, ref_status)
    assert len(fast_mic.center) == len(ref_mic.center) > 1000
    fo = np.lexsort((fast_mic.neighbor, fast_mic.center))
    ro = np.lexsort((ref_mic.neighbor, ref_mic.center))
    np.testing.assert_array_equal(fast_mic.center[fo], ref_mic.center[ro])
    np.testing.assert_array_equal(fast_mic.neighbor[fo], ref_mic.neighbor[ro])
    np.testing.assert_allclose(fast_mic.distance[fo], ref_mic.distance[ro], rtol=0, atol=1e-12)
    # each center's edges come nearest first on both paths
    for e in (fast_mic, ref_mic):
        same = e.center[1:] == e.center[:-1]
        assert np.all(e.distance[1:][same] >= e.distance[:-1][same] - 1e-9)


def test_non_periodic_axes_may_have_zero_rows_and_errors_carry_status() -> None:
    pos = np.array([[0.0, 0, 0], [1.5, 0, 0]])
    assert len(neighbor_list(np.zeros((3, 3)), pos, (False, False, False)).center) == 2
    with pytest.raises(GeometryError) as e:
        neighbor_list(np.zeros((3, 3)), pos, (True, False, False))
    assert e.value.status == 5
    with pytest.raises(GeometryError) as e:
        neighbor_list(np.eye(3) * 3, [[0, 0, 0], [0, 0, 0.01]])
    assert e.value.status == 6
    with pytest.raises(GeometryError) as e:
        neighbor_list(np.eye(3) * 3, [[0, 0, 0], [np.inf, 0, 0]])
    assert e.value.status == 4



# ---- status 9: ties past max_degree ---------------------------------------------------------


def _sphere(n: int, radius: float = 3.0, box: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
    """A centre atom and n - 1 atoms at exactly one distance from it (on a Fibonacci sphere)
    in a large cubic cell: the centre's n - 1 neighbors all tie. Returns (lattice, positions)."""
    k = n - 1
    i = np.arange(k) + 0.5
    phi, theta = np.arccos(1 - 2 * i / k), np.pi * (1 + 5**0.5) * i
    shell = radius * np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi),
                               np.cos(phi)], 1)
    centre = np.full(3, box / 2)
    return np.eye(3) * box, np.vstack([centre, centre + shell])


@pytest.mark.parametrize("graph", ["periodic", "minimum-image"])
def test_ties_past_the_bound_give_status_9(graph: str) -> None:
    """A centre with exactly `max_degree` tied neighbors keeps them all (status 0); one more,
    or the 998 of the 999-atom case, is status 9 on both constructions and both paths;
    coincident atoms (299 ties at 0 Å) are overlaps (6 wins) unless the check is off."""
    limit = max_degree(12)
    cells, want = [], []
    for ties, code in [(limit, 0), (limit + 1, 9), (998, 9)]:
        lat, pos = _sphere(ties + 1)
        cells.append({"id": f"{ties}", "lattice": lat, "atomic_numbers": [6] * len(pos),
                      "positions": pos})
        want.append(code)
    coincident = {"id": "same", "lattice": np.eye(3) * 30, "atomic_numbers": [6] * 300,
                  "positions": np.full((300, 3), 5.0)}
    batch = StructureBatch.from_structures([*cells, coincident])
    edges, status = graphs.batch_neighbor_lists(batch, graph=graph, max_atoms=1000)
    assert status.tolist() == [*want, 6]
    assert np.bincount(edges.center).max() == limit  # the kept centre: its ties, no more
    _, status = graphs.batch_neighbor_lists(batch, graph=graph, overlap_threshold=None)
    assert status.tolist() == [*want, 9]
    lat, pos = _sphere(limit + 2)
    with pytest.raises(GeometryError) as e:
        neighbor_list(lat, pos, graph=graph)
    assert e.value.status == Status.TOO_MANY_TIES


def test_crystal_shells_stay_within_the_tie_bound() -> None:
    """The bound is far from any crystal: the tied shells of the cubic lattices and the
    perovskite at 1 to 256 neighbors (30 Å) keep every atom within `max_degree`."""
    cells = {"sc": [[0, 0, 0]], "bcc": [[0, 0, 0], [.5, .5, .5]],
             "fcc": [[0, 0, 0], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]],
             "perovskite": [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]]}
    for name, frac in cells.items():
        pos = np.asarray(frac, dtype=float) * 3.0
        for k in (1, 12, 96, 256):
            nl = neighbor_list(np.eye(3) * 3.0, pos, cutoff=30.0, max_neighbors=k)
            assert np.bincount(nl.center).max() <= max_degree(k), (name, k)


def test_geometry_errors_carry_the_search_bounds_status() -> None:
    with pytest.raises(GeometryError) as e:
        neighbor_list(np.diag([1e-3, 1e-3, 1e9]), [[0, 0, 0]])
    assert e.value.status == Status.TOO_MANY_IMAGES


def test_both_paths_agree_where_atoms_have_many_candidates(
        monkeypatch: pytest.MonkeyPatch, search_path: str) -> None:
    """Atoms with more than 64 candidates (the compiled kernels' shortlist and merge-sort
    path): a centre with `max_degree` exact ties, and a dense cluster beside a lone atom
    (searched again at the full cutoff) — the same edges on both paths (their order may differ
    where a distance's last bit crosses a 1e-9 Å ordering step, as `edge_set` allows)."""
    if search_path != "numba":
        pytest.skip("compares both paths once")
    rng = np.random.default_rng(3)
    lat, pos = _sphere(max_degree(12) + 1)
    cluster = np.vstack([rng.random((150, 3)) * 6.0, [[19.0, 19.0, 19.0]]])
    batch = StructureBatch.from_structures([
        {"id": "ties", "lattice": lat, "atomic_numbers": [6] * len(pos), "positions": pos},
        {"id": "cluster", "lattice": np.eye(3) * 25.0, "atomic_numbers": rng.integers(1, 9, 151),
         "positions": cluster},
    ])
    for graph in ("periodic", "minimum-image"):
        monkeypatch.setenv("DEEPERGAT_NUMBA", "1")
        fast, fast_status = graphs.batch_neighbor_lists(batch, graph=graph, overlap_threshold=None)
        monkeypatch.setenv("DEEPERGAT_NUMBA", "0")
        ref, ref_status = graphs.batch_neighbor_lists(batch, graph=graph, overlap_threshold=None)
        assert fast_status.tolist() == ref_status.tolist() == [0, 0]
        assert edge_set(fast) == edge_set(ref), graph
        assert np.bincount(fast.center).max() == max_degree(12)
