"""`deepergat.io.readers`: each format family's planning (the tasks the main process cuts) and
parsing (`run_chunk` in a worker) against its own expectations — ids, frames, blocks, rows,
targets, member paths, and the failure records with their reasons."""

from __future__ import annotations

import io
import json
import math
import re
import tarfile
import zipfile
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
from deepergat.io import readers
from deepergat.io.readers import (
    CifTextTask,
    DbRowsTask,
    FailTask,
    Failure,
    FileTask,
    FramesTask,
    Outcome,
    Record,
    Task,
    TextTask,
    run_chunk,
)
from deepergat.io.readers.cif_gemmi import gemmi_available

pytest.importorskip("pymatgen")
pytest.importorskip("ase")

from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write as ase_write
from pymatgen.core import Structure


def _run(tasks: list[Task] | Any, names: tuple[str, ...] = ()) -> tuple[list[Record],
                                                                          list[Failure]]:
    """Every record and failure of the tasks, parsed as a worker parses them, in order."""
    outcomes = run_chunk(list(tasks), names)
    records = [r for oc in outcomes for r in oc.records]
    failures = [f for oc in outcomes for f in oc.failures]
    return records, failures


def _cif(s: Structure) -> str:
    from pymatgen.io.cif import CifWriter

    return str(CifWriter(s))


def _assert_structure(r: Record, s: Structure) -> None:
    """The record holds the pymatgen structure exactly: lattice, Cartesian positions, Z."""
    np.testing.assert_array_equal(r.lattice, s.lattice.matrix)
    np.testing.assert_array_equal(r.positions, s.cart_coords)
    np.testing.assert_array_equal(r.atomic_numbers, s.atomic_numbers)
    np.testing.assert_array_equal(r.pbc, [True] * 3)


def _xyz(frames: list[Atoms]) -> str:
    buf = io.StringIO()
    ase_write(buf, frames, format="extxyz")
    return buf.getvalue()


# ---- format recognition -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "fmt"), [
    ("a.cif", "cif"), ("A.CIF", "cif"), ("m.mcif", "cif"), ("POSCAR", "poscar"),
    ("POSCAR_relaxed", "poscar"), ("CONTCAR", "poscar"), ("x.vasp", "poscar"),
    ("x.poscar", "poscar"), ("t.xyz", "extxyz"), ("t.extxyz", "extxyz"), ("d.db", "ase-db"),
    ("s.json", "json"), ("t.csv", "csv"), ("a.zip", "archive"), ("a.tar", "archive"),
    ("a.tar.gz", "archive"), ("a.tgz", "archive"), ("eval_gen.pt", "generator"),
    ("notes.txt", None), ("targets", None),
])
def test_structure_format_by_name(name: str, fmt: str | None) -> None:
    assert readers.structure_format(Path("some/folder") / name) == fmt


# ---- CIF ----------------------------------------------------------------------------------------


def test_cif_file_parses_as_pymatgen_and_keeps_the_given_id(tmp_path: Path) -> None:
    tri = triclinic_structure()
    (tmp_path / "tri.cif").write_text(_cif(tri))
    [r], failures = _run([FileTask(path=str(tmp_path / "tri.cif"), fmt="cif", id="tri")])
    assert not failures and r.id == "tri" and r.source == str(tmp_path / "tri.cif")
    _assert_structure(r, Structure.from_str(_cif(tri), fmt="cif"))
    assert r.targets == {}


def test_cif_blocks_keep_their_positions_and_a_bad_block_fails_alone(tmp_path: Path) -> None:
    tri, nacl = _cif(triclinic_structure()), _cif(nacl_structure())
    broken = "data_broken\n_cell_length_a 3\n_cell_length_b 3\n_cell_length_c 0\n" \
             "_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n" \
             "loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n" \
             "_atom_site_fract_y\n_atom_site_fract_z\nSi1 Si 0 0 0\n"
    text = ("data_global\n_journal_name_full 'J'\n\n" + tri + "\n" + broken + "\n"
            + nacl.replace("data_NaCl", "data_last"))
    path = tmp_path / "many.cif"
    path.write_text(text)
    [oc] = run_chunk([FileTask(path=str(path), fmt="cif", id="many")], ())
    assert [r.id for r in oc.records] == ["many_0", "many_2"]  # block 1 failed, ids positional
    _assert_structure(oc.records[1], Structure.from_str(nacl, fmt="cif"))
    [f] = oc.failures
    assert f.source == f"{path}:block 1 (data_broken)" and f.category == "unreadable"
    assert oc.warnings == [f"{path}: CIF block data_global holds no atom sites (no structure); "
                           "the other blocks were read"]


def test_cif_failures_name_their_reason(tmp_path: Path) -> None:
    (tmp_path / "empty.cif").write_text("  \n")
    (tmp_path / "dis.cif").write_text(_cif(disordered_structure()))
    tasks = [FileTask(path=str(tmp_path / n), fmt="cif", id=n) for n in ("empty.cif", "dis.cif",
                                                                        "gone.cif")]
    records, failures = _run(tasks)
    assert not records
    assert [(f.source, f.category) for f in failures] == [
        (str(tmp_path / "empty.cif"), "unreadable"), (str(tmp_path / "dis.cif"), "disordered"),
        (str(tmp_path / "gone.cif"), "unreadable")]
    assert failures[0].reason == "unreadable: empty CIF"
    assert re.fullmatch(r"1 of 2 sites have partial occupancy \(site \d: Fe:0\.5, Co:0\.5\); "
                        "deepergat needs ordered structures", failures[1].detail)
    assert failures[2].detail.startswith("cannot open: ")


