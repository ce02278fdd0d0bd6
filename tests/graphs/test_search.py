"""The entry points (`deepergat.graphs.search`): the compiled kernels agree with the numpy
reference on a whole batch, and geometry errors carry their status codes."""

from __future__ import annotations

import numpy as np
import pytest
from graph_helpers import batch_of, csv_structures, edge_set

from deepergat import graphs
from deepergat.errors import GeometryError
from deepergat.graphs import neighbor_list


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

