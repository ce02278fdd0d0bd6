"""A funnel: screen only the rows an earlier screen of the same store chose.

A fast model screens everything; its best rows (``from_top``) or the rows a ``where`` allows
(``from_where``) go to a slower, better model — an ensemble with its spread — in a screen of
their own: the rows keep their index in the store, and the run has every guarantee of a full
screen (parts, resume, locks, status rows). The earlier file must have screened this very store
(its ``input_digest``). The chosen rows are written once to the parts directory
(`SUBSET_ROWS`) with their sha256 in the run manifest, so the tasks of a sharded run and a later
merge plan the same chunks.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from deepergat.contract import RankOrder
from deepergat.errors import DeepergatError, SettingError
from deepergat.io.store import format_attribute
from deepergat.system.files import atomic_path

from .failures import literal
from .options import Files
from .parts import PartsDir
from .predictions import PREDICTIONS_FORMAT
from .shortlist import ListSettings, short_list

__all__ = ["SUBSET_ROWS", "choose_rows", "describe_subset", "load_rows", "save_rows"]

#: The chosen store rows (int64, ascending), in the parts directory.
SUBSET_ROWS = "subset-rows.npy"


def choose_rows(files: Files, store_digest: str, *, order: RankOrder) -> np.ndarray:
    """The store rows ``files`` chooses from its earlier predictions file, ascending.

    Raises:
        SettingError: the file is not a predictions file of this store, or chooses no row.
    """
    path = Path(files.from_predictions or "")
    try:
        with h5py.File(path, "r") as f:
            fmt = format_attribute(f, path)
            digest = f.attrs.get("input_digest", "")
            digest = digest.decode() if isinstance(digest, bytes) else str(digest)
            index = f["index"][:] if fmt == PREDICTIONS_FORMAT else None
    except (OSError, KeyError, DeepergatError) as e:
        raise SettingError(f"{{from_predictions}} {literal(path)}: not a readable predictions "
                           f"file ({literal(' '.join(str(e).split())[:160])})") from None
    if index is None:
        raise SettingError(f"{{from_predictions}} {literal(path)}: not a deepergat predictions "
                           "file")
    if digest != store_digest:
        raise SettingError(
            f"{{from_predictions}} {literal(path)}: it screened another store (content digest "
            f"{digest[:12]}, the input's is {store_digest[:12]}); give the predictions of this "
            "input")
    listed = short_list(path, ListSettings(top=files.from_top, where=files.from_where,
                                           order=order, group=False, seconds=None))
    rows = np.unique(index[listed.rows]).astype(np.int64) if len(listed.rows) else \
        np.zeros(0, np.int64)
    if not len(rows):
        raise SettingError(f"{{from_predictions}} {literal(path)}: {{from_top}} and "
                           "{from_where} choose no row")
    return rows


def describe_subset(files: Files, rows: np.ndarray) -> dict[str, Any]:
    """What the run manifest records of the subset (its rows by sha256)."""
    return {"from": str(Path(files.from_predictions or "").resolve()), "from_top": files.from_top,
            "from_where": files.from_where, "n": len(rows), "rows_sha256": _digest(rows)}


def save_rows(parts: PartsDir, rows: np.ndarray) -> None:
    """Write the chosen rows into the parts directory (rank 0, before any work)."""
    parts.path.mkdir(parents=True, exist_ok=True)
    target = parts.path / SUBSET_ROWS
    with atomic_path(target, tmp=parts.path / f".{SUBSET_ROWS}.tmp-{os.getpid()}") as tmp, \
            open(tmp, "wb") as fh:
        np.save(fh, np.asarray(rows, dtype=np.int64), allow_pickle=False)


def load_rows(parts: PartsDir, manifest: dict[str, Any]) -> np.ndarray | None:
    """The chosen rows of a subset run (None for a full screen), checked against the manifest.

    Raises:
        DeepergatError: the rows file is gone or is not the one the manifest names.
    """
    subset = manifest.get("subset")
    if not subset:
        return None
    path = parts.path / SUBSET_ROWS
    try:
        rows = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SettingError(f"{literal(path)}: the rows this screen chose are unreadable "
                           f"({literal(' '.join(str(e).split()))}); pass {{resume}} to start "
                           "again") from None
    if rows.dtype != np.int64 or rows.ndim != 1 or _digest(rows) != subset.get("rows_sha256"):
        raise SettingError(f"{literal(path)}: not the rows this screen chose; pass {{resume}} "
                           "to start again")
    return rows


def _digest(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()
