"""Before any work: the checks, the output's lock, resume, the manifest and the plan.

Every rank calls `prepare`. Rank 0 checks the options and files, loads the model, takes the
output's lock and decides what this run computes (`RunPlan`) — or finds the output complete
(a `ScreenResult`), or a problem (a `Refusal`) — and broadcasts that one object. Then every
other rank loads its model; a failure anywhere stops all ranks before work starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from deepergat._version import __version__
from deepergat.errors import DeepergatError, SettingError
from deepergat.export.predictor import warn_cell_dependent
from deepergat.export.resolve import bundled_known
from deepergat.io.store import Store
from deepergat.system.devices import cpus_per_rank, pick_device, visible_gpus
from deepergat.system.files import file_sha256
from deepergat.system.launch import shard_from_env
from deepergat.system.lock import OutputLock, run_token

from .compiling import AUTO_COMPILE_MIN, compile_first
from .failures import Refusal, literal
from .merge import check_space, output_bytes, screen_settings
from .model import DEFAULT_MODEL, LoadedModel, load_model, model_path
from .mpi import Ranks
from .options import ScreenOptions, top_csv_path
from .parts import MANIFEST_FORMAT, PartsDir, settings_digest, store_fingerprint
from .pipeline import StartedWorkers, start_workers
from .plan import Plan, make_plan, parse_shard, shard_chunks
from .predictions import read_identity, write_top_csv
from .result import ScreenResult
from .shortlist import ListSettings, ShortList, entries_table, short_list
from .subset import choose_rows, describe_subset, save_rows

__all__ = [
    "InputStore",
    "Prepared",
    "Resources",
    "RunPlan",
    "discard_unused_parts",
    "early_workers",
    "open_input",
    "prepare",
    "rank_resources",
    "same_output",
    "verified_input",
    "write_top",
]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ the input


@dataclass(frozen=True)
class InputStore:
    """The input structure store.

    Attributes:
        path: resolved.
        digest: its content digest (as recorded by its writer, or as its arrays are now once
            `verified_input` checked them).
        n_atoms: [M] atoms per structure.
        recorded_digest: the digest its writer recorded, when its arrays no longer match it
            (edited in place); "" otherwise.
    """

    path: Path
    digest: str
    n_atoms: np.ndarray
    recorded_digest: str = ""

    @property
    def edited(self) -> bool:
        """The store was edited in place since it was packed."""
        return bool(self.recorded_digest)


def open_input(path: str | os.PathLike[str]) -> InputStore:
    """Open the store and read its recorded digest (hashed now when it has none)."""
    p = Path(path)
    with Store(p) as store:
        digest = store.content_digest
        n_atoms = store.n_atoms.copy()
    if not digest:
        log.warning("%s has no content digest; hashing the file", p)
        digest = file_sha256(p)
    return InputStore(path=p.resolve(), digest=digest, n_atoms=n_atoms)


def verified_input(inp: InputStore, parts: PartsDir) -> InputStore:
    """The input with its content digest as its arrays are now (re-hashed unless ``parts``
    holds a verified digest of the same unchanged file, `PartsDir.input_digest`). A store
    edited in place since it was packed comes back `InputStore.edited`: its recorded digest
    no longer identifies it."""
    def rehash() -> str:
        with Store(inp.path) as store:
            return store.compute_digest()

    actual = parts.input_digest(inp.path, rehash)
    if actual == inp.digest:
        return inp
    log.warning("%s: its arrays changed since it was packed (content digest %s, recorded %s); "
                "earlier parts or predictions of it are not reused", inp.path, actual[:12],
                inp.digest[:12])
    return replace(inp, digest=actual, recorded_digest=inp.digest)


# ------------------------------------------------------------------------------ a rank's share


@dataclass(frozen=True)
class Resources:
    """What a rank runs on.

    Attributes:
        device: (``cpu``/``cuda``, device id), from `pick_device`.
        workers: worker processes (0: everything in the rank).
        threads: the rank's own predictor threads.
        workers_predict: the workers run the model too (else the rank does).
    """

    device: tuple[str, int]
    workers: int
    threads: int
    workers_predict: bool


def rank_resources(workers: int | None, device: tuple[str, int], cpus: int) -> Resources:
    """What a rank with ``cpus`` cores runs (``workers``: the option, None for the default).

    On the CPU the model is memory-bound with small kernels: one single-threaded session per
    core in worker processes (each doing its batches' neighbor search too) scales where
    intra-op threads or threads sharing one process do not; with one core the rank does
    everything itself. With a GPU the neighbor search becomes the bottleneck: ``cpus − 1``
    worker processes feed the rank's one predictor.
    """
    if device[0] == "cpu":
        n = workers if workers is not None else (cpus if cpus > 1 else 0)
        if n > 0:
            return Resources(device, n, 1, True)
        return Resources(device, 0, cpus, False)
    return Resources(device, workers if workers is not None else max(1, cpus - 1), 1, False)


# ------------------------------------------------------------------------------ rank 0's plan


@dataclass(frozen=True)
class RunPlan:
    """What this run computes, as rank 0 decided it (the same on every rank).

    Attributes:
        plan: the store's chunks.
        todo: the chunks to compute (this shard's, without those already committed).
        skipped: structures of this run's chunks committed before it.
        token: rank 0's lock token, recorded in every part this run writes.
    """

    plan: Plan
    todo: tuple[int, ...]
    skipped: int
    token: str


@dataclass(frozen=True)
class Prepared:
    """A rank ready to work.

    Attributes:
        parts: the output's parts directory.
        run: what this run computes.
        model: this rank's model.
        resources: this rank's device and workers.
        shard: (I, N) of an array task, else None.
        started: this rank's worker processes, started while it prepared (`early_workers`).
    """

    parts: PartsDir
    run: RunPlan
    model: LoadedModel
    resources: Resources
    shard: tuple[int, int] | None
    started: StartedWorkers | None = None


def run_manifest(opts: ScreenOptions, inp: InputStore, model: LoadedModel, plan: Plan
                 ) -> dict[str, Any]:
    """The run manifest (`deepergat.screening.parts`) of this run."""
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
        "max_atoms": int(opts.checks.max_atoms),
        "overlap_threshold": float(opts.checks.overlap_threshold),
        "embeddings": bool(opts.files.embeddings),
        "embedding_dim": model.embedding_dim,
        "spread": model.spread,
        "targets": [{"name": t.name, "units": t.units} for t in model.targets],
        "created_by": f"deepergat {__version__}",
        # what the merge compares the store with, so that the formulas it reads back are
        # those of the structures screened (not part of what defines the run: `RUN_KEYS`)
        "input_fingerprint": _fingerprint(inp.path),
        # a funnel's rows (`deepergat.screening.subset`), None for every row of the store
        "subset": (describe_subset(opts.files, plan.rows) if plan.rows is not None else None),
    }


def _fingerprint(path: Path) -> dict[str, Any] | None:
    try:
        return store_fingerprint(path)
    except OSError:
        return None


def same_output(identity: dict[str, Any], manifest: dict[str, Any]) -> bool:
    """An existing output (`read_identity`) is what the run of ``manifest`` writes."""
    return (
        identity["input_digest"] == manifest["input_digest"]
        and identity["model_sha256"] == manifest["model_sha256"]
        and identity["n_structures"] == manifest["n_structures"]
        and identity["screen_settings"] == screen_settings(manifest)
    )


def list_settings(opts: ScreenOptions) -> ListSettings:
    """The screen's short list: its ranking options, with the known stores of a bundled model
    when none are given (``known`` ``("none",)``: none at all)."""
    settings = opts.ranking.list_settings()
    if settings.known == ("none",):
        return replace(settings, known=())
    if not settings.known:
        shipped = bundled_known(opts.predictor.model if opts.predictor.model is not None
                                else DEFAULT_MODEL)
        return replace(settings, known=tuple(str(p) for p in shipped))
    return settings


def write_top(opts: ScreenOptions, output: Path, csv_path: Path, *,
              store_verified: bool = False) -> ShortList:
    """The short list of ``output`` (``opts.ranking``: ``top`` groups) as ``csv_path``.

    Args:
        store_verified: the input store was checked to be the one screened (a merge just
            did); else its digest is recomputed before structures are matched.
    """
    listed = short_list(output, list_settings(opts), store=opts.files.input,
                        store_verified=store_verified)
    table = entries_table(listed.entries)
    write_top_csv(output, csv_path, listed.rows, group_size=table["group_size"],
                  known=table["known"])
    return listed


def discard_unused_parts(output: Path) -> Callable[[], None]:
    """The output lock's last-exit hook: a parts directory to which the run committed nothing
    (it failed first) goes too."""
    return lambda: PartsDir(output).discard_if_unused()


def _clear_output_temporaries(output: Path) -> None:
    """Remove files a killed run left beside the output (its merged file or top-K list half
    written: ``.<name>.tmp-<pid>``); the caller owns the output's lock."""
    prefixes = (f".{output.name}.tmp-", f".{top_csv_path(output).name}.tmp-")
    with contextlib.suppress(OSError):
        for entry in os.listdir(output.parent if str(output.parent) else "."):
            if entry.startswith(prefixes):
                (output.parent / entry).unlink(missing_ok=True)
                log.info("removed %s, left by a killed run", output.parent / entry)


def _root_plan(opts: ScreenOptions, inp: InputStore, parts: PartsDir,
               shard: tuple[int, int] | None, model: LoadedModel, locks: list[OutputLock]
               ) -> RunPlan | ScreenResult:
    """Rank 0: the output's lock (appended to ``locks``), output and parts checks; this run's
    chunks, or the result when the output is already complete."""
    output = parts.output
    if output.resolve() == inp.path:
        raise SettingError(f"{{output}} {literal(output)} is the input store; choose another "
                           "file")
    rows = (choose_rows(opts.files, inp.digest, order=opts.ranking.top_order)
            if opts.files.from_predictions is not None else None)
    plan = make_plan(inp.n_atoms if rows is None else inp.n_atoms[rows],
                     opts.control.chunk_size, rows=rows)
    manifest = run_manifest(opts, inp, model, plan)
    lock = OutputLock(output, run_token(shard_count=shard[1] if shard else None,
                                        settings_digest=settings_digest(manifest)),
                      on_last_exit=discard_unused_parts(output))
    lock.acquire()  # before anything here is read as ours or removed
    locks.append(lock)
    if not opts.control.resume and parts.written_by_older():
        parts.clear()  # not resuming: parts of an older deepergat go like any others
    identity = read_identity(output)
    # earlier work may be reused: it must belong to the store as it is now
    if identity is not None or parts.read_manifest() is not None:
        inp = verified_input(inp, parts)
        if inp.edited:
            manifest = run_manifest(opts, inp, model, plan)
    if identity is not None:
        done = _existing_output(opts, inp, parts, shard, identity, manifest)
        if done is not None:
            return done
    return _plan_parts(opts, parts, shard, plan, manifest, lock.token)


def _existing_output(opts: ScreenOptions, inp: InputStore, parts: PartsDir,
                     shard: tuple[int, int] | None, identity: dict[str, Any],
                     manifest: dict[str, Any]) -> ScreenResult | None:
    """An output already there: this run's, complete (the result); another run's (refused
    when resuming, removed when not: None)."""
    output, resume = parts.output, opts.control.resume
    if same_output(identity, manifest) and resume:
        if parts.read_manifest() is not None and not parts.differences(manifest):
            parts.remove()  # merged, but the parts outlived a killed cleanup
        top = top_csv_path(output) if opts.ranking.top else None
        return ScreenResult("already-merged", output, parts.path, top_csv=top, shard=shard)
    if resume and inp.edited and identity["input_digest"] == inp.recorded_digest:
        raise SettingError(
            f"{literal(output)}: was computed before {literal(inp.path)} was edited in place "
            "(its arrays no longer match the content digest recorded when it was packed); pass "
            "{resume} to screen it again, or choose another {output}"
        )
    if resume:
        raise SettingError(literal(
            f"{output}: belongs to another run (input digest "
            f"{identity['input_digest'][:12]}, model sha256 {identity['model_sha256'][:12]}, "
            f"settings {identity['screen_settings']}; now {inp.digest[:12]}, "
            f"{manifest['model_sha256'][:12]}, {screen_settings(manifest)})"
        ) + "; pass {resume} to replace it or choose another {output}")
    output.unlink()  # not resuming: start clean
    return None


def _plan_parts(opts: ScreenOptions, parts: PartsDir, shard: tuple[int, int] | None,
                plan: Plan, manifest: dict[str, Any], token: str) -> RunPlan:
    """Space checked, the parts directory prepared: the chunks still to compute."""
    output = parts.output
    if shard is None:  # no other process writes beside the output now
        _clear_output_temporaries(output)
    check_space(output, output_bytes(plan.n_structures, manifest), factor=2.2)
    owned = (shard_chunks(plan.atoms, *shard).tolist() if shard
             else list(range(plan.n_chunks)))
    parts.prepare(manifest, resume=opts.control.resume, owned=owned if shard else None)
    if plan.rows is not None:
        save_rows(parts, plan.rows)
    if shard is None:  # no other process writes here now: drop a killed run's temporaries
        parts.clear_temporaries()
    done = parts.committed()
    return RunPlan(plan=plan, todo=tuple(k for k in owned if k not in done),
                   skipped=plan.count(k for k in owned if k in done), token=token)


# ------------------------------------------------------------------------------ every rank


def prepare(opts: ScreenOptions, ranks: Ranks, locks: list[OutputLock]
            ) -> ScreenResult | Prepared:
    """Every check before work, collectively: rank 0 checks the files and takes the output's
    lock (appended to ``locks``), then every rank loads its model.

    Returns:
        The finished result when there is nothing to do, else this rank's `Prepared`.

    Raises:
        AllRanksError: on every rank alike, for a problem any rank found.
        DeepergatError: a problem found alike on every rank (the same inputs everywhere).
    """
    parts = PartsDir(opts.files.output_path)
    shard = parse_shard(opts.control.shard) if opts.control.shard else shard_from_env()
    device = pick_device(opts.predictor.device, ranks.local_rank, visible_gpus())
    model_path(opts.predictor.model)  # an unknown model is refused alike on every rank
    resources = rank_resources(opts.control.workers, device, cpus_per_rank(ranks.local_size))

    started = early_workers(opts, resources)
    try:
        prepared = _prepare(opts, ranks, locks, parts=parts, shard=shard, resources=resources)
    except BaseException:
        if started is not None:
            started.close()
        raise
    if isinstance(prepared, ScreenResult):
        if started is not None:
            started.close()
        return prepared
    return replace(prepared, started=started)


def early_workers(opts: ScreenOptions, resources: Resources) -> StartedWorkers | None:
    """Start this rank's worker processes now, so that their start (imports, the model in each)
    overlaps the checks, the rank's own model and its probe; the pipeline takes them if they
    loaded the model the rank then loads (`Pipeline` ``started``).

    Not when rank 0 may compile the model first (``--compile yes``, or ``auto`` on an input
    of at least `AUTO_COMPILE_MIN` structures: the workers must load the compiled model), when
    the output file exists (a rerun of a finished screen computes nothing), or when the model is
    not found (the rank's own load says why).
    """
    if resources.workers == 0 or opts.predictor.compile == "yes":
        return None
    try:
        if opts.files.output_path.exists():  # most likely complete: nothing to compute
            return None
        path = model_path(opts.predictor.model)
        if opts.predictor.compile == "auto" and resources.workers_predict:
            with Store(opts.files.input) as store:
                if len(store) >= AUTO_COMPILE_MIN:
                    return None
        sha256 = file_sha256(path)
    except Exception:  # the checks that follow report it, once, on every rank
        return None
    setup = ((str(path), sha256, bool(opts.predictor.trust), bool(opts.files.embeddings))
             if resources.workers_predict else None)
    return start_workers(resources.workers, setup)


def _prepare(opts: ScreenOptions, ranks: Ranks, locks: list[OutputLock], *, parts: PartsDir,
             shard: tuple[int, int] | None, resources: Resources) -> ScreenResult | Prepared:
    model: LoadedModel | None = None
    found: RunPlan | ScreenResult | Refusal | None = None  # rank 0's finding, for every rank
    if ranks.is_root:
        try:
            opts.check()
            inp = open_input(opts.files.input)
            model = _load(opts, resources)
            warn_cell_dependent(model.settings.graph, model.name)
            found = _root_plan(opts, inp, parts, shard, model, locks)
            if isinstance(found, RunPlan) and compile_first(
                    opts.predictor.compile, model, structures=found.plan.count(found.todo),
                    device=resources.device[0]):
                model = _load(opts, resources)  # now compiled for this machine
        except DeepergatError as e:
            found = Refusal.of(e)
    if ranks.size > 1:
        found = ranks.bcast(found)
    if isinstance(found, Refusal):
        raise found.error()
    if isinstance(found, ScreenResult):
        if found.top_csv is not None and ranks.is_root and opts.ranking.top:
            found.short_list = write_top(opts, parts.output, found.top_csv).summary()
        return found
    assert isinstance(found, RunPlan)
    model = _load_everywhere(opts, ranks, resources, model)
    return Prepared(parts=parts, run=found, model=model, resources=resources, shard=shard)


def _load(opts: ScreenOptions, resources: Resources) -> LoadedModel:
    return load_model(opts.predictor.model, device=resources.device, threads=resources.threads,
                      checks=opts.checks, trust=opts.predictor.trust)


def _load_everywhere(opts: ScreenOptions, ranks: Ranks, resources: Resources,
                     model: LoadedModel | None) -> LoadedModel:
    """The other ranks load their model (rank 0 has ``model``); any failure stops all before
    work starts."""
    refusal: Refusal | None = None
    if not ranks.is_root:
        try:
            model = _load(opts, resources)
        except DeepergatError as e:
            refusal = Refusal.of(e, prefix=f"rank {ranks.rank}: ")
    if ranks.size > 1:
        refusals = ranks.gather(refusal)
        refusal = ranks.bcast(next((r for r in refusals or [] if r), None))
    if refusal is not None:
        raise refusal.error()
    assert model is not None
    return model

