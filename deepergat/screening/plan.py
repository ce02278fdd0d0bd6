"""Chunk planning: runs of ``chunk_size`` structures, and static shards balanced by atom count.

A chunk is the unit of work, of commit and of resume: chunk k is structures
[k · chunk_size, min((k + 1) · chunk_size, M)). The plan depends only on M and the chunk size,
so a rerun with the same chunk size finds the same chunks whatever the rank or shard count.

Array shards (``shard="I/N"`` or a SLURM array task) take a static share of the chunks: the
chunks are dealt largest first (by atom count) to the shard with the fewest atoms so far, ties
to the lowest shard, which for equal chunks is plain interleaving (chunk k → shard k mod N).
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from deepergat.errors import DeepergatError, SettingError

from .failures import literal

__all__ = ["Plan", "make_plan", "parse_shard", "shard_chunks"]


@dataclass(frozen=True)
class Plan:
    """The chunks of a screen.

    Attributes:
        n_structures: M, structures screened.
        chunk_size: structures per chunk (the last one may be shorter).
        atoms: [n_chunks] int64 atoms per chunk.
        rows: [M] int64 store rows screened, ascending (a subset chosen from an earlier
            screen, `deepergat.screening.subset`), or None: every row, position = row.
    """

    n_structures: int
    chunk_size: int
    atoms: np.ndarray
    rows: np.ndarray | None = None

    @property
    def n_chunks(self) -> int:
        return len(self.atoms)

    def bounds(self, k: int) -> tuple[int, int]:
        """Positions [a, b) of chunk k among the structures screened."""
        if not 0 <= k < self.n_chunks:
            raise IndexError(f"chunk {k} outside 0..{self.n_chunks - 1}")
        a = k * self.chunk_size
        return a, min(a + self.chunk_size, self.n_structures)

    def store_rows(self, a: int, b: int) -> np.ndarray:
        """[b - a] int64 store rows of positions [a, b)."""
        return np.arange(a, b, dtype=np.int64) if self.rows is None else self.rows[a:b]

    def count(self, chunks: Iterable[int]) -> int:
        """Structures in the given chunks (each counted once per mention)."""
        return sum(b - a for a, b in map(self.bounds, chunks))


def make_plan(n_atoms: np.ndarray, chunk_size: int, *, rows: np.ndarray | None = None) -> Plan:
    """Cut M structures into chunks of ``chunk_size``.

    Args:
        n_atoms: [M] atoms per structure screened.
        chunk_size: structures per chunk, ≥ 1.
        rows: [M] their store rows, ascending (None: every row of the store).

    Returns:
        The `Plan`.

    Raises:
        SettingError: chunk size below 1.
    """
    if chunk_size < 1:
        raise SettingError(f"{{chunk_size}} must be at least 1, got {chunk_size}")
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    m = len(n_atoms)
    starts = np.arange(0, m, chunk_size)
    atoms = np.add.reduceat(n_atoms, starts) if m else np.zeros(0, np.int64)
    return Plan(n_structures=m, chunk_size=int(chunk_size), atoms=atoms.astype(np.int64),
                rows=None if rows is None else np.asarray(rows, dtype=np.int64))


def shard_chunks(atoms: np.ndarray, index: int, count: int) -> np.ndarray:
    """The chunks of shard ``index`` of ``count``, balanced by atom count.

    Largest chunk first (ties: lower chunk first) to the shard with the fewest atoms so far
    (ties: lower shard). A pure function of the atom counts: every array task computes the same
    assignment on its own.

    Args:
        atoms: [n_chunks] atoms per chunk.
        index: zero-based shard, 0 ≤ index < count.
        count: number of shards N.

    Returns:
        [k] int64 chunk numbers of the shard, ascending.
    """
    if not 0 <= index < count:
        raise DeepergatError(f"shard {index}/{count}: the index must lie in 0..{count - 1}")
    atoms = np.asarray(atoms, dtype=np.int64)
    order = np.lexsort((np.arange(len(atoms)), -atoms))
    heap = [(0, s) for s in range(count)]
    mine: list[int] = []
    for k in order:
        load, s = heapq.heappop(heap)
        if s == index:
            mine.append(int(k))
        heapq.heappush(heap, (load + int(atoms[k]), s))
    return np.array(sorted(mine), dtype=np.int64)


_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` → (I, N), zero-based I.

    Raises:
        SettingError: not of the form I/N, N < 1 or I outside [0, N).
    """
    m = _SHARD.match(text)
    if not m:
        raise SettingError(f"{{shard}} {literal(repr(text))}: expected I/N with a zero-based I, "
                           "e.g. 0/4")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise SettingError(
            f"{{shard}} {literal(text)}: I must lie in 0..N-1 and N must be at least 1 "
            "(zero-based: the shards of 4 are 0/4 .. 3/4)"
        )
    return i, n


