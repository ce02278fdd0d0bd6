"""Within a rank: reader → neighbor-search workers → predictor → writer, overlapped.

* The **reader** thread takes the rank's next chunk (from the MPI counter or a local list) only
  when a prefetch slot is free, reads it with two slices, cuts it into model batches by an
  atom/edge budget and hands each batch to the workers.
* The **workers** run `featurize`: the neighbor search (`deepergat.graphs.search_inputs`), a
  second cut of the batch by each structure's real padded width (`split_batches`) before
  anything is padded, and the flags (`deepergat.graphs.structure_flags`) — in a thread
  (``workers=0``; the numba kernel releases the GIL) or a process pool started with forkserver,
  never forked from a process that has initialized MPI. On CPUs the worker processes also run
  the model (``worker_model``), one single-threaded session each: the model is memory-bound
  with small kernels, and processes scale where threads sharing one process do not.
* The **predictor** is called on one model batch at a time by the calling thread (unless the
  workers predicted it); rows are assembled in chunk order and non-finite predictions become
  status 7.
* The **writer** thread commits each finished chunk as its part file and reports progress.

At most ``max_batches`` model batches (each within the atom/edge budget) are handed to the
workers and not yet consumed by the predictor, at most ``prefetch`` chunks are read ahead and
``write_queue`` chunks wait for the writer, so memory is bounded by the chunk and batch sizes,
not by the input. The batch cap defaults to twice the workers: with a GPU, where one chunk is
one large batch, every worker then has a chunk to featurize (docs/design.md §11).

**A batch that fails for memory** — a `MemoryError` or an allocation error of the model's
runtime, or a worker process killed (the kernel's out-of-memory killer under a cluster memory
cap) — is computed again, alone, in halves, down to the single structure, which then gets
status 10 (`memory_failure`, `Pipeline` ``_alone``): one structure never stops a run. Again
means in one isolated worker process (or this thread, without workers), so that a batch is
judged only by what it does itself; a structure gets status 10 only when a one-atom probe
structure then runs, else the failure is not the structure's and the run stops with one line.

`Pipeline` holds the settings; each `Pipeline.run` is a `_Flow`, whose methods are the stages
and whose attributes are what they share: the queues, the read-ahead slots, the count of
batches in flight, the worker pools, the stop event and the error slot.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import (
    BrokenExecutor,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from deepergat.contract import MAX_TRANSLATION_ATOMS, Status
from deepergat.errors import DeepergatError, SettingError, is_memory_message, literal
from deepergat.graphs import GraphBatch, search_inputs, structure_flags, warm_kernels
from deepergat.io.store import Store, StructureBatch
from deepergat.system.lifeline import watch_parent

from .plan import Plan
from .predictions import FLAG_UNSEEN_ELEMENT, Rows

__all__ = [
    "DEFAULT_BATCH_ATOMS",
    "DEFAULT_BATCH_EDGES",
    "FeaturizeSettings",
    "Featurized",
    "Pipeline",
    "PipelineStats",
    "Predictor",
    "StartedWorkers",
    "featurize",
    "featurize_predict",
    "memory_failure",
    "probe_batch",
    "split_batches",
    "start_forkserver",
    "start_workers",
]

log = logging.getLogger(__name__)

#: Atoms per model batch on the CPU (≈ 120 perovskite-family crystals: CPU inference is
#: memory-bound, so mid-sized batches run fastest; docs/design.md §11).
DEFAULT_BATCH_ATOMS = 1024
#: Padded edge slots (atoms × the batch's padded width K) per model batch. 20 per atom: a
#: batch of 1,024 atoms whose ties take K to 19 (simple-cubic shells at 12 neighbors) stays
#: one batch, as it was before the width was counted; wider batches are cut (`split_batches`).
DEFAULT_BATCH_EDGES = DEFAULT_BATCH_ATOMS * 20
#: Modules the forkserver imports once, so each worker starts warm (`deepergat.screening.warm`
#: also loads the compiled neighbor-search kernel there, once for every worker).
_PRELOAD = ["deepergat.graphs", "deepergat.screening.pipeline", "deepergat.screening.warm"]


class Predictor(Protocol):
    """What the pipeline needs of `deepergat.export.load`'s predictor: ``predict`` returning
    (prediction, embedding, std or None)."""

    def predict(self, inputs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]: ...


@dataclass(frozen=True)
class FeaturizeSettings:
    """Graph settings and status checks, from the model and the command line.

    Attributes:
        cutoff: Å. max_neighbors: graph setting of the model.
        max_atoms: status 2 above this. max_z: the model's element table is Z = 1..max_z.
        overlap_threshold: status 6 below this pair distance, Å.
        seen_elements: atomic numbers seen in training (others set flag bit 0).
        graph: graph construction of the model (``periodic`` or ``minimum-image``).
        translation_max_atoms: the model's translation limit (minimum-image graphs: flag
            bit 1 above it).
        batch_atoms, batch_edges: the model-batch budget a featurized batch is cut to
            (`split_batches` with the structures' real padded widths).
    """

    cutoff: float
    max_neighbors: int
    max_atoms: int
    max_z: int
    overlap_threshold: float
    seen_elements: tuple[int, ...]
    graph: str = "periodic"
    translation_max_atoms: int = MAX_TRANSLATION_ATOMS
    batch_atoms: int = DEFAULT_BATCH_ATOMS
    batch_edges: int = DEFAULT_BATCH_EDGES


@dataclass
class Featurized:
    """One batch of m structures, ready for the predictor — or already predicted by a worker.

    Attributes:
        status: [m] uint8 status codes 1–6, 8, 9 (0: searched).
        flags: [m] uint8 flag bits.
        graphs: the model batches of its status-0 structures (at least one, maybe empty),
            each within the batch budget; their ``rows`` index the m structures. Emptied of
            inputs once a worker has predicted them.
        seconds: time spent in the neighbor search, padding and flags.
        prediction, embedding, std: [m, T], [m, D] and [m, T] (an ensemble's spread; NaN
            where not predicted) when a worker predicted the batch, else None.
        predict_seconds: time the worker's predictor took. batches: model calls it made.
    """

    status: np.ndarray
    flags: np.ndarray
    graphs: list[GraphBatch]
    seconds: float
    prediction: np.ndarray | None = None
    embedding: np.ndarray | None = None
    std: np.ndarray | None = None
    predict_seconds: float = 0.0
    batches: int = 0

    @property
    def graph(self) -> GraphBatch:
        """The first model batch: the whole batch's inputs unless it was cut."""
        return self.graphs[0]


def split_batches(
    n_atoms: np.ndarray,
    *,
    max_atoms: int,
    max_neighbors: int,
    width: np.ndarray | None = None,
    batch_atoms: int = DEFAULT_BATCH_ATOMS,
    batch_edges: int = DEFAULT_BATCH_EDGES,
) -> list[tuple[int, int]]:
    """Cut a chunk into consecutive model batches under an atom and edge budget.

    A batch closes before the structure that would take it over ``batch_atoms`` atoms, over
    ``batch_edges`` padded edge slots (its atoms × its padded width K, the largest of its
    structures' widths: the [N, K] inputs and the model's [N, K, heads · dim] edge tensors),
    or over 8 · ``batch_atoms`` crystal slots (crystals × largest crystal, the [C, A] padding;
    the model's [C, A, 108] composition one-hot stays well below its edge tensors).
    Structures that will not be predicted cost nothing. A single structure over budget is a
    batch of its own.

    Args:
        n_atoms: [m] atoms per structure.
        max_atoms: before the search, structures with more atoms (or none) cost nothing.
        max_neighbors: before the search, every structure's width is max_neighbors + 1.
        width: [m] the real padded widths from the search (`deepergat.graphs.BatchEdges`;
            0: not predicted), used instead of the two estimates above.

    Returns:
        [(start, stop)] covering 0..m in order.
    """
    n_atoms = np.asarray(n_atoms)
    if width is None:
        counted = (n_atoms > 0) & (n_atoms <= max_atoms)
        widths = np.where(counted, max_neighbors + 1, 0).tolist()
    else:
        counted = np.asarray(width) > 0
        widths = np.asarray(width).tolist()
    cost = np.where(counted, n_atoms, 0).tolist()
    out: list[tuple[int, int]] = []
    start = atoms = largest = wide = 0
    for i, (n, w) in enumerate(zip(cost, widths, strict=True)):
        big = max(largest, n)
        k = max(wide, w)
        if i > start and (
            atoms + n > batch_atoms
            or (atoms + n) * k > batch_edges
            or (i - start + 1) * big > 8 * batch_atoms
        ):
            out.append((start, i))
            start, atoms, big, k = i, 0, n, w
        atoms += n
        largest, wide = big, k
    if start < len(cost):
        out.append((start, len(cost)))
    return out


def featurize(batch: StructureBatch, settings: FeaturizeSettings) -> Featurized:
    """Model inputs, status codes 1–6, 8, 9 and flags of one batch (runs in a worker): the
    search first, then the batch cut by its structures' real padded widths
    (`split_batches`) before anything is padded. Structures are taken narrowest first, so that
    a model batch pads its edge slots to the width of structures like its own (real
    perovskite cells need 13, 15 or 17 slots: 0.80 of the slots real in file order, 0.89
    sorted, on perov5_dev); each model batch keeps its rows in ascending order.

    Args:
        batch: m structures.
        settings: see `FeaturizeSettings`.
    """
    t0 = time.perf_counter()
    searched = search_inputs(
        batch, cutoff=settings.cutoff, max_neighbors=settings.max_neighbors,
        graph=settings.graph, max_atoms=settings.max_atoms, max_z=settings.max_z,
        overlap_threshold=settings.overlap_threshold,
    )
    order = np.argsort(searched.width, kind="stable")
    spans = split_batches(batch.n_atoms[order], max_atoms=settings.max_atoms,
                          max_neighbors=settings.max_neighbors, width=searched.width[order],
                          batch_atoms=settings.batch_atoms, batch_edges=settings.batch_edges)
    graphs = [searched.pad_rows(order[a:b]) for a, b in spans
              if searched.width[order[a:b]].any()]
    flags = structure_flags(batch, seen_elements=settings.seen_elements, graph=settings.graph,
                            translation_max_atoms=settings.translation_max_atoms)
    return Featurized(status=searched.status, flags=flags,
                      graphs=graphs or [searched.pad(0, 0)],
                      seconds=time.perf_counter() - t0)


#: What the forkserver also imports when the workers will run a model compiled on this
#: machine: torch (~1 s a process) is then imported once, not once per worker.
_PRELOAD_COMPILED = ["torch", "deepergat.export.aoti"]


def start_forkserver(*, compiled: bool = False) -> None:
    """Start the forkserver (preloading the graph code, and torch when ``compiled``: the
    workers will run a compiled model) now — before MPI is initialized, so no process is ever
    forked from an MPI rank."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD + (_PRELOAD_COMPILED if compiled else []))
    from multiprocessing import forkserver

    forkserver.ensure_running()


def _pool(workers: int, model: tuple[str, str, bool, bool] | None) -> ProcessPoolExecutor:
    """``workers`` forkserver processes, each set up by `_worker_init` with ``model``."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                               initargs=(model, os.getpid()))


def _nothing() -> None:
    """A task that only makes the pool start one more process."""


@dataclass
class StartedWorkers:
    """Worker processes started ahead of the pipeline (`start_workers`), so that their start —
    each one's imports and model — overlaps the rank's own checks, model and probe.

    Attributes:
        workers: how many.
        model: the ``(model file, sha256, trust, keep_embeddings)`` they loaded, None when
            they only search neighbors; a `Pipeline` takes them only for the same one.
        executor: their pool.
        starter: the thread that starts them (the forkserver answers only once its preload
            is imported; the rank does not wait for that).
    """

    workers: int
    model: tuple[str, str, bool, bool] | None
    executor: ProcessPoolExecutor
    starter: threading.Thread

    def close(self) -> None:
        """Stop them (a run that ends before its pipeline took them, or did not take them),
        waiting until each has started and stopped: a worker still starting when this process
        ends would fail to read what it was sent, and print why."""
        self.starter.join()
        self.executor.shutdown(wait=True, cancel_futures=True)


def start_workers(workers: int, model: tuple[str, str, bool, bool] | None) -> StartedWorkers:
    """Start ``workers`` worker processes now, in the background (`StartedWorkers`).

    Args:
        workers: how many, ≥ 1.
        model: ``(model file, sha256, trust, keep_embeddings)`` for predicting workers (the
            sha256 of the file, as `Predictor.sha256`), None for neighbor search only.
    """
    executor = _pool(workers, model)

    def start() -> None:
        # ProcessPoolExecutor starts one more process per task while none is idle
        for _ in range(workers):
            try:
                executor.submit(_nothing)
            except Exception:  # closed (a refused run) or broken: the pipeline sees it
                return

    starter = threading.Thread(target=start, name="screen-worker-start", daemon=True)
    starter.start()
    return StartedWorkers(workers=workers, model=model, executor=executor, starter=starter)


#: The predictor of a worker process that also predicts (`Pipeline` ``worker_model``).
_WORKER_PREDICTOR: Any = None


def _worker_init(model: tuple[str, str, bool, bool] | None = None,
                 parent: int | None = None) -> None:
    """Warm the numba kernel (it loads its on-disk cache) and, for predicting workers, load the
    model: ``(path, sha256, trust, keep_embeddings)``, one single-threaded CPU session per
    worker.
    The worker ends when the rank ``parent`` (a pid) ends, killed or not."""
    global _WORKER_PREDICTOR
    if parent is not None:
        watch_parent(parent)
    warm_kernels()  # a no-op when forked from a warm forkserver (`deepergat.screening.warm`)
    if model is not None:
        # a failure is kept and raised by the worker's first task: the rank reports it in one
        # line (and workers started early for a run then refused never print a traceback)
        path, sha256, trust, keep_embeddings = model
        try:
            from deepergat import export

            predictor = export.load(path, device="cpu", threads=1, trust=trust)
        except Exception as e:
            _WORKER_PREDICTOR = DeepergatError(
                f"a worker process could not load the model {path}: {e}")
            return
        if predictor.sha256 != sha256:
            _WORKER_PREDICTOR = DeepergatError(
                f"{path} changed while screening (sha256 {predictor.sha256})")
            return
        _WORKER_PREDICTOR = (predictor, keep_embeddings)


def featurize_predict(batch: StructureBatch, settings: FeaturizeSettings) -> Featurized:
    """`featurize`, then predict with this worker's model (runs in a predicting worker); the
    padded inputs stay in the worker, only the predictions travel back."""
    if isinstance(_WORKER_PREDICTOR, DeepergatError):
        raise _WORKER_PREDICTOR
    feat = featurize(batch, settings)
    predictor, keep_embeddings = _WORKER_PREDICTOR
    out = _Outputs(len(batch))
    for g in feat.graphs:
        if len(g.rows):
            t0 = time.perf_counter()
            out.put(g.rows, *predictor.predict(g.inputs), embeddings=keep_embeddings)
            feat.predict_seconds += time.perf_counter() - t0
            feat.batches += 1
    feat.prediction, feat.embedding, feat.std = out.prediction, out.embedding, out.std
    feat.graphs = [GraphBatch(inputs={}, rows=g.rows, status=g.status, n_edges=g.n_edges)
                   for g in feat.graphs]
    return feat


@dataclass
class _Outputs:
    """A batch's model outputs gathered over its model batches: [m, T] predictions, [m, D]
    embeddings and [m, T] spread, NaN where not predicted (None until a model batch gives
    them)."""

    m: int
    prediction: np.ndarray | None = None
    embedding: np.ndarray | None = None
    std: np.ndarray | None = None

    def put(self, rows: np.ndarray, prediction: Any, embedding: Any, std: Any, *,
            embeddings: bool = True) -> None:
        """Store one model batch's outputs for ``rows``."""
        self.prediction = _put(self.prediction, self.m, rows, prediction)
        if embeddings:
            self.embedding = _put(self.embedding, self.m, rows, embedding)
        if std is not None:
            self.std = _put(self.std, self.m, rows, std)


def _put(into: np.ndarray | None, m: int, rows: np.ndarray, values: Any) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32).reshape(len(rows), -1)
    if into is None:
        into = np.full((m, values.shape[1]), np.nan, dtype=np.float32)
    into[rows] = values
    return into


