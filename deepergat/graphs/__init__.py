"""Neighbor graphs: the only featurization outside the model (docs/design.md §4).

Numpy and numba only; the screening path imports it without torch.

==================  ==========================================================================
``neighbors``       the periodic and minimum-image searches, structure checks, padded inputs
``_kernels``        the compiled (numba) search kernels; ``neighbors`` holds their references
==================  ==========================================================================
"""

from __future__ import annotations

from .neighbors import *  # noqa: F403  (the package's public names are the module's)
from .neighbors import __all__ as __all__