def _amplified_cif(sites: int, *, name: str = "amp", symbol: str | None = "P m -3 m",
                   ops: list[str] | None = None) -> str:
    """A small CIF of ``sites`` general positions and a space group (by its symbol, or by the
    listed operations) that copies each of them many times."""
    rng = np.random.default_rng(sites)
    lines = [f"data_{name}", "_cell_length_a 40", "_cell_length_b 40", "_cell_length_c 40",
             "_cell_angle_alpha 90", "_cell_angle_beta 90", "_cell_angle_gamma 90"]
    if symbol:
        lines.append(f"_symmetry_space_group_name_H-M '{symbol}'")
    if ops:
        lines += ["loop_", "_symmetry_equiv_pos_as_xyz", *(f"'{op}'" for op in ops)]
    lines += ["loop_", "_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x",
              "_atom_site_fract_y", "_atom_site_fract_z"]
    lines += [f"C{k} C {x:.5f} {y:.5f} {z:.5f}" for k, (x, y, z) in
              enumerate(rng.uniform(0.01, 0.49, (sites, 3)))]
    return "\n".join(lines) + "\n"


@pytest.fixture
def structures_built(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many CIF blocks pymatgen builds into structures (its costly step)."""
    from pymatgen.io.cif import CifParser

    built: list[int] = []
    original = CifParser._get_structure

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        built.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CifParser, "_get_structure", counted)
    return built


def test_a_cif_that_expands_past_the_atom_limit_is_refused_before_it_is_built(
    tmp_path: Path, structures_built: list[int]
) -> None:
    """Sites × symmetry operations are counted from the tokenised CIF before pymatgen builds the
    structure (time quadratic in the atoms: 400 sites × 48 operations took a minute): over
    `MAX_CIF_ATOMS` the block is a ``too large`` failure, whether the operations come from the
    space-group symbol or are listed; a block within it still reads."""
    from deepergat.io.readers.cif import MAX_CIF_ATOMS

    pm3m = [f"{a}{x},{b}{y},{c}{z}" for x, y, z in (("x", "y", "z"), ("y", "z", "x"),
                                                    ("z", "x", "y"))
            for a in "+-" for b in "+-" for c in "+-"]  # 24 of Pm-3m's 48: listed
    cases = {"symbol": _amplified_cif(100), "listed": _amplified_cif(200, symbol=None, ops=pm3m),
             "many listed": _amplified_cif(1, symbol=None, ops=["x,y,z"] * (MAX_CIF_ATOMS + 1)),
             "within": _amplified_cif(20)}
    for name, text in cases.items():
        (tmp_path / f"{name}.cif").write_text(text)
    records, failures = _run([FileTask(path=str(tmp_path / f"{n}.cif"), fmt="cif", id=n)
                              for n in cases])
    assert [r.id for r in records] == ["within"] and len(records[0].atomic_numbers) == 20 * 48
    assert [(f.source.removeprefix(f"{tmp_path}/"), f.category) for f in failures] == [
        ("symbol.cif", "too large"), ("listed.cif", "too large"), ("many listed.cif",
                                                                  "too large")]
    assert failures[0].detail == ("data_amp: 100 sites x 48 symmetry operations make up to 4800 "
                                  f"atoms; blocks of at most {MAX_CIF_ATOMS} are read")
    assert "200 sites x 24 symmetry operations" in failures[1].detail
    assert f"1 sites x {MAX_CIF_ATOMS + 1} symmetry operations" in failures[2].detail
    assert len(structures_built) == 1  # only the block within the limit was built


def test_every_cif_path_bounds_the_expansion(tmp_path: Path, structures_built: list[int]) -> None:
    """The bound holds wherever CIF text comes from: a block of a multi-block file (which fails
    alone), a CSV cell, an archive member."""
    big, nacl = _amplified_cif(100, name="big"), _cif(nacl_structure())
    [oc] = run_chunk([TextTask(source="a.zip:two.cif", fmt="cif", id="two",
                               text=nacl + "\n" + big)], ())
    assert [r.id for r in oc.records] == ["two_0"]
    assert [(f.source, f.category) for f in oc.failures] == [
        ("a.zip:two.cif:block 1 (data_big)", "too large")]
    [oc] = run_chunk([CifTextTask(source="t.csv:row 1", id="r", text=big)], ())
    assert [(f.source, f.category) for f in oc.failures] == [("t.csv:row 1", "too large")]
    # NaCl only; gemmi's reader, where installed, reads NaCl without pymatgen (cif_gemmi)
    assert len(structures_built) == (0 if gemmi_available() else 1)


def test_a_csv_cell_must_hold_one_structure() -> None:
    tri, nacl = _cif(triclinic_structure()), _cif(nacl_structure())
    two = tri + "\n" + nacl.replace("data_NaCl", "data_second")
    [oc] = run_chunk([CifTextTask(source="t.csv:row 1", id="a", text=two)], ())
    [f] = oc.failures
    assert (f.source, f.category) == ("t.csv:row 1", "several structures")
    assert f.detail == "the CIF holds 2 structure blocks; one is expected"


# ---- POSCAR -------------------------------------------------------------------------------------


def test_poscar_text_and_file(tmp_path: Path) -> None:
    nacl = nacl_structure()
    text = nacl.to(fmt="poscar")
    (tmp_path / "POSCAR").write_text(text)
    records, failures = _run([
        TextTask(source="a.zip:run/POSCAR", fmt="poscar", id="run", text=text),
        FileTask(path=str(tmp_path / "POSCAR"), fmt="poscar", id="POSCAR"),
        TextTask(source="a.zip:bad/POSCAR", fmt="poscar", id="bad", text="not a poscar\n"),
    ])
    assert [(r.id, r.source) for r in records] == [
        ("run", "a.zip:run/POSCAR"), ("POSCAR", str(tmp_path / "POSCAR"))]
    for r in records:
        _assert_structure(r, Structure.from_str(text, fmt="poscar"))
    [f] = failures
    assert (f.source, f.category) == ("a.zip:bad/POSCAR", "unreadable") and f.detail


# ---- extxyz -------------------------------------------------------------------------------------


def test_extxyz_frames_ids_and_targets(tmp_path: Path) -> None:
    frames = [pt_cluster(3, seed=k) for k in range(3)]
    frames[0].info["energy"] = -1.5
    frames[2].calc = SinglePointCalculator(frames[2], energy=-2.5)
    path = tmp_path / "traj.extxyz"
    path.write_text(_xyz(frames))
    [task] = readers.extxyz_tasks(path, id_prefix="traj")
    assert isinstance(task, FramesTask) and (task.first, len(task.texts)) == (0, 3)
    records, failures = _run([task], ("energy",))
    assert not failures
    assert [(r.id, r.source) for r in records] == [(f"traj_{k}", f"{path}:frame {k}")
                                                   for k in range(3)]
    np.testing.assert_allclose(records[1].positions, frames[1].positions)
    assert records[0].targets == {"energy": -1.5} and records[1].targets == {}
    assert records[2].targets == {"energy": -2.5}  # from the calculator's results
    one = tmp_path / "one.xyz"
    one.write_text(_xyz(frames[:1]))
    [r], _ = _run(readers.extxyz_tasks(one, id_prefix="one"))
    assert r.id == "one"  # a file of one frame gives the file's id


def test_extxyz_tasks_batch_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepergat.io.readers import extxyz

    monkeypatch.setattr(extxyz, "FRAMES_PER_TASK", 2)
    path = tmp_path / "t.xyz"
    path.write_text(_xyz([pt_cluster(2, seed=k) for k in range(5)]))
    tasks = list(readers.extxyz_tasks(path, id_prefix="t"))
    assert [(t.first, len(t.texts)) for t in tasks] == [(0, 2), (2, 2), (4, 1)]
    records, _ = _run(tasks)
    assert [r.id for r in records] == [f"t_{k}" for k in range(5)]


def test_bad_xyz_frames_fail_alone_and_frames_keep_their_index(tmp_path: Path) -> None:
    def frame(n: int, atoms: int | None = None) -> str:
        lines = [f"Pt {k}.0 0.0 0.0\n" for k in range(n if atoms is None else atoms)]
        return f"{n}\nProperties=species:S:1:pos:R:3\n" + "".join(lines)

    text = (frame(2)
            + frame(3, atoms=2)  # frame 1 ends early: the next count line ends it
            + frame(1) + "Pt 5.0 0.0 0.0\nPt 6.0 0.0 0.0\n"  # frame 2 runs on by 2 atoms
            + "junk here\nmore junk\n"  # lines 14-15: no frame at all
            + frame(2)  # frame 3
            + "2\n")  # frame 4: the file ends inside it
    path = tmp_path / "bad.xyz"
    path.write_text(text)
    tasks = list(readers.extxyz_tasks(path, id_prefix="bad"))
    records, failures = _run(tasks)
    assert [r.id for r in records] == ["bad_0", "bad_3"]
    assert [(f.source, f.detail) for f in failures] == [
        (f"{path}:frame 1", "claims 3 atoms but has 2 (line 9 ends it)"),
        (f"{path}:frame 2", "claims 1 atoms but 2 more atom lines follow"),
        (f"{path}:lines 14-15",
         "not an XYZ frame (line 14 should hold an atom count, got 'junk here')"),
        (f"{path}:frame 4", "file ends inside the frame"),
    ]
    assert {f.category for f in failures} == {"unreadable"}


def test_extxyz_unreadable_files_and_targets(tmp_path: Path) -> None:
    (tmp_path / "empty.xyz").write_text("\n\n")
    (tmp_path / "latin.xyz").write_bytes(b"1\n\xe9\nPt 0 0 0\n")
    a = pt_cluster(2)
    a.info["gap"] = "wide"
    (tmp_path / "text.xyz").write_text(_xyz([a]))
    cases = {"empty.xyz": "no frames in the file", "missing.xyz": "cannot open: ",
             "latin.xyz": "not a UTF-8 text file: ", "text.xyz": "target 'gap' value 'wide' is "
             "not a number"}
    for name, detail in cases.items():
        _, [f] = _run(readers.extxyz_tasks(tmp_path / name, id_prefix="x"), ("gap",))
        assert f.detail.startswith(detail), (name, f)
    assert f.category == "bad target" and f.source == f"{tmp_path / 'text.xyz'}:frame 0"


# ---- ASE databases ------------------------------------------------------------------------------


def test_ase_db_rows_ranges_ids_and_targets(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import ase.db

    from deepergat.io.readers import ase_db

    monkeypatch.setattr(ase_db, "DB_ROWS_PER_TASK", 2)
    atoms = [pt_cluster(2 + k, seed=k) for k in range(5)]
    with ase.db.connect(tmp_path / "d.db") as db:
        for k, a in enumerate(atoms):
            db.write(a, e_form=0.5 * k)
    tasks = list(readers.db_row_tasks(tmp_path / "d.db", id_prefix="d"))
    assert [(t.offset, t.limit, t.single) for t in tasks] == [(0, 2, False), (2, 2, False),
                                                              (4, 1, False)]
    records, failures = _run(tasks, ("e_form",))
    assert not failures
    assert [r.id for r in records] == [f"d_{k}" for k in range(5)]
    assert [r.source for r in records] == [f"{tmp_path / 'd.db'}:row id {k + 1}" for k in range(5)]
    assert [r.targets["e_form"] for r in records] == [0.5 * k for k in range(5)]
    np.testing.assert_allclose(records[4].positions, atoms[4].positions)


def test_ase_db_failures(tmp_path: Path) -> None:
    import ase.db

    (tmp_path / "text.db").write_text("not sqlite")
    with ase.db.connect(tmp_path / "empty.db") as db:
        db.write(pt_cluster(2))
        db.delete([1])
    details = {"text.db": "not an SQLite (ASE .db) database",
               "empty.db": "the database has no rows", "gone.db": "cannot open: "}
    for name, detail in details.items():
        [task] = readers.db_row_tasks(tmp_path / name, id_prefix="x")
        assert isinstance(task, FailTask) and task.failure.source == str(tmp_path / name)
        assert task.failure.detail.startswith(detail)
    # rows that vanished between planning and parsing fail their range
    [oc] = run_chunk([DbRowsTask(str(tmp_path / "empty.db"), 0, 1, "x", True)], ())
    assert [(f.source, f.reason) for f in oc.failures] == [
        (f"{tmp_path / 'empty.db'}:rows 0..0", "unreadable: expected 1 rows from 0, read 0")]


def test_ase_json_database(tmp_path: Path) -> None:
    atoms = [pt_cluster(2, seed=k) for k in range(2)]
    ase_write(tmp_path / "two.json", atoms, format="json")
    records, failures = _run([FileTask(path=str(tmp_path / "two.json"), fmt="json", id="two")])
    assert not failures
    assert [(r.id, r.source) for r in records] == [
        ("two_0", f"{tmp_path / 'two.json'}:row id 1"),
        ("two_1", f"{tmp_path / 'two.json'}:row id 2")]
    np.testing.assert_allclose(records[1].positions, atoms[1].positions)
    np.testing.assert_array_equal(records[0].pbc, [False] * 3)


# ---- pymatgen JSON ------------------------------------------------------------------------------


def test_pymatgen_json_structures_molecules_and_other_json(tmp_path: Path) -> None:
    from pymatgen.core import Molecule

    tri = triclinic_structure()
    mol = Molecule(["C", "O"], [[0, 0, 0], [0, 0, 1.13]])
    (tmp_path / "s.json").write_text(json.dumps(tri.as_dict()))
    (tmp_path / "l.json").write_text(json.dumps([tri.as_dict(), mol.as_dict()]))
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"a": 1}))
    tasks = [FileTask(path=str(tmp_path / f"{n}.json"), fmt="json", id=n)
             for n in ("s", "l", "bad", "other")]
    records, failures = _run(tasks)
    assert [r.id for r in records] == ["s", "l_0", "l_1"]
    _assert_structure(records[0], tri)
    np.testing.assert_array_equal(records[2].lattice, np.zeros((3, 3)))
    np.testing.assert_array_equal(records[2].pbc, [False] * 3)
    np.testing.assert_array_equal(records[2].atomic_numbers, [6, 8])
    assert [(f.source, f.category) for f in failures] == [
        (str(tmp_path / "bad.json"), "unreadable"), (str(tmp_path / "other.json"), "unreadable")]
    assert failures[0].detail.startswith("not valid JSON: ")
    assert failures[1].detail == ("JSON is neither a pymatgen Structure (keys @module, lattice, "
                                  "sites) nor an ASE database")


def _marker_module(tmp_path: Path) -> tuple[str, Path]:
    """A module on ``tmp_path`` whose import writes a marker file: (its name, the marker)."""
    name = f"deepergat_marker_{tmp_path.name.replace('-', '_')}"
    marker = tmp_path / "imported.txt"
    (tmp_path / f"{name}.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\n"
        "class Payload:\n    def __init__(self, **kw):\n        pass\n"
        "    @classmethod\n    def from_dict(cls, d):\n        return cls()\n")
    return name, marker


def _with_payload(doc: dict[str, Any], where: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A pymatgen structure dict with ``payload`` (an object naming a module) at ``where``."""
    doc = json.loads(json.dumps(doc))
    if where == "site property":
        doc["sites"][0]["properties"]["x"] = payload
    elif where == "nested property":
        doc["sites"][1]["properties"]["x"] = {"list": [1, [2, payload]]}
    elif where == "species":
        doc["sites"][0]["species"][0].update(payload)
    elif where == "lattice":
        doc["lattice"].update(payload)
    elif where == "structure":
        doc.update(payload)
    elif where == "structure property":
        doc["properties"] = {"y": payload}
    return doc


@pytest.mark.parametrize("where", ["site property", "nested property", "species", "lattice",
                                   "structure", "structure property"])
def test_pymatgen_json_naming_a_module_is_refused_and_imports_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """monty's decoder imported any ``@module`` a site property named (``antigravity`` opened a
    browser): wherever a document names a class outside the allow-list it is refused with one
    line, and the module is never imported."""
    name, marker = _marker_module(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    s = Structure(triclinic_structure().lattice, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]],
                  site_properties={"magmom": [1.0, -1.0]})
    doc = _with_payload(s.as_dict(), where, {"@module": name, "@class": "Payload"})
    (tmp_path / "evil.json").write_text(json.dumps([s.as_dict(), doc]))
    records, failures = _run([FileTask(path=str(tmp_path / "evil.json"), fmt="json",
                                       id="evil")])
    assert not marker.exists()
    assert records == []
    [f] = failures
    assert f.category == "refused" and f"names @module {name!r} @class 'Payload'" in f.detail
    assert "\n" not in f.reason


