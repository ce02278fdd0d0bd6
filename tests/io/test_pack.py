"""`deepergat.pack`: every input format against its own parser, ids, targets, bad inputs, and the
fixtures cut from public data sets in tests/data (perov5 row by row against pymatgen, the Pt
clusters, carbon24)."""

from __future__ import annotations

import csv
import json
import logging
import shutil
import tarfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structure_helpers import (
    data_file,
    disordered_structure,
    nacl_structure,
    pt_cluster,
    triclinic_structure,
)

from deepergat.errors import DeepergatError
from deepergat.io.pack import pack, parse_target_spec
from deepergat.io.store import Store, StructureBatch

pytest.importorskip("pymatgen")
pytest.importorskip("ase")

from ase import Atoms
from ase.io import read as ase_read
from ase.io import write as ase_write
from pymatgen.core import Structure


def _load(path: Path) -> tuple[StructureBatch, dict[str, str]]:
    with Store(path) as s:
        return s.read(0, len(s)), s.targets


def _pmg(text: str, fmt: str) -> Structure:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(text, fmt=fmt)


def _assert_same(got: dict[str, Any], lattice: Any, positions: Any, numbers: Any, pbc: Any) -> None:
    np.testing.assert_array_equal(got["lattice"], np.asarray(lattice, dtype=np.float64))
    np.testing.assert_array_equal(got["positions"], np.asarray(positions, dtype=np.float64))
    np.testing.assert_array_equal(got["atomic_numbers"], np.asarray(numbers))
    np.testing.assert_array_equal(got["pbc"], np.asarray(pbc, dtype=bool))


def _assert_pymatgen(got: dict[str, Any], s: Structure) -> None:
    _assert_same(got, s.lattice.matrix, s.cart_coords, s.atomic_numbers, [True] * 3)


def _cif(s: Structure) -> str:
    from pymatgen.io.cif import CifWriter

    return str(CifWriter(s))


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


# ---- single formats ---------------------------------------------------------------------------


def test_folder_of_cif_poscar_json(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = tmp_path / "in"
    d.mkdir()
    tri, nacl = triclinic_structure(), nacl_structure()
    (d / "a.cif").write_text(_cif(tri))
    (d / "POSCAR").write_text(nacl.to(fmt="poscar"))
    (d / "b.vasp").write_text(tri.to(fmt="poscar"))
    (d / "c.json").write_text(json.dumps(tri.as_dict()))
    (d / "README.md").write_text("not a structure")
    with caplog.at_level(logging.WARNING, logger="deepergat"):
        result = pack([d], tmp_path / "out.h5", workers=1)
    assert "ignored 1 entries" in caplog.text and "README.md" in caplog.text
    b, targets = _load(tmp_path / "out.h5")
    assert targets == {}
    assert b.ids == ["POSCAR", "a", "b", "c"]  # sorted file names
    assert result.n_structures == 4 and result.n_atoms == 8 + 3 + 3 + 3
    _assert_pymatgen(b.structure(0), _pmg((d / "POSCAR").read_text(), "poscar"))
    _assert_pymatgen(b.structure(1), _pmg((d / "a.cif").read_text(), "cif"))
    _assert_pymatgen(b.structure(2), _pmg((d / "b.vasp").read_text(), "poscar"))
    _assert_pymatgen(b.structure(3), tri)
    # positions are stored as given, not wrapped into the cell
    assert b.structure(3)["positions"][0] == pytest.approx(tri.cart_coords[0])
    assert tri.frac_coords[0, 0] == pytest.approx(1.25)


def test_cif_data_blocks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tri, nacl = _cif(triclinic_structure()), _cif(nacl_structure())
    (tmp_path / "two.cif").write_text(tri + "\n" + nacl.replace("data_NaCl", "data_second"))
    (tmp_path / "pub.cif").write_text("data_global\n_journal_name_full 'J'\n\n" + nacl)
    with caplog.at_level(logging.WARNING, logger="deepergat"):
        pack([tmp_path / "two.cif", tmp_path / "pub.cif"], tmp_path / "o.h5", workers=1)
    b, _ = _load(tmp_path / "o.h5")
    assert b.ids == ["two_0", "two_1", "pub"]
    _assert_pymatgen(b.structure(0), _pmg(tri, "cif"))
    _assert_pymatgen(b.structure(1), _pmg(nacl, "cif"))
    _assert_pymatgen(b.structure(2), _pmg(nacl, "cif"))
    assert "pub.cif: CIF block data_global holds no atom sites" in caplog.text


def test_pymatgen_json_list_and_molecule(tmp_path: Path) -> None:
    from pymatgen.core import Molecule

    tri, nacl = triclinic_structure(), nacl_structure()
    (tmp_path / "many.json").write_text(json.dumps([tri.as_dict(), nacl.as_dict()]))
    mol = Molecule(["C", "O"], [[0, 0, 0], [0, 0, 1.13]])
    (tmp_path / "co.json").write_text(json.dumps(mol.as_dict()))
    pack([tmp_path / "many.json", tmp_path / "co.json"], tmp_path / "o.h5", workers=1)
    b, _ = _load(tmp_path / "o.h5")
    assert b.ids == ["many_0", "many_1", "co"]
    _assert_pymatgen(b.structure(0), tri)
    _assert_pymatgen(b.structure(1), nacl)
    _assert_same(b.structure(2), np.zeros((3, 3)), mol.cart_coords, [6, 8], [False] * 3)


def test_extxyz_frames(tmp_path: Path) -> None:
    frames = [pt_cluster(3, seed=k) for k in range(3)]
    frames[1] = Atoms("SiO2", positions=np.random.default_rng(1).random((3, 3)) * 4)
    frames[1].cell = np.diag([4.0, 5.0, 6.0])
    frames[1].pbc = [True, True, False]
    for k, a in enumerate(frames):
        a.info["energy_x"] = -1.5 * k
    ase_write(tmp_path / "traj.extxyz", frames, format="extxyz")
    ase_write(tmp_path / "one.xyz", frames[1], format="extxyz")
    result = pack(
        [tmp_path / "traj.extxyz", tmp_path / "one.xyz"],
        tmp_path / "o.h5",
        targets=["energy_x:eV", "missing"],
        workers=1,
    )
    b, units = _load(tmp_path / "o.h5")
    assert units == {"energy_x": "eV", "missing": ""}
    assert b.ids == ["traj_0", "traj_1", "traj_2", "one"]
    want = ase_read(tmp_path / "traj.extxyz", index=":")
    for k, a in enumerate([*want, want[1]]):
        _assert_same(b.structure(k), a.cell.array, a.positions, a.numbers, a.pbc)
    np.testing.assert_array_equal(b.targets["energy_x"], [0.0, -1.5, -3.0, -1.5])
    assert np.isnan(b.targets["missing"]).all()
    assert result.targets == {"energy_x": ("eV", 4), "missing": ("", 0)}


def test_extxyz_bad_frame(tmp_path: Path) -> None:
    good = pt_cluster(2)
    ase_write(tmp_path / "t.extxyz", [good, good, good], format="extxyz")
    lines = (tmp_path / "t.extxyz").read_text().splitlines(keepends=True)
    lines[4 + 2] = "Pt 1.0 oops 2.0\n"  # an atom line of the second frame
    (tmp_path / "t.extxyz").write_text("".join(lines))
    with pytest.raises(DeepergatError, match=r"t\.extxyz:frame 1: unreadable"):
        pack([tmp_path / "t.extxyz"], tmp_path / "o.h5", workers=1)
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "o.h5.tmp").exists()
    result = pack([tmp_path / "t.extxyz"], tmp_path / "o.h5", workers=1, skip_bad=True)
    assert result.skipped == {"unreadable": 1}
    assert _load(tmp_path / "o.h5")[0].ids == ["t_0", "t_2"]  # frames keep their index


