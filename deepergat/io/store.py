"""The HDF5 structure store: M structures as flat arrays (docs/design.md §3).

Writer and reader. Structures [a, b) are read with two slices (one over the per-structure arrays,
one over the per-atom arrays); the writer appends in batches so a pack of millions of structures
never holds them all in memory, and computes ``content_digest`` while it writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from h5py import h5d

from deepergat._version import __version__
from deepergat.errors import DeepergatError

__all__ = [
    "MAX_STORE_ATTRIBUTE_BYTES",
    "MAX_STORE_CHUNK_BYTES",
    "MAX_STORE_EXPANSION",
    "STORE_FORMAT",
    "STORE_VERSION",
    "Store",
    "StoreWriter",
    "StructureBatch",
    "format_attribute",
    "write_store",
    "write_subset",
]

STORE_FORMAT = "deepergat-structures"
STORE_VERSION = 1

_PER_STRUCTURE = ("ids", "n_atoms", "atom_offset", "lattice", "pbc")
_PER_ATOM = ("atomic_numbers", "positions")
#: dataset -> (trailing shape, the dtype kinds it may hold, what the kinds are in words).
#: ``"S"`` stands for any HDF5 string (variable or fixed length), ``"b"`` for booleans.
_LAYOUT: dict[str, tuple[tuple[int, ...], str, str]] = {
    "ids": ((), "S", "strings"),
    "n_atoms": ((), "iu", "integers"),
    "atom_offset": ((), "iu", "integers"),
    "lattice": ((3, 3), "f", "floating-point numbers"),
    "pbc": ((3,), "biu", "booleans"),
    "atomic_numbers": ((), "iu", "integers"),
    "positions": ((3,), "f", "floating-point numbers"),
}
_TARGET_LAYOUT = ((), "f", "floating-point numbers")
#: A store's declared data may decode to at most this many bytes per byte the file holds for it
#: (per dataset). gzip cannot exceed 1,032 to 1, so no store a deepergat writer made comes
#: close; a dataset that declares more rows than it has data for (HDF5 reads the missing chunks
#: as zeros) or that decompresses further is refused before anything is read (docs/design.md §3).
MAX_STORE_EXPANSION = 1100
#: Most bytes one chunk of a store's dataset may decode to: HDF5 decodes a whole chunk to read
#: any row of it. The writer's largest chunk is positions', 1.5 MiB.
MAX_STORE_CHUNK_BYTES = 64 << 20
#: Most bytes of a root or ``units`` attribute (HDF5's own limit for compact attributes).
MAX_STORE_ATTRIBUTE_BYTES = 64 << 10
#: Structures whose counts and offsets are checked at a time when a store is opened.
_INDEX_BLOCK = 1 << 20
#: HDF5 filters a store may use: deflate (gzip), shuffle, fletcher32, szip, nbit, scaleoffset,
#: lzf; any other needs a plugin library loaded at read time.
_FILTERS = {1: "gzip", 2: "shuffle", 3: "fletcher32", 4: "szip", 5: "nbit", 6: "scaleoffset",
            32000: "lzf"}
_STRUCTURE_CHUNK = 8192
_ATOM_CHUNK = 65536
#: HDF5's chunk cache per open dataset when reading: its default, 1 MiB, is smaller than one
#: positions chunk (65,536 × 3 float64 = 1.5 MiB), so each slice ending inside a chunk
#: decompressed the whole chunk again (docs/design.md §3). The cache lives as long as the
#: dataset handle, so `Store` keeps its handles open.
_READ_CACHE_BYTES = 4 << 20
_STR = h5py.string_dtype("utf-8")


@dataclass
class StructureBatch:
    """A contiguous run of structures, with atom arrays flattened.

    Attributes:
        index: [M] int64, row of each structure in its store (or 0..M-1 when not from a store).
        ids: [M] str ids.
        n_atoms: [M] int64 atoms per structure.
        offset: [M] int64 index of each structure's first atom within ``atomic_numbers``.
        lattice: [M, 3, 3] float64, lattice vectors as rows, Å.
        pbc: [M, 3] bool periodicity per axis.
        atomic_numbers: [N] int64.
        positions: [N, 3] float64 Cartesian coordinates, Å.
        targets: name -> [M] float64 labels.
    """

    index: np.ndarray
    ids: list[str]
    n_atoms: np.ndarray
    offset: np.ndarray
    lattice: np.ndarray
    pbc: np.ndarray
    atomic_numbers: np.ndarray
    positions: np.ndarray
    targets: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_structures(
        cls,
        structures: Sequence[Mapping[str, Any]],
        *,
        index: np.ndarray | None = None,
    ) -> StructureBatch:
        """Build a batch from dicts with keys ``id, lattice, pbc, atomic_numbers, positions``
        (and optionally ``targets``: name -> float)."""
        n = np.array([len(s["atomic_numbers"]) for s in structures], dtype=np.int64)
        offset = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64) if len(n) else n
        z = [np.asarray(s["atomic_numbers"], dtype=np.int64).reshape(-1) for s in structures]
        pos = [np.asarray(s["positions"], dtype=np.float64).reshape(-1, 3) for s in structures]
        names: list[str] = []
        for s in structures:
            for k in s.get("targets", {}) or {}:
                if k not in names:
                    names.append(k)
        targets = {
            k: np.array(
                [float((s.get("targets") or {}).get(k, np.nan)) for s in structures],
                dtype=np.float64,
            )
            for k in names
        }
        return cls(
            index=np.arange(len(structures), dtype=np.int64) if index is None else index,
            ids=[str(s["id"]) for s in structures],
            n_atoms=n,
            offset=offset,
            lattice=np.array(
                [np.asarray(s["lattice"], dtype=np.float64) for s in structures]
            ).reshape(-1, 3, 3),
            pbc=np.array(
                [np.asarray(s.get("pbc", (True, True, True)), dtype=bool) for s in structures]
            ).reshape(-1, 3),
            atomic_numbers=np.concatenate(z) if z else np.zeros(0, np.int64),
            positions=np.concatenate(pos) if pos else np.zeros((0, 3)),
            targets=targets,
        )

    def structure(self, k: int) -> dict[str, Any]:
        """The k-th structure as a dict (copies)."""
        a, n = int(self.offset[k]), int(self.n_atoms[k])
        return {
            "id": self.ids[k],
            "lattice": self.lattice[k].copy(),
            "pbc": self.pbc[k].copy(),
            "atomic_numbers": self.atomic_numbers[a : a + n].copy(),
            "positions": self.positions[a : a + n].copy(),
            "targets": {name: float(v[k]) for name, v in self.targets.items()},
        }

    def select(self, rows: np.ndarray) -> StructureBatch:
        """A new batch of the given rows (0-based within this batch), in the given order."""
        rows = np.asarray(rows, dtype=np.int64)
        n = self.n_atoms[rows]
        starts = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64)
        atom_rows = np.arange(int(n.sum())) - np.repeat(starts, n) + np.repeat(self.offset[rows], n)
        return StructureBatch(
            index=self.index[rows],
            ids=[self.ids[r] for r in rows],
            n_atoms=n,
            offset=(np.concatenate([[0], np.cumsum(n)[:-1]]) if len(n) else n).astype(np.int64),
            lattice=self.lattice[rows],
            pbc=self.pbc[rows],
            atomic_numbers=self.atomic_numbers[atom_rows],
            positions=self.positions[atom_rows],
            targets={k: v[rows] for k, v in self.targets.items()},
        )


class _Digest:
    """sha256 over the store's arrays, fed batch by batch in append order."""

    def __init__(self) -> None:
        self._parts = {name: hashlib.sha256() for name in _PER_STRUCTURE + _PER_ATOM}
        self._targets: dict[str, Any] = {}

    def update(self, name: str, data: np.ndarray | list[str]) -> None:
        if name == "ids":
            h = self._parts["ids"]
            for s in data:
                b = s.encode("utf-8")
                h.update(len(b).to_bytes(8, "little"))
                h.update(b)
            return
        h = self._parts.get(name) or self._targets.setdefault(name, hashlib.sha256())
        h.update(np.ascontiguousarray(data).tobytes())

    def hexdigest(self) -> str:
        total = hashlib.sha256()
        for name in sorted(list(self._parts) + list(self._targets)):
            h = self._parts.get(name) or self._targets[name]
            total.update(name.encode())
            total.update(h.digest())
        return total.hexdigest()


