"""Generative models' sample files (``*.pt``: CDVAE / DiffCSP ``eval_gen.pt`` ...), unpickled by
the restricted unpickler of `deepergat.io.generators` that runs nothing; ids
``<stem>-<pass>-<index>``, pass-major."""

from __future__ import annotations

import numpy as np

from deepergat.errors import DeepergatError

from .records import Record, TaskError

__all__ = ["parse_sample_file"]


def parse_sample_file(path: str, source: str) -> list[Record]:
    """Every structure of a sample file, periodic on all axes.

    Raises:
        TaskError: ``refused`` when the pickle asks for code the unpickler does not allow,
            ``too large`` for a decompression bomb, else ``unreadable``.
    """
    from deepergat.io.generators import sample_structures

    try:
        structures = list(sample_structures(path))
    except DeepergatError as e:
        detail = str(e).removeprefix(f"{path}: ")
        for category in ("refused", "too large"):
            if detail.startswith(f"{category}: "):
                raise TaskError(category, detail.removeprefix(f"{category}: ")) from None
        raise TaskError("unreadable", detail) from None
    return [Record(id=d["id"], source=f"{source}:{d['id']}",
                   lattice=np.asarray(d["lattice"], np.float64),
                   pbc=np.ones(3, bool),
                   atomic_numbers=np.asarray(d["atomic_numbers"], np.int64),
                   positions=np.asarray(d["positions"], np.float64))
            for d in structures]
