"""The predictions file: schema, identity of an existing file, description, top-K CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

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
    take_rows,
    write_top_csv,
)


def write(path: Path, values: list[float], *, embeddings: bool = False,
          std: list[float] | None = None) -> None:
    m = len(values)
    v = np.array(values, dtype=np.float32)
    sd = None if std is None else np.array(std, dtype=np.float32)
    status = np.where(np.isnan(v), 7, 0).astype(np.uint8)
    flags = np.zeros(m, np.uint8)
    flags[::3] = 1
    with PredictionsWriter(
        path, n_structures=m, targets=[{"name": "gap", "units": "eV"}, {"name": "e", "units": ""}],
        embedding_dim=4 if embeddings else None,
        attrs={"model": "m.onnx", "model_sha256": "ab" * 32, "model_metadata": "{}",
               "input": "in.h5", "input_digest": "cd" * 32,
               "screen_settings": json.dumps({"max_atoms": 10})},
        spread=sd is not None,
    ) as w:
        half = m // 2
        for a, b in ((half, m), (0, half)):  # any order of row ranges
            w.write(a, Rows(index=np.arange(a, b) + 100, ids=[f"id{k}" for k in range(a, b)],
                            status=status[a:b], flags=flags[a:b],
                            predictions=np.stack([v[a:b], -v[a:b]], 1),
                            embeddings=np.ones((b - a, 4), np.float32) if embeddings else None,
                            std=None if sd is None else np.stack([sd[a:b], 2 * sd[a:b]], 1),
                            formula=[["SrTiO3", "NaCl", "", "C"][k % 4] for k in range(a, b)],
                            n_elements=np.array([[3, 2, 0, 1][k % 4] for k in range(a, b)],
                                                np.uint8)))


def top_csv(path: Path, out: Path, k: int, **ranking: Any) -> int:
    """The screen's top-K CSV of the raw ranking (`short_list` without grouping)."""
    from deepergat.screening.shortlist import ListSettings, short_list

    order = ranking.pop("order", "asc")
    listed = short_list(path, ListSettings(top=k, order=order, group=False, **ranking))
    return write_top_csv(path, out, listed.rows)


def test_schema(tmp_path: Path) -> None:
    path = tmp_path / "p.h5"
    write(path, [1.0, np.nan, 3.0, 0.5], embeddings=True)
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "deepergat-predictions" and f.attrs["version"] == 2
        for key in ("model", "model_sha256", "model_metadata", "input", "input_digest",
                    "status_codes", "created_by"):
            assert key in f.attrs, key
        assert json.loads(f.attrs["status_codes"]) == {str(k): v for k, v in STATUS_CODES.items()}
        assert f["index"].dtype == np.int64 and f["index"][:].tolist() == [100, 101, 102, 103]
        assert [s.decode() for s in f["ids"][:]] == ["id0", "id1", "id2", "id3"]
        assert f["predictions/gap"].dtype == np.float32
        assert f["predictions/gap"].attrs["units"] == "eV"
        assert f["status"].dtype == np.uint8 and f["flags"].dtype == np.uint8
        assert [s.decode() for s in f["formula"][:]] == ["SrTiO3", "NaCl", "", "C"]
        assert f["n_elements"].dtype == np.uint8 and f["n_elements"][:].tolist() == [3, 2, 0, 1]
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
    n = top_csv(path, out, 10, order=order)  # type: ignore[arg-type]
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert n == 5 and len(rows) == 5
    assert list(rows[0]) == ["rank", "index", "id", "formula", "gap", "e", "flags",
                             "group_size", "known"]
    flags = {r["id"]: r["flags"] for r in rows}
    assert flags["id3"] == flags["id6"] == "1" and flags["id2"] == "0"
    got = [float(r["gap"]) for r in rows]
    assert got == sorted(got, reverse=order == "desc")
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4", "5"]
    if order == "asc":  # ties: the lower index first
        assert [r["id"] for r in rows[:2]] == ["id2", "id5"]
        assert rows[0]["index"] == "102"
    k2 = top_csv(path, out, 2, order=order)  # type: ignore[arg-type]
    assert k2 == 2


def test_top_csv_all_nan(tmp_path: Path) -> None:
    path = tmp_path / "p.h5"
    write(path, [np.nan, np.nan])
    out = tmp_path / "t.csv"
    assert top_csv(path, out, 3) == 0
    assert out.read_text().strip() == "rank,index,id,formula,gap,e,flags,group_size,known"


