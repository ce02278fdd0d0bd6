"""`deepergat.system.launch`: the one reader of the launcher environment (docs/design.md §12).

torchrun, an ``srun`` step and MPI launchers each map to rank, local rank, world size and a
rendezvous; only an srun step (``SLURM_STEP_NUM_TASKS``) makes a SLURM launch; a variable that
claims a launch with a bad value is a one-line error; ranks that never meet stop in time with one
line naming the variables. (Each launcher's basic mapping is in tests/training/test_train.py,
array shards and claim tokens in tests/screening/test_plan.py.)
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from deepergat.cli import main
from deepergat.errors import DeepergatError
from deepergat.system.launch import (
    LaunchInfo,
    first_host,
    launch_info,
    requeue_slurm_job,
    setup_distributed,
    shard_from_env,
)

LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy"
SRUN = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
        "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NODELIST": "gpu[07-08]",
        "SLURM_JOB_NODELIST": "gpu[01-08]", "SLURM_NTASKS": "4"}


def test_no_launcher_is_one_process() -> None:
    info = launch_info({})
    assert info == LaunchInfo()
    assert (info.rank, info.local_rank, info.world_size, info.launcher) == (0, 0, 1, "none")
    assert not info.distributed and info.device_index(0) == 0 and info.device_index(4) == 0


@pytest.mark.parametrize("env", [
    {"SLURM_JOB_ID": "9", "SLURM_NTASKS": "4", "SLURM_PROCID": "0"},  # sbatch, no srun
    {"SLURM_JOB_ID": "9", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"},  # srun -n 1
])
def test_only_an_srun_step_of_several_tasks_is_a_slurm_launch(env: dict[str, str]) -> None:
    info = launch_info(env)
    assert (info.world_size, info.launcher, info.distributed) == (1, "none", False)
    assert info.slurm_job_id == "9"  # still inside the job: requeue works


def test_an_srun_step_uses_its_own_node_list_and_a_port_from_the_job_id() -> None:
    info = launch_info(SRUN)
    assert (info.rank, info.local_rank, info.world_size, info.launcher) == (3, 1, 4, "slurm")
    assert info.master_addr == "gpu07"  # the step's first node, not the job's
    assert info.master_port == 29500 + 4242 % 1000
    assert info.device_index(2) == 1 and info.distributed
    info = launch_info({**SRUN, "MASTER_ADDR": "head", "MASTER_PORT": "40000"})
    assert (info.master_addr, info.master_port) == ("head", 40000)
    without_step_list = {k: v for k, v in SRUN.items() if k != "SLURM_STEP_NODELIST"}
    assert launch_info(without_step_list).master_addr == "gpu01"
    assert launch_info({**SRUN, "SLURM_JOB_ID": "interactive"}).master_port == 29500


def test_torchrun_inside_a_slurm_job_is_torchrun() -> None:
    """``torchrun`` started by an sbatch script (or by srun, one per node): its own variables
    win, and the job id stays known for requeueing."""
    env = {**SRUN, "RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "MASTER_ADDR": "gpu07",
           "MASTER_PORT": "29400"}
    info = launch_info(env)
    assert (info.rank, info.local_rank, info.world_size, info.launcher) == (5, 1, 8, "torchrun")
    assert (info.master_addr, info.master_port, info.slurm_job_id) == ("gpu07", 29400, "4242")


def test_mpi_launchers() -> None:
    ompi = launch_info({"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "6",
                        "OMPI_COMM_WORLD_LOCAL_RANK": "2"})
    assert (ompi.rank, ompi.local_rank, ompi.world_size, ompi.launcher) == (5, 2, 6, "mpi")
    hydra = launch_info({"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1"})
    assert (hydra.rank, hydra.local_rank, hydra.world_size, hydra.launcher) == (3, 1, 4, "mpi")
    assert launch_info({"PMI_RANK": "3", "PMI_SIZE": "4", "PMI_LOCAL_RANK": "0"}).local_rank == 0
    # an srun step started through PMI is SLURM's launch (its variables are the step's)
    both = launch_info({**SRUN, "PMI_RANK": "3", "PMI_SIZE": "4"})
    assert both.launcher == "slurm"


@pytest.mark.parametrize(("nodelist", "first"), [
    ("node7", "node7"),
    ("gpu[003-005]", "gpu003"),  # zero padding kept
    ("gpu[07,03-05]", "gpu07"),  # as listed, not sorted
    ("a[1-2],b3", "a1"),
    (" cn12 ", "cn12"),
])
def test_first_host_of_a_slurm_node_list(nodelist: str, first: str) -> None:
    assert first_host(nodelist) == first


def test_a_step_task_count_that_is_not_a_number_is_a_one_line_error() -> None:
    with pytest.raises(DeepergatError, match=r"SLURM_STEP_NUM_TASKS='x' is not a number"):
        launch_info({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "x"})


def test_the_train_command_prints_a_bad_launcher_variable_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in list(os.environ):
        if key.startswith(("SLURM_", "PMI_", "OMPI_", "RANK", "WORLD_SIZE", "LOCAL_RANK")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "two")
    r = CliRunner().invoke(main, ["train", "--data", str(LEGACY / "store.h5"), "--target",
                                  "heat_ref", "--epochs", "1", "--device", "cpu", "--out",
                                  str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code == 2, r.output
    assert r.stderr.splitlines() == [
        "error: the launcher variable SLURM_STEP_NUM_TASKS='two' is not a number"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("env", "variable"), [
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK"),
    ({"RANK": "0", "WORLD_SIZE": "two"}, "WORLD_SIZE"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "?"}, "LOCAL_RANK"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "http"}, "MASTER_PORT"),
    ({"SLURM_PROCID": "x", "SLURM_STEP_NUM_TASKS": "2"}, "SLURM_PROCID"),
    ({"SLURM_PROCID": "0", "SLURM_LOCALID": "", "SLURM_STEP_NUM_TASKS": "2"}, "SLURM_LOCALID"),
    ({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "n"}, "OMPI_COMM_WORLD_SIZE"),
    ({"PMI_RANK": "0", "PMI_SIZE": "2.0"}, "PMI_SIZE"),
])
def test_every_launcher_variable_that_is_not_a_number_is_a_one_line_error(
    env: dict[str, str], variable: str
) -> None:
    with pytest.raises(DeepergatError, match=rf"{variable}=.* is not a number"):
        launch_info(env)


def test_an_array_task_id_that_is_not_a_number_is_a_one_line_error() -> None:
    with pytest.raises(DeepergatError, match="SLURM_ARRAY_TASK_ID"):
        shard_from_env({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"})


def test_an_array_with_an_empty_step_counts_by_one() -> None:
    env = {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_MIN": "10",
           "SLURM_ARRAY_TASK_STEP": "", "SLURM_ARRAY_TASK_COUNT": "5"}
    assert shard_from_env(env) == (2, 5)
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "3"}) is None  # not an array job


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_one_process_needs_no_rendezvous() -> None:
    pytest.importorskip("torch")
    import torch.distributed as dist

    setup_distributed(LaunchInfo(), backend="gloo")
    assert not dist.is_initialized()


def test_ranks_that_never_meet_stop_in_time_naming_the_variables(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")
    import torch.distributed as dist

    monkeypatch.setenv("DEEPERGAT_RENDEZVOUS_TIMEOUT", "1")
    info = LaunchInfo(rank=1, world_size=2, master_port=_free_port(), launcher="slurm",
                      slurm_job_id="7")
    t0 = time.monotonic()
    with pytest.raises(DeepergatError) as e:
        setup_distributed(info, backend="gloo")
    assert time.monotonic() - t0 < 30
    message = str(e.value)
    assert "\n" not in message
    assert "rank 1 of 2" in message and f"127.0.0.1:{info.master_port}" in message
    assert "within 1 s" in message and "2-process run" in message
    assert "SLURM_PROCID, SLURM_STEP_NUM_TASKS (srun)" in message
    assert not dist.is_initialized()


def _fake_scontrol(folder: Path, shown: str, requeue_status: int = 0) -> Path:
    log = folder / "calls.txt"
    script = folder / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {log}\n'
                      f'if [ "$1" = show ]; then echo "JobId=$3 {shown}"; exit 0; fi\n'
                      f'echo "scontrol: error: denied" >&2\nexit {requeue_status}\n')
    script.chmod(0o755)
    return log


def test_a_job_that_does_not_allow_requeue_is_not_requeued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _fake_scontrol(tmp_path, "Requeue=0 Restarts=0")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert not requeue_slurm_job(LaunchInfo(slurm_job_id="77"))
    assert log.read_text().splitlines() == ["show job 77"]


def test_a_failed_requeue_is_reported_not_raised(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    log = _fake_scontrol(tmp_path, "Requeue=1 Restarts=0", requeue_status=1)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert not requeue_slurm_job(LaunchInfo(slurm_job_id="78"))
    assert log.read_text().splitlines() == ["show job 78", "requeue 78"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no scontrol at all
    assert not requeue_slurm_job(LaunchInfo(slurm_job_id="79"))
