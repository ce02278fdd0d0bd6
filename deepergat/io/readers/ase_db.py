"""ASE databases: ``*.db`` (SQLite), cut into row ranges that workers read in parallel, and
``*.json`` in ASE's JSON database form, read whole (`deepergat.io.readers.pymatgen_json` tells
the two JSON kinds apart). Both through ``ase.db.connect``, rows ordered by row id.

Targets are looked up in each row's key-value pairs, then ``atoms.info``, then the calculator's
results (`record_from_ase`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .records import (
    DbRowsTask,
    FailTask,
    Failure,
    Record,
    Task,
    TaskError,
    numbered_ids,
    one_line,
    record_from_ase,
)

__all__ = ["DB_ROWS_PER_TASK", "db_row_tasks", "parse_ase_db", "parse_db_rows"]

#: ASE database rows per task.
DB_ROWS_PER_TASK = 256

_SQLITE_MAGIC = b"SQLite format 3\x00"


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


def parse_ase_db(
    path: str, kind: str, source: str, sid: str, names: tuple[str, ...]
) -> list[Record]:
    """Every row of an ASE database; ``kind`` is ASE's type, ``"db"`` or ``"json"``."""
    import ase.db

    db = ase.db.connect(path, type=kind, create_indices=False, use_lock_file=False)
    rows = list(db.select(sort="id"))
    if not rows:
        raise TaskError("unreadable", "the database has no rows")
    ids = numbered_ids(sid, len(rows))
    return [
        record_from_ase(row.toatoms(), f"{source}:row id {row.id}", i, names, row.key_value_pairs)
        for row, i in zip(rows, ids, strict=True)
    ]


def parse_db_rows(task: DbRowsTask, names: tuple[str, ...]) -> list[Record]:
    """The rows of one `DbRowsTask`; ids count rows from the start of the database."""
    import ase.db

    db = ase.db.connect(task.path, type="db", create_indices=False, use_lock_file=False)
    rows = list(db.select(sort="id", offset=task.offset, limit=task.limit))
    if len(rows) != task.limit:
        raise TaskError(
            "unreadable", f"expected {task.limit} rows from {task.offset}, read {len(rows)}"
        )
    ids = numbered_ids(task.id, len(rows), single=task.single, first=task.offset)
    return [
        record_from_ase(row.toatoms(), f"{task.path}:row id {row.id}", i, names,
                        row.key_value_pairs)
        for row, i in zip(rows, ids, strict=True)
    ]
