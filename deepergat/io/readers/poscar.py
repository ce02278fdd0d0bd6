"""POSCAR (``POSCAR*``, ``CONTCAR*``, ``*.vasp``, ``*.poscar``): one structure per file, parsed by
pymatgen's ``Structure.from_str(text, fmt="poscar")``."""

from __future__ import annotations

from .records import Record, record_from_pymatgen

__all__ = ["parse_poscar_text"]


def parse_poscar_text(text: str, source: str, sid: str) -> Record:
    """The structure of a POSCAR text.

    Raises:
        TaskError: a disordered structure (pymatgen's own errors pass through to the worker,
            which records them as ``unreadable``).
    """
    from pymatgen.core import Structure

    return record_from_pymatgen(Structure.from_str(text, fmt="poscar"), source, sid)