def test_ase_databases(tmp_path: Path) -> None:
    import ase.db

    atoms = [pt_cluster(2 + k % 3, seed=k) for k in range(300)]
    atoms[7].pbc = True
    with ase.db.connect(tmp_path / "big.db") as db:
        for k, a in enumerate(atoms):
            db.write(a, e_form=0.01 * k)
    ase_write(tmp_path / "one.json", atoms[3], format="json")
    ase_write(tmp_path / "two.json", atoms[:2], format="json")
    pack(
        [tmp_path / "big.db", tmp_path / "one.json", tmp_path / "two.json"],
        tmp_path / "o.h5",
        targets=["e_form:eV/atom"],
        workers=1,
    )
    b, units = _load(tmp_path / "o.h5")
    assert units == {"e_form": "eV/atom"}
    assert b.ids == [f"big_{k}" for k in range(300)] + ["one", "two_0", "two_1"]
    for k, a in enumerate([*atoms, atoms[3], atoms[0], atoms[1]]):
        _assert_same(b.structure(k), a.cell.array, a.positions, a.numbers, a.pbc)
    np.testing.assert_allclose(b.targets["e_form"][:300], 0.01 * np.arange(300), rtol=0, atol=0)
    assert np.isnan(b.targets["e_form"][300:]).all()


def test_csv_targets_ids_and_nan(tmp_path: Path) -> None:
    tri, nacl = triclinic_structure(), nacl_structure()
    rows = [
        ["m-1", _cif(tri), "1.5", "x"],
        ["m-2", _cif(nacl), "", "y"],
        ["m-3", _cif(tri), "nan", "z"],
    ]
    f = _write_csv(tmp_path / "t.csv", ["material_id", "cif", "y", "label"], rows)
    result = pack([f], tmp_path / "o.h5", targets=[parse_target_spec("y:eV")], workers=1)
    b, units = _load(tmp_path / "o.h5")
    assert b.ids == ["m-1", "m-2", "m-3"] and units == {"y": "eV"}
    assert b.targets["y"][0] == 1.5 and np.isnan(b.targets["y"][1:]).all()
    assert result.targets == {"y": ("eV", 1)}
    _assert_pymatgen(b.structure(1), _pmg(rows[1][1], "cif"))

    pack([f], tmp_path / "p.h5", id_from="path", workers=1)
    assert _load(tmp_path / "p.h5")[0].ids == [f"{f.as_posix()}:m-{k}" for k in (1, 2, 3)]
    pack([f], tmp_path / "q.h5", id_column="label", workers=1)
    assert _load(tmp_path / "q.h5")[0].ids == ["x", "y", "z"]
    g = _write_csv(tmp_path / "noid.csv", ["structure"], [[r[1]] for r in rows])
    pack([g], tmp_path / "r.h5", cif_column="structure", workers=1)
    assert _load(tmp_path / "r.h5")[0].ids == ["noid_0", "noid_1", "noid_2"]

    for kwargs, message in [
        ({"targets": ["gap"]}, r"t\.csv: no target column 'gap'.*with targets$"),
        ({"cif_column": "CIF"}, r"t\.csv: no CIF column 'CIF'.*with cif_column$"),
        ({"id_column": "name"}, r"t\.csv: no id column 'name'.*with id_column$"),
        ({"targets": ["y"], "target_names": ["e"]}, "^target_names names the value columns"),
        ({"targets": ["a/b"]}, "without '/'"),
    ]:
        with pytest.raises(DeepergatError, match=message):
            pack([f], tmp_path / "bad.h5", workers=1, **kwargs)
    with pytest.raises(DeepergatError, match="target 'y' value 'abc' is not a number"):
        h = _write_csv(tmp_path / "h.csv", ["cif", "y"], [[rows[0][1], "abc"]])
        pack([h], tmp_path / "bad.h5", targets=["y"], workers=1)
    assert not (tmp_path / "bad.h5").exists()


