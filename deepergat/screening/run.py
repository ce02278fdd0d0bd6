"""The screening driver: checks, plan, parts, ranks, pipeline, merge — in that order.

`screen` runs on every rank. File-level problems (input, model, an output or parts directory of
another run) are found by rank 0 before any work starts and raised on every rank as one
`DeepergatError`. Then the chunks still to do are handed out (dynamically across MPI ranks, a
static atom-balanced share for an array shard), committed as parts, and merged: by rank 0 after
an MPI run, by the array task that completes the set (``O_EXCL`` claim), or by ``--merge-only``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from deepergat._version import __version__
from deepergat.contract import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_ATOMS,
    DEFAULT_OVERLAP_THRESHOLD,
    DEFAULT_RANK_BY,
    DEFAULT_RANK_K,
    DEFAULT_RANK_ORDER,
    MAX_Z,
    RankBy,
    RankOrder,
    Status,
)
from deepergat.errors import DeepergatError, environment_error, is_full_disk, is_write_failure
from deepergat.export.predictor import warn_cell_dependent
from deepergat.io.store import Store, StructureBatch
from deepergat.metadata import ModelMetadata, TargetInfo
from deepergat.system.devices import DEFAULT_DEVICE, cpus_per_rank, pick_device, visible_gpus
from deepergat.system.files import file_sha256
from deepergat.system.launch import claim_token, shard_from_env
from deepergat.system.lock import OutputLock, run_token

from .merge import (
    MergeResult,
    MissingChunksError,
    check_space,
    describe_missing,
    merge_parts,
    output_bytes,
    screen_settings,
)
from .mpi import Ranks
from .parts import MANIFEST_FORMAT, PartsDir, settings_digest
from .pipeline import (
    DEFAULT_BATCH_ATOMS,
    DEFAULT_BATCH_EDGES,
    FeaturizeSettings,
    Pipeline,
    featurize,
)
from .plan import Plan, make_plan, parse_shard, shard_chunks
from .predictions import FLAG_UNSEEN_ELEMENT, Rows, read_identity, write_top_csv

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "AllRanksError",
    "Hooks",
    "ScreenOptions",
    "ScreenResult",
    "default_output",
    "screen",
    "top_csv_path",
]

log = logging.getLogger(__name__)

#: Atoms per model batch on a GPU (the CPU default is `DEFAULT_BATCH_ATOMS`).
GPU_BATCH_ATOMS = 16384
#: The bundled model screened with when ``--model`` is not given (else the first bundled one).
DEFAULT_MODEL = "perovskite-heat-single"

Outcome = Literal["merged", "already-merged", "shard-done", "merge-claimed"]


class AllRanksError(DeepergatError):
    """A file-level problem found before any work, raised alike on every rank (so rank 0 alone
    reports it and no rank waits for another)."""


@dataclass
class ScreenOptions:
    """The command line's options (see ``deepergat-screen --help``)."""

    input: Path
    model: str | None = None
    output: Path | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    device: str = DEFAULT_DEVICE
    workers: int | None = None
    shard: str | None = None
    max_atoms: int = DEFAULT_MAX_ATOMS
    overlap_threshold: float = DEFAULT_OVERLAP_THRESHOLD
    embeddings: bool = False
    top: int | None = None
    top_order: RankOrder = DEFAULT_RANK_ORDER
    rank_by: RankBy = DEFAULT_RANK_BY
    rank_k: float = DEFAULT_RANK_K
    resume: bool = True
    merge_only: bool = False
    batch_atoms: int | None = None
    batch_edges: int | None = None
    trust: bool = False


@dataclass
class Hooks:
    """Callbacks for the command line (progress bars belong there).

    Attributes:
        on_start: ``(structures to compute, structures already committed, ranks)`` on rank 0
            when the work starts.
        on_progress: ``(done, bad, flagged)`` summed over ranks, on rank 0, a few times a second.
    """

    on_start: Callable[[int, int, int], None] | None = None
    on_progress: Callable[[int, int, int], None] | None = None