def test_pymatgen_json_builds_what_from_dict_builds(tmp_path: Path) -> None:
    """The reference path: pymatgen's own ``from_dict`` on benign documents (oxidation states,
    dummy species, numpy-array site properties, a lattice given by its parameters, partial
    periodicity, a charged molecule) gives the same records."""
    from pymatgen.core import Lattice, Molecule
    from pymatgen.core.periodic_table import DummySpecies, Species

    lat = Lattice.from_parameters(3.1, 4.2, 5.3, 80, 95, 101, pbc=(True, True, False))
    ox = Structure(lat, [Species("Fe", 2), DummySpecies("X")], [[0.1, 0.2, 0.3], [0.5, 0.6, 0.7]],
                   site_properties={"magmom": [np.array([0.0, 0.0, 1.0]), np.zeros(3)]})
    by_parameters = triclinic_structure().as_dict()
    del by_parameters["lattice"]["matrix"]
    mol = Molecule(["O", "H", "H"], [[0, 0, 0], [0, 0.76, 0.59], [0, -0.76, 0.59]], charge=1,
                   spin_multiplicity=2)
    from monty.json import MontyEncoder

    docs = [json.loads(json.dumps(d, cls=MontyEncoder))
            for d in (ox.as_dict(), by_parameters, mol.as_dict())]
    (tmp_path / "ok.json").write_text(json.dumps(docs))
    records, failures = _run([FileTask(path=str(tmp_path / "ok.json"), fmt="json", id="ok")])
    assert not failures and len(records) == 3
    for r, d in zip(records, docs, strict=True):
        want = (Structure if "lattice" in d else Molecule).from_dict(json.loads(json.dumps(d)))
        np.testing.assert_array_equal(r.positions, want.cart_coords)
        np.testing.assert_array_equal(r.atomic_numbers, [site.specie.Z for site in want])
        if "lattice" in d:
            np.testing.assert_array_equal(r.lattice, want.lattice.matrix)
            np.testing.assert_array_equal(r.pbc, want.lattice.pbc)
    assert records[0].pbc.tolist() == [True, True, False]
    assert records[0].atomic_numbers[0] == 26  # a dummy species has no Z: pack refuses it


