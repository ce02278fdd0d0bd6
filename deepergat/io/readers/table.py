"""CSV tables (``*.csv``) with a column of CIF texts: one structure per row, parsed as CIF in the
workers (`deepergat.io.readers.cif`).

Ids come from the id column (``<csv path>:<id>`` with path ids), or are ``<csv id>_<k>`` with k
the 0-based data row when the table has no id column; target columns become targets.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from pathlib import Path

from deepergat.errors import DeepergatError, SettingError, literal

from .records import CifTextTask, FailTask, Failure, Task

__all__ = ["check_csv_columns", "csv_tasks", "open_csv", "read_csv_header", "resolve_id_column"]


def open_csv(path: Path) -> io.TextIOWrapper:
    """A CSV file opened for `csv.reader` (a leading byte-order mark dropped).

    Raises:
        DeepergatError: the file cannot be opened.
    """
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
    with open_csv(p) as fh:
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
            raise SettingError(
                f"{literal(path)}: no id column {literal(repr(id_column))}; columns are "
                f"{literal(_columns(header))}; name one with {{id_column}}"
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
    for column, what, setting in [(cif_column, "CIF column", "cif_column")] + [
        (c, "target column", "targets") for c in target_columns
    ]:
        if column not in header:
            raise SettingError(
                f"{literal(path)}: no {what} {literal(repr(column))}; columns are "
                f"{literal(_columns(header))}; name the right one with {{{setting}}}"
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
    with open_csv(p) as fh:
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
