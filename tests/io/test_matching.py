"""Which structures are one crystal (`deepergat.io.matching`): supercells, permutations, jitter
and rigid moves of a structure match it; another polymorph of the formula does not; known
stores are indexed by formula and name the structure they match."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepergat.errors import DeepergatError, SettingError
from deepergat.io.matching import (
    KnownStructures,
    Matcher,
    MatchTolerance,
    StructureRows,
    check_stores,
    to_pymatgen,
)
from deepergat.io.store import Store, StructureBatch, write_store


def perovskite(a: float = 3.9) -> dict:
    """Cubic SrTiO3."""
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    return {"lattice": np.eye(3) * a, "atomic_numbers": [38, 22, 8, 8, 8],
            "positions": frac * a}


def supercell(s: dict, reps: tuple[int, int, int]) -> dict:
    lat = np.asarray(s["lattice"], float)
    shifts = np.array([[i, j, k] for i in range(reps[0]) for j in range(reps[1])
                       for k in range(reps[2])]) @ lat
    pos = (np.asarray(s["positions"])[None] + shifts[:, None]).reshape(-1, 3)
    return {"lattice": lat * np.array(reps)[:, None],
            "atomic_numbers": list(s["atomic_numbers"]) * len(shifts), "positions": pos}


def rock_salt(a: float = 5.64) -> dict:
    frac = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0],
                     [.5, .5, .5], [.5, 0, 0], [0, .5, 0], [0, 0, .5]])
    return {"lattice": np.eye(3) * a, "atomic_numbers": [11] * 4 + [17] * 4,
            "positions": frac * a}


def cesium_chloride_type(a: float = 3.3) -> dict:
    """NaCl in the CsCl structure: the same formula, another polymorph."""
    return {"lattice": np.eye(3) * a, "atomic_numbers": [11, 17],
            "positions": np.array([[0, 0, 0], [0.5, 0.5, 0.5]]) * a}


def batch_of(structures: list[dict]) -> StructureBatch:
    return StructureBatch.from_structures(
        [{"id": f"s{k}", **s} for k, s in enumerate(structures)])


def test_one_crystal_however_it_is_written() -> None:
    rng = np.random.default_rng(0)
    base = perovskite()
    permuted = dict(base, atomic_numbers=base["atomic_numbers"][::-1],
                    positions=np.asarray(base["positions"])[::-1])
    jittered = dict(base, positions=np.asarray(base["positions"]) + rng.normal(0, 0.02, (5, 3)))
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    moved = dict(base, lattice=np.asarray(base["lattice"]) @ rot.T,
                 positions=(np.asarray(base["positions"]) + 0.7) @ rot.T)
    strained = perovskite(3.95)  # scaled volume: the matcher compares shapes
    variants = [base, supercell(base, (2, 1, 1)), supercell(base, (2, 2, 2)), permuted,
                jittered, moved, strained]
    batch = batch_of(variants)
    structures = [to_pymatgen(batch, k) for k in range(len(variants))]
    matcher = Matcher()
    for k, s in enumerate(structures[1:], start=1):
        assert matcher.same(structures[0], s), f"variant {k}"
    assert matcher.fits == len(variants) - 1


def test_other_polymorphs_and_compounds_are_other_crystals() -> None:
    batch = batch_of([rock_salt(), cesium_chloride_type(), perovskite()])
    a, b, c = (to_pymatgen(batch, k) for k in range(3))
    matcher = Matcher()
    assert not matcher.same(a, b)  # NaCl: rock salt against the CsCl type
    assert not matcher.same(a, c)
    # SrTiO3 with the cations' sites swapped (Sr octahedral): the formula, another crystal
    swapped = dict(perovskite(), atomic_numbers=[22, 38, 8, 8, 8])
    d = to_pymatgen(batch_of([swapped]), 0)
    assert not matcher.same(c, d)
    # one oxygen moved 1.1 Å: beyond pymatgen's site tolerance (0.3 of (V/n)^(1/3) = 0.68 Å
    # after the best translation), within CDVAE's looser 0.5
    moved = perovskite()
    shift = np.zeros((5, 3))
    shift[2, 2] = 1.1
    moved["positions"] = np.asarray(moved["positions"], float) + shift
    e = to_pymatgen(batch_of([moved]), 0)
    assert not matcher.same(c, e) and Matcher(MatchTolerance(0.3, 0.5, 10)).same(c, e)


def test_molecules_match_up_to_a_rigid_move_and_never_a_crystal() -> None:
    rng = np.random.default_rng(2)
    pos = rng.normal(0, 1.5, (6, 3))
    z = [78] * 6
    theta = 0.7
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0],
                    [0, 0, 1]])
    cluster = {"lattice": np.eye(3) * 20, "pbc": (False, False, False), "atomic_numbers": z,
               "positions": pos}
    moved = dict(cluster, positions=(pos @ rot.T + 3.0)[::-1])
    other = dict(cluster, positions=pos * 1.1)
    batch = batch_of([cluster, moved, other])
    a, b, c = (to_pymatgen(batch, k) for k in range(3))
    matcher = Matcher()
    assert matcher.same(a, b) and not matcher.same(a, c)
    crystal = to_pymatgen(batch_of([perovskite()]), 0)
    assert not matcher.same(a, crystal)


def test_tolerances_parse_and_refuse_in_one_line() -> None:
    assert MatchTolerance.parse("0.3,0.5,10") == MatchTolerance(0.3, 0.5, 10.0)
    assert str(MatchTolerance()) == "0.2,0.3,5"
    for bad in ["0.2,0.3", "a,b,c", "0.2,-1,5", "0,0.3,5"]:
        with pytest.raises(SettingError, match=r"^match_tol"):
            MatchTolerance.parse(bad)


def test_known_stores_name_the_structure_a_candidate_is(tmp_path: Path) -> None:
    known = tmp_path / "known.h5"
    write_store(known, StructureBatch.from_structures([
        {"id": "mp-rocksalt", **rock_salt()}, {"id": "mp-srtio3", **perovskite()},
        {"id": "mp-cscl-type", **cesium_chloride_type()}]))
    with KnownStructures([known]) as k:
        assert k.n_structures == 3 and k.candidates("NaCl") == 2 and k.candidates("KCl") == 0
        candidates = batch_of([supercell(perovskite(3.92), (1, 1, 2)), rock_salt(5.5),
                               perovskite(4.5) | {"atomic_numbers": [56, 22, 8, 8, 8]}])
        assert k.match(to_pymatgen(candidates, 0), "SrTiO3") == "mp-srtio3"
        assert k.match(to_pymatgen(candidates, 1), "NaCl") == "mp-rocksalt"
        assert k.match(to_pymatgen(candidates, 2), "BaTiO3") is None
        assert k.matcher.fits == 2  # only structures of the same formula were compared
    with pytest.raises(DeepergatError, match="deepergat pack"):
        check_stores([tmp_path / "absent.h5"])


def test_structure_rows_read_in_blocks_and_keep_what_they_built(tmp_path: Path) -> None:
    store = tmp_path / "s.h5"
    write_store(store, batch_of([perovskite(3.8 + 0.01 * k) for k in range(40)]))
    with Store(store) as s:
        rows = StructureRows(s, block=16)
        rows.prefetch([3, 30, 5])
        first = rows.get(3)
        assert rows.get(3) is first
        assert first.lattice.a == pytest.approx(3.83)
        assert rows.get(39).lattice.a == pytest.approx(4.19)
