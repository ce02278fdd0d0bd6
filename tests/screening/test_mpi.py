"""Rank detection (MPI only under a launcher), chunk hand-out, device choice."""

from __future__ import annotations

import threading

import pytest

from deepergat.errors import DeepergatError
from deepergat.screening.mpi import ChunkSource, Progress, SingleProcess, connect
from deepergat.system.devices import cpus_per_rank, pick_device, visible_gpus


@pytest.mark.parametrize("env", [
    {},
    {"PMI_RANK": "0", "PMI_SIZE": "1"},
    # inside `sbatch --ntasks=4` without srun: the batch step is one process
    {"SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_JOB_ID": "7"},
    {"RANK": "0", "WORLD_SIZE": "2"},  # torchrun is not a screening launcher
])
def test_single_process_without_a_launcher(env: dict[str, str]) -> None:
    assert isinstance(connect(env), SingleProcess)


def test_chunk_source_hands_out_each_chunk_once() -> None:
    source = ChunkSource(range(1000))
    got: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        while (k := source()) is not None:
            with lock:
                got.append(k)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1000))


def test_progress_sums() -> None:
    p = Progress()
    p.add(10, 1, 2)
    p.add(5, 0, 1)
    assert p.totals() == (15, 1, 3)


def test_device_choice() -> None:
    assert pick_device("auto", 3, 0) == ("cpu", 0)
    assert pick_device("cpu", 3, 4) == ("cpu", 0)
    assert pick_device("auto", 5, 4) == ("auto", 1)  # node-local rank mod visible devices
    assert pick_device("cuda", 0, 1) == ("cuda", 0)
    with pytest.raises(DeepergatError, match="no CUDA device"):
        pick_device("cuda", 0, 0)
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == 0
    assert cpus_per_rank(1) >= 1 and cpus_per_rank(64) >= 1
