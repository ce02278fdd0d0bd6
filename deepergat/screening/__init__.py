"""`deepergat-screen`: MPI-parallel, resumable screening of millions of structures.

The modules, in the order a structure meets them:

* `plan` — chunks of ``--chunk-size`` structures, array shards balanced by atom count, the
  SLURM array task's shard.
* `parts` — the ``<output>.parts/`` directory: run manifest, atomic part commits, merge claim.
* `device` — which device a rank uses, and how many CPU cores it has.
* `mpi` — ranks, the one-sided chunk counter and the aggregated progress counters (mpi4py is
  imported only under an MPI launcher).
* `pipeline` — within a rank: reader → neighbor-search workers → predictor → writer.
* `predictions` — the predictions file (docs/design.md §9): writer, identity, description, top-K.
* `merge` — parts → the final file in input order.
* `run` — the driver that ties them together; `cli` — the command line.

Nothing here imports torch: with an ONNX model the whole screening path runs on numpy, numba,
h5py and ONNX Runtime.
"""

from __future__ import annotations

__all__: list[str] = []
