"""Ranks: one process, or MPI ranks sharing chunks dynamically.

`connect` returns `SingleProcess` unless the launcher environment (`deepergat.launch`) says this
process is one of several; only then is mpi4py imported (single-process runs need no MPI).

Under MPI the ranks take chunks from a shared list with a one-sided atomic counter: rank 0
exposes one int64 in an RMA window and every rank's reader does ``Fetch_and_op(+1)`` on it when
it wants its next chunk, so a rank never waits for another and none idles while chunks remain.
A second window on rank 0 sums done / bad / flagged counts for the one aggregated progress bar.
Both windows stay in one passive-target epoch (``Lock_all``) for the run; each process serializes
its own threads' operations with a lock, and rank 0's progress thread keeps MPI progressing while
its main thread is busy in the predictor.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from deepergat.errors import DeepergatError
from deepergat.system.launch import launch_info

__all__ = ["ChunkSource", "MpiRanks", "Progress", "Ranks", "SingleProcess", "connect"]

log = logging.getLogger(__name__)

#: Progress counters: structures done, bad (status ≠ 0), flagged.
N_COUNTERS = 3


class ChunkSource:
    """Hands out the chunks of a fixed list, each exactly once, thread-safe.

    Args:
        todo: the chunk numbers, in hand-out order.
    """

    def __init__(self, todo: Sequence[int]) -> None:
        self.todo = [int(k) for k in todo]
        self._next = 0
        self._lock = threading.Lock()

    def _ticket(self) -> int:
        with self._lock:
            i = self._next
            self._next += 1
            return i

    def __call__(self) -> int | None:
        """The next chunk, or None when all are handed out."""
        i = self._ticket()
        return self.todo[i] if i < len(self.todo) else None


class Progress:
    """done / bad / flagged counters summed over ranks (in-process for one rank)."""

    def __init__(self) -> None:
        self._v = np.zeros(N_COUNTERS, dtype=np.int64)
        self._lock = threading.Lock()

    def add(self, done: int, bad: int, flagged: int) -> None:
        with self._lock:
            self._v += (done, bad, flagged)

    def totals(self) -> tuple[int, int, int]:
        with self._lock:
            d, b, f = (int(x) for x in self._v)
        return d, b, f


class Ranks:
    """The processes of a run; the single-process base implementation.

    Attributes:
        rank, size: this process and the number of processes.
        local_rank, local_size: the same on this node.
    """

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank."""

    def bcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        return obj

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (None elsewhere)."""
        return [obj]

    def chunk_source(self, todo: Sequence[int]) -> Callable[[], int | None]:
        """A callable giving this rank its next chunk of ``todo`` (same list on every rank)."""
        return ChunkSource(todo)

    def progress(self) -> Progress:
        """Counters summed over ranks; `Progress.totals` is meaningful on rank 0."""
        return Progress()

    def abort(self, code: int) -> None:
        """End every rank (single process: nothing to do; the caller exits)."""

    def close(self) -> None:
        """Release windows and communicators (collective)."""

    def describe(self) -> str:
        return "1 process"


class SingleProcess(Ranks):
    """One process, no MPI."""


class _Window:
    """n int64 on rank 0 in an RMA window, in a passive-target epoch for the whole run."""

    def __init__(self, mpi: Any, comm: Any, n: int) -> None:
        self._mpi = mpi
        item = np.dtype(np.int64).itemsize
        self.win = mpi.Win.Allocate(n * item if comm.rank == 0 else 0, item, comm=comm)
        if comm.rank == 0:
            np.frombuffer(self.win.tomemory(), dtype=np.int64)[:] = 0
        comm.Barrier()
        self.win.Lock_all()
        self._lock = threading.Lock()
        self.n = n

    def fetch_add(self, value: np.ndarray) -> np.ndarray:
        """Atomically add ``value`` ([1] or [n] int64) at rank 0; the values before the add."""
        mpi = self._mpi
        out = np.zeros_like(value)
        with self._lock:
            if len(value) == 1:
                self.win.Fetch_and_op(value, out, 0, 0, mpi.SUM)
            else:
                self.win.Get_accumulate(value, out, 0, op=mpi.SUM)
            self.win.Flush(0)
        return out

    def read(self) -> np.ndarray:
        mpi = self._mpi
        out = np.zeros(self.n, dtype=np.int64)
        with self._lock:
            self.win.Get_accumulate(np.zeros(self.n, np.int64), out, 0, op=mpi.NO_OP)
            self.win.Flush(0)
        return out

    def free(self) -> None:
        self.win.Unlock_all()
        self.win.Free()


class _MpiProgress(Progress):
    def __init__(self, window: _Window) -> None:
        super().__init__()
        self._w = window

    def add(self, done: int, bad: int, flagged: int) -> None:
        self._w.fetch_add(np.array([done, bad, flagged], dtype=np.int64))

    def totals(self) -> tuple[int, int, int]:
        d, b, f = (int(x) for x in self._w.read())
        return d, b, f


class _MpiChunkSource:
    def __init__(self, window: _Window, todo: Sequence[int]) -> None:
        self._w = window
        self.todo = [int(k) for k in todo]
        self._one = np.ones(1, dtype=np.int64)

    def __call__(self) -> int | None:
        i = int(self._w.fetch_add(self._one)[0])
        return self.todo[i] if i < len(self.todo) else None


class MpiRanks(Ranks):
    """MPI ranks through mpi4py (thread level MULTIPLE: reader, writer and progress threads
    make MPI calls).

    Raises:
        DeepergatError: the launcher started several tasks but MPI sees one process each (a
            missing PMI plugin: ``srun --mpi=pmi2``), or MPI lacks thread support.
    """

    def __init__(self, expected_size: int) -> None:
        import mpi4py

        mpi4py.rc.thread_level = "multiple"
        from mpi4py import MPI

        self._mpi = MPI
        if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
            raise DeepergatError(
                "the MPI library does not provide MPI_THREAD_MULTIPLE, which deepergat-screen "
                "needs; use an MPI built with thread support (e.g. the mpich wheel)"
            )
        self.comm = MPI.COMM_WORLD.Dup()
        self.rank = self.comm.rank
        self.size = self.comm.size
        if self.size != expected_size:
            raise DeepergatError(
                f"the launcher started {expected_size} tasks but MPI sees {self.size} process"
                f"{'es' if self.size > 1 else ''}: mpi4py's MPI does not match the launcher "
                "(under SLURM use `srun --mpi=pmi2` or the site's PMI plugin; see slurm/README)"
            )
        self.local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = self.local.rank
        self.local_size = self.local.size
        self._windows: list[_Window] = []

    def barrier(self) -> None:
        self.comm.Barrier()

    def bcast(self, obj: Any) -> Any:
        return self.comm.bcast(obj, root=0)

    def gather(self, obj: Any) -> list[Any] | None:
        return self.comm.gather(obj, root=0)

    def _window(self, n: int) -> _Window:
        w = _Window(self._mpi, self.comm, n)
        self._windows.append(w)
        return w

    def chunk_source(self, todo: Sequence[int]) -> Callable[[], int | None]:
        return _MpiChunkSource(self._window(1), todo)

    def progress(self) -> Progress:
        return _MpiProgress(self._window(N_COUNTERS))

    def abort(self, code: int) -> None:
        self.comm.Abort(code)

    def close(self) -> None:
        self.comm.Barrier()
        for w in self._windows:
            w.free()
        self._windows.clear()

    def describe(self) -> str:
        return f"{self.size} MPI ranks"


def connect(env: Mapping[str, str] | None = None) -> Ranks:
    """`MpiRanks` when the launcher started several processes, else `SingleProcess`.

    A SLURM batch step (``sbatch --ntasks=4`` running the command directly, without ``srun``)
    is one process: only an ``srun`` step (``SLURM_STEP_NUM_TASKS``) or an MPI launcher
    (``mpiexec``, also inside an allocation) counts.
    """
    info = launch_info(os.environ if env is None else env)  # the one reader of it
    size = 1 if info.launcher == "torchrun" else info.world_size
    if size <= 1:
        return SingleProcess()
    return MpiRanks(size)