@dataclass
class ScreenResult:
    """What a screen did (complete on rank 0; other ranks get their own counts).

    Attributes:
        outcome: ``merged`` (this run wrote the final file), ``already-merged`` (the complete
            output of this run was already there), ``shard-done`` (this shard is committed,
            others are not yet), ``merge-claimed`` (every chunk is committed and another task
            claimed the merge).
        output, parts, top_csv: paths (``top_csv`` None without ``--top``).
        ranks: processes in this run. shard: (I, N) or None.
        structures, seconds: structures computed in this run and the wall time it took.
        status: [8] counts by status of the structures computed in this run; flagged likewise.
        skipped: structures whose chunks were committed before this run.
        merge: the merge's counts (whole file) when this run merged.
        missing: chunks without a part after this run (other shards' work).
        rank_stats: per-rank `PipelineStats.as_dict`, on rank 0.
    """

    outcome: Outcome
    output: Path
    parts: Path
    top_csv: Path | None = None
    ranks: int = 1
    shard: tuple[int, int] | None = None
    structures: int = 0
    seconds: float = 0.0
    status: np.ndarray = field(default_factory=lambda: np.zeros(len(Status), np.int64))
    flagged: int = 0
    skipped: int = 0
    merge: MergeResult | None = None
    missing: list[int] = field(default_factory=list)
    rank_stats: list[dict[str, Any]] = field(default_factory=list)


def default_output(input_path: str | os.PathLike[str]) -> Path:
    """``<input stem>.predictions.h5`` beside the input."""
    p = Path(input_path)
    return p.with_name(p.stem + ".predictions.h5")


def top_csv_path(output: str | os.PathLike[str]) -> Path:
    """``<output stem>.top.csv`` beside the output."""
    p = Path(output)
    return p.with_name(p.stem + ".top.csv")


# ------------------------------------------------------------------------------ the model


@dataclass
class _Model:
    """The loaded model of a run.

    Attributes:
        predictor: the `deepergat.export.Predictor`.
        name: the model's name or resolved path.
        sha256: of the file loaded.
        metadata: the predictor's metadata.
        targets: [T] its targets, in output order.
        settings: the featurizer's settings: the model's graph and the run's checks.
        embedding_dim: width D of the embeddings.
        spread: whether the model gives a calibrated ``std`` (an ensemble).
    """

    predictor: Any
    name: str
    sha256: str
    metadata: ModelMetadata
    targets: tuple[TargetInfo, ...]
    settings: FeaturizeSettings
    embedding_dim: int
    spread: bool = False


def _model_name(model: str) -> str:
    p = Path(model)
    return str(p.resolve()) if p.exists() else model


def _load_model(model: str | None, device: tuple[str, int], threads: int | None,
                max_atoms: int, overlap_threshold: float, trust: bool = False) -> _Model:
    """Load the predictor, read its metadata and run one probe structure through it.

    Args:
        model: a model file or bundled name (None: the default bundled model).
        device: (``auto``/``cpu``/``cuda``, device id) from `pick_device`.
        threads: predictor CPU threads.
        max_atoms, overlap_threshold: the run's status checks.
        trust: load a model file that runs code (`deepergat.export.load`).
    """
    from deepergat import export

    if model is None:
        model = _default_model()
    try:
        predictor = export.load(model, device=device[0], device_id=device[1], threads=threads,
                                trust=trust)
    except DeepergatError:
        raise
    except Exception as e:  # a foreign or damaged file the loader did not recognise
        raise DeepergatError(f"{model}: cannot load the model: {e}") from None
    targets = predictor.metadata.targets
    seen = tuple(sorted(predictor.elements))
    settings = FeaturizeSettings(
        cutoff=predictor.cutoff, max_neighbors=predictor.max_neighbors, max_atoms=int(max_atoms),
        max_z=MAX_Z, overlap_threshold=float(overlap_threshold), seen_elements=seen,
        graph=predictor.graph,
    )
    # Probe: one small crystal through the predictor checks it runs and gives T and D.
    z = seen[0] if seen else 14
    probe = StructureBatch.from_structures([{
        "id": "probe", "lattice": np.eye(3) * 3.0, "pbc": (True, True, True),
        "atomic_numbers": [z, z], "positions": [[0.0, 0.0, 0.0], [1.5, 1.5, 1.5]],
    }])
    g = featurize(probe, dataclasses.replace(settings, max_atoms=2, overlap_threshold=0.0)).graph
    try:
        out = predictor.predict(g.inputs)
    except Exception as e:  # any runtime failure is a model-file problem
        raise DeepergatError(f"{model}: the model failed on a probe structure: {e}") from None
    pred, emb = np.asarray(out.prediction), np.asarray(out.embedding)
    spread = out.std is not None
    if (pred.shape != (1, len(targets)) or emb.ndim != 2 or emb.shape[0] != 1
            or (spread and np.shape(out.std) != pred.shape)):
        raise DeepergatError(
            f"{model}: the model returned prediction {pred.shape} and embedding {emb.shape} for "
            f"one crystal, expected (1, {len(targets)}) and (1, D)"
        )
    return _Model(
        predictor=predictor, name=_model_name(model), sha256=str(predictor.sha256),
        metadata=predictor.metadata, targets=targets, settings=settings,
        embedding_dim=int(emb.shape[1]), spread=spread,
    )


