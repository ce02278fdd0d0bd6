"""Periodic neighbor graphs: against pymatgen and a brute-force reference, invariances, the
batched builder's contract, and geometry errors — for both the compiled and the numpy search."""

from __future__ import annotations

import csv
import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest

from deepergat import graphs
from deepergat.contract import MAX_Z
from deepergat.errors import GeometryError
from deepergat.graphs import build_inputs, neighbor_list
from deepergat.io.store import StructureBatch

DATA = Path(__file__).resolve().parents[1] / "data"
#: The fixtures (tests/data) standing in for the data sets they were cut from.
FIXTURES = {"perov5_dev.csv": "perov5_sample.csv", "carbon24_dev.csv": "carbon24_sample.csv"}


@pytest.fixture(params=["numba", "numpy"], autouse=True)
def search_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run every test with the compiled kernel and with the numpy reference search."""
    if request.param == "numba":
        pytest.importorskip("numba")
        monkeypatch.setenv("DEEPERGAT_NUMBA", "1")
    else:
        monkeypatch.setenv("DEEPERGAT_NUMBA", "0")
    return request.param


def _csv_structures(name: str, limit: int, *, ids: set[str] | None = None) -> list:
    path = DATA / FIXTURES[name]
    pytest.importorskip("pymatgen")
    from pymatgen.core import Structure

    csv.field_size_limit(1 << 30)
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if ids is not None and row["material_id"] not in ids:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out.append((row["material_id"], Structure.from_str(row["cif"], fmt="cif")))
            if len(out) >= limit:
                break
    return out


def brute_force(lattice, positions, pbc, *, cutoff=8.0, reach=8):
    """Every (i, j, image) within the cutoff by enumerating a large block of images."""
    lattice = np.asarray(lattice, float)
    positions = np.asarray(positions, float)
    ranges = [range(-reach, reach + 1) if p else range(1) for p in pbc]
    images = np.array(list(itertools.product(*ranges)))
    out = []
    for i in range(len(positions)):
        for j in range(len(positions)):
            vec = positions[j] + images @ lattice - positions[i]
            d = np.linalg.norm(vec, axis=1)
            for n, dist in zip(images, d, strict=True):
                if dist <= cutoff and not (i == j and not n.any()):
                    out.append((i, j, dist, tuple(n)))
    return out


def nearest_with_ties(edges, n_atoms, k=12, tol=1e-6):
    """Per atom: sorted distances of the k nearest plus ties, from a list of (i, j, d, img)."""
    per = []
    for a in range(n_atoms):
        d = np.sort([e[2] for e in edges if e[0] == a])
        if len(d) > k:
            d = d[d <= d[k - 1] + tol]
        per.append(d)
    return per


def per_atom_distances(nl: graphs.NeighborList, n_atoms: int) -> list[np.ndarray]:
    return [np.sort(nl.distance[nl.center == a]) for a in range(n_atoms)]


def edge_set(nl: graphs.NeighborList, relabel=None) -> set:
    relabel = (
        np.arange(max(nl.center.max(initial=0), nl.neighbor.max(initial=0)) + 1)
        if relabel is None
        else relabel
    )
    return {
        (int(relabel[c]), int(relabel[n]), tuple(int(x) for x in im), round(float(d), 9))
        for c, n, d, im in zip(nl.center, nl.neighbor, nl.distance, nl.image, strict=True)
    }


# ------------------------------------------------------------------ against pymatgen, real data


@pytest.mark.parametrize(("name", "limit"), [("perov5_dev.csv", 150), ("carbon24_dev.csv", 60)])
def test_matches_pymatgen_on_real_structures(name: str, limit: int) -> None:
    for sid, s in _csv_structures(name, limit):
        nl = neighbor_list(s.lattice.matrix, s.cart_coords, atomic_numbers=s.atomic_numbers)
        center, _, _, dist = s.get_neighbor_list(8.0)
        for a in range(len(s)):
            ref = np.sort(dist[center == a])
            ref = ref[ref <= ref[min(len(ref), 12) - 1] + 1e-6]
            ours = np.sort(nl.distance[nl.center == a])
            assert len(ours) == len(ref), (sid, a)
            np.testing.assert_allclose(ours, ref, atol=1e-8, err_msg=f"{name} {sid} atom {a}")


def test_edges_are_real_vectors_and_sorted() -> None:
    [(_, s)] = _csv_structures("perov5_dev.csv", 1)
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
    [(_, s)] = _csv_structures("carbon24_dev.csv", 1)
    nl = neighbor_list(s.lattice.matrix, s.cart_coords)
    sc = s * (2, 2, 2)
    nl2 = neighbor_list(sc.lattice.matrix, sc.cart_coords)
    cell = per_atom_distances(nl, len(s))
    supercell = per_atom_distances(nl2, len(sc))
    # pymatgen orders supercell sites as 8 images of each original site in turn
    for a in range(len(sc)):
        np.testing.assert_allclose(supercell[a], cell[a // 8], atol=1e-8)


def test_positions_shifted_by_lattice_vectors_give_the_same_graph() -> None:
    [(_, s)] = _csv_structures("perov5_dev.csv", 1)
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
    rows = _csv_structures("perov5_dev.csv", 1, ids={sid} if sid else None)
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


# ------------------------------------------------------------------ batched builder


def _batch_of(structures) -> StructureBatch:
    return StructureBatch.from_structures(
        [
            {
                "id": sid,
                "lattice": s.lattice.matrix,
                "atomic_numbers": s.atomic_numbers,
                "positions": s.cart_coords,
            }
            for sid, s in structures
        ]
    )


def test_batched_builder_equals_neighbor_list_plus_self_loops() -> None:
    structures = _csv_structures("perov5_dev.csv", 30) + _csv_structures("carbon24_dev.csv", 10)
    batch = _batch_of(structures)
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


def test_compiled_and_numpy_search_agree(monkeypatch: pytest.MonkeyPatch, search_path: str) -> None:
    if search_path != "numba":
        pytest.skip("compares both paths once")
    structures = _csv_structures("carbon24_dev.csv", 40) + _csv_structures("perov5_dev.csv", 40)
    batch = _batch_of(structures)
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


def test_statuses_of_bad_structures() -> None:
    good = {
        "id": "ok",
        "lattice": np.eye(3) * 4,
        "atomic_numbers": [8, 22],
        "positions": [[0, 0, 0], [2, 2, 2]],
    }
    cases = {
        "empty": ({"atomic_numbers": [], "positions": np.zeros((0, 3))}, 1),
        "big": ({"atomic_numbers": [8] * 5, "positions": np.arange(15).reshape(5, 3) * 0.7}, 2),
        "z0": ({"atomic_numbers": [0, 8]}, 3),
        "z101": ({"atomic_numbers": [101, 8]}, 3),
        "nan": ({"positions": [[0, 0, np.nan], [1, 1, 1]]}, 4),
        "singular": ({"lattice": [[4, 0, 0], [8, 0, 0], [0, 0, 4]]}, 5),
        "inf lattice": ({"lattice": [[np.inf, 0, 0], [0, 4, 0], [0, 0, 4]]}, 5),
        "overlap": ({"positions": [[0, 0, 0], [0.05, 0, 0]]}, 6),
        "self overlap": ({"lattice": [[0.05, 0, 0], [0, 4, 0], [0, 0, 4]]}, 6),
        "first check wins": (
            {"atomic_numbers": [101, 8], "positions": [[0, 0, np.nan], [1, 1, 1]]},
            3,
        ),
    }
    structures = [good]
    for name, (change, _) in cases.items():
        structures.append({**good, "id": name, **change})
    batch = StructureBatch.from_structures(structures)
    g = build_inputs(batch, max_atoms=4, max_z=MAX_Z)
    want = [0] + [code for _, code in cases.values()]
    np.testing.assert_array_equal(g.status, want)
    np.testing.assert_array_equal(g.rows, [0])
    assert g.inputs["crystal_atoms"].shape[0] == 1 and g.inputs["atomic_numbers"].shape == (2,)


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


# ------------------------------------------------------------------ the minimum-image graph


def _ase_minimum_images(lat, pos, cutoff=8.0):
    """Per atom, the sorted minimum-image distances to every other atom within the cutoff."""
    ase = pytest.importorskip("ase")
    d = ase.Atoms(numbers=np.ones(len(pos), int), positions=pos, cell=lat,
                  pbc=True).get_all_distances(mic=True)
    return [np.sort([d[i, j] for j in range(len(pos)) if j != i and d[i, j] <= cutoff])
            for i in range(len(pos))]


def _mic(lat, pos, **kw):
    return neighbor_list(lat, pos, graph="minimum-image", **kw)


def test_minimum_image_matches_ase_on_real_and_skewed_cells() -> None:
    structures = [(sid, s.lattice.matrix, s.cart_coords, s.atomic_numbers)
                  for sid, s in _csv_structures("perov5_dev.csv", 40)
                  + _csv_structures("carbon24_dev.csv", 15)]
    rng = np.random.default_rng(3)
    for k in range(40):  # random, strongly skewed cells, atoms far outside the cell
        lat = np.eye(3) * rng.uniform(2.5, 7.0) + rng.normal(0.0, 1.5, (3, 3))
        if abs(np.linalg.det(lat)) < 3.0:
            continue
        n = int(rng.integers(1, 9))
        pos = rng.uniform(0, 1, (n, 3)) @ lat + rng.normal(0, 4.0, (n, 3))
        structures.append((f"random-{k}", lat, pos, np.ones(n, int)))
    for sid, lat, pos, z in structures:
        nl = _mic(lat, pos, atomic_numbers=z, overlap_threshold=None)
        want = _ase_minimum_images(lat, pos)
        for a, ref in enumerate(want):
            ref = ref[ref <= ref[min(len(ref), 12) - 1] + 1e-6] if len(ref) else ref
            ours = np.sort(nl.distance[nl.center == a])
            np.testing.assert_allclose(ours, ref, atol=1e-8, err_msg=f"{sid} atom {a}")
        # each other atom at most once, never the atom itself, and real vectors
        pairs = list(zip(nl.center.tolist(), nl.neighbor.tolist(), strict=True))
        assert len(pairs) == len(set(pairs)) and not (nl.center == nl.neighbor).any()
        vec = pos[nl.neighbor] + nl.image @ lat - pos[nl.center]
        np.testing.assert_allclose(np.linalg.norm(vec, axis=1), nl.distance, atol=1e-9)


def test_minimum_image_perovskite_cells_are_fully_connected() -> None:
    batch = _batch_of(_csv_structures("perov5_dev.csv", 50))
    g = build_inputs(batch, graph="minimum-image")
    assert (g.status == 0).all()
    # the reference's graph: the 4 other atoms once each plus the self loop
    assert g.inputs["neighbor_mask"].shape[1] == 5 and g.inputs["neighbor_mask"].all()
    assert g.n_edges == 25 * len(batch)
    # one atom alone in its cell has only its self loop (its own images are not neighbors)
    one = _mic(np.eye(3) * 2.5, np.zeros((1, 3)))
    assert len(one.center) == 0


def test_minimum_image_is_invariant_to_wrapping_and_order() -> None:
    [(_, s)] = _csv_structures("perov5_dev.csv", 1, ids={"9866"})
    lat, pos, z = s.lattice.matrix, s.cart_coords, np.array(s.atomic_numbers)
    base = _mic(lat, pos, atomic_numbers=z)
    moved = pos + np.array([[1, -2, 3], [0, 0, -1], [5, 1, 0], [-3, -3, -3], [0, 2, 0]]) @ lat
    again = _mic(lat, moved, atomic_numbers=z)
    np.testing.assert_array_equal(again.center, base.center)
    np.testing.assert_array_equal(again.neighbor, base.neighbor)
    np.testing.assert_allclose(again.distance, base.distance, atol=1e-9)
    perm = np.random.default_rng(0).permutation(len(z))
    assert edge_set(_mic(lat, pos[perm], atomic_numbers=z[perm]), relabel=perm) == \
        edge_set(base)


def _per_atom_edges(nl, z) -> list[list[tuple[int, float]]]:
    """Each center's sorted (neighbor Z, distance rounded to 1e-6 Å)."""
    return [sorted((int(z[j]), round(float(d), 6))
                   for j, d in zip(nl.neighbor[nl.center == a], nl.distance[nl.center == a],
                                   strict=True))
            for a in range(len(z))]