def test_matdeeplearn_folder(tmp_path: Path) -> None:
    d = tmp_path / "mdl"
    d.mkdir()
    tri, nacl, pt = triclinic_structure(), nacl_structure(), pt_cluster(5)
    ase_write(d / "10.json", pt, format="json")
    (d / "11.cif").write_text(_cif(nacl))
    (d / "12.vasp").write_text(tri.to(fmt="poscar"))
    ase_write(d / "13.xyz", pt, format="extxyz")
    (d / "targets.csv").write_text("11,-2.5\n10,1.25\n12,\n13,7\n")
    pack([d], tmp_path / "o.h5", workers=1)
    b, units = _load(tmp_path / "o.h5")
    assert units == {"target": ""}
    assert b.ids == ["11", "10", "12", "13"]  # targets.csv order
    np.testing.assert_array_equal(b.targets["target"][:2], [-2.5, 1.25])
    assert np.isnan(b.targets["target"][2])
    _assert_pymatgen(b.structure(0), _pmg((d / "11.cif").read_text(), "cif"))
    _assert_same(b.structure(1), pt.cell.array, pt.positions, pt.numbers, [False] * 3)
    _assert_pymatgen(b.structure(2), _pmg((d / "12.vasp").read_text(), "poscar"))
    xyz = ase_read(d / "13.xyz")
    _assert_same(b.structure(3), xyz.cell.array, xyz.positions, xyz.numbers, xyz.pbc)
    assert b.targets["target"][3] == 7.0

    pack([d], tmp_path / "p.h5", target_names=["total_energy:eV"], id_from="path", workers=1)
    b, units = _load(tmp_path / "p.h5")
    assert units == {"total_energy": "eV"}
    assert b.ids == [(d / n).as_posix() for n in ("11.cif", "10.json", "12.vasp", "13.xyz")]

    with pytest.raises(DeepergatError, match="2 target name"):
        pack([d], tmp_path / "x.h5", target_names=["a", "b"], workers=1)
    (d / "targets.csv").write_text("11,-2.5\n14,0.5\n")
    with pytest.raises(DeepergatError, match=r"row 2 \(id 14\): missing structure file"):
        pack([d], tmp_path / "x.h5", workers=1)


# ---- ids, bad inputs --------------------------------------------------------------------------


def test_duplicate_ids_suggest_id_from_path(tmp_path: Path) -> None:
    for run in ("run1", "run2"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "CONTCAR").write_text(nacl_structure().to(fmt="poscar"))
    pattern = str(tmp_path / "run*" / "CONTCAR")
    with pytest.raises(DeepergatError, match=r"duplicate id 'CONTCAR'.*pass id_from path") as e:
        pack([pattern], tmp_path / "o.h5", workers=1)
    assert "run1" in str(e.value) and "run2" in str(e.value)
    assert not (tmp_path / "o.h5").exists()
    pack([pattern], tmp_path / "o.h5", id_from="path", workers=1)
    assert _load(tmp_path / "o.h5")[0].ids == [
        (tmp_path / r / "CONTCAR").as_posix() for r in ("run1", "run2")
    ]
    f = _write_csv(tmp_path / "d.csv", ["id", "cif"], [["a", _cif(nacl_structure())]] * 2)
    with pytest.raises(DeepergatError, match=r"d\.csv:row 2 \(id a\): duplicate id 'a'"):
        pack([f], tmp_path / "o2.h5", workers=1)


def test_skip_bad(tmp_path: Path) -> None:
    good = _cif(nacl_structure())
    rows = [
        ["ok-1", good],
        ["broken", "data_x\n_cell_length_a 3\nloop_\n_atom_site_label\n"],
        ["ok-2", good.replace("5.64", "5.70")],
        ["dis", _cif(disordered_structure())],
    ]
    f = _write_csv(tmp_path / "t.csv", ["material_id", "cif"], rows)
    (tmp_path / "junk.cif").write_text("this is not a CIF")
    inputs = [f, tmp_path / "junk.cif"]
    with pytest.raises(DeepergatError,
                       match=r"t\.csv:row 2 \(id broken\): unreadable.*pass skip_bad"):
        pack(inputs, tmp_path / "out.h5", workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.cif", "t.csv"]

    result = pack(inputs, tmp_path / "out.h5", workers=1, skip_bad=True)
    assert result.n_structures == 2 and result.n_skipped == 3
    assert result.skipped == {"unreadable": 2, "disordered": 1}
    assert result.skipped_csv == tmp_path / "out.skipped.csv"
    with open(result.skipped_csv, newline="") as fh:
        skipped = list(csv.DictReader(fh))
    assert list(skipped[0]) == ["source", "reason"]
    assert [r["source"] for r in skipped] == [
        f"{f}:row 2 (id broken)",
        f"{f}:row 4 (id dis)",
        str(tmp_path / "junk.cif"),
    ]
    assert skipped[1]["reason"].startswith("disordered: 1 of 2 sites have partial occupancy")
    assert _load(tmp_path / "out.h5")[0].ids == ["ok-1", "ok-2"]

    # nothing readable: an error, but the list of what was skipped stays
    with pytest.raises(DeepergatError, match=r"no structures were read .*1 unreadable skipped"):
        pack([tmp_path / "junk.cif"], tmp_path / "none.h5", workers=1, skip_bad=True)
    assert not (tmp_path / "none.h5").exists()
    assert "junk.cif" in (tmp_path / "none.skipped.csv").read_text()


def test_disordered_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "fe.json").write_text(json.dumps(disordered_structure().as_dict()))
    with pytest.raises(DeepergatError, match=r"fe\.json: disordered"):
        pack([tmp_path / "fe.json"], tmp_path / "o.h5", workers=1)


