"""The minimum-image search (`deepergat.graphs.minimum_image`): against ASE's minimum-image
distances, full connection of small cells, invariances, and the translation rule."""

from __future__ import annotations

import itertools

import numpy as np
from graph_helpers import (
    ase_minimum_images,
    batch_of,
    csv_structures,
    edge_set,
    mic,
    per_atom_edges,
)

from deepergat import graphs
from deepergat.graphs import build_inputs
from deepergat.io.store import StructureBatch


def test_minimum_image_matches_ase_on_real_and_skewed_cells() -> None:
    structures = [(sid, s.lattice.matrix, s.cart_coords, s.atomic_numbers)
                  for sid, s in csv_structures("perov5_dev.csv", 40)
                  + csv_structures("carbon24_dev.csv", 15)]
    rng = np.random.default_rng(3)
    for k in range(40):  # random, strongly skewed cells, atoms far outside the cell
        lat = np.eye(3) * rng.uniform(2.5, 7.0) + rng.normal(0.0, 1.5, (3, 3))
        if abs(np.linalg.det(lat)) < 3.0:
            continue
        n = int(rng.integers(1, 9))
        pos = rng.uniform(0, 1, (n, 3)) @ lat + rng.normal(0, 4.0, (n, 3))
        structures.append((f"random-{k}", lat, pos, np.ones(n, int)))
    for sid, lat, pos, z in structures:
        nl = mic(lat, pos, atomic_numbers=z, overlap_threshold=None)
        want = ase_minimum_images(lat, pos)
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
    batch = batch_of(csv_structures("perov5_dev.csv", 50))
    g = build_inputs(batch, graph="minimum-image")
    assert (g.status == 0).all()
    # the reference's graph: the 4 other atoms once each plus the self loop
    assert g.inputs["neighbor_mask"].shape[1] == 5 and g.inputs["neighbor_mask"].all()
    assert g.n_edges == 25 * len(batch)
    # one atom alone in its cell has only its self loop (its own images are not neighbors)
    one = mic(np.eye(3) * 2.5, np.zeros((1, 3)))
    assert len(one.center) == 0


def test_minimum_image_is_invariant_to_wrapping_and_order() -> None:
    [(_, s)] = csv_structures("perov5_dev.csv", 1, ids={"9866"})
    lat, pos, z = s.lattice.matrix, s.cart_coords, np.array(s.atomic_numbers)
    base = mic(lat, pos, atomic_numbers=z)
    moved = pos + np.array([[1, -2, 3], [0, 0, -1], [5, 1, 0], [-3, -3, -3], [0, 2, 0]]) @ lat
    again = mic(lat, moved, atomic_numbers=z)
    np.testing.assert_array_equal(again.center, base.center)
    np.testing.assert_array_equal(again.neighbor, base.neighbor)
    np.testing.assert_allclose(again.distance, base.distance, atol=1e-9)
    perm = np.random.default_rng(0).permutation(len(z))
    assert edge_set(mic(lat, pos[perm], atomic_numbers=z[perm]), relabel=perm) == \
        edge_set(base)


