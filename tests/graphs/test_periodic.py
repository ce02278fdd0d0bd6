"""The periodic search (`deepergat.graphs.periodic`, through `neighbor_list`): against pymatgen
and a brute-force reference, edge order, hard cells, and invariances."""

from __future__ import annotations

import numpy as np
import pytest
from graph_helpers import (
    FIXTURES,
    brute_force,
    csv_structures,
    edge_set,
    nearest_with_ties,
    per_atom_distances,
)

from deepergat import graphs
from deepergat.graphs import neighbor_list

# ------------------------------------------------------------------ against pymatgen, real data


@pytest.mark.parametrize(("name", "limit"), [("perov5_dev.csv", 150), ("carbon24_dev.csv", 60)])
def test_matches_pymatgen_on_real_structures(name: str, limit: int) -> None:
    for sid, s in csv_structures(name, limit):
        nl = neighbor_list(s.lattice.matrix, s.cart_coords, atomic_numbers=s.atomic_numbers)
        center, _, _, dist = s.get_neighbor_list(8.0)
        for a in range(len(s)):
            ref = np.sort(dist[center == a])
            ref = ref[ref <= ref[min(len(ref), 12) - 1] + 1e-6]
            ours = np.sort(nl.distance[nl.center == a])
            assert len(ours) == len(ref), (sid, a)
            np.testing.assert_allclose(ours, ref, atol=1e-8, err_msg=f"{name} {sid} atom {a}")


def test_edges_are_real_vectors_and_sorted() -> None:
    [(_, s)] = csv_structures("perov5_dev.csv", 1)
    lat, pos = s.lattice.matrix, s.cart_coords
    z = np.array(s.atomic_numbers)
    nl = neighbor_list(lat, pos, atomic_numbers=z)
    vec = pos[nl.neighbor] + nl.image @ lat - pos[nl.center]
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), nl.distance, atol=1e-10)
    keys = list(
        zip(nl.center, np.floor(nl.distance * graphs.ORDER_SCALE), z[nl.neighbor], nl.neighbor,
            map(tuple, nl.image), strict=True)
    )
    assert keys == sorted(keys)
    assert nl.center.dtype == np.int64 and nl.image.dtype == np.int64 and nl.image.shape[1] == 3



# ------------------------------------------------------------------ hard cases


def test_skewed_triclinic_cell_matches_brute_force() -> None:
    lat = np.array([[3.1, 0.0, 0.0], [2.9, 1.1, 0.0], [2.7, 0.8, 0.9]])  # very acute angles
    pos = np.array([[0.1, 0.2, 0.3], [1.9, 0.7, 0.4], [5.0, 1.2, 0.6]])
    nl = neighbor_list(lat, pos, cutoff=6.0)
    ref = nearest_with_ties(brute_force(lat, pos, (1, 1, 1), cutoff=6.0, reach=12), 3)
    for ours, want in zip(per_atom_distances(nl, 3), ref, strict=True):
        np.testing.assert_allclose(ours, want, atol=1e-9)


def test_cell_much_smaller_than_cutoff_and_one_atom_cell() -> None:
    lat = np.eye(3) * 1.7
    nl = neighbor_list(lat, np.zeros((1, 3)))
    # simple cubic: 6 at a, 12 at a√2 -> 12 kept after the 6 nearest: 6 + 12 = 18 (ties)
    assert len(nl.distance) == 18
    np.testing.assert_allclose(nl.distance[:6], 1.7)
    np.testing.assert_allclose(nl.distance[6:], 1.7 * np.sqrt(2))
    assert (nl.neighbor == 0).all() and (nl.center == 0).all()
    assert not (nl.image == 0).all(1).any()


