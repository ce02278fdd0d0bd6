"""The short list (`deepergat.screening.shortlist`): ranked, filtered, one row per distinct crystal
(its best-ranked member first, the group's size among the rows examined), known crystals marked
or left out, a time budget past which rows stay ungrouped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deepergat.elements import compositions
from deepergat.errors import DeepergatError, SettingError
from deepergat.io.store import Store, StructureBatch, write_store
from deepergat.screening.predictions import PredictionsWriter, Rows
from deepergat.screening.shortlist import ListSettings, short_list


def perovskite(a: float = 3.9, z: tuple[int, int] = (38, 22)) -> dict:
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    return {"lattice": np.eye(3) * a, "atomic_numbers": [*z, 8, 8, 8], "positions": frac * a}


def doubled(s: dict) -> dict:
    lat = np.asarray(s["lattice"], float)
    pos = np.asarray(s["positions"])
    return {"lattice": lat * np.array([2, 1, 1])[:, None],
            "atomic_numbers": list(s["atomic_numbers"]) * 2,
            "positions": np.concatenate([pos, pos + lat[0]])}


def rock_salt() -> dict:
    frac = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0],
                     [.5, .5, .5], [.5, 0, 0], [0, .5, 0], [0, 0, .5]])
    return {"lattice": np.eye(3) * 5.64, "atomic_numbers": [11] * 4 + [17] * 4,
            "positions": frac * 5.64}


def cscl_type() -> dict:
    return {"lattice": np.eye(3) * 3.3, "atomic_numbers": [11, 17],
            "positions": np.array([[0, 0, 0], [0.5, 0.5, 0.5]]) * 3.3}


#: (structure, predicted value, status) in store order; the ranking (lowest first) is the
#: order written here, row 7 has no prediction.
CANDIDATES = [
    (perovskite(), -1.0, 0),                                   # 0 SrTiO3
    (doubled(perovskite()), -0.9, 0),                          # 1 its supercell
    (perovskite(z=(22, 38)), -0.8, 0),                         # 2 SrTiO3, cations swapped
    (rock_salt(), -0.7, 0),                                    # 3 NaCl rock salt
    ({**perovskite(), "positions": perovskite()["positions"]
      + np.random.default_rng(0).normal(0, 0.02, (5, 3))}, -0.6, 0),  # 4 SrTiO3 jittered
    (cscl_type(), -0.5, 0),                                    # 5 NaCl, CsCl type
    (perovskite(4.0, (56, 22)), -0.4, 0),                      # 6 BaTiO3
    (perovskite(4.0, (56, 26)), np.nan, 6),                    # 7 BaFeO3, status 6
    (perovskite(3.95, (19, 26)), 0.5, 0),                      # 8 KFeO3
]


@pytest.fixture
def screened(tmp_path: Path) -> dict[str, Path]:
    """A store of `CANDIDATES`, its predictions file (version 2) and a store of known ones."""
    store = tmp_path / "cands.h5"
    write_store(store, StructureBatch.from_structures(
        [{"id": f"c{k}", **s} for k, (s, _, _) in enumerate(CANDIDATES)]))
    with Store(store) as s:
        digest = s.content_digest
        formulas, n_el = compositions(s.atomic_numbers(), s.n_atoms)
    m = len(CANDIDATES)
    pred = tmp_path / "cands.predictions.h5"
    with PredictionsWriter(pred, n_structures=m, targets=[{"name": "e", "units": "eV"}],
                           embedding_dim=None,
                           attrs={"model": "m", "model_sha256": "0" * 64,
                                  "model_metadata": "{}", "input": str(store),
                                  "input_digest": digest,
                                  "screen_settings": json.dumps({})}) as w:
        w.write(0, Rows(index=np.arange(m), ids=[f"c{k}" for k in range(m)],
                        status=np.array([c[2] for c in CANDIDATES], np.uint8),
                        flags=np.zeros(m, np.uint8),
                        predictions=np.array([[c[1]] for c in CANDIDATES], np.float32),
                        formula=formulas, n_elements=n_el))
    known = tmp_path / "known.h5"
    write_store(known, StructureBatch.from_structures(
        [{"id": "mp-rocksalt", **rock_salt()}, {"id": "mp-batio3", **perovskite(4.02, (56, 22))}]))
    return {"store": store, "predictions": pred, "known": known}


def listed(screened: dict[str, Path], **settings: object) -> list[tuple[int, int | None]]:
    result = short_list(screened["predictions"], ListSettings(**settings))  # type: ignore[arg-type]
    return [(e.row, e.group_size) for e in result.entries]


def test_one_row_per_crystal_best_first_with_its_group(screened: dict[str, Path]) -> None:
    result = short_list(screened["predictions"], ListSettings(top=3))
    assert [(e.row, e.group_size, e.members) for e in result.entries] == [
        (0, 2, [0, 1]), (2, 1, [2]), (3, 1, [3])]
    # the walk stopped at the third group: sizes are counted among the 4 rows examined
    assert result.examined == 4 and result.ranked == 8 and result.ungrouped == 0
    assert "3 distinct structures among the best 4 of 8 ranked rows" in result.summary()
    every = short_list(screened["predictions"], ListSettings())
    assert [(e.row, e.members) for e in every.entries] == [
        (0, [0, 1, 4]), (2, [2]), (3, [3]), (5, [5]), (6, [6]), (8, [8])]
    assert every.examined == 8  # the status-6 row is never ranked
    # only structures of one reduced formula were ever compared
    assert every.fits <= 6


def test_the_raw_ranking_on_request(screened: dict[str, Path]) -> None:
    assert listed(screened, top=3, group=False) == [(0, None), (1, None), (2, None)]
    assert listed(screened, top=2, order="desc", group=False) == [(8, None), (6, None)]


def test_where_terms_on_rows_compositions_and_groups(screened: dict[str, Path]) -> None:
    assert listed(screened, where="has(Ti) and not has(Ba)") == [(0, 3), (2, 1)]
    assert listed(screened, where='formula == "ClNa"') == [(3, 1), (5, 1)]
    assert listed(screened, where="n_elements == 2 or e > 0") == [(3, 1), (5, 1), (8, 1)]
    assert listed(screened, where="group_size >= 2") == [(0, 3)]
    assert listed(screened, top=1, where="has(Fe)") == [(8, 1)]
    # without top, rows that have no rank but pass follow in file order
    assert listed(screened, where="has(Fe)") == [(8, 1), (7, None)]
    with pytest.raises(SettingError, match=r"group_size needs grouped rows"):
        listed(screened, where="group_size > 1", group=False)


def test_known_crystals_are_marked_or_left_out(screened: dict[str, Path]) -> None:
    known = (str(screened["known"]),)
    result = short_list(screened["predictions"], ListSettings(known=known))
    assert {e.row: e.known for e in result.entries} == {
        0: "", 2: "", 3: "mp-rocksalt", 5: "", 6: "mp-batio3", 8: ""}
    assert "checked against 2 known structures" in result.summary()
    assert listed(screened, known=known, novel_only=True) == [(0, 3), (2, 1), (5, 1), (8, 1)]
    assert listed(screened, known=known, where="known") == [(3, 1), (6, 1)]
    assert listed(screened, known=known, top=2, where="novel and not has(Sr)") == [(5, 1),
                                                                                   (8, 1)]
    raw = short_list(screened["predictions"], ListSettings(known=known, group=False, top=7))
    assert [e.known for e in raw.entries] == ["", "", "", "mp-rocksalt", "", "", "mp-batio3"]
    for bad in [ListSettings(novel_only=True), ListSettings(where="novel")]:
        with pytest.raises(SettingError, match=r"known"):
            short_list(screened["predictions"], bad)


def test_rows_past_the_budget_stay_on_the_list_ungrouped(screened: dict[str, Path]) -> None:
    result = short_list(screened["predictions"], ListSettings(seconds=1e-9))
    assert result.ungrouped == 8 and result.examined == 0
    assert [(e.row, e.group_size) for e in result.entries] == [
        (r, None) for r in (0, 1, 2, 3, 4, 5, 6, 8)]
    assert "left ungrouped" in result.summary()


def test_structures_come_only_from_the_store_that_was_screened(
        screened: dict[str, Path]) -> None:
    store = screened["store"]
    store.unlink()
    write_store(store, StructureBatch.from_structures(  # re-packed: same path, other crystals
        [{"id": f"c{k}", **rock_salt()} for k in range(len(CANDIDATES))]))
    with pytest.raises(DeepergatError, match="is not the store that was screened"):
        short_list(screened["predictions"], ListSettings(top=3))
    assert listed(screened, top=2, group=False) == [(0, None), (1, None)]  # needs no structure
    store.unlink()
    with pytest.raises(SettingError, match="the input store is gone"):
        short_list(screened["predictions"], ListSettings(top=3))
