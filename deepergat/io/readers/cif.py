"""CIF (``*.cif``, ``*.mcif``): every data block that holds atom sites, parsed exactly as
pymatgen's ``Structure.from_str(text, fmt="cif")`` parses.

The same parser reads CIF files, the CIF texts of CSV rows and CIF members of archives.

A CIF lists the symmetry-distinct sites and the symmetry operations that copy them: a few kB of
text can ask for tens of thousands of atoms, and pymatgen's expansion and merging of the copies
costs time quadratic in them (400 general sites × 48 operations: a minute). Before a block's
structure is built, its sites × operations (read from the tokenised block, the operations
counted as pymatgen will apply them) are checked against `MAX_CIF_ATOMS`; a block over it is a
``too large`` failure.

Where gemmi is installed, a block is first read by `cif_gemmi.read_cif`, which builds the very
record pymatgen's path builds (same lattice, atoms, order and positions to the bit) in a fraction
of the time, and declines whatever it cannot be sure to build the same way (partial occupancy,
magnetic CIFs, operations from a space-group symbol, text pymatgen may tokenize differently...):
those blocks, and every block without gemmi, take pymatgen's path.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np

from deepergat.contract import DEFAULT_MAX_ATOMS

from .cif_gemmi import SYMOP_KEYS, read_cif
from .records import (
    Failure,
    PackWarning,
    Record,
    TaskError,
    numbered_ids,
    one_line,
    record_from_pymatgen,
)

__all__ = ["MAX_CIF_ATOMS", "cif_blocks", "parse_cif_text"]

#: Most atoms a CIF block may expand to (its sites × its symmetry operations, before symmetry
#: copies are merged): four times the screening default ``max_atoms``. pymatgen builds the
#: slowest such block (4,000 general positions in P1) in about 3 s of CPU time.
MAX_CIF_ATOMS = 4 * DEFAULT_MAX_ATOMS

_CIF_BLOCK = re.compile(r"^data_", re.IGNORECASE | re.MULTILINE)


def cif_blocks(text: str) -> list[str]:
    """The data blocks of a CIF text, each with its ``data_`` line (text before the first is
    dropped: CIF allows only comments there)."""
    starts = [m.start() for m in _CIF_BLOCK.finditer(text)]
    return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]


def parse_cif_text(text: str, source: str, sid: str, *, expect_one: bool,
                   failures: list[Failure] | None = None, fast: bool = True) -> list[Record]:
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

    With ``fast`` (the default) each block is first offered to gemmi's reader
    (`cif_gemmi.read_cif`), which gives the same record or declines; ``fast=False`` reads every
    block with pymatgen.

    Raises:
        TaskError: an empty text, no structure, several where ``expect_one``, a disordered
            structure, or (without ``failures``) an unreadable block.
    """
    if not text or not text.strip():
        raise TaskError("unreadable", "empty CIF")
    blocks = cif_blocks(text)
    if len(blocks) <= 1:
        record = _fast_record(text, source, sid) if fast else None
        if record is not None:
            return [record]
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
        record = _fast_record(block, source, bid) if fast else None
        if record is not None:
            records.append(record)
            continue
        try:
            [structure] = _cif_structures(block)
        except (TaskError, ValueError) as e:
            category, detail = ((e.category, e.detail) if isinstance(e, TaskError)
                                else ("unreadable", one_line(e)))
            if failures is None:
                raise TaskError(category, f"block {k}: {detail}") from None
            failures.append(Failure(where, category, one_line(detail)))
            continue
        records.append(record_from_pymatgen(structure, source, bid))
    return records


def _fast_record(text: str, source: str, sid: str) -> Record | None:
    """The record of a one-block CIF text from gemmi's reader, or None where it declines."""
    got = read_cif(text, MAX_CIF_ATOMS)
    if isinstance(got, str):
        return None
    return Record(sid, source, got.lattice, np.ones(3, dtype=bool), got.atomic_numbers,
                  got.positions)


def _cif_structures(text: str) -> list[Any]:
    """The structures of a CIF text (``Structure.from_str``'s calls, see `parse_cif_text`)."""
    from pymatgen.core import Structure
    from pymatgen.io.cif import CifParser

    parser = CifParser.from_str(text)
    for block in parser._cif.data.values():  # the tokenised blocks, before any is built
        _check_expansion(parser, block)
    try:
        structures = parser.parse_structures(primitive=False, on_error="ignore")
    except ValueError as e:
        reasons = "; ".join(one_line(w) for w in parser.warnings) or one_line(e)
        raise TaskError("unreadable", f"no structure in the CIF: {reasons}") from None
    dropped = [w for w in parser.warnings if w.startswith("No structure parsed for section")]
    for w in dropped:  # e.g. a data_global block of publication details, or a broken block
        warnings.warn(f"CIF {one_line(w)}; the other blocks were read", PackWarning, stacklevel=1)
    return [Structure.from_sites(s, properties=s.properties) for s in structures]


def _rows(value: Any) -> int:
    """The rows of a tokenised CIF item: a loop column's length, 1 for a single value."""
    if value is None:
        return 0
    return len(value) if isinstance(value, list) else 1


def _check_expansion(parser: Any, block: Any) -> None:
    """Refuse a block whose sites × symmetry operations exceed `MAX_CIF_ATOMS`, before the
    structure is built: first from the operations as listed (nothing parsed), then from the
    operations pymatgen will apply (`CifParser.get_symops`, or its magnetic variant)."""
    data = block.data
    sites = _rows(data.get("_atom_site_label"))
    if not sites:
        return
    magnetic = bool(getattr(parser, "feature_flags", {}).get("magcif"))
    if magnetic:
        listed = _rows(data.get("_space_group_symop_magn_operation.xyz")) * max(
            1, _rows(data.get("_space_group_symop_magn_centering.xyz")))
    else:
        listed = max(_rows(data.get(k)) for k in SYMOP_KEYS)
    ops = max(listed, 1)
    if sites * ops <= MAX_CIF_ATOMS:
        kept = len(parser.warnings)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ops = len(parser.get_magsymops(block) if magnetic else parser.get_symops(block))
        except Exception:  # pymatgen reports it when it builds the block
            ops = max(listed, 1)
        finally:
            del parser.warnings[kept:]  # pymatgen warns again when it builds the block
    if sites * ops > MAX_CIF_ATOMS:
        raise TaskError(
            "too large",
            f"data_{block.header[:40]}: {sites} sites x {ops} symmetry operations make up to "
            f"{sites * ops} atoms; blocks of at most {MAX_CIF_ATOMS} are read",
        )