def _ase_json_rows(tmp_path: Path) -> dict[str, Any]:
    ase_write(tmp_path / "rows.json", [pt_cluster(2, seed=k) for k in range(2)], format="json")
    return json.loads((tmp_path / "rows.json").read_text())


@pytest.mark.parametrize(("edit", "detail"), [
    ("bomb", "declares shape [1099511627776] (1099511627776 values) but holds 1"),
    ("object array", "is not [shape, numeric dtype, values]"),
    ("band structure", "asks ASE to build a 'bandstructure' object"),
    ("atoms", "asks ASE to build a 'atoms' object"),
    ("nested parameters", "asks ASE to build a 'bandpath' object"),
])
def test_ase_json_objects_and_array_bombs_are_refused(tmp_path: Path, edit: str,
                                                      detail: str) -> None:
    """ASE's JSON decoder allocates the shape an ``__ndarray__`` declares (filled from one
    number: 8 TiB here) and builds objects a file names; such files are refused before ASE
    reads them."""
    doc = _ase_json_rows(tmp_path)
    row = doc["2"]
    if edit == "bomb":
        row["data"] = {"big": {"__ndarray__": [[2**40], "float64", [0.0]]}}
    elif edit == "object array":
        row["data"] = {"o": {"__ndarray__": [[1], "object", [{"a": 1}]]}}
    elif edit == "band structure":
        row["data"] = {"bs": {"__ase_objtype__": "bandstructure", "energies": []}}
    elif edit == "atoms":
        row["data"] = {"a": {"__ase_objtype__": "atoms", "numbers": [1]}}
    elif edit == "nested parameters":
        row["calculator_parameters"] = json.dumps(json.dumps(
            {"kpts": {"__ase_objtype__": "bandpath", "labelseq": "G"}}))
    (tmp_path / "evil.json").write_text(json.dumps(doc))
    records, failures = _run([FileTask(path=str(tmp_path / "evil.json"), fmt="json", id="e")])
    assert records == []
    [f] = failures
    assert f.category == "refused" and detail in f.detail, f.reason


