"""The one place that reads the launcher environment (torchrun, SLURM ``srun``, MPI launchers).

`launch_info` maps the variables each launcher sets to rank, local rank, world size and the
rendezvous address; `setup_distributed` starts ``torch.distributed`` from it (NCCL on GPUs,
gloo on CPUs). Nothing else in the package reads these variables.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass

from deepergat.errors import DeepergatError

__all__ = [
    "LaunchInfo",
    "claim_token",
    "first_host",
    "launch_info",
    "requeue_slurm_job",
    "setup_distributed",
    "shard_from_env",
    "teardown_distributed",
]

log = logging.getLogger(__name__)

_DEFAULT_PORT = 29500


@dataclass(frozen=True)
class LaunchInfo:
    """Where this process sits in a job.

    Attributes:
        rank, local_rank, world_size: global rank, rank on this node, number of processes.
        master_addr, master_port: rendezvous for ``torch.distributed`` (env:// init).
        launcher: ``"torchrun"``, ``"slurm"``, ``"mpi"`` or ``"none"``.
        slurm_job_id: the SLURM job id when inside a SLURM job, else None.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = _DEFAULT_PORT
    launcher: str = "none"
    slurm_job_id: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device_index(self, visible_devices: int) -> int:
        """Device for this process: node-local rank modulo the visible devices."""
        return self.local_rank % visible_devices if visible_devices > 0 else 0


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    """The launcher variable ``name`` as a whole number (``default`` when unset); a value that
    is not one is a one-line error naming the variable."""
    value = env.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise DeepergatError(f"the launcher variable {name}={value!r} is not a number") from None


def _need(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    """`_int`, and a one-line error when the variable is unset and has no default."""
    value = _int(env, name, default)
    if value is None:
        raise DeepergatError(f"the launcher variable {name} is not set (a launcher set its "
                             "siblings); check the job's environment")
    return value


def first_host(nodelist: str) -> str:
    """First host of a SLURM node list: ``"gpu[03-05,07],cpu1"`` → ``"gpu03"``."""
    nodelist = nodelist.strip()
    m = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist)
    if not m:
        return nodelist
    prefix, _, ranges = m.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def launch_info(env: Mapping[str, str] | None = None) -> LaunchInfo:
    """Read rank, local rank, world size and rendezvous from the launcher's variables.

    Order: torchrun (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), then an ``srun``
    step (SLURM_STEP_NUM_TASKS tasks; SLURM_PROCID, SLURM_LOCALID, the first host of the step's
    node list; port from MASTER_PORT or 29500 + the job id mod 1000), then Open MPI
    (OMPI_COMM_WORLD_*) and PMI (PMI_RANK, PMI_SIZE, MPI_LOCALRANKID); else a single process.

    A batch script run without ``srun`` (``sbatch --ntasks=4`` calling the command directly) is
    one process: its SLURM_NTASKS and SLURM_PROCID describe the allocation, not a launch, and
    only an srun step sets SLURM_STEP_NUM_TASKS.
    """
    env = os.environ if env is None else env
    job = env.get("SLURM_JOB_ID")

    def port(default: int) -> int:
        return _need(env, "MASTER_PORT", default)

    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchInfo(
            rank=_need(env, "RANK"), local_rank=_need(env, "LOCAL_RANK", 0),
            world_size=_need(env, "WORLD_SIZE"),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"), master_port=port(_DEFAULT_PORT),
            launcher="torchrun", slurm_job_id=job,
        )
    step_tasks = _int(env, "SLURM_STEP_NUM_TASKS")
    if "SLURM_PROCID" in env and step_tasks is not None and step_tasks > 1:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "127.0.0.1")
        default_port = _DEFAULT_PORT + (int(job) % 1000 if job and job.isdigit() else 0)
        return LaunchInfo(
            rank=_need(env, "SLURM_PROCID"), local_rank=_need(env, "SLURM_LOCALID", 0),
            world_size=step_tasks,
            master_addr=env.get("MASTER_ADDR") or first_host(nodelist),
            master_port=port(default_port), launcher="slurm", slurm_job_id=job,
        )
    if "OMPI_COMM_WORLD_RANK" in env:
        return LaunchInfo(
            rank=_need(env, "OMPI_COMM_WORLD_RANK"),
            local_rank=_need(env, "OMPI_COMM_WORLD_LOCAL_RANK", 0),
            world_size=_need(env, "OMPI_COMM_WORLD_SIZE"),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"), master_port=port(_DEFAULT_PORT),
            launcher="mpi", slurm_job_id=job,
        )
    if "PMI_RANK" in env and "PMI_SIZE" in env:
        return LaunchInfo(
            rank=_need(env, "PMI_RANK"),
            local_rank=_need(env, "MPI_LOCALRANKID", _need(env, "PMI_LOCAL_RANK", 0)),
            world_size=_need(env, "PMI_SIZE"),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"), master_port=port(_DEFAULT_PORT),
            launcher="mpi", slurm_job_id=job,
        )
    return LaunchInfo(slurm_job_id=job)


