"""`deepergat.system.devices`: docs/design.md §2's device rule — the visible GPUs counted
without torch (``CUDA_VISIBLE_DEVICES``, capped by the driver's count), node-local rank mod the
visible GPUs, ``auto``/``cpu``/``cuda``, and the CPU cores of a rank.

The CUDA driver is faked through ``ctypes.CDLL`` (the module asks ``libcuda.so.1`` for its
device count), so these tests mean the same on machines with and without GPUs.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from deepergat.cli import main
from deepergat.errors import DeepergatError
from deepergat.system.devices import cpus_per_rank, pick_device, visible_gpus

LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy"
#: What every command prints for ``--device cuda`` without a visible GPU (the starting commit's
#: line, unchanged).
NO_GPU_LINE = ("error: --device cuda: no CUDA device is visible (CUDA_VISIBLE_DEVICES, driver); "
               "use --device cpu or auto")


class _FakeDriver:
    """libcuda's ``cuInit`` and ``cuDeviceGetCount``, reporting ``count`` devices."""

    def __init__(self, count: int, init_status: int = 0) -> None:
        self.count = count
        self.init_status = init_status
        self.opened = 0

    def __call__(self, name: str, *args: Any, **kwargs: Any) -> _FakeDriver:
        assert name == "libcuda.so.1", name
        self.opened += 1
        return self

    def cuInit(self, flags: int) -> int:  # the driver's name
        return self.init_status

    def cuDeviceGetCount(self, count: Any) -> int:  # the driver's name
        count._obj.value = self.count  # count is ctypes.byref(c_int)
        return 0


@pytest.fixture
def driver(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Install a fake CUDA driver: ``driver(n)`` reports n devices; returns the fake."""

    def install(count: int, init_status: int = 0) -> _FakeDriver:
        fake = _FakeDriver(count, init_status)
        monkeypatch.setattr(ctypes, "CDLL", fake)
        return fake

    return install


@pytest.mark.parametrize(("visible", "driver_count", "expected"), [
    (None, 3, 3),               # unset: the driver's count
    ("0,1", 4, 2),              # the entries
    ("2", 4, 1),
    ("0,1,2,3", 2, 2),          # capped by the driver's count
    ("GPU-0a1b,GPU-2c3d", 8, 2),  # UUIDs are entries too
    (" 0 , 1 ", 4, 2),
    ("0,-1", 4, 1),
    ("1", 0, 0),                # listed, but the driver sees none
])
def test_visible_gpus_counts_the_entries_capped_by_the_driver(
    driver: Any, visible: str | None, driver_count: int, expected: int
) -> None:
    driver(driver_count)
    env = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert visible_gpus(env) == expected


@pytest.mark.parametrize("visible", ["", "-1", " ", ",", "-1,-1"])
def test_an_empty_or_minus_one_list_hides_every_gpu_without_asking_the_driver(
    driver: Any, visible: str
) -> None:
    fake = driver(4)
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": visible}) == 0
    assert fake.opened == 0


def test_no_driver_or_a_failing_driver_means_no_gpu(driver: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    driver(2, init_status=100)  # CUDA_ERROR_NO_DEVICE
    assert visible_gpus({}) == 0 and visible_gpus({"CUDA_VISIBLE_DEVICES": "0"}) == 0

    def missing(name: str, *args: Any, **kwargs: Any) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", missing)
    assert visible_gpus({}) == 0 and visible_gpus({"CUDA_VISIBLE_DEVICES": "0,1"}) == 0


def test_visible_gpus_reads_the_process_environment(driver: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    driver(4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1,2")
    assert visible_gpus() == 3
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus() == 4


@pytest.mark.parametrize(("choice", "local_rank", "n_gpus", "expected"), [
    ("auto", 0, 0, ("cpu", 0)),
    ("auto", 7, 0, ("cpu", 0)),
    ("cpu", 2, 8, ("cpu", 0)),      # cpu stays the CPU whatever is visible
    ("auto", 0, 4, ("auto", 0)),
    ("auto", 6, 4, ("auto", 2)),    # node-local rank mod visible GPUs
    ("cuda", 3, 4, ("cuda", 3)),
    ("cuda", 5, 2, ("cuda", 1)),
    ("cuda", 3, 1, ("cuda", 0)),    # SLURM's one GPU per task: device 0 of what it sees
    ("auto", 9, 1, ("auto", 0)),
])
def test_a_rank_takes_its_node_local_rank_mod_the_visible_gpus(
    choice: str, local_rank: int, n_gpus: int, expected: tuple[str, int]
) -> None:
    assert pick_device(choice, local_rank, n_gpus) == expected


def test_cuda_without_a_visible_gpu_is_a_one_line_error() -> None:
    with pytest.raises(DeepergatError) as e:
        pick_device("cuda", 0, 0)
    assert "no CUDA device is visible" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("command", ["screen", "train"])
def test_commands_refuse_cuda_without_a_visible_gpu(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit status 2, one line, nothing written (the same line the starting commit printed).

    ``train`` runs in its own process: torch fixes its device count the first time it looks,
    and an empty ``CUDA_VISIBLE_DEVICES`` in this process would hide a real GPU from the tests
    that follow."""
    out = tmp_path / "out"
    if command == "screen":  # an ONNX screen never imports torch
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        r = CliRunner().invoke(main, [
            "screen", "--input", str(LEGACY / "store.h5"), "--model",
            str(LEGACY / "exported" / "model.onnx"), "--output", str(out / "p.h5"),
            "--device", "cuda"])
        status, stderr = r.exit_code, r.stderr
    else:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "PMI_", "OMPI_", "RANK", "WORLD_SIZE"))}
        done = subprocess.run(
            [sys.executable, "-m", "deepergat.cli", "train", "--data", str(LEGACY / "store.h5"),
             "--target", "heat_ref", "--epochs", "1", "--out", str(out), "--cache-dir",
             str(tmp_path / "cache"), "--device", "cuda"],
            env={**env, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True,
            timeout=120)
        status, stderr = done.returncode, done.stderr
    assert status == 2, stderr
    assert stderr.splitlines() == [NO_GPU_LINE]
    assert not out.exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize(("mine", "total", "local_size", "expected"), [
    (16, 16, 1, 16),   # one rank on the whole machine
    (16, 16, 4, 4),    # every rank sees the whole machine: an equal share
    (16, 16, 32, 1),   # never below one core
    (2, 16, 4, 2),     # bound by the launcher (--cpus-per-task 2): those cores
    (6, 16, 1, 6),
])
def test_cpus_per_rank(monkeypatch: pytest.MonkeyPatch, mine: int, total: int, local_size: int,
                       expected: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(mine)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: total)
    assert cpus_per_rank(local_size) == expected


@pytest.mark.gpu
def test_the_real_driver_counts_what_torch_sees() -> None:
    """On a GPU machine: the count without torch equals torch's, and the list narrows it."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    n = torch.cuda.device_count()
    assert visible_gpus() == n
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0"}) == 1
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == 0