def test_missing_inputs_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(DeepergatError, match="no such file"):
        pack([tmp_path / "nope.cif"], tmp_path / "o.h5", workers=1)
    with pytest.raises(DeepergatError, match="no files match"):
        pack([str(tmp_path / "*.cif")], tmp_path / "o.h5", workers=1)
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DeepergatError, match=r"x\.txt: unknown format"):
        pack([tmp_path / "x.txt"], tmp_path / "o.h5", workers=1)
    with pytest.raises(DeepergatError, match="does not exist"):
        pack([tmp_path / "x.txt"], tmp_path / "no" / "o.h5", workers=1)
    (tmp_path / "foreign.json").write_text('{"a": 1}')
    with pytest.raises(DeepergatError, match="neither a pymatgen Structure"):
        pack([tmp_path / "foreign.json"], tmp_path / "o.h5", workers=1)


def test_settings_errors_name_settings_and_the_command_line_names_flags(tmp_path: Path) -> None:
    """A bad setting's message names the setting (``workers``); ``deepergat pack`` shows the
    flag it came from (``--workers``)."""
    from deepergat.cli.base import flag_names
    from deepergat.cli.pack import pack as pack_command
    from deepergat.errors import SettingError

    (tmp_path / "a.cif").write_text(_cif(nacl_structure()))
    cases = [
        ({"workers": 0}, "workers must be at least 1, got 0", "--workers must be"),
        ({"id_from": "name"}, "id_from must be 'stem' or 'path', got 'name'", "--id-from must"),
        ({"targets": ["y", "y"]}, "targets 'y' is given more than once", "--target 'y'"),
        ({"target_names": ["e"]}, "target_names names the value columns", "--target-name names"),
    ]
    flags = flag_names(pack_command)
    for kwargs, message, flagged in cases:
        with pytest.raises(SettingError) as e:
            pack([tmp_path / "a.cif"], tmp_path / "o.h5", **{"workers": 1, **kwargs})
        assert str(e.value).startswith(message)
        assert e.value.render(flags).startswith(flagged)
    assert not (tmp_path / "o.h5").exists()


