"""CIF (``*.cif``, ``*.mcif``): every data block that holds atom sites, parsed exactly as
pymatgen's ``Structure.from_str(text, fmt="cif")`` parses.

The same parser reads CIF files, the CIF texts of CSV rows and CIF members of archives.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

from .records import (
    Failure,
    PackWarning,
    Record,
    TaskError,
    numbered_ids,
    one_line,
    record_from_pymatgen,
)

__all__ = ["cif_blocks", "parse_cif_text"]

_CIF_BLOCK = re.compile(r"^data_", re.IGNORECASE | re.MULTILINE)


def cif_blocks(text: str) -> list[str]:
    """The data blocks of a CIF text, each with its ``data_`` line (text before the first is
    dropped: CIF allows only comments there)."""
    starts = [m.start() for m in _CIF_BLOCK.finditer(text)]
    return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]


def parse_cif_text(text: str, source: str, sid: str, *, expect_one: bool,
                   failures: list[Failure] | None = None) -> list[Record]:
    """Every data block of a CIF, parsed as ``Structure.from_str(text, fmt="cif")`` parses.

    ``Structure.from_str`` uses ``CifParser`` with its defaults (occupancy tolerance 1.0: no
    rescaling of occupancies; site tolerance 1e-4 Å for merging symmetry copies),
    ``parse_structures(primitive=False)`` (the cell as written, no reduction) and ``merge_tol=0``
    (no further merging), and rebuilds the first structure with ``Structure.from_sites``, which
    keeps lattice and coordinates. The same calls here give the same structure for the first
    block and also return the others.

    A file of several blocks is parsed block by block. Blocks without atom sites (publication
    details) are no structures; every block with atom sites is either a record or, when it
    cannot be read (a zero-volume cell, a broken loop), a failure appended to ``failures``
    (``<source>:block k (data_<name>)``) — its ids stay positional: block k is ``<id>_<k>``.
    Without ``failures`` such a block fails the whole file.

    Raises:
        TaskError: an empty text, no structure, several where ``expect_one``, a disordered
            structure, or (without ``failures``) an unreadable block.
    """
    if not text or not text.strip():
        raise TaskError("unreadable", "empty CIF")
    blocks = cif_blocks(text)
    if len(blocks) <= 1:
        structures = _cif_structures(text)
        if len(structures) > 1 and expect_one:
            raise TaskError("several structures",
                            f"the CIF holds {len(structures)} structures; one is expected")
        ids = numbered_ids(sid, len(structures))
        return [record_from_pymatgen(s, source, i) for s, i in zip(structures, ids, strict=True)]
    sites = [b for b in blocks if re.search(r"^\s*_atom_site_", b, re.MULTILINE)]
    for b in blocks:
        if b not in sites:
            warnings.warn(f"CIF block {b.splitlines()[0].strip()} holds no atom sites (no "
                          "structure); the other blocks were read", PackWarning, stacklevel=1)
    if expect_one and len(sites) > 1:
        raise TaskError("several structures",
                        f"the CIF holds {len(sites)} structure blocks; one is expected")
    records = []
    ids = numbered_ids(sid, len(sites))
    for k, (block, bid) in enumerate(zip(sites, ids, strict=True)):
        where = f"{source}:block {k} ({block.splitlines()[0].strip()[:40]})"
        try:
            [structure] = _cif_structures(block)
        except (TaskError, ValueError) as e:
            detail = e.detail if isinstance(e, TaskError) else one_line(e)
            if failures is None:
                raise TaskError("unreadable", f"block {k}: {detail}") from None
            failures.append(Failure(where, "unreadable", one_line(detail)))
            continue
        records.append(record_from_pymatgen(structure, source, bid))
    return records


def _cif_structures(text: str) -> list[Any]:
    """The structures of a CIF text (``Structure.from_str``'s calls, see `parse_cif_text`)."""
    from pymatgen.core import Structure
    from pymatgen.io.cif import CifParser

    parser = CifParser.from_str(text)
    try:
        structures = parser.parse_structures(primitive=False, on_error="ignore")
    except ValueError as e:
        reasons = "; ".join(one_line(w) for w in parser.warnings) or one_line(e)
        raise TaskError("unreadable", f"no structure in the CIF: {reasons}") from None
    dropped = [w for w in parser.warnings if w.startswith("No structure parsed for section")]
    for w in dropped:  # e.g. a data_global block of publication details, or a broken block
        warnings.warn(f"CIF {one_line(w)}; the other blocks were read", PackWarning, stacklevel=1)
    return [Structure.from_sites(s, properties=s.properties) for s in structures]
