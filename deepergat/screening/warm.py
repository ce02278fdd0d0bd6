"""Imported by the screening forkserver (`deepergat.screening.pipeline`'s preload): loads the
compiled neighbor-search kernels (periodic and minimum-image) from numba's on-disk cache once
there, so that every worker process forked from it starts with them loaded (~0.6 s each
otherwise).

Importing this module never fails: the forkserver stops on an import error other than
ImportError, and a worker then loads the kernel itself.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def _warm() -> None:
    import numpy as np

    from deepergat.graphs import build_inputs
    from deepergat.io.store import StructureBatch

    one = StructureBatch.from_structures(
        [{"id": "warm", "lattice": np.eye(3) * 3.0, "pbc": (True, True, True),
          "atomic_numbers": [14], "positions": [[0.0, 0.0, 0.0]]}]
    )
    for graph in ("periodic", "minimum-image"):  # each construction has its own kernel
        build_inputs(one, max_neighbors=2, cutoff=4.0, graph=graph)


try:
    _warm()
except Exception as e:  # the workers warm themselves (`pipeline._worker_init`)
    log.debug("neighbor-search kernel not preloaded: %s", e)