class StoreWriter:
    """Append structures to a new store; the file appears under its name only on `close`.

    Args:
        path: the output ``.h5`` path; written as ``<path>.tmp`` then renamed.
        targets: target name -> units ("" when unknown), fixed when the writer is made.
        compression: h5py compression filter for all datasets.

    Use as a context manager; an exception inside the block removes the temporary file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        targets: Mapping[str, str] | None = None,
        compression: str | None = "gzip",
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        # Its own staged file, not `deepergat.system.files.atomic_path`: the file stays open
        # across `append` calls (an object, not one ``with`` block), and pack's cleanup of a
        # killed pack relies on this exact name.
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self.targets = dict(targets or {})
        self._extra_attrs = dict(attrs or {})
        self._digest = _Digest()
        self._m = 0
        self._n = 0
        self._closed = False
        self._digest_value: str | None = None
        opts: dict[str, Any] = {}
        if compression:
            opts = {"compression": compression, "shuffle": True}
            if compression == "gzip":
                opts["compression_opts"] = 4
        try:
            self._f = h5py.File(self._tmp, "w")
        except OSError as e:
            raise DeepergatError(
                f"{self.path}: cannot create {self._tmp.name}: {' '.join(str(e).split())}"
            ) from None
        f = self._f

        def make(name: str, shape: tuple[int, ...], dtype: Any, chunk: int) -> None:
            f.create_dataset(
                name,
                shape=(0, *shape),
                maxshape=(None, *shape),
                dtype=dtype,
                chunks=(chunk, *shape),
                **(opts if dtype is not _STR else {}),
            )

        make("ids", (), _STR, _STRUCTURE_CHUNK)
        make("n_atoms", (), np.int32, _STRUCTURE_CHUNK)
        make("atom_offset", (), np.int64, _STRUCTURE_CHUNK)
        make("lattice", (3, 3), np.float64, _STRUCTURE_CHUNK)
        make("pbc", (3,), bool, _STRUCTURE_CHUNK)
        make("atomic_numbers", (), np.uint8, _ATOM_CHUNK)
        make("positions", (3,), np.float64, _ATOM_CHUNK)
        if self.targets:
            f.create_group("targets", track_order=True)  # keep the given target order
        for name, units in self.targets.items():
            self._digest.update(f"units/{name}", np.frombuffer(units.encode(), np.uint8))
            make(f"targets/{name}", (), np.float64, _STRUCTURE_CHUNK)
            f[f"targets/{name}"].attrs["units"] = units

    @property
    def n_structures(self) -> int:
        return self._m

    def append(
        self,
        *,
        ids: Sequence[str],
        n_atoms: np.ndarray,
        lattice: np.ndarray,
        pbc: np.ndarray,
        atomic_numbers: np.ndarray,
        positions: np.ndarray,
        targets: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Append a batch of m structures with n atoms in all.

        Args:
            ids: [m] str. n_atoms: [m] ints. lattice: [m, 3, 3] Å. pbc: [m, 3] bool.
            atomic_numbers: [n] ints in 0..255. positions: [n, 3] Å.
            targets: name -> [m] float; every target named at construction must be given.
        """
        ids = [str(s) for s in ids]
        m = len(ids)
        n_atoms = np.asarray(n_atoms, dtype=np.int64).reshape(m)
        n = int(n_atoms.sum())
        lattice = np.asarray(lattice, dtype=np.float64).reshape(m, 3, 3)
        pbc = np.asarray(pbc, dtype=bool).reshape(m, 3)
        z = np.asarray(atomic_numbers).reshape(n)
        if len(z) and (z.min() < 0 or z.max() > 255):
            raise DeepergatError(f"{self.path}: atomic numbers must lie in 0..255")
        z = z.astype(np.uint8)
        positions = np.asarray(positions, dtype=np.float64).reshape(n, 3)
        targets = dict(targets or {})
        missing = set(self.targets) - set(targets)
        extra = set(targets) - set(self.targets)
        if missing or extra:
            raise DeepergatError(
                f"{self.path}: targets {sorted(targets)} do not match the store's "
                f"{sorted(self.targets)}"
            )
        offset = self._n + np.concatenate([[0], np.cumsum(n_atoms)[:-1]]).astype(np.int64)
        rows = {
            "ids": ids,
            "n_atoms": n_atoms.astype(np.int32),
            "atom_offset": offset if m else np.zeros(0, np.int64),
            "lattice": lattice,
            "pbc": pbc,
        }
        for name, data in rows.items():
            self._extend(name, data, self._m, m)
            self._digest.update(name, data)
        for name, data in (("atomic_numbers", z), ("positions", positions)):
            self._extend(name, data, self._n, n)
            self._digest.update(name, data)
        for name in self.targets:
            t = np.asarray(targets[name], dtype=np.float64).reshape(m)
            self._extend(f"targets/{name}", t, self._m, m)
            self._digest.update(f"targets/{name}", t)
        self._m += m
        self._n += n

    def _extend(self, name: str, data: Any, start: int, count: int) -> None:
        ds = self._f[name]
        ds.resize(start + count, axis=0)
        if count:
            ds[start : start + count] = data

    def close(self) -> str:
        """Write the root attributes, close, rename into place; returns the content digest."""
        if self._closed:
            if self._digest_value is None:
                raise DeepergatError(f"{self.path}: the writer was aborted; nothing was written")
            return self._digest_value
        try:
            digest = self._digest.hexdigest()
            a = self._f.attrs
            a["format"] = STORE_FORMAT
            a["version"] = STORE_VERSION
            a["n_structures"] = self._m
            a["n_atoms_total"] = self._n
            a["created_by"] = f"deepergat {__version__}"
            a["content_digest"] = digest
            for k, v in self._extra_attrs.items():
                a[k] = v
            self._f.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._digest_value = digest
        self._closed = True
        return digest

    def abort(self) -> None:
        """Close and delete the temporary file (no effect after `close`)."""
        if not self._closed:
            self._f.close()
            self._tmp.unlink(missing_ok=True)
            self._closed = True

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:  # not closed or aborted inside the block
            self.close()


