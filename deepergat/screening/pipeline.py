"""Within a rank: reader → neighbor-search workers → predictor → writer, overlapped.

* The **reader** thread takes the rank's next chunk (from the MPI counter or a local list) only
  when a prefetch slot is free, reads it with two slices, cuts it into model batches by an
  atom/edge budget and hands each batch to the workers.
* The **workers** run `deepergat.graphs.build_inputs` (the periodic neighbor search) and the
  unseen-element flags: a thread (``workers=0``; the numba kernel releases the GIL) or a process
  pool started with forkserver — never forked from a process that has initialized MPI. On CPUs
  the worker processes also run the model (``worker_model``), one single-threaded session each:
  the model is memory-bound with small kernels, and processes scale where threads sharing one
  process do not.
* The **predictor** is called on one batch at a time by the calling thread (unless the workers
  predicted it); rows are assembled in chunk order and non-finite predictions become status 7.
* The **writer** thread commits each finished chunk as its part file and reports progress.

At most ``max_batches`` model batches (each within the atom/edge budget) are handed to the
workers and not yet consumed by the predictor, at most ``prefetch`` chunks are read ahead and
``write_queue`` chunks wait for the writer, so memory is bounded by the chunk and batch sizes,
not by the input. The batch cap defaults to twice the workers: with a GPU, where one chunk is
one large batch, every worker then has a chunk to featurize (docs/design.md §11).

`Pipeline` holds the settings; each `Pipeline.run` is a `_Flow`, whose methods are the stages
and whose attributes are what they share: the queues, the read-ahead slots, the count of
batches in flight, the stop event and the error slot.
"""

from __future__ import annotations

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
from typing import Any, NamedTuple, Protocol

import numpy as np

from deepergat.contract import Status
from deepergat.errors import SettingError
from deepergat.graphs import GraphBatch, build_inputs
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
    "featurize",
    "featurize_predict",
    "split_batches",
    "start_forkserver",
]

log = logging.getLogger(__name__)