def _default_model() -> str:
    """The bundled model screening uses without ``--model``."""
    from deepergat.export.resolve import bundled_models

    names = bundled_models()
    if not names:
        raise DeepergatError("no bundled model is installed; pass --model FILE")
    return DEFAULT_MODEL if DEFAULT_MODEL in names else names[0]


def _model_path(model: str | None) -> Path:
    """The file `deepergat.export.load` loads for a MODEL argument (None: the default)."""
    from deepergat.export.resolve import resolve_model

    return resolve_model(model if model is not None else _default_model())


def _model_sha_only(model: str | None) -> tuple[str, str]:
    """(name, sha256) of a model without loading it (for --merge-only): the sha256 of the file
    that `deepergat.export.load` would load, as `Predictor.sha256` is."""
    name = model if model is not None else _default_model()
    return _model_name(name), file_sha256(_model_path(name))


# ------------------------------------------------------------------------------ checks


@dataclass
class _Input:
    path: Path
    digest: str
    n_atoms: np.ndarray
    edited: bool = False
    recorded_digest: str = ""


def _open_input(path: Path) -> _Input:
    with Store(path) as store:
        digest = store.content_digest
        n_atoms = store.n_atoms.copy()
    if not digest:
        log.warning("%s has no content digest; hashing the file", path)
        digest = file_sha256(path)
    return _Input(path=path.resolve(), digest=digest, n_atoms=n_atoms)


def _clear_output_temporaries(output: Path) -> None:
    """Remove files a killed run left beside the output (its merged file or top-K list half
    written: ``.<name>.tmp-<pid>``); the caller owns the output's lock."""
    prefixes = (f".{output.name}.tmp-", f".{top_csv_path(output).name}.tmp-")
    with contextlib.suppress(OSError):
        for entry in os.listdir(output.parent if str(output.parent) else "."):
            if entry.startswith(prefixes):
                (output.parent / entry).unlink(missing_ok=True)
                log.info("removed %s, left by a killed run", output.parent / entry)


def _discard_unused_parts(output: Path) -> Callable[[], None]:
    """The output lock's last-exit hook: a parts directory to which the run committed nothing
    (it failed first) goes too."""
    return lambda: PartsDir(output).discard_if_unused()


def _refresh_digest(inp: _Input, parts: PartsDir) -> bool:
    """The input's content digest as its arrays are now (re-hashed unless ``parts`` holds a
    verified digest of the same unchanged file, `PartsDir.input_digest`); True when it differs
    from the one its writer recorded (the store was edited in place), which then no longer
    identifies it."""
    def rehash() -> str:
        with Store(inp.path) as store:
            return store.compute_digest()

    actual = parts.input_digest(inp.path, rehash)
    if actual == inp.digest:
        return False
    log.warning("%s: its arrays changed since it was packed (content digest %s, recorded %s); "
                "earlier parts or predictions of it are not reused", inp.path, actual[:12],
                inp.digest[:12])
    inp.recorded_digest, inp.digest, inp.edited = inp.digest, actual, True
    return True


def _manifest(opts: ScreenOptions, inp: _Input, model: _Model, plan: Plan) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "input": str(inp.path),
        "input_digest": inp.digest,
        "n_structures": plan.n_structures,
        "model": model.name,
        "model_sha256": model.sha256,
        "model_metadata": model.metadata.to_dict(),
        "chunk_size": plan.chunk_size,
        "n_chunks": plan.n_chunks,
        "max_atoms": int(opts.max_atoms),
        "overlap_threshold": float(opts.overlap_threshold),
        "embeddings": bool(opts.embeddings),
        "embedding_dim": model.embedding_dim,
        "spread": model.spread,
        "targets": [{"name": t.name, "units": t.units} for t in model.targets],
        "created_by": f"deepergat {__version__}",
    }