def write_store(
    path: str | os.PathLike[str],
    batch: StructureBatch,
    *,
    units: Mapping[str, str] | None = None,
) -> str:
    """Write one in-memory batch as a store; returns its content digest."""
    units = dict(units or {})
    with StoreWriter(path, targets={k: units.get(k, "") for k in batch.targets}) as w:
        w.append(
            ids=batch.ids,
            n_atoms=batch.n_atoms,
            lattice=batch.lattice,
            pbc=batch.pbc,
            atomic_numbers=batch.atomic_numbers,
            positions=batch.positions,
            targets=batch.targets,
        )
    return w.close()


def write_subset(source: str | os.PathLike[str], out: str | os.PathLike[str],
                 ids: Sequence[str]) -> tuple[int, str]:
    """A store of the structures of ``source`` with the given ids (in the source's order),
    targets and units included: a run's held-out split as a store of its own.

    Returns:
        (structures written, the new store's content digest).

    Raises:
        DeepergatError: an id the source lacks (the first few named), an id given twice, an
            output that is the source.
    """
    wanted = list(ids)
    if len(set(wanted)) != len(wanted):
        raise DeepergatError("subset: an id is given more than once")
    if Path(out).resolve() == Path(source).resolve():
        raise DeepergatError(f"{out}: is the source store; choose another output")
    with Store(source) as s:
        where = {sid: k for k, sid in enumerate(s.ids(0, s.n_structures))}
        missing = [sid for sid in wanted if sid not in where]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise DeepergatError(f"{source}: no structure with id "
                                 f"{', '.join(missing[:5])}{more}")
        rows = np.sort(np.array([where[sid] for sid in wanted], dtype=np.int64))
        batch = s.read_rows(rows)
        units = s.targets
    return len(rows), write_store(out, batch, units=units)