#: Atoms per model batch on the CPU (≈ 120 perovskite-family crystals: CPU inference is
#: memory-bound, so mid-sized batches run fastest; docs/design.md §11).
DEFAULT_BATCH_ATOMS = 1024
#: Padded edge slots (atoms × (max_neighbors + 1)) per model batch.
DEFAULT_BATCH_EDGES = DEFAULT_BATCH_ATOMS * 16
#: Modules the forkserver imports once, so each worker starts warm.
_PRELOAD = ["deepergat.graphs", "deepergat.screening.pipeline"]


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
    """

    cutoff: float
    max_neighbors: int
    max_atoms: int
    max_z: int
    overlap_threshold: float
    seen_elements: tuple[int, ...]
    graph: str = "periodic"


@dataclass
class Featurized:
    """One model batch, ready for the predictor — or already predicted by a worker.

    Attributes:
        graph: padded inputs of its status-0 structures, ``graph.status`` for all (the inputs
            are dropped once a worker has predicted them).
        flags: [m] uint8 flag bits of every structure of the batch.
        seconds: time spent in the neighbor search and flags.
        prediction, embedding, std: [C, T], [C, D] and [C, T] (an ensemble's spread) for
            ``graph.rows`` when a worker predicted the batch, else None.
        predict_seconds: time the worker's predictor took.
    """

    graph: GraphBatch
    flags: np.ndarray
    seconds: float
    prediction: np.ndarray | None = None
    embedding: np.ndarray | None = None
    std: np.ndarray | None = None
    predict_seconds: float = 0.0


def split_batches(
    n_atoms: np.ndarray,
    *,
    max_atoms: int,
    max_neighbors: int,
    batch_atoms: int = DEFAULT_BATCH_ATOMS,
    batch_edges: int = DEFAULT_BATCH_EDGES,
) -> list[tuple[int, int]]:
    """Cut a chunk into consecutive model batches under an atom and edge budget.

    A batch closes before the structure that would take it over ``batch_atoms`` atoms, over
    ``batch_edges`` padded edge slots (atoms × (max_neighbors + 1)), or over 8 · ``batch_atoms``
    crystal slots (crystals × largest crystal, the [C, A] padding; the model's [C, A, 108]
    composition one-hot stays well below its [N, K, heads · dim] edge tensors). Structures that
    will be screened out (0 atoms, more than ``max_atoms``) cost nothing. A single structure over
    budget is a batch of its own.

    Args:
        n_atoms: [m] atoms per structure.

    Returns:
        [(start, stop)] covering 0..m in order.
    """
    cost = np.where((n_atoms > 0) & (n_atoms <= max_atoms), n_atoms, 0).tolist()
    per_edge = max_neighbors + 1
    out: list[tuple[int, int]] = []
    start = atoms = largest = 0
    for i, n in enumerate(cost):
        big = max(largest, n)
        if i > start and (
            atoms + n > batch_atoms
            or (atoms + n) * per_edge > batch_edges
            or (i - start + 1) * big > 8 * batch_atoms
        ):
            out.append((start, i))
            start, atoms, big = i, 0, n
        atoms += n
        largest = big
    if start < len(cost):
        out.append((start, len(cost)))
    return out


def unseen_flags(batch: StructureBatch, seen: np.ndarray) -> np.ndarray:
    """[m] uint8: `FLAG_UNSEEN_ELEMENT` where a structure has an atom whose Z is not ``seen``.

    Args:
        batch: m structures. seen: [256] bool, True for atomic numbers seen in training.
    """
    m = len(batch)
    z = batch.atomic_numbers
    unseen = (z < 0) | (z >= len(seen))
    unseen[~unseen] = ~seen[z[~unseen]]
    owner = np.repeat(np.arange(m), batch.n_atoms)
    hit = np.bincount(owner[unseen], minlength=m) > 0
    return np.where(hit, FLAG_UNSEEN_ELEMENT, 0).astype(np.uint8)


_SEEN_CACHE: dict[tuple[int, ...], np.ndarray] = {}


def featurize(batch: StructureBatch, settings: FeaturizeSettings) -> Featurized:
    """Model inputs, status codes 1-6 and flags of one model batch (runs in a worker).

    Args:
        batch: m structures.
        settings: see `FeaturizeSettings`.
    """
    t0 = time.perf_counter()
    seen = _SEEN_CACHE.get(settings.seen_elements)
    if seen is None:
        seen = np.zeros(256, dtype=bool)
        z = np.array([v for v in settings.seen_elements if 0 <= v < 256], dtype=np.int64)
        seen[z] = True
        _SEEN_CACHE[settings.seen_elements] = seen
    graph = build_inputs(
        batch, cutoff=settings.cutoff, max_neighbors=settings.max_neighbors,
        graph=settings.graph, max_atoms=settings.max_atoms, max_z=settings.max_z,
        overlap_threshold=settings.overlap_threshold,
    )
    flags = unseen_flags(batch, seen)
    return Featurized(graph=graph, flags=flags, seconds=time.perf_counter() - t0)


def start_forkserver() -> None:
    """Start the forkserver (preloading the graph code) now — before MPI is initialized, so no
    process is ever forked from an MPI rank."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    from multiprocessing import forkserver

    forkserver.ensure_running()


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
    s = StructureBatch.from_structures(
        [{"id": "warm", "lattice": np.eye(3) * 3.0, "pbc": (True, True, True),
          "atomic_numbers": [14], "positions": [[0.0, 0.0, 0.0]]}]
    )
    build_inputs(s, max_neighbors=2, cutoff=4.0)
    if model is not None:
        from deepergat import export

        path, sha256, trust, keep_embeddings = model
        predictor = export.load(path, device="cpu", threads=1, trust=trust)
        if predictor.sha256 != sha256:
            raise RuntimeError(f"{path} changed while screening (sha256 {predictor.sha256})")
        _WORKER_PREDICTOR = (predictor, keep_embeddings)


def featurize_predict(batch: StructureBatch, settings: FeaturizeSettings) -> Featurized:
    """`featurize`, then predict with this worker's model (runs in a predicting worker); the
    padded inputs stay in the worker, only the predictions travel back."""
    feat = featurize(batch, settings)
    predictor, keep_embeddings = _WORKER_PREDICTOR
    g = feat.graph
    if len(g.rows):
        t0 = time.perf_counter()
        p, em, sd = predictor.predict(g.inputs)
        feat.predict_seconds = time.perf_counter() - t0
        feat.prediction = np.asarray(p, dtype=np.float32)
        feat.embedding = np.asarray(em, dtype=np.float32) if keep_embeddings else None
        feat.std = None if sd is None else np.asarray(sd, dtype=np.float32)
    feat.graph = GraphBatch(inputs={}, rows=g.rows, status=g.status, n_edges=g.n_edges)
    return feat


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

    def as_dict(self) -> dict[str, Any]:
        return {
            "chunks": self.chunks, "structures": self.structures,
            "status": [int(x) for x in self.status], "flagged": self.flagged,
            "seconds": self.seconds, "read": self.read, "featurize": self.featurize,
            "predict": self.predict, "write": self.write, "batches": self.batches,
            "max_in_flight": self.max_in_flight,
        }


_STOP = object()


class _Predicted(NamedTuple):
    """A model batch and its outputs (None when it had no status-0 structure)."""

    feat: Featurized
    prediction: np.ndarray | None = None
    embedding: np.ndarray | None = None
    std: np.ndarray | None = None
    seconds: float = 0.0


@dataclass
class _Chunk:
    k: int
    start: int
    ids: list[str]
    spans: list[tuple[int, int]]
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
    ) -> None:
        self.store_path = Path(store_path)
        self.plan = plan
        self.predictor = predictor
        self.settings = settings
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

    def _executor(self) -> Executor:
        if self.workers == 0:
            return ThreadPoolExecutor(max_workers=1, thread_name_prefix="featurize")
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        model = ((*self.worker_model, self.embedding_dim is not None)
                 if self.worker_model is not None else None)
        return ProcessPoolExecutor(
            max_workers=self.workers, mp_context=ctx, initializer=_worker_init,
            initargs=(model, os.getpid()),
        )

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
            flow.executor.shutdown(wait=True, cancel_futures=stopped)
        flow.stats.seconds = time.perf_counter() - t_start
        if flow.errors:
            if isinstance(flow.errors[0], BrokenExecutor):
                raise SettingError(
                    "a worker process of this rank died (killed — by the out-of-memory killer? — "
                    "or crashed); the chunks committed so far are kept: run the same command "
                    "again to compute the rest (with fewer {workers} if memory is short)"
                ) from None
            raise flow.errors[0]
        return flow.stats

    def _predict_batch(self, fut: Future[Featurized]) -> _Predicted:
        """Wait for a batch's inputs and predict its status-0 structures."""
        feat = fut.result()
        if not len(feat.graph.rows):
            return _Predicted(feat)
        if feat.prediction is not None:  # a worker predicted it
            return _Predicted(feat, feat.prediction, feat.embedding, feat.std,
                              feat.predict_seconds)
        t0 = time.perf_counter()
        p, em, sd = self.predictor.predict(feat.graph.inputs)
        return _Predicted(feat, np.asarray(p), np.asarray(em),
                          None if sd is None else np.asarray(sd), time.perf_counter() - t0)

    def _finish_chunk(
        self,
        item: _Chunk,
        jobs: list[_Predicted],
        stats: PipelineStats,
    ) -> tuple[int, int, Rows]:
        """Assemble a chunk's rows from its batches; non-finite predictions become status 7."""
        m = len(item.ids)
        t = self.n_targets
        status = np.zeros(m, dtype=np.uint8)
        flags = np.zeros(m, dtype=np.uint8)
        preds = np.full((m, t), np.nan, dtype=np.float32)
        emb = (np.full((m, self.embedding_dim), np.nan, dtype=np.float32)
               if self.embedding_dim is not None else None)
        spread = np.full((m, t), np.nan, dtype=np.float32) if self.spread else None
        for (s, e), job in zip(item.spans, jobs, strict=True):
            feat, p, em, sd, seconds = job
            stats.featurize += feat.seconds
            g = feat.graph
            status[s:e] = g.status
            flags[s:e] = feat.flags
            if p is None:
                continue
            stats.predict += seconds
            stats.batches += 1
            rows = s + g.rows
            preds[rows] = p.astype(np.float32, copy=False).reshape(len(rows), t)
            if emb is not None and em is not None:
                emb[rows] = em.astype(np.float32, copy=False).reshape(len(rows), -1)
            if spread is not None and sd is not None:
                spread[rows] = sd.astype(np.float32, copy=False).reshape(len(rows), t)
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
            index=np.arange(item.start, item.start + m, dtype=np.int64),
            ids=item.ids, status=status, flags=flags, predictions=preds, embeddings=emb,
            std=spread,
        )
        return item.k, item.start, rows_out