def _same_output(identity: dict[str, Any], manifest: dict[str, Any]) -> bool:
    return (
        identity["input_digest"] == manifest["input_digest"]
        and identity["model_sha256"] == manifest["model_sha256"]
        and identity["n_structures"] == manifest["n_structures"]
        and identity["screen_settings"] == screen_settings(manifest)
    )


def _write_top(opts: ScreenOptions, output: Path, csv_path: Path) -> None:
    assert opts.top is not None
    write_top_csv(output, csv_path, opts.top, order=opts.top_order, rank_by=opts.rank_by,
                  rank_k=opts.rank_k, store=opts.input)


def _check_options(opts: ScreenOptions) -> None:
    if opts.max_atoms < 1:
        raise DeepergatError(f"--max-atoms must be at least 1, got {opts.max_atoms}")
    if not opts.overlap_threshold >= 0:
        raise DeepergatError(f"--overlap-threshold must be ≥ 0 Å, got {opts.overlap_threshold}")
    if opts.top is not None and opts.top < 1:
        raise DeepergatError(f"--top must be at least 1, got {opts.top}")
    if not (opts.rank_k >= 0 and np.isfinite(opts.rank_k)):
        raise DeepergatError(f"--rank-k must be a finite number ≥ 0, got {opts.rank_k}")
    if opts.workers is not None and opts.workers < 0:
        raise DeepergatError(f"--workers must be ≥ 0, got {opts.workers}")
    if opts.chunk_size < 1:
        raise DeepergatError(f"--chunk-size must be at least 1, got {opts.chunk_size}")


# ------------------------------------------------------------------------------ logging


class _RankLogHandler(logging.FileHandler):
    """The per-rank log file. A record it cannot write (the disk filled up) switches it off
    quietly: the run's own one-line error says what happened, not logging's traceback."""

    def handleError(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.close()
        self.setLevel(logging.CRITICAL + 1)


@contextlib.contextmanager
def _rank_log(parts: PartsDir, name: str) -> Iterator[None]:
    """Log this rank's INFO records to ``<parts>/logs/<name>.log`` while screening; the other
    handlers keep the level they had (warnings only on stderr unless ``-v``)."""
    logger = logging.getLogger("deepergat")
    handler: logging.Handler | None = None
    old_level = logger.level
    changed: list[logging.Handler] = []
    try:
        parts.logs.mkdir(parents=True, exist_ok=True)
        handler = _RankLogHandler(parts.logs / f"{name}.log")
    except OSError as e:
        log.warning("no per-rank log in %s: %s", parts.logs, e)
    if handler is not None:
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s [%(threadName)s]: %(message)s"
        ))
        effective = logger.getEffectiveLevel()
        if effective > logging.INFO:
            for h in logger.handlers:
                if h.level == logging.NOTSET:
                    h.setLevel(effective)
                    changed.append(h)
            logger.setLevel(logging.INFO)
        logger.addHandler(handler)
    try:
        yield
    finally:
        if handler is not None:
            logger.removeHandler(handler)
            handler.close()
            logger.setLevel(old_level)
            for h in changed:
                h.setLevel(logging.NOTSET)


# ------------------------------------------------------------------------------ merge-only


def merge_only(opts: ScreenOptions) -> ScreenResult:
    """``--merge-only``: merge complete parts, or confirm an existing complete output.

    Raises:
        MissingChunksError: chunks are missing (named).
        DeepergatError: no parts and no output of this run; parts or output of another run.
    """
    _check_options(opts)
    inp = _open_input(Path(opts.input))
    output = Path(opts.output) if opts.output else default_output(opts.input)
    with OutputLock(output, run_token(), on_last_exit=_discard_unused_parts(output)):
        _refresh_digest(inp, PartsDir(output))
        return _merge_only(opts, inp, output)