def test_ase_db_json_values_are_checked_before_ase_decodes_them(tmp_path: Path) -> None:
    """A SQLite row's key-value pairs and calculator parameters are JSON that ASE decodes when
    it reads the row: an array bomb or an object there refuses that row range; constraints are
    never built (a row keeps none)."""
    import sqlite3

    import ase.db
    from ase.constraints import FixAtoms

    good = pt_cluster(3)
    good.set_constraint(FixAtoms(indices=[0]))
    for name, value in (("bomb", {"x": {"__ndarray__": [[2**40], "float64", [0.0]]}}),
                        ("object", {"x": {"__ase_objtype__": "vibrationsdata"}})):
        path = tmp_path / f"{name}.db"
        with ase.db.connect(path) as db:
            db.write(good, e=1.0)
            db.write(pt_cluster(2), e=2.0)
        with sqlite3.connect(path) as con:
            con.execute("UPDATE systems SET calculator_parameters = ? WHERE id = 2",
                        (json.dumps(value),))
        con.close()
        records, failures = _run(list(readers.db_row_tasks(path, id_prefix=name)))
        assert records == []
        [f] = failures
        assert f.category == "refused", f.reason
    path = tmp_path / "fixed.db"
    with ase.db.connect(path) as db:
        db.write(good, e=1.0)
    records, failures = _run(list(readers.db_row_tasks(path, id_prefix="fixed")), ("e",))
    assert not failures and records[0].targets == {"e": 1.0}
    np.testing.assert_array_equal(records[0].positions, good.positions)


# ---- CSV tables with a CIF column ---------------------------------------------------------------


def test_csv_rows_of_the_perov5_fixture(tmp_path: Path) -> None:
    import csv

    path = data_file("perov5_sample.csv")
    tasks = list(readers.csv_tasks(path, cif_column="cif", id_column=None,
                                   target_columns=["heat_ref"], id_prefix="perov5_sample",
                                   path_ids=False))
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(tasks) == len(rows) and all(isinstance(t, CifTextTask) for t in tasks)
    assert [t.id for t in tasks[:3]] == [r["material_id"] for r in rows[:3]]
    assert tasks[1].source == f"{path}:row 2 (id {rows[1]['material_id']})"
    records, failures = _run(tasks[:5], ("heat_ref",))
    assert not failures
    for r, row in zip(records, rows[:5], strict=True):
        _assert_structure(r, Structure.from_str(row["cif"], fmt="cif"))
        assert r.targets == {"heat_ref": float(row["heat_ref"])}


