"""The funnel (`deepergat.screening.subset`): a screen of rows chosen from an earlier screen of
the same store keeps their store index, equals a full screen on those rows, resumes, shards and
merges like any screen, and refuses a choice it cannot make."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from screen_helpers import read_predictions, run_inprocess

from deepergat.errors import DeepergatError
from deepergat.screening.options import ScreenOptions


def _read(path: Path) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        return {"index": f["index"][:], "ids": f["ids"][:], "status": f["status"][:],
                "flags": f["flags"][:], "formula": f["formula"][:],
                "heat_ref": f["predictions/heat_ref"][:]}


@pytest.fixture
def store(tmp_path: Path, screen_store: Path) -> Path:
    path = tmp_path / "cands.h5"
    shutil.copyfile(screen_store, path)
    return path


def test_the_chosen_rows_keep_their_index_and_their_full_screen_values(
        store: Path, small_model: dict[str, Any], reference_predictions: Path,
        tmp_path: Path) -> None:
    reference = read_predictions(reference_predictions)
    values = reference["predictions"]["heat_ref"]
    ok = np.flatnonzero(np.isfinite(values))
    best = np.sort(ok[np.lexsort((ok, values[ok]))[:40]])
    out = tmp_path / "rescored.h5"
    result = run_inprocess(store, small_model["onnx"], out, chunk_size=16,
                           from_predictions=reference_predictions, from_top=40, top=5)
    assert result.outcome == "merged" and result.structures == 40
    got, full = _read(out), _read(reference_predictions)
    np.testing.assert_array_equal(got["index"], best)  # ascending store rows
    for key in ("ids", "status", "flags", "formula"):
        np.testing.assert_array_equal(got[key], full[key][best], err_msg=key)
    np.testing.assert_allclose(got["heat_ref"], full["heat_ref"][best], rtol=0,
                               atol=1e-5 * small_model["std"] + 1e-6)
    assert read_predictions(out)["ids"] == [reference["ids"][k] for k in best]
    # the same command again: complete, nothing screened
    again = run_inprocess(store, small_model["onnx"], out, chunk_size=16,
                          from_predictions=reference_predictions, from_top=40, top=5)
    assert again.outcome == "already-merged"
    # another choice is another run: refused unless the output is replaced
    with pytest.raises(DeepergatError, match=r"belongs to another run"):
        run_inprocess(store, small_model["onnx"], out, chunk_size=16,
                      from_predictions=reference_predictions, from_top=10)


def test_a_where_chooses_rows_and_shards_merge_to_one_file(
        store: Path, small_model: dict[str, Any], reference_predictions: Path,
        tmp_path: Path) -> None:
    reference = read_predictions(reference_predictions)
    values = reference["predictions"]["heat_ref"]
    cut = float(np.nanmedian(values))
    with np.errstate(invalid="ignore"):
        want = np.flatnonzero((values < cut) & (reference["flags"] == 0))
    where = f"heat_ref < {cut!r} and flags == 0"
    single = tmp_path / "one.h5"
    run_inprocess(store, small_model["onnx"], single, chunk_size=16,
                  from_predictions=reference_predictions, from_where=where)
    np.testing.assert_array_equal(_read(single)["index"], want)
    sharded = tmp_path / "two.h5"
    first = run_inprocess(store, small_model["onnx"], sharded, chunk_size=16, shard="0/2",
                          from_predictions=reference_predictions, from_where=where)
    assert first.outcome == "shard-done"
    second = run_inprocess(store, small_model["onnx"], sharded, chunk_size=16, shard="1/2",
                           from_predictions=reference_predictions, from_where=where)
    assert second.outcome == "merged"
    a, b = _read(single), _read(sharded)
    for key in ("index", "ids", "status", "flags", "formula"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    np.testing.assert_allclose(a["heat_ref"], b["heat_ref"], rtol=0,
                               atol=1e-5 * small_model["std"] + 1e-6)


def test_choices_that_cannot_be_made_are_one_line(
        store: Path, small_model: dict[str, Any], reference_predictions: Path,
        tmp_path: Path) -> None:
    from deepergat.io.store import StructureBatch, write_store

    other = tmp_path / "other.h5"
    write_store(other, StructureBatch.from_structures([{
        "id": "x", "lattice": np.eye(3) * 4, "atomic_numbers": [11, 17],
        "positions": [[0, 0, 0], [2, 2, 2]]}]))
    out = tmp_path / "o.h5"
    for options, message in [
        ({"from_predictions": reference_predictions}, r"give from_top N and/or from_where"),
        ({"from_top": 5}, r"give from_predictions PRED\.h5"),
        ({"from_predictions": reference_predictions, "from_top": 0}, r"from_top must be"),
        ({"from_predictions": store, "from_top": 3}, r"not a deepergat predictions file"),
        ({"from_predictions": reference_predictions, "from_where": "heat_ref < -1e9"},
         r"choose no row"),
    ]:
        with pytest.raises(DeepergatError, match=message):
            run_inprocess(store, small_model["onnx"], out, **options)
    with pytest.raises(DeepergatError, match=r"it screened another store"):
        run_inprocess(other, small_model["onnx"], out, from_predictions=reference_predictions,
                      from_top=3)
    assert not out.exists()


def test_the_default_output_is_beside_the_earlier_screen(tmp_path: Path) -> None:
    opts = ScreenOptions.create(tmp_path / "c.h5", from_predictions=tmp_path / "c.predictions.h5",
                                from_top=10)
    assert opts.files.output_path == tmp_path / "c.predictions.rescored.h5"
    assert ScreenOptions.create(tmp_path / "c.h5").files.output_path == (
        tmp_path / "c.predictions.h5")