def test_progress_and_batches(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    for k in range(5):
        (tmp_path / "d" / f"s{k}.cif").write_text(_cif(triclinic_structure(k)))
    seen: list[int] = []
    r1 = pack([tmp_path / "d"], tmp_path / "a.h5", workers=1, batch_size=2, progress=seen.append)
    r2 = pack([tmp_path / "d"], tmp_path / "b.h5", workers=1)
    assert sum(seen) == 5
    assert r1.content_digest == r2.content_digest  # batching does not change the content


# ---- fixtures cut from public data sets (tests/data) ------------------------------------------


def test_perov5_file_equals_pymatgen(tmp_path: Path) -> None:
    """Every row of the perovskite fixture, packed by two workers, equals pymatgen's parse."""
    path = data_file("perov5_sample.csv")
    result = pack(
        [path],
        tmp_path / "perov5.h5",
        targets=["heat_ref:eV", "dir_gap:eV"],
        cif_column="cif",
        id_column="material_id",
        workers=2,
    )
    b, units = _load(tmp_path / "perov5.h5")
    assert units == {"heat_ref": "eV", "dir_gap": "eV"}
    csv.field_size_limit(1 << 30)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert result.n_structures == len(rows) == 300
    assert b.ids == [r["material_id"] for r in rows]
    lattice, positions, numbers = [], [], []
    for r in rows:
        s = _pmg(r["cif"], "cif")
        lattice.append(s.lattice.matrix)
        positions.append(s.cart_coords)
        numbers.append(s.atomic_numbers)
    np.testing.assert_array_equal(b.lattice, np.array(lattice))
    np.testing.assert_array_equal(b.positions, np.concatenate(positions))
    np.testing.assert_array_equal(b.atomic_numbers, np.concatenate(numbers))
    np.testing.assert_array_equal(b.n_atoms, [len(z) for z in numbers])
    assert b.pbc.all()
    for name in ("heat_ref", "dir_gap"):
        np.testing.assert_array_equal(b.targets[name], [float(r[name]) for r in rows])


def test_pt_clusters_matdeeplearn(tmp_path: Path) -> None:
    with tarfile.open(data_file("pt_clusters_100.tar.gz")) as tar:
        tar.extractall(tmp_path, filter="data")
    folder = tmp_path / "test_data"
    result = pack([folder], tmp_path / "pt.h5", target_names=["total_energy:eV"], workers=2)
    assert result.n_structures == 100 and result.n_atoms == 1000
    b, units = _load(tmp_path / "pt.h5")
    assert units == {"total_energy": "eV"}
    with open(folder / "targets.csv") as fh:
        rows = [line.strip().split(",") for line in fh if line.strip()]
    assert b.ids == [r[0] for r in rows]
    np.testing.assert_array_equal(b.targets["total_energy"], [float(r[1]) for r in rows])
    assert not b.pbc.any()
    assert set(b.atomic_numbers.tolist()) == {78}
    np.testing.assert_array_equal(b.lattice, np.broadcast_to(np.eye(3) * 20.0, (100, 3, 3)))
    for k in (0, 49, 99):
        a = ase_read(folder / f"{b.ids[k]}.json")
        _assert_same(b.structure(k), a.cell.array, a.positions, a.numbers, a.pbc)


def test_carbon24_subset(tmp_path: Path) -> None:
    csv.field_size_limit(1 << 30)
    with open(data_file("carbon24_sample.csv"), newline="") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        rows = [r for _, r in zip(range(40), reader, strict=False)]
    subset = tmp_path / "carbon24_40.csv"
    _write_csv(subset, header, [[r[h] for h in header] for r in rows])
    pack([subset], tmp_path / "c.h5", targets=["energy_per_atom:eV/atom"], workers=1)
    b, units = _load(tmp_path / "c.h5")
    assert units == {"energy_per_atom": "eV/atom"}
    assert b.ids == [r["material_id"] for r in rows]
    assert set(b.atomic_numbers.tolist()) == {6}
    for k in (0, 17, 39):
        _assert_pymatgen(b.structure(k), _pmg(rows[k]["cif"], "cif"))
    np.testing.assert_array_equal(
        b.targets["energy_per_atom"], [float(r["energy_per_atom"]) for r in rows]
    )


# ---- nothing is lost: every input record is packed or listed as skipped ------------------


def _xyz_frames(path: Path, counts: list[tuple[int, int]], junk_after: int | None = None) -> Path:
    """An extxyz file whose frame k claims counts[k][0] atoms and has counts[k][1]."""
    text = []
    for k, (claim, real) in enumerate(counts):
        atoms = "".join(f"H {0.7 * i:.3f} {k % 5:.3f} 0.500\n" for i in range(real))
        text.append(f"{claim}\nLattice=\"6 0 0 0 6 0 0 0 6\" Properties=species:S:1:pos:R:3 "
                    f"pbc=\"T T T\"\n{atoms}")
        if junk_after == k:
            text.append("this is not\nan xyz frame\n")
    path.write_text("".join(text))
    return path


def _skipped(csv_path: Path) -> list[list[str]]:
    with open(csv_path, newline="") as fh:
        return list(csv.reader(fh))[1:]


def test_a_short_xyz_frame_fails_alone(tmp_path: Path) -> None:
    src = _xyz_frames(tmp_path / "many.xyz", [(3, 2) if k == 1 else (3, 3) for k in range(100)])
    with pytest.raises(DeepergatError, match=r"many\.xyz:frame 1: .*claims 3 atoms but has 2"):
        pack([src], tmp_path / "a.h5", workers=1)
    result = pack([src], tmp_path / "b.h5", workers=1, skip_bad=True)
    assert result.n_structures == 99 and result.n_skipped == 1
    b, _ = _load(tmp_path / "b.h5")
    assert b.ids == [f"many_{k}" for k in range(100) if k != 1]  # positions kept
    assert [r[0] for r in _skipped(tmp_path / "b.skipped.csv")] == [f"{src}:frame 1"]


def test_long_xyz_frames_and_junk_lines_are_listed(tmp_path: Path) -> None:
    counts = [(3, 3), (2, 3), (3, 3), (3, 3), (3, 3)]
    src = _xyz_frames(tmp_path / "m.xyz", counts, junk_after=2)
    result = pack([src], tmp_path / "m.h5", workers=1, skip_bad=True)
    b, _ = _load(tmp_path / "m.h5")
    assert b.ids == ["m_0", "m_2", "m_3", "m_4"] and result.n_structures == 4
    skipped = [r[0] for r in _skipped(tmp_path / "m.skipped.csv")]
    assert skipped[0] == f"{src}:frame 1"  # its third atom line follows its count
    assert skipped[1].startswith(f"{src}:lines ")  # the junk, by its line numbers


def test_a_bad_block_of_a_multi_block_cif_is_listed_and_ids_stay_positional(
    tmp_path: Path,
) -> None:
    import re

    csv.field_size_limit(1 << 30)
    with open(data_file("perov5_sample.csv"), newline="") as fh:
        cifs = [r["cif"] for _, r in zip(range(3), csv.DictReader(fh), strict=False)]
    blocks = []
    for k, text in enumerate(cifs):
        text = re.sub(r"^data_.*$", f"data_s{k}", text, count=1, flags=re.MULTILINE)
        if k == 1:  # a zero-volume cell
            text = re.sub(r"(_cell_length_a\s+)\S+", r"\g<1>0.0", text)
        blocks.append(text)
    src = tmp_path / "multi.cif"
    src.write_text("\n".join(blocks))
    with pytest.raises(DeepergatError, match=r"multi\.cif:block 1 \(data_s1\)"):
        pack([src], tmp_path / "a.h5", workers=1)
    result = pack([src], tmp_path / "b.h5", workers=1, skip_bad=True)
    b, _ = _load(tmp_path / "b.h5")
    assert b.ids == ["multi_0", "multi_2"] and result.n_skipped == 1
    assert _skipped(tmp_path / "b.skipped.csv")[0][0] == f"{src}:block 1 (data_s1)"
    for k in (0, 1):  # the good blocks are the ones written
        _assert_pymatgen(b.structure(k), _pmg(blocks[2 * k], "cif"))


def test_pack_never_overwrites_a_file_that_is_not_a_store(tmp_path: Path) -> None:
    src = tmp_path / "good.cif"
    src.write_text(nacl_structure().to(fmt="cif"))
    other = tmp_path / "other.cif"
    other.write_text("a user's CIF\n")
    with pytest.raises(DeepergatError, match="exists and is not a deepergat structure store"):
        pack([src], other, workers=1)
    assert other.read_text() == "a user's CIF\n"
    store = tmp_path / "s.h5"
    pack([src], store, workers=1)
    pack([src], store, workers=1)  # an existing store is replaced
    assert _load(store)[0].ids == ["good"]


def test_skip_bad_never_overwrites_a_users_skipped_csv(tmp_path: Path) -> None:
    """``<stem>.skipped.csv`` that pack did not write is refused (one line, nothing written);
    pack's own list from an earlier run is replaced."""
    src = tmp_path / "good.cif"
    src.write_text(nacl_structure().to(fmt="cif"))
    bad = tmp_path / "bad.cif"
    bad.write_text("not a cif\n")
    mine = tmp_path / "s.skipped.csv"
    mine.write_text("id,notes\nmp-1,my own notes\n")
    with pytest.raises(DeepergatError, match=r"s\.skipped\.csv: exists and is not a list of "
                                             r"skipped inputs.*never overwrites other files"):
        pack([src, bad], tmp_path / "s.h5", workers=1, skip_bad=True)
    assert mine.read_text() == "id,notes\nmp-1,my own notes\n"
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "s.h5.lock").exists()
    mine.unlink()
    first = pack([src, bad], tmp_path / "s.h5", workers=1, skip_bad=True)
    assert first.n_skipped == 1
    again = pack([src, bad], tmp_path / "s.h5", workers=1, skip_bad=True)  # its own: replaced
    assert again.skipped_csv == mine and _skipped(mine)[0][0] == str(bad)
    with pytest.raises(DeepergatError, match="is an input"):
        pack([src, mine], tmp_path / "s.h5", workers=1, skip_bad=True)