def test_minimum_image_supercell_gives_its_cells_graph() -> None:
    """Copies of a cell count as one atom: every atom of a supercell (any shape, wrapped or
    not, in any order) sees what its original atom sees in the cell, so a minimum-image model
    predicts a supercell as its cell."""
    [(_, s)] = _csv_structures("perov5_dev.csv", 1, ids={"9866"})
    z = np.array(s.atomic_numbers)
    cell = _per_atom_edges(_mic(s.lattice.matrix, s.cart_coords, atomic_numbers=z), z)
    assert all(len(e) == 4 for e in cell)
    rng = np.random.default_rng(1)
    for scale in ([2, 2, 2], [3, 1, 1], [[1, 1, 0], [-1, 1, 0], [0, 0, 2]]):
        sc = s * scale
        zs = np.array(sc.atomic_numbers)
        pos = sc.cart_coords + rng.integers(-2, 3, (len(sc), 3)) @ sc.lattice.matrix
        perm = rng.permutation(len(sc))
        got = _per_atom_edges(_mic(sc.lattice.matrix, pos[perm], atomic_numbers=zs[perm]),
                              zs[perm])
        origin = [int(np.argmin(np.linalg.norm(
            (s.lattice.get_fractional_coords(p) - s.frac_coords + 0.5) % 1 - 0.5, axis=1)))
            for p in pos[perm]]
        assert got == [cell[o] for o in origin], scale
    # within the tolerance (rounding, noise) still the cell's graph; beyond it another crystal
    sc = s * (2, 1, 1)
    zs = np.array(sc.atomic_numbers)
    noisy = sc.cart_coords + rng.uniform(-1, 1, (len(sc), 3)) * graphs.TRANSLATION_TOLERANCE / 4
    near = _mic(sc.lattice.matrix, noisy, atomic_numbers=zs)
    assert np.bincount(near.center).max() == 4
    moved = sc.cart_coords.copy()
    moved[0, 0] += 1.6 * graphs.TRANSLATION_TOLERANCE
    far = _mic(sc.lattice.matrix, moved, atomic_numbers=zs)
    assert np.bincount(far.center).min() == 9  # each atom sees the 9 others of its 10-atom cell
    # another element on one of the two copies of a site (a double perovskite) is not a
    # supercell: its own 10-atom graph
    double = zs.copy()
    double[int(np.flatnonzero(zs == zs[1])[0])] = 26 if zs[1] != 26 else 27
    other = _mic(sc.lattice.matrix, sc.cart_coords, atomic_numbers=double)
    assert np.bincount(other.center).min() == 9


