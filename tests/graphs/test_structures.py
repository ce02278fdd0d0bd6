"""Structure checks (`deepergat.graphs.structures`): every status code, the first failing check
winning, only good structures in the model inputs, degenerate cells refused (status 8) before
any search, and the flags every predicting path reports."""

from __future__ import annotations

import numpy as np
import pytest

from deepergat.contract import MAX_Z, Status
from deepergat.graphs import build_inputs, check_structures
from deepergat.io.store import StructureBatch


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



# ---- status 8: too many periodic images, decided before the search -------------------------


def _cell(lattice: object, positions: object, z: object = None, pbc: object = (True,) * 3,
          sid: str = "s") -> dict[str, object]:
    positions = np.asarray(positions, dtype=float).reshape(-1, 3)
    return {"id": sid, "lattice": np.asarray(lattice, dtype=float), "pbc": pbc,
            "atomic_numbers": [6] * len(positions) if z is None else z,
            "positions": positions}


#: Cells with one, two or three vectors far shorter than the cutoff: each passes the singular-
#: lattice check, and a search would need 10⁸–10¹² candidates.
DEGENERATE = {
    "needle": _cell(np.diag([1e-3, 1e-3, 1e9]), [[0, 0, 0]]),
    "sheet": _cell(np.diag([1e-3, 1e-3, 20.0]), [[0, 0, 0], [0, 0, 1.5]], z=[6, 8]),
    "sheet without vacuum axis": _cell(np.diag([1e-3, 1e-3, 0.0]), [[0, 0, 0], [0, 0, 1.5]],
                                       z=[6, 8], pbc=(True, True, False)),
    "wire": _cell(np.diag([2e-6, 0.0, 0.0]), [[0, 0, 0], [0, 1.4, 0]], pbc=(True, False, False)),
    "20 atoms in 0.005 Å": _cell(np.eye(3) * 0.005,
                                 np.random.default_rng(0).random((20, 3)) * 0.005),
    "tiny cubic cell": _cell(np.eye(3) * 0.12, [[0, 0, 0]]),
    "sheared": _cell([[4.0, 0, 0], [4.0, 1e-3, 0], [0, 0, 4.0]], [[0, 0, 0]]),
    "dense 1000 atoms": _cell(np.eye(3) * 2.0, np.random.default_rng(1).random((1000, 3)) * 2.0),
}