def test_a_killed_packs_temporaries_are_removed_by_the_next_pack(tmp_path: Path) -> None:
    """kill -9 leaves ``<out>.tmp``, ``<stem>.skipped.csv.tmp`` and the lock; the next pack of
    that output removes them (whatever it packs)."""
    import subprocess
    import sys

    from deepergat.system.lock import OutputLock

    src = tmp_path / "good.cif"
    src.write_text(nacl_structure().to(fmt="cif"))
    out = tmp_path / "s.h5"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    corpse = OutputLock(out, "run-dead")
    corpse.holder = corpse.path / f"holder-{corpse.host}-{corpse.node}-{dead.pid}-0"
    corpse.acquire()
    corpse._stop.set()  # killed: no heartbeat, no release
    left = [tmp_path / "s.h5.tmp", tmp_path / "s.skipped.csv.tmp"]
    for f in left:
        f.write_bytes(b"half written by a killed pack")
    pack([src], out, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.cif", "s.h5"]


def test_two_packs_of_one_output_never_mix(tmp_path: Path) -> None:
    from deepergat.system.lock import OutputLock, run_token

    src = tmp_path / "good.cif"
    src.write_text(nacl_structure().to(fmt="cif"))
    out = tmp_path / "s.h5"
    other = OutputLock(out, run_token())  # a pack writing it right now
    other.acquire()
    try:
        with pytest.raises(DeepergatError, match=r"s\.h5: another run is writing it .*choose "
                                                 r"another output file"):
            pack([src], out, workers=1)
        assert not out.exists()
    finally:
        other.release()
    pack([src], out, workers=1)
    assert _load(out)[0].ids == ["good"]


# ---- generators' outputs: archives and CDVAE/DiffCSP sample files ---------------------------


def test_zip_and_tar_archives_are_read_in_memory(tmp_path: Path) -> None:
    import io
    import tarfile
    import zipfile

    tri, nacl = _cif(triclinic_structure()), _cif(nacl_structure())
    src = tmp_path / "generated_crystals_cif.zip"
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("crystals/tri.cif", tri)
        z.writestr("crystals/nacl.cif", nacl)
        z.writestr("../evil.cif", nacl)  # would land outside the folder if unpacked
        z.writestr("notes.txt", "ignored")
    poscar = nacl_structure().to(fmt="poscar")
    frames = [pt_cluster(3, seed=k) for k in range(2)]
    xyz = io.StringIO()
    ase_write(xyz, frames, format="extxyz")
    tgz = tmp_path / "more.tar.gz"
    with tarfile.open(tgz, "w:gz") as t:
        for name, text in (("run/POSCAR", poscar), ("run/traj.xyz", xyz.getvalue())):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    with pytest.raises(DeepergatError, match=r"\.\./evil\.cif: unsafe member"):
        pack([src], tmp_path / "a.h5", workers=1)
    result = pack([src, tgz], tmp_path / "b.h5", workers=1, skip_bad=True)
    b, _ = _load(tmp_path / "b.h5")
    assert b.ids == ["tri", "nacl", "POSCAR", "traj_0", "traj_1"] and result.n_skipped == 1
    _assert_pymatgen(b.structure(0), _pmg(tri, "cif"))
    _assert_pymatgen(b.structure(2), _pmg(poscar, "poscar"))
    np.testing.assert_allclose(b.structure(4)["positions"], frames[1].positions)
    assert not (tmp_path.parent / "evil.cif").exists() and not (tmp_path / "crystals").exists()
    pack([src], tmp_path / "c.h5", workers=1, skip_bad=True, id_from="path")
    assert _load(tmp_path / "c.h5")[0].ids == [f"{src.as_posix()}/crystals/tri.cif",
                                                f"{src.as_posix()}/crystals/nacl.cif"]


def _sample_file(path: Path, *, recon: bool = False, evil: Any = None) -> dict:
    """A file in CDVAE's eval_*.pt layout: 2 passes over 3 crystals."""
    import argparse

    import torch

    gen = torch.Generator().manual_seed(3)
    counts = torch.tensor([[4, 5, 6], [4, 5, 6]])
    data = {
        "eval_setting": argparse.Namespace(num_evals=2, tasks=["recon" if recon else "gen"]),
        "frac_coords": torch.rand(2, 15, 3, generator=gen),
        "atom_types": torch.randint(1, 84, (2, 15), generator=gen),
        "num_atoms": counts,
        "lengths": 3 + 4 * torch.rand(2, 3, 3, generator=gen),
        "angles": 70 + 40 * torch.rand(2, 3, 3, generator=gen),
        "all_frac_coords_stack": [], "all_atom_types_stack": [], "time": 12.5,
    }
    if recon:
        from torch_geometric.data import Batch, Data

        data["input_data_batch"] = Batch.from_data_list(
            [Data(frac_coords=torch.zeros(4, 3), num_atoms=4) for _ in range(3)])
    if evil is not None:
        data["evil"] = evil
    torch.save(data, path)
    return data


class _Planted:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.write_text, (self.marker, "pwned"))