def test_std_group_and_ranking_by_a_confidence_bound(tmp_path: Path) -> None:
    path = tmp_path / "p.h5"
    #         id0  id1     id2  id3  id4
    values = [1.0, np.nan, 1.2, 0.9, 3.0]
    std = [0.05, np.nan, 0.01, 0.3, 0.1]
    write(path, values, std=std)
    with h5py.File(path, "r") as f:
        assert f["std/gap"].dtype == np.float32 and f["std/gap"].attrs["units"] == "eV"
        np.testing.assert_array_equal(f["std/gap"][:], np.array(std, np.float32))
        np.testing.assert_array_equal(f["std/e"][:], 2 * np.array(std, np.float32))
    out = tmp_path / "t.csv"

    def ranked(**kw: object) -> list[str]:
        top_csv(path, out, 4, **kw)  # type: ignore[arg-type]
        with open(out, newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert list(rows[0]) == ["rank", "index", "id", "formula", "gap", "gap_std", "e",
                                 "e_std", "flags", "group_size", "known"]
        return [r["id"] for r in rows]

    assert ranked() == ["id3", "id0", "id2", "id4"]  # by the mean
    # mean + 2σ: 1.1, 1.22, 1.5, 3.2 — the confident 1.2 beats the uncertain 0.9
    assert ranked(rank_by="upper", rank_k=2.0) == ["id0", "id2", "id3", "id4"]
    # mean - 2σ, highest first: 2.8, 1.18, 0.9, 0.3
    assert ranked(rank_by="lower", rank_k=2.0, order="desc") == ["id4", "id2", "id0", "id3"]
    with pytest.raises(DeepergatError, match=r"^rank_k must be"):
        top_csv(path, out, 2, rank_by="upper", rank_k=-1.0)
    plain = tmp_path / "plain.h5"
    write(plain, values)
    with pytest.raises(DeepergatError, match=r"has no std .*not an ensemble"):
        top_csv(plain, out, 2, rank_by="lower")
    d = describe_predictions(path)
    assert d["targets"]["gap"]["std_stats"]["max"] == pytest.approx(0.3)
    assert "ensemble spread" in "\n".join(format_predictions(d, str(path)))


def test_top_csv_formulas_come_from_the_file_itself(tmp_path: Path) -> None:
    """A version-2 file holds each row's formula: the top CSV never reads them from a store
    that may have been re-packed since (here: none at the recorded path)."""
    path = tmp_path / "p.h5"
    write(path, [2.0, 1.0, 0.5, 3.0])
    out = tmp_path / "t.csv"
    top_csv(path, out, 3, order="desc")
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["id"], r["formula"]) for r in rows] == [
        ("id3", "C"), ("id0", "SrTiO3"), ("id1", "NaCl")]


def _store(path: Path, compositions: list[list[int]]) -> str:
    from deepergat.io.store import Store, StructureBatch, write_store

    cells = [{"id": f"s{k}", "lattice": np.eye(3) * 4.0, "pbc": (True, True, True),
              "atomic_numbers": z, "positions": np.random.default_rng(k).random((len(z), 3)) * 4}
             for k, z in enumerate(compositions)]
    write_store(path, StructureBatch.from_structures(cells))
    with Store(path) as s:
        return s.content_digest


def test_version_1_files_read_formulas_only_from_the_store_they_screened(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before formulas were stored, they came from the input store; now only while its content
    digest is the one the file records — a store re-packed with other structures under the
    same path gives no formula (and says so), never another compound's."""
    store = tmp_path / "in.h5"
    digest = _store(store, [[38, 22, 8, 8, 8], [8, 8, 22, 22, 8, 8, 38, 38, 8, 8]])
    path = tmp_path / "p.h5"
    write(path, [2.0, 1.0])
    with h5py.File(path, "a") as f:  # what version 1 wrote
        del f["formula"], f["n_elements"]
        f.attrs["version"] = 1
        f["index"][:] = [0, 1]
        f.attrs["input"] = str(store)
        f.attrs["input_digest"] = digest
    out = tmp_path / "t.csv"
    top_csv(path, out, 2)
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["id"], r["formula"]) for r in rows] == [("id1", "SrTiO3"), ("id0", "SrTiO3")]
    got = take_rows(path, np.array([0, 1]))
    assert got["formula"] == ["SrTiO3", "SrTiO3"] and got["n_elements"].tolist() == [3, 3]

    store.unlink()
    _store(store, [[11, 17], [6]])  # re-packed: same path and rows, other structures
    with caplog.at_level("WARNING"):
        top_csv(path, out, 2)
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["id"], r["formula"]) for r in rows] == [("id1", ""), ("id0", "")]
    assert "formulas unavailable" in caplog.text and "not the one screened" in caplog.text


