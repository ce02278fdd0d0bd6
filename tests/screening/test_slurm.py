"""The slurm/ scripts on a real (local, single-node) SLURM: MPI screening through srun, an array
with its afterany merge (also when a task failed), and training requeued on SIGUSR1.

Needs a running SLURM (the local single-node one that ``.ci/run`` starts);
skips otherwise. The local cluster has no GPUs and 1 GB, so the resources are overridden from
the environment the way the scripts document.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from screen_helpers import REPO, assert_same_predictions, load_make_candidates

from deepergat.io.store import StoreWriter

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SUBMIT = REPO / "slurm" / "submit.sh"
#: Resources that fit the local test cluster (no GPUs, 1 GB, 4 advertised CPUs).
LOCAL = {"GPUS_PER_TASK": "0", "CPUS_PER_TASK": "1", "MEM": "250M", "TIME": "10",
         "MERGE_MEM": "250M", "NODES": "1"}


def _slurm_up() -> str | None:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "no sbatch/sinfo (.ci/run starts a local SLURM)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True,
                             timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"sinfo failed: {e}"
    states = out.stdout.split()
    if out.returncode != 0 or not any(s in ("idle", "mix", "alloc") for s in states):
        return f"no usable SLURM node (sinfo: {out.stdout.strip() or out.stderr.strip()})"
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    reason = _slurm_up()
    if reason:
        pytest.skip(reason)


def job_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "PMI_", "OMPI_"))}
    env["DEEPERGAT_SCREEN"] = f"{sys.executable} -m deepergat.cli.screen"
    env["DEEPERGAT"] = f"{sys.executable} -m deepergat.cli"
    env.update(LOCAL)
    env.update(extra)
    return env


def submit(kind: str, cwd: Path, env: dict[str, str], *sbatch: str) -> list[str]:
    r = subprocess.run(["bash", str(SUBMIT), kind, f"--chdir={cwd}", *sbatch], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def job_field(job: str, name: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True,
                         timeout=30).stdout
    for word in out.split():
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return ""


def wait(jobs: list[str], timeout: float = 420) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        q = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(jobs)],
                           capture_output=True, text=True, timeout=30).stdout.split()
        if not q:
            return
        time.sleep(1)
    subprocess.run(["scancel", *jobs], timeout=30, check=False)
    pytest.fail(f"jobs {jobs} did not finish in {timeout} s")


def _node_state(node: str) -> str:
    """A node's state as sinfo prints it, without the flag suffixes (``idle*`` -> ``idle``)."""
    out = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%t"], capture_output=True, text=True,
                         timeout=30)
    return out.stdout.strip().rstrip("*~#!%$@^-")


def logs(cwd: Path) -> str:
    return "\n".join(f"== {p.name}\n{p.read_text()}" for p in sorted(cwd.glob("*.out")))


def test_screen_sbatch_runs_mpi_ranks_through_srun(slurm: None, tmp_path: Path,
                                                   screen_store: Path,
                                                   small_model: dict[str, Any],
                                                   reference_predictions: Path) -> None:
    out = tmp_path / "p.h5"
    env = job_env(INPUT=str(screen_store), MODEL=str(small_model["onnx"]), OUTPUT=str(out),
                  CHUNK_SIZE="16", TASKS_PER_NODE="2")
    jobs = submit("screen", tmp_path, env)
    wait(jobs)
    assert job_field(jobs[0], "JobState") == "COMPLETED", logs(tmp_path)
    assert "on 2 ranks" in logs(tmp_path)
    assert_same_predictions(reference_predictions, out, small_model["std"])


