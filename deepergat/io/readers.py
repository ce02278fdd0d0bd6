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
- Archives (``*.zip``, ``*.tar``, ``*.tar.gz``, ``*.tgz``) of CIF, POSCAR and extxyz files,
  read in memory member by member (`archive_tasks`); ids from the member paths.
- Generative models' sample files (``*.pt``: CDVAE / DiffCSP ``eval_gen.pt`` …), unpickled by
  a restricted unpickler that runs nothing (`deepergat.generators`); ids
  ``<stem>-<pass>-<index>``.

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

from deepergat.errors import DeepergatError

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

Format = Literal["cif", "poscar", "extxyz", "ase-db", "json", "csv", "archive", "generator"]

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


@dataclass(frozen=True, slots=True)
class TextTask:
    """Parse one structure file given as text (an archive member): CIF (every block) or
    POSCAR; ``source`` names the archive and the member."""

    source: str
    fmt: str
    id: str
    text: str


Task = FileTask | CifTextTask | FramesTask | DbRowsTask | FailTask | TextTask


# --------------------------------------------------------------------------------------------
# Format recognition
# --------------------------------------------------------------------------------------------


def structure_format(path: str | Path) -> Format | None:
    """The format a file name implies, or None when deepergat does not read such files.

    Args:
        path: a file path (only its name is looked at; `.json` content is told apart later).

    Returns:
        ``"cif"``, ``"poscar"``, ``"extxyz"``, ``"ase-db"``, ``"json"``, ``"csv"``,
        ``"archive"`` (``.zip``, ``.tar``, ``.tar.gz``, ``.tgz``), ``"generator"`` (a
        CDVAE/DiffCSP ``.pt`` sample file) or None.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    name = p.name.lower()
    if name.endswith((".zip", ".tar", ".tar.gz", ".tgz")):
        return "archive"
    if suffix == ".pt":
        return "generator"
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


def _xyz_count(line: str) -> int | None:
    """The atom count of an XYZ header line (one non-negative integer), else None."""
    parts = line.split()
    if len(parts) != 1:
        return None
    try:
        n = int(parts[0])
    except ValueError:
        return None
    return n if n >= 0 else None


def _xyz_atom_line(line: str) -> bool:
    """Whether a line looks like an XYZ atom line: a species or number, then 3 coordinates
    (or coordinates first, as some ``Properties`` orders write them)."""
    parts = line.split()
    if len(parts) < 4:
        return False

    def numbers(items: list[str]) -> bool:
        try:
            [float(x) for x in items]
        except ValueError:
            return False
        return True

    return numbers(parts[1:4]) or numbers(parts[0:3])


def extxyz_tasks(path: str | Path, *, id_prefix: str, text: str | None = None,
                 label: str | None = None) -> Iterator[Task]:
    """Split an (extended) XYZ file into frames and batch them into `FramesTask` s, streamed.

    A frame is a line with the atom count, a comment line, one line per atom, and any ``VEC``
    lines (as ASE reads them). Blank lines between frames are skipped. Every frame is either
    passed on or reported as a failure, and the split resumes at the next header, so one bad
    frame never hides the frames after it: a frame whose atom lines end early (the next frame's
    count line met where an atom was due) or run on past its count fails alone; lines that are
    no frame at all are reported by their line numbers. Frames keep their position in the file
    (frame k is id ``<id>_<k>`` whatever failed before it).

    Args:
        path: the file. id_prefix: the file's id.
        text: the file's content when it is not on disk (an archive member; then ``label``
            names it in messages).
    """
    p = Path(label) if label is not None else Path(path)

    def frames() -> Iterator[tuple[int, str | Failure]]:
        if text is not None:
            yield from split(io.StringIO(text))
            return
        try:
            fh = open(p, encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as e:
            yield -1, Failure(str(p), "unreadable", f"cannot open: {e.strerror or e}")
            return
        with fh:
            try:
                yield from split(fh)
            except UnicodeDecodeError as e:
                yield -1, Failure(str(p), "unreadable", f"not a UTF-8 text file: {e}")

    def split(fh: io.TextIOBase) -> Iterator[tuple[int, str | Failure]]:
        k = 0
        line_no = 0
        back: list[str] = []  # lines read ahead and pushed back

        def read() -> str:
            nonlocal line_no
            line_no += 1
            return back.pop() if back else fh.readline()

        def unread(line: str) -> None:
            nonlocal line_no
            line_no -= 1
            back.append(line)

        while True:
            line = read()
            if not line:
                return
            if not line.strip():
                continue
            natoms = _xyz_count(line)
            if natoms is None:  # not a header: skip to the next one, reporting the lines
                first = line_no
                while True:
                    nxt = read()
                    if not nxt or _xyz_count(nxt) is not None:
                        last = line_no - 1
                        if nxt:
                            unread(nxt)
                        break
                where = f"line {first}" if last == first else f"lines {first}-{last}"
                yield -1, Failure(f"{p}:{where}", "unreadable",
                                  f"not an XYZ frame (line {first} should hold an atom count, "
                                  f"got {line.strip()[:40]!r})")
                if not nxt:
                    return
                continue
            src = f"{p}:frame {k}"
            lines = [line]
            comment = read()
            if not comment:
                yield k, Failure(src, "unreadable", "file ends inside the frame")
                return
            lines.append(comment)
            problem = ""
            for i in range(natoms):
                nxt = read()
                if not nxt:
                    problem = f"the file ends after {i} of its {natoms} atoms"
                    break
                if _xyz_count(nxt) is not None or not nxt.strip():
                    unread(nxt)
                    problem = f"claims {natoms} atoms but has {i} (line {line_no + 1} ends it)"
                    break
                lines.append(nxt)
            while not problem:
                nxt = read()
                if nxt.lstrip().startswith("VEC"):
                    lines.append(nxt)
                    continue
                if nxt and _xyz_atom_line(nxt):
                    extra = 0
                    while nxt and _xyz_atom_line(nxt):
                        extra += 1
                        nxt = read()
                    problem = (f"claims {natoms} atoms but {extra} more atom "
                               f"line{'s follow' if extra > 1 else ' follows'}")
                if nxt:
                    unread(nxt)
                break
            yield k, (Failure(src, "unreadable", problem) if problem else "".join(lines))
            k += 1

    items = frames()
    first_item = next(items, None)
    if first_item is None:
        yield FailTask(Failure(str(p), "unreadable", "no frames in the file"))
        return
    second_item = next(items, None)
    single = (second_item is None and first_item[0] == 0
              and not isinstance(first_item[1], Failure))
    batch: list[str] = []
    start = 0
    for k, item in _chain_first(first_item, second_item, items):
        if isinstance(item, Failure):
            if batch:
                yield FramesTask(str(p), start, tuple(batch), id_prefix, single)
                batch = []
            yield FailTask(item)
            continue
        if not batch:
            start = k
        batch.append(item)
        if len(batch) >= FRAMES_PER_TASK:
            yield FramesTask(str(p), start, tuple(batch), id_prefix, single)
            batch = []
    if batch:
        yield FramesTask(str(p), start, tuple(batch), id_prefix, single)


#: Formats read from inside archives.
ARCHIVE_MEMBER_FORMATS = ("cif", "poscar", "extxyz")


def _safe_member(name: str) -> bool:
    """A member path that stays inside the archive: relative, no ``..`` part."""
    parts = name.replace("\\", "/").split("/")
    return not (name.startswith(("/", "\\")) or ":" in parts[0] or ".." in parts)


def _archive_members(path: Path) -> Iterator[tuple[str, bytes | None, str]]:
    """(member name, its bytes or None, why it is skipped) of an archive, streamed in order:
    regular files only; a member is read only when its name is safe and a structure format."""
    import tarfile
    import zipfile

    def wanted(name: str) -> str:
        if not _safe_member(name):
            return "unsafe path (absolute or with ..): refused"
        if structure_format(name) not in ARCHIVE_MEMBER_FORMATS:
            return ""
        return "ok"

    if path.name.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.is_dir():
                    continue
                why = wanted(info.filename)
                if why == "ok":
                    yield info.filename, z.read(info), ""
                elif why:
                    yield info.filename, None, why
        return
    with tarfile.open(path, mode="r|*") as t:  # streamed: one pass, nothing unpacked to disk
        for member in t:
            if not member.isfile():
                if member.issym() or member.islnk():
                    yield member.name, None, "a link: refused"
                continue
            why = wanted(member.name)
            if why == "ok":
                fh = t.extractfile(member)
                yield member.name, fh.read() if fh is not None else b"", ""
            elif why:
                yield member.name, None, why


def archive_tasks(path: str | Path, *, path_ids: bool) -> Iterator[Task]:
    """Tasks for the structure files inside a ``.zip`` or ``.tar(.gz)`` archive, read in
    memory (never unpacked to disk), in member order.

    Members that are CIF, POSCAR/CONTCAR or extxyz files (by name) are read; ids are member
    stems (with ``path_ids``: ``<archive>/<member path>``), as for a folder. A member with an
    absolute or ``..`` path, or a link, is refused (a failure naming it); other members are
    ignored.
    """
    p = Path(path)
    found = 0
    try:
        for name, data, why in _archive_members(p):
            source = f"{p}:{name}"
            if data is None:
                yield FailTask(Failure(source, "unsafe member", why))
                continue
            found += 1
            member = Path(name)
            sid = f"{p.as_posix()}/{name}" if path_ids else member.stem
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                yield FailTask(Failure(source, "unreadable", "not a UTF-8 text file"))
                continue
            fmt = structure_format(name)
            if fmt == "extxyz":
                yield from extxyz_tasks(p, id_prefix=sid, text=text, label=source)
            else:
                yield TextTask(source=source, fmt=str(fmt), id=sid, text=text)
    except Exception as e:  # zipfile.BadZipFile, tarfile.ReadError, EOFError, zlib errors, ...
        yield FailTask(Failure(str(p), "unreadable", f"damaged archive: {_one_line(e)}"))
        return
    if not found:
        yield FailTask(Failure(str(p), "unreadable", "no CIF, POSCAR or extxyz files inside"))


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
    failures: list[Failure] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if isinstance(task, CifTextTask):
                records = _parse_cif_text(task.text, source, task.id, expect_one=True)
                _apply_raw_targets(records, task.raw_targets)
            elif isinstance(task, TextTask):
                if task.fmt == "cif":
                    records = _parse_cif_text(task.text, source, task.id, expect_one=False,
                                              failures=failures)
                else:
                    records = [_poscar_record(task.text, source, task.id)]
            elif isinstance(task, DbRowsTask):
                records = _parse_db_rows(task, names)
            else:
                records = _parse_file(task, names, failures)
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
    return Outcome(records=records, failures=failures, warnings=warned,
                   notes=[n for n in notes if n not in warned])


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


def _parse_file(task: FileTask, names: tuple[str, ...],
                failures: list[Failure] | None = None) -> list[Record]:
    source = task.source or task.path
    if task.fmt == "cif":
        records = _parse_cif_text(_read_text(task.path), source, task.id, expect_one=False,
                                  failures=failures)
    elif task.fmt == "poscar":
        records = [_poscar_record(_read_text(task.path), source, task.id)]
    elif task.fmt == "json":
        records = _parse_json_file(task.path, source, task.id, names)
    elif task.fmt == "extxyz":
        records = _parse_xyz_file(task.path, source, task.id, names)
    elif task.fmt == "ase-db":
        records = _parse_ase_db(task.path, "db", source, task.id, names)
    elif task.fmt == "generator":
        from .generators import sample_structures

        try:
            structures = list(sample_structures(task.path))
        except DeepergatError as e:
            detail = str(e).removeprefix(f"{task.path}: ")
            refused = detail.startswith("refused: ")
            raise _TaskError("refused" if refused else "unreadable",
                             detail.removeprefix("refused: ")) from None
        records = [Record(id=d["id"], source=f"{source}:{d['id']}",
                          lattice=np.asarray(d["lattice"], np.float64),
                          pbc=np.ones(3, bool),
                          atomic_numbers=np.asarray(d["atomic_numbers"], np.int64),
                          positions=np.asarray(d["positions"], np.float64))
                   for d in structures]
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


_CIF_BLOCK = re.compile(r"^data_", re.IGNORECASE | re.MULTILINE)


def _cif_blocks(text: str) -> list[str]:
    """The data blocks of a CIF text, each with its ``data_`` line (text before the first is
    dropped: CIF allows only comments there)."""
    starts = [m.start() for m in _CIF_BLOCK.finditer(text)]
    return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]


def _parse_cif_text(text: str, source: str, sid: str, *, expect_one: bool,
                    failures: list[Failure] | None = None) -> list[Record]:
    """Every data block of a CIF, parsed as ``Structure.from_str(text, fmt="cif")`` parses.

    ``Structure.from_str`` uses ``CifParser`` with its defaults (occupancy tolerance 1.0: no
    rescaling of occupancies; site tolerance 1e-4 Å for merging symmetry copies),
    ``parse_structures(primitive=False)`` (the cell as written, no reduction) and ``merge_tol=0``
    (no further merging), and rebuilds the first structure with ``Structure.from_sites``, which
    keeps lattice and coordinates. The same calls here give the same structure for the first
    block and also return the others.

    A file of several blocks is parsed block by block. Blocks without atom sites (publication
    details) are no structures; every block with atom sites is either a record or, when it
    cannot be read (a zero-volume cell, a broken loop), a failure appended to ``failures``
    (``<source>:block k (data_<name>)``) — its ids stay positional: block k is ``<id>_<k>``.
    Without ``failures`` such a block fails the whole file.
    """
    if not text or not text.strip():
        raise _TaskError("unreadable", "empty CIF")
    blocks = _cif_blocks(text)
    if len(blocks) <= 1:
        structures = _cif_structures(text)
        if len(structures) > 1 and expect_one:
            raise _TaskError("several structures",
                             f"the CIF holds {len(structures)} structures; one is expected")
        ids = _ids(sid, len(structures))
        return [_from_pymatgen(s, source, i) for s, i in zip(structures, ids, strict=True)]
    sites = [b for b in blocks if re.search(r"^\s*_atom_site_", b, re.MULTILINE)]
    for b in blocks:
        if b not in sites:
            warnings.warn(f"CIF block {b.splitlines()[0].strip()} holds no atom sites (no "
                          "structure); the other blocks were read", _PackWarning, stacklevel=1)
    if expect_one and len(sites) > 1:
        raise _TaskError("several structures",
                         f"the CIF holds {len(sites)} structure blocks; one is expected")
    records = []
    ids = _ids(sid, len(sites))
    for k, (block, bid) in enumerate(zip(sites, ids, strict=True)):
        where = f"{source}:block {k} ({block.splitlines()[0].strip()[:40]})"
        try:
            [structure] = _cif_structures(block)
        except (_TaskError, ValueError) as e:
            detail = e.detail if isinstance(e, _TaskError) else _one_line(e)
            if failures is None:
                raise _TaskError("unreadable", f"block {k}: {detail}") from None
            failures.append(Failure(where, "unreadable", _one_line(detail)))
            continue
        records.append(_from_pymatgen(structure, source, bid))
    return records


def _cif_structures(text: str) -> list[Any]:
    """The structures of a CIF text (``Structure.from_str``'s calls, see `_parse_cif_text`)."""
    from pymatgen.core import Structure
    from pymatgen.io.cif import CifParser

    parser = CifParser.from_str(text)
    try:
        structures = parser.parse_structures(primitive=False, on_error="ignore")
    except ValueError as e:
        reasons = "; ".join(_one_line(w) for w in parser.warnings) or _one_line(e)
        raise _TaskError("unreadable", f"no structure in the CIF: {reasons}") from None
    dropped = [w for w in parser.warnings if w.startswith("No structure parsed for section")]
    for w in dropped:  # e.g. a data_global block of publication details, or a broken block
        warnings.warn(f"CIF {_one_line(w)}; the other blocks were read", _PackWarning, stacklevel=1)
    return [Structure.from_sites(s, properties=s.properties) for s in structures]


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