def test_minimum_image_supercell_gives_its_cells_graph() -> None:
    """Copies of a cell count as one atom: every atom of a supercell (any shape, wrapped or
    not, in any order) sees what its original atom sees in the cell, so a minimum-image model
    predicts a supercell as its cell."""
    [(_, s)] = csv_structures("perov5_dev.csv", 1, ids={"9866"})
    z = np.array(s.atomic_numbers)
    cell = per_atom_edges(mic(s.lattice.matrix, s.cart_coords, atomic_numbers=z), z)
    assert all(len(e) == 4 for e in cell)
    rng = np.random.default_rng(1)
    for scale in ([2, 2, 2], [3, 1, 1], [[1, 1, 0], [-1, 1, 0], [0, 0, 2]]):
        sc = s * scale
        zs = np.array(sc.atomic_numbers)
        pos = sc.cart_coords + rng.integers(-2, 3, (len(sc), 3)) @ sc.lattice.matrix
        perm = rng.permutation(len(sc))
        got = per_atom_edges(mic(sc.lattice.matrix, pos[perm], atomic_numbers=zs[perm]),
                              zs[perm])
        origin = [int(np.argmin(np.linalg.norm(
            (s.lattice.get_fractional_coords(p) - s.frac_coords + 0.5) % 1 - 0.5, axis=1)))
            for p in pos[perm]]
        assert got == [cell[o] for o in origin], scale
    # within the tolerance (rounding, noise) still the cell's graph; beyond it another crystal
    sc = s * (2, 1, 1)
    zs = np.array(sc.atomic_numbers)
    noisy = sc.cart_coords + rng.uniform(-1, 1, (len(sc), 3)) * graphs.TRANSLATION_TOLERANCE / 4
    near = mic(sc.lattice.matrix, noisy, atomic_numbers=zs)
    assert np.bincount(near.center).max() == 4
    moved = sc.cart_coords.copy()
    moved[0, 0] += 1.6 * graphs.TRANSLATION_TOLERANCE
    far = mic(sc.lattice.matrix, moved, atomic_numbers=zs)
    assert np.bincount(far.center).min() == 9  # each atom sees the 9 others of its 10-atom cell
    # another element on one of the two copies of a site (a double perovskite) is not a
    # supercell: its own 10-atom graph
    double = zs.copy()
    double[int(np.flatnonzero(zs == zs[1])[0])] = 26 if zs[1] != 26 else 27
    other = mic(sc.lattice.matrix, sc.cart_coords, atomic_numbers=double)
    assert np.bincount(other.center).min() == 9


def test_translation_classes_cost_nothing_for_primitive_cells() -> None:
    batch = batch_of(csv_structures("perov5_dev.csv", 50))
    assert graphs.translation_classes(batch, np.arange(len(batch))) == {}


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
        nl = mic(lat, pos, atomic_numbers=[14, 14, 14])
        degrees.add(tuple(np.bincount(nl.center, minlength=3).tolist()))
    assert degrees == {(2, 2, 2)}
    # rock salt's conventional cell: 4 copies of a 2-atom cell with Z, none merged without Z
    a = 5.64
    base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]) * a
    pos = np.r_[base, base + np.array([a / 2, 0, 0])]
    z = [11] * 4 + [17] * 4
    assert np.bincount(mic(np.eye(3) * a, pos, atomic_numbers=z).center).max() == 1
    assert np.bincount(mic(np.eye(3) * a, pos).center).min() == 7
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



def test_partly_periodic_cells_with_skewed_free_rows_match_brute_force() -> None:
    """A cell periodic along some axes only: the rows of its free axes may point anywhere (a
    slab's vacuum row tilted, a wire's rows of any length); each pair's minimum-image
    distance is the shortest over translations along the periodic rows alone."""
    rng = np.random.default_rng(11)
    checked = 0
    for pbc in [(True, True, False), (True, False, True), (False, True, True),
                (True, False, False), (False, False, False)]:
        for _ in range(6):
            lat = np.eye(3) * rng.uniform(3.0, 6.0) + rng.normal(0.0, 1.2, (3, 3))
            for k in range(3):  # free rows: long and tilted, as written by generators
                if not pbc[k]:
                    lat[k] = rng.normal(0.0, 1.0, 3) + rng.uniform(8.0, 25.0) * lat[k] / \
                        np.linalg.norm(lat[k])
            if abs(np.linalg.det(lat)) < 3.0:
                continue
            n = int(rng.integers(2, 7))
            pos = rng.uniform(0, 1, (n, 3)) @ lat
            nl = mic(lat, pos, pbc=np.array(pbc), cutoff=20.0, max_neighbors=n,
                     overlap_threshold=None)
            periodic = [lat[k] for k in range(3) if pbc[k]]
            shifts = (np.array(list(itertools.product(range(-8, 9), repeat=len(periodic))))
                      @ np.array(periodic) if periodic else np.zeros((1, 3)))
            for i in range(n):
                want = sorted(
                    float(np.linalg.norm(pos[j] + shifts - pos[i], axis=1).min())
                    for j in range(n) if j != i)
                want = [d for d in want if d <= 20.0]
                got = sorted(nl.distance[nl.center == i].tolist())
                assert np.allclose(got, want, atol=1e-9), (pbc, i, got, want)
            checked += 1
    assert checked >= 20