def test_supercell_gives_the_cells_per_atom_distances() -> None:
    [(_, s)] = csv_structures("carbon24_dev.csv", 1)
    nl = neighbor_list(s.lattice.matrix, s.cart_coords)
    sc = s * (2, 2, 2)
    nl2 = neighbor_list(sc.lattice.matrix, sc.cart_coords)
    cell = per_atom_distances(nl, len(s))
    supercell = per_atom_distances(nl2, len(sc))
    # pymatgen orders supercell sites as 8 images of each original site in turn
    for a in range(len(sc)):
        np.testing.assert_allclose(supercell[a], cell[a // 8], atol=1e-8)


def test_positions_shifted_by_lattice_vectors_give_the_same_graph() -> None:
    [(_, s)] = csv_structures("perov5_dev.csv", 1)
    lat, pos = s.lattice.matrix, s.cart_coords
    shifts = np.array([[1, -2, 3], [0, 0, -1], [5, 1, 0], [-3, -3, -3], [0, 2, 0]])
    moved = pos + shifts @ lat
    a = neighbor_list(lat, pos, atomic_numbers=s.atomic_numbers)
    b = neighbor_list(lat, moved, atomic_numbers=s.atomic_numbers)
    np.testing.assert_array_equal(a.center, b.center)
    np.testing.assert_allclose(a.distance, b.distance, atol=1e-9)
    # The image is relative to the given positions: it absorbs the shifts.
    vec_b = moved[b.neighbor] + b.image @ lat - moved[b.center]
    np.testing.assert_allclose(np.linalg.norm(vec_b, axis=1), b.distance, atol=1e-9)
    assert edge_set(a) == {
        (c, n, tuple(np.array(im) + shifts[n] - shifts[c]), d) for c, n, im, d in edge_set(b)
    }


@pytest.mark.parametrize("sid", ["9866", None])
def test_permutation_gives_the_same_graph(sid: str | None) -> None:
    rows = csv_structures("perov5_dev.csv", 1, ids={sid} if sid else None)
    assert rows, f"id {sid} is not in tests/data/{FIXTURES['perov5_dev.csv']}"
    _, s = rows[0]
    lat, pos, z = s.lattice.matrix, s.cart_coords, np.array(s.atomic_numbers)
    base = neighbor_list(lat, pos, atomic_numbers=z)
    if sid == "9866":  # the documented tie at the 12th neighbor: ties are kept
        assert np.bincount(base.center).max() > 12
    rng = np.random.default_rng(0)
    for _ in range(5):
        perm = rng.permutation(len(z))
        nl = neighbor_list(lat, pos[perm], atomic_numbers=z[perm])
        assert edge_set(nl, relabel=perm) == edge_set(base)


def test_slab_periodic_in_two_axes_matches_brute_force() -> None:
    lat = np.array([[2.5, 0.0, 0.0], [1.25, 2.165, 0.0], [0.0, 0.0, 0.0]])  # zero c row is fine
    pos = np.array([[0.0, 0.0, 0.0], [1.25, 0.72, 1.4], [0.3, 0.1, 3.1]])
    pbc = (True, True, False)
    nl = neighbor_list(lat, pos, pbc)
    assert (nl.image[:, 2] == 0).all()
    ref = nearest_with_ties(brute_force(lat, pos, pbc, reach=8), 3)
    for ours, want in zip(per_atom_distances(nl, 3), ref, strict=True):
        np.testing.assert_allclose(ours, want, atol=1e-9)


def test_cluster_without_periodicity_and_an_isolated_atom() -> None:
    rng = np.random.default_rng(1)
    pos = rng.uniform(0, 6, size=(20, 3))
    pos = np.vstack([pos, [[40.0, 40.0, 40.0]]])  # no neighbor inside the cutoff
    nl = neighbor_list(np.zeros((3, 3)), pos, (False, False, False))
    assert (nl.image == 0).all()
    assert 20 not in set(nl.center.tolist()) and 20 not in set(nl.neighbor.tolist())
    ref = nearest_with_ties(brute_force(np.eye(3), pos, (0, 0, 0)), 21)
    for ours, want in zip(per_atom_distances(nl, 21), ref, strict=True):
        np.testing.assert_allclose(ours, want, atol=1e-9)



def test_the_search_never_enumerates_more_than_the_status_8_bound(
        monkeypatch: pytest.MonkeyPatch, search_path: str) -> None:
    """Counting, not timing: each pass of the numpy search (a first radius, then the cutoff
    where that left an atom short) enumerates at most atoms² × `images_per_pair` at the cutoff
    candidates (atom pair, image) in a structure — the count status 8 bounds — on skewed,
    flat, long and partly periodic cells."""
    if search_path != "numpy":
        pytest.skip("counts the numpy search's candidates")
    from deepergat.graphs import periodic
    from deepergat.graphs.structures import images_per_pair
    from deepergat.io.store import StructureBatch

    rng = np.random.default_rng(5)
    cells = [
        (np.array([[3.1, 0, 0], [2.9, 1.1, 0], [2.7, 0.8, 0.9]]), (True, True, True)),
        (np.diag([0.7, 0.7, 30.0]), (True, True, True)),
        (np.diag([2.5, 2.5, 2.5 * 40]), (True, True, True)),
        (np.diag([1.3, 1.6, 0.0]), (True, True, False)),
        (np.diag([0.4, 0.0, 0.0]), (True, False, False)),
    ]
    structures = [{"id": f"c{k}", "lattice": lat, "pbc": pbc, "atomic_numbers": [6] * 6,
                   "positions": rng.random((6, 3)) @ np.where(np.array(pbc)[:, None], lat, 3.0)}
                  for k, (lat, pbc) in enumerate(cells)]
    batch = StructureBatch.from_structures(structures)
    counted = np.zeros(len(cells))
    real = periodic._pairs_within

    def counting(g: periodic.Gathered, reach: np.ndarray, radius: np.ndarray, ps: np.ndarray,
                 gi: np.ndarray, gj: np.ndarray, min_dist: np.ndarray) -> object:
        df = g.frac_w[gj] - g.frac_w[gi]
        r = reach[ps]
        side = np.where(g.pbc[ps], np.floor(r - df) - np.ceil(-r - df) + 1, 1).clip(0)
        np.add.at(counted, ps, side.prod(1))
        return real(g, reach, radius, ps, gi, gj, min_dist)

    monkeypatch.setattr(periodic, "_pairs_within", counting)
    for cutoff in (4.0, 8.0):
        counted[:] = 0
        nl, status = graphs.batch_neighbor_lists(batch, cutoff=cutoff, overlap_threshold=None)
        assert (status == 0).all() and len(nl.center)
        bound = batch.n_atoms**2 * images_per_pair(batch.lattice, batch.pbc, cutoff)
        assert (counted > 0).all() and (counted <= 2 * bound).all(), (counted, bound)
