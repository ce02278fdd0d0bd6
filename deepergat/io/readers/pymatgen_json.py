"""pymatgen JSON (``*.json``): a ``Structure`` or ``Molecule`` dict (keys ``@module``, ``sites``
and, for a structure, ``lattice``) or a list of them.

Nothing the file names is imported or built: pymatgen's ``from_dict`` decodes site properties
with monty's decoder, which imports any module a ``@module`` key names and calls its class, so
this reader never calls it. A document that names any ``@module``/``@class`` pair other than
`ALLOWED_CLASSES` anywhere (site properties included) is refused whole; the structure is then
built from plain numbers and symbols (lattice, species with occupancies, coordinates) exactly as
``from_dict`` builds it, without the site properties (the store keeps none).

A ``.json`` file in ASE's JSON database form is handed to `deepergat.io.readers.ase_db`.
"""

from __future__ import annotations

import json
import re
from numbers import Real
from typing import Any

from .ase_db import check_ase_json, parse_ase_db
from .records import Record, TaskError, json_objects, numbered_ids, read_text, record_from_pymatgen

__all__ = ["ALLOWED_CLASSES", "parse_json_file", "structure_from_dict"]

#: The ``(@module, @class)`` pairs a pymatgen structure file may hold anywhere: the structure,
#: its lattice, sites and species, and the numpy arrays and magnetic moments pymatgen writes in
#: site properties. They are recognised, never imported.
ALLOWED_CLASSES: frozenset[tuple[str, str]] = frozenset({
    *(("pymatgen.core.structure", c) for c in ("Structure", "IStructure", "Molecule",
                                                "IMolecule")),
    ("pymatgen.core.lattice", "Lattice"),
    *(("pymatgen.core.sites", c) for c in ("Site", "PeriodicSite")),
    *(("pymatgen.core.periodic_table", c) for c in ("Element", "Species", "Specie",
                                                    "DummySpecies", "DummySpecie")),
    ("pymatgen.core.composition", "Composition"),
    ("pymatgen.electronic_structure.core", "Magmom"),
    ("numpy", "array"),
})


def _is_pymatgen_dict(d: Any) -> bool:
    return isinstance(d, dict) and "@module" in d and "sites" in d


def parse_json_file(path: str, source: str, sid: str, names: tuple[str, ...]) -> list[Record]:
    """The structures of a pymatgen JSON file or an ASE JSON database.

    Raises:
        TaskError: ``refused`` when the document names a class outside `ALLOWED_CLASSES` (or,
            as an ASE database, an object ASE would build, `check_ase_json`), else
            ``unreadable``: not JSON, JSON of neither kind, or a structure that is not one.
    """
    text = read_text(path)
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        detail = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise TaskError("unreadable", f"not valid JSON: {detail}") from None
    if _is_pymatgen_dict(doc) or (
        isinstance(doc, list) and doc and all(_is_pymatgen_dict(d) for d in doc)
    ):
        _check_classes(doc)
        docs = doc if isinstance(doc, list) else [doc]
        ids = numbered_ids(sid, len(docs))
        return [record_from_pymatgen(structure_from_dict(d), source, i)
                for d, i in zip(docs, ids, strict=True)]
    if isinstance(doc, dict) and (
        "ids" in doc or any(re.fullmatch(r"\d+", k) and isinstance(v, dict) for k, v in doc.items())
    ):
        check_ase_json(doc)
        return parse_ase_db(path, "json", source, sid, names)
    raise TaskError(
        "unreadable",
        "JSON is neither a pymatgen Structure (keys @module, lattice, sites) nor an ASE database",
    )


def _check_classes(doc: Any) -> None:
    """Refuse a document that names a class outside `ALLOWED_CLASSES` anywhere."""
    for where, d in json_objects(doc):
        if "@module" not in d and "@class" not in d:
            continue
        pair = (d.get("@module"), d.get("@class"))
        if pair not in ALLOWED_CLASSES:
            module, cls = (str(x)[:60] for x in pair)
            raise TaskError(
                "refused",
                f"names @module {module!r} @class {cls!r} at {where or 'the top'}; pymatgen "
                "JSON may name only pymatgen's structure, lattice, site and species classes "
                "(nothing a file names is imported)",
            )