def test_csv_ids_failures_and_target_text(tmp_path: Path) -> None:
    cif = _cif(nacl_structure())
    path = tmp_path / "t.csv"
    path.write_text("\n".join([
        "material_id,cif,y",
        f'm-1,"{cif}",1.5',
        f'm-2,"{cif}",',  # an empty target is NaN
        f',"{cif}",2',  # an empty id
        f'm-4,"{cif}"',  # a field short
        f'm-5,"{cif}",abc',  # a target that is no number
    ]) + "\n")
    tasks = list(readers.csv_tasks(path, cif_column="cif", id_column=None, target_columns=["y"],
                                   id_prefix="t", path_ids=True))
    assert [t.id for t in tasks if isinstance(t, CifTextTask)] == ["t:m-1", "t:m-2", "t:m-5"]
    records, failures = _run(tasks, ("y",))
    assert [r.targets["y"] for r in records[:1]] == [1.5] and math.isnan(records[1].targets["y"])
    assert [(f.source, f.reason) for f in failures] == [
        (f"{path}:row 3", "empty id: column 'material_id'"),
        (f"{path}:row 4", "unreadable: row has a different number of fields"),
        (f"{path}:row 5 (id m-5)", "bad target: target 'y' value 'abc' is not a number")]
    g = tmp_path / "noid.csv"
    g.write_text(f'structure\n"{cif}"\n"{cif}"\n')
    ids = [t.id for t in readers.csv_tasks(g, cif_column="structure", id_column=None,
                                           target_columns=[], id_prefix="noid", path_ids=False)]
    assert ids == ["noid_0", "noid_1"]


def test_csv_columns_are_checked_before_any_row(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("id,cif\n")
    assert readers.check_csv_columns(path, cif_column="cif", id_column=None,
                                     target_columns=[]) == "id"
    with pytest.raises(DeepergatError, match=r"t\.csv: no target column 'y'; columns are 'id', "
                                             r"'cif'"):
        readers.check_csv_columns(path, cif_column="cif", id_column=None, target_columns=["y"])
    with pytest.raises(DeepergatError, match=r"no id column 'name'"):
        list(readers.csv_tasks(path, cif_column="cif", id_column="name", target_columns=[],
                               id_prefix="t", path_ids=False))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DeepergatError, match=r"empty\.csv: empty CSV file"):
        readers.read_csv_header(tmp_path / "empty.csv")


# ---- archives -----------------------------------------------------------------------------------


def test_zip_members_ids_sources_and_refusals(tmp_path: Path) -> None:
    tri, nacl = _cif(triclinic_structure()), _cif(nacl_structure())
    path = tmp_path / "gen.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("crystals/", "")
        z.writestr("crystals/tri.cif", tri)
        z.writestr("../evil.cif", nacl)
        z.writestr("notes.txt", "ignored")
        z.writestr("run/POSCAR", nacl_structure().to(fmt="poscar"))
        z.writestr("run/traj.xyz", _xyz([pt_cluster(2, seed=k) for k in range(2)]))
        z.writestr("bin.cif", b"\xff\xfe\x00")
    tasks = list(readers.archive_tasks(path, path_ids=False))
    records, failures = _run(tasks)
    assert [(r.id, r.source) for r in records] == [
        ("tri", f"{path}:crystals/tri.cif"), ("POSCAR", f"{path}:run/POSCAR"),
        ("traj_0", f"{path}:run/traj.xyz:frame 0"), ("traj_1", f"{path}:run/traj.xyz:frame 1")]
    _assert_structure(records[0], Structure.from_str(tri, fmt="cif"))
    assert [(f.source, f.reason) for f in failures] == [
        (f"{path}:../evil.cif", "unsafe member: unsafe path (absolute or with ..): refused"),
        (f"{path}:bin.cif", "unreadable: not a UTF-8 text file")]
    ids = [r.id for r in _run(readers.archive_tasks(path, path_ids=True))[0]]
    assert ids[:2] == [f"{path.as_posix()}/crystals/tri.cif", f"{path.as_posix()}/run/POSCAR"]


def test_tar_links_damaged_archives_and_archives_without_structures(tmp_path: Path) -> None:
    path = tmp_path / "t.tar.gz"
    with tarfile.open(path, "w:gz") as t:
        data = _cif(nacl_structure()).encode()
        info = tarfile.TarInfo("a/nacl.cif")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("a/link.cif")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        t.addfile(link)
    records, failures = _run(readers.archive_tasks(path, path_ids=False))
    assert [r.id for r in records] == ["nacl"]
    assert [(f.source, f.reason) for f in failures] == [
        (f"{path}:a/link.cif", "unsafe member: a link: refused")]
    (tmp_path / "cut.zip").write_bytes(path.read_bytes()[:40])
    [task] = readers.archive_tasks(tmp_path / "cut.zip", path_ids=False)
    assert isinstance(task, FailTask) and task.failure.detail.startswith("damaged archive: ")
    # the MatDeepLearn fixture holds JSON files and a targets.csv: formats read only as files,
    # each named, and nothing an archive reads
    fixture = data_file("pt_clusters_100.tar.gz")
    *members, last = readers.archive_tasks(fixture, path_ids=False)
    assert last == FailTask(Failure(str(fixture), "unreadable",
                                    "no CIF, POSCAR or extxyz files inside"))
    assert len(members) == 101 and {t.failure.category for t in members} == {
        "not read from archives"}
    assert sum(t.failure.source.endswith("/targets.csv") for t in members) == 1
    assert members[0].failure.detail == ("JSON files are read as files, not from inside "
                                         "archives; unpack the archive")