@pytest.mark.parametrize("graph", ["periodic", "minimum-image"])
def test_degenerate_cells_get_status_8_before_any_search(
        graph: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every degenerate cell gets status 8 on both constructions and both search paths, the
    search never sees it (the bound comes from the lattice and the atom count alone), and the
    ordinary structures of the same batch are searched as ever."""
    from deepergat.graphs import search

    ok = [_cell(np.eye(3) * 3.9, [[0, 0, 0], [1.95, 1.95, 1.95]], z=[38, 22], sid="ok"),
          _cell(np.diag([3.9, 3.9, 3.9 * 200]),  # a 1 × 1 × 200 supercell: long, not degenerate
                np.stack([np.zeros(200), np.zeros(200), np.arange(200) * 3.9], 1), sid="chain")]
    cells = [*ok, *({**c, "id": name} for name, c in DEGENERATE.items())]
    batch = StructureBatch.from_structures(cells)
    searched: list[int] = []
    real = search.search_select

    def spy(b: StructureBatch, rows: np.ndarray, **kw: object) -> object:
        searched.extend(np.asarray(rows).tolist())
        return real(b, rows, **kw)

    monkeypatch.setattr(search, "search_select", spy)
    g = build_inputs(batch, graph=graph, max_atoms=1000, max_z=MAX_Z)  # type: ignore[arg-type]
    assert g.status.tolist() == [0, 0] + [8] * len(DEGENERATE)
    assert searched == [0, 1]
    assert Status(8).meaning == "too many periodic images within the cutoff"


def test_the_candidate_bound_is_the_search_s_worst_case() -> None:
    """Status 8 exactly where atoms × images per pair (the box around the cutoff sphere, from
    the reciprocal lengths) passes `MAX_ATOM_CANDIDATES`, or atoms² × images passes
    `MAX_STRUCTURE_CANDIDATES`; a bigger cutoff reaches more images."""
    from deepergat.contract import MAX_ATOM_CANDIDATES, MAX_STRUCTURE_CANDIDATES
    from deepergat.graphs.structures import images_per_pair

    lattice = np.stack([np.eye(3) * a for a in (0.5, 1.0, 3.0)])
    pbc = np.ones((3, 3), bool)
    np.testing.assert_array_equal(images_per_pair(lattice, pbc, 8.0), [33**3, 17**3, 6**3])
    np.testing.assert_array_equal(images_per_pair(lattice, pbc, 1.0), [5**3, 3**3, 1])
    slab = np.diag([3.0, 3.0, 0.0])[None]
    assert images_per_pair(slab, np.array([[True, True, False]]), 8.0)[0] == 6**2
    # a 1-atom cubic cell with 101 images per axis (101³ ≤ 2²⁰) passes, with 102 it does not
    assert 101**3 <= MAX_ATOM_CANDIDATES < 102**3
    for images, want in [(101, 0), (102, 8)]:
        a = 16.0 / (images - 0.5)  # ⌊2 · 8 Å / a⌋ + 1 = images
        b = StructureBatch.from_structures([_cell(np.eye(3) * a, [[0, 0, 0]])])
        assert check_structures(b, cutoff=8.0)[0] == want, images
    molecule = int(np.sqrt(MAX_STRUCTURE_CANDIDATES))  # no periodic axis: one image a pair
    for n, want in [(molecule, 0), (molecule + 1, 8)]:
        b = StructureBatch.from_structures([_cell(np.zeros((3, 3)), np.zeros((n, 3)),
                                                  pbc=(False,) * 3)])
        assert check_structures(b, cutoff=8.0)[0] == want, n
    assert check_structures(b)[0] == 0  # no cutoff: not checked


# ---- flags -----------------------------------------------------------------------------------


def test_structure_flags_for_every_path() -> None:
    """Bit 0 for an element the model never saw; bit 1 for a minimum-image model's structure
    above its translation limit that may be a supercell (element counts sharing a divisor)."""
    from deepergat.contract import FLAG_TRANSLATIONS_UNTESTED, FLAG_UNSEEN_ELEMENT
    from deepergat.graphs import structure_flags

    def supercell(reps: int, z: tuple[int, ...] = (38, 22, 8, 8, 8)) -> dict[str, object]:
        frac = np.array([[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]])
        shifts = np.stack(np.meshgrid(*[np.arange(reps)] * 3, indexing="ij"), -1).reshape(-1, 3)
        pos = ((frac[None] + shifts[:, None]).reshape(-1, 3)) * 3.9
        return _cell(np.eye(3) * 3.9 * reps, pos, z=list(z) * len(shifts))

    prime = supercell(6)  # 1080 atoms; then one O removed: counts 216, 216, 647 share no divisor
    prime = {**prime, "atomic_numbers": prime["atomic_numbers"][:-1],  # type: ignore[index]
             "positions": prime["positions"][:-1]}  # type: ignore[index]
    cells = [supercell(1), supercell(3), supercell(6), prime,
             _cell(np.eye(3) * 4, [[0, 0, 0], [2, 2, 2]], z=[92, 8])]
    batch = StructureBatch.from_structures(cells)
    seen = range(1, 84)
    assert structure_flags(batch, seen_elements=seen, graph="periodic").tolist() == [
        0, 0, 0, 0, FLAG_UNSEEN_ELEMENT]
    # 135 atoms are tested for translations (≤ 256); 1,080 are not, and may be a supercell
    assert structure_flags(batch, seen_elements=seen, graph="minimum-image").tolist() == [
        0, 0, FLAG_TRANSLATIONS_UNTESTED, 0, FLAG_UNSEEN_ELEMENT]
    assert structure_flags(batch, seen_elements=seen, graph="minimum-image",
                           translation_max_atoms=100).tolist() == [
        0, FLAG_TRANSLATIONS_UNTESTED, FLAG_TRANSLATIONS_UNTESTED, 0, FLAG_UNSEEN_ELEMENT]
