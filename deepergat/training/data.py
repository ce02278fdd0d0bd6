"""Graphs for training and evaluation: built once per store, cached, batched by concatenation.

`load_graphs` runs the shared neighbor search (`deepergat.graphs.build_inputs`) over a whole
store, chunk by chunk, and keeps each structure's graph as rows of flat arrays (neighbor indices
local to the structure). The result is cached as one ``.npz`` file keyed by the store's
content digest (recomputed from its arrays, so an edited store never meets a stale cache) and the
graph settings, next to the store when that folder is writable, else
in the user cache directory; a cache whose key differs is never used. `GraphSet.batch` turns any
list of structures into the padded model inputs of docs/design.md with a few vectorized numpy ops.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepergat.contract import (
    DEFAULT_CUTOFF,
    DEFAULT_GRAPH,
    DEFAULT_MAX_NEIGHBORS,
    DEFAULT_OVERLAP_THRESHOLD,
    MAX_Z,
    GraphConstruction,
    Status,
    translation_rule,
)
from deepergat.errors import DeepergatError
from deepergat.graphs import build_inputs, check_graph
from deepergat.io.store import Store
from deepergat.system.files import atomic_open

__all__ = [
    "CACHE_VERSION",
    "DeviceGraphs",
    "GraphSet",
    "cache_path",
    "default_cache_dir",
    "load_graphs",
    "require_finite",
    "to_tensors",
]

log = logging.getLogger(__name__)

#: Bumped when the cached layout or the graph construction changes.
CACHE_VERSION = 1
_CHUNK = 2048


@dataclass
class GraphSet:
    """Graphs of every structure of a store (status-0 ones; others have no atoms here).

    Attributes:
        ids: [M] structure ids.
        status: [M] uint8 `deepergat.contract.Status` (0 = usable).
        n_atoms: [M] int64 atoms of each usable structure (0 where status ≠ 0).
        atom_offset: [M] int64 first row of each structure in the atom arrays.
        atomic_numbers: [N] int64.
        neighbors: [N, K] int32 neighbor index *within the structure*; slot 0 is the self loop,
            empty slots point at the atom itself.
        distances: [N, K] float32 Å (0 in the self and empty slots).
        degree: [N] int32 real slots per atom (self loop included); slots [0, degree) are real.
        targets: name -> [M] float64.
        units: name -> units.
        digest: the store's content digest. cutoff, max_neighbors, graph: graph settings.
        source: the store path.
    """

    ids: list[str]
    status: np.ndarray
    n_atoms: np.ndarray
    atom_offset: np.ndarray
    atomic_numbers: np.ndarray
    neighbors: np.ndarray
    distances: np.ndarray
    degree: np.ndarray
    digest: str
    cutoff: float
    max_neighbors: int
    graph: GraphConstruction = DEFAULT_GRAPH
    targets: dict[str, np.ndarray] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    source: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def usable(self) -> np.ndarray:
        """[M'] int64 rows whose status is 0 (`Status.OK`)."""
        return np.flatnonzero(self.status == Status.OK)

    def elements(self, rows: np.ndarray | None = None) -> list[int]:
        """Sorted atomic numbers present in the given rows (all usable rows by default)."""
        if rows is None:
            return sorted(int(z) for z in np.unique(self.atomic_numbers))
        return sorted(int(z) for z in np.unique(self.atomic_numbers[self._atom_rows(rows)]))

    def _atom_rows(self, rows: np.ndarray) -> np.ndarray:
        n = self.n_atoms[rows]
        total = int(n.sum())
        first = np.cumsum(n) - n
        return np.repeat(self.atom_offset[rows] - first, n) + np.arange(total)

    def max_distance(self, rows: np.ndarray | None = None) -> float:
        """Longest edge, Å, of the given usable rows (all by default); 0 without edges."""
        atoms = self._atom_rows(self.usable if rows is None else np.asarray(rows, np.int64))
        if not len(atoms):
            return 0.0
        return float(self.distances[atoms].max())

    def batch(self, rows: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Padded model inputs of the given usable rows, in the given order.

        Returns:
            name -> numpy array: atomic_numbers [N] int64, neighbors [N, K] int64, distances
            [N, K] float32, neighbor_mask [N, K] bool, crystal_atoms [C, A] int64, crystal_mask
            [C, A] bool, batch [N] int64, with K and A the batch's largest degree and crystal.
        """
        rows = np.asarray(rows, dtype=np.int64)
        n = self.n_atoms[rows]
        if len(rows) == 0 or (n == 0).any():
            raise ValueError("batch() takes a non-empty list of usable rows")
        atoms = self._atom_rows(rows)
        first = np.cumsum(n) - n  # first atom of each crystal in the batch
        degree = self.degree[atoms]
        k = int(degree.max())
        slots = np.arange(k)
        owner = np.repeat(np.arange(len(rows)), n)
        neighbors = self.neighbors[atoms, :k].astype(np.int64) + first[owner][:, None]
        a = int(n.max())
        pos = np.arange(a)[None, :]
        crystal_mask = pos < n[:, None]
        return {
            "atomic_numbers": self.atomic_numbers[atoms],
            "neighbors": neighbors,
            "distances": self.distances[atoms, :k],
            "neighbor_mask": slots[None, :] < degree[:, None],
            "crystal_atoms": np.where(crystal_mask, first[:, None] + pos, first[:, None]),
            "crystal_mask": crystal_mask,
            "batch": owner.astype(np.int64),
        }


    @property
    def host(self) -> GraphSet:
        """This graph set (a `DeviceGraphs` gives the one it holds): the host arrays."""
        return self

    def tensors(self, rows: Sequence[int] | np.ndarray, device: Any = "cpu") -> dict[str, Any]:
        """`batch` as tensors on ``device`` (cut by numpy, then copied)."""
        return to_tensors(self.batch(rows), device)

    def values(self, values: np.ndarray, rows: Sequence[int] | np.ndarray,
               device: Any = "cpu") -> Any:
        """``values[rows]`` of a per-structure array (targets, atom counts) as a float32 tensor
        on ``device``."""
        import torch

        return torch.as_tensor(values[np.asarray(rows)], dtype=torch.float32, device=device)


class DeviceGraphs:
    """A `GraphSet`'s arrays as tensors on one device, and its batches cut there: training
    prepares its graphs once, so a step on a GPU copies only its rows (a few hundred integers)
    to the device, not its padded inputs.

    `batch` gives what ``to_tensors(graphs.batch(rows), device)`` gives, equal element for
    element; `tensors`, `values` and `host` answer as `GraphSet`'s do, so a training loop takes
    either. The batch's sizes (atoms, padded width K, largest crystal A) come from host
    arrays, so cutting a batch never waits for the device.

    Args:
        graphs: the graph set (kept: ``graphs`` for its ids, targets and host arrays).
        device: a torch device.
    """

    def __init__(self, graphs: GraphSet, device: Any) -> None:
        import torch

        self.graphs = graphs
        self.device = torch.device(device)

        def put(a: np.ndarray) -> Any:
            return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

        self.n_atoms = put(graphs.n_atoms.astype(np.int64))
        self.atom_offset = put(graphs.atom_offset.astype(np.int64))
        self.atomic_numbers = put(graphs.atomic_numbers)
        self.neighbors = put(graphs.neighbors)
        self.distances = put(graphs.distances)
        self.degree = put(graphs.degree)
        self._values: dict[int, tuple[np.ndarray, Any]] = {}  # id → (host array, device copy)
        # each structure's widest atom (self loop included), for the batch's K on the host
        self._width = np.zeros(len(graphs), dtype=np.int64)
        used = np.flatnonzero(graphs.n_atoms > 0)
        if len(used):
            order = used[np.argsort(graphs.atom_offset[used], kind="stable")]
            self._width[order] = np.maximum.reduceat(
                graphs.degree.astype(np.int64), graphs.atom_offset[order])

    @staticmethod
    def nbytes(graphs: GraphSet) -> int:
        """Device bytes the arrays of ``graphs`` take."""
        return int(sum(a.nbytes for a in (graphs.n_atoms, graphs.atom_offset,
                                          graphs.atomic_numbers, graphs.neighbors,
                                          graphs.distances, graphs.degree)))

    def index(self, rows: Sequence[int] | np.ndarray) -> Any:
        """``rows`` as an int64 tensor on the device. On a GPU the copy goes through pinned
        memory without waiting: a copy from ordinary host memory would first wait for every
        step already queued on the device."""
        import torch

        r = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
        if self.device.type == "cuda":
            return r.pin_memory().to(self.device, non_blocking=True)
        return r.to(self.device)

    @property
    def host(self) -> GraphSet:
        """The `GraphSet` on the host these arrays came from."""
        return self.graphs

    def tensors(self, rows: Sequence[int] | np.ndarray, device: Any = None) -> dict[str, Any]:
        """`batch` (``device`` is this object's own; accepted as `GraphSet.tensors` takes it)."""
        return self.batch(rows)

    def values(self, values: np.ndarray, rows: Sequence[int] | np.ndarray,
               device: Any = None) -> Any:
        """``values[rows]`` (a per-structure array: targets, atom counts) as float32 on the
        device, from a copy of ``values`` put there once (``device`` as in `tensors`)."""
        import torch

        held = self._values.get(id(values))
        if held is None or held[0] is not values:
            held = (values, torch.as_tensor(np.asarray(values, dtype=np.float32),
                                            device=self.device))
            self._values[id(values)] = held
        return held[1][self.index(rows)]

    def batch(self, rows: Sequence[int] | np.ndarray) -> dict[str, Any]:
        """Padded model inputs of the given usable rows, in the given order, as tensors on the
        device (names, shapes and dtypes as `GraphSet.batch`)."""
        import torch

        rows = np.ascontiguousarray(rows, dtype=np.int64)
        n = self.graphs.n_atoms[rows]
        if len(rows) == 0 or (n == 0).any():
            raise ValueError("batch() takes a non-empty list of usable rows")
        total, k, a = int(n.sum()), int(self._width[rows].max()), int(n.max())
        dev = self.device
        r = self.index(rows)
        counts = self.n_atoms[r]
        first = torch.cumsum(counts, 0) - counts  # first atom of each crystal in the batch
        owner = torch.repeat_interleave(torch.arange(len(rows), device=dev), counts,
                                        output_size=total)
        start = self.atom_offset[r] - first
        atoms = start[owner] + torch.arange(total, device=dev)
        degree = self.degree[atoms]
        pos = torch.arange(a, device=dev)[None, :]
        crystal_mask = pos < counts[:, None]
        return {
            "atomic_numbers": self.atomic_numbers[atoms],
            "neighbors": self.neighbors[atoms, :k].to(torch.int64) + first[owner][:, None],
            "distances": self.distances[atoms, :k],
            "neighbor_mask": torch.arange(k, device=dev)[None, :] < degree[:, None],
            "crystal_atoms": torch.where(crystal_mask, first[:, None] + pos, first[:, None]),
            "crystal_mask": crystal_mask,
            "batch": owner,
        }


def to_tensors(inputs: dict[str, np.ndarray], device: Any = "cpu") -> dict[str, Any]:
    """numpy model inputs → torch tensors on ``device``."""
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in inputs.items()}


def require_finite(values: np.ndarray, g: GraphSet, rows: np.ndarray, *, what: str,
                   axis: int = 0) -> None:
    """Refuse model outputs that are not finite numbers (a model whose output overflowed
    float32 on some structure), naming the structures.

    Args:
        values: outputs for ``rows`` along ``axis`` ([n, T] predictions; [K, n, T] members').
        g, rows: the structures (usable rows of a graph set).
        what: the model, for the message (``fold-2/best.ckpt``).
        axis: the axis of ``values`` that runs over ``rows``.

    Raises:
        DeepergatError: a value that is NaN or infinite.
    """
    v = np.moveaxis(np.asarray(values), axis, 0).reshape(len(rows), -1)
    bad = ~np.isfinite(v).all(axis=1)
    if bad.any():
        ids = [g.ids[r] for r in rows[bad]]
        more = f" and {len(ids) - 5} more" if len(ids) > 5 else ""
        raise DeepergatError(
            f"{what}: predicts a value that is not a finite number for {len(ids)} structures "
            f"(ids {', '.join(ids[:5])}{more}): its output overflowed float32; the targets' "
            "scale or the learning rate is likely extreme")


def cache_key(digest: str, cutoff: float, max_neighbors: int,
              graph: GraphConstruction = DEFAULT_GRAPH) -> str:
    """sha256 over the store digest, the graph settings and the cache version."""
    text = f"{digest}|cutoff={float(cutoff)!r}|max_neighbors={int(max_neighbors)}"
    if graph != DEFAULT_GRAPH:  # periodic caches written before the setting keep their key
        text += f"|graph={check_graph(graph)}"
    rule = translation_rule(graph)  # atoms related by a pure translation count once
    if rule:
        text += (f"|translations={rule['translation_tolerance']!r}/"
                 f"{rule['translation_max_atoms']}/group")
    return hashlib.sha256(f"{text}|v{CACHE_VERSION}".encode()).hexdigest()


def default_cache_dir(store_path: Path) -> Path:
    """The store's folder when writable, else ``$XDG_CACHE_HOME/deepergat`` (~/.cache)."""
    folder = store_path.resolve().parent
    if os.access(folder, os.W_OK):
        return folder
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "deepergat"


def cache_path(store_path: Path, digest: str, cutoff: float, max_neighbors: int,
               cache_dir: str | os.PathLike[str] | None = None,
               graph: GraphConstruction = DEFAULT_GRAPH) -> Path:
    """Where the graphs of a store are cached for these settings."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir(store_path)
    key = cache_key(digest, cutoff, max_neighbors, graph)[:16]
    return folder / f"{store_path.stem}.graphs-{key}.npz"


def _build(store: Store, *, cutoff: float, max_neighbors: int, graph: GraphConstruction,
           progress: Callable[[int], None] | None) -> dict[str, np.ndarray]:
    m = len(store)
    status = np.zeros(m, np.uint8)
    n_atoms = np.zeros(m, np.int64)
    z_parts, nb_parts, d_parts, deg_parts = [], [], [], []
    for chunk in store.iter_chunks(_CHUNK):
        g = build_inputs(chunk, cutoff=cutoff, max_neighbors=max_neighbors, graph=graph,
                         max_z=MAX_Z, overlap_threshold=DEFAULT_OVERLAP_THRESHOLD)
        status[chunk.index] = g.status
        rows = chunk.index[g.rows]
        inp = g.inputs
        counts = chunk.n_atoms[g.rows]
        n_atoms[rows] = counts
        first = (np.cumsum(counts) - counts)[inp["batch"]]
        z_parts.append(inp["atomic_numbers"])
        nb_parts.append((inp["neighbors"] - first[:, None]).astype(np.int32))
        d_parts.append(inp["distances"])
        deg_parts.append(inp["neighbor_mask"].sum(1).astype(np.int32))
        if progress is not None:
            progress(len(chunk))
    k = max((p.shape[1] for p in nb_parts), default=1)

    def widen(a: np.ndarray, fill: np.ndarray | float) -> np.ndarray:
        if a.shape[1] == k:
            return a
        out = np.empty((a.shape[0], k), a.dtype)
        out[:, : a.shape[1]] = a
        out[:, a.shape[1] :] = fill
        return out

    neighbors = np.concatenate(
        [widen(p, p[:, :1]) for p in nb_parts] if nb_parts else [np.zeros((0, 1), np.int32)]
    )
    distances = np.concatenate(
        [widen(p, 0.0) for p in d_parts] if d_parts else [np.zeros((0, 1), np.float32)]
    )
    return {
        "status": status,
        "n_atoms": n_atoms,
        "atom_offset": np.cumsum(n_atoms) - n_atoms,
        "atomic_numbers": np.concatenate(z_parts) if z_parts else np.zeros(0, np.int64),
        "neighbors": neighbors,
        "distances": distances,
        "degree": np.concatenate(deg_parts) if deg_parts else np.zeros(0, np.int32),
    }


def load_graphs(
    path: str | os.PathLike[str],
    *,
    cutoff: float = DEFAULT_CUTOFF,
    max_neighbors: int = DEFAULT_MAX_NEIGHBORS,
    graph: GraphConstruction = DEFAULT_GRAPH,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    progress: Callable[[int], None] | None = None,
) -> GraphSet:
    """Graphs of every structure of a store, from the cache when its key matches.

    Args:
        path: the structure store.
        cutoff, max_neighbors, graph: graph settings (Å, count, construction).
        cache_dir: cache folder (default: `default_cache_dir`).
        use_cache: read and write the cache.
        progress: called with the number of structures done, while building.

    Raises:
        DeepergatError: the store cannot be read.
    """
    path = Path(path)
    with Store(path) as store:
        digest = store.compute_digest()  # the arrays as they are now, not as packed
        if store.content_digest and digest != store.content_digest:
            log.warning("%s: its arrays changed since it was packed (content digest %s, "
                        "recorded %s); graphs are keyed by the content as it is now", path,
                        digest[:12], store.content_digest[:12])
        ids = store.ids()
        units = store.targets
        targets = {name: store.target(name) for name in units}
        arrays: dict[str, np.ndarray] | None = None
        graph = check_graph(graph)
        cfile = cache_path(path, digest, cutoff, max_neighbors, cache_dir, graph)
        key = cache_key(digest, cutoff, max_neighbors, graph)
        if use_cache and digest and cfile.is_file():
            try:
                with np.load(cfile) as f:
                    if str(f["key"]) == key:
                        arrays = {k: f[k] for k in f.files if k != "key"}
                        log.info("graphs of %s from cache %s", path, cfile)
            except (OSError, ValueError, KeyError) as e:
                log.warning("ignoring unreadable graph cache %s: %s", cfile, e)
        if arrays is None:
            log.info("building graphs of %s (%d structures)", path, len(store))
            arrays = _build(store, cutoff=cutoff, max_neighbors=max_neighbors, graph=graph,
                            progress=progress)
            if use_cache and digest:
                _write_cache(cfile, arrays, key)
    return GraphSet(
        ids=ids, digest=digest, cutoff=float(cutoff), max_neighbors=int(max_neighbors),
        graph=graph, targets=targets, units=units, source=str(path), **arrays,
    )


def _write_cache(cfile: Path, arrays: dict[str, np.ndarray], key: str) -> None:
    """Write the cache whole; a folder that refuses it only costs the next run a rebuild."""
    try:
        cfile.parent.mkdir(parents=True, exist_ok=True)
        # A temporary name of its own: ranks or array tasks may build one cache at once.
        fd, tmp = tempfile.mkstemp(dir=cfile.parent, prefix=cfile.name, suffix=".tmp")
        os.close(fd)
        with atomic_open(cfile, "wb", tmp=tmp) as f:
            np.savez(f, key=np.array(key), **arrays)
        log.info("cached graphs in %s", cfile)
    except OSError as e:
        log.warning("could not write graph cache %s: %s", cfile, e)
