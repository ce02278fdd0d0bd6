"""MatDeepLearn folders: a ``targets.csv`` of rows ``id,value[,value...]`` (no header) beside one
structure file ``<id>.<ext>`` per row, in any structure format deepergat reads."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

from deepergat.errors import DeepergatError, SettingError, literal

from .records import STRUCTURE_FORMATS, FailTask, Failure, FileTask, Task, structure_format
from .table import open_csv

__all__ = ["matdeeplearn_tasks", "read_matdeeplearn_targets"]


def read_matdeeplearn_targets(path: str | Path) -> Iterator[tuple[int, list[str]]]:
    """Rows of a MatDeepLearn ``targets.csv`` (``id,value[,value...]``, no header).

    Yields:
        (1-based row number, fields) for every non-empty row.

    Raises:
        DeepergatError: the file cannot be opened or is not CSV.
    """
    p = Path(path)
    with open_csv(p) as fh:
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
    the row's id (the file's path with ``path_ids``). A row without its file, or with several,
    is a failure.

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
            raise SettingError(
                f"{literal(source)}: {len(values)} value column(s) but {len(target_names)} "
                f"target name(s) {literal(list(target_names))}; give one {{target_names}} per "
                "value column"
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