def test_cdvae_sample_files_pass_major_and_nothing_runs(tmp_path: Path) -> None:
    from pymatgen.core import Lattice

    gen = tmp_path / "eval_gen.pt"
    data = _sample_file(gen)
    recon = tmp_path / "eval_recon.pt"
    _sample_file(recon, recon=True)  # with a PyG Batch and an argparse.Namespace
    pack([gen, recon], tmp_path / "g.h5", workers=1)
    b, _ = _load(tmp_path / "g.h5")
    assert b.ids[:6] == ["eval_gen-0-0", "eval_gen-0-1", "eval_gen-0-2", "eval_gen-1-0",
                         "eval_gen-1-1", "eval_gen-1-2"] and len(b.ids) == 12
    k, i, first = 1, 2, 9  # pass 1, crystal 2: atoms 9..14 of that pass
    s = b.structure(3 * k + i)
    lat = Lattice.from_parameters(*data["lengths"][k, i].tolist(),
                                  *data["angles"][k, i].tolist()).matrix
    np.testing.assert_allclose(s["lattice"], lat)
    np.testing.assert_allclose(s["positions"], data["frac_coords"][k, first:].numpy() @ lat)
    np.testing.assert_array_equal(s["atomic_numbers"], data["atom_types"][k, first:].numpy())
    folder = tmp_path / "samples"  # a folder of sample files reads like the files
    folder.mkdir()
    shutil.copyfile(gen, folder / gen.name)
    pack([folder], tmp_path / "f.h5", workers=1)
    assert _load(tmp_path / "f.h5")[0].ids == b.ids[:6]
    marker = tmp_path / "marker.txt"
    evil = tmp_path / "eval_opt.pt"
    _sample_file(evil, evil=_Planted(marker))
    refused = r"eval_opt\.pt: refused: the pickle asks for \S+, which is not"
    with pytest.raises(DeepergatError, match=refused):
        pack([evil], tmp_path / "e.h5", workers=1)
    assert not marker.exists()


# ---- hostile inputs: nothing runs, nothing expands without bound, nothing is dropped silently --


def test_a_nested_archive_is_listed_never_dropped(tmp_path: Path) -> None:
    """A zip inside a zip was skipped silently ("packed 1 structures", exit 0): now it stops
    the pack with one line naming it, or with ``skip_bad`` is listed as skipped."""
    import zipfile

    from click.testing import CliRunner

    from deepergat.cli import main

    nacl = _cif(nacl_structure())
    inner = tmp_path / "inner.zip"
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("x.cif", nacl)
    outer = tmp_path / "outer.zip"
    with zipfile.ZipFile(outer, "w") as z:
        z.writestr("a.cif", nacl)
        z.write(inner, "more/inner.zip")
        z.writestr("README.md", "generated by a model")
    r = CliRunner().invoke(main, ["pack", str(outer), "-o", str(tmp_path / "o.h5"),
                                  "--workers", "1"])
    assert r.exit_code == 2 and not (tmp_path / "o.h5").exists()
    # the README is named in a warning (as in a folder), the nested archive in the one error
    warning, line = r.stderr.strip().splitlines()
    assert warning.endswith(f"{outer}: ignored 1 members that are not structure files "
                            "(README.md)")
    assert line.startswith(f"error: {outer}:more/inner.zip: nested archive: ") and (
        "--skip-bad" in line)
    r = CliRunner().invoke(main, ["pack", str(outer), "-o", str(tmp_path / "o.h5"),
                                  "--workers", "1", "--skip-bad"])
    assert r.exit_code == 0, r.output
    assert "packed 1 structures" in r.stdout and "skipped 1: 1 nested archive" in r.stderr
    with open(tmp_path / "o.skipped.csv", newline="") as fh:
        assert [row["source"] for row in csv.DictReader(fh)] == [f"{outer}:more/inner.zip"]