# ---------------------------------------------------------------------------- a full disk (GAP 1)


def _rows(a: int, b: int, id_len: int = 8) -> Rows:
    m = b - a
    return Rows(index=np.arange(a, b), ids=[f"{k:0{id_len}d}" for k in range(a, b)],
                status=np.zeros(m, np.uint8), flags=np.zeros(m, np.uint8),
                predictions=np.ones((m, 1), np.float32),
                embeddings=np.ones((m, 8), np.float32), formula=["SrTiO3"] * m,
                n_elements=np.full(m, 3, np.uint8))


def _writer(path: Path, m: int) -> PredictionsWriter:
    return PredictionsWriter(path, n_structures=m, targets=[{"name": "t", "units": "eV"}],
                             embedding_dim=8, attrs={"model": "m"})


def _fallocate_fails(monkeypatch: pytest.MonkeyPatch, err: int, after: int = 0) -> list[int]:
    """os.posix_fallocate succeeds ``after`` times, then fails with ``err``; returns the
    lengths asked."""
    import errno as errno_mod
    import os

    real = os.posix_fallocate
    asked: list[int] = []

    def fake(fd: int, offset: int, length: int) -> None:
        asked.append(length)
        if len(asked) > after:
            raise OSError(err, os.strerror(err) if err != errno_mod.EDQUOT else "Disk quota "
                          "exceeded")
        real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", fake)
    return asked


def test_a_full_disk_is_met_before_hdf5_writes_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    asked = _fallocate_fails(monkeypatch, errno.ENOSPC)
    from deepergat.screening.predictions import NoSpaceError

    with pytest.raises(NoSpaceError, match=r"no space left on .* for p\.h5 \(needs ~[\d.]+ MB, "
                                           r"[\d.]+ MB free\); free space") as err:
        _writer(tmp_path / "p.h5", 100_000)
    assert asked and err.value.needed >= 100_000 * (8 + 2 + 4 + 32 + 32)
    assert list(tmp_path.iterdir()) == []  # no temporary file left


def test_a_disk_that_fills_while_rows_arrive_is_one_error_and_nothing_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ids far longer than first assumed make the writer reserve more; that reservation fails
    cleanly, before HDF5 is asked to write past the space it holds."""
    import errno

    from deepergat.screening.predictions import NoSpaceError

    _fallocate_fails(monkeypatch, errno.EDQUOT, after=1)
    with (pytest.raises(NoSpaceError, match=r"quota exceeded on .* \(needs ~"),
          _writer(tmp_path / "p.h5", 20_000) as w):
        for a in range(0, 20_000, 1000):
            w.write(a, _rows(a, a + 1000, id_len=400))
    assert list(tmp_path.iterdir()) == []


def test_the_reservation_is_given_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file is written inside the space it reserved and ends at HDF5's own end."""
    import os

    real = os.posix_fallocate
    asked: list[int] = []
    monkeypatch.setattr(os, "posix_fallocate",
                        lambda fd, o, n: (asked.append(n), real(fd, o, n))[1])
    path = tmp_path / "p.h5"
    with _writer(path, 50_000) as w:
        for a in range(0, 50_000, 999):
            w.write(a, _rows(a, min(a + 999, 50_000), id_len=60))  # longer than first assumed
    assert len(asked) >= 2  # it grew
    assert path.stat().st_size <= asked[-1]
    with h5py.File(path, "r") as f:
        assert f["index"][-1] == 49_999 and f["ids"][7].decode() == f"{7:060d}"
    assert list(tmp_path.iterdir()) == [path]


def test_a_file_system_that_cannot_reserve_still_gets_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import errno

    _fallocate_fails(monkeypatch, errno.EOPNOTSUPP)
    path = tmp_path / "p.h5"
    with _writer(path, 3000) as w:
        w.write(0, _rows(0, 3000))
    assert "cannot reserve space" in caplog.text
    with h5py.File(path, "r") as f:
        assert f["index"].shape == (3000,)
