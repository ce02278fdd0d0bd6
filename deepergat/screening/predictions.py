"""The predictions file (docs/design.md §9): its rows, writer, identity, description, top-K.

HDF5, root attributes ``format = "deepergat-predictions"``, ``version = 2``, ``model``,
``model_sha256``, ``model_metadata`` (JSON), ``input``, ``input_digest``, ``status_codes``
(JSON), ``created_by``; and ``screen_settings`` (JSON: max_atoms, overlap_threshold, embeddings)
so a rerun can tell whether an existing file is its own. Datasets:

=====================  ==================  ===============================================
``index``              [M] int64           row in the input store
``ids``                [M] utf-8 string    structure ids
``predictions/<t>``    [M] float32         attr ``units``; NaN where status ≠ 0
``std/<t>``            [M] float32         an ensemble's calibrated spread, same units; NaN
                                           where the prediction is NaN
``status``             [M] uint8           docs/design.md codes 0-7
``flags``              [M] uint8           bit 0: an element the model never saw in training
``formula``            [M] utf-8 string    reduced formula of the structure screened (v2)
``n_elements``         [M] uint8           distinct elements of the structure screened (v2)
``embeddings``         [M, D] float32      optional
=====================  ==================  ===============================================

Version 1 files (written before ``formula`` and ``n_elements``) still read: their formulas come
from the input store only while its content digest is the one the file records.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from deepergat._version import __version__
from deepergat.contract import (
    FLAG_UNSEEN_ELEMENT,
    STATUS_CODES,
)
from deepergat.errors import DeepergatError, SettingError
from deepergat.system.files import atomic_open

from .failures import literal

__all__ = [
    "FLAG_UNSEEN_ELEMENT",
    "PREDICTIONS_FORMAT",
    "PREDICTIONS_VERSION",
    "NoSpaceError",
    "PredictionsWriter",
    "Rows",
    "compositions_of",
    "describe_predictions",
    "format_predictions",
    "read_identity",
    "take_rows",
    "write_top_csv",
]

log = logging.getLogger(__name__)

PREDICTIONS_FORMAT = "deepergat-predictions"
PREDICTIONS_VERSION = 2
_STR = h5py.string_dtype("utf-8")
_ROW_CHUNK = 65536
#: Rows read at a time when describing or ranking a file.
_READ_ROWS = 1 << 20


@dataclass
class Rows:
    """Predictions of a contiguous run of structures (a chunk, or a whole file).

    Attributes:
        index: [m] int64 rows in the input store.
        ids: [m] structure ids.
        status: [m] uint8 docs/design.md status codes.
        flags: [m] uint8 flag bits.
        predictions: [m, T] float32 in the targets' units, NaN where status ≠ 0.
        embeddings: [m, D] float32 pooled crystal vectors (NaN where status ≠ 0), or None.
        std: [m, T] float32 calibrated spread of an ensemble (NaN where status ≠ 0), or None.
        formula: [m] reduced formulas (`deepergat.elements.compositions`), or None.
        n_elements: [m] uint8 distinct elements, or None.
    """

    index: np.ndarray
    ids: list[str]
    status: np.ndarray
    flags: np.ndarray
    predictions: np.ndarray
    embeddings: np.ndarray | None = None
    std: np.ndarray | None = None
    formula: list[str] | None = None
    n_elements: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


def _attr(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NoSpaceError(SettingError):
    """The output's file system cannot hold the file (nothing of it is left behind).

    Attributes:
        needed: bytes the file needs (an upper bound). free: bytes free then (-1: unknown).
        detail: the message without the advice (``no space left on … (needs ~N MB, …)``).

    Args:
        advice: what to do, a `SettingError` template (it names the ``{output}`` setting).
    """

    def __init__(self, detail: str, needed: int, free: int,
                 advice: str = "free space or choose another {output}") -> None:
        super().__init__(f"{literal(detail)}; {advice}")
        self.detail = detail
        self.needed = needed
        self.free = free


#: Bytes of one id beyond its text: a 16-byte reference in ``ids`` and a 16-byte object header
#: in HDF5's global heap (the text is padded to 8 bytes there).
_ID_OVERHEAD = 32
#: Id length assumed for the first reservation (longer ids reserve more as they come).
_ID_GUESS = 32
#: Chunk cache per dataset while writing: rows arrive in order, so every HDF5 chunk stays in
#: memory until it is complete and is compressed and written once.
_CHUNK_CACHE = 8 << 20


class PredictionsWriter:
    """Write a predictions file of M rows in any order of row ranges; it appears under its name
    only on `close` (written as a temporary file in the same folder, then renamed).

    The disk space is reserved before HDF5 writes anything (``posix_fallocate`` of an upper
    bound of the file, grown as rows with longer ids arrive), so a full disk or quota is met as
    `NoSpaceError` — one line, the temporary file removed — and never inside HDF5, which cannot
    recover from a failed write. File systems that cannot reserve (``EOPNOTSUPP``) or do not
    keep reservations (copy-on-write: ZFS, btrfs) only get the free-space check.

    Args:
        path: the output file.
        n_structures: M.
        targets: [T] dicts with ``name`` and ``units`` (the model's targets, in output order).
        embedding_dim: D, or None for no ``embeddings`` dataset.
        attrs: root attributes (docs/design.md's list); ``format``, ``version``, ``status_codes``
            and ``created_by`` are added.
        spread: write the ``std`` group (an ensemble's calibrated spread).

    Raises:
        NoSpaceError: the file system cannot hold the file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        n_structures: int,
        targets: Sequence[Mapping[str, Any]],
        embedding_dim: int | None,
        attrs: Mapping[str, Any],
        spread: bool = False,
    ) -> None:
        self.path = Path(path)
        # Its own staged file, not `atomic_path`: it lives across many calls (rows in any
        # order, the file closed and reopened to reserve more space) and is fsynced before
        # the rename. The next owner of the output removes a killed writer's (by this name).
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.targets = [str(t["name"]) for t in targets]
        self._closed = True
        self._f: h5py.File | None = None
        m = int(n_structures)
        n_t = len(self.targets) * (2 if spread else 1)
        #: bytes of a row in the file, its id's and formula's text aside (compressed data never
        #: grows by more than zlib's bound, counted in `_grow`).
        self._per_row = (8 + 1 + 1 + 1 + 4 * n_t + 4 * int(embedding_dim or 0)
                         + 2 * _ID_OVERHEAD)
        self._chunk_bytes = 0  # one HDF5 chunk of every dataset
        image = self._layout(m, targets, embedding_dim, attrs, spread)
        self._need = len(image) + self._chunk_bytes + (1 << 20)
        #: the whole file's size as first estimated (ids of `_ID_GUESS` characters)
        self.estimate = self._need + self._bound(m * (self._per_row + _ID_GUESS), m)
        self._reserved = 0
        self._can_reserve = True
        try:
            with open(self._tmp, "wb") as fh:
                self._fallocate(fh.fileno(), self.estimate)
                fh.write(image)
            self._open()
        except BaseException:
            self.abort()
            raise
        self._closed = False

    # ------------------------------------------------------------------ layout

    def _layout(self, m: int, targets: Sequence[Mapping[str, Any]], embedding_dim: int | None,
                attrs: Mapping[str, Any], spread: bool) -> bytes:
        """The empty file of M rows, laid out in memory (the disk sees it only once its space
        is held): its bytes."""
        f = h5py.File(f"deepergat-predictions-{id(self)}", "w", driver="core",
                      backing_store=False)
        try:
            self._column(f, "index", np.int64, m)
            self._column(f, "ids", _STR, m, compress=False)
            self._column(f, "status", np.uint8, m)
            self._column(f, "flags", np.uint8, m)
            self._column(f, "formula", _STR, m, compress=False)
            self._column(f, "n_elements", np.uint8, m)
            groups = ["predictions", "std"] if spread else ["predictions"]
            for name in groups:
                group = f.create_group(name, track_order=True)  # the model's target order
                for t in targets:
                    ds = self._column(group, str(t["name"]), np.float32, m)
                    ds.attrs["units"] = str(t.get("units", ""))
            if embedding_dim is not None:
                self._column(f, "embeddings", np.float32, m, int(embedding_dim))
            a = f.attrs
            a["format"] = PREDICTIONS_FORMAT
            a["version"] = PREDICTIONS_VERSION
            for k, v in attrs.items():
                a[k] = v
            a["status_codes"] = json.dumps({str(k): v for k, v in STATUS_CODES.items()})
            a["created_by"] = f"deepergat {__version__}"
            f.flush()
            return f.id.get_file_image()
        finally:
            f.close()

    def _column(self, where: h5py.Group, name: str, dtype: Any, m: int,
                width: int | None = None, *, compress: bool = True) -> h5py.Dataset:
        """An [M] (or [M, width]) dataset in chunks of up to `_ROW_CHUNK` rows (1 MiB wide),
        counted in ``_chunk_bytes``."""
        shape: tuple[int, ...] = (m,) if width is None else (m, width)
        if m == 0:  # an empty input: no chunks to lay out
            return where.create_dataset(name, shape=shape, dtype=dtype)
        rows = min(_ROW_CHUNK, m)
        chunk = rows if width is None else max(1, min(rows, (1 << 20) // (4 * width)))
        self._chunk_bytes += chunk * (16 if dtype is _STR else
                                      np.dtype(dtype).itemsize * (width or 1))
        opts: dict[str, Any] = (
            {"compression": "gzip", "compression_opts": 4, "shuffle": True}
            if compress else {}
        )
        return where.create_dataset(name, shape=shape, dtype=dtype,
                                    chunks=(chunk, *shape[1:]), **opts)

    # ------------------------------------------------------------------ space

    @staticmethod
    def _bound(raw: int, rows: int) -> int:
        """Bytes that ``raw`` bytes of ``rows`` rows can take in the file: zlib's worst case
        (raw + raw/4096 + raw/16384 + 13 per chunk) and the global heap's unused collection
        ends (within raw/64), chunk index entries and nodes, a margin."""
        return raw + raw // 64 + 512 * (rows // 1024 + 1) + 4096

    def _fallocate(self, fd: int, length: int) -> None:
        """Hold the first ``length`` bytes of the temporary file on disk."""
        if not self._can_reserve or length <= self._reserved:
            return
        try:
            os.posix_fallocate(fd, 0, length)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self._no_space(length, e) from None
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS,
                               errno.ENODEV):
                raise
            log.warning("%s: this file system cannot reserve space (%s); a disk that fills up "
                        "while the file is written fails inside HDF5", self.path.parent,
                        e.strerror)
            self._can_reserve = False
            return
        self._reserved = length

    def _no_space(self, length: int, e: OSError | None = None) -> NoSpaceError:
        folder = self.path.parent if str(self.path.parent) else Path(".")
        try:
            free = shutil.disk_usage(folder).free
            with contextlib.suppress(OSError):  # what our own file holds is free once it goes
                free += os.stat(self._tmp).st_blocks * 512
        except OSError:
            free = -1
        what = "quota exceeded" if e is not None and e.errno == errno.EDQUOT else "no space left"
        need = max(length, self.estimate)
        return NoSpaceError(
            f"{what} on {folder} for {self.path.name} (needs ~{_mb(need)} MB"
            + (f", {_mb(free)} MB free" if free >= 0 else "") + ")",
            need, free)

    def _open(self) -> None:
        self._f = h5py.File(self._tmp, "r+", rdcc_nbytes=_CHUNK_CACHE, rdcc_w0=1.0)

    def _grow(self, need: int) -> None:
        """Reserve at least ``need`` bytes: HDF5 releases the reserved tail of the file when it
        flushes, so the file is closed, grown and opened again."""
        assert self._f is not None
        self._f.close()
        self._f = None
        # Chunks flushed half full are written again later, elsewhere in the file.
        self._need += self._chunk_bytes
        want = max(need + self._chunk_bytes, self._reserved + self.estimate // 8)
        self._reserved = 0  # the flush gave the tail back
        fd = os.open(self._tmp, os.O_WRONLY)
        try:
            self._fallocate(fd, want)
        finally:
            os.close(fd)
        self._open()

    # ------------------------------------------------------------------ writing

    def write(self, start: int, rows: Rows) -> None:
        """Write ``rows`` at rows [start, start + len(rows)).

        Raises:
            NoSpaceError: the disk cannot hold them (checked before HDF5 writes any).
        """
        f = self._f
        assert f is not None
        if rows.formula is None or rows.n_elements is None:
            raise ValueError("rows without formulas for a predictions file")
        raw = len(rows) * self._per_row + sum(
            (len(s.encode()) + 7) & ~7 for s in (*rows.ids, *rows.formula))
        need = self._need + self._bound(raw, len(rows))
        if self._can_reserve and need > self._reserved:
            self._grow(need)
            f = self._f
            assert f is not None
        self._need = need
        b = start + len(rows)
        f["index"][start:b] = rows.index
        f["ids"][start:b] = rows.ids
        f["status"][start:b] = rows.status
        f["flags"][start:b] = rows.flags
        f["formula"][start:b] = rows.formula
        f["n_elements"][start:b] = rows.n_elements
        for j, name in enumerate(self.targets):
            f[f"predictions/{name}"][start:b] = rows.predictions[:, j]
        if "std" in f:
            if rows.std is None:
                raise ValueError("rows without std for a file with a std group")
            for j, name in enumerate(self.targets):
                f[f"std/{name}"][start:b] = rows.std[:, j]
        if "embeddings" in f:
            if rows.embeddings is None:
                raise ValueError("rows without embeddings for a file with embeddings")
            f["embeddings"][start:b] = rows.embeddings

    def close(self) -> None:
        """Flush (HDF5 gives back the reserved tail), fsync and rename into place."""
        if self._closed:
            return
        assert self._f is not None
        self._f.flush()
        self._f.close()
        self._f = None
        with open(self._tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(self._tmp, self.path)
        self._closed = True

    def abort(self) -> None:
        """Close and delete the temporary file."""
        try:
            if self._f is not None:
                self._f.close()
        finally:
            self._f = None
            self._tmp.unlink(missing_ok=True)
            self._closed = True

    def __enter__(self) -> PredictionsWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _mb(n: int) -> str:
    return f"{max(n, 0) / 1e6:.0f}" if n >= 1e6 else f"{max(n, 0) / 1e6:.1f}"


def read_identity(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What run wrote an existing predictions file.

    Args:
        path: a file that may exist.

    Returns:
        None when the file does not exist; else ``{"input_digest", "model_sha256",
        "n_structures", "screen_settings"}`` (``screen_settings`` {} when absent).

    Raises:
        DeepergatError: the file exists but is not a complete deepergat predictions file (so
            screening never overwrites an unrelated file).
    """
    p = Path(path)
    if not p.exists():
        return None
    try:
        with h5py.File(p, "r") as f:
            fmt = _attr(f.attrs.get("format", ""))
            if fmt != PREDICTIONS_FORMAT:
                raise SettingError(
                    f"{literal(p)}: exists and is not a deepergat predictions file (format "
                    f"{literal(repr(fmt))}); choose another {{output}} (screening never "
                    "overwrites other files)"
                )
            settings = json.loads(_attr(f.attrs.get("screen_settings", "{}")) or "{}")
            return {
                "input_digest": _attr(f.attrs.get("input_digest", "")),
                "model_sha256": _attr(f.attrs.get("model_sha256", "")),
                "n_structures": int(f["status"].shape[0]),
                "screen_settings": settings,
            }
    except OSError as e:
        raise SettingError(
            f"{literal(p)}: exists and is not a readable HDF5 file "
            f"({literal(' '.join(str(e).split()))}); remove it or choose another {{output}}"
        ) from None


def _stats(values: np.ndarray) -> dict[str, Any]:
    v = values[np.isfinite(values)].astype(np.float64)
    if not len(v):
        return {"count": 0, "mean": None, "std": None, "min": None, "max": None}
    return {"count": len(v), "mean": float(v.mean()), "std": float(v.std()),
            "min": float(v.min()), "max": float(v.max())}


def describe_predictions(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Counts by status and flag, and statistics of each prediction, read in blocks.

    Returns:
        ``{"format", "n_structures", "status": {code: count}, "flags": {"unseen_element": n},
        "targets": {name: {"units", "count", "mean", "std", "min", "max"}}, "embeddings":
        dim or None, "model", "model_sha256", "input", "input_digest", "created_by"}``.
        Statistics are over the finite values (status 0); ``std`` is the population one.

    Raises:
        DeepergatError: not a readable predictions file.
    """
    p = Path(path)
    try:
        with h5py.File(p, "r") as f:
            if _attr(f.attrs.get("format", "")) != PREDICTIONS_FORMAT:
                raise DeepergatError(f"{p}: not a deepergat predictions file")
            m = int(f["status"].shape[0])
            status = np.zeros(256, np.int64)
            unseen = 0
            for a in range(0, m, _READ_ROWS):
                b = min(m, a + _READ_ROWS)
                status += np.bincount(f["status"][a:b], minlength=256)
                unseen += int(np.count_nonzero(f["flags"][a:b] & FLAG_UNSEEN_ELEMENT))
            targets = {}
            for name, ds in f["predictions"].items():
                targets[name] = {"units": _attr(ds.attrs.get("units", "")),
                                 **_stats(ds[:].astype(np.float64))}
                if "std" in f:
                    targets[name]["std_stats"] = _stats(f[f"std/{name}"][:].astype(np.float64))
            attrs = {k: _attr(f.attrs.get(k, "")) for k in
                     ("model", "model_sha256", "input", "input_digest", "created_by")}
            emb = int(f["embeddings"].shape[1]) if "embeddings" in f else None
    except (OSError, KeyError) as e:
        raise DeepergatError(f"{p}: damaged predictions file: {e}") from None
    return {
        "format": PREDICTIONS_FORMAT,
        "n_structures": m,
        "status": {int(c): int(status[c]) for c in np.flatnonzero(status)},
        "flags": {"unseen_element": unseen},
        "targets": targets,
        "embeddings": emb,
        **attrs,
    }


def _fmt(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.6g}"


def format_predictions(info: dict[str, Any], path: str) -> list[str]:
    """Text lines for `describe_predictions`' dict (``deepergat info``)."""
    m = info["n_structures"]
    lines = [f"{path}: deepergat predictions", f"  structures       {m}"]
    for k, (code, count) in enumerate(sorted(info["status"].items())):
        label = "  status           " if k == 0 else "                   "
        meaning = STATUS_CODES.get(int(code), "unknown")
        lines.append(f"{label}{code} {meaning}: {count}")
    lines.append(f"  flagged          {info['flags']['unseen_element']} with an element unseen "
                 "in training")
    for k, (name, t) in enumerate(info["targets"].items()):
        units = f" [{t['units']}]" if t["units"] else ""
        label = "  predictions      " if k == 0 else "                   "
        lines.append(f"{label}{name}{units}: {t['count']} values, mean {_fmt(t['mean'])}, "
                     f"std {_fmt(t['std'])}, min {_fmt(t['min'])}, max {_fmt(t['max'])}")
        spread = t.get("std_stats")
        if spread:
            lines.append(f"                   {name} ensemble spread (calibrated σ): mean "
                         f"{_fmt(spread['mean'])}, min {_fmt(spread['min'])}, max "
                         f"{_fmt(spread['max'])}")
    if info.get("embeddings"):
        lines.append(f"  embeddings       {info['embeddings']} wide")
    lines.append(f"  model            {info['model']} (sha256 {info['model_sha256'][:12]})")
    lines.append(f"  input            {info['input']} (digest {info['input_digest'][:12]})")
    return lines


def _take(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """``ds[rows]`` for any order of rows, reading the dataset in blocks (memory O(block))."""
    out = np.empty(len(rows), dtype=ds.dtype)
    if not len(rows):
        return out
    order = np.argsort(rows, kind="stable")
    srt = rows[order]
    m = ds.shape[0]
    for a in range(int(srt[0]) // _READ_ROWS * _READ_ROWS, m, _READ_ROWS):
        lo, hi = np.searchsorted(srt, [a, a + _READ_ROWS])
        if lo == len(srt):
            break
        if hi > lo:
            block = ds[a : min(m, a + _READ_ROWS)]
            out[order[lo:hi]] = block[srt[lo:hi] - a]
    return out


def compositions_of(f: h5py.File, rows: np.ndarray, *,
                    store: str | os.PathLike[str] | None = None
                    ) -> tuple[list[str], np.ndarray]:
    """The reduced formulas and element counts of some rows of an open predictions file.

    A version-2 file holds them. For a version-1 file they are read from the input store (the
    file's own, or ``store``) only while its arrays still hash to the file's ``input_digest``;
    otherwise they are unavailable: "" and 0, with a warning saying why (a store re-packed or
    replaced since holds other structures under the same rows).

    Returns:
        ([n] formulas, [n] uint8 distinct elements).
    """
    rows = np.asarray(rows, dtype=np.int64)
    if "formula" in f:
        return ([_attr(s) for s in _take(f["formula"], rows)],
                _take(f["n_elements"], rows).astype(np.uint8))
    none = ([""] * len(rows), np.zeros(len(rows), np.uint8))
    path = store if store is not None else (_attr(f.attrs.get("input", "")) or None)
    if path is None or not len(rows):
        return none
    from deepergat.elements import compositions
    from deepergat.io.store import Store

    try:
        with Store(path) as s:
            if s.compute_digest() != _attr(f.attrs.get("input_digest", "")):
                log.warning("%s: formulas unavailable: the input store %s is not the one "
                            "screened (its content digest differs)", f.filename, path)
                return none
            index = _take(f["index"], rows)
            if len(index) == s.n_structures and (index == np.arange(len(index))).all():
                return compositions(s.atomic_numbers(), s.n_atoms)  # every row, in order
            z = [s.atomic_numbers(int(r), int(r) + 1) for r in index]
            n = np.array([len(a) for a in z], dtype=np.int64)
            return compositions(np.concatenate(z), n)
    except (DeepergatError, OSError, KeyError) as e:
        log.warning("%s: formulas unavailable: %s", f.filename, " ".join(str(e).split()))
        return none


def take_rows(path: str | os.PathLike[str], rows: np.ndarray, *,
              store: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Everything a predictions file says of some rows (any order), read in blocks.

    Args:
        path: a predictions file. rows: [n] rows of it.
        store: the input structure store, for the formulas of a version-1 file (default: the
            one the file records; see `compositions_of`).

    Returns:
        ``{"index", "ids", "formula", "n_elements", "status", "flags", "predictions": {target: [n]},
        "std": {target: [n]} (empty without a spread), "units": {target: units}}``.
    """
    rows = np.asarray(rows, dtype=np.int64)
    with h5py.File(path, "r") as f:
        names = list(f["predictions"])
        out: dict[str, Any] = {
            "index": _take(f["index"], rows),
            "ids": [_attr(s) for s in _take(f["ids"], rows)],
            "status": _take(f["status"], rows),
            "flags": _take(f["flags"], rows),
            "predictions": {n: _take(f[f"predictions/{n}"], rows) for n in names},
            "std": {n: _take(f[f"std/{n}"], rows) for n in names} if "std" in f else {},
            "units": {n: _attr(f[f"predictions/{n}"].attrs.get("units", "")) for n in names},
        }
        out["formula"], out["n_elements"] = compositions_of(f, rows, store=store)
    return out


def write_top_csv(path: str | os.PathLike[str], csv_path: str | os.PathLike[str],
                  rows: np.ndarray, *, group_size: Sequence[Any] | None = None,
                  known: Sequence[str] | None = None) -> int:
    """Rows of a predictions file, best first, as the top-K CSV
    ``rank,index,id,formula,<target>[,<target>_std]...,flags,group_size,known``.

    Args:
        path: a predictions file.
        csv_path: where to write (via a temporary file and rename).
        rows: [n] rows of the file, in list order (`deepergat.screening.shortlist`).
        group_size: per row, its group's size ("" ungrouped); known: per row, the matched
            known structure's id ("" none). Both empty when not given.

    Returns:
        The number of rows written.
    """
    rows = np.asarray(rows, dtype=np.int64)
    got = take_rows(path, rows)
    names = list(got["predictions"])
    spread = bool(got["std"])
    columns = [c for n in names for c in ((n, f"{n}_std") if spread else (n,))]
    sizes = list(group_size) if group_size is not None else [""] * len(rows)
    marks = list(known) if known is not None else [""] * len(rows)
    out = Path(csv_path)
    # `csv.writer`'s own line ends (\r\n) as ever; a killed writer's temporary file is
    # removed by the next screen of the output (it knows this name)
    with atomic_open(out, "w", newline="", tmp=out.with_name(f".{out.name}.tmp-{os.getpid()}")
                     ) as fh:
        w = csv.writer(fh)
        w.writerow(["rank", "index", "id", "formula", *columns, "flags", "group_size", "known"])
        for j in range(len(rows)):
            cells = [str(np.float32(src[n][j])) for n in names
                     for src in ((got["predictions"], got["std"]) if spread
                                 else (got["predictions"],))]
            w.writerow([j + 1, int(got["index"][j]), got["ids"][j], got["formula"][j], *cells,
                        int(got["flags"][j]), sizes[j], marks[j]])
    return len(rows)
