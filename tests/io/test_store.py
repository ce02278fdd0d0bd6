"""The HDF5 structure store: round trip, slices and chunks, digest, validation errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from structure_helpers import random_structures

from deepergat.errors import DeepergatError
from deepergat.io.store import STORE_FORMAT, STORE_VERSION, Store, StoreWriter, StructureBatch


def _append(w: StoreWriter, b: StructureBatch) -> None:
    w.append(
        ids=b.ids,
        n_atoms=b.n_atoms,
        lattice=b.lattice,
        pbc=b.pbc,
        atomic_numbers=b.atomic_numbers,
        positions=b.positions,
        targets=b.targets,
    )


def _write(path: Path, parts: list[list[dict]], units: dict[str, str] | None = None) -> str:
    names = list(parts[0][0]["targets"]) if parts and parts[0] else []
    units = units or {}
    with StoreWriter(path, targets={n: units.get(n, "") for n in names}) as w:
        for p in parts:
            _append(w, StructureBatch.from_structures(p))
    return w.close()


def _assert_batch_equal(got: StructureBatch, want: StructureBatch) -> None:
    assert got.ids == want.ids
    np.testing.assert_array_equal(got.n_atoms, want.n_atoms)
    np.testing.assert_array_equal(got.offset, want.offset)
    np.testing.assert_array_equal(got.lattice, want.lattice)
    np.testing.assert_array_equal(got.pbc, want.pbc)
    np.testing.assert_array_equal(got.atomic_numbers, want.atomic_numbers)
    np.testing.assert_array_equal(got.positions, want.positions)
    assert set(got.targets) == set(want.targets)
    for k in want.targets:
        np.testing.assert_array_equal(got.targets[k], want.targets[k])


@pytest.fixture
def two_part_store(tmp_path: Path) -> tuple[Path, list[dict], str]:
    a = random_structures(5, seed=1, targets=("energy", "gap"))
    b = random_structures(4, seed=2, targets=("energy", "gap"))
    path = tmp_path / "s.h5"
    digest = _write(path, [a, b], units={"energy": "eV/atom", "gap": "eV"})
    return path, a + b, digest


def test_round_trip_two_appends(two_part_store: tuple[Path, list[dict], str]) -> None:
    path, structures, digest = two_part_store
    want = StructureBatch.from_structures(structures)
    with Store(path) as s:
        assert len(s) == 9
        assert s.n_atoms_total == int(want.n_atoms.sum())
        assert s.ids() == [d["id"] for d in structures]
        assert s.targets == {"energy": "eV/atom", "gap": "eV"}
        assert s.content_digest == digest
        assert s.created_by.startswith("deepergat ")
        np.testing.assert_array_equal(s.target("energy"), want.targets["energy"])
        _assert_batch_equal(s.read(0, 9), want)
        # [a, b) across the boundary between the two appends
        got = s.read(3, 7)
        np.testing.assert_array_equal(got.index, np.arange(3, 7))
        _assert_batch_equal(got, want.select(np.arange(3, 7)))
        assert len(s.read(7, 7)) == 0
        chunks = list(s.iter_chunks(4))
        assert [len(c) for c in chunks] == [4, 4, 1]
        for k, c in enumerate(chunks):
            _assert_batch_equal(c, want.select(np.arange(4 * k, min(4 * k + 4, 9))))
        assert [len(c) for c in s.iter_chunks(3, start=2, stop=8)] == [3, 3]
        with pytest.raises(DeepergatError, match="no target 'nope'"):
            s.target("nope")
    with h5py.File(path) as f:
        assert f.attrs["format"] == STORE_FORMAT
        assert int(f.attrs["version"]) == STORE_VERSION
        assert f["atomic_numbers"].dtype == np.uint8
        assert f["n_atoms"].dtype == np.int32
        np.testing.assert_array_equal(f["atom_offset"][:], want.offset)


def test_digest_stable_and_sensitive(tmp_path: Path) -> None:
    data = random_structures(7, seed=3, targets=("y",))
    d_two = _write(tmp_path / "two.h5", [data[:3], data[3:]])
    d_one = _write(tmp_path / "one.h5", [data])
    d_again = _write(tmp_path / "again.h5", [data])
    assert d_two == d_one == d_again
    assert len(d_one) == 64

    def changed(edit: Callable[[list[dict]], None]) -> str:
        copy = [dict(s, targets=dict(s["targets"])) for s in data]
        edit(copy)
        return _write(tmp_path / "x.h5", [copy])

    def move(c: list[dict]) -> None:
        c[2]["positions"] = c[2]["positions"] + 1e-9

    def rename(c: list[dict]) -> None:
        c[0]["id"] = "other"

    def relabel(c: list[dict]) -> None:
        c[5]["targets"]["y"] += 1.0

    def unperiodic(c: list[dict]) -> None:
        c[1]["pbc"] = np.array([False, False, False])

    def species(c: list[dict]) -> None:
        c[4]["atomic_numbers"] = c[4]["atomic_numbers"] + 1

    digests = {changed(f) for f in (move, rename, relabel, unperiodic, species)}
    assert d_one not in digests
    assert len(digests) == 5


def test_units_default_empty_and_nan_targets(tmp_path: Path) -> None:
    data = random_structures(3, seed=4, targets=("y",))
    data[1]["targets"]["y"] = float("nan")
    _write(tmp_path / "s.h5", [data])
    with Store(tmp_path / "s.h5") as s:
        assert s.targets == {"y": ""}
        y = s.target("y")
        assert np.isnan(y[1]) and not np.isnan(y[[0, 2]]).any()


def test_writer_abort_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with pytest.raises(RuntimeError), StoreWriter(path) as w:
        _append(w, StructureBatch.from_structures(random_structures(2)))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_checks_targets(tmp_path: Path) -> None:
    with StoreWriter(tmp_path / "s.h5", targets={"y": "eV"}) as w:
        b = StructureBatch.from_structures(random_structures(2))
        with pytest.raises(DeepergatError, match="targets"):
            _append(w, b)
        w.abort()


# ---- validation -------------------------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    with h5py.File(path, "a") as f:
        if how == "format":
            f.attrs["format"] = "something-else"
        elif how == "predictions":
            f.attrs["format"] = "deepergat-predictions"
        elif how == "version":
            f.attrs["version"] = 99
        elif how == "missing":
            del f["positions"]
        elif how == "lengths":
            f["lattice"].resize(f["lattice"].shape[0] - 1, axis=0)
        elif how == "atoms":
            f["positions"].resize(f["positions"].shape[0] + 2, axis=0)
        elif how == "offsets":
            off = f["atom_offset"][:]
            off[1] += 1
            f["atom_offset"][:] = off
        elif how == "target":
            f["targets/energy"].resize(3, axis=0)
        elif how == "targets dataset":
            del f["targets"]
            f["targets"] = np.zeros(3)
        elif how == "ids group":
            del f["ids"]
            f.create_group("ids")
        elif how == "negative":  # one negative count, the same sum
            n = f["n_atoms"][:]
            n[1] += 2 * n[0]
            n[0] = -n[0]
            f["n_atoms"][:] = n


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("format", "not a deepergat structure store"),
        ("predictions", "a predictions file"),
        ("version", "version 99 is not supported"),
        ("missing", "'positions' is missing"),
        ("lengths", "'lattice' has 8 rows but n_structures is 9"),
        ("atoms", "'positions' has"),
        ("offsets", "atom_offset"),
        ("target", "target 'energy'"),
        ("targets dataset", "'targets' is a dataset, not a group"),
        ("ids group", "'ids' is a group, not a dataset"),
        ("negative", r"n_atoms is negative \(row 0"),
    ],
)
def test_invalid_store(
    two_part_store: tuple[Path, list[dict], str], how: str, message: str
) -> None:
    path = two_part_store[0]
    _damage(path, how)
    with pytest.raises(DeepergatError, match=message) as e:
        Store(path)
    assert str(path) in str(e.value)


def test_truncated_and_foreign_files(two_part_store: tuple[Path, list[dict], str]) -> None:
    path = two_part_store[0]
    cut = path.with_name("cut.h5")
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    text = path.with_name("text.h5")
    text.write_text("id,value\n1,2\n")
    empty = path.with_name("empty.h5")
    empty.write_bytes(b"")
    for bad in (cut, text, empty, path.with_name("missing.h5"), path.parent):
        with pytest.raises(DeepergatError) as e:
            Store(bad)
        assert str(bad) in str(e.value)


def test_a_damaged_data_block_is_one_line_everywhere(
    two_part_store: tuple[Path, list[dict], str], tmp_path: Path
) -> None:
    """16 bytes overwritten inside a compressed chunk of positions: readers name the store and
    the rows; `info` (which re-hashes every array) says so too."""
    from click.testing import CliRunner

    from deepergat.cli import main

    path = two_part_store[0]
    with h5py.File(path, "r") as f:
        chunk = f["positions"].id.get_chunk_info(0)
    data = bytearray(path.read_bytes())
    data[chunk.byte_offset + 8 : chunk.byte_offset + 24] = b"\xff" * 16
    path.write_bytes(bytes(data))
    with Store(path) as store, pytest.raises(DeepergatError, match=r"cannot read positions"):
        store.read(0, len(store))
    r = CliRunner().invoke(main, ["info", str(path)])
    assert r.exit_code == 2 and "damaged structure store" in r.output
    assert len(r.output.strip().splitlines()) == 1
