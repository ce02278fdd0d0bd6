"""Training: run folder contents, exact resume (after an epoch and mid-epoch), signals, early
stop, clear errors, graph cache and batching, the launcher environment, the CLI."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from model_helpers import perov_structures

from deepergat.cli import main
from deepergat.errors import DeepergatError
from deepergat.graphs import build_inputs
from deepergat.io.store import StructureBatch, write_store
from deepergat.system.launch import first_host, launch_info
from deepergat.training import train as train_mod
from deepergat.training.data import GraphSet, cache_path, load_graphs
from deepergat.training.train import TrainConfig, epoch_batches, train

TINY = {"dim": 16}


def _cfg(store: Path, out: Path, **kw: object) -> TrainConfig:
    base: dict = dict(data=str(store), target="heat_ref", out=str(out), layers=2, epochs=2,
                      batch_size=16, seed=0, test_fraction=0.2, val_fraction=0.2, model=TINY,
                      cache_dir=str(out.parent / "cache"), device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _state(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = _state(a), _state(b)
    for k, v in sa["state_dict"].items():
        assert torch.equal(v, sb["state_dict"][k]), k
    oa, ob = sa["training"]["optimizer"]["state"], sb["training"]["optimizer"]["state"]
    for i in oa:
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(oa[i][k], ob[i][k])


# ------------------------------------------------------------------ data


def test_graphset_batch_equals_build_inputs(tiny_store: Path, tmp_path: Path) -> None:
    g = load_graphs(tiny_store, cache_dir=tmp_path)
    structures = perov_structures(60)
    rows = np.array([5, 0, 17, 3])
    ours = g.batch(rows)
    ref = build_inputs(StructureBatch.from_structures([structures[r] for r in rows])).inputs
    assert ours.keys() == ref.keys()
    for k in ref:
        np.testing.assert_array_equal(ours[k], ref[k], err_msg=k)
        assert ours[k].dtype == ref[k].dtype, k


def test_graph_cache_is_keyed_by_digest_and_settings(
    tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = load_graphs(tiny_store, cache_dir=tmp_path)
    cfile = cache_path(tiny_store, g.digest, 8.0, 12, tmp_path)
    assert cfile.is_file()

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("cache not used")

    monkeypatch.setattr("deepergat.training.data._build", boom)
    again = load_graphs(tiny_store, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.neighbors, g.neighbors)
    with pytest.raises(AssertionError, match="cache not used"):
        load_graphs(tiny_store, cache_dir=tmp_path, max_neighbors=6)  # other settings
    with pytest.raises(AssertionError, match="cache not used"):
        load_graphs(tiny_store, cache_dir=tmp_path, graph="minimum-image")  # other construction
    assert cache_path(tiny_store, g.digest, 8.0, 12, tmp_path, "minimum-image") != cfile
    other = tmp_path / "other.h5"
    write_store(other, StructureBatch.from_structures(perov_structures(59)))
    with pytest.raises(AssertionError, match="cache not used"):
        load_graphs(other, cache_dir=tmp_path)  # other digest
    import h5py

    with h5py.File(tiny_store, "r+") as f:  # edited in place: the recorded digest is stale
        f["positions"][:5] = f["positions"][:5] * 1.05
    with pytest.raises(AssertionError, match="cache not used"):
        load_graphs(tiny_store, cache_dir=tmp_path)


def test_epoch_batches_cover_the_split_once() -> None:
    b = epoch_batches(50, epoch=3, seed=1, batch_size=16)
    assert [len(x) for x in b] == [16, 16, 16, 2]
    assert sorted(np.concatenate(b).tolist()) == list(range(50))
    r0 = epoch_batches(50, epoch=3, seed=1, batch_size=16, world_size=2, rank=0)
    r1 = epoch_batches(50, epoch=3, seed=1, batch_size=16, world_size=2, rank=1)
    assert len(r0) == len(r1) and [len(x) for x in r0] == [8, 8, 9]  # 25 each: 8, 8, 8 + 1
    assert set(np.concatenate(r0 + r1).tolist()) == set(range(50))
    assert not np.array_equal(np.concatenate(b),
                              np.concatenate(epoch_batches(50, epoch=4, seed=1, batch_size=16)))
    # a last batch of one crystal joins the one before (BatchNorm over crystals needs two)
    assert [len(x) for x in epoch_batches(49, epoch=0, seed=1, batch_size=16)] == [16, 16, 17]
    shares = [epoch_batches(66, epoch=0, seed=1, batch_size=16, world_size=2, rank=r)
              for r in (0, 1)]
    assert [len(x) for x in shares[0]] == [len(x) for x in shares[1]] == [8, 8, 8, 9]


# ------------------------------------------------------------------ runs


def test_run_writes_its_folder(tiny_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    seen = []
    result = train(_cfg(tiny_store, out), progress=seen.append)
    assert [r.epoch for r in seen] == [1, 2]
    for name in ("config.yaml", "splits.json", "metrics.csv", "learning_curve.png", "best.ckpt",
                 "last.ckpt", "test_metrics.json"):
        assert (out / name).is_file(), name
    with open(out / "metrics.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "lr", "train_mae", "val_mae", "seconds"] and len(rows) == 3
    splits = json.loads((out / "splits.json").read_text())
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (36, 12, 12)
    assert not set(splits["train"]) & set(splits["test"])
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["n"] == 12 and metrics["mae"] == pytest.approx(result.test_mae)
    assert metrics["units"] == "eV"
    best = _state(out / "best.ckpt")
    assert best["training"] is None and best["units"] == ["eV"]
    assert best["elements"] == sorted(best["elements"]) and 8 in best["elements"]
    assert yaml.safe_load((out / "config.yaml").read_text())["layers"] == 2
    with pytest.raises(DeepergatError, match="already holds a run"):
        train(_cfg(tiny_store, out))


def test_resume_after_epochs_is_bitwise_exact(tiny_store: Path, tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    train(_cfg(tiny_store, straight, epochs=4))
    split = tmp_path / "split"
    train(_cfg(tiny_store, split, epochs=2))
    train(_cfg(tiny_store, split, epochs=4, resume=True))
    _assert_same_weights(straight / "last.ckpt", split / "last.ckpt")
    a = (straight / "metrics.csv").read_text().splitlines()
    b = (split / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[:4] for r in a] == [r.split(",")[:4] for r in b]


@pytest.mark.parametrize("schedule", ["plateau", "cosine"])
def test_signal_mid_epoch_then_resume_is_exact(
    tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, schedule: str
) -> None:
    straight = tmp_path / "straight"
    train(_cfg(tiny_store, straight, epochs=3, lr_schedule=schedule))
    calls = {"n": 0}
    real = train_mod._stop_reason

    def stop_at_fifth_batch(stopper: object, cfg: TrainConfig, t0: float) -> str | None:
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGUSR1)  # the handler installed by train() sets a flag
        return real(stopper, cfg, t0)  # type: ignore[arg-type]

    monkeypatch.setattr(train_mod, "_stop_reason", stop_at_fifth_batch)
    split = tmp_path / "split"
    result = train(_cfg(tiny_store, split, epochs=3, lr_schedule=schedule))
    assert result.stopped == "signal" and result.epochs_done == 1 and not result.requeued
    state = _state(split / "last.ckpt")["training"]
    assert (state["epoch"], state["step"]) == (1, 1)  # 3 batches an epoch: stopped in epoch 2
    monkeypatch.setattr(train_mod, "_stop_reason", real)
    train(_cfg(tiny_store, split, epochs=3, resume=True, lr_schedule=schedule))
    _assert_same_weights(straight / "last.ckpt", split / "last.ckpt")
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    if schedule == "cosine":  # annealed from lr to min_lr over the run, whatever the losses
        lrs = [float(r.split(",")[1]) for r in
               (straight / "metrics.csv").read_text().splitlines()[1:]]
        import math

        want = [1e-5 + (0.005 - 1e-5) * 0.5 * (1 + math.cos(math.pi * e / 3)) for e in range(3)]
        assert lrs == pytest.approx(want, rel=1e-4)


def test_max_time_and_early_stop(tiny_store: Path, tmp_path: Path) -> None:
    result = train(_cfg(tiny_store, tmp_path / "t", max_time=0.0))
    assert result.stopped == "max_time" and result.test_mae is None
    assert (tmp_path / "t" / "last.ckpt").is_file()
    result = train(_cfg(tiny_store, tmp_path / "e", epochs=30, early_stop=1, lr=0.5))
    assert result.stopped == "early_stop" and result.epochs_done < 30
    assert result.test_mae is not None
    # resumed (an ensemble assembling members trained with --member), it stays stopped
    again = train(_cfg(tiny_store, tmp_path / "e", epochs=30, early_stop=1, lr=0.5,
                       resume=True))
    assert again.stopped == "early_stop" and again.epochs_done == result.epochs_done


def test_fixed_seed_gives_identical_runs(tiny_store: Path, tmp_path: Path) -> None:
    train(_cfg(tiny_store, tmp_path / "a", epochs=1))
    train(_cfg(tiny_store, tmp_path / "b", epochs=1))
    _assert_same_weights(tmp_path / "a" / "last.ckpt", tmp_path / "b" / "last.ckpt")


def _subnormals_flushed() -> bool:
    return (torch.tensor([1e-39]) * 1.0).item() == 0.0


def test_cpu_training_flushes_subnormals_and_restores_the_default(
        tiny_store: Path, tmp_path: Path) -> None:
    """Deep stacks produce subnormal floats, ~100× slower on a CPU (docs/design.md §5,
    "Training recipe"): a CPU run flushes them to zero while it trains and leaves the process
    as it found it."""
    seen: list[bool] = []
    assert not _subnormals_flushed()
    train(_cfg(tiny_store, tmp_path / "run", epochs=1),
          progress=lambda r: seen.append(_subnormals_flushed()))
    assert seen == [True]
    assert not _subnormals_flushed()


def _read_oof(path: Path) -> dict[str, tuple[float, float]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "true", "predicted"]
    return {r[0]: (float(r[1]), float(r[2])) for r in rows[1:]}


def test_cross_validation_predicts_every_structure_out_of_fold(
    tiny_store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cv"
    cfg = _cfg(tiny_store, out, epochs=1, cv=3, val_fraction=0.1)
    summary = train_mod.cross_validate(cfg)
    assert json.loads((out / "cv_metrics.json").read_text()) == summary
    oof = _read_oof(out / "oof.csv")
    splits = [json.loads((out / f"fold-{k}" / "splits.json").read_text()) for k in range(3)]
    val = set(splits[0]["val"])
    assert all(set(s["val"]) == val for s in splits)  # one validation split, shared
    g = load_graphs(tiny_store, cache_dir=tmp_path / "cache")
    usable = {g.ids[r] for r in g.usable}
    test = usable - val - set(splits[0]["train"]) - set(oof)
    assert len(oof) == summary["n"] == sum(summary["fold_n"])
    assert not (set(oof) & val) and not (set(oof) & test) and len(test) == summary["test_n"]
    assert set(oof) | val | test == usable
    fold_ids = []
    for k, s in enumerate(splits):
        held = set(oof) - set(s["train"])  # what member k never trained on
        assert len(held) == summary["fold_n"][k]
        fold_ids.append(held)
        # the out-of-fold value is member k's own prediction of the structure
        member = train_mod._best_model(out / f"fold-{k}" / "best.ckpt", torch.device("cpu"))
        rows = np.array([g.ids.index(i) for i in sorted(held)])
        pred, _ = train_mod.predict_rows(member, g, rows)
        np.testing.assert_allclose([oof[i][1] for i in sorted(held)], pred[:, 0], rtol=1e-6)
        mae = np.mean([abs(oof[i][1] - oof[i][0]) for i in held])
        assert summary["fold_mae"][k] == pytest.approx(mae, rel=1e-5)
    assert set().union(*fold_ids) == set(oof) and sum(map(len, fold_ids)) == len(oof)
    assert summary["mae_mean"] == pytest.approx(np.mean(summary["fold_mae"]))
    assert summary["mae_std"] == pytest.approx(np.std(summary["fold_mae"], ddof=1))
    seeds = [yaml.safe_load((out / f"fold-{k}" / "config.yaml").read_text())["seed"]
             for k in range(3)]
    assert seeds == [0, 1, 2]
    assert len(summary["test_mae"]) == 3


def test_cross_validation_resumes_finished_folds(
    tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "cv"
    first = train_mod.cross_validate(_cfg(tiny_store, out, epochs=1, cv=2))
    with pytest.raises(DeepergatError, match="already holds a run"):
        train_mod.cross_validate(_cfg(tiny_store, out, epochs=1, cv=2))

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr(train_mod, "_batch_loss", no_training)
    again = train_mod.cross_validate(_cfg(tiny_store, out, epochs=1, cv=2, resume=True))
    assert again == first


def test_no_validation_needs_the_last_epoch_and_the_training_monitor(
    tiny_store: Path, tmp_path: Path
) -> None:
    with pytest.raises(DeepergatError, match="lr_monitor: train and keep: last"):
        train(_cfg(tiny_store, tmp_path / "a", val_fraction=0.0, epochs=1))
    with pytest.raises(DeepergatError, match="lr_monitor: train and keep: last"):
        train_mod.cross_validate(_cfg(tiny_store, tmp_path / "b", val_fraction=0.0, cv=2))
    res = train(_cfg(tiny_store, tmp_path / "c", val_fraction=0.0, epochs=2, lr_monitor="train",
                     keep="last"))
    assert res.best_epoch == 2 and np.isnan(res.best_val_mae) and res.test_mae is not None
    _assert_same_weights_model(tmp_path / "c" / "best.ckpt", tmp_path / "c" / "last.ckpt")


def _assert_same_weights_model(a: Path, b: Path) -> None:
    sa, sb = _state(a), _state(b)
    for k, v in sa["state_dict"].items():
        assert torch.equal(v, sb["state_dict"][k]), k


def test_recipe_settings_reach_the_model(tiny_store: Path, tmp_path: Path) -> None:
    train(_cfg(tiny_store, tmp_path / "a", epochs=1, graph="minimum-image",
               distance_scale="data", scale_targets=False))
    data = _state(tmp_path / "a" / "best.ckpt")
    g = load_graphs(tiny_store, graph="minimum-image", cache_dir=tmp_path / "cache")
    train_ids = set(json.loads((tmp_path / "a" / "splits.json").read_text())["train"])
    rows = np.array([i for i, s in enumerate(g.ids) if s in train_ids])
    assert data["model"]["graph"] == "minimum-image"
    assert data["graph"] == {"cutoff": 8.0, "max_neighbors": 12, "construction": "minimum-image",
                             "translation_tolerance": 0.25, "translation_max_atoms": 256}
    assert data["model"]["distance_scale"] == pytest.approx(g.max_distance(rows), abs=1e-4)
    assert data["model"]["distance_scale"] >= g.max_distance(rows)
    assert data["target_mean"] == [0.0] and data["target_std"] == [1.0]
    with pytest.raises(DeepergatError, match="graph: 'cubic' is not one of periodic"):
        TrainConfig.from_dict({"graph": "cubic"})
    with pytest.raises(DeepergatError, match="distance_scale: 'far'"):
        TrainConfig.from_dict({"distance_scale": "far"})
    assert TrainConfig.from_dict({"distance_scale": "5.5"}).distance_scale == 5.5


# ------------------------------------------------------------------ errors


def test_clear_errors(tiny_store: Path, tmp_path: Path) -> None:
    with pytest.raises(DeepergatError, match=r"no target 'gap'; available: heat_ref"):
        train(_cfg(tiny_store, tmp_path / "a", target="gap"))
    bare = tmp_path / "bare.h5"
    structures = [{k: v for k, v in s.items() if k != "targets"} for s in perov_structures(10)]
    write_store(bare, StructureBatch.from_structures(structures))
    with pytest.raises(DeepergatError, match="has no targets"):
        train(_cfg(bare, tmp_path / "b"))
    nan = tmp_path / "nan.h5"
    structures = perov_structures(10)
    structures = [dict(s, targets={"heat_ref": np.nan if k in (2, 7) else 1.0})
                  for k, s in enumerate(structures)]
    write_store(nan, StructureBatch.from_structures(structures))
    with pytest.raises(DeepergatError, match=r"NaN or infinite for 2 structures \(ids 3409"):
        train(_cfg(nan, tmp_path / "c"))
    with pytest.raises(DeepergatError, match="no validation structures, but lr_monitor"):
        train(_cfg(tiny_store, tmp_path / "d", val_fraction=0.001))
    bad = tmp_path / "bad.ckpt"
    torch.save({"kind": "deepergat-checkpoint", "format": 7}, bad)
    with pytest.raises(DeepergatError, match="format 7 is not supported"):
        train(_cfg(tiny_store, tmp_path / "e", init_from=str(bad)))


def test_init_from_checks_model_settings(tiny_store: Path, tmp_path: Path) -> None:
    train(_cfg(tiny_store, tmp_path / "a", epochs=1))
    with pytest.raises(DeepergatError, match="model settings differ"):
        train(_cfg(tiny_store, tmp_path / "b", layers=3,
                   init_from=str(tmp_path / "a" / "best.ckpt")))
    train(_cfg(tiny_store, tmp_path / "c", epochs=1, init_from=str(tmp_path / "a" / "best.ckpt")))


# ------------------------------------------------------------------ launcher, CLI


def test_launch_info_reads_each_launcher() -> None:
    assert launch_info({}).world_size == 1
    t = launch_info({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "n1",
                     "MASTER_PORT": "1234"})
    assert (t.rank, t.local_rank, t.world_size, t.master_addr, t.master_port, t.launcher) == (
        3, 1, 4, "n1", 1234, "torchrun")
    s = launch_info({"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8",
                     "SLURM_STEP_NUM_TASKS": "8", "SLURM_JOB_NODELIST": "gpu[03-05,07]",
                     "SLURM_JOB_ID": "4242"})
    assert (s.rank, s.local_rank, s.world_size, s.master_addr, s.launcher) == (
        5, 1, 8, "gpu03", "slurm")
    assert s.master_port == 29500 + 242 and s.slurm_job_id == "4242"
    assert s.device_index(4) == 1 and launch_info(
        {"SLURM_LOCALID": "5", "SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8"}
    ).device_index(4) == 1
    # a batch script without srun: the allocation's variables are no launch
    batch = launch_info({"SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_JOB_ID": "9"})
    assert (batch.world_size, batch.launcher, batch.slurm_job_id) == (1, "none", "9")
    o = launch_info({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "3",
                     "OMPI_COMM_WORLD_LOCAL_RANK": "0"})
    assert (o.rank, o.world_size, o.launcher) == (2, 3, "mpi")
    p = launch_info({"PMI_RANK": "1", "PMI_SIZE": "2"})
    assert (p.rank, p.world_size) == (1, 2)
    assert first_host("node7") == "node7" and first_host("a[1-2],b3") == "a1"


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "2", "RANK": "0"},
                                 {"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1"}])
def test_a_distributed_launch_whose_ranks_never_start_fails_fast(
    tiny_store: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    """`deepergat train` with a launcher environment but no other ranks: one line, quickly."""
    import subprocess
    import sys
    import time

    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("SLURM_", "PMI_", "OMPI_", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                  "MASTER_"))}
    clean.update(env, DEEPERGAT_RENDEZVOUS_TIMEOUT="3", MASTER_PORT=str(_free_port()))
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "deepergat.cli", "train", "--data", str(tiny_store),
                        "--target", "heat_ref", "--epochs", "1", "--layers", "1",
                        "--out", str(tmp_path / "run")], env=clean, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and time.monotonic() - t0 < 60
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "did not meet" in lines[0] and "2-process run" in lines[0]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_requeue_uses_scontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepergat.system.launch import LaunchInfo, requeue_slurm_job

    log = tmp_path / "calls.txt"
    fake = tmp_path / "scontrol"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\necho "JobId=$3 Requeue=1 Restarts=0"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert requeue_slurm_job(LaunchInfo(slurm_job_id="77"))
    assert log.read_text().splitlines() == ["show job 77", "requeue 77"]
    assert not requeue_slurm_job(LaunchInfo())


def test_cli_train_with_config_and_overrides(tiny_store: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "data": str(tiny_store), "target": "heat_ref", "layers": 2, "epochs": 5,
        "batch-size": 16, "model": TINY, "test_fraction": 0.2, "cache_dir": str(tmp_path),
    }))
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--config", str(config), "--epochs", "1",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "epoch    1/1" in r.output and "test MAE" in r.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved["batch_size"] == 16 and saved["layers"] == 2
    r = CliRunner().invoke(main, ["train", "--config", str(config), "--target", "nope",
                                  "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "no target 'nope'; available: heat_ref" in r.output
    r = CliRunner().invoke(main, ["train", "--data", str(tiny_store), "--target", "heat_ref"])
    assert r.exit_code == 2 and "--out is required" in r.output
    r = CliRunner().invoke(main, ["train", "--config", str(config), "--max-time", "soon",
                                  "--out", str(tmp_path / "y")])
    assert r.exit_code == 2 and "HH:MM" in r.output


def test_graphset_usable_excludes_bad_structures(tmp_path: Path) -> None:
    structures = perov_structures(6)
    bad = dict(structures[1], id="overlap",
               positions=np.vstack([structures[1]["positions"][:1]] * 5))
    path = tmp_path / "s.h5"
    write_store(path, StructureBatch.from_structures([structures[0], bad, *structures[2:]]),
                units={"heat_ref": "eV"})
    g: GraphSet = load_graphs(path, cache_dir=tmp_path)
    assert g.status.tolist() == [0, 6, 0, 0, 0, 0]
    assert g.usable.tolist() == [0, 2, 3, 4, 5]
    with pytest.raises(ValueError):
        g.batch([1])


def test_per_atom_scales_by_the_atom_count(tiny_store: Path, tmp_path: Path) -> None:
    train(_cfg(tiny_store, tmp_path / "pa", epochs=1, per_atom=True))
    ck = _state(tmp_path / "pa" / "best.ckpt")
    assert ck["model"]["per_atom"] is True
    splits = json.loads((tmp_path / "pa" / "splits.json").read_text())
    y = {s["id"]: s["targets"]["heat_ref"] / 5 for s in perov_structures(60)}
    assert ck["target_mean"][0] == pytest.approx(np.mean([y[i] for i in splits["train"]]))


def test_separate_validation_and_test_stores(tiny_store: Path, tmp_path: Path) -> None:
    val, test = tmp_path / "val.h5", tmp_path / "test.h5"
    structures = perov_structures(75)
    write_store(val, StructureBatch.from_structures(structures[60:68]), units={"heat_ref": "eV"})
    write_store(test, StructureBatch.from_structures(structures[68:75]),
                units={"heat_ref": "eV"})
    result = train(_cfg(tiny_store, tmp_path / "run", epochs=1, val_fraction=None,
                        test_fraction=None, val_data=str(val), test_data=str(test)))
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (60, 8, 7)
    assert result.test_count == 7
    with pytest.raises(DeepergatError, match="either --val-data or --val-fraction"):
        train(_cfg(tiny_store, tmp_path / "x", val_data=str(val)))
