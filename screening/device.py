"""Which device and how many CPU cores a screening rank uses.

One rank per GPU: a rank takes device (node-local rank mod visible devices). Under SLURM's
one-GPU-per-task binding every rank sees one device, so that is device 0 of what it sees. The
visible devices are counted without torch: ``CUDA_VISIBLE_DEVICES`` when set, else the CUDA
driver (``libcuda``) through ctypes, else none.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Mapping
from typing import Literal

from deepergat.errors import DeepergatError

__all__ = ["DeviceChoice", "cpus_per_rank", "pick_device", "visible_gpus"]

log = logging.getLogger(__name__)

DeviceChoice = Literal["auto", "cpu", "cuda"]


def visible_gpus(env: Mapping[str, str] | None = None) -> int:
    """Number of CUDA devices this process can use (0 without a driver)."""
    env = os.environ if env is None else env
    vis = env.get("CUDA_VISIBLE_DEVICES")
    if vis is not None:
        entries = [v for v in vis.split(",") if v.strip() and v.strip() != "-1"]
        if not entries:
            return 0
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    try:
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
    except AttributeError:  # pragma: no cover - not a CUDA driver library
        return 0
    n = int(count.value)
    return min(n, len(entries)) if vis is not None else n


def pick_device(choice: str, local_rank: int, n_gpus: int) -> tuple[str, int]:
    """The device arguments for `deepergat.export.load`.

    Args:
        choice: ``auto`` (a GPU when one is visible, else the CPU), ``cpu`` or ``cuda``.
        local_rank: this rank's index on its node.
        n_gpus: visible devices (`visible_gpus`).

    Returns:
        (``device``, ``device_id``): ``("cpu", 0)``, or ``(choice, local_rank mod n_gpus)`` when
        a GPU is visible (``auto`` lets the loader fall back to the CPU when the CUDA libraries
        are missing).

    Raises:
        DeepergatError: ``cuda`` asked for but no device visible; an unknown choice.
    """
    if choice not in ("auto", "cpu", "cuda"):
        raise DeepergatError(f"--device {choice!r}: expected auto, cpu or cuda")
    if choice == "cpu" or (choice == "auto" and n_gpus == 0):
        return "cpu", 0
    if n_gpus == 0:
        raise DeepergatError(
            "--device cuda: no CUDA device is visible (CUDA_VISIBLE_DEVICES, driver); use "
            "--device cpu or auto"
        )
    return choice, local_rank % n_gpus


def cpus_per_rank(local_size: int = 1) -> int:
    """CPU cores this rank should use.

    When the launcher bound the rank to fewer cores than the machine has (SLURM
    ``--cpus-per-task``, ``mpiexec --bind-to``), those cores; when every rank sees the whole
    machine, an equal share of it.
    """
    try:
        mine = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        mine = os.cpu_count() or 1
    total = os.cpu_count() or mine
    if mine >= total and local_size > 1:
        return max(1, mine // local_size)
    return max(1, mine)