def test_translation_classes_cost_nothing_for_primitive_cells() -> None:
    batch = _batch_of(_csv_structures("perov5_dev.csv", 50))
    assert graphs.translation_classes(batch, np.arange(len(batch))) == {}


def test_the_graph_construction_is_checked_everywhere() -> None:
    with pytest.raises(ValueError, match="graph construction 'nearest' is not one of periodic"):
        neighbor_list(np.eye(3) * 3, np.zeros((1, 3)), graph="nearest")  # type: ignore[arg-type]
    assert graphs.graph_settings({"cutoff": 8, "max_neighbors": 12}) == {
        "cutoff": 8.0, "max_neighbors": 12, "construction": "periodic"}  # older files
    assert graphs.graph_settings({"cutoff": 6, "max_neighbors": 8, "graph": "minimum-image"})[
        "construction"] == "minimum-image"


def test_translation_rule_edge_cases() -> None:
    """A batch with no usable structure, a near-translation whose double fails (not a group:
    no merge, whatever the atom order), atoms of unknown element, and large cells."""
    bad = StructureBatch.from_structures([{"id": "z0", "lattice": np.eye(3) * 4,
                                           "atomic_numbers": [0], "positions": np.zeros((1, 3))}])
    g = build_inputs(bad, graph="minimum-image")
    assert g.status.tolist() == [3] and len(g.rows) == 0
    lat = np.diag([9.0, 3.0, 3.0])
    x = np.array([0.0, 3.0, 6.15])
    degrees = set()
    for perm in itertools.permutations(range(3)):
        pos = np.c_[x[list(perm)], np.zeros(3), np.zeros(3)]
        nl = _mic(lat, pos, atomic_numbers=[14, 14, 14])
        degrees.add(tuple(np.bincount(nl.center, minlength=3).tolist()))
    assert degrees == {(2, 2, 2)}
    # rock salt's conventional cell: 4 copies of a 2-atom cell with Z, none merged without Z
    a = 5.64
    base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]) * a
    pos = np.r_[base, base + np.array([a / 2, 0, 0])]
    z = [11] * 4 + [17] * 4
    assert np.bincount(_mic(np.eye(3) * a, pos, atomic_numbers=z).center).max() == 1
    assert np.bincount(_mic(np.eye(3) * a, pos).center).min() == 7
    # above MAX_TRANSLATION_ATOMS a supercell keeps its plain minimum-image graph
    one = StructureBatch.from_structures([{"id": "big", "lattice": np.eye(3) * 2.0 * 7,
                                           "atomic_numbers": [6] * 7**3,
                                           "positions": np.indices((7, 7, 7)).reshape(3, -1).T
                                           * 2.0}])
    assert len(one.atomic_numbers) > graphs.MAX_TRANSLATION_ATOMS
    assert graphs.translation_classes(one, np.arange(1)) == {}
    # a molecule has no translation, however repetitive (two copies of a dimer in a row)
    mol = StructureBatch.from_structures([{"id": "m", "lattice": np.zeros((3, 3)),
                                           "pbc": [False] * 3, "atomic_numbers": [8, 8, 8, 8],
                                           "positions": [[0, 0, 0], [1.2, 0, 0], [3, 0, 0],
                                                         [4.2, 0, 0]]}])
    assert graphs.translation_classes(mol, np.arange(1)) == {}
