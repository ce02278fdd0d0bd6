"""What the readers make and what they are asked to do: records, failures and tasks.

A task is a small picklable piece of work (a file, the CIF text of a CSV row, a run of extxyz
frames, a range of database rows, an archive member) that the main process plans and a worker
parses (`deepergat.io.readers.dispatch.run_chunk`); an `Outcome` is what one task gave. The
helpers every parser shares live here too: format recognition by file name, the conversion of
pymatgen and ASE objects into records, positional ids, and the task-failing exception.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "STRUCTURE_FORMATS",
    "CifTextTask",
    "DbRowsTask",
    "FailTask",
    "Failure",
    "FileTask",
    "Format",
    "FramesTask",
    "Outcome",
    "PackWarning",
    "Record",
    "Task",
    "TaskError",
    "TextTask",
    "json_objects",
    "numbered_ids",
    "one_line",
    "read_text",
    "record_from_ase",
    "record_from_pymatgen",
    "structure_format",
]

Format = Literal["cif", "poscar", "extxyz", "ase-db", "json", "csv", "archive", "generator"]

#: Formats that one file holds structures in (CSV tables are not "structure files").
STRUCTURE_FORMATS: tuple[str, ...] = ("cif", "poscar", "extxyz", "ase-db", "json")

#: Longest failure detail kept, characters.
_MAX_DETAIL = 400


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
        fmt: one of `STRUCTURE_FORMATS`, or ``"generator"``.
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


class PackWarning(UserWarning):
    """A parser-side message that `Outcome.warnings` carries to the main process."""


class TaskError(Exception):
    """Raised inside a parser to fail the current task with a category and detail."""

    def __init__(self, category: str, detail: str) -> None:
        super().__init__(detail)
        self.category = category
        self.detail = detail


def one_line(e: BaseException | str) -> str:
    """An exception's message (else its type's name) or a text as one line of at most
    `_MAX_DETAIL` characters."""
    text = str(e) if not isinstance(e, str) else e
    if isinstance(e, BaseException) and not text:
        text = type(e).__name__
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


def json_objects(doc: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every JSON object (dict) of a parsed document, with where it is (``sites[3].species[0]``,
    ``""`` for the document itself), depth first; iterative, so any nesting json can parse is
    walked."""
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:
        where, x = stack.pop()
        if isinstance(x, dict):
            yield where, x
            items = list(x.items())
            stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in reversed(items)
                         if isinstance(v, (dict, list)))
        elif isinstance(x, list):  # only containers are pushed: a long list of numbers is quick
            stack.extend((f"{where}[{k}]", v) for k, v in reversed(list(enumerate(x)))
                         if isinstance(v, (dict, list)))


def numbered_ids(prefix: str, n: int, *, single: bool | None = None, first: int = 0) -> list[str]:
    """Ids of n structures of one file: the file's id when it holds one (``single``, by
    default ``n == 1``), else ``<prefix>_<k>`` with k counting from ``first``."""
    if single if single is not None else n == 1:
        return [prefix] * n
    return [f"{prefix}_{first + k}" for k in range(n)]


def read_text(path: str) -> str:
    """A file's UTF-8 text; an unreadable file fails the task."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except UnicodeDecodeError:
        raise TaskError("unreadable", "not a text file (UTF-8)") from None
    except OSError as e:
        raise TaskError("unreadable", f"cannot open: {e.strerror or e}") from None


def record_from_pymatgen(struct: Any, source: str, sid: str) -> Record:
    """A pymatgen Structure or Molecule as a record; refuses disordered ones."""
    if not struct.is_ordered:
        bad = [i for i, site in enumerate(struct) if not site.is_ordered]
        site = struct[bad[0]]
        occ = ", ".join(f"{sp}:{x:g}" for sp, x in site.species.items())
        raise TaskError(
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


def record_from_ase(
    atoms: Any, source: str, sid: str, names: tuple[str, ...], kvp: Mapping[str, Any] | None = None
) -> Record:
    """ASE atoms as a record, with the targets ``names`` looked up in the database row's
    key-value pairs ``kvp``, then ``atoms.info``, then the calculator's results."""
    targets: dict[str, float] = {}
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    for name in names:
        for where in (kvp or {}, atoms.info, results):
            if name in where:
                try:
                    targets[name] = float(where[name])
                except (TypeError, ValueError):
                    raise TaskError(
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