#: Phrases of the allocation errors of numpy, onnxruntime, PyTorch (CPU and CUDA) and the C
#: library, in lower case (`memory_failure`).
def memory_failure(error: BaseException) -> bool:
    """Whether ``error`` says a batch ran out of memory: a `MemoryError`, an allocation error
    of the model's runtime (by its message), or a worker process that died (a
    `concurrent.futures.BrokenExecutor`: the kernel's out-of-memory killer, most likely)."""
    if isinstance(error, MemoryError | BrokenExecutor):
        return True
    if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit: never retried
        return False
    return is_memory_message(str(error))


def probe_batch(settings: FeaturizeSettings) -> StructureBatch:
    """One atom of an element the model saw, alone in a cube no check refuses: what a worker
    must be able to compute for a failure to be blamed on a structure."""
    z = settings.seen_elements[0] if settings.seen_elements else 14
    side = max(3.0, 2.0 * float(settings.overlap_threshold) + 1.0)
    return StructureBatch.from_structures([{
        "id": "probe", "lattice": np.eye(3) * side, "pbc": (True, True, True),
        "atomic_numbers": [z], "positions": [[0.0, 0.0, 0.0]]}])


@dataclass
class PipelineStats:
    """What one rank did.

    Attributes:
        chunks, structures: committed by this rank in this run.
        status: [len(Status)] int64 counts by status code. flagged: structures with flag bit 0.
        seconds: wall time of `Pipeline.run`. read, featurize, predict, write: seconds spent
            in each stage (featurize summed over workers).
        batches: model batches predicted.
        max_in_flight: most model batches handed to the workers and not yet predicted at once.
        retried: batches computed again, alone and in halves, after a memory failure.
    """

    chunks: int = 0
    structures: int = 0
    status: np.ndarray = field(default_factory=lambda: np.zeros(len(Status), np.int64))
    flagged: int = 0
    seconds: float = 0.0
    read: float = 0.0
    featurize: float = 0.0
    predict: float = 0.0
    write: float = 0.0
    batches: int = 0
    max_in_flight: int = 0
    retried: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "chunks": self.chunks, "structures": self.structures,
            "status": [int(x) for x in self.status], "flagged": self.flagged,
            "seconds": self.seconds, "read": self.read, "featurize": self.featurize,
            "predict": self.predict, "write": self.write, "batches": self.batches,
            "max_in_flight": self.max_in_flight, "retried": self.retried,
        }