def format_attribute(f: h5py.File, path: str | os.PathLike[str]) -> str | None:
    """An HDF5 file's root ``format`` attribute as text, None when it has none; checked by its
    shape and size before it is read (a hostile file's attribute may be an array or huge).

    Raises:
        DeepergatError: the attribute is not one text or number of at most
            `MAX_STORE_ATTRIBUTE_BYTES`.
    """
    if "format" not in f.attrs:
        return None
    aid = f.attrs.get_id("format")
    if aid.shape not in ((), (1,)) or aid.get_storage_size() > MAX_STORE_ATTRIBUTE_BYTES:
        raise DeepergatError(f"{path}: its root 'format' attribute is not one text (shape "
                             f"{aid.shape}, {aid.get_storage_size()} bytes); not a deepergat file")
    value = f.attrs["format"]
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0]
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return " ".join(text.split())[:200]  # longer is no format deepergat knows


def _size(nbytes: int) -> str:
    """A byte count for people: ``3.6 TiB``."""
    x = float(nbytes)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if x < 1024 or unit == "PiB":
            return f"{int(x)} bytes" if unit == "bytes" else f"{x:.1f} {unit}"
        x /= 1024
    raise AssertionError  # pragma: no cover


def _show(value: Any) -> str:
    """A value read from a file, for a message: its repr, at most 60 characters."""
    text = repr(value.decode("utf-8", "replace") if isinstance(value, bytes) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def _dtype_words(dt: np.dtype) -> str:
    """An HDF5 dtype in words: ``strings``, ``int32 numbers``, ``a compound type``."""
    if h5py.check_string_dtype(dt) is not None:
        return "strings"
    if dt.subdtype is not None:
        return f"arrays of {dt.subdtype[1]} {dt.subdtype[0]}"
    if dt.kind in "biuf":
        return f"{dt} numbers"
    return {"V": "a compound or opaque type", "O": "references or variable-length data"}.get(
        dt.kind, f"dtype {dt}")


class Store:
    """Read-only access to a structure store, validated on open.

    Args:
        path: the store file.

    Opening reads nothing that the file only declares: attributes, datasets (their links,
    dtypes, shapes, chunk sizes, filters and the bytes the file holds for them) and the counts
    and offsets are checked first (docs/design.md §3), so a file that declares more than it
    holds is one `DeepergatError`, never an allocation of what it declares.

    Raises:
        DeepergatError: not HDF5, truncated, wrong format or version, a missing dataset or
            inconsistent lengths, naming the file and the problem.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise DeepergatError(f"{self.path}: no such file")
        try:
            self._f = h5py.File(self.path, "r", rdcc_nbytes=_READ_CACHE_BYTES)
            self._datasets: dict[str, h5py.Dataset] = {}
            self._declared_rows = 0
        except OSError as e:
            raise DeepergatError(_not_hdf5(self.path, e)) from None
        try:
            self._validate()
        except DeepergatError:
            self._f.close()
            raise
        except MemoryError:
            self._f.close()
            raise DeepergatError(
                f"{self.path}: the counts and offsets of its {self._declared_rows} structures "
                f"({_size(16 * self._declared_rows)}) do not fit in this process's memory; "
                "split the inputs into smaller stores"
            ) from None
        except (OSError, KeyError, ValueError, TypeError) as e:
            self._f.close()
            raise DeepergatError(f"{self.path}: damaged structure store: "
                                 f"{' '.join(str(e).split())[:200]}") from None

    def _validate(self) -> None:
        """Check the file and read what addresses its atoms.

        Everything the file declares is checked against what it holds before anything sized by
        a declaration is read: attributes by their own shape and size, every dataset by its
        link, storage, filters, dtype, shape, chunk size and the bytes the file holds for it;
        counts and offsets are then read a block at a time.

        Raises:
            DeepergatError: another format or version, a missing, linked or mistyped dataset,
                rows that disagree with the root attributes or with the data the file holds,
                or counts and offsets that disagree.
        """
        f = self._f
        self._check_format()
        self._check_layout()
        m = self._count_attr("n_structures")
        n = self._count_attr("n_atoms_total")
        self._check_lengths(m, n)
        self._declared_rows = m
        self._targets = self._read_targets(m)
        self.n_structures = m
        self.n_atoms_total = n
        # Per-structure counts and offsets are small (16 bytes a structure in memory) and
        # needed to address atoms: read them once, checking each block as it comes.
        self.n_atoms, self.atom_offset = self._read_index(m, n)
        self.content_digest = self._text_attr(f, "content_digest")
        self.created_by = self._text_attr(f, "created_by")

    def _damaged(self, what: str) -> DeepergatError:
        return DeepergatError(f"{self.path}: damaged structure store: {what}")

    def _attr(self, obj: h5py.HLObject, name: str) -> Any:
        """An attribute's value, or None when missing; refused before it is read when it is
        not a single value or is larger than `MAX_STORE_ATTRIBUTE_BYTES`."""
        if name not in obj.attrs:
            return None
        where = f"attribute {name!r}" + (f" of {obj.name}" if obj.name != "/" else "")
        aid = obj.attrs.get_id(name)
        if aid.shape not in ((), (1,)):
            raise self._damaged(f"{where} holds an array of shape {aid.shape}, not one value")
        if aid.get_storage_size() > MAX_STORE_ATTRIBUTE_BYTES:
            raise self._damaged(f"{where} is {aid.get_storage_size()} bytes (at most "
                                f"{MAX_STORE_ATTRIBUTE_BYTES})")
        if aid.dtype.kind not in "biufSUO" or (
            aid.dtype.kind == "O" and h5py.check_string_dtype(aid.dtype) is None
        ):
            raise self._damaged(f"{where} has type {aid.dtype}, neither a number nor text")
        value = obj.attrs[name]
        if isinstance(value, np.ndarray):
            value = value.reshape(-1)[0]
        return value

    def _text_attr(self, obj: h5py.HLObject, name: str) -> str:
        """A text attribute (``""`` when missing), at most `MAX_STORE_ATTRIBUTE_BYTES`."""
        value = self._attr(obj, name)
        if value is None:
            return ""
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        if len(text) > MAX_STORE_ATTRIBUTE_BYTES:
            where = f"attribute {name!r}" + (f" of {obj.name}" if obj.name != "/" else "")
            raise self._damaged(f"{where} is {len(text)} characters (at most "
                                f"{MAX_STORE_ATTRIBUTE_BYTES})")
        return text

    def _count_attr(self, name: str) -> int:
        """A root attribute that counts rows: a non-negative integer."""
        value = self._attr(self._f, name)
        if value is None:
            raise self._damaged(f"root attribute {name!r} is missing")
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise self._damaged(f"root attribute {name!r} is {_show(value)}, not an integer")
        if value < 0:
            raise self._damaged(f"root attribute {name!r} is negative ({int(value)})")
        return int(value)

    def _check_format(self) -> None:
        """The root ``format`` and ``version`` attributes."""
        f, p = self._f, self.path
        fmt = self._text_attr(f, "format") if "format" in f.attrs else None
        if fmt != STORE_FORMAT:
            hint = (
                " (a predictions file, not a structure store)"
                if fmt == "deepergat-predictions"
                else ""
            )
            raise DeepergatError(
                f"{p}: not a deepergat structure store (format attribute "
                f"{_show(fmt)}, expected {STORE_FORMAT!r}){hint}; make one with `deepergat pack`"
            )
        version = self._attr(f, "version")
        if not isinstance(version, (int, np.integer)) or version != STORE_VERSION:
            shown = int(version) if isinstance(version, (int, np.integer)) else _show(version)
            raise DeepergatError(
                f"{p}: structure store version {shown} is not supported (this deepergat reads "
                f"version {STORE_VERSION}); re-pack the inputs"
            )

    def _check_layout(self) -> None:
        """Every dataset is there, is a dataset of this file with the dtype and trailing shape
        of §3, and holds its data; ``targets`` is a group."""
        f = self._f
        for name, (shape, kinds, words) in _LAYOUT.items():
            if name not in f:
                raise self._damaged(f"dataset {name!r} is missing")
            self._check_dataset(name, shape, kinds, words)
        if "targets" in f:
            self._check_link("targets")
            if not isinstance(f["targets"], h5py.Group):
                raise self._damaged(f"'targets' is a {type(f['targets']).__name__.lower()}, "
                                    "not a group")

    def _check_link(self, name: str) -> None:
        """``name`` is an object of this file, not a link to another path or file."""
        link = self._f.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            kind = "an external link" if isinstance(link, h5py.ExternalLink) else "a soft link"
            raise self._damaged(f"{name!r} is {kind}, not an object of this file")

    def _check_dataset(self, name: str, shape: tuple[int, ...], kinds: str, words: str) -> None:
        """One dataset: linked in this file, its dtype of ``kinds``, its shape ``[rows,
        *shape]``, its storage in this file, its filters readable, its chunks at most
        `MAX_STORE_CHUNK_BYTES`, and at most `MAX_STORE_EXPANSION` bytes declared per byte
        held. Nothing of its data is read."""
        self._check_link(name)
        ds = self._f[name]
        if not isinstance(ds, h5py.Dataset):
            raise self._damaged(f"{name!r} is a {type(ds).__name__.lower()}, not a dataset")
        dt = ds.dtype
        kind = "S" if h5py.check_string_dtype(dt) is not None else dt.kind
        if kind not in kinds or dt.subdtype is not None:
            raise self._damaged(f"{name!r} holds {_dtype_words(dt)}, not {words}")
        if ds.ndim != 1 + len(shape) or ds.shape[1:] != shape:
            want = ", ".join(["rows", *map(str, shape)])
            raise self._damaged(f"{name!r} has shape {ds.shape}, expected [{want}]")
        dcpl = ds.id.get_create_plist()
        if dcpl.get_layout() not in (h5d.COMPACT, h5d.CONTIGUOUS, h5d.CHUNKED):
            raise self._damaged(f"{name!r} is a virtual dataset (its data lives in other "
                                "files)")
        if dcpl.get_external_count():
            raise self._damaged(f"{name!r} keeps its data in external files")
        for k in range(dcpl.get_nfilters()):
            code = dcpl.get_filter(k)[0]
            if code not in _FILTERS:
                raise self._damaged(f"{name!r} is compressed with HDF5 filter {code}, which "
                                    "deepergat does not read (it uses "
                                    f"{', '.join(sorted(_FILTERS.values()))})")
        item = ds.id.get_type().get_size()
        row = item * math.prod(shape)
        if ds.chunks is not None and item * math.prod(ds.chunks) > MAX_STORE_CHUNK_BYTES:
            raise self._damaged(
                f"{name!r} is stored in chunks of {_size(item * math.prod(ds.chunks))} "
                f"(chunk shape {ds.chunks}); every read decodes a whole chunk, so chunks of at "
                f"most {_size(MAX_STORE_CHUNK_BYTES)} are read"
            )
        declared = row * ds.shape[0]
        held = ds.id.get_storage_size()
        if declared > MAX_STORE_EXPANSION * held:
            raise self._damaged(
                f"{name!r} declares {ds.shape[0]} rows ({_size(declared)}) but the file holds "
                f"{_size(held)} of data for it (more than {MAX_STORE_EXPANSION} bytes per byte "
                "held: rows without data, or a decompression bomb)"
            )

    def _check_lengths(self, m: int, n: int) -> None:
        """Per-structure datasets have ``m`` rows, per-atom ones ``n``."""
        f = self._f
        for name in _PER_STRUCTURE:
            if f[name].shape[0] != m:
                raise self._damaged(
                    f"{name!r} has {f[name].shape[0]} rows but n_structures is {m}"
                )
        for name in _PER_ATOM:
            if f[name].shape[0] != n:
                raise self._damaged(
                    f"{name!r} has {f[name].shape[0]} rows but n_atoms_total is {n}"
                )

    def _read_targets(self, m: int) -> dict[str, str]:
        """Target name -> units, each target checked as the datasets are, with ``m`` rows."""
        f = self._f
        targets: dict[str, str] = {}
        if "targets" in f:
            for name in f["targets"]:
                path = f"targets/{name}"
                self._check_link(path)
                if not isinstance(f[path], h5py.Dataset):
                    raise self._damaged(f"target {name!r} is not a dataset")
                self._check_dataset(path, *_TARGET_LAYOUT)
                ds = f[path]
                if ds.shape != (m,):
                    raise self._damaged(f"target {name!r} has shape {ds.shape}, expected ({m},)")
                targets[name] = self._text_attr(ds, "units")
        return targets

    def _read_index(self, m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """([m] int64 atom counts, [m] int64 offsets), read and checked `_INDEX_BLOCK`
        structures at a time: counts lie in [0, n] and sum to ``n``; offsets are their
        running sum (so every structure's atoms lie inside the atom arrays)."""
        f = self._f
        counts = np.empty(m, np.int64)
        offsets = np.empty(m, np.int64)
        total = 0
        for a in range(0, m, _INDEX_BLOCK):
            b = min(a + _INDEX_BLOCK, m)
            c = np.asarray(f["n_atoms"][a:b])
            o = np.asarray(f["atom_offset"][a:b]).astype(np.int64)  # a wrapped one mismatches
            bad = (c < 0) | (c > n)  # compared in the file's dtype: no wraparound
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                sign = "negative" if c[k] < 0 else f"larger than n_atoms_total ({n})"
                raise self._damaged(f"n_atoms is {sign} (row {a + k}: {int(c[k])})")
            c = c.astype(np.int64)
            ends = total + np.cumsum(c)  # each count <= n, at most 2^20 of them: no overflow
            starts = np.concatenate([[total], ends[:-1]])
            if ends[-1] > n:
                raise self._damaged(f"n_atoms sums past n_atoms_total ({n}) by row "
                                    f"{a + int(np.argmax(ends > n))}")
            if not np.array_equal(starts, o):
                k = int(np.flatnonzero(starts != o)[0])
                raise self._damaged(
                    f"atom_offset is not the running sum of n_atoms (row {a + k}: "
                    f"{int(o[k])}, expected {int(starts[k])})"
                )
            counts[a:b] = c
            offsets[a:b] = starts
            total = int(ends[-1])
        if total != n:
            raise self._damaged(f"n_atoms sums to {total} but n_atoms_total is {n}")
        return counts, offsets

    @property
    def targets(self) -> dict[str, str]:
        """Target name -> units."""
        return dict(self._targets)

    def __len__(self) -> int:
        return self.n_structures

    def _slice(self, name: str, a: int, b: int) -> np.ndarray:
        """Rows [a, b) of a dataset; a damaged block is a `DeepergatError` naming it."""
        try:
            ds = self._datasets.get(name)
            if ds is None:  # kept open: its chunk cache lives with the handle
                ds = self._datasets[name] = self._f[name]
            return ds[a:b]
        except (OSError, ValueError, KeyError) as e:
            raise DeepergatError(
                f"{self.path}: damaged structure store: cannot read {name} rows [{a}, {b}) "
                f"({' '.join(str(e).split())[:160]}); re-pack it from its sources"
            ) from None

    def ids(self, a: int = 0, b: int | None = None) -> list[str]:
        """Ids of structures [a, b)."""
        b = self.n_structures if b is None else b
        return [s.decode() if isinstance(s, bytes) else str(s) for s in self._slice("ids", a, b)]

    def atomic_numbers(self, a: int = 0, b: int | None = None) -> np.ndarray:
        """[n] int64 atomic numbers of structures [a, b), without reading positions."""
        b = self.n_structures if b is None else min(b, self.n_structures)
        if b <= a:
            return np.zeros(0, np.int64)
        first = int(self.atom_offset[a])
        last = int(self.atom_offset[b - 1] + self.n_atoms[b - 1])
        return self._slice("atomic_numbers", first, last).astype(np.int64)

    def compute_digest(self, *, block: int = 1 << 20) -> str:
        """The content digest recomputed from the arrays now in the file (`content_digest` is
        what the writer recorded). Equal unless the store was edited after it was written.

        Reads every dataset once, in blocks of ``block`` rows.

        Raises:
            DeepergatError: a dataset cannot be read (damaged file).
        """
        d = _Digest()
        f = self._f
        try:
            for name, units in self._targets.items():
                d.update(f"units/{name}", np.frombuffer(units.encode(), np.uint8))
            names = [*_PER_STRUCTURE, *_PER_ATOM, *(f"targets/{t}" for t in self._targets)]
            for name in names:
                ds = f[name]
                for a in range(0, ds.shape[0], block):
                    data = ds[a : a + block]
                    if name == "ids":
                        d.update(name, [s.decode() if isinstance(s, bytes) else str(s)
                                        for s in data])
                    else:
                        d.update(name, data)
        except (OSError, KeyError, ValueError) as e:
            raise DeepergatError(f"{self.path}: damaged structure store: cannot read its "
                                 f"arrays ({' '.join(str(e).split())[:200]})") from None
        return d.hexdigest()

    def target(self, name: str) -> np.ndarray:
        """[M] float64 values of a target."""
        if name not in self._targets:
            raise DeepergatError(
                f"{self.path}: no target {name!r}; available: {sorted(self._targets) or 'none'}"
            )
        return self._slice(f"targets/{name}", 0, self.n_structures).astype(np.float64)

    def read(self, a: int, b: int) -> StructureBatch:
        """Structures [a, b) with two slices; ``offset`` is relative to the batch."""
        a = max(0, int(a))
        b = min(self.n_structures, int(b))
        if b <= a:
            return StructureBatch(
                index=np.zeros(0, np.int64),
                ids=[],
                n_atoms=np.zeros(0, np.int64),
                offset=np.zeros(0, np.int64),
                lattice=np.zeros((0, 3, 3)),
                pbc=np.zeros((0, 3), bool),
                atomic_numbers=np.zeros(0, np.int64),
                positions=np.zeros((0, 3)),
                targets={k: np.zeros(0) for k in self._targets},
            )
        n_atoms = self.n_atoms[a:b]
        first = int(self.atom_offset[a])
        last = int(self.atom_offset[b - 1] + self.n_atoms[b - 1])
        return StructureBatch(
            index=np.arange(a, b, dtype=np.int64),
            ids=self.ids(a, b),
            n_atoms=n_atoms.copy(),
            offset=self.atom_offset[a:b] - first,
            lattice=self._slice("lattice", a, b).astype(np.float64, copy=False),
            pbc=self._slice("pbc", a, b).astype(bool),
            atomic_numbers=self._slice("atomic_numbers", first, last).astype(np.int64),
            positions=self._slice("positions", first, last).astype(np.float64, copy=False),
            targets={k: self._slice(f"targets/{k}", a, b).astype(np.float64)
                     for k in self._targets},
        )

    def read_rows(self, rows: np.ndarray, *, gap: int = 256) -> StructureBatch:
        """The structures of some rows, in the order given (``index`` holds them).

        Rows are read in spans: sorted, split where two wanted rows lie more than ``gap``
        rows apart, each span read with `read` (two slices) and the wanted rows selected.

        Raises:
            DeepergatError: a row outside the store.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n_structures):
            raise DeepergatError(f"{self.path}: rows outside 0..{self.n_structures - 1}")
        if not len(rows):
            return self.read(0, 0)
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        cuts = np.flatnonzero(np.diff(srt) > gap) + 1
        parts = []
        for span in np.split(srt, cuts):
            batch = self.read(int(span[0]), int(span[-1]) + 1)
            parts.append(batch.select(span - int(span[0])))
        whole = parts[0] if len(parts) == 1 else _concat(parts)
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return whole.select(back)

    def iter_chunks(
        self, chunk_size: int, *, start: int = 0, stop: int | None = None
    ) -> Iterator[StructureBatch]:
        """Consecutive batches of ``chunk_size`` structures over [start, stop)."""
        if chunk_size < 1:
            raise DeepergatError(f"chunk size must be at least 1, got {chunk_size}")
        stop = self.n_structures if stop is None else min(stop, self.n_structures)
        for a in range(start, stop, chunk_size):
            yield self.read(a, min(a + chunk_size, stop))

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _concat(parts: Sequence[StructureBatch]) -> StructureBatch:
    """Batches one after another (offsets shifted)."""
    n = np.concatenate([b.n_atoms for b in parts])
    return StructureBatch(
        index=np.concatenate([b.index for b in parts]),
        ids=[i for b in parts for i in b.ids],
        n_atoms=n,
        offset=(np.concatenate([[0], np.cumsum(n)[:-1]]) if len(n) else n).astype(np.int64),
        lattice=np.concatenate([b.lattice for b in parts]),
        pbc=np.concatenate([b.pbc for b in parts]),
        atomic_numbers=np.concatenate([b.atomic_numbers for b in parts]),
        positions=np.concatenate([b.positions for b in parts]),
        targets={k: np.concatenate([b.targets[k] for b in parts]) for k in parts[0].targets},
    )


def _not_hdf5(path: Path, e: OSError) -> str:
    """The message for a file that is not HDF5: structure files are packed into a store first."""
    with contextlib.suppress(OSError):
        with open(path, "rb") as fh:
            head = fh.read(8)
        if head and not head.startswith(b"\x89HDF"):
            return (f"{path}: not a structure store but another kind of file; structure files "
                    f"(CIF, POSCAR, extxyz, CSV, …) are packed into one first: deepergat pack "
                    f"{path} -o {path.with_suffix('.h5').name}")
    return (f"{path}: not a readable HDF5 file (truncated or damaged): "
            f"{' '.join(str(e).split())[:200]}")
