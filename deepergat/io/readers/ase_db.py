"""ASE databases: ``*.db`` (SQLite), cut into row ranges that workers read in parallel, and
``*.json`` in ASE's JSON database form, read whole (`deepergat.io.readers.pymatgen_json` tells
the two JSON kinds apart). Both through ``ase.db.connect``, rows ordered by row id.

ASE's JSON decoder builds objects the file names (``__ase_objtype__``: cells, band paths and
structures, whole ``Atoms`` with their constraints) and arrays of the shape the file declares
(``__ndarray__``: a declared shape with one number to fill it is a memory bomb). Every JSON text
ASE would decode — the JSON database, and a SQLite row's key-value pairs and calculator
parameters — is therefore checked first (`check_ase_json`), and rows become structures without
their constraints (never decoded or built).

Targets are looked up in each row's key-value pairs, then ``atoms.info``, then the calculator's
results (`record_from_ase`).
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .records import (
    DbRowsTask,
    FailTask,
    Failure,
    Record,
    Task,
    TaskError,
    json_objects,
    numbered_ids,
    one_line,
    record_from_ase,
)

__all__ = ["ASE_OBJECT_TYPES", "DB_ROWS_PER_TASK", "check_ase_json", "db_row_tasks",
           "parse_ase_db", "parse_db_rows"]

#: ASE database rows per task.
DB_ROWS_PER_TASK = 256
#: The ``__ase_objtype__`` values a structure database may hold: a cell. ASE would build any
#: other (band structures and paths, vibrations, whole ``Atoms`` with constraints) from the
#: file's arguments; a file that asks for one is refused.
ASE_OBJECT_TYPES = frozenset({"cell"})
#: Times a calculator-parameters text may hold JSON text again (old ASE wrote it so).
_MAX_REENCODED = 8

_SQLITE_MAGIC = b"SQLite format 3\x00"


def check_ase_json(doc: Any) -> None:
    """Refuse a parsed JSON document that ASE's decoder would turn into objects other than
    arrays and cells, or into arrays larger than their data.

    Every ``__ndarray__`` must be ``[shape, dtype, data]`` with a numeric or boolean dtype and as
    many values in ``data`` as its shape holds (so no array outgrows the file);
    ``__ase_objtype__`` must be one of `ASE_OBJECT_TYPES`. Calculator parameters stored as JSON
    text are checked as the JSON they hold.

    Raises:
        TaskError: ``refused``, naming the first offending object and where it is.
    """
    todo: list[tuple[str, Any, int]] = [("", doc, 0)]
    while todo:
        prefix, part, depth = todo.pop()
        for where, d in json_objects(part):
            at = f"{prefix}{where}" or "the top"
            kind = d.get("__ase_objtype__")
            if kind is not None and kind not in ASE_OBJECT_TYPES:
                raise TaskError("refused", f"asks ASE to build a {str(kind)[:40]!r} object at "
                                           f"{at}; an ASE structure file holds only arrays "
                                           "and cells")
            if "__ndarray__" in d:
                _check_ndarray(d["__ndarray__"], at)
            params, level = d.get("calculator_parameters"), depth
            if isinstance(params, str):  # ASE decodes it until it is no longer text
                while isinstance(params, str):
                    if level >= _MAX_REENCODED:
                        raise TaskError("refused", f"calculator parameters at {at} are JSON "
                                                   f"text nested more than {_MAX_REENCODED} times")
                    params, level = _loads(params, at), level + 1
                todo.append((f"{at}.calculator_parameters:", params, level))


def _loads(text: str | bytes, at: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise TaskError("unreadable", f"{at}: not valid JSON ({one_line(e)[:80]})") from None


def _check_ndarray(spec: Any, at: str) -> None:
    """An ``__ndarray__`` value: ``[shape, dtype name, flat data]`` whose data fills its
    shape (``np.empty(shape)`` is what ASE allocates before filling it)."""
    ok = isinstance(spec, list) and len(spec) == 3
    shape, dtype, data = spec if ok else (None, None, None)
    ok = ok and isinstance(shape, list) and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    try:
        dt = np.dtype(dtype) if ok and isinstance(dtype, str) else None
    except (TypeError, ValueError):
        dt = None
    if dt is None or dt.kind not in "biufc" or not isinstance(data, list):
        raise TaskError("refused", f"the array at {at} is not [shape, numeric dtype, values]")
    size = math.prod(shape) * (2 if dt.kind == "c" else 1)
    if size != len(data):
        raise TaskError("refused", f"the array at {at} declares shape {shape[:8]} "
                                   f"({size} values) but holds {len(data)}")


def db_row_tasks(path: str | Path, *, id_prefix: str) -> Iterator[Task]:
    """Cut an ASE SQLite database into `DbRowsTask` s of `DB_ROWS_PER_TASK` rows."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            magic = fh.read(16)
    except OSError as e:
        yield FailTask(Failure(str(p), "unreadable", f"cannot open: {e.strerror or e}"))
        return
    if magic != _SQLITE_MAGIC:
        yield FailTask(Failure(str(p), "unreadable", "not an SQLite (ASE .db) database"))
        return
    try:
        import ase.db

        n = ase.db.connect(str(p), type="db", create_indices=False).count()
    except Exception as e:  # sqlite and ASE raise many kinds
        yield FailTask(Failure(str(p), "unreadable", one_line(e)))
        return
    if n == 0:
        yield FailTask(Failure(str(p), "unreadable", "the database has no rows"))
        return
    for offset in range(0, n, DB_ROWS_PER_TASK):
        yield DbRowsTask(str(p), offset, min(DB_ROWS_PER_TASK, n - offset), id_prefix, n == 1)