def _zeros_member(archive: Path, name: str, nbytes: int, *, mode: str = "w:gz",
                  extra: dict[str, bytes] | None = None) -> None:
    """An archive holding ``nbytes`` zero bytes as ``name`` (compressed a thousandfold), and
    the ``extra`` members after it."""
    zeros = b"\0" * (1 << 20)
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            with z.open(name, "w", force_zip64=True) as fh:
                for _ in range(nbytes >> 20):
                    fh.write(zeros)
            for k, v in (extra or {}).items():
                z.writestr(k, v)
        return

    class Zeros(io.RawIOBase):
        left = nbytes

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            n = min(len(b), self.left)
            b[:n] = bytes(n)
            self.left -= n
            return n

    with tarfile.open(archive, mode, **({"compresslevel": 1} if "gz" in mode else {})) as t:
        info = tarfile.TarInfo(name)
        info.size = nbytes
        t.addfile(info, io.BufferedReader(Zeros()))
        for k, v in (extra or {}).items():
            info = tarfile.TarInfo(k)
            info.size = len(v)
            t.addfile(info, io.BytesIO(v))


@pytest.mark.parametrize("name", ["bomb.zip", "bomb.tar.gz"])
def test_an_archive_bomb_is_refused_in_bounded_memory(tmp_path: Path, name: str) -> None:
    """A member of 256 MiB in a ~300 KB archive (read whole, it took gigabytes): refused by its
    declared size before any of it is read (zip), or once the archive has expanded past its
    budget while passing over it (a tar stream); memory stays within a few MiB, never the
    member's size."""
    import tracemalloc

    from deepergat.io.readers.archive import MAX_MEMBER_BYTES

    path = tmp_path / name
    nacl = _cif(nacl_structure()).encode()
    _zeros_member(path, "big.cif", 4 * MAX_MEMBER_BYTES, extra={"nacl.cif": nacl})
    assert path.stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        tasks = list(readers.archive_tasks(path, path_ids=False))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
    failures = [t.failure for t in tasks if isinstance(t, FailTask)]
    assert failures[0] == Failure(f"{path}:big.cif", "too large",
                                  f"holds {4 * MAX_MEMBER_BYTES} bytes; members of at most "
                                  f"{MAX_MEMBER_BYTES} bytes are read")
    if name.endswith(".zip"):  # the rest of a zip is still read
        assert [t.id for t in tasks if isinstance(t, TextTask)] == ["nacl"]
    else:  # a stream is passed over by expanding it: the budget ends the archive
        assert [(f.source, f.category) for f in failures[1:]] == [(str(path), "too large")]
        assert "expands past 200 bytes per byte of archive" in failures[1].detail


def test_many_members_that_expand_past_the_budget_stop_the_archive(tmp_path: Path) -> None:
    """Members each under the member limit, in a bzip2 tar that expands 100,000-fold: the
    archive is read until it has expanded past `MAX_EXPANSION` times its size (at least one
    member's limit), then refused with one failure naming it."""
    from deepergat.io.readers.archive import MAX_MEMBER_BYTES

    path = tmp_path / "many.tar"  # compressed with bzip2: recognised by content
    each = MAX_MEMBER_BYTES // 2
    with tarfile.open(path, "w:bz2") as t:
        for k in range(4):
            info = tarfile.TarInfo(f"notes{k}.txt")
            info.size = each
            t.addfile(info, io.BytesIO(bytes(each)))
    tasks = list(readers.archive_tasks(path, path_ids=False))
    assert [(t.failure.source, t.failure.category) for t in tasks] == [(str(path), "too large")]


def test_a_huge_member_name_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """tar reads a long (GNU or pax) member name whole: a 96 MiB name is refused by the
    archive's budget before tarfile allocates it."""
    import tracemalloc

    path = tmp_path / "names.tar.gz"
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT, compresslevel=1) as t:
        info = tarfile.TarInfo("a" * (96 << 20) + ".cif")
        t.addfile(info, io.BytesIO(b""))
    tracemalloc.start()
    try:
        tasks = list(readers.archive_tasks(path, path_ids=False))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [(t.failure.source, t.failure.category) for t in tasks] == [(str(path), "too large")]
    assert peak < 8 << 20


