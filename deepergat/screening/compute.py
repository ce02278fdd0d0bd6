"""The work of every rank: the pipeline over the run's chunk list, then the merge on rank 0.

Chunks are handed out dynamically across MPI ranks (`Ranks.chunk_source`); an array shard
computes its static share. After the run rank 0 sums the ranks' counts and merges when every
chunk is committed: an MPI run always, an array task only when it claims the merge.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any

import numpy as np

from deepergat.errors import DeepergatError
from deepergat.system.launch import claim_token

from .failures import work_failure
from .merge import MissingChunksError, describe_missing, merge_parts, output_bytes
from .model import LoadedModel
from .mpi import Progress, Ranks
from .options import RunControl, ScreenOptions, top_csv_path
from .parts import PartsDir
from .pipeline import DEFAULT_BATCH_ATOMS, DEFAULT_BATCH_EDGES, Pipeline, PipelineStats
from .plan import Plan
from .predictions import FLAG_UNSEEN_ELEMENT, Rows, read_identity
from .result import Hooks, ScreenResult
from .setup import Prepared, list_settings, same_output, write_top

__all__ = ["GPU_BATCH_ATOMS", "batch_budget", "compute"]

log = logging.getLogger(__name__)

#: Atoms per model batch on a GPU (the CPU default is `DEFAULT_BATCH_ATOMS`).
GPU_BATCH_ATOMS = 16384


def batch_budget(control: RunControl, predictor: Any) -> tuple[int, int]:
    """(atoms, padded edge slots) per model batch: the options', else the device's default."""
    on_gpu = str(getattr(predictor, "device", "cpu")).startswith("cuda")
    atoms = control.batch_atoms or (GPU_BATCH_ATOMS if on_gpu else DEFAULT_BATCH_ATOMS)
    edges = control.batch_edges or atoms * (DEFAULT_BATCH_EDGES // DEFAULT_BATCH_ATOMS)
    return atoms, edges


class _ProgressMonitor:
    """Rank 0's thread that reports the summed progress through ``hooks.on_progress`` (4 times
    a second) — and so keeps MPI progressing while the main thread is in the predictor."""

    def __init__(self, progress: Progress, hooks: Hooks) -> None:
        self.progress = progress
        self.hooks = hooks
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="screen-progress", daemon=True)

    def _watch(self) -> None:
        last = 0.0
        while not self.stopped.wait(0.05):
            totals = self.progress.totals()
            now = time.monotonic()
            if self.hooks.on_progress and now - last >= 0.25:
                self.hooks.on_progress(*totals)
                last = now

    def finish(self) -> None:
        """Stop watching and report the final totals."""
        self.stopped.set()
        self.thread.join()
        if self.hooks.on_progress:
            self.hooks.on_progress(*self.progress.totals())


def _log_start(ranks: Ranks, prep: Prepared, batch_atoms: int,
               manifest: dict[str, Any] | None) -> None:
    model, res, run = prep.model, prep.resources, prep.run
    log.info("rank %d/%d: model %s on %s (%s), %d worker processes (%s), batches of ≤ %d "
             "atoms", ranks.rank, ranks.size, model.name,
             getattr(model.predictor, "device", res.device[0]),
             getattr(model.predictor, "backend", "?"), res.workers,
             "neighbor search and model" if res.workers_predict else
             f"neighbor search; {res.threads} predictor threads here", batch_atoms)
    if manifest is not None:
        plan = run.plan
        log.info("screening %s (%d structures, %d chunks of %d): %d chunks to do%s, %d "
                 "structures already committed", manifest["input"], plan.n_structures,
                 plan.n_chunks, plan.chunk_size, len(run.todo),
                 f" in shard {prep.shard[0]}/{prep.shard[1]}" if prep.shard else "", run.skipped)


def _pipeline(opts: ScreenOptions, prep: Prepared, batch: tuple[int, int]) -> Pipeline:
    model, res = prep.model, prep.resources
    return Pipeline(
        opts.files.input, prep.run.plan, model.predictor, model.settings,
        n_targets=len(model.targets),
        embedding_dim=model.embedding_dim if opts.files.embeddings else None,
        spread=model.spread, workers=res.workers,
        worker_model=((str(model.predictor.path), model.sha256, opts.predictor.trust)
                      if res.workers_predict else None),
        batch_atoms=batch[0], batch_edges=batch[1], started=prep.started,
    )


def _sizes(opts: ScreenOptions, model: LoadedModel) -> dict[str, Any]:
    """What `output_bytes` reads of a run manifest, from the options and the model."""
    return {"targets": [t.name for t in model.targets], "spread": model.spread,
            "embeddings": bool(opts.files.embeddings), "embedding_dim": model.embedding_dim}


def _uncommitted(parts: PartsDir, plan: Plan) -> int:
    """Structures of the chunks without a committed part."""
    try:
        missing = parts.missing(range(plan.n_chunks))
    except (OSError, DeepergatError):
        return plan.n_structures
    return plan.count(missing)


def compute(opts: ScreenOptions, ranks: Ranks, hooks: Hooks, prep: Prepared) -> ScreenResult:
    """Every rank: run the pipeline over the shared chunk list, then merge on rank 0.

    Raises:
        MissingChunksError: an MPI run left chunks without a part (rank 0).
        DeepergatError: a problem met while working, on this rank (`work_failure`).
    """
    parts, run, model = prep.parts, prep.run, prep.model
    plan = run.plan
    batch = batch_budget(opts.control, model.predictor)
    manifest = parts.read_manifest() if ranks.is_root else None
    _log_start(ranks, prep, batch[0], manifest)
    source = ranks.chunk_source(run.todo)
    progress = ranks.progress()
    pipeline = _pipeline(opts, prep, batch)

    def on_chunk(rows: Rows) -> None:
        progress.add(len(rows), int(np.count_nonzero(rows.status)),
                     int(np.count_nonzero(rows.flags & FLAG_UNSEEN_ELEMENT)))

    monitor: _ProgressMonitor | None = None
    if ranks.is_root:
        if hooks.on_start:
            hooks.on_start(plan.count(run.todo), run.skipped, ranks.size)
        monitor = _ProgressMonitor(progress, hooks)
        monitor.thread.start()
    t0 = time.perf_counter()
    try:
        stats = pipeline.run(source, functools.partial(parts.commit, run=run.token),
                             on_chunk=on_chunk)
    except BaseException as e:
        if monitor is not None:
            monitor.stopped.set()
        sizes = _sizes(opts, model)
        raise work_failure(e, ranks.rank, parts.path,
                           lambda: (output_bytes(_uncommitted(parts, plan), sizes)
                                    + output_bytes(plan.n_structures, sizes)),
                           "the chunks committed so far are kept") from None
    all_stats = ranks.gather(stats.as_dict())
    seconds = time.perf_counter() - t0
    if monitor is not None:
        monitor.finish()
    ranks.close()
    log.info("rank %d: %d structures in %d chunks, %.1f s (stage seconds: read %.2f, "
             "featurize %.2f, predict %.2f in %d batches, write %.2f)", ranks.rank,
             stats.structures, stats.chunks, stats.seconds, stats.read, stats.featurize,
             stats.predict, stats.batches, stats.write)
    result = _rank_result(ranks, prep, stats, seconds)
    if not ranks.is_root:
        return result
    assert manifest is not None and all_stats is not None
    return _finish(opts, prep, result, manifest, all_stats)


def _rank_result(ranks: Ranks, prep: Prepared, stats: PipelineStats, seconds: float
                 ) -> ScreenResult:
    return ScreenResult(
        "shard-done", prep.parts.output, prep.parts.path, ranks=ranks.size, shard=prep.shard,
        structures=stats.structures, seconds=seconds, status=stats.status.copy(),
        flagged=stats.flagged, skipped=prep.run.skipped,
    )


#: Seconds between looks at a merge another task claimed.
_CLAIM_POLL = 2.0


def _merged_by_another(parts: PartsDir, manifest: dict[str, Any]) -> bool:
    """Whether ``parts.output`` is this run's complete output (another task merged it)."""
    identity = read_identity(parts.output)
    return identity is not None and same_output(identity, manifest)