def test_array_then_afterany_merge(slurm: None, tmp_path: Path, screen_store: Path,
                                   small_model: dict[str, Any],
                                   reference_predictions: Path) -> None:
    out = tmp_path / "p.h5"
    env = job_env(INPUT=str(screen_store), MODEL=str(small_model["onnx"]), OUTPUT=str(out),
                  CHUNK_SIZE="20", ARRAY="1-3")
    array_job, merge_job = submit("array", tmp_path, env)
    assert job_field(merge_job, "Dependency").startswith(f"afterany:{array_job}")
    wait([array_job, merge_job])
    text = logs(tmp_path)
    assert job_field(merge_job, "JobState") == "COMPLETED", text
    assert text.count("(shard ") == 3 and "already merged" in text, text
    assert_same_predictions(reference_predictions, out, small_model["std"])


def test_merge_reports_missing_chunks_when_a_task_failed(slurm: None, tmp_path: Path,
                                                         screen_store: Path,
                                                         small_model: dict[str, Any]) -> None:
    out = tmp_path / "p.h5"
    env = job_env(INPUT=str(screen_store), MODEL=str(small_model["onnx"]), OUTPUT=str(out),
                  CHUNK_SIZE="20", ARRAY="0-2")
    array_job, merge_job = submit("array", tmp_path, env, "--hold")
    subprocess.run(["scancel", f"{array_job}_1"], check=True, timeout=30)
    subprocess.run(["scontrol", "release", array_job], check=True, timeout=30)
    subprocess.run(["scontrol", "release", merge_job], check=True, timeout=30)
    wait([array_job, merge_job])
    text = logs(tmp_path)
    assert job_field(merge_job, "JobState") == "FAILED", text
    merge_log = (tmp_path / f"deepergat-merge-{merge_job}.out").read_text()
    assert "chunks are missing" in merge_log and "error:" in merge_log
    assert not out.exists()


def test_train_sbatch_requeues_on_usr1_and_resumes(slurm: None, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    mc = load_make_candidates()
    _, arrays = next(mc.batches(200, 3))
    data = tmp_path / "train.h5"
    rng = np.random.default_rng(0)
    with StoreWriter(data, targets={"heat_ref": "eV"}) as w:
        w.append(ids=mc.candidate_ids(0, 200), targets={"heat_ref": rng.normal(size=200)},
                 **arrays)
    run_dir = tmp_path / "run"
    env = job_env(DATA=str(data), TARGET="heat_ref", RUN_DIR=str(run_dir), TASKS_PER_NODE="2",
                  MEM="900M", TRAIN_ARGS="--epochs 60 --layers 2 --device cpu")
    (job,) = submit("train", tmp_path, env)
    deadline = time.monotonic() + 300
    while not (run_dir / "last.ckpt").exists():
        assert time.monotonic() < deadline, logs(tmp_path)
        assert job_field(job, "JobState") in ("PENDING", "RUNNING", "CONFIGURING"), logs(tmp_path)
        time.sleep(0.5)
    node = job_field(job, "BatchHost")
    subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=30)
    # The job requeues itself; SLURM delays a requeued job's start, which we skip.
    while job_field(job, "Restarts") in ("", "0"):
        assert time.monotonic() < deadline, logs(tmp_path)
        time.sleep(0.5)
    # Pull the start forward only once the old run is fully gone and a whole second has passed:
    # slurmd revokes the old run's credential and rejects a new one created in the same second
    # ("Job credential revoked"; the job then ends FAILED) -- the race SLURM's delay avoids.
    # (A requeued job that already started, or ended, is left alone.)
    deadline = time.monotonic() + 120
    while job_field(job, "JobState") in ("PENDING", "REQUEUED", "COMPLETING", "REQUEUE_HOLD"):
        if job_field(job, "JobState") == "PENDING" and _node_state(node) == "idle":
            time.sleep(2.5)
            break
        assert time.monotonic() < deadline, logs(tmp_path)
        time.sleep(0.5)
    for _ in range(60):
        if job_field(job, "JobState") != "PENDING":
            break
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], timeout=30,
                       check=False)
        time.sleep(1)
    wait([job])
    text = logs(tmp_path)
    assert job_field(job, "JobState") == "COMPLETED", text
    assert "restart 0" in text and "restart 1" in text and "requeued" in text
    assert "epoch   60/60" in text and "best val MAE" in text
