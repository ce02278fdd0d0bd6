"""The predictions file: schema, identity of an existing file, description, top-K CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from deepergat.errors import STATUS_CODES, DeepergatError
from deepergat.screening.predictions import (
    PredictionsWriter,
    Rows,
    describe_predictions,
    format_predictions,
    read_identity,
    write_top_csv,
)


def write(path: Path, values: list[float], *, embeddings: bool = False) -> None:
    m = len(values)
    v = np.array(values, dtype=np.float32)
    status = np.where(np.isnan(v), 7, 0).astype(np.uint8)
    flags = np.zeros(m, np.uint8)
    flags[::3] = 1
    with PredictionsWriter(
        path, n_structures=m, targets=[{"name": "gap", "units": "eV"}, {"name": "e", "units": ""}],
        embedding_dim=4 if embeddings else None,
        attrs={"model": "m.onnx", "model_sha256": "ab" * 32, "model_metadata": "{}",
               "input": "in.h5", "input_digest": "cd" * 32,
               "screen_settings": json.dumps({"max_atoms": 10})},
    ) as w:
        half = m // 2
        for a, b in ((half, m), (0, half)):  # any order of row ranges
            w.write(a, Rows(index=np.arange(a, b) + 100, ids=[f"id{k}" for k in range(a, b)],
                            status=status[a:b], flags=flags[a:b],
                            predictions=np.stack([v[a:b], -v[a:b]], 1),
                            embeddings=np.ones((b - a, 4), np.float32) if embeddings else None))


def test_schema(tmp_path: Path) -> None:
    path = tmp_path / "p.h5"
    write(path, [1.0, np.nan, 3.0, 0.5], embeddings=True)
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "deepergat-predictions" and f.attrs["version"] == 1
        for key in ("model", "model_sha256", "model_metadata", "input", "input_digest",
                    "status_codes", "created_by"):
            assert key in f.attrs, key
        assert json.loads(f.attrs["status_codes"]) == {str(k): v for k, v in STATUS_CODES.items()}
        assert f["index"].dtype == np.int64 and f["index"][:].tolist() == [100, 101, 102, 103]
        assert [s.decode() for s in f["ids"][:]] == ["id0", "id1", "id2", "id3"]
        assert f["predictions/gap"].dtype == np.float32
        assert f["predictions/gap"].attrs["units"] == "eV"
        assert f["status"].dtype == np.uint8 and f["flags"].dtype == np.uint8
        assert f["embeddings"].shape == (4, 4) and f["embeddings"].dtype == np.float32
    assert not list(tmp_path.glob(".*tmp*"))


def test_identity_and_refusal_to_overwrite_other_files(tmp_path: Path) -> None:
    assert read_identity(tmp_path / "absent.h5") is None
    path = tmp_path / "p.h5"
    write(path, [1.0, 2.0])
    ident = read_identity(path)
    assert ident == {"input_digest": "cd" * 32, "model_sha256": "ab" * 32, "n_structures": 2,
                     "screen_settings": {"max_atoms": 10}}
    other = tmp_path / "store.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "deepergat-structures"
    with pytest.raises(DeepergatError, match="not a deepergat predictions file"):
        read_identity(other)
    junk = tmp_path / "junk.h5"
    junk.write_text("hello")
    with pytest.raises(DeepergatError, match="not a readable HDF5"):
        read_identity(junk)


def test_describe(tmp_path: Path) -> None:
    path = tmp_path / "p.h5"
    write(path, [1.0, np.nan, 3.0, 0.5, 2.0])
    d = describe_predictions(path)
    assert d["n_structures"] == 5
    assert d["status"] == {0: 4, 7: 1}
    assert d["flags"] == {"unseen_element": 2}
    assert d["targets"]["gap"]["count"] == 4
    assert d["targets"]["gap"]["min"] == 0.5 and d["targets"]["gap"]["max"] == 3.0
    text = "\n".join(format_predictions(d, str(path)))
    assert "7 non-finite prediction: 1" in text and "flagged          2" in text


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_top_csv_never_ranks_nan(tmp_path: Path, order: str) -> None:
    path = tmp_path / "p.h5"
    values = [3.0, np.nan, 1.0, 2.0, np.nan, 1.0, 5.0]
    write(path, values)
    out = tmp_path / "p.top.csv"
    n = write_top_csv(path, out, 10, order=order)  # type: ignore[arg-type]
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert n == 5 and len(rows) == 5
    assert list(rows[0]) == ["rank", "index", "id", "gap", "e"]
    got = [float(r["gap"]) for r in rows]
    assert got == sorted(got, reverse=order == "desc")
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4", "5"]
    if order == "asc":  # ties: the lower index first
        assert [r["id"] for r in rows[:2]] == ["id2", "id5"]
        assert rows[0]["index"] == "102"
    k2 = write_top_csv(path, out, 2, order=order)  # type: ignore[arg-type]
    assert k2 == 2


def test_top_csv_all_nan(tmp_path: Path) -> None:
    path = tmp_path / "p.h5"
    write(path, [np.nan, np.nan])
    out = tmp_path / "t.csv"
    assert write_top_csv(path, out, 3) == 0
    assert out.read_text().strip() == "rank,index,id,gap,e"