_STOP = object()


@dataclass
class _Done:
    """A batch's results, one row per structure: status, flags, [m, T] predictions, [m, D]
    embeddings (None unless kept), [m, T] spread (None unless an ensemble), NaN where not
    predicted; and what they cost."""

    status: np.ndarray
    flags: np.ndarray
    prediction: np.ndarray
    embedding: np.ndarray | None
    std: np.ndarray | None
    featurize: float = 0.0
    predict: float = 0.0
    batches: int = 0

    @staticmethod
    def join(parts: list[_Done]) -> _Done:
        """The results of consecutive batches, as one."""
        def cat(arrays: list[np.ndarray | None]) -> np.ndarray | None:
            return None if arrays[0] is None else np.concatenate(arrays)  # type: ignore[arg-type]

        return _Done(
            status=np.concatenate([d.status for d in parts]),
            flags=np.concatenate([d.flags for d in parts]),
            prediction=np.concatenate([d.prediction for d in parts]),
            embedding=cat([d.embedding for d in parts]), std=cat([d.std for d in parts]),
            featurize=sum(d.featurize for d in parts), predict=sum(d.predict for d in parts),
            batches=sum(d.batches for d in parts),
        )


@dataclass
class _Chunk:
    k: int
    start: int
    ids: list[str]
    index: np.ndarray  # [m] the structures' store rows
    spans: list[tuple[int, int]]
    batches: list[StructureBatch]
    futures: list[Future[Featurized]]