class _Flow:
    """One `Pipeline.run`: its three stages and what they share.

    The reader thread (`read`) fills ``chunks``, the calling thread (`predict`) empties it into
    ``finished``, the writer thread (`write`) commits from there. The first error of any stage
    goes into ``errors`` and sets ``stop``; every stage then winds down.

    Attributes:
        pipeline: the settings. executor: the workers (threads or processes).
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
                    chunk, subs = self._read_chunk(store, k)
                    if not self._hand_out(len(subs)):
                        return
                    task = featurize_predict if self.pipeline.worker_model else featurize
                    settings = self.pipeline.settings
                    chunk.futures.extend(self.executor.submit(task, sub, settings)
                                         for sub in subs)
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

    def _read_chunk(self, store: Store, k: int) -> tuple[_Chunk, list[StructureBatch]]:
        """Chunk k (no batch handed out yet) and its model batches."""
        p = self.pipeline
        t0 = time.perf_counter()
        a, b = p.plan.bounds(k)
        batch = store.read(a, b)
        spans = split_batches(
            batch.n_atoms, max_atoms=p.settings.max_atoms,
            max_neighbors=p.settings.max_neighbors,
            batch_atoms=p.batch_atoms, batch_edges=p.batch_edges,
        )
        subs = [batch.select(np.arange(s, e)) for s, e in spans]
        with self.lock:
            self.stats.read += time.perf_counter() - t0
        return _Chunk(k, a, batch.ids, spans, []), subs

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
            jobs = []
            for f in item.futures:
                jobs.append(p._predict_batch(f))
                with self.handed:
                    self.in_flight -= 1
                    self.handed.notify()
            self.finished.put(p._finish_chunk(item, jobs, self.stats))

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