def _number(x: Any, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, Real):
        raise TaskError("unreadable", f"{what} is {str(x)[:40]!r}, not a number")
    return float(x)


def _vector(x: Any, what: str) -> list[float]:
    if not isinstance(x, list) or len(x) != 3:
        raise TaskError("unreadable", f"{what} is not a list of 3 numbers")
    return [_number(v, what) for v in x]


def _optional(x: Any, what: str) -> float | None:
    return None if x is None else _number(x, what)


def _species(site: Any, k: int) -> dict[Any, float]:
    """A site's species -> occupancy, as ``PeriodicSite.from_dict`` reads them (an element;
    with an oxidation state a species, or a dummy species when the symbol is no element)."""
    from pymatgen.core.periodic_table import DummySpecies, Element, Species

    if not isinstance(site, dict) or not isinstance(site.get("species"), list):
        raise TaskError("unreadable", f"site {k} has no list of species")
    out: dict[Any, float] = {}
    for entry in site["species"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("element"), str):
            raise TaskError("unreadable", f"site {k}: a species without an element symbol")
        symbol = entry["element"]
        occu = _number(entry.get("occu"), f"site {k} occupancy")
        try:
            if "oxidation_state" in entry:
                ox = _optional(entry["oxidation_state"], f"site {k} oxidation state")
                spin = _optional(entry.get("spin"), f"site {k} spin")
                kind = Species if Element.is_valid_symbol(symbol) else DummySpecies
                sp: Any = kind(symbol, ox, spin=spin)
            else:
                sp = Element(symbol)
        except ValueError as e:
            raise TaskError("unreadable", f"site {k}: {e}") from None
        out[sp] = occu
    return out


def structure_from_dict(d: dict[str, Any]) -> Any:
    """A pymatgen ``Structure`` (the dict has a ``lattice``) or ``Molecule`` built from the
    dict's numbers and symbols as ``from_dict`` builds it, without decoding site properties
    (`_check_classes` has passed the document).

    Raises:
        TaskError: a part is missing or not of its type (``unreadable``).
    """
    from pymatgen.core import Lattice, Molecule, Structure
    from pymatgen.core.sites import PeriodicSite, Site

    sites = d.get("sites")
    if not isinstance(sites, list):
        raise TaskError("unreadable", "'sites' is not a list")
    if "lattice" in d:
        lat = d["lattice"]
        if not isinstance(lat, dict):
            raise TaskError("unreadable", "'lattice' is not an object")
        pbc = lat.get("pbc", [True, True, True])
        if not isinstance(pbc, list) or len(pbc) != 3 or not all(
                isinstance(x, bool) for x in pbc):
            raise TaskError("unreadable", "lattice 'pbc' is not 3 booleans")
        if "matrix" in lat:
            m = lat["matrix"]
            if not isinstance(m, list) or len(m) != 3:
                raise TaskError("unreadable", "lattice 'matrix' is not 3 vectors")
            lattice = Lattice([_vector(v, "a lattice vector") for v in m], pbc=tuple(pbc))
        else:
            p = [_number(lat.get(k), f"lattice {k}") for k in ("a", "b", "c", "alpha", "beta",
                                                               "gamma")]
            lattice = Lattice.from_parameters(*p, pbc=tuple(pbc))
        built = [PeriodicSite(_species(s, k), _vector(s.get("abc"), f"site {k} 'abc'"), lattice)
                 for k, s in enumerate(sites)]
        return Structure.from_sites(built, charge=_optional(d.get("charge"), "charge"))
    built_m = [Site(_species(s, k), _vector(s.get("xyz"), f"site {k} 'xyz'"))
               for k, s in enumerate(sites)]
    charge = _optional(d.get("charge"), "charge")
    return Molecule.from_sites(
        built_m, charge=0 if charge is None else charge,
        spin_multiplicity=_optional(d.get("spin_multiplicity"), "spin multiplicity"))
