"""`deepergat pack`: read structure files in parallel and stream them into a structure store.

The main process expands the inputs (directories, globs, MatDeepLearn folders), cuts them into
small tasks (`deepergat.io.readers`), hands chunks of tasks to worker processes (spawn/forkserver,
bounded in flight, results taken in input order) and appends the parsed structures to a
`StoreWriter` in batches, so memory stays bounded whatever the number of structures.

Nothing is dropped silently: the first file, row or frame that cannot be read stops the pack with
a `DeepergatError` naming it (and no output file is left); with ``skip_bad`` it is skipped, counted
by reason and listed in ``<OUT stem>.skipped.csv`` (columns ``source,reason``) next to the output.
Duplicate ids are always an error.

Nothing else is overwritten: an existing output that is not a structure store, or an existing
``<OUT stem>.skipped.csv`` that is not such a list (its first line is not ``source,reason``),
makes the pack refuse with one line. One pack writes an output at a time: it holds
``<OUT>.lock/`` (`deepergat.system.lock.OutputLock`, as screening does), and removes what a
killed pack left (``<OUT>.tmp``, ``<OUT stem>.skipped.csv.tmp``).
"""

from __future__ import annotations

import contextlib
import csv
import glob
import logging
import math
import multiprocessing as mp
import os
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from deepergat.errors import DeepergatError, SettingError, literal
from deepergat.system.files import atomic_open
from deepergat.system.lifeline import watch_parent
from deepergat.system.lock import OutputLock, run_token

from . import readers
from .readers import Failure, Outcome, Record, Task
from .store import StoreWriter

__all__ = [
    "IdFrom",
    "NothingPacked",
    "PackResult",
    "TargetSpec",
    "default_workers",
    "describe_skipped",
    "pack",
    "parse_target_spec",
]

log = logging.getLogger(__name__)

IdFrom = Literal["stem", "path"]

#: Structures appended to the store at a time.
BATCH_SIZE = 4096
#: Parse cost units (about one CIF each, or 64 KiB of text) per chunk sent to a worker.
_CHUNK_WEIGHT = 32
#: Bytes of text (a CSV row's or an archive member's CIF, extxyz frames) that weigh one unit.
_TEXT_UNIT = 64 << 10


@dataclass(frozen=True)
class TargetSpec:
    """A target name and its units (``""`` when not given)."""

    name: str
    units: str = ""


def parse_target_spec(text: str) -> TargetSpec:
    """Parse ``NAME[:UNIT]`` (split at the first colon).

    Raises:
        DeepergatError: empty name, or a name with ``/`` (it would nest HDF5 groups).
    """
    name, _, units = text.partition(":")
    name, units = name.strip(), units.strip()
    if not name or "/" in name:
        raise DeepergatError(
            f"target {text!r}: expected NAME or NAME:UNIT with a non-empty name without '/'"
        )
    return TargetSpec(name, units)


@dataclass
class PackResult:
    """What a pack wrote.

    Attributes:
        path: the store.
        n_structures: structures written.
        n_atoms: atoms written.
        targets: name -> (units, number of non-NaN values).
        content_digest: the store's content digest.
        n_inputs: files and folders read.
        skipped: category -> number of skipped files, rows or frames.
        skipped_csv: the list of skipped items (``skip_bad`` only).
    """

    path: Path
    n_structures: int
    n_atoms: int
    targets: dict[str, tuple[str, int]]
    content_digest: str
    n_inputs: int
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_csv: Path | None = None

    @property
    def n_skipped(self) -> int:
        """Files, rows or frames skipped."""
        return sum(self.skipped.values())


