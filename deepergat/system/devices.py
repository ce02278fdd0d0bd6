"""Which device a process uses, and how many CPU cores: one resolver for training, screening
and `deepergat.export.load`.

One process per GPU: a process takes device (node-local rank mod visible devices). Under
SLURM's one-GPU-per-task binding every process sees one device, so that is device 0 of what it
sees. The visible devices are counted without torch: ``CUDA_VISIBLE_DEVICES`` when set, else the
CUDA driver (``libcuda``) through ctypes, else none. Device names are ``auto``, ``cpu``,
``cuda`` or torch's ``cuda:N``.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Mapping
from typing import Literal, get_args

from deepergat.errors import DeepergatError

__all__ = [
    "DEFAULT_DEVICE",
    "DEVICE_CHOICES",
    "DeviceChoice",
    "check_device",
    "cpus_per_rank",
    "parse_device",
    "pick_device",
    "visible_gpus",
]

log = logging.getLogger(__name__)

DeviceChoice = Literal["auto", "cpu", "cuda"]
#: The ``--device`` choices of every command (train, predict, evaluate, screen).
DEVICE_CHOICES: tuple[DeviceChoice, ...] = get_args(DeviceChoice)
DEFAULT_DEVICE: DeviceChoice = "auto"


def check_device(name: str, *, what: str = "device") -> DeviceChoice:
    """``name`` when it is one of `DEVICE_CHOICES`.

    Raises:
        DeepergatError: any other name (``what`` names the option in the message).
    """
    if name not in DEVICE_CHOICES:
        raise DeepergatError(f"{what} must be {_spelled(DEVICE_CHOICES)}, got {name!r}")
    return name  # type: ignore[return-value]


def _spelled(names: tuple[str, ...]) -> str:
    quoted = [repr(n) for n in names]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


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
    choice = check_device(choice, what="--device")
    if choice == "cpu" or (choice == "auto" and n_gpus == 0):
        return "cpu", 0
    if n_gpus == 0:
        raise DeepergatError(
            "--device cuda: no CUDA device is visible (CUDA_VISIBLE_DEVICES, driver); use "
            "--device cpu or auto"
        )
    return choice, local_rank % n_gpus


def parse_device(device: str, device_id: int | None = None) -> tuple[DeviceChoice, int]:
    """``device`` and ``device_id`` with ``"cuda:N"`` split into (``"cuda"``, N).

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        device_id: CUDA ordinal; None: N from ``"cuda:N"``, else 0.

    Returns:
        (``"auto"``, ``"cpu"`` or ``"cuda"``; the ordinal).

    Raises:
        DeepergatError: an unknown device, a negative ``device_id``, or ``"cuda:N"`` with a
            different ``device_id``.
    """
    name, sep, ordinal = str(device).partition(":")
    if sep and name == "cuda" and ordinal.isascii() and ordinal.isdigit():
        if device_id is not None and device_id != int(ordinal):
            raise DeepergatError(f"device {device!r} contradicts device_id={device_id}")
        return "cuda", int(ordinal)
    if device not in DEVICE_CHOICES:
        raise DeepergatError(
            f"device must be {_spelled((*DEVICE_CHOICES, 'cuda:N'))}, got {device!r}"
        )
    if device_id is not None and device_id < 0:
        raise DeepergatError(f"device_id must be >= 0, got {device_id}")
    return device, device_id or 0  # type: ignore[return-value]


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