def _merge_only(opts: ScreenOptions, inp: _Input, output: Path) -> ScreenResult:
    parts = PartsDir(output)
    name, sha = _model_sha_only(opts.model)
    manifest = parts.read_manifest()
    identity = read_identity(output)
    run = {"input_digest": inp.digest, "model_sha256": sha}
    top = top_csv_path(output) if opts.top else None
    if manifest is not None:
        parts.check(run, keys=("input_digest", "model_sha256"))
        if identity is not None and _same_output(identity, manifest):
            parts.remove()
            result = ScreenResult("already-merged", output, parts.path, top_csv=top)
        else:
            plan = Plan(int(manifest["n_structures"]), int(manifest["chunk_size"]),
                        np.zeros(int(manifest["n_chunks"]), np.int64))
            try:
                merged = merge_parts(parts, plan, manifest)
            except BaseException as e:
                raise _failed(e, 0, output, lambda: output_bytes(plan.n_structures, manifest),
                              "the committed parts are kept") from None
            result = ScreenResult("merged", output, parts.path, top_csv=top, merge=merged)
    elif identity is not None:
        if (identity["input_digest"], identity["model_sha256"]) != (inp.digest, sha):
            raise DeepergatError(
                f"{output}: belongs to another run (input digest {identity['input_digest'][:12]},"
                f" model sha256 {identity['model_sha256'][:12]}; now {inp.digest[:12]} and "
                f"{sha[:12]}); nothing to merge for this input and model"
            )
        result = ScreenResult("already-merged", output, parts.path, top_csv=top)
    else:
        raise DeepergatError(
            f"nothing to merge: neither {parts.path} nor {output} exists; run deepergat-screen "
            "without --merge-only first"
        )
    if top is not None and opts.top is not None:
        _write_top(opts, output, top)
    log.info("merge-only for model %s: %s", name, result.outcome)
    return result


# ------------------------------------------------------------------------------ the run


@dataclass
class _Setup:
    """Rank 0's findings, broadcast to every rank."""

    error: str | None = None
    done: ScreenResult | None = None
    plan: Plan | None = None
    todo: list[int] = field(default_factory=list)
    skipped: int = 0
    device: tuple[str, int] = ("cpu", 0)
    workers: int = 0
    threads: int = 1
    workers_predict: bool = False
    run: str = ""


def _rank_resources(opts: ScreenOptions, device: str, cpus: int, *, onnx: bool
                    ) -> tuple[int, int, bool]:
    """(worker processes, predictor intra-op threads, whether the workers predict) for a rank
    with ``cpus`` cores.

    On the CPU the model is memory-bound with small kernels: one single-threaded session per
    core in worker processes (each doing its batches' neighbor search too) scales where
    intra-op threads or threads sharing one process do not; with one core the rank does
    everything itself. With a GPU the neighbor search becomes the bottleneck: ``cpus − 1``
    worker processes feed the rank's one predictor.
    """
    if device == "cpu":
        workers = opts.workers if opts.workers is not None else (cpus if cpus > 1 else 0)
        if workers > 0:
            return workers, 1, True
        return 0, cpus, False
    workers = opts.workers if opts.workers is not None else max(1, cpus - 1)
    return workers, 1, False


def screen(opts: ScreenOptions, ranks: Ranks, hooks: Hooks | None = None) -> ScreenResult:
    """Screen a structure store with a model (every rank calls this).

    Args:
        opts: the options.
        ranks: `deepergat.screening.mpi.connect`'s result.
        hooks: progress callbacks (rank 0).

    Returns:
        The `ScreenResult`.

    Raises:
        AllRanksError: file-level problems, on every rank alike, before any work starts.
        MissingChunksError: ``--merge-only`` with missing chunks (rank 0).
        DeepergatError: a problem met while working (e.g. a damaged part), on one rank.
    """
    hooks = hooks or Hooks()
    if opts.merge_only:
        if ranks.is_root:
            return merge_only(opts)
        output = Path(opts.output) if opts.output else default_output(opts.input)
        return ScreenResult("merged", output, PartsDir(output).path)
    locks: list[OutputLock] = []  # rank 0's hold on the output, for the whole run
    try:
        try:
            prepared = _prepare(opts, ranks, locks)
        except AllRanksError:
            raise
        except DeepergatError as e:  # raised alike on every rank (same inputs everywhere)
            raise AllRanksError(str(e)) from None
        if isinstance(prepared, ScreenResult):
            return prepared
        parts, plan, setup, model, shard = prepared
        log_name = (f"shard-{shard[0]:04d}-of-{shard[1]:04d}-rank-{ranks.rank:04d}" if shard
                    else f"rank-{ranks.rank:04d}")
        with _rank_log(parts, log_name):
            return _compute(opts, ranks, hooks, parts, plan, setup, model, shard)
    finally:
        for lock in locks:
            lock.release()


