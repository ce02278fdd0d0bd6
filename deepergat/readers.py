"""Structure-file readers for `deepergat pack`: one parsed structure is a `Record`.

Work is cut into small picklable tasks so that worker processes can parse in parallel while the
main process streams: the main process only splits inputs (CSV rows, extxyz frames, ASE database
row ranges, files) and writes; `run_chunk` parses a list of tasks in a worker and returns, per task,
the parsed records or one `Failure` that names the source and the reason.

Formats, recognised by file name and confirmed by content:

- CIF (``*.cif``, ``*.mcif``): pymatgen ``CifParser``, exactly as
  ``Structure.from_str(s, fmt="cif")`` parses (see `_parse_cif_text`).
- POSCAR (``POSCAR*``, ``CONTCAR*``, ``*.vasp``, ``*.poscar``): pymatgen
  ``Structure.from_str(s, fmt="poscar")``.
- extxyz (``*.extxyz``, ``*.xyz``): ASE's extxyz reader, frame by frame.
- ASE database: ``*.db`` (SQLite) and ``*.json`` in ASE's JSON database form; ``ase.db.connect``.
- pymatgen JSON: ``*.json`` holding a ``Structure`` or ``Molecule`` dict (keys ``@module``,
  ``sites`` and, for a structure, ``lattice``) or a list of them; ``from_dict``.
- CSV (``*.csv``) with a column of CIF texts: one structure per row, parsed as CIF.

Ids: a file holding one structure gives it the file's id (its stem, or its path with
``--id-from path``); a file holding several (extxyz frames, database rows, CIF data blocks, a JSON
list) gives ``<id>_<k>`` with k the 0-based position of the structure in the file. CSV rows take
the id column (``<csv path>:<id>`` with ``--id-from path``), or ``<csv id>_<k>`` with k the 0-based
data row when the file has no id column.

Geometry is stored exactly as the parser gives it: lattice rows and Cartesian positions in Å, not
wrapped. pymatgen structures keep their lattice's ``pbc`` (periodic on all axes unless the JSON says
otherwise); pymatgen molecules get a zero lattice and no periodicity; ASE atoms keep their ``pbc``
and cell. Disordered (partial-occupancy) structures are refused.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import DeepergatError

__all__ = [
    "STRUCTURE_FORMATS",
    "CifTextTask",
    "DbRowsTask",
    "FailTask",
    "Failure",
    "FileTask",
    "FramesTask",
    "Outcome",
    "Record",
    "Task",
    "check_csv_columns",
    "csv_tasks",
    "db_row_tasks",
    "extxyz_tasks",
    "matdeeplearn_tasks",
    "read_csv_header",
    "run_chunk",
    "structure_format",
]

Format = Literal["cif", "poscar", "extxyz", "ase-db", "json", "csv"]

#: Formats that one file holds structures in (CSV tables are not "structure files").
STRUCTURE_FORMATS: tuple[str, ...] = ("cif", "poscar", "extxyz", "ase-db", "json")

#: extxyz frames per task; ASE database rows per task.
FRAMES_PER_TASK = 64
DB_ROWS_PER_TASK = 256

_MAX_DETAIL = 400


# --------------------------------------------------------------------------------------------
# Records, failures, tasks
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Record:
    """One parsed structure.

    Attributes:
        id: unique structure id.
        source: where it came from, for messages (``path``, ``path:row 3``, ``path:frame 7``).
        lattice: [3, 3] float64, lattice vectors as rows, Å (zeros when there is no cell).
        pbc: [3] bool periodicity per axis.
        atomic_numbers: [n] int64.
        positions: [n, 3] float64 Cartesian coordinates, Å.
        targets: target name -> value (missing names are NaN in the store).
    """

    id: str
    source: str
    lattice: np.ndarray
    pbc: np.ndarray
    atomic_numbers: np.ndarray
    positions: np.ndarray
    targets: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Failure:
    """A file, row or frame that could not be turned into a structure.

    Attributes:
        source: the file, row or frame, as in `Record.source`.
        category: a short reason that groups failures (``unreadable``, ``disordered``, ...).
        detail: the specific reason, one line.
    """

    source: str
    category: str
    detail: str

    @property
    def reason(self) -> str:
        """``category: detail`` as one line."""
        return f"{self.category}: {self.detail}" if self.detail else self.category


@dataclass(slots=True)
class Outcome:
    """What one task produced.

    Attributes:
        records: the structures parsed, in order.
        failures: what could not be parsed (a file or row fails whole; an extxyz frame alone).
        warnings: things the user should know (a CIF data block that gave no structure), to log
            at warning level.
        notes: parser warnings, to log at debug level.
    """

    records: list[Record] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class FileTask:
    """Parse a whole file of one format.

    Attributes:
        path: the file.
        fmt: one of `STRUCTURE_FORMATS`.
        id: id of the structure (or prefix ``<id>_<k>`` when the file holds several).
        expect_one: the file must hold exactly one structure (a MatDeepLearn row).
        raw_targets: target name -> value text, applied to every structure of the file.
        source: message label; defaults to the path.
    """

    path: str
    fmt: str
    id: str
    expect_one: bool = False
    raw_targets: tuple[tuple[str, str], ...] = ()
    source: str = ""


@dataclass(frozen=True, slots=True)
class CifTextTask:
    """Parse the CIF text of one CSV row (exactly one structure)."""

    source: str
    id: str
    text: str
    raw_targets: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class FramesTask:
    """Parse consecutive extxyz frames given as text.

    Attributes:
        path: the file, for messages.
        first: 0-based index of the first frame in the file.
        texts: one frame's text each.
        id: the file's id; frames get ``<id>_<k>`` unless ``single``.
        single: the file holds exactly one frame.
    """

    path: str
    first: int
    texts: tuple[str, ...]
    id: str
    single: bool


@dataclass(frozen=True, slots=True)
class DbRowsTask:
    """Read rows [offset, offset + limit) of an ASE SQLite database, ordered by row id."""

    path: str
    offset: int
    limit: int
    id: str
    single: bool


@dataclass(frozen=True, slots=True)
class FailTask:
    """A failure found while planning; passes through the workers to keep input order."""

    failure: Failure


Task = FileTask | CifTextTask | FramesTask | DbRowsTask | FailTask


# --------------------------------------------------------------------------------------------
# Format recognition
# --------------------------------------------------------------------------------------------


def structure_format(path: str | Path) -> Format | None:
    """The format a file name implies, or None when deepergat does not read such files.

    Args:
        path: a file path (only its name is looked at; `.json` content is told apart later).

    Returns:
        ``"cif"``, ``"poscar"``, ``"extxyz"``, ``"ase-db"``, ``"json"``, ``"csv"`` or None.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".cif", ".mcif"):
        return "cif"
    if suffix in (".extxyz", ".xyz"):
        return "extxyz"
    if suffix == ".db":
        return "ase-db"
    if suffix == ".json":
        return "json"
    if suffix == ".csv":
        return "csv"
    if suffix in (".vasp", ".poscar") or p.name.upper().startswith(("POSCAR", "CONTCAR")):
        return "poscar"
    return None


