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


try:
    from deepergat.graphs import warm_kernels

    warm_kernels()
except Exception as e:  # the workers warm themselves (`pipeline._worker_init`)
    log.debug("neighbor-search kernel not preloaded: %s", e)