def default_workers() -> int:
    """min(CPUs this process may use, 8)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Input:
    path: Path
    kind: str  # a readers format, "matdeeplearn" or "unknown"


def _expand_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[_Input]:
    """Files and folders to read, in order: globs and plain folders expand sorted."""
    out: list[_Input] = []
    for raw in inputs:
        text = os.fspath(raw)
        if not os.path.exists(text) and glob.has_magic(text):
            matches = sorted(glob.glob(text))
            if not matches:
                raise DeepergatError(f"{text}: no files match the pattern")
        else:
            matches = [text]
        for m in matches:
            p = Path(m)
            if p.is_dir():
                out.extend(_expand_dir(p))
            elif p.is_file():
                out.append(_Input(p, readers.structure_format(p) or "unknown"))
            else:
                raise DeepergatError(f"{p}: no such file or directory")
    if not out:
        raise DeepergatError("no inputs given")
    return out


def _expand_dir(d: Path) -> list[_Input]:
    """The structure files of a folder and of its sub-folders (a VASP tree of ``run-*/POSCAR``),
    in sorted order, depth first: every file in a structure format (`structure_format`: CIF,
    POSCAR/CONTCAR/*.vasp, extxyz, ASE db/JSON, pymatgen JSON, archives, generator samples);
    hidden entries (``.name``) are skipped; a folder with a ``targets.csv`` is a MatDeepLearn
    folder, read as one input. Anything else is named in one warning."""
    if (d / "targets.csv").is_file():
        return [_Input(d, "matdeeplearn")]
    found: list[_Input] = []
    ignored: list[str] = []

    def walk(folder: Path, depth: int) -> None:
        for p in sorted(folder.iterdir()):
            if p.name.startswith("."):
                continue
            if p.is_dir() and not p.is_symlink() and depth < _MAX_DEPTH:
                if (p / "targets.csv").is_file():
                    found.append(_Input(p, "matdeeplearn"))
                else:
                    walk(p, depth + 1)
                continue
            fmt = readers.structure_format(p) if p.is_file() else None
            if fmt in readers.STRUCTURE_FORMATS or fmt in ("archive", "generator"):
                found.append(_Input(p, str(fmt)))
            else:
                ignored.append(str(p.relative_to(d)) + ("/" if p.is_dir() else ""))

    walk(d, 0)
    if ignored:
        shown = ", ".join(ignored[:5]) + (", ..." if len(ignored) > 5 else "")
        log.warning(
            "%s: ignored %d entries that are not structure files (%s)", d, len(ignored), shown
        )
    if not found:
        raise DeepergatError(
            f"{d}: no structure files (CIF, POSCAR, extxyz, ASE db, JSON, archives, generator "
            "sample .pt files) and no targets.csv, in it or its sub-folders"
        )
    return found


#: Sub-folder levels a folder input is searched to (a symlinked folder is never followed).
_MAX_DEPTH = 32


def _store_targets(
    inputs: Sequence[_Input],
    targets: Sequence[TargetSpec],
    target_names: Sequence[TargetSpec],
) -> tuple[dict[str, str], list[str], list[str]]:
    """(store target name -> units, CSV/ASE target names, MatDeepLearn column names)."""
    has_mdl = any(i.kind == "matdeeplearn" for i in inputs)
    if target_names and not has_mdl:
        raise SettingError(
            "{target_names} names the value columns of a MatDeepLearn folder's targets.csv, "
            "and no input is such a folder; name CSV columns with {targets}"
        )
    mdl = list(target_names) if target_names else ([TargetSpec("target")] if has_mdl else [])
    units: dict[str, str] = {}
    for spec in [*targets, *mdl]:
        if spec.name in units and units[spec.name] != spec.units:
            raise DeepergatError(
                f"target {spec.name!r} is given with units {units[spec.name]!r} and "
                f"{spec.units!r}; give it one unit"
            )
        units[spec.name] = spec.units
    for names, setting in ((targets, "targets"), (mdl, "target_names")):
        seen = [s.name for s in names]
        dup = {n for n in seen if seen.count(n) > 1}
        if dup:
            raise SettingError(f"{{{setting}}} {sorted(dup)[0]!r} is given more than once")
    return units, [s.name for s in targets], [s.name for s in mdl]


def _tasks(
    inputs: Sequence[_Input],
    *,
    csv_targets: Sequence[str],
    mdl_targets: Sequence[str],
    cif_column: str,
    id_column: str | None,
    id_from: IdFrom,
) -> Iterator[tuple[int, Task, int]]:
    """(input index, task, weight) for every task, lazily, in input order."""
    path_ids = id_from == "path"
    for idx, inp in enumerate(inputs):
        p = inp.path
        prefix = p.as_posix() if path_ids else p.stem
        kind = inp.kind
        sub: Iterable[Task]
        if kind == "csv":
            sub = readers.csv_tasks(
                p,
                cif_column=cif_column,
                id_column=id_column,
                target_columns=csv_targets,
                id_prefix=prefix,
                path_ids=path_ids,
            )
        elif kind == "matdeeplearn":
            sub = readers.matdeeplearn_tasks(p, target_names=mdl_targets, path_ids=path_ids)
        elif kind == "extxyz":
            sub = readers.extxyz_tasks(p, id_prefix=prefix)
        elif kind == "archive":
            sub = readers.archive_tasks(p, path_ids=path_ids)
        elif kind == "ase-db":
            sub = readers.db_row_tasks(p, id_prefix=prefix)
        elif kind in (*readers.STRUCTURE_FORMATS, "generator"):
            sub = [readers.FileTask(path=str(p), fmt=kind, id=prefix)]
        else:
            detail = ("not a format deepergat reads (CIF, POSCAR, extxyz, ASE db, JSON, CSV, "
                      ".zip/.tar.gz archives of them)")
            sub = [readers.FailTask(Failure(str(p), "unknown format", detail))]
        for t in sub:
            yield idx, t, _weight(t)


def _weight(t: Task) -> int:
    """A task's parse cost and size in flight, in units of about one CIF (`_CHUNK_WEIGHT`):
    text a task carries weighs one unit per `_TEXT_UNIT` bytes, so the chunks in flight hold
    a bounded amount of text (`_execute`)."""
    if isinstance(t, readers.FramesTask):
        return max(len(t.texts), sum(map(len, t.texts)) // _TEXT_UNIT)
    if isinstance(t, readers.DbRowsTask):
        return max(1, t.limit // 8)
    if isinstance(t, (readers.TextTask, readers.CifTextTask)):
        return max(1, len(t.text) // _TEXT_UNIT)
    return 1


_Chunk = tuple[list[int], list[Task], int]


def _chunks(items: Iterator[tuple[int, Task, int]]) -> Iterator[_Chunk]:
    """(input indices, tasks, weight) of consecutive tasks weighing `_CHUNK_WEIGHT` or more
    (the last one less)."""
    idxs: list[int] = []
    tasks: list[Task] = []
    weight = 0
    for idx, task, w in items:
        idxs.append(idx)
        tasks.append(task)
        weight += w
        if weight >= _CHUNK_WEIGHT:
            yield idxs, tasks, weight
            idxs, tasks, weight = [], [], 0
    if tasks:
        yield idxs, tasks, weight


def _mp_context() -> mp.context.BaseContext:
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # Workers fork from a server that has already imported the parsers (the dispatch
        # module imports every format's module) and pymatgen's core, which gemmi's CIF path
        # uses; pymatgen's CIF parser (~0.2 s) only where a worker falls back to it.
        ctx.set_forkserver_preload(["deepergat.io.readers.dispatch", "pymatgen.core"])
        return ctx
    return mp.get_context("spawn")


def _execute(
    chunks: Iterator[_Chunk],
    *,
    workers: int,
    target_names: Sequence[str],
) -> Iterator[tuple[list[int], list[Outcome]]]:
    """Run chunks of tasks, in worker processes when there is more than one chunk.

    At most ``2 * workers + 2`` chunks, and beyond the oldest at most that many chunks' weight
    (`_CHUNK_WEIGHT`), are in flight, so the text they carry is bounded; results come back in
    input order.
    """
    names = tuple(target_names)
    first = next(chunks, None)
    if first is None:
        return
    second = next(chunks, None)
    head = [first] if second is None else [first, second]

    def rest() -> Iterator[_Chunk]:
        yield from head
        if second is not None:
            yield from chunks

    if workers <= 1 or second is None:
        for idxs, tasks, _ in rest():
            yield idxs, readers.run_chunk(tasks, names)
        return
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context(),
                               initializer=watch_parent, initargs=(os.getpid(),))
    pending: deque[tuple[list[int], Future[list[Outcome]], int]] = deque()
    most = 2 * workers + 2
    in_flight = 0
    try:
        for idxs, tasks, weight in rest():
            pending.append((idxs, pool.submit(readers.run_chunk, tasks, names), weight))
            in_flight += weight
            while len(pending) > most - 1 or (len(pending) > 1 and
                                              in_flight > most * _CHUNK_WEIGHT):
                i, fut, w = pending.popleft()
                in_flight -= w
                yield i, fut.result()
        while pending:
            i, fut, _ = pending.popleft()
            yield i, fut.result()
    except BrokenProcessPool:
        raise SettingError(
            "a parser process died (out of memory?); try fewer {workers}"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


class _Buffer:
    """Records waiting to be appended to the store, and running totals."""

    def __init__(self, writer: StoreWriter, target_names: Sequence[str], batch_size: int) -> None:
        self.writer = writer
        self.names = list(target_names)
        self.batch_size = batch_size
        self.records: list[Record] = []
        self.n_structures = 0
        self.n_atoms = 0
        self.counts = dict.fromkeys(self.names, 0)

    def add(self, r: Record) -> None:
        self.records.append(r)
        if len(self.records) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        recs = self.records
        if not recs:
            return
        n_atoms = np.array([len(r.atomic_numbers) for r in recs], dtype=np.int64)
        targets = {
            name: np.array([r.targets.get(name, math.nan) for r in recs], dtype=np.float64)
            for name in self.names
        }
        self.writer.append(
            ids=[r.id for r in recs],
            n_atoms=n_atoms,
            lattice=np.stack([r.lattice for r in recs]),
            pbc=np.stack([r.pbc for r in recs]),
            atomic_numbers=np.concatenate([r.atomic_numbers for r in recs]),
            positions=np.concatenate([r.positions for r in recs]).reshape(-1, 3),
            targets=targets,
        )
        self.n_structures += len(recs)
        self.n_atoms += int(n_atoms.sum())
        for name, v in targets.items():
            self.counts[name] += int(np.count_nonzero(~np.isnan(v)))
        self.records = []


def _check_ranges(r: Record) -> Failure | None:
    z = r.atomic_numbers
    if len(z) and (z.min() < 0 or z.max() > 255):
        return Failure(r.source, "unreadable", "atomic numbers outside 0..255")
    return None


def pack(
    inputs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    targets: Sequence[TargetSpec | str] = (),
    target_names: Sequence[TargetSpec | str] = (),
    cif_column: str = "cif",
    id_column: str | None = None,
    id_from: IdFrom = "stem",
    workers: int | None = None,
    skip_bad: bool = False,
    batch_size: int = BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
) -> PackResult:
    """Read structure files and write them as one structure store.

    Args:
        inputs: files, folders (a MatDeepLearn folder when it holds ``targets.csv``, else its
            structure files, sorted) and glob patterns, read in the order given.
        output: the store path; written as ``<output>.tmp`` and renamed when complete.
        targets: CSV columns to store as targets (``NAME[:UNIT]``); ASE inputs look the names up
            in key-value pairs, ``atoms.info`` and calculator results. Missing values are NaN.
        target_names: names of a MatDeepLearn ``targets.csv``'s value columns, in order
            (default one column named ``target``).
        cif_column: CSV column holding CIF text.
        id_column: CSV column of ids (default ``material_id`` or ``id`` when present, else
            ``<csv stem>_<row>``).
        id_from: ``"stem"`` (file name without suffix) or ``"path"`` (the path as given).
        workers: parser processes (default `default_workers`); 1 parses in this process.
        skip_bad: skip unreadable files, rows and frames instead of stopping, and list them in
            ``<output stem>.skipped.csv``.
        batch_size: structures per append to the store.
        progress: called with the number of structures (read or skipped) after each chunk.

    Returns:
        What was written.

    Raises:
        DeepergatError: an unreadable item (without ``skip_bad``), a duplicate id, a missing
            column or input, or an unwritable output. No output file is left behind.
    """
    out = Path(output)
    if id_from not in get_args(IdFrom):
        raise SettingError(f"{{id_from}} must be 'stem' or 'path', got {id_from!r}")
    if workers is None:
        workers = default_workers()
    if workers < 1:
        raise SettingError(f"{{workers}} must be at least 1, got {workers}")
    if batch_size < 1:
        raise DeepergatError(f"batch size must be at least 1, got {batch_size}")
    tspecs = [t if isinstance(t, TargetSpec) else parse_target_spec(t) for t in targets]
    nspecs = [t if isinstance(t, TargetSpec) else parse_target_spec(t) for t in target_names]
    if not out.parent.is_dir():
        raise DeepergatError(f"{out}: the folder {out.parent} does not exist")
    if out.is_dir():
        raise DeepergatError(f"{out}: is a folder; give a file name such as {out / 'store.h5'}")
    lock = OutputLock(out, run_token(), label=str(out), way_out="choose another output file")
    lock.acquire()
    try:
        return _pack(inputs, out, tspecs, nspecs, cif_column=cif_column, id_column=id_column,
                     id_from=id_from, workers=workers, skip_bad=skip_bad,
                     batch_size=batch_size, progress=progress)
    finally:
        lock.release()


def _pack(
    inputs: Sequence[str | os.PathLike[str]],
    out: Path,
    tspecs: Sequence[TargetSpec],
    nspecs: Sequence[TargetSpec],
    *,
    cif_column: str,
    id_column: str | None,
    id_from: IdFrom,
    workers: int,
    skip_bad: bool,
    batch_size: int,
    progress: Callable[[int], None] | None,
) -> PackResult:
    """`pack` once the output is ours."""
    plan = _plan(inputs, out, tspecs, nspecs, cif_column=cif_column, id_column=id_column,
                 skip_bad=skip_bad)
    log.info("packing %d input(s) into %s with %d worker process(es)", len(plan.inputs), out,
             workers)
    writer = StoreWriter(out, targets=plan.units)
    buf = _Buffer(writer, list(plan.units), batch_size)
    try:
        with _skipped_list(plan.skipped_path) as skipped_rows:
            intake = _Intake(buf, plan.inputs, id_from, skipped_rows)
            items = _tasks(
                plan.inputs,
                csv_targets=plan.csv_targets,
                mdl_targets=plan.mdl_targets,
                cif_column=cif_column,
                id_column=id_column,
                id_from=id_from,
            )
            for idxs, outcomes in _execute(_chunks(items), workers=workers,
                                           target_names=list(plan.units)):
                done = 0
                for idx, oc in zip(idxs, outcomes, strict=True):
                    done += intake.take(idx, oc)
                if progress is not None:
                    progress(done)
            buf.flush()
        # the list of skipped inputs stays in place when nothing could be read: it says why
        if buf.n_structures == 0:
            why = (
                f" ({describe_skipped(intake.skipped)} skipped, listed in {plan.skipped_path})"
                if intake.skipped
                else ""
            )
            raise NothingPacked(f"{out}: no structures were read from the inputs{why}",
                                dict(intake.skipped))
        digest = writer.close()
    except BaseException as e:
        writer.abort()
        if isinstance(e, OSError):  # reading inputs is guarded; this is the output side
            raise DeepergatError(f"{out}: writing failed: {e}") from e
        raise
    for name, count in buf.counts.items():
        if count == 0:
            log.warning(
                "target %r has no values in any input (for a MatDeepLearn folder's targets.csv "
                "name its value columns with the target names)",
                name,
            )
    return PackResult(
        path=out,
        n_structures=buf.n_structures,
        n_atoms=buf.n_atoms,
        targets={name: (plan.units[name], buf.counts[name]) for name in plan.units},
        content_digest=digest,
        n_inputs=len(plan.inputs),
        skipped=dict(intake.skipped),
        skipped_csv=plan.skipped_path,
    )


@dataclass(frozen=True)
class _Plan:
    """What a pack reads and where it lists what it skips.

    Attributes:
        inputs: the files and folders, expanded, in order.
        units: store target name -> units.
        csv_targets: targets looked up in CSV columns and ASE inputs.
        mdl_targets: the names of a MatDeepLearn ``targets.csv``'s value columns.
        skipped_path: ``<out stem>.skipped.csv`` (``skip_bad`` only).
    """

    inputs: list[_Input]
    units: dict[str, str]
    csv_targets: list[str]
    mdl_targets: list[str]
    skipped_path: Path | None


def _plan(
    inputs: Sequence[str | os.PathLike[str]],
    out: Path,
    tspecs: Sequence[TargetSpec],
    nspecs: Sequence[TargetSpec],
    *,
    cif_column: str,
    id_column: str | None,
    skip_bad: bool,
) -> _Plan:
    """Check the output side, remove a killed pack's leftovers, expand the inputs and check
    them; nothing is parsed yet."""
    _check_replaceable(out)
    skipped_path = out.with_name(out.stem + ".skipped.csv") if skip_bad else None
    if skipped_path is not None:
        _check_skipped_list(skipped_path)
    _remove_leftovers(out)

    inputs_ = _expand_inputs(inputs)
    units, csv_targets, mdl_targets = _store_targets(inputs_, tspecs, nspecs)
    for inp in inputs_:  # fail fast on a CSV that lacks a named column
        if inp.path.resolve() == out.resolve():
            raise DeepergatError(f"{out}: is also an input; choose another output name")
        if skipped_path is not None and inp.path.resolve() == skipped_path.resolve():
            raise SettingError(f"{literal(skipped_path)}: is an input, and {{skip_bad}} would "
                               "write its list of skipped inputs there; choose another output "
                               "name")
        if inp.kind == "csv":
            readers.check_csv_columns(
                inp.path, cif_column=cif_column, id_column=id_column, target_columns=csv_targets
            )
    return _Plan(inputs_, units, csv_targets, mdl_targets, skipped_path)


@contextlib.contextmanager
def _skipped_list(path: Path | None) -> Iterator[Any]:
    """A `csv.writer` of the list of skipped inputs, its header written, or None without a
    list. The list is staged as ``<path>.tmp`` (the name `_remove_leftovers` cleans up) and
    put in place when the block ends normally."""
    if path is None:
        yield None
        return
    tmp = path.with_name(path.name + ".tmp")
    with atomic_open(path, "w", tmp=tmp, newline="", encoding="utf-8") as fh:
        rows = csv.writer(fh)
        rows.writerow(["source", "reason"])
        yield rows


class _Intake:
    """The outcomes of parsed tasks, in input order, into the store and the skipped list.

    Args:
        buf: the records waiting for the store.
        inputs: the expanded inputs (duplicate ids name them).
        id_from: how file ids were made (the duplicate-id hint).
        skipped_rows: the list of skipped inputs (`_skipped_list`); None stops at the first
            failure.
    """

    def __init__(self, buf: _Buffer, inputs: Sequence[_Input], id_from: IdFrom,
                 skipped_rows: Any) -> None:
        self.buf = buf
        self.inputs = inputs
        self.id_from = id_from
        self.skipped_rows = skipped_rows
        self.seen: dict[str, int] = {}  # id -> index of the input it came from
        self.skipped: Counter[str] = Counter()

    def take(self, idx: int, oc: Outcome) -> int:
        """Take one task's outcome (from input ``idx``); returns how many structures it read
        or skipped.

        Raises:
            DeepergatError: a duplicate id, or a failure when there is no skipped list.
        """
        for note in oc.notes:
            log.debug("%s", note)
        for message in oc.warnings:
            log.warning("%s", message)
        failures = list(oc.failures)
        for r in oc.records:
            bad = _check_ranges(r)
            if bad is not None:
                failures.append(bad)
                continue
            prev = self.seen.get(r.id)
            if prev is not None:
                _duplicate(r, self.inputs[prev].path, self.inputs[idx].path, self.id_from)
            self.seen[r.id] = idx
            self.buf.add(r)
        for f in failures:
            if self.skipped_rows is None:
                raise SettingError(
                    f"{literal(f.source)}: {literal(f.reason)}; pass {{skip_bad}} to skip what "
                    "cannot be read and list it"
                )
            self.skipped_rows.writerow([f.source, f.reason])
            self.skipped[f.category] += 1
        return len(oc.records) + len(oc.failures)


class NothingPacked(DeepergatError):
    """Not one structure could be read from the inputs.

    Attributes:
        skipped: category -> number of inputs skipped.
    """

    def __init__(self, message: str, skipped: dict[str, int]) -> None:
        super().__init__(message)
        self.skipped = skipped


def _check_replaceable(out: Path) -> None:
    """Refuse an output path that holds anything but a deepergat structure store."""
    if not out.exists():
        return
    from .store import Store

    try:
        Store(out).close()
    except DeepergatError:
        raise DeepergatError(
            f"{out}: exists and is not a deepergat structure store; pack never overwrites "
            "other files — choose another output name (e.g. "
            f"{out.with_suffix('.h5').name if out.suffix != '.h5' else 'store.h5'})"
        ) from None


#: The header of a list of skipped inputs (what `_check_skipped_list` recognizes as pack's own).
_SKIPPED_HEADER = "source,reason"


def _check_skipped_list(path: Path) -> None:
    """Refuse to replace an existing ``<stem>.skipped.csv`` that pack did not write."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            first = fh.readline(200).rstrip("\r\n")
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError):
        first = None
    if first != _SKIPPED_HEADER or not path.is_file():
        raise SettingError(
            f"{literal(path)}: exists and is not a list of skipped inputs (its first line is not "
            f"'{_SKIPPED_HEADER}'); with {{skip_bad}} pack writes its list there and never "
            "overwrites other files — move it away or choose another output name"
        )


def _remove_leftovers(out: Path) -> None:
    """Remove the temporary files a killed pack of ``out`` left (the caller holds its lock)."""
    for p in (out.with_name(out.name + ".tmp"),
              out.with_name(out.stem + ".skipped.csv.tmp")):
        try:
            if p.is_file():
                p.unlink()
                log.info("removed %s, left by a killed pack", p)
        except OSError as e:
            log.warning("cannot remove %s, left by a killed pack: %s", p, e)


def _duplicate(r: Record, first: Path, second: Path, id_from: IdFrom) -> None:
    if first != second and id_from == "stem":
        hint = "; pass {id_from} path to tell files with the same name apart"
        where = f"already taken by a structure from {first}"
    else:
        hint = "; ids must be unique (check the id column or the input list)"
        where = f"already taken by another structure from {first}"
    raise SettingError(f"{literal(r.source)}: duplicate id {literal(repr(r.id))}, "
                       f"{literal(where)}{hint}")


def describe_skipped(skipped: Counter[str] | dict[str, int]) -> str:
    """``3 disordered, 1 unreadable``, most common first."""
    return ", ".join(f"{n} {cat}" for cat, n in Counter(skipped).most_common())
