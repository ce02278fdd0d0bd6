"""The HDF5 structure store: M structures as flat arrays (docs/design.md §3).

Writer and reader. Structures [a, b) are read with two slices (one over the per-structure arrays,
one over the per-atom arrays); the writer appends in batches so a pack of millions of structures
never holds them all in memory, and computes ``content_digest`` while it writes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from deepergat._version import __version__
from deepergat.errors import DeepergatError

__all__ = [
    "STORE_FORMAT",
    "STORE_VERSION",
    "Store",
    "StoreWriter",
    "StructureBatch",
    "write_store",
]

STORE_FORMAT = "deepergat-structures"
STORE_VERSION = 1

_PER_STRUCTURE = ("ids", "n_atoms", "atom_offset", "lattice", "pbc")
_PER_ATOM = ("atomic_numbers", "positions")
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


class Store:
    """Read-only access to a structure store, validated on open.

    Args:
        path: the store file.

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
        except OSError as e:
            raise DeepergatError(
                f"{self.path}: not a readable HDF5 file (truncated or another format): {e}"
            ) from None
        try:
            self._validate()
        except DeepergatError:
            self._f.close()
            raise
        except (OSError, KeyError, ValueError) as e:
            self._f.close()
            raise DeepergatError(f"{self.path}: damaged structure store: {e}") from None

    def _validate(self) -> None:
        """Check the file and read what addresses its atoms.

        Raises:
            DeepergatError: another format or version, a missing or mistyped dataset, rows
                that disagree with the root attributes, or counts and offsets that disagree.
        """
        f = self._f
        self._check_format()
        self._check_layout()
        m = int(f.attrs.get("n_structures", -1))
        n = int(f.attrs.get("n_atoms_total", -1))
        self._check_lengths(m, n)
        self._targets = self._read_targets(m)
        self.n_structures = m
        self.n_atoms_total = n
        # Per-structure counts and offsets are small (12 bytes a structure) and needed to
        # address atoms: read them once.
        self.n_atoms = f["n_atoms"][:].astype(np.int64)
        self.atom_offset = f["atom_offset"][:].astype(np.int64)
        if m:
            self._check_offsets(n)
        digest = f.attrs.get("content_digest", "")
        self.content_digest = digest.decode() if isinstance(digest, bytes) else str(digest)
        created = f.attrs.get("created_by", "")
        self.created_by = created.decode() if isinstance(created, bytes) else str(created)

    def _check_format(self) -> None:
        """The root ``format`` and ``version`` attributes."""
        f, p = self._f, self.path
        fmt = f.attrs.get("format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode()
        if fmt != STORE_FORMAT:
            hint = (
                " (a predictions file, not a structure store)"
                if fmt == "deepergat-predictions"
                else ""
            )
            raise DeepergatError(
                f"{p}: not a deepergat structure store (format attribute {fmt!r}, expected "
                f"{STORE_FORMAT!r}){hint}; make one with `deepergat pack`"
            )
        version = int(f.attrs.get("version", -1))
        if version != STORE_VERSION:
            raise DeepergatError(
                f"{p}: structure store version {version} is not supported (this deepergat reads "
                f"version {STORE_VERSION}); re-pack the inputs"
            )

    def _check_layout(self) -> None:
        """Every dataset is there and is a dataset; ``targets`` is a group."""
        f, p = self._f, self.path
        for name in _PER_STRUCTURE + _PER_ATOM:
            if name not in f:
                raise DeepergatError(f"{p}: damaged structure store: dataset {name!r} is missing")
            if not isinstance(f[name], h5py.Dataset):
                raise DeepergatError(f"{p}: damaged structure store: {name!r} is a "
                                     f"{type(f[name]).__name__.lower()}, not a dataset")
        if "targets" in f and not isinstance(f["targets"], h5py.Group):
            raise DeepergatError(f"{p}: damaged structure store: 'targets' is a "
                                 f"{type(f['targets']).__name__.lower()}, not a group")

    def _check_lengths(self, m: int, n: int) -> None:
        """Per-structure datasets have ``m`` rows, per-atom ones ``n``, shapes as written."""
        f, p = self._f, self.path
        for name in _PER_STRUCTURE:
            if f[name].shape[0] != m:
                raise DeepergatError(
                    f"{p}: damaged structure store: {name!r} has {f[name].shape[0]} rows but "
                    f"n_structures is {m}"
                )
        for name in _PER_ATOM:
            if f[name].shape[0] != n:
                raise DeepergatError(
                    f"{p}: damaged structure store: {name!r} has {f[name].shape[0]} rows but "
                    f"n_atoms_total is {n}"
                )
        if f["lattice"].shape[1:] != (3, 3) or f["positions"].shape[1:] != (3,):
            raise DeepergatError(f"{p}: damaged structure store: lattice or positions shape")

    def _read_targets(self, m: int) -> dict[str, str]:
        """Target name -> units, each target checked to be an [m] dataset."""
        f, p = self._f, self.path
        targets: dict[str, str] = {}
        if "targets" in f:
            for name, ds in f["targets"].items():
                if not isinstance(ds, h5py.Dataset):
                    raise DeepergatError(f"{p}: damaged structure store: target {name!r} is "
                                         "not a dataset")
                if ds.shape != (m,):
                    raise DeepergatError(
                        f"{p}: damaged structure store: target {name!r} has shape {ds.shape}, "
                        f"expected ({m},)"
                    )
                u = ds.attrs.get("units", "")
                targets[name] = u.decode() if isinstance(u, bytes) else str(u)
        return targets

    def _check_offsets(self, n: int) -> None:
        """Atom counts are non-negative and sum to ``n``; offsets are their running sum."""
        p = self.path
        if (self.n_atoms < 0).any():
            k = int(np.flatnonzero(self.n_atoms < 0)[0])
            raise DeepergatError(
                f"{p}: damaged structure store: n_atoms is negative (row {k}: "
                f"{int(self.n_atoms[k])})"
            )
        if int(self.n_atoms.sum()) != n:
            raise DeepergatError(
                f"{p}: damaged structure store: n_atoms sums to {int(self.n_atoms.sum())} "
                f"but n_atoms_total is {n}"
            )
        expected = np.concatenate([[0], np.cumsum(self.n_atoms)[:-1]])
        if not np.array_equal(expected, self.atom_offset):
            raise DeepergatError(
                f"{p}: damaged structure store: atom_offset is not the running sum of n_atoms"
            )

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
            lattice=self._slice("lattice", a, b),
            pbc=self._slice("pbc", a, b).astype(bool),
            atomic_numbers=self._slice("atomic_numbers", first, last).astype(np.int64),
            positions=self._slice("positions", first, last),
            targets={k: self._slice(f"targets/{k}", a, b).astype(np.float64)
                     for k in self._targets},
        )

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