def _prepare(opts: ScreenOptions, ranks: Ranks, locks: list[OutputLock]
             ) -> ScreenResult | tuple[PartsDir, Plan, _Setup, _Model, tuple[int, int] | None]:
    """Every check before work, collectively: rank 0 checks the files and takes the output's
    lock (appended to ``locks``), then every rank loads its model. Returns the finished result
    when there is nothing to do."""
    output = Path(opts.output) if opts.output else default_output(opts.input)
    parts = PartsDir(output)
    # Same inputs on every rank: an error here is raised on every rank alike.
    shard = parse_shard(opts.shard) if opts.shard else shard_from_env()
    n_gpus = visible_gpus()
    device = pick_device(opts.device, ranks.local_rank, n_gpus)
    onnx = _model_path(opts.model).suffix.lower() == ".onnx"
    workers, threads, workers_predict = _rank_resources(
        opts, device[0], cpus_per_rank(ranks.local_size), onnx=onnx
    )

    # ---- rank 0: every file-level check, before any work
    setup = _Setup(device=device, workers=workers, threads=threads,
                   workers_predict=workers_predict)
    model: _Model | None = None
    if ranks.is_root:
        try:
            _check_options(opts)
            inp = _open_input(Path(opts.input))
            model = _load_model(opts.model, device, threads, opts.max_atoms,
                                opts.overlap_threshold, opts.trust)
            warn_cell_dependent(model.settings.graph, model.name)
            setup = _root_setup(opts, inp, output, parts, shard, model, setup, locks)
        except DeepergatError as e:
            setup.error = str(e)
    setup = ranks.bcast(setup) if ranks.size > 1 else setup
    if setup.error:
        raise AllRanksError(setup.error)
    if setup.done is not None:
        if setup.done.top_csv is not None and ranks.is_root and opts.top:
            _write_top(opts, output, setup.done.top_csv)
        return setup.done
    plan = setup.plan
    assert plan is not None

    # ---- the other ranks load their model; any failure stops all before work starts
    error = None
    if not ranks.is_root:
        try:
            model = _load_model(opts.model, device, threads, opts.max_atoms,
                                opts.overlap_threshold, opts.trust)
        except DeepergatError as e:
            error = f"rank {ranks.rank}: {e}"
    if ranks.size > 1:
        errors = ranks.gather(error)
        error = ranks.bcast(next((e for e in errors or [] if e), None))
    if error:
        raise AllRanksError(error)
    assert model is not None
    return parts, plan, setup, model, shard


def _root_setup(opts: ScreenOptions, inp: _Input, output: Path, parts: PartsDir,
                shard: tuple[int, int] | None, model: _Model, setup: _Setup,
                locks: list[OutputLock]) -> _Setup:
    """Rank 0: the output's lock, output and parts checks; the plan and this run's chunks."""
    if output.resolve() == inp.path:
        raise DeepergatError(f"--output {output} is the input store; choose another file")
    plan = make_plan(inp.n_atoms, opts.chunk_size)
    manifest = _manifest(opts, inp, model, plan)
    lock = OutputLock(output, run_token(shard_count=shard[1] if shard else None,
                                        settings_digest=settings_digest(manifest)),
                      on_last_exit=_discard_unused_parts(output))
    lock.acquire()  # before anything here is read as ours or removed
    locks.append(lock)
    setup.run = lock.token
    if not opts.resume and parts.written_by_older():
        parts.clear()  # --no-resume: parts of an older deepergat go like any others
    identity = read_identity(output)
    # earlier work may be reused: it must belong to the store as it is now
    reusable = identity is not None or parts.read_manifest() is not None
    if reusable and _refresh_digest(inp, parts):
        manifest = _manifest(opts, inp, model, plan)
    top = top_csv_path(output) if opts.top else None
    if identity is not None:
        if _same_output(identity, manifest) and opts.resume:
            if parts.read_manifest() is not None and not parts.differences(manifest):
                parts.remove()  # merged, but the parts outlived a killed cleanup
            setup.done = ScreenResult("already-merged", output, parts.path, top_csv=top,
                                      shard=shard)
            return setup
        if opts.resume and inp.edited and identity["input_digest"] == inp.recorded_digest:
            raise DeepergatError(
                f"{output}: was computed before {inp.path} was edited in place (its arrays no "
                f"longer match the content digest recorded when it was packed); pass "
                "--no-resume to screen it again, or choose another --output"
            )
        if opts.resume:
            raise DeepergatError(
                f"{output}: belongs to another run (input digest "
                f"{identity['input_digest'][:12]}, model sha256 {identity['model_sha256'][:12]}, "
                f"settings {identity['screen_settings']}; now {inp.digest[:12]}, "
                f"{model.sha256[:12]}, {screen_settings(manifest)}); pass --no-resume to replace "
                "it or choose another --output"
            )
        output.unlink()  # --no-resume: start clean
    if shard is None:  # no other process writes beside the output now
        _clear_output_temporaries(output)
    check_space(output, output_bytes(plan.n_structures, manifest), factor=2.2)
    owned = (shard_chunks(plan.atoms, *shard).tolist() if shard
             else list(range(plan.n_chunks)))
    parts.prepare(manifest, resume=opts.resume, owned=owned if shard else None)
    if shard is None:  # no other process writes here now: drop a killed run's temporaries
        parts.clear_temporaries()
    done = parts.committed()
    setup.todo = [k for k in owned if k not in done]
    setup.skipped = plan.rows(k for k in owned if k in done)
    setup.plan = plan
    return setup


