"""`deepergat.io.readers.cif_gemmi`: gemmi's CIF reader gives exactly the record pymatgen's path
gives (same lattice, atoms, order and positions, to the bit), or declines and pymatgen reads the
CIF (issue 27).

The tests of tricky CIFs that the fast reader takes skip without gemmi; the fallback and
failure tests run with or without it (without gemmi every CIF takes pymatgen's path).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from structure_helpers import data_file

from deepergat.io.readers import cif as cif_module
from deepergat.io.readers.cif import MAX_CIF_ATOMS, parse_cif_text
from deepergat.io.readers.cif_gemmi import FastCif, gemmi_available, read_cif
from deepergat.io.readers.records import Failure, Record, TaskError

pytest.importorskip("pymatgen")
# the fallback cases are odd CIFs on purpose: pymatgen warns about each as it parses it
# (and spglib, which CifWriter's symmetry search calls, warns about its own error handling)
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning:pymatgen.io.cif"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning:spglib")]


# ---- CIF texts ---------------------------------------------------------------------------------


def _ops(space_group: str) -> list[str]:
    """The operations of a space group as pymatgen lists them (``x, y, z`` strings)."""
    from pymatgen.symmetry.groups import SpaceGroup

    return [op.as_xyz_str() for op in SpaceGroup(space_group).symmetry_ops]


def _cif(name: str, cell: tuple[Any, ...], sites: list[tuple[Any, ...]], *,
         ops: list[str] | None = None, ops_key: str = "_symmetry_equiv_pos_as_xyz",
         oxidation: dict[str, float] | None = None, occupancy: bool = False,
         head: str = "", tail: str = "") -> str:
    """A CIF of one block: the cell (a, b, c, alpha, beta, gamma as written), the listed
    operations, the sites (label, type symbol, x, y, z[, occupancy]) and, optionally, an
    oxidation-state loop and extra text before the sites or at the end."""
    lines = [f"data_{name}", head]
    lines += [f"_cell_{k} {v}" for k, v in zip(
        ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma"), cell,
        strict=True)]
    if ops is not None:
        lines += ["loop_", "_symmetry_equiv_pos_site_id", ops_key]
        lines += [f"{k + 1} '{op}'" for k, op in enumerate(ops)]
    if oxidation:
        lines += ["loop_", "_atom_type_symbol", "_atom_type_oxidation_number"]
        lines += [f"{s} {v}" for s, v in oxidation.items()]
    lines += ["loop_", "_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x",
              "_atom_site_fract_y", "_atom_site_fract_z"]
    if occupancy:
        lines.append("_atom_site_occupancy")
    lines += [" ".join(str(v) for v in site) for site in sites]
    return "\n".join([*lines, tail]) + "\n"


def _tricky() -> dict[str, str]:
    """CIFs the fast reader takes, each with something pymatgen does its own way."""
    wurtzite = _cif("ZnO", (3.2495, 3.2495, 5.2069, 90, 90, 120),
                    [("Zn1", "Zn2+", 0.33333, 0.66667, 0.0), ("O1", "O2-", 0.33333, 0.66667,
                                                                  0.3821)],
                    ops=_ops("P6_3mc"), oxidation={"Zn2+": 2, "O2-": -2})
    return {
        # hexagonal cell; 1/3, 2/3 written as 0.33333, 0.66667; oxidation-state type symbols
        "wurtzite, oxidation states": wurtzite,
        "wurtzite, CRLF line ends": wurtzite.replace("\n", "\r\n"),
        # 192 operations with centring: every site on a special position, copies merged
        "rock salt, Fm-3m listed": _cif("NaCl", (5.64, 5.64, 5.64, 90, 90, 90),
                                        [("Na1", "Na", 0, 0, 0), ("Cl1", "Cl", 0.5, 0.5, 0.5)],
                                        ops=_ops("Fm-3m")),
        # operations like -x+y+1/3 (three terms: summed as pymatgen's np.dot sums them)
        "Bi2Te3, R-3m hexagonal setting": _cif(
            "Bi2Te3", (4.386, 4.386, 30.497, 90, 90, 120),
            [("Bi1", "Bi", 0, 0, 0.4001), ("Te1", "Te", 0, 0, 0), ("Te2", "Te", 0, 0, 0.7906)],
            ops=_ops("R-3m")),
        # monoclinic; uncertainties; coordinates outside [0, 1); sites on inversion centres;
        # the elements interleaved (pymatgen groups and sorts them)
        "monoclinic P2_1/c, interleaved sites": _cif(
            "mono", ("5.1(1)", "6.2", "7.30(5)", 90, "103.5(2)", 90),
            [("O1", "O", "0.1234(5)", -0.25, 1.3), ("Ti1", "Ti", 0.5, 0.5, 0.5),
             ("O2", "O", 0.7, 0.1, 0.9), ("Si1", "Si", 0, 0, 0), ("Ti2", "Ti", 0, 0, 0.5)],
            ops=_ops("P2_1/c"), occupancy=False),
        # Ca, He and Ar have no electronegativity in pymatgen (NaN): their sites sort by the
        # comparisons pymatgen makes, in its order
        "NaN electronegativities": _cif(
            "CaHeAr", (7.1, 7.3, 7.7, 90, 90, 90),
            [("O1", "O", 0.1, 0.2, 0.3, 1), ("Ca1", "Ca", 0.5, 0.5, 0.5, 1),
             ("He1", "He", 0.9, 0.1, 0.2, "1.0"), ("Ti1", "Ti", 0, 0, 0, 1),
             ("O2", "O", 0.6, 0.7, 0.8, 1), ("Ca2", "Ca", 0.25, 0.75, 0.5, 1),
             ("Ar1", "Ar", 0.75, 0.25, 0.1, 1), ("Kr1", "Kr", 0.4, 0.9, 0.6, 1)],
            ops=["x, y, z"], occupancy=True),
        # two oxidation states of one element (Species ordered by their strings)
        "mixed valence": _cif(
            "Fe3O4", (5.9, 5.9, 5.9, 60, 60, 60),
            [("Fe1", "Fe3+", 0.125, 0.125, 0.125), ("Fe2", "Fe2+", 0.5, 0.5, 0.5),
             ("O1", "O2-", 0.26, 0.26, 0.26), ("Fe3", "Fe3+", 0.5, 0, 0.5),
             ("O2", "O2-", 0.74, 0.74, 0.23)],
            ops=["x, y, z", "-x, -y, -z"], oxidation={"Fe3+": 3, "Fe2+": 2, "O2-": -2}),
        # triclinic, the operations under the other key, a single-value P1 operation elsewhere
        "triclinic P-1, symop key": _cif(
            "tri", (3.1, 4.2, 5.3, 81, 97, 109),
            [("Si1", "Si", 0.1, 0.2, 0.3), ("O1", "O", 0.6, 0.3, 0.9)],
            ops=["x,y,z", "-x,-y,-z"], ops_key="_space_group_symop_operation_xyz"),
        "P1 as one value, comments, a text field": _cif(
            "P1", (4, 5, 6, 90, 95, 90), [("C1", "C", 0.1, 0.1, 0.1), ("N1", "N", 0.5, 0.5, 0.5)],
            head="# a comment line\n_symmetry_equiv_pos_as_xyz 'x, y, z'\n"
                 "_publ_section_title\n;\nA title; with 'quotes' and _tags\n  # indented\n;\n"
                 "_chemical_formula_sum 'C N'"),
        # zero implicit hydrogens (pymatgen warns only where there are some)
        "attached hydrogens all 0": _cif(
            "H0", (4, 4, 4, 90, 90, 90), [("C1", "C", 0, 0, 0), ("N1", "N", 0.5, 0.5, 0.5)],
            ops=["x, y, z"], tail="loop_\n_atom_site_attached_hydrogens_label\n"
                                   "_atom_site_attached_hydrogens\nC1 0\nN1 0"),
    }


def _symmetrized(limit: int) -> dict[str, str]:
    """Rows of the perovskite fixture written back with their symmetry (distinct sites and the
    listed operations) and oxidation states."""
    import csv

    from pymatgen.core import Structure
    from pymatgen.io.cif import CifWriter

    with open(data_file("perov5_sample.csv"), newline="") as fh:
        rows = [row["cif"] for _, row in zip(range(limit), csv.DictReader(fh), strict=False)]
    out = {}
    for k, text in enumerate(rows):
        s = Structure.from_str(text, fmt="cif")
        out[f"perov5 row {k} symmetrized"] = str(CifWriter(s, symprec=0.1))
        s.add_oxidation_state_by_element({el.symbol: (el.common_oxidation_states or (1,))[0]
                                          for el in s.elements})
        out[f"perov5 row {k} with oxidation states"] = str(CifWriter(s, symprec=0.1))
    return out


# ---- comparing the two paths -------------------------------------------------------------------


def _outcome(text: str, *, fast: bool, expect_one: bool = False) -> list[Record] | tuple[str, ...]:
    """What `parse_cif_text` gives: the records, or the failure (category, detail), with the
    failures of blocks that failed alone."""
    failures: list[Failure] = []
    try:
        records = parse_cif_text(text, "t.cif", "t", expect_one=expect_one, failures=failures,
                                 fast=fast)
    except TaskError as e:
        return ("failure", e.category, e.detail)
    except Exception as e:  # pymatgen's own errors, which `run_chunk` reports as unreadable
        return ("error", type(e).__name__, str(e))
    if failures:
        return ("failures", *(f.reason for f in failures), str(len(records)))
    return records


def _assert_same(a: list[Record] | tuple[str, ...], b: list[Record] | tuple[str, ...]) -> None:
    """The same failure, or the same records to the bit (signed zeros included)."""
    if isinstance(a, tuple) or isinstance(b, tuple):
        assert a == b
        return
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x.id, x.source, x.targets) == (y.id, y.source, y.targets)
        np.testing.assert_array_equal(x.atomic_numbers, y.atomic_numbers)
        assert x.atomic_numbers.dtype == y.atomic_numbers.dtype == np.int64
        np.testing.assert_array_equal(x.pbc, y.pbc)
        for u, v in ((x.lattice, y.lattice), (x.positions, y.positions)):
            assert u.shape == v.shape and u.dtype == v.dtype == np.float64
            assert u.tobytes() == v.tobytes()


def _same_both_ways(text: str, expect_one: bool = False) -> list[Record] | tuple[str, ...]:
    fast = _outcome(text, fast=True, expect_one=expect_one)
    _assert_same(fast, _outcome(text, fast=False, expect_one=expect_one))
    return fast


# ---- (a) tricky CIFs: the fast reader takes them and matches pymatgen ---------------------------


@pytest.mark.parametrize("name", list(_tricky()))
def test_the_fast_reader_gives_pymatgens_record(name: str) -> None:
    pytest.importorskip("gemmi")
    text = _tricky()[name]
    got = read_cif(text, MAX_CIF_ATOMS)
    assert isinstance(got, FastCif), got  # taken, not declined
    records = _same_both_ways(text)
    assert isinstance(records, list) and len(records) == 1


def test_the_tricky_cifs_expand_and_merge_symmetry_copies() -> None:
    """The cases do what they are there for: copies merged on special positions, the operations
    with three terms present, the order not the CIF's."""
    pytest.importorskip("gemmi")
    cases = _tricky()
    counts = {name: len(read_cif(text, MAX_CIF_ATOMS).atomic_numbers)  # type: ignore[union-attr]
              for name, text in cases.items()}
    assert counts["rock salt, Fm-3m listed"] == 8  # 2 sites x 192 operations, merged
    assert counts["wurtzite, oxidation states"] == 4
    assert counts["Bi2Te3, R-3m hexagonal setting"] == 15
    assert counts["monoclinic P2_1/c, interleaved sites"] == 4 + 2 + 4 + 2 + 2
    mono = read_cif(cases["monoclinic P2_1/c, interleaved sites"], MAX_CIF_ATOMS)
    assert isinstance(mono, FastCif)
    assert mono.atomic_numbers.tolist() == [22] * 4 + [14] * 2 + [8] * 8  # Ti, Si, O
    nan = read_cif(cases["NaN electronegativities"], MAX_CIF_ATOMS)
    assert isinstance(nan, FastCif) and sorted(nan.atomic_numbers.tolist()) == sorted(
        [8, 20, 2, 22, 8, 20, 18, 36])