def _check_sqlite_rows(path: str, offset: int, limit: int) -> None:
    """Check the JSON texts ASE decodes when it reads rows [offset, offset + limit) of a SQLite
    database (key-value pairs, calculator parameters) before ASE reads them."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise TaskError("unreadable", one_line(e)) from None
    try:
        rows = con.execute("SELECT id, key_value_pairs, calculator_parameters FROM systems "
                           "ORDER BY id LIMIT ? OFFSET ?", (limit, offset)).fetchall()
    except sqlite3.Error as e:
        raise TaskError("unreadable", f"not an ASE database: {one_line(e)}") from None
    finally:
        con.close()
    for row_id, *texts in rows:
        for name, text in zip(("key_value_pairs", "calculator_parameters"), texts, strict=True):
            if text is None:
                continue
            at = f"row id {row_id} {name}"
            if isinstance(text, bytes):  # ASE's binary form: its JSON part after an offset
                head = np.frombuffer(text[:8], "<i8")
                start = int(head[0]) if len(head) else len(text) + 1
                if not 0 <= start <= len(text):
                    raise TaskError("unreadable", f"{at}: damaged binary value")
                doc = _loads(text[start:], at)
                _check_binary_objects(doc, at)
            else:
                check_ase_json({name: _loads(text, at)} if name == "calculator_parameters"
                               else _loads(text, at))


def _check_binary_objects(doc: Any, at: str) -> None:
    """ASE's binary values hold arrays as ``[shape, dtype, offset]`` into the value's bytes
    (bounded by them); only the objects they would build are checked."""
    for where, d in json_objects(doc):
        kind = d.get("__ase_objtype__")
        if kind is not None and kind not in ASE_OBJECT_TYPES:
            raise TaskError("refused", f"asks ASE to build a {str(kind)[:40]!r} object at "
                                       f"{at}{where}; an ASE structure file holds only arrays "
                                       "and cells")


def _atoms(row: Any) -> Any:
    """A database row as ASE ``Atoms`` with its calculator results, as ``row.toatoms()``
    makes it but without its constraints (never decoded or built: a record keeps none)."""
    from ase import Atoms
    from ase.calculators.calculator import all_properties
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = Atoms(row.numbers, row.positions, cell=row.cell, pbc=row.pbc)
    results = {prop: row[prop] for prop in all_properties if prop in row}
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def parse_ase_db(
    path: str, kind: str, source: str, sid: str, names: tuple[str, ...]
) -> list[Record]:
    """Every row of an ASE database; ``kind`` is ASE's type, ``"db"`` or ``"json"`` (a JSON
    database must have passed `check_ase_json`)."""
    import ase.db

    if kind == "db":
        _check_sqlite_rows(path, 0, -1)
    db = ase.db.connect(path, type=kind, create_indices=False, use_lock_file=False)
    rows = list(db.select(sort="id"))
    if not rows:
        raise TaskError("unreadable", "the database has no rows")
    ids = numbered_ids(sid, len(rows))
    return [
        record_from_ase(_atoms(row), f"{source}:row id {row.id}", i, names, row.key_value_pairs)
        for row, i in zip(rows, ids, strict=True)
    ]


def parse_db_rows(task: DbRowsTask, names: tuple[str, ...]) -> list[Record]:
    """The rows of one `DbRowsTask`; ids count rows from the start of the database."""
    import ase.db

    _check_sqlite_rows(task.path, task.offset, task.limit)
    db = ase.db.connect(task.path, type="db", create_indices=False, use_lock_file=False)
    rows = list(db.select(sort="id", offset=task.offset, limit=task.limit))
    if len(rows) != task.limit:
        raise TaskError(
            "unreadable", f"expected {task.limit} rows from {task.offset}, read {len(rows)}"
        )
    ids = numbered_ids(task.id, len(rows), single=task.single, first=task.offset)
    return [
        record_from_ase(_atoms(row), f"{task.path}:row id {row.id}", i, names,
                        row.key_value_pairs)
        for row, i in zip(rows, ids, strict=True)
    ]