def test_pack_of_a_json_naming_a_module_imports_nothing(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`deepergat pack evil.json` exited 0 after monty imported the module the file named; now
    the module is never imported and the file is refused with one line."""
    from click.testing import CliRunner

    from deepergat.cli import main

    marker = tmp_path / "imported.txt"
    module = f"deepergat_payload_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    doc = nacl_structure().as_dict()
    doc["sites"][0]["properties"] = {"x": {"@module": module, "@class": "Anything"}}
    (tmp_path / "evil.json").write_text(json.dumps(doc))
    r = CliRunner().invoke(main, ["pack", str(tmp_path / "evil.json"), "-o",
                                  str(tmp_path / "o.h5"), "--workers", "1"])
    assert not marker.exists()
    assert r.exit_code == 2 and not (tmp_path / "o.h5").exists()
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'evil.json'}: refused: names @module "
                           f"{module!r} @class 'Anything' at sites[0].properties.x")


def test_hostile_members_and_blocks_are_listed_and_the_rest_packs(tmp_path: Path) -> None:
    """With ``skip_bad`` an archive bomb member, an amplified CIF and a JSON member are each
    one listed line, and everything else in the inputs is packed."""
    import zipfile

    member_limit = 64 << 20  # deepergat.io.readers.archive.MAX_MEMBER_BYTES

    nacl = _cif(nacl_structure())
    rng = np.random.default_rng(0)
    amp = ["data_amp", "_symmetry_space_group_name_H-M 'P m -3 m'",
           *(f"_cell_{k} {v}" for k, v in (("length_a", 40), ("length_b", 40), ("length_c", 40),
                                            ("angle_alpha", 90), ("angle_beta", 90),
                                            ("angle_gamma", 90))),
           "loop_", "_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x",
           "_atom_site_fract_y", "_atom_site_fract_z",
           *(f"C{k} C {x:.4f} {y:.4f} {z:.4f}" for k, (x, y, z) in
             enumerate(rng.uniform(0.01, 0.49, (100, 3))))]
    path = tmp_path / "gen.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("a.cif", nacl)
        with z.open("bomb.cif", "w", force_zip64=True) as fh:
            for _ in range((member_limit >> 20) + 1):
                fh.write(bytes(1 << 20))
        z.writestr("amp.cif", "\n".join(amp) + "\n")
        z.writestr("s.json", json.dumps(nacl_structure().as_dict()))
        z.writestr("b.cif", nacl.replace("5.64", "5.7"))
    result = pack([path], tmp_path / "o.h5", workers=1, skip_bad=True)
    assert _load(tmp_path / "o.h5")[0].ids == ["a", "b"]
    assert result.skipped == {"too large": 2, "not read from archives": 1}
    with open(tmp_path / "o.skipped.csv", newline="") as fh:
        rows = [(r["source"], r["reason"].split(":")[0]) for r in csv.DictReader(fh)]
    assert rows == [(f"{path}:bomb.cif", "too large"), (f"{path}:amp.cif", "too large"),
                    (f"{path}:s.json", "not read from archives")]


def test_a_sample_file_that_is_a_decompression_bomb_is_refused(tmp_path: Path) -> None:
    """A ``torch.save`` file is a zip whose records torch allocates at their declared size and
    decompresses: 128 MiB of zeros deflated into ~130 KB is refused before torch reads it."""
    import zipfile

    import torch

    plain = tmp_path / "plain.pt"
    data = _sample_file(plain)
    data["padding"] = torch.zeros(1 << 25)  # 128 MiB
    torch.save(data, plain)
    bomb = tmp_path / "eval_gen.pt"
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    assert bomb.stat().st_size < 1 << 20
    _sample_file(tmp_path / "good.pt")
    result = pack([bomb, tmp_path / "good.pt"], tmp_path / "o.h5", workers=1, skip_bad=True)
    assert result.skipped == {"too large": 1} and result.n_structures == 6
    with open(tmp_path / "o.skipped.csv", newline="") as fh:
        [row] = list(csv.DictReader(fh))
    assert row["source"] == str(bomb) and row["reason"].startswith(
        "too large: its records declare ")


def test_the_text_in_flight_to_workers_is_bounded(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Tasks carry text (archive members, CSV cells): chunks are weighed by it, so however
    large the members, the text submitted to workers and not yet taken back stays within
    ``2 * workers + 2`` chunks' weight (64 KiB a unit) plus one chunk."""
    import io
    import tarfile
    from concurrent.futures import Future

    from deepergat.io import pack as pack_module

    in_flight: list[int] = []
    peak = [0]

    class Pool:  # runs each chunk when its result is asked for, counting the text held
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def submit(self, fn: Any, tasks: list[Any], names: Any) -> Future:
            size = sum(len(getattr(t, "text", "")) for t in tasks)
            in_flight.append(size)
            peak[0] = max(peak[0], sum(in_flight))
            fut: Future = Future()
            fut.result = lambda timeout=None: (in_flight.remove(size), fn(tasks, names))[1]
            return fut

        def shutdown(self, **kwargs: Any) -> None:
            pass

    monkeypatch.setattr(pack_module, "ProcessPoolExecutor", Pool)
    monkeypatch.setattr(pack_module, "_mp_context", lambda: None)
    member = (_cif(nacl_structure()) + "#" * (1 << 20) + "\n").encode()  # 1 MiB each
    path = tmp_path / "big.tar"
    with tarfile.open(path, "w") as t:
        for k in range(40):
            info = tarfile.TarInfo(f"s{k}.cif")
            info.size = len(member)
            t.addfile(info, io.BytesIO(member))
    result = pack([path], tmp_path / "o.h5", workers=2)
    assert result.n_structures == 40
    bound = (2 * 2 + 2) * 32 * (64 << 10) + 2 * len(member)
    assert peak[0] <= bound < 20 * len(member)


def test_folder_tree_is_walked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A VASP tree (``run-*/POSCAR``) packs whole: sub-folders depth first in sorted order,
    hidden entries skipped, ids made distinct from the paths, other files named in a warning."""
    d = tmp_path / "tree"
    tri, nacl = triclinic_structure(), nacl_structure()
    for name, s in (("run-2", tri), ("run-1", nacl), ("run-1/relax", tri)):
        (d / name).mkdir(parents=True, exist_ok=True)
        (d / name / "POSCAR").write_text(s.to(fmt="poscar"))
    (d / "run-1" / "OUTCAR").write_text("not read")
    (d / ".cache").mkdir()
    (d / ".cache" / "POSCAR").write_text(nacl.to(fmt="poscar"))
    with caplog.at_level(logging.WARNING, logger="deepergat"):
        result = pack([d], tmp_path / "out.h5", workers=1, id_from="path")
    assert "run-1/OUTCAR" in caplog.text and ".cache" not in caplog.text
    b, _ = _load(tmp_path / "out.h5")
    assert result.n_structures == 3
    assert [Path(i).relative_to(d).as_posix() for i in b.ids] == [
        "run-1/POSCAR", "run-1/relax/POSCAR", "run-2/POSCAR"]
    _assert_pymatgen(b.structure(0), _pmg((d / "run-1" / "POSCAR").read_text(), "poscar"))
    _assert_pymatgen(b.structure(1), _pmg((d / "run-1/relax/POSCAR").read_text(), "poscar"))
    empty = tmp_path / "empty"
    (empty / "a" / "b").mkdir(parents=True)
    (empty / "a" / "notes.txt").write_text("x")
    with pytest.raises(DeepergatError, match="its sub-folders"):
        pack([empty], tmp_path / "e.h5", workers=1)