class Pipeline:
    """The featurize → predict → write pipeline of one rank.

    Args:
        store_path: the input structure store.
        plan: the run's chunks.
        predictor: from `deepergat.export.load`.
        settings: graph settings and checks.
        n_targets: T, predictions per structure.
        embedding_dim: D to keep embeddings, None to drop them.
        spread: the model is an ensemble: keep its [C, T] spread.
        workers: neighbor-search processes (0: one thread in this process).
        worker_model: ``(model file, sha256, trust)``: the workers also predict, each with its own
            single-threaded CPU session (on CPUs, processes scale where threads in one process
            do not); None: this process predicts with ``predictor``.
        batch_atoms, batch_edges: the model-batch budget (`split_batches`).
        prefetch: chunks read ahead of the predictor [default: ``max_batches``].
        max_batches: model batches in the workers or waiting for the predictor; a chunk is
            handed over whole once fewer are out [default: 2 × workers, at least 2].
        write_queue: finished chunks waiting for the writer.
        started: worker processes started ahead (`start_workers`): the first `run` uses them
            when they are as many and load the same model, else stops them and starts its own.
    """

    def __init__(
        self,
        store_path: str | Path,
        plan: Plan,
        predictor: Predictor,
        settings: FeaturizeSettings,
        *,
        n_targets: int,
        embedding_dim: int | None,
        spread: bool = False,
        workers: int = 0,
        worker_model: tuple[str, str, bool] | None = None,
        batch_atoms: int = DEFAULT_BATCH_ATOMS,
        batch_edges: int = DEFAULT_BATCH_EDGES,
        prefetch: int | None = None,
        max_batches: int | None = None,
        write_queue: int = 2,
        started: StartedWorkers | None = None,
    ) -> None:
        self.store_path = Path(store_path)
        self.started = started
        self.plan = plan
        self.predictor = predictor
        self.settings = dataclasses.replace(settings, batch_atoms=batch_atoms,
                                            batch_edges=batch_edges)
        self.n_targets = n_targets
        self.embedding_dim = embedding_dim
        self.spread = bool(spread)
        self.workers = max(0, int(workers))
        self.worker_model = worker_model if self.workers > 0 else None
        self.batch_atoms = batch_atoms
        self.batch_edges = batch_edges
        self.max_batches = max(1, 2 * max(1, self.workers) if max_batches is None
                               else max_batches)
        self.prefetch = max(1, self.max_batches if prefetch is None else prefetch)
        self.write_queue = max(1, write_queue)
        self.task: Callable[[StructureBatch, FeaturizeSettings], Featurized] = (
            featurize_predict if self.worker_model else featurize)

    @property
    def worker_setup(self) -> tuple[str, str, bool, bool] | None:
        """What each worker process loads (`StartedWorkers.model`)."""
        if self.worker_model is None:
            return None
        return (*self.worker_model, self.embedding_dim is not None)

    def _executor(self, workers: int | None = None) -> Executor:
        """The workers: ``workers`` processes [default: the pipeline's, the started ones first
        when they match], or one thread."""
        if self.workers == 0:
            return ThreadPoolExecutor(max_workers=1, thread_name_prefix="featurize")
        started, self.started = self.started, None
        if workers is None and started is not None:
            if started.workers == self.workers and started.model == self.worker_setup:
                return started.executor
            started.close()
        return _pool(workers or self.workers, self.worker_setup)

    def run(
        self,
        next_chunk: Callable[[], int | None],
        commit: Callable[[int, int, Rows], None],
        *,
        on_chunk: Callable[[Rows], None] | None = None,
    ) -> PipelineStats:
        """Process chunks until ``next_chunk`` returns None.

        Args:
            next_chunk: gives this rank its next chunk number (thread-safe; called by the
                reader thread).
            commit: ``commit(k, start, rows)`` stores a finished chunk (called by the writer
                thread, in this rank's chunk order).
            on_chunk: called after each commit with the chunk's rows (progress).

        Returns:
            This rank's `PipelineStats`.

        Raises:
            Whatever a stage raised; the other stages stop first.
        """
        t_start = time.perf_counter()
        flow = _Flow(self, self._executor())
        threads = [
            threading.Thread(target=flow.read, args=(next_chunk,), name="screen-reader",
                             daemon=True),
            threading.Thread(target=flow.write, args=(commit, on_chunk), name="screen-writer",
                             daemon=True),
        ]
        for t in threads:
            t.start()
        try:
            flow.predict()
        except BaseException as e:
            flow.fail(e)
        finally:
            flow.finished.put(_STOP)
            stopped = flow.stop.is_set()
            for t in threads:
                t.join()
            flow.close(cancel=stopped)
        flow.stats.seconds = time.perf_counter() - t_start
        if flow.errors:
            if isinstance(flow.errors[0], BrokenExecutor):
                raise _worker_died() from None
            raise flow.errors[0]
        return flow.stats

    def _blank(self, m: int) -> _Done:
        """Results of m structures with nothing predicted yet."""
        def nan(width: int) -> np.ndarray:
            return np.full((m, width), np.nan, dtype=np.float32)

        return _Done(status=np.zeros(m, np.uint8), flags=np.zeros(m, np.uint8),
                     prediction=nan(self.n_targets),
                     embedding=nan(self.embedding_dim) if self.embedding_dim is not None else None,
                     std=nan(self.n_targets) if self.spread else None)

    def _complete(self, feat: Featurized) -> _Done:
        """A featurized batch's results: the worker's predictions, or this process predicts
        each of its model batches."""
        done = self._blank(len(feat.status))
        done.status[:] = feat.status
        done.flags[:] = feat.flags
        done.featurize = feat.seconds
        if feat.prediction is not None:  # a worker predicted it
            done.prediction[:] = feat.prediction
            if done.embedding is not None and feat.embedding is not None:
                done.embedding[:] = feat.embedding
            if done.std is not None and feat.std is not None:
                done.std[:] = feat.std
            done.predict, done.batches = feat.predict_seconds, feat.batches
            return done
        for g in feat.graphs:
            if not len(g.rows):
                continue
            t0 = time.perf_counter()
            p, em, sd = self.predictor.predict(g.inputs)
            done.predict += time.perf_counter() - t0
            done.batches += 1
            c = len(g.rows)
            done.prediction[g.rows] = np.asarray(p, np.float32).reshape(c, self.n_targets)
            if done.embedding is not None:
                done.embedding[g.rows] = np.asarray(em, np.float32).reshape(c, -1)
            if done.std is not None and sd is not None:
                done.std[g.rows] = np.asarray(sd, np.float32).reshape(c, self.n_targets)
        return done

    def _out_of_memory(self, batch: StructureBatch) -> _Done:
        """Results of structures that failed for memory even alone: status 10, their flags."""
        done = self._blank(len(batch))
        done.status[:] = Status.OUT_OF_MEMORY
        s = self.settings
        done.flags[:] = structure_flags(batch, seen_elements=s.seen_elements, graph=s.graph,
                                        translation_max_atoms=s.translation_max_atoms)
        return done

    def _finish_chunk(
        self,
        item: _Chunk,
        results: list[_Done],
        stats: PipelineStats,
    ) -> tuple[int, int, Rows]:
        """Assemble a chunk's rows from its batches; non-finite predictions become status 7."""
        for done in results:
            stats.featurize += done.featurize
            stats.predict += done.predict
            stats.batches += done.batches
        whole = _Done.join(results)
        status, preds, emb, spread = whole.status, whole.prediction, whole.embedding, whole.std
        ok = status == Status.OK
        bad = ok & ~np.isfinite(preds).all(axis=1)
        if spread is not None:
            bad |= ok & ~np.isfinite(spread).all(axis=1)
        status[bad] = Status.NONFINITE_PREDICTION
        failed = status != Status.OK
        preds[failed] = np.nan
        if emb is not None:
            emb[failed] = np.nan
        if spread is not None:
            spread[failed] = np.nan
        rows_out = Rows(
            index=np.asarray(item.index, dtype=np.int64),
            ids=item.ids, status=status, flags=whole.flags, predictions=preds, embeddings=emb,
            std=spread,
        )
        return item.k, item.start, rows_out