def test_every_member_is_read_refused_or_named(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """Nothing in an archive is dropped silently: nested archives and formats read only as
    files are failures naming them, special files are refused, and members in no structure
    format are ignored with one warning naming them (as in folders)."""
    nacl = _cif(nacl_structure())
    inner = tmp_path / "inner.zip"
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("x.cif", nacl)
    path = tmp_path / "outer.tar"
    with tarfile.open(path, "w") as t:
        for name, data in (("a.cif", nacl.encode()), ("inner.zip", inner.read_bytes()),
                           ("deeper.tar.gz", b"\x1f\x8b"), ("s.json", b"{}"),
                           ("t.csv", b"id,cif\n"), ("d.db", b""), ("g.pt", b""),
                           ("README.md", b"hello"), ("notes.txt", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        fifo = tarfile.TarInfo("pipe.cif")
        fifo.type = tarfile.FIFOTYPE
        t.addfile(fifo)
    with caplog.at_level("WARNING"):
        tasks = list(readers.archive_tasks(path, path_ids=False))
    assert [t.id for t in tasks if isinstance(t, TextTask)] == ["a"]
    got = [(t.failure.source.removeprefix(f"{path}:"), t.failure.category)
           for t in tasks if isinstance(t, FailTask)]
    assert got == [("inner.zip", "nested archive"), ("deeper.tar.gz", "nested archive"),
                   ("s.json", "not read from archives"), ("t.csv", "not read from archives"),
                   ("d.db", "not read from archives"), ("g.pt", "not read from archives"),
                   ("pipe.cif", "unsafe member")]
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning == (f"{path}: ignored 2 members that are not structure files "
                       "(README.md, notes.txt)")


# ---- MatDeepLearn folders -----------------------------------------------------------------------


def test_matdeeplearn_fixture_rows_targets_and_ids(tmp_path: Path) -> None:
    with tarfile.open(data_file("pt_clusters_100.tar.gz")) as t:
        t.extractall(tmp_path, filter="data")
    [folder] = [p.parent for p in tmp_path.rglob("targets.csv")]
    table = [line.split(",") for line in (folder / "targets.csv").read_text().split()]
    tasks = list(readers.matdeeplearn_tasks(folder, target_names=["energy"], path_ids=False))
    assert len(tasks) == len(table) == 100 and all(isinstance(t, FileTask) for t in tasks)
    first = tasks[0]
    assert (first.id, first.expect_one, first.raw_targets) == (
        table[0][0], True, (("energy", table[0][1]),))
    assert first.source == f"{folder / (table[0][0] + '.json')} (targets.csv row 1)"
    records, failures = _run(tasks[:3], ("energy",))
    assert not failures and [r.id for r in records] == [row[0] for row in table[:3]]
    assert [r.targets for r in records] == [{"energy": float(row[1])} for row in table[:3]]
    path_ids = list(readers.matdeeplearn_tasks(folder, target_names=["energy"], path_ids=True))
    assert path_ids[0].id == str(folder / (table[0][0] + ".json"))


def test_matdeeplearn_missing_ambiguous_and_several(tmp_path: Path) -> None:
    nacl = nacl_structure()
    (tmp_path / "a.cif").write_text(_cif(nacl))
    (tmp_path / "b.cif").write_text(_cif(nacl))
    (tmp_path / "b.vasp").write_text(nacl.to(fmt="poscar"))
    (tmp_path / "c.txt").write_text("x")
    (tmp_path / "t.xyz").write_text(_xyz([pt_cluster(2), pt_cluster(2, seed=1)]))
    (tmp_path / "targets.csv").write_text("a,1\nb,2\nc,3\nd,4\n\nt,5\n")
    tasks = list(readers.matdeeplearn_tasks(tmp_path, target_names=["y"], path_ids=False))
    records, failures = _run(tasks, ("y",))
    assert [(r.id, r.targets) for r in records] == [("a", {"y": 1.0})]
    table = tmp_path / "targets.csv"
    assert [(f.source, f.reason) for f in failures] == [
        (f"{table}:row 2 (id b)", "ambiguous structure file: several files: b.cif, b.vasp"),
        (f"{table}:row 3 (id c)", "missing structure file: c.txt is not a structure format "
                                  "deepergat reads"),
        (f"{table}:row 4 (id d)", f"missing structure file: no structure file d.<ext> in "
                                  f"{tmp_path}"),
        (f"{tmp_path / 't.xyz'} (targets.csv row 6)",
         "several structures: holds 2 structures where exactly one is expected")]
    with pytest.raises(DeepergatError, match=r"targets\.csv:row 1 \(id a\): 1 value column\(s\) "
                                             r"but 2 target name\(s\)"):
        list(readers.matdeeplearn_tasks(tmp_path, target_names=["y", "z"], path_ids=False))


# ---- the worker side ----------------------------------------------------------------------------


def test_run_chunk_keeps_order_and_reports_every_task(tmp_path: Path) -> None:
    (tmp_path / "a.cif").write_text(_cif(nacl_structure()))
    (tmp_path / "garbage.pt").write_bytes(b"not a pickle")
    planned = Failure("x.txt", "unknown format", "not a format deepergat reads")
    outcomes = run_chunk([
        FailTask(planned),
        FileTask(path=str(tmp_path / "a.cif"), fmt="cif", id="a",
                 raw_targets=(("y", " 2.5 "), ("z", ""))),
        FileTask(path=str(tmp_path / "a.cif"), fmt="mol2", id="m"),
        FileTask(path=str(tmp_path / "garbage.pt"), fmt="generator", id="g"),
    ], ["y", "z"])
    assert all(isinstance(oc, Outcome) for oc in outcomes) and len(outcomes) == 4
    assert outcomes[0].failures == [planned] and not outcomes[0].records
    [r] = outcomes[1].records
    assert r.targets["y"] == 2.5 and math.isnan(r.targets["z"])
    assert outcomes[2].failures == [Failure(str(tmp_path / "a.cif"), "unknown format",
                                            "deepergat does not read 'mol2' files")]
    [f] = outcomes[3].failures
    assert f.category == "unreadable" and f.detail.startswith(
        "not a readable generator sample file: ")


def test_one_failure_detail_is_one_bounded_line() -> None:
    from deepergat.io.readers.records import one_line

    assert one_line("a\n  b\tc") == "a b c"
    assert one_line(ValueError()) == "ValueError"
    long = one_line("x" * 1000)
    assert len(long) == 400 and long.endswith("...")


def test_tasks_are_picklable_for_worker_processes(tmp_path: Path) -> None:
    import pickle

    tasks = [FileTask(path="a.cif", fmt="cif", id="a", raw_targets=(("y", "1"),)),
             CifTextTask(source="t.csv:row 1", id="m", text="data_x"),
             FramesTask(path="t.xyz", first=3, texts=("1\n\nPt 0 0 0\n",), id="t", single=False),
             DbRowsTask(path="d.db", offset=0, limit=2, id="d", single=False),
             FailTask(Failure("x", "unreadable", "why")),
             TextTask(source="a.zip:m.cif", fmt="cif", id="m", text="data_x")]
    assert pickle.loads(pickle.dumps(tasks)) == tasks
    record = Record("a", "a.cif", np.eye(3), np.ones(3, bool), np.array([1]), np.zeros((1, 3)),
                    {"y": 1.0})
    back = pickle.loads(pickle.dumps(Outcome(records=[record])))
    assert back.records[0].id == "a" and back.records[0].targets == {"y": 1.0}
