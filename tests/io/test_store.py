"""The HDF5 structure store: round trip, slices and chunks, digest, validation errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from structure_helpers import random_structures

from deepergat.errors import DeepergatError
from deepergat.io.store import (
    STORE_FORMAT,
    STORE_VERSION,
    Store,
    StoreWriter,
    StructureBatch,
    write_store,
    write_subset,
)


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


# ---- hostile stores: what a file declares is checked against what it holds ------------------

#: Rows a hostile store declares: reading them whole would need terabytes.
_HUGE = 10**12


def _recreate(f: h5py.File, name: str, data: np.ndarray, **kw: object) -> None:
    """Replace a dataset by ``data`` (another dtype or shape), keeping its name."""
    del f[name]
    f.create_dataset(name, data=data, **kw)


def _bomb(f: h5py.File, name: str, rows: int, shape: tuple[int, ...], dtype: type) -> None:
    """Replace a dataset by ``rows`` rows of zeros whose every chunk is written, compressed
    (scale-offset, then gzip) to under 100 bytes: a decompression bomb that HDF5 reads."""
    del f[name]
    chunk = (1 << 19, *shape)
    options = {"chunks": chunk, "dtype": dtype, "scaleoffset": 0 if dtype != np.float64 else 2,
               "compression": "gzip", "compression_opts": 9}
    one = f.create_dataset("one", data=np.zeros(chunk, dtype), **options)
    mask, payload = one.id.read_direct_chunk((0,) * len(chunk))
    del f["one"]
    ds = f.create_dataset(name, shape=(rows, *shape), **options)
    for k in range(0, rows, chunk[0]):
        ds.id.write_direct_chunk((k,) + (0,) * len(shape), payload, mask)


def _hostile(path: Path, how: str) -> None:
    """Edit a valid store into one member of the hostile-store class."""
    # large attributes need HDF5's newer object headers
    libver = "latest" if how in ("huge units", "count attribute array") else None
    with h5py.File(path, "a", libver=libver) as f:
        m, n = f["n_atoms"].shape[0], f["positions"].shape[0]
        if how == "rows declared":  # 10^12 structures: the datasets grow, no data is written
            for name in ("ids", "n_atoms", "atom_offset", "lattice", "pbc", "targets/energy",
                         "targets/gap"):
                f[name].resize(_HUGE, axis=0)
            f.attrs["n_structures"] = _HUGE
        elif how == "atoms declared":  # the last structure claims 10^12 atoms
            for name in ("atomic_numbers", "positions"):
                f[name].resize(_HUGE, axis=0)
            counts = f["n_atoms"][:].astype(np.int64)
            counts[-1] += _HUGE - n
            _recreate(f, "n_atoms", counts)
            f.attrs["n_atoms_total"] = _HUGE
        elif how == "string lattice":
            _recreate(f, "lattice", np.full((m, 3, 3), "1.0", dtype="S8"))
        elif how == "float counts":
            _recreate(f, "n_atoms", f["n_atoms"][:].astype(np.float64))
        elif how == "string positions":
            _recreate(f, "positions", f["positions"][:].astype("S24"))
        elif how == "numeric ids":
            _recreate(f, "ids", np.arange(m))
        elif how == "compound pbc":
            _recreate(f, "pbc", np.zeros((m, 3), dtype=[("a", "i4"), ("b", "f8")]))
        elif how == "array lattice":  # an HDF5 array type: [m] elements of (3, 3) each
            del f["lattice"]
            h5py.h5d.create(f.id, b"lattice", h5py.h5t.array_create(h5py.h5t.IEEE_F64LE, (3, 3)),
                            h5py.h5s.create_simple((m,)))
        elif how == "string target":
            _recreate(f, "targets/energy", np.full(m, "x", dtype="S4"))
        elif how == "2-D ids":
            _recreate(f, "ids", np.full((m, 2), "a", dtype=h5py.string_dtype()))
        elif how == "wide lattice":
            _recreate(f, "lattice", np.zeros((m, 3, 4)))
        elif how == "wrapping counts":  # four of 2^62: the sum wraps to 0 in int64
            counts = np.zeros(m, np.int64)
            counts[:4] = 2**62
            _recreate(f, "n_atoms", counts)
            with np.errstate(over="ignore"):
                _recreate(f, "atom_offset", np.cumsum(np.r_[0, counts[:-1]]))
            for name in ("atomic_numbers", "positions"):
                f[name].resize(0, axis=0)
            f.attrs["n_atoms_total"] = 0
        elif how == "count past the atoms":
            counts = f["n_atoms"][:]
            counts[0] += n
            f["n_atoms"][:] = counts
        elif how == "offset past the atoms":
            off = f["atom_offset"][:]
            off[-1] = n + 100
            f["atom_offset"][:] = off
        elif how == "count attribute text":
            f.attrs["n_structures"] = "many"
        elif how == "count attribute array":
            f.attrs["n_structures"] = np.arange(5000)
        elif how == "count attribute missing":
            del f.attrs["n_atoms_total"]
        elif how == "count attribute negative":
            f.attrs["n_structures"] = -1
        elif how == "format attribute array":
            f.attrs["format"] = np.array(["deepergat-structures"] * 1000,
                                         dtype=h5py.string_dtype())
        elif how == "huge units":
            f["targets/energy"].attrs["units"] = "eV" * 100_000
        elif how == "huge chunks":  # one row read decodes a 128 MiB chunk
            data = f["n_atoms"][:]
            del f["n_atoms"]
            f.create_dataset("n_atoms", data=data, maxshape=(None,), chunks=(1 << 25,),
                             compression="gzip")
        elif how == "bomb chunks":  # every chunk written, at 45,000 bytes decoded per byte
            rows = 1 << 24
            counts = f["n_atoms"][:].astype(np.int64)
            counts[-1] += rows - n
            _recreate(f, "n_atoms", counts)
            _bomb(f, "atomic_numbers", rows, (), np.uint8)
            _bomb(f, "positions", rows, (3,), np.float64)
            f.attrs["n_atoms_total"] = rows
        elif how == "external link":
            other = path.with_name("other.h5")
            with h5py.File(other, "w") as g:
                g["positions"] = f["positions"][:]
            del f["positions"]
            f["positions"] = h5py.ExternalLink(other.name, "positions")
        elif how == "soft link":
            f["copy"] = f["positions"][:]
            del f["positions"]
            f["positions"] = h5py.SoftLink("/copy")
        elif how == "external storage":  # raw data read from another file (any file at all)
            data = f["positions"][:]
            del f["positions"]
            raw = path.with_name("raw.bin")
            raw.write_bytes(data.tobytes())
            f.create_dataset("positions", shape=data.shape, dtype=np.float64,
                             external=[(str(raw), 0, data.nbytes)])
        elif how == "virtual dataset":
            data = f["positions"][:]
            del f["positions"]
            f["copy"] = data
            layout = h5py.VirtualLayout(shape=data.shape, dtype=np.float64)
            layout[:] = h5py.VirtualSource(f["copy"])
            f.create_virtual_dataset("positions", layout)
        else:  # pragma: no cover
            raise AssertionError(how)


HOSTILE = {
    "rows declared": "'ids' declares 1000000000000 rows",
    "atoms declared": "declares 1000000000000 rows",
    "string lattice": "'lattice' holds strings, not floating-point numbers",
    "float counts": "'n_atoms' holds float64 numbers, not integers",
    "string positions": "'positions' holds strings",
    "numeric ids": "'ids' holds int64 numbers, not strings",
    "compound pbc": "'pbc' holds a compound",
    "array lattice": r"'lattice' holds arrays of \(3, 3\) float64",
    "string target": "'targets/energy' holds strings",
    "2-D ids": r"'ids' has shape \(9, 2\), expected \[rows\]",
    "wide lattice": r"'lattice' has shape \(9, 3, 4\), expected \[rows, 3, 3\]",
    "wrapping counts": "n_atoms is larger than n_atoms_total",
    "count past the atoms": "n_atoms is larger than n_atoms_total|sums past",
    "offset past the atoms": r"atom_offset is not the running sum of n_atoms \(row 8",
    "count attribute text": "'n_structures' is 'many', not an integer",
    "count attribute array": "'n_structures' holds an array",
    "count attribute missing": "'n_atoms_total' is missing",
    "count attribute negative": "'n_structures' is negative",
    "format attribute array": "'format' holds an array",
    "huge units": "attribute 'units' of /targets/energy is 200000 characters",
    "huge chunks": "'n_atoms' is stored in chunks of 128.0 MiB",
    "bomb chunks": "'atomic_numbers' declares 16777216 rows",
    "external link": "'positions' is an external link",
    "soft link": "'positions' is a soft link",
    "external storage": "'positions' keeps its data in external files",
    "virtual dataset": "'positions' is a virtual dataset",
}


@pytest.mark.parametrize("how", list(HOSTILE))
def test_a_hostile_store_is_refused_on_open_before_reading_what_it_declares(
    two_part_store: tuple[Path, list[dict], str], how: str
) -> None:
    """Each member of the class: one `DeepergatError` naming the store and the item, raised
    before anything sized by a declaration is read (no 10^12-row array, no chunk bigger than
    the bound, no other file)."""
    path = two_part_store[0]
    _hostile(path, how)
    with pytest.raises(DeepergatError, match=HOSTILE[how]) as e:
        Store(path)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and len(message) < 500


def test_a_store_of_another_writer_with_other_dtypes_still_reads(tmp_path: Path) -> None:
    """The checks refuse what cannot be a store, not what another writer may choose: float32
    geometry, int64 counts, uint8 flags for pbc, fixed-length ids, no compression."""
    structures = random_structures(4, seed=3)
    b = StructureBatch.from_structures(structures)
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["ids"] = np.array([s.encode() for s in b.ids], dtype="S16")
        f["n_atoms"] = b.n_atoms.astype(np.int64)
        f["atom_offset"] = b.offset
        f["lattice"] = b.lattice.astype(np.float32)
        f["pbc"] = b.pbc.astype(np.uint8)
        f["atomic_numbers"] = b.atomic_numbers.astype(np.int16)
        f["positions"] = b.positions.astype(np.float32)
        f.attrs.update({"format": STORE_FORMAT, "version": STORE_VERSION,
                        "n_structures": len(b), "n_atoms_total": len(b.atomic_numbers)})
    with Store(path) as store:
        got = store.read(0, len(store))
    assert got.ids == b.ids and got.lattice.dtype == np.float64
    np.testing.assert_allclose(got.positions, b.positions, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(got.pbc, b.pbc)


def test_read_rows_gives_scattered_rows_in_the_order_asked(tmp_path: Path) -> None:
    """A funnel reads the rows an earlier screen chose: any order, any spacing, each structure
    exactly as `read` gives it."""
    rng = np.random.default_rng(5)
    cells = [{"id": f"s{k}", "lattice": np.eye(3) * (3 + k / 100),
              "atomic_numbers": rng.integers(1, 90, int(rng.integers(1, 7))),
              "positions": None} for k in range(700)]
    for c in cells:
        c["positions"] = rng.random((len(c["atomic_numbers"]), 3)) * 3
    path = tmp_path / "s.h5"
    write_store(path, StructureBatch.from_structures(cells))
    rows = np.array([699, 3, 4, 5, 300, 0, 698, 301, 5])
    with Store(path) as s:
        got = s.read_rows(rows, gap=2)
        assert got.index.tolist() == rows.tolist()
        for k, r in enumerate(rows.tolist()):
            one = s.read(r, r + 1)
            a, n = int(got.offset[k]), int(got.n_atoms[k])
            assert got.ids[k] == one.ids[0]
            np.testing.assert_array_equal(got.atomic_numbers[a : a + n], one.atomic_numbers)
            np.testing.assert_array_equal(got.positions[a : a + n], one.positions)
            np.testing.assert_array_equal(got.lattice[k], one.lattice[0])
        assert len(s.read_rows(np.zeros(0, np.int64))) == 0
        with pytest.raises(DeepergatError, match="rows outside"):
            s.read_rows(np.array([700]))


def test_write_subset_keeps_structures_targets_and_units(
    two_part_store: tuple[Path, list[dict], str],
) -> None:
    """A run's held-out split as a store: the chosen structures, each exactly as the source
    holds it, in the source's order whatever order the ids come in, units kept."""
    path, structures, _ = two_part_store
    out = path.with_name("sub.h5")
    ids = [structures[7]["id"], structures[1]["id"], structures[4]["id"]]
    n, digest = write_subset(path, out, ids)
    assert n == 3
    want = StructureBatch.from_structures([structures[1], structures[4], structures[7]])
    with Store(out) as s:
        assert s.content_digest == digest
        assert s.targets == {"energy": "eV/atom", "gap": "eV"}
        _assert_batch_equal(s.read(0, s.n_structures), want)
    with pytest.raises(DeepergatError, match="no structure with id nope"):
        write_subset(path, out, ["nope", structures[0]["id"]])
    with pytest.raises(DeepergatError, match="more than once"):
        write_subset(path, out, [structures[0]["id"]] * 2)
    with pytest.raises(DeepergatError, match="is the source store"):
        write_subset(path, path, [structures[0]["id"]])
    with Store(path) as s:  # the source is untouched by the refusals
        assert s.n_structures == len(structures)


def test_a_structure_file_given_as_a_store_says_to_pack_it(tmp_path: Path) -> None:
    cif = tmp_path / "x.cif"
    cif.write_text("data_x\n_cell_length_a 3\n")
    with pytest.raises(DeepergatError, match=r"deepergat pack .*x\.cif -o x\.h5"):
        Store(cif)
