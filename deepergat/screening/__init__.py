"""`deepergat-screen`: MPI-parallel, resumable screening of millions of structures.

The modules, in the order a screen meets them:

* `options` — `ScreenOptions`: what a screen is asked to do, grouped by concern.
* `plan` — chunks of ``chunk_size`` structures, array shards balanced by atom count.
* `model` — the model resolved, loaded and checked on a probe structure.
* `setup` — before any work: checks, the output's lock, resume, the manifest, rank 0's plan.
* `parts` — the ``<output>.parts/`` directory: run manifest, atomic part commits, merge claim.
* `mpi` — ranks, the one-sided chunk counter and the aggregated progress counters (mpi4py is
  imported only under an MPI launcher).
* `pipeline` — within a rank: reader → neighbor-search workers → predictor → writer.
* `compute` — every rank's work: the pipeline over the run's chunks, the merge on rank 0.
* `predictions` — the predictions file (docs/design.md §9): writer, identity, description, top-K.
* `merge` — parts → the final file in input order.
* `run` — the driver that ties them together (`screen`, `merge_only`); `result` and `failures`
  — what it reports and how it fails.
* `report`, `select` — a predictions file's HTML page; structures chosen from it (extract).

The command line is `deepergat.cli.screen`.

Nothing here imports torch: with an ONNX model the whole screening path runs on numpy, numba,
h5py and ONNX Runtime or OpenVINO.
"""

from __future__ import annotations

__all__: list[str] = []
