"""pymatgen JSON (``*.json``): a ``Structure`` or ``Molecule`` dict (keys ``@module``, ``sites``
and, for a structure, ``lattice``) or a list of them, rebuilt with ``from_dict``.

A ``.json`` file in ASE's JSON database form is handed to `deepergat.io.readers.ase_db`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .ase_db import parse_ase_db
from .records import Record, TaskError, numbered_ids, read_text, record_from_pymatgen

__all__ = ["parse_json_file"]


def _is_pymatgen_dict(d: Any) -> bool:
    return isinstance(d, dict) and "@module" in d and "sites" in d


def parse_json_file(path: str, source: str, sid: str, names: tuple[str, ...]) -> list[Record]:
    """The structures of a pymatgen JSON file or an ASE JSON database.

    Raises:
        TaskError: not JSON, or JSON of neither kind.
    """
    text = read_text(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise TaskError("unreadable", f"not valid JSON: {e}") from None
    if _is_pymatgen_dict(doc) or (
        isinstance(doc, list) and doc and all(_is_pymatgen_dict(d) for d in doc)
    ):
        from pymatgen.core import Molecule, Structure

        docs = doc if isinstance(doc, list) else [doc]
        ids = numbered_ids(sid, len(docs))
        return [
            record_from_pymatgen(
                (Structure if "lattice" in d else Molecule).from_dict(d), source, i)
            for d, i in zip(docs, ids, strict=True)
        ]
    if isinstance(doc, dict) and (
        "ids" in doc or any(re.fullmatch(r"\d+", k) and isinstance(v, dict) for k, v in doc.items())
    ):
        return parse_ase_db(path, "json", source, sid, names)
    raise TaskError(
        "unreadable",
        "JSON is neither a pymatgen Structure (keys @module, lattice, sites) nor an ASE database",
    )