def _compute(opts: ScreenOptions, ranks: Ranks, hooks: Hooks, parts: PartsDir, plan: Plan,
             setup: _Setup, model: _Model, shard: tuple[int, int] | None) -> ScreenResult:
    """Every rank: run the pipeline over the shared chunk list, then merge on rank 0."""
    on_gpu = str(getattr(model.predictor, "device", "cpu")).startswith("cuda")
    batch_atoms = opts.batch_atoms or (GPU_BATCH_ATOMS if on_gpu else DEFAULT_BATCH_ATOMS)
    batch_edges = opts.batch_edges or batch_atoms * (DEFAULT_BATCH_EDGES // DEFAULT_BATCH_ATOMS)
    workers_predict = setup.workers_predict
    log.info("rank %d/%d: model %s on %s (%s), %d worker processes (%s), batches of ≤ %d "
             "atoms", ranks.rank, ranks.size, model.name,
             getattr(model.predictor, "device", setup.device[0]),
             getattr(model.predictor, "backend", "?"), setup.workers,
             "neighbor search and model" if workers_predict else
             f"neighbor search; {setup.threads} predictor threads here", batch_atoms)
    manifest = parts.read_manifest() if ranks.is_root else None
    if manifest is not None:
        log.info("screening %s (%d structures, %d chunks of %d): %d chunks to do%s, %d "
                 "structures already committed", manifest["input"], plan.n_structures,
                 plan.n_chunks, plan.chunk_size, len(setup.todo),
                 f" in shard {shard[0]}/{shard[1]}" if shard else "", setup.skipped)
    source = ranks.chunk_source(setup.todo)
    progress = ranks.progress()
    total = plan.rows(setup.todo)
    pipeline = Pipeline(
        opts.input, plan, model.predictor, model.settings, n_targets=len(model.targets),
        embedding_dim=model.embedding_dim if opts.embeddings else None, spread=model.spread,
        workers=setup.workers,
        worker_model=((str(model.predictor.path), model.sha256, opts.trust) if workers_predict
                      else None),
        batch_atoms=batch_atoms, batch_edges=batch_edges,
    )

    def on_chunk(rows: Rows) -> None:
        progress.add(len(rows), int(np.count_nonzero(rows.status)),
                     int(np.count_nonzero(rows.flags & FLAG_UNSEEN_ELEMENT)))

    stop = threading.Event()
    monitor: threading.Thread | None = None
    if ranks.is_root:
        if hooks.on_start:
            hooks.on_start(total, setup.skipped, ranks.size)

        def watch() -> None:  # also keeps MPI progressing on rank 0
            last = 0.0
            while not stop.wait(0.05):
                totals = progress.totals()
                now = time.monotonic()
                if hooks.on_progress and now - last >= 0.25:
                    hooks.on_progress(*totals)
                    last = now

        monitor = threading.Thread(target=watch, name="screen-progress", daemon=True)
        monitor.start()
    t0 = time.perf_counter()
    try:
        stats = pipeline.run(source, functools.partial(parts.commit, run=setup.run),
                             on_chunk=on_chunk)
    except BaseException as e:
        stop.set()
        sizes = _sizes(opts, model)
        raise _failed(e, ranks.rank, parts.path,
                      lambda: (output_bytes(_uncommitted(parts, plan), sizes)
                               + output_bytes(plan.n_structures, sizes)),
                      "the chunks committed so far are kept") from None
    all_stats = ranks.gather(stats.as_dict())
    seconds = time.perf_counter() - t0
    stop.set()
    if monitor is not None:
        monitor.join()
        if hooks.on_progress:
            hooks.on_progress(*progress.totals())
    ranks.close()
    log.info("rank %d: %d structures in %d chunks, %.1f s (stage seconds: read %.2f, "
             "featurize %.2f, predict %.2f in %d batches, write %.2f)", ranks.rank,
             stats.structures, stats.chunks, stats.seconds, stats.read, stats.featurize,
             stats.predict, stats.batches, stats.write)
    result = ScreenResult(
        "shard-done", parts.output, parts.path, ranks=ranks.size, shard=shard,
        structures=stats.structures, seconds=seconds, status=stats.status.copy(),
        flagged=stats.flagged, skipped=setup.skipped,
    )
    if not ranks.is_root:
        return result
    assert manifest is not None and all_stats is not None
    result.rank_stats = all_stats
    result.structures = sum(s["structures"] for s in all_stats)
    result.status = np.sum([s["status"] for s in all_stats], axis=0).astype(np.int64)
    result.flagged = sum(s["flagged"] for s in all_stats)
    missing = parts.missing(range(plan.n_chunks))
    result.missing = missing
    if missing:
        if shard is None:
            raise MissingChunksError(
                f"{parts.path}: after the run {describe_missing(missing, plan)} are missing",
                missing,
            )
        log.info("shard %d/%d done; %d chunks still missing", *shard, len(missing))
        return result
    if shard is not None and not parts.claim_merge(claim_token()):
        result.outcome = "merge-claimed"
        return result
    try:
        result.merge = merge_parts(parts, plan, manifest, run={
            "structures": result.structures, "seconds": round(seconds, 3), "ranks": ranks.size,
            "skipped": setup.skipped})
    except BaseException as e:
        raise _failed(e, ranks.rank, parts.output,
                      lambda: output_bytes(plan.n_structures, manifest),
                      "the committed parts are kept") from None
    result.outcome = "merged"
    if opts.top:
        result.top_csv = top_csv_path(parts.output)
        _write_top(opts, parts.output, result.top_csv)
    return result


def _sizes(opts: ScreenOptions, model: _Model) -> dict[str, Any]:
    """What `output_bytes` reads of a run manifest, from the options and the model."""
    return {"targets": [t.name for t in model.targets], "spread": model.spread,
            "embeddings": bool(opts.embeddings), "embedding_dim": model.embedding_dim}


def _uncommitted(parts: PartsDir, plan: Plan) -> int:
    """Structures of the chunks without a committed part."""
    try:
        missing = parts.missing(range(plan.n_chunks))
    except (OSError, DeepergatError):
        return plan.n_structures
    return plan.rows(missing)


def _failed(e: BaseException, rank: int, path: Path, needed: Callable[[], float], kept: str
            ) -> BaseException:
    """What a rank raises when its work stopped on ``e``, logged once.

    A problem the user can fix — a `DeepergatError` (a damaged store block, a killed worker
    process, ...) or a write the file system refused (a full disk or quota, also as h5py's
    RuntimeError; a read-only folder) — becomes one line, the latter naming ``path``, the
    free space there and ``needed`` bytes; its traceback is logged at DEBUG (``-vv``) only.
    Anything else is an internal failure: logged with its traceback and raised as it is.

    Args:
        e: the exception.
        rank: this rank, for the log.
        path: the parts folder or the output being written.
        needed: gives the bytes the rest of the run needs there (parts to come and the
            merged file).
        kept: what of the work survives, for the message.
    """
    if isinstance(e, KeyboardInterrupt | SystemExit):
        return e
    err: BaseException | None = None
    if isinstance(e, OSError | RuntimeError) and is_write_failure(e):
        fix = ("free space or choose another --output" if is_full_disk(e)
               else "choose another --output")
        err = environment_error(e, path=path, needed=needed(), fix=f"{fix} ({kept})")
    elif isinstance(e, DeepergatError):
        err = e
    if err is None:
        log.exception("rank %d failed", rank)
        return e
    log.info("rank %d stopped: %s", rank, err)  # the rank's log file (stderr with -v)
    log.debug("rank %d: the error in full", rank, exc_info=e)
    return err


def summary_json(result: ScreenResult) -> str:
    """The result as one JSON document (for logs and scripts)."""
    data = {
        "outcome": result.outcome, "output": str(result.output), "ranks": result.ranks,
        "shard": list(result.shard) if result.shard else None,
        "structures": result.structures, "seconds": result.seconds,
        "status": [int(x) for x in result.status], "flagged": result.flagged,
        "skipped": result.skipped, "missing": len(result.missing),
    }
    return json.dumps(data)