def _worker_died() -> SettingError:
    """The one line for worker processes that die whatever they compute."""
    return SettingError(
        "a worker process of this rank died (killed — by the out-of-memory killer? — or "
        "crashed); the chunks committed so far are kept: run the same command again to "
        "compute the rest (with fewer {workers} if memory is short)"
    )


def _describe(error: BaseException) -> str:
    """A memory failure in a few words, for the log."""
    if isinstance(error, BrokenExecutor):
        return "its worker process was killed"
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:120]}" if text else type(error).__name__


class _Flow:
    """One `Pipeline.run`: its three stages and what they share.

    The reader thread (`read`) fills ``chunks``, the calling thread (`predict`) empties it into
    ``finished``, the writer thread (`write`) commits from there. The first error of any stage
    goes into ``errors`` and sets ``stop``; every stage then winds down.

    Attributes:
        pipeline: the settings.
        executor: the workers (threads or processes); a process pool that broke is replaced
            (``pool_lock`` guards it).
        isolated: one worker process of its own for batches computed again after a memory
            failure (`_alone`), started when first needed; None without worker processes.
        chunks: read chunks whose batches are with the workers, then `_STOP` (unbounded: the
            ``slots`` bound it).
        finished: assembled chunks for the writer, then `_STOP` (``write_queue`` deep).
        slots: chunks the reader may read ahead of the predictor (``prefetch``).
        handed: guards ``in_flight``; notified when a batch is predicted.
        in_flight: model batches handed to the workers and not yet predicted
            (≤ ``max_batches``, plus one chunk's batches).
        stop: set on the first error.
        errors: the exceptions the stages raised, first first.
        lock: guards the reader's and writer's updates of ``stats``.
        stats: this run's counts and stage times.
    """

    def __init__(self, pipeline: Pipeline, executor: Executor) -> None:
        self.pipeline = pipeline
        self.executor = executor
        self.pool_lock = threading.Lock()
        self.isolated: Executor | None = None
        self.chunks: queue.Queue[Any] = queue.Queue()  # `_Chunk`s, then `_STOP`
        # (k, start, rows) of finished chunks, then `_STOP`
        self.finished: queue.Queue[Any] = queue.Queue(maxsize=pipeline.write_queue)
        self.slots = threading.Semaphore(pipeline.prefetch)
        self.handed = threading.Condition()
        self.in_flight = 0
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()
        self.stats = PipelineStats()

    def fail(self, e: BaseException) -> None:
        """Record a stage's error (for `Pipeline.run` to raise) and stop every stage."""
        self.errors.append(e)
        self.stop.set()

    def close(self, *, cancel: bool) -> None:
        """Shut the worker pools down (cancelling what waits after an error)."""
        with self.pool_lock:
            self.executor.shutdown(wait=True, cancel_futures=cancel)
        if self.isolated is not None:
            self.isolated.shutdown(wait=True, cancel_futures=True)

    def submit(self, batch: StructureBatch) -> Future[Featurized]:
        """Hand a batch to the workers; a pool that broke (a worker died) is replaced first —
        its batches are computed again by the predictor stage (`_alone`)."""
        p = self.pipeline
        with self.pool_lock:
            try:
                return self.executor.submit(p.task, batch, p.settings)
            except BrokenExecutor:
                # not cancelled: the broken pool fails every batch it holds, and each is
                # computed again (a cancelled one would stop the run)
                self.executor.shutdown(wait=False)
                self.executor = p._executor()
                return self.executor.submit(p.task, batch, p.settings)

    # ------------------------------------------------------------------ reader thread

    def read(self, next_chunk: Callable[[], int | None]) -> None:
        """Read chunks, cut them into model batches and hand those to the workers, as long as
        a read-ahead slot is free and fewer than ``max_batches`` batches are out."""
        try:
            with Store(self.pipeline.store_path) as store:
                while self._free_slot():
                    k = next_chunk()
                    if k is None:
                        return
                    chunk = self._read_chunk(store, k)
                    if not self._hand_out(len(chunk.batches)):
                        return
                    chunk.futures.extend(self.submit(sub) for sub in chunk.batches)
                    self.chunks.put(chunk)
        except BaseException as e:  # handed to the main thread
            self.fail(e)
        finally:
            self.chunks.put(_STOP)

    def _free_slot(self) -> bool:
        """Wait for a read-ahead slot; False once the run stops."""
        while not self.slots.acquire(timeout=0.2):
            if self.stop.is_set():
                return False
        return not self.stop.is_set()

    def _read_chunk(self, store: Store, k: int) -> _Chunk:
        """Chunk k with its model batches (none handed out yet)."""
        p = self.pipeline
        t0 = time.perf_counter()
        a, b = p.plan.bounds(k)
        batch = store.read(a, b) if p.plan.rows is None else store.read_rows(p.plan.rows[a:b])
        spans = split_batches(
            batch.n_atoms, max_atoms=p.settings.max_atoms,
            max_neighbors=p.settings.max_neighbors,
            batch_atoms=p.batch_atoms, batch_edges=p.batch_edges,
        )
        subs = [batch.select(np.arange(s, e)) for s, e in spans]
        with self.lock:
            self.stats.read += time.perf_counter() - t0
        return _Chunk(k, a, batch.ids, batch.index, spans, subs, [])

    def _hand_out(self, n: int) -> bool:
        """Count ``n`` batches in flight once fewer than ``max_batches`` are (a chunk goes to
        the workers whole); False once the run stops."""
        with self.handed:
            while self.in_flight >= self.pipeline.max_batches and not self.stop.is_set():
                self.handed.wait(timeout=0.2)
            if self.stop.is_set():
                return False
            self.in_flight += n
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.in_flight)
        return True

    # ------------------------------------------------------------------ calling thread

    def predict(self) -> None:
        """Predict each chunk's batches as the workers finish them, in chunk order, and hand
        the assembled rows to the writer; after an error only drain the reader's chunks."""
        p = self.pipeline
        while True:
            item = self.chunks.get()
            if item is _STOP:
                return
            self.slots.release()
            if self.stop.is_set():
                continue
            results = []
            for f, batch in zip(item.futures, item.batches, strict=True):
                results.append(self._result(f, batch))
                with self.handed:
                    self.in_flight -= 1
                    self.handed.notify()
            self.finished.put(p._finish_chunk(item, results, self.stats))

    def _result(self, fut: Future[Featurized], batch: StructureBatch) -> _Done:
        """A batch's results; a batch that failed for memory is computed again (`_alone`)."""
        try:
            return self.pipeline._complete(fut.result())
        except BaseException as e:
            if isinstance(e, DeepergatError) or not memory_failure(e):
                raise
            log.warning("a batch of %d structures (%s, ...) failed for memory (%s): computing "
                        "it again, alone and in halves", len(batch), batch.ids[0], _describe(e))
            with self.lock:
                self.stats.retried += 1
            return self._alone(batch)

    def _alone(self, batch: StructureBatch) -> _Done:
        """A batch's results computed by a worker of its own (or this thread): on a memory
        failure each half again, down to the single structure, which gets status 10 when a
        one-atom probe then runs (else the failure is not the structure's: the run stops)."""
        try:
            return self.pipeline._complete(self._isolated(batch))
        except BaseException as e:
            if isinstance(e, DeepergatError) or not memory_failure(e):
                raise
            m = len(batch)
            if m > 1:
                return _Done.join([self._alone(batch.select(np.arange(m // 2))),
                                   self._alone(batch.select(np.arange(m // 2, m)))])
            self._check_probe()
            log.warning("structure %r failed for memory even alone (%s): status %d",
                        batch.ids[0], _describe(e), int(Status.OUT_OF_MEMORY))
            return self.pipeline._out_of_memory(batch)

    def _isolated(self, batch: StructureBatch) -> Featurized:
        """`featurize` (or `featurize_predict`) of a batch in the isolated worker, or in this
        thread without worker processes."""
        p = self.pipeline
        if p.workers == 0:
            return p.task(batch, p.settings)
        if self.isolated is None:
            pool = p._executor(workers=1)
            try:  # a worker that cannot compute a one-atom structure fails whatever it gets
                pool.submit(p.task, probe_batch(p.settings), p.settings).result()
            except BaseException as e:
                pool.shutdown(wait=False, cancel_futures=True)
                if isinstance(e, BrokenExecutor):
                    raise _worker_died() from None
                raise
            self.isolated = pool
        try:
            return self.isolated.submit(p.task, batch, p.settings).result()
        except BrokenExecutor:
            self.isolated.shutdown(wait=False)
            self.isolated = None
            raise

    def _check_probe(self) -> None:
        """Raises when a one-atom probe structure fails for memory too: then the memory
        failure is not the structure's (the model or the worker cannot run at all)."""
        try:
            self.pipeline._complete(self._isolated(probe_batch(self.pipeline.settings)))
        except BaseException as e:
            if isinstance(e, DeepergatError) or not memory_failure(e):
                raise
            raise SettingError(
                "this rank runs out of memory even on a one-atom structure ("
                + literal(_describe(e)) + "); the chunks committed so far are kept: run the "
                "same command again with more memory (or fewer {workers})"
            ) from None

    # ------------------------------------------------------------------ writer thread

    def write(self, commit: Callable[[int, int, Rows], None],
              on_chunk: Callable[[Rows], None] | None) -> None:
        """Commit each finished chunk and count it; after an error only drain the queue (so
        the predictor never blocks on it)."""
        try:
            while True:
                item = self.finished.get()
                if item is _STOP:
                    return
                k, start, rows = item
                t0 = time.perf_counter()
                commit(k, start, rows)
                self._count(rows, time.perf_counter() - t0)
                if on_chunk is not None:
                    on_chunk(rows)
        except BaseException as e:  # handed to the main thread
            self.fail(e)
            while self.finished.get() is not _STOP:
                pass

    def _count(self, rows: Rows, seconds: float) -> None:
        s = self.stats
        with self.lock:
            s.write += seconds
            s.chunks += 1
            s.structures += len(rows)
            s.status += np.bincount(rows.status, minlength=len(Status))[: len(Status)]
            s.flagged += int(np.count_nonzero(rows.flags & FLAG_UNSEEN_ELEMENT))