#: Seconds the ranks of a distributed run have to meet (``DEEPERGAT_RENDEZVOUS_TIMEOUT``).
RENDEZVOUS_TIMEOUT = 60.0
_LAUNCH_VARIABLES = {
    "torchrun": "RANK, WORLD_SIZE (torchrun, or set by hand)",
    "slurm": "SLURM_PROCID, SLURM_STEP_NUM_TASKS (srun)",
    "mpi": "OMPI_COMM_WORLD_RANK/SIZE or PMI_RANK/PMI_SIZE (an MPI launcher)",
}


def setup_distributed(info: LaunchInfo, *, backend: str) -> None:
    """Initialize the default process group when ``info.world_size > 1``.

    The ranks meet at a TCP store on ``master_addr:master_port`` within
    ``DEEPERGAT_RENDEZVOUS_TIMEOUT`` seconds (default 60); later collectives keep torch's long
    default timeout.

    Raises:
        DeepergatError: the ranks did not all meet in time (names the variables that claimed a
            distributed launch), or the rendezvous address cannot be used.
    """
    from datetime import timedelta

    import torch.distributed as dist

    if not info.distributed or dist.is_initialized():
        return
    wait = float(os.environ.get("DEEPERGAT_RENDEZVOUS_TIMEOUT", RENDEZVOUS_TIMEOUT))
    where = f"{info.master_addr}:{info.master_port}"
    deadline = time.monotonic() + wait
    try:
        if info.rank != 0:  # find rank 0's store first (torch's client logs every failed try)
            _wait_for_port(info.master_addr, info.master_port, deadline)
        store = dist.TCPStore(info.master_addr, info.master_port, info.world_size,
                              is_master=info.rank == 0,
                              timeout=timedelta(seconds=max(1.0, deadline - time.monotonic())),
                              wait_for_workers=True)
    except (RuntimeError, OSError) as e:
        variables = _LAUNCH_VARIABLES.get(info.launcher, info.launcher)
        raise DeepergatError(
            f"rank {info.rank} of {info.world_size}: the other ranks did not meet at {where} "
            f"within {wait:g} s ({' '.join(str(e).split())[:120]}). The environment says this is "
            f"a {info.world_size}-process run ({variables}); start every rank (torchrun, srun), "
            "or unset those variables to train in one process"
        ) from None
    dist.init_process_group(backend=backend, store=store, rank=info.rank,
                            world_size=info.world_size)
    log.info("rank %d/%d joined (%s, %s)", info.rank, info.world_size, info.launcher, backend)


def _wait_for_port(host: str, port: int, deadline: float) -> None:
    """Return once ``host:port`` accepts a connection; OSError when the deadline passes."""
    import socket

    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise OSError(f"nothing listens on {host}:{port}") from None
            time.sleep(0.5)


def teardown_distributed() -> None:
    """Destroy the default process group, if any."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def requeue_slurm_job(info: LaunchInfo) -> bool:
    """Run ``scontrol requeue $SLURM_JOB_ID`` when inside a SLURM job that allows requeue.

    Returns:
        True when the job was requeued.
    """
    if not info.slurm_job_id:
        return False
    try:
        shown = subprocess.run(
            ["scontrol", "show", "job", info.slurm_job_id],
            capture_output=True, text=True, timeout=30, check=False,
        ).stdout
        if "Requeue=1" not in shown:
            log.info("SLURM job %s does not allow requeue", info.slurm_job_id)
            return False
        done = subprocess.run(
            ["scontrol", "requeue", info.slurm_job_id],
            capture_output=True, text=True, timeout=30, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("could not requeue SLURM job %s: %s", info.slurm_job_id, e)
        return False
    if done.returncode != 0:
        log.warning("scontrol requeue %s failed: %s", info.slurm_job_id, done.stderr.strip())
        return False
    log.warning("requeued SLURM job %s", info.slurm_job_id)
    return True


def shard_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """The SLURM array task's shard, or None outside an array job.

    I = (SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP and
    N = SLURM_ARRAY_TASK_COUNT (docs/design.md).

    Raises:
        DeepergatError: I outside [0, N) or not a whole number (an uneven ``--array`` list such
            as ``1,5,7``): the message suggests ``--shard``.
        DeepergatError: a variable that is not a whole number.
    """
    env = os.environ if env is None else env
    if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
        return None
    task = _need(env, "SLURM_ARRAY_TASK_ID")
    low = _need(env, "SLURM_ARRAY_TASK_MIN", 0)
    step = _need(env, "SLURM_ARRAY_TASK_STEP", 1) if env.get("SLURM_ARRAY_TASK_STEP") else 1
    count = _need(env, "SLURM_ARRAY_TASK_COUNT")
    i, rest = divmod(task - low, step) if step > 0 else (task - low, 0)
    if rest or not 0 <= i < count:
        raise DeepergatError(
            f"SLURM array task {task} (min {low}, step {step}, count {count}) gives shard "
            f"{(task - low) / step:g} of {count}, outside 0..{count - 1}: the --array list is not "
            f"an evenly spaced range; pass the shard explicitly, e.g. "
            f"--shard $((SLURM_ARRAY_TASK_ID - 1))/{count} for --array=1-{count}"
        )
    return i, count


def claim_token(env: Mapping[str, str] | None = None) -> str:
    """The job a merge claim belongs to: the SLURM array job id (or job id), else ``local``."""
    env = os.environ if env is None else env
    return env.get("SLURM_ARRAY_JOB_ID") or env.get("SLURM_JOB_ID") or "local"