# --------------------------------------------------------------------------------------------
# Task planning (main process): CSV rows, extxyz frames, database rows, MatDeepLearn folders
# --------------------------------------------------------------------------------------------


def _open_csv(path: Path) -> io.TextIOWrapper:
    csv.field_size_limit(2**31 - 1)  # a CIF cell can be long
    try:
        return open(path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise DeepergatError(f"{path}: cannot open: {e.strerror or e}") from None


def read_csv_header(path: str | Path) -> list[str]:
    """Column names of a CSV file.

    Raises:
        DeepergatError: the file cannot be read or is empty.
    """
    p = Path(path)
    with _open_csv(p) as fh:
        try:
            header = next(csv.reader(fh), None)
        except (csv.Error, UnicodeDecodeError) as e:
            raise DeepergatError(f"{p}: not a readable CSV file: {e}") from None
    if not header:
        raise DeepergatError(f"{p}: empty CSV file (expected a header row)")
    return header


def resolve_id_column(path: str | Path, header: Sequence[str], id_column: str | None) -> str | None:
    """The id column to use: the given one, else ``material_id`` or ``id`` when present.

    Raises:
        DeepergatError: a named id column is missing.
    """
    if id_column is not None:
        if id_column not in header:
            raise DeepergatError(
                f"{path}: no id column {id_column!r}; columns are {_columns(header)}; "
                "name one with --id-column"
            )
        return id_column
    for name in ("material_id", "id"):
        if name in header:
            return name
    return None


def _columns(header: Sequence[str]) -> str:
    return ", ".join(repr(h) for h in header)


def check_csv_columns(
    path: str | Path,
    *,
    cif_column: str,
    id_column: str | None,
    target_columns: Sequence[str],
) -> str | None:
    """Check that a CSV file has the named columns; returns the id column to use.

    Raises:
        DeepergatError: the file is unreadable or a named column is missing.
    """
    header = read_csv_header(path)
    for column, what, flag in [(cif_column, "CIF column", "--cif-column")] + [
        (c, "target column", "--target") for c in target_columns
    ]:
        if column not in header:
            raise DeepergatError(
                f"{path}: no {what} {column!r}; columns are {_columns(header)}; "
                f"name the right one with {flag}"
            )
    return resolve_id_column(path, header, id_column)


def csv_tasks(
    path: str | Path,
    *,
    cif_column: str,
    id_column: str | None,
    target_columns: Sequence[str],
    id_prefix: str,
    path_ids: bool,
) -> Iterator[Task]:
    """One `CifTextTask` per CSV row, streamed.

    Args:
        path: the CSV file; the header row names the columns.
        cif_column: column holding a whole CIF text.
        id_column: column of ids (see `resolve_id_column`); None numbers rows ``<prefix>_<k>``.
        target_columns: columns to store as targets (empty or NaN text gives NaN).
        id_prefix: the file's id (stem or path).
        path_ids: ids from the id column become ``<id_prefix>:<id>``.

    Raises:
        DeepergatError: a named column is missing or the file is not CSV.
    """
    p = Path(path)
    id_column = check_csv_columns(
        p, cif_column=cif_column, id_column=id_column, target_columns=target_columns
    )
    with _open_csv(p) as fh:
        reader = csv.DictReader(fh)
        try:
            for k, row in enumerate(reader):
                source = f"{p}:row {k + 1}"
                if None in row or any(v is None for v in row.values()):
                    yield FailTask(
                        Failure(source, "unreadable", "row has a different number of fields")
                    )
                    continue
                if id_column is None:
                    sid = f"{id_prefix}_{k}"
                else:
                    raw = row[id_column].strip()
                    if not raw:
                        yield FailTask(Failure(source, "empty id", f"column {id_column!r}"))
                        continue
                    source = f"{source} (id {raw})"
                    sid = f"{id_prefix}:{raw}" if path_ids else raw
                targets = tuple((c, row[c]) for c in target_columns)
                yield CifTextTask(source=source, id=sid, text=row[cif_column], raw_targets=targets)
        except (csv.Error, UnicodeDecodeError) as e:
            raise DeepergatError(
                f"{p}: not readable as CSV near line {reader.line_num}: {e}"
            ) from None


def extxyz_tasks(path: str | Path, *, id_prefix: str) -> Iterator[Task]:
    """Split an (extended) XYZ file into frames and batch them into `FramesTask` s, streamed.

    A frame is a line with the atom count, a comment line, one line per atom, and any ``VEC``
    lines (as ASE reads them). Blank lines between frames are skipped; a frame whose header is
    not an atom count, or a file that ends inside a frame, yields a failure for the rest of it.
    """
    p = Path(path)

    def frames() -> Iterator[str | Failure]:
        try:
            fh = open(p, encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as e:
            yield Failure(str(p), "unreadable", f"cannot open: {e.strerror or e}")
            return
        with fh:
            try:
                yield from split(fh)
            except UnicodeDecodeError as e:
                yield Failure(str(p), "unreadable", f"not a UTF-8 text file: {e}")

    def split(fh: io.TextIOWrapper) -> Iterator[str | Failure]:
        k = 0
        line_no = 0
        pending: str | None = None
        while True:
            line = pending if pending is not None else fh.readline()
            pending = None
            line_no += 1
            if not line:
                return
            if not line.strip():
                continue
            src = f"{p}:frame {k}"
            try:
                natoms = int(line)
            except ValueError:
                yield Failure(
                    src,
                    "unreadable",
                    f"line {line_no} should hold the atom count, got {line.strip()[:40]!r}",
                )
                return
            lines = [line]
            for _ in range(natoms + 1):
                nxt = fh.readline()
                line_no += 1
                if not nxt:
                    yield Failure(src, "unreadable", "file ends inside the frame")
                    return
                lines.append(nxt)
            while True:
                nxt = fh.readline()
                if nxt.lstrip().startswith("VEC"):
                    lines.append(nxt)
                    line_no += 1
                else:
                    pending = nxt
                    break
            yield "".join(lines)
            k += 1

    it = frames()
    first = next(it, None)
    if first is None:
        yield FailTask(Failure(str(p), "unreadable", "no frames in the file"))
        return
    second = next(it, None)
    single = second is None and not isinstance(first, Failure)
    batch: list[str] = []
    start = 0
    for k, item in enumerate(_chain_first(first, second, it)):
        if isinstance(item, Failure):
            if batch:
                yield FramesTask(str(p), start, tuple(batch), id_prefix, single)
            yield FailTask(item)
            return
        if not batch:
            start = k
        batch.append(item)
        if len(batch) >= FRAMES_PER_TASK:
            yield FramesTask(str(p), start, tuple(batch), id_prefix, single)
            batch = []
    if batch:
        yield FramesTask(str(p), start, tuple(batch), id_prefix, single)


def _chain_first(first: Any, second: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    if second is not None:
        yield second
        yield from rest


def db_row_tasks(path: str | Path, *, id_prefix: str) -> Iterator[Task]:
    """Cut an ASE SQLite database into `DbRowsTask` s of `DB_ROWS_PER_TASK` rows."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            magic = fh.read(16)
    except OSError as e:
        yield FailTask(Failure(str(p), "unreadable", f"cannot open: {e.strerror or e}"))
        return
    if magic != b"SQLite format 3\x00":
        yield FailTask(Failure(str(p), "unreadable", "not an SQLite (ASE .db) database"))
        return
    try:
        import ase.db

        n = ase.db.connect(str(p), type="db", create_indices=False).count()
    except Exception as e:  # sqlite and ASE raise many kinds
        yield FailTask(Failure(str(p), "unreadable", _one_line(e)))
        return
    if n == 0:
        yield FailTask(Failure(str(p), "unreadable", "the database has no rows"))
        return
    for offset in range(0, n, DB_ROWS_PER_TASK):
        yield DbRowsTask(str(p), offset, min(DB_ROWS_PER_TASK, n - offset), id_prefix, n == 1)


def read_matdeeplearn_targets(path: str | Path) -> Iterator[tuple[int, list[str]]]:
    """Rows of a MatDeepLearn ``targets.csv`` (``id,value[,value...]``, no header).

    Yields:
        (1-based row number, fields) for every non-empty row.
    """
    p = Path(path)
    with _open_csv(p) as fh:
        try:
            for k, row in enumerate(csv.reader(fh)):
                if row and any(x.strip() for x in row):
                    yield k + 1, [x.strip() for x in row]
        except (csv.Error, UnicodeDecodeError) as e:
            raise DeepergatError(f"{p}: not readable as CSV: {e}") from None


def matdeeplearn_tasks(
    folder: str | Path,
    *,
    target_names: Sequence[str],
    path_ids: bool,
) -> Iterator[Task]:
    """One `FileTask` per row of a MatDeepLearn folder's ``targets.csv``.

    Each row ``id,value...`` names a structure file ``<id>.<ext>`` in the folder (any extension
    deepergat reads); the values become the targets named ``target_names``, in order. The id is
    the row's id (the file's path with ``path_ids``).

    Raises:
        DeepergatError: a row's value count differs from the number of target names.
    """
    d = Path(folder)
    by_stem: dict[str, list[Path]] = {}
    for entry in sorted(d.iterdir()):
        if entry.name == "targets.csv" or not entry.is_file():
            continue
        by_stem.setdefault(entry.stem, []).append(entry)
    table = d / "targets.csv"
    for row_no, fields in read_matdeeplearn_targets(table):
        sid = fields[0]
        source = f"{table}:row {row_no} (id {sid})"
        values = fields[1:]
        if len(values) != len(target_names):
            raise DeepergatError(
                f"{source}: {len(values)} value column(s) but {len(target_names)} target "
                f"name(s) {list(target_names)}; give one --target-name per value column"
            )
        candidates = [c for c in by_stem.get(sid, []) if structure_format(c) in STRUCTURE_FORMATS]
        if not candidates:
            others = by_stem.get(sid, [])
            detail = (
                f"no structure file {sid}.<ext> in {d}"
                if not others
                else f"{others[0].name} is not a structure format deepergat reads"
            )
            yield FailTask(Failure(source, "missing structure file", detail))
            continue
        if len(candidates) > 1:
            names = ", ".join(c.name for c in candidates)
            yield FailTask(Failure(source, "ambiguous structure file", f"several files: {names}"))
            continue
        f = candidates[0]
        yield FileTask(
            path=str(f),
            fmt=str(structure_format(f)),
            id=str(f) if path_ids else sid,
            expect_one=True,
            raw_targets=tuple(zip(target_names, values, strict=True)),
            source=f"{f} (targets.csv row {row_no})",
        )


# --------------------------------------------------------------------------------------------
# Parsing (worker processes)
# --------------------------------------------------------------------------------------------


class _PackWarning(UserWarning):
    """A parser-side message that `Outcome.warnings` carries to the main process."""


class _TaskError(Exception):
    """Raised inside a parser to fail the current task with a category and detail."""

    def __init__(self, category: str, detail: str) -> None:
        super().__init__(detail)
        self.category = category
        self.detail = detail


def _one_line(e: BaseException | str) -> str:
    text = str(e) if not isinstance(e, str) else e
    if isinstance(e, BaseException) and not text:
        text = type(e).__name__
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


def run_chunk(tasks: Sequence[Task], target_names: Sequence[str]) -> list[Outcome]:
    """Parse a list of tasks; the worker-process entry point.

    Args:
        tasks: tasks in input order.
        target_names: names of all store targets; ASE inputs look them up in ``atoms.info``,
            database key-value pairs and calculator results (missing names stay NaN).

    Returns:
        One `Outcome` per task, in order.
    """
    return [_run_task(t, tuple(target_names)) for t in tasks]


def _run_task(task: Task, names: tuple[str, ...]) -> Outcome:
    if isinstance(task, FailTask):
        return Outcome(failures=[task.failure])
    if isinstance(task, FramesTask):
        return _run_frames(task, names)
    if isinstance(task, DbRowsTask):
        source = f"{task.path}:rows {task.offset}..{task.offset + task.limit - 1}"
    else:
        source = task.source or getattr(task, "path", "")
    notes: list[str] = []
    warned: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if isinstance(task, CifTextTask):
                records = _parse_cif_text(task.text, source, task.id, expect_one=True)
                _apply_raw_targets(records, task.raw_targets)
            elif isinstance(task, DbRowsTask):
                records = _parse_db_rows(task, names)
            else:
                records = _parse_file(task, names)
                _apply_raw_targets(records, task.raw_targets)
        notes = [f"{source}: {_one_line(str(w.message))}" for w in caught]
        warned = [
            f"{source}: {_one_line(str(w.message))}"
            for w in caught
            if issubclass(w.category, _PackWarning)
        ]
    except _TaskError as e:
        return Outcome(failures=[Failure(source, e.category, _one_line(e.detail))])
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # any parser error is the file's problem, not ours
        return Outcome(failures=[Failure(source, "unreadable", _one_line(e))])
    return Outcome(records=records, warnings=warned, notes=[n for n in notes if n not in warned])


def _apply_raw_targets(records: list[Record], raw: tuple[tuple[str, str], ...]) -> None:
    for name, text in raw:
        value = _parse_target(name, text)
        for r in records:
            r.targets[name] = value


def _parse_target(name: str, text: str) -> float:
    s = (text or "").strip()
    if not s:
        return math.nan
    try:
        return float(s)
    except ValueError:
        raise _TaskError(
            "bad target", f"target {name!r} value {s[:40]!r} is not a number"
        ) from None


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except UnicodeDecodeError:
        raise _TaskError("unreadable", "not a text file (UTF-8)") from None
    except OSError as e:
        raise _TaskError("unreadable", f"cannot open: {e.strerror or e}") from None


def _ids(prefix: str, n: int, *, single: bool | None = None, first: int = 0) -> list[str]:
    if single if single is not None else n == 1:
        return [prefix] * n
    return [f"{prefix}_{first + k}" for k in range(n)]


def _parse_file(task: FileTask, names: tuple[str, ...]) -> list[Record]:
    source = task.source or task.path
    if task.fmt == "cif":
        records = _parse_cif_text(_read_text(task.path), source, task.id, expect_one=False)
    elif task.fmt == "poscar":
        records = [_poscar_record(_read_text(task.path), source, task.id)]
    elif task.fmt == "json":
        records = _parse_json_file(task.path, source, task.id, names)
    elif task.fmt == "extxyz":
        records = _parse_xyz_file(task.path, source, task.id, names)
    elif task.fmt == "ase-db":
        records = _parse_ase_db(task.path, "db", source, task.id, names)
    else:
        raise _TaskError("unknown format", f"deepergat does not read {task.fmt!r} files")
    if task.expect_one and len(records) != 1:
        raise _TaskError(
            "several structures", f"holds {len(records)} structures where exactly one is expected"
        )
    return records


def _from_pymatgen(struct: Any, source: str, sid: str) -> Record:
    """A pymatgen Structure or Molecule as a record; refuses disordered ones."""
    if not struct.is_ordered:
        bad = [i for i, site in enumerate(struct) if not site.is_ordered]
        site = struct[bad[0]]
        occ = ", ".join(f"{sp}:{x:g}" for sp, x in site.species.items())
        raise _TaskError(
            "disordered",
            f"{len(bad)} of {len(struct)} sites have partial occupancy (site {bad[0]}: {occ}); "
            "deepergat needs ordered structures",
        )
    z = np.array([site.specie.Z for site in struct], dtype=np.int64)
    positions = np.array(struct.cart_coords, dtype=np.float64).reshape(-1, 3)
    lattice_obj = getattr(struct, "lattice", None)
    if lattice_obj is None:  # a Molecule
        lattice = np.zeros((3, 3))
        pbc = np.zeros(3, bool)
    else:
        lattice = np.array(lattice_obj.matrix, dtype=np.float64)
        pbc = np.array(lattice_obj.pbc, dtype=bool)
    return Record(sid, source, lattice, pbc, z, positions)


def _parse_cif_text(text: str, source: str, sid: str, *, expect_one: bool) -> list[Record]:
    """Every data block of a CIF, parsed as ``Structure.from_str(text, fmt="cif")`` parses.

    ``Structure.from_str`` uses ``CifParser`` with its defaults (occupancy tolerance 1.0: no
    rescaling of occupancies; site tolerance 1e-4 Å for merging symmetry copies),
    ``parse_structures(primitive=False)`` (the cell as written, no reduction) and ``merge_tol=0``
    (no further merging), and rebuilds the first structure with ``Structure.from_sites``, which
    keeps lattice and coordinates. The same calls here give the same structure for the first
    block and also return the others.
    """
    from pymatgen.core import Structure
    from pymatgen.io.cif import CifParser

    if not text or not text.strip():
        raise _TaskError("unreadable", "empty CIF")
    parser = CifParser.from_str(text)
    try:
        structures = parser.parse_structures(primitive=False, on_error="ignore")
    except ValueError as e:
        reasons = "; ".join(_one_line(w) for w in parser.warnings) or _one_line(e)
        raise _TaskError("unreadable", f"no structure in the CIF: {reasons}") from None
    dropped = [w for w in parser.warnings if w.startswith("No structure parsed for section")]
    for w in dropped:  # e.g. a data_global block of publication details, or a broken block
        warnings.warn(f"CIF {_one_line(w)}; the other blocks were read", _PackWarning, stacklevel=1)
    if len(structures) > 1 and expect_one:
        raise _TaskError(
            "several structures", f"the CIF holds {len(structures)} structures; one is expected"
        )
    structures = [Structure.from_sites(s, properties=s.properties) for s in structures]
    ids = _ids(sid, len(structures))
    return [_from_pymatgen(s, source, i) for s, i in zip(structures, ids, strict=True)]


def _poscar_record(text: str, source: str, sid: str) -> Record:
    from pymatgen.core import Structure

    return _from_pymatgen(Structure.from_str(text, fmt="poscar"), source, sid)


def _is_pymatgen_dict(d: Any) -> bool:
    return isinstance(d, dict) and "@module" in d and "sites" in d


def _parse_json_file(path: str, source: str, sid: str, names: tuple[str, ...]) -> list[Record]:
    text = _read_text(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise _TaskError("unreadable", f"not valid JSON: {e}") from None
    if _is_pymatgen_dict(doc) or (
        isinstance(doc, list) and doc and all(_is_pymatgen_dict(d) for d in doc)
    ):
        from pymatgen.core import Molecule, Structure

        docs = doc if isinstance(doc, list) else [doc]
        ids = _ids(sid, len(docs))
        return [
            _from_pymatgen((Structure if "lattice" in d else Molecule).from_dict(d), source, i)
            for d, i in zip(docs, ids, strict=True)
        ]
    if isinstance(doc, dict) and (
        "ids" in doc or any(re.fullmatch(r"\d+", k) and isinstance(v, dict) for k, v in doc.items())
    ):
        return _parse_ase_db(path, "json", source, sid, names)
    raise _TaskError(
        "unreadable",
        "JSON is neither a pymatgen Structure (keys @module, lattice, sites) nor an ASE database",
    )


def _from_ase(
    atoms: Any, source: str, sid: str, names: tuple[str, ...], kvp: Mapping[str, Any] | None = None
) -> Record:
    targets: dict[str, float] = {}
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    for name in names:
        for where in (kvp or {}, atoms.info, results):
            if name in where:
                try:
                    targets[name] = float(where[name])
                except (TypeError, ValueError):
                    raise _TaskError(
                        "bad target", f"target {name!r} value {where[name]!r} is not a number"
                    ) from None
                break
    return Record(
        sid,
        source,
        np.array(atoms.cell.array, dtype=np.float64).reshape(3, 3),
        np.array(atoms.pbc, dtype=bool).reshape(3),
        np.array(atoms.numbers, dtype=np.int64),
        np.array(atoms.positions, dtype=np.float64).reshape(-1, 3),
        targets,
    )


def _parse_ase_db(
    path: str, kind: str, source: str, sid: str, names: tuple[str, ...]
) -> list[Record]:
    import ase.db

    db = ase.db.connect(path, type=kind, create_indices=False, use_lock_file=False)
    rows = list(db.select(sort="id"))
    if not rows:
        raise _TaskError("unreadable", "the database has no rows")
    ids = _ids(sid, len(rows))
    return [
        _from_ase(row.toatoms(), f"{source}:row id {row.id}", i, names, row.key_value_pairs)
        for row, i in zip(rows, ids, strict=True)
    ]


def _parse_db_rows(task: DbRowsTask, names: tuple[str, ...]) -> list[Record]:
    import ase.db

    db = ase.db.connect(task.path, type="db", create_indices=False, use_lock_file=False)
    rows = list(db.select(sort="id", offset=task.offset, limit=task.limit))
    if len(rows) != task.limit:
        raise _TaskError(
            "unreadable", f"expected {task.limit} rows from {task.offset}, read {len(rows)}"
        )
    ids = _ids(task.id, len(rows), single=task.single, first=task.offset)
    return [
        _from_ase(row.toatoms(), f"{task.path}:row id {row.id}", i, names, row.key_value_pairs)
        for row, i in zip(rows, ids, strict=True)
    ]


def _parse_xyz_text(text: str) -> Any:
    from ase.io.extxyz import read_xyz

    return next(read_xyz(io.StringIO(text), index=0))


def _parse_xyz_file(path: str, source: str, sid: str, names: tuple[str, ...]) -> list[Record]:
    from ase.io import read

    frames = read(path, index=":", format="extxyz")
    ids = _ids(sid, len(frames))
    return [_from_ase(a, source, i, names) for a, i in zip(frames, ids, strict=True)]


def _run_frames(task: FramesTask, names: tuple[str, ...]) -> Outcome:
    """Parse a FramesTask; a bad frame fails alone (frames were split by their atom counts)."""
    out = Outcome()
    ids = _ids(task.id, len(task.texts), single=task.single, first=task.first)
    for j, (text, sid) in enumerate(zip(task.texts, ids, strict=True)):
        source = f"{task.path}:frame {task.first + j}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                atoms = _parse_xyz_text(text)
            out.records.append(_from_ase(atoms, source, sid, names))
        except _TaskError as e:
            out.failures.append(Failure(source, e.category, _one_line(e.detail)))
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as e:
            out.failures.append(Failure(source, "unreadable", _one_line(e)))
    return out