def test_symmetrized_fixture_rows_read_the_same() -> None:
    pytest.importorskip("gemmi")
    for name, text in _symmetrized(8).items():
        assert isinstance(read_cif(text, MAX_CIF_ATOMS), FastCif), name
        _same_both_ways(text, expect_one=True)


def test_fixture_rows_read_the_same_and_pymatgen_is_not_called(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where gemmi is installed `parse_cif_text` reads the plain fixture rows without pymatgen's
    parser, to the same records."""
    pytest.importorskip("gemmi")
    import csv

    for fixture, limit in (("perov5_sample.csv", 40), ("carbon24_sample.csv", 20)):
        with open(data_file(fixture), newline="") as fh:
            rows = [row["cif"] for _, row in zip(range(limit), csv.DictReader(fh), strict=False)]
        expected = [_outcome(text, fast=False, expect_one=True) for text in rows]
        with monkeypatch.context() as m:
            m.setattr(cif_module, "_cif_structures", _refuse)
            got = [_outcome(text, fast=True, expect_one=True) for text in rows]
        for a, b in zip(got, expected, strict=True):
            _assert_same(a, b)


def _refuse(text: str) -> Any:
    raise AssertionError("pymatgen's parser was called")


def test_blocks_of_one_file_each_take_the_fast_reader() -> None:
    pytest.importorskip("gemmi")
    cases = _tricky()
    text = ("data_global\n_journal_name_full 'J'\n\n" + cases["rock salt, Fm-3m listed"] + "\n"
            + cases["Bi2Te3, R-3m hexagonal setting"] + "\n"
            + _cif("flat", (3, 3, 0, 90, 90, 90), [("Fe1", "Fe", 0, 0, 0)], ops=["x, y, z"]))
    with pytest.warns(UserWarning, match="holds no atom sites"):
        got = _same_both_ways(text)
    assert got[0] == "failures" and got[1].startswith("unreadable: ") and got[-1] == "2"


# ---- (b) what the fast reader declines: pymatgen reads it, with pymatgen's result ---------------


def _declined() -> dict[str, tuple[str, str]]:
    """CIFs the fast reader declines: name -> (text, the reason it gives, in part)."""
    cell = (4.0, 4.0, 4.0, 90, 90, 90)
    two = [("Na1", "Na", 0, 0, 0), ("Cl1", "Cl", 0.5, 0.5, 0.5)]
    p1 = ["x, y, z"]
    mcif = ("data_mag\n_cell_length_a 3\n_cell_length_b 3\n_cell_length_c 3\n"
            "_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n"
            "loop_\n_space_group_symop_magn_operation.id\n"
            "_space_group_symop_magn_operation.xyz\n1 x,y,z,+1\n"
            "loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n"
            "_atom_site_fract_y\n_atom_site_fract_z\nFe1 Fe 0 0 0\n"
            "loop_\n_atom_site_moment_label\n_atom_site_moment_crystalaxis_x\n"
            "_atom_site_moment_crystalaxis_y\n_atom_site_moment_crystalaxis_z\nFe1 0 0 1\n")
    labels_only = _cif("lab", cell, two, ops=p1).replace("_atom_site_type_symbol\n", "").replace(
        "Na1 Na ", "Na1 ").replace("Cl1 Cl ", "Cl1 ")
    return {
        "partial occupancy": (_cif("dis", cell, [("Fe1", "Fe", 0, 0, 0, 0.5),
                                                 ("O1", "O", 0.5, 0.5, 0.5, 1)],
                                   ops=p1, occupancy=True), "partial occupancy"),
        "occupancy below 1": (_cif("occ", cell, [("Fe1", "Fe", 0, 0, 0, "0.98")], ops=p1,
                                   occupancy=True), "partial occupancy"),
        "occupancy '.' (pymatgen drops the site)": (
            _cif("dot", cell, [("Fe1", "Fe", 0, 0, 0, "."), ("O1", "O", 0.5, 0.5, 0.5, 1)],
                 ops=p1, occupancy=True), "partial occupancy"),
        "no type symbols (labels read)": (labels_only, "_atom_site_type_symbol"),
        "water type symbol": (_cif("wat", cell, [("O1", "Wat", 0, 0, 0)], ops=p1), "type symbol"),
        "hydroxide type symbol": (_cif("oh", cell, [("O1", "OH", 0, 0, 0)], ops=p1),
                                  "type symbol"),
        "Pauling-file symbol": (_cif("pf", cell, [("Nb1", "'0.8Nb + 0.2Zr'", 0, 0, 0)], ops=p1),
                                "type symbol"),
        "magnetic CIF": (mcif, "magnetic"),
        "operations from the H-M symbol": (
            _cif("hm", cell, two, head="_symmetry_space_group_name_H-M 'F m -3 m'"),
            "no listed symmetry operations"),
        "operations from the number": (_cif("num", cell, two, head="_space_group_IT_number 225"),
                                       "no listed symmetry operations"),
        "no operations at all (pymatgen takes P1)": (_cif("none", cell, two),
                                                     "no listed symmetry operations"),
        "Cartesian sites only": (
            _cif("cart", cell, two, ops=p1).replace("_fract_", "_Cartn_"), "no _atom_site_fract"),
        "a site symmetry puts on another": (
            _cif("merge", (5.64,) * 3 + (90,) * 3,
                 [*two, ("Na2", "Na", 0.5, 0.5, 0)], ops=_ops("Fm-3m")), "merges"),
        "two sites at the same coordinates": (
            _cif("same", cell, [("Na1", "Na", 0, 0, 0), ("Cl1", "Cl", 0, 0, 0)], ops=["-x,-y,-z"]),
            "same coordinates"),
        "implicit hydrogens": (
            _cif("h", cell, two, ops=p1, tail="loop_\n_atom_site_attached_hydrogens_label\n"
                                               "_atom_site_attached_hydrogens\nNa1 1\nCl1 0"),
            "implicit hydrogens"),
        "oxidation state 0 beside 2+": (
            _cif("ox", cell, [("Fe1", "Fe0+", 0, 0, 0), ("Fe2", "Fe2+", 0.5, 0.5, 0.5)], ops=p1,
                 oxidation={"Fe0+": 0, "Fe2+": 2}), "oxidation state 0"),
        "non-ASCII text": (_cif("na", cell, two, ops=p1, head="_publ_author_name 'M\u00fcller'"),
                           "non-ASCII"),
        "a comment after a value": (_cif("c", cell, two, ops=p1).replace(
            "_cell_length_a 4.0", "_cell_length_a 4.0 # about"), "'#'"),
        "LOOP_ in capitals": (_cif("cap", cell, two, ops=p1).replace("loop_", "LOOP_"),
                              "reserved words"),
        "a global_ block": ("global_\n_x 1\n" + _cif("g", cell, two, ops=p1), "reserved words"),
        "a coordinate '?'": (_cif("q", cell, [("Na1", "Na", "?", 0, 0)], ops=p1), "not a number"),
        "a zero-thickness cell": (_cif("flat", (4, 4, 0.001, 90, 90, 90), two, ops=p1),
                                  "degenerate cell"),
        "a cell parameter missing": (_cif("nocell", cell, two, ops=p1).replace(
            "_cell_length_b 4.0\n", ""), "cell parameters missing"),
        "over the atom limit": (
            _cif("big", (40,) * 3 + (90,) * 3,
                 [(f"C{k}", "C", 0.01 + k / 1000, 0.02, 0.03) for k in range(100)],
                 ops=_ops("Pm-3m")), "over the atom limit"),
    }


@pytest.mark.parametrize("name", list(_declined()))
def test_what_the_fast_reader_declines_pymatgen_reads(name: str) -> None:
    text, reason = _declined()[name]
    got = read_cif(text, MAX_CIF_ATOMS)
    assert isinstance(got, str)
    if gemmi_available():
        assert reason in got
    _same_both_ways(text)


def test_the_fallbacks_give_pymatgens_failures() -> None:
    """The declined CIFs that pymatgen cannot read fail the same way on either path."""
    cases = _declined()
    categories = {}
    for name in ("partial occupancy", "occupancy below 1", "over the atom limit",
                 "a zero-thickness cell", "a coordinate '?'", "a site symmetry puts on another",
                 "two sites at the same coordinates"):
        got = _outcome(cases[name][0], fast=True)
        assert isinstance(got, tuple) and got[0] == "failure", name
        categories[name] = got[1]
    assert categories == {
        "partial occupancy": "disordered", "occupancy below 1": "disordered",
        "over the atom limit": "too large", "a zero-thickness cell": "unreadable",
        "a coordinate '?'": "unreadable", "a site symmetry puts on another": "unreadable",
        "two sites at the same coordinates": "unreadable"}


def test_without_gemmi_every_cif_takes_pymatgens_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from deepergat.io.readers import cif_gemmi

    text = _cif("NaCl", (5.64,) * 3 + (90,) * 3, [("Na1", "Na", 0, 0, 0),
                                                 ("Cl1", "Cl", 0.5, 0.5, 0.5)], ops=_ops("Fm-3m"))
    expected = _outcome(text, fast=False)
    monkeypatch.setattr(cif_gemmi, "_gemmi", lambda: None)
    assert not cif_gemmi.gemmi_available()
    assert read_cif(text, MAX_CIF_ATOMS) == "gemmi is not installed"
    _assert_same(_outcome(text, fast=True), expected)


# ---- (c) the fast reader never raises: broken CIFs fail as pymatgen fails them ------------------


def _broken(text: str, seed: int, count: int) -> list[str]:
    """Truncations of a CIF and copies with a character dropped, doubled or swapped for one
    that means something in CIF syntax."""
    rng = np.random.default_rng(seed)
    out = [text[:k] for k in range(0, len(text), max(1, len(text) // 40))]
    specials = list("'\";#_ \n.?()-0")
    for _ in range(count):
        k = int(rng.integers(len(text)))
        kind = int(rng.integers(3))
        if kind == 0:
            out.append(text[:k] + text[k + 1:])
        elif kind == 1:
            out.append(text[:k] + text[k] + text[k:])
        else:
            out.append(text[:k] + str(rng.choice(specials)) + text[k + 1:])
    return out


@pytest.mark.parametrize("name", ["rock salt, Fm-3m listed", "monoclinic P2_1/c, interleaved sites",
                                  "wurtzite, oxidation states"])
def test_broken_cifs_read_or_fail_as_pymatgen_reads_them(name: str) -> None:
    """Whatever pymatgen makes of a damaged CIF (a structure, or a failure with its category
    and message), `parse_cif_text` makes of it too; the fast reader itself never raises."""
    import warnings

    text = _tricky()[name]
    taken = 0
    for k, broken in enumerate(_broken(text, seed=len(name), count=60)):
        got = read_cif(broken, MAX_CIF_ATOMS)
        assert isinstance(got, FastCif | str)
        taken += isinstance(got, FastCif)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fast = _outcome(broken, fast=True, expect_one=True)
            slow = _outcome(broken, fast=False, expect_one=True)
        try:
            _assert_same(fast, slow)
        except AssertionError:
            raise AssertionError(f"variant {k} differs:\n{broken}") from None
    assert taken or not gemmi_available()


def test_read_cif_gives_a_reason_of_one_line() -> None:
    for text in ("", "data_x\n", "not a cif", "data_a\n_cell_length_a 'unclosed\n",
                 "data_a\nloop_\n_x\n"):
        got = read_cif(text, MAX_CIF_ATOMS)
        assert isinstance(got, str) and got and "\n" not in got
        assert re.fullmatch(r"[^\n]{1,120}", got)