def _claim_or_wait(parts: PartsDir, manifest: dict[str, Any]) -> bool:
    """An array task that finds every chunk committed: True when it claims the merge (or takes
    over the claim of a dead task); False once another task's merge has written the output. It
    waits while a live task merges, so a task never ends without the output being there.

    Another task may have merged, removed the parts and its claim between this task's look at
    the parts and its claim: the output is looked at again after a won claim (a merging task
    writes the output before it removes its claim), and what is left is then removed."""
    token = claim_token()
    said = False
    while True:
        if _merged_by_another(parts, manifest):
            return False
        try:
            won = parts.claim_merge(token)
        except FileNotFoundError:  # the parts directory went with another task's merge
            if _merged_by_another(parts, manifest):
                return False
            raise
        if won:
            if _merged_by_another(parts, manifest):
                # the merging task is gone (done, or died before its cleanup): holding the
                # claim, this task removes what is left
                parts.remove()
                return False
            return True
        if not said:
            log.info("another task merges %s; waiting for it", parts.output)
            said = True
        time.sleep(_CLAIM_POLL)


def _finish(opts: ScreenOptions, prep: Prepared, result: ScreenResult,
            manifest: dict[str, Any], all_stats: list[dict[str, Any]]) -> ScreenResult:
    """Rank 0: the ranks' counts summed; the merge when every chunk is committed (an array
    task only when it claims it), then the top-K list."""
    parts, plan, shard = prep.parts, prep.run.plan, prep.shard
    result.rank_stats = all_stats
    result.structures = sum(s["structures"] for s in all_stats)
    result.status = np.sum([s["status"] for s in all_stats], axis=0).astype(np.int64)
    result.flagged = sum(s["flagged"] for s in all_stats)
    result.missing = missing = parts.missing(range(plan.n_chunks))
    if missing and shard is not None and _merged_by_another(parts, manifest):
        result.outcome = "merge-claimed"  # a task that finished later merged and cleaned up
        result.missing = []
        return result
    if missing:
        if shard is None:
            raise MissingChunksError(
                f"{parts.path}: after the run {describe_missing(missing, plan)} are missing",
                missing,
            )
        log.info("shard %d/%d done; %d chunks still missing", *shard, len(missing))
        return result
    if shard is not None and not _claim_or_wait(parts, manifest):
        result.outcome = "merge-claimed"  # another task merged: the output is there
        return result
    try:
        listing = list_settings(opts).describe() if opts.ranking.top else None
        result.merge = merge_parts(parts, plan, manifest, run={
            "structures": result.structures, "seconds": round(result.seconds, 3),
            "ranks": result.ranks, "skipped": result.skipped, "short_list": listing})
    except BaseException as e:
        raise work_failure(e, 0, parts.output,
                           lambda: output_bytes(plan.n_structures, manifest),
                           "the committed parts are kept") from None
    result.outcome = "merged"
    if opts.ranking.top:
        result.top_csv = top_csv_path(parts.output)
        # the merge has just checked that the input store is the one screened
        result.short_list = write_top(opts, parts.output, result.top_csv,
                                      store_verified=True).summary()
    return result
