"""The trainer: what a run writes, exact resume (after an epoch and mid-epoch), signals,
max_time, early stop, fixed seeds, subnormals, fine-tuning, per-atom targets, the launcher."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import yaml
from model_helpers import perov_structures
from train_helpers import assert_same_weights, run_config, saved

from deepergat.errors import DeepergatError, SettingError
from deepergat.system.launch import first_host, launch_info
from deepergat.training.data import load_graphs
from deepergat.training.trainer import Trainer, epoch_batches, train


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
    result = train(run_config(tiny_store, out), progress=seen.append)
    assert [r.epoch for r in seen] == [1, 2] and result.epochs_done == 2
    for name in ("config.yaml", "splits.json", "metrics.csv", "learning_curve.png", "best.ckpt",
                 "last.ckpt", "test_metrics.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.tmp*"))  # every file written whole, nothing left beside
    with open(out / "metrics.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "lr", "train_mae", "val_mae", "seconds"] and len(rows) == 3
    splits = json.loads((out / "splits.json").read_text())
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (36, 12, 12)
    assert not set(splits["train"]) & set(splits["test"])
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["n"] == 12 and metrics["mae"] == pytest.approx(result.test_mae)
    assert metrics["units"] == "eV" and result.test_count == 12
    best = saved(out / "best.ckpt")
    assert best["training"] is None and best["units"] == ["eV"]
    assert best["elements"] == sorted(best["elements"]) and 8 in best["elements"]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["layers"] == 2 and list(config) == list(run_config(tiny_store, out).to_dict())
    assert best["extra"]["config"] == saved(out / "last.ckpt")["extra"]["config"] == config
    with pytest.raises(SettingError, match="already holds a run") as err:
        train(run_config(tiny_store, out))
    assert err.value.settings == ["resume", "out"]


def test_resume_after_epochs_is_bitwise_exact(tiny_store: Path, tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    train(run_config(tiny_store, straight, epochs=4))
    split = tmp_path / "split"
    train(run_config(tiny_store, split, epochs=2))
    train(run_config(tiny_store, split, epochs=4, resume=True))
    assert_same_weights(straight / "last.ckpt", split / "last.ckpt")
    a = (straight / "metrics.csv").read_text().splitlines()
    b = (split / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[:4] for r in a] == [r.split(",")[:4] for r in b]


def test_resume_keeps_the_saved_runs_settings(tiny_store: Path, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """A resumed run takes what decides the meaning of its saved state (seed, layers, ...)
    from last.ckpt, whatever the new settings say, and says so."""
    straight = tmp_path / "straight"
    train(run_config(tiny_store, straight, epochs=2))
    split = tmp_path / "split"
    train(run_config(tiny_store, split, epochs=1))
    changed = run_config(tiny_store, split, epochs=2, resume=True, seed=7, batch_size=8)
    with caplog.at_level("WARNING", logger="deepergat"):
        train(changed)
    assert "seed is 0 in the saved run, 7 now" in caplog.text
    assert changed.run.seed == 7  # the caller's settings are left as they were
    assert_same_weights(straight / "last.ckpt", split / "last.ckpt")
    written = yaml.safe_load((split / "config.yaml").read_text())
    assert (written["seed"], written["batch_size"], written["epochs"]) == (0, 16, 2)


@pytest.mark.parametrize("schedule", ["plateau", "cosine"])
def test_signal_mid_epoch_then_resume_is_exact(
    tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, schedule: str
) -> None:
    straight = tmp_path / "straight"
    train(run_config(tiny_store, straight, epochs=3, lr_schedule=schedule))
    calls = {"n": 0}
    real = Trainer.stop_reason

    def stop_at_fifth_batch(self: Trainer, stopper: object, t0: float) -> str | None:
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGUSR1)  # the handler installed by train() sets a flag
        return real(self, stopper, t0)  # type: ignore[arg-type]

    monkeypatch.setattr(Trainer, "stop_reason", stop_at_fifth_batch)
    split = tmp_path / "split"
    result = train(run_config(tiny_store, split, epochs=3, lr_schedule=schedule))
    assert result.stopped == "signal" and result.epochs_done == 1 and not result.requeued
    state = saved(split / "last.ckpt")["training"]
    assert (state["epoch"], state["step"]) == (1, 1)  # 3 batches an epoch: stopped in epoch 2
    monkeypatch.setattr(Trainer, "stop_reason", real)
    train(run_config(tiny_store, split, epochs=3, resume=True, lr_schedule=schedule))
    assert_same_weights(straight / "last.ckpt", split / "last.ckpt")
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    if schedule == "cosine":  # annealed from lr to min_lr over the run, whatever the losses
        lrs = [float(r.split(",")[1]) for r in
               (straight / "metrics.csv").read_text().splitlines()[1:]]
        want = [1e-5 + (0.005 - 1e-5) * 0.5 * (1 + math.cos(math.pi * e / 3)) for e in range(3)]
        assert lrs == pytest.approx(want, rel=1e-4)


def test_max_time_and_early_stop(tiny_store: Path, tmp_path: Path) -> None:
    result = train(run_config(tiny_store, tmp_path / "t", max_time=0.0))
    assert result.stopped == "max_time" and result.test_mae is None
    assert (tmp_path / "t" / "last.ckpt").is_file()
    assert not (tmp_path / "t" / "test_metrics.json").exists()
    result = train(run_config(tiny_store, tmp_path / "e", epochs=30, early_stop=1, lr=0.5))
    assert result.stopped == "early_stop" and result.epochs_done < 30
    assert result.test_mae is not None
    # resumed (an ensemble assembling members trained with --member), it stays stopped
    again = train(run_config(tiny_store, tmp_path / "e", epochs=30, early_stop=1, lr=0.5,
                             resume=True))
    assert again.stopped == "early_stop" and again.epochs_done == result.epochs_done


def test_fixed_seed_gives_identical_runs(tiny_store: Path, tmp_path: Path) -> None:
    train(run_config(tiny_store, tmp_path / "a", epochs=1))
    train(run_config(tiny_store, tmp_path / "b", epochs=1))
    assert_same_weights(tmp_path / "a" / "last.ckpt", tmp_path / "b" / "last.ckpt")


def _subnormals_flushed() -> bool:
    import torch

    return (torch.tensor([1e-39]) * 1.0).item() == 0.0


def test_cpu_training_flushes_subnormals_and_restores_the_default(
        tiny_store: Path, tmp_path: Path) -> None:
    """Deep stacks produce subnormal floats, ~100× slower on a CPU (docs/design.md §5,
    "Training recipe"): a CPU run flushes them to zero while it trains and leaves the process
    as it found it."""
    seen: list[bool] = []
    assert not _subnormals_flushed()
    train(run_config(tiny_store, tmp_path / "run", epochs=1),
          progress=lambda r: seen.append(_subnormals_flushed()))
    assert seen == [True]
    assert not _subnormals_flushed()


def test_a_run_without_validation_keeps_its_last_epoch(tiny_store: Path, tmp_path: Path) -> None:
    res = train(run_config(tiny_store, tmp_path / "c", val_fraction=0.0, epochs=2,
                           lr_monitor="train", keep="last"))
    assert res.best_epoch == 2 and np.isnan(res.best_val_mae) and res.test_mae is not None
    assert_same_weights(tmp_path / "c" / "best.ckpt", tmp_path / "c" / "last.ckpt",
                        optimizer=False)


def test_recipe_settings_reach_the_model(tiny_store: Path, tmp_path: Path) -> None:
    train(run_config(tiny_store, tmp_path / "a", epochs=1, graph="minimum-image",
                     distance_scale="data", scale_targets=False))
    data = saved(tmp_path / "a" / "best.ckpt")
    g = load_graphs(tiny_store, graph="minimum-image", cache_dir=tmp_path / "cache")
    train_ids = set(json.loads((tmp_path / "a" / "splits.json").read_text())["train"])
    rows = np.array([i for i, s in enumerate(g.ids) if s in train_ids])
    assert data["model"]["graph"] == "minimum-image"
    assert data["graph"] == {"cutoff": 8.0, "max_neighbors": 12, "construction": "minimum-image",
                             "translation_tolerance": 0.25, "translation_max_atoms": 256}
    assert data["model"]["distance_scale"] == pytest.approx(g.max_distance(rows), abs=1e-4)
    assert data["model"]["distance_scale"] >= g.max_distance(rows)
    assert data["target_mean"] == [0.0] and data["target_std"] == [1.0]


def test_init_from_checks_model_settings(tiny_store: Path, tmp_path: Path) -> None:
    train(run_config(tiny_store, tmp_path / "a", epochs=1))
    with pytest.raises(SettingError, match=r"init_from .* its model settings differ") as err:
        train(run_config(tiny_store, tmp_path / "b", layers=3,
                         init_from=str(tmp_path / "a" / "best.ckpt")))
    assert "'layers': (2, 3)" in str(err.value)
    train(run_config(tiny_store, tmp_path / "c", epochs=1,
                     init_from=str(tmp_path / "a" / "best.ckpt")))
    bad = tmp_path / "bad.ckpt"
    import torch

    torch.save({"kind": "deepergat-checkpoint", "format": 7}, bad)
    with pytest.raises(DeepergatError, match="format 7 is not supported"):
        train(run_config(tiny_store, tmp_path / "e", init_from=str(bad)))


def test_settings_a_run_refuses(tiny_store: Path, tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="out RUN_DIR is required"):
        train(run_config(tiny_store, tmp_path / "x").replace(out=""))
    with pytest.raises(SettingError, match="epochs, batch size and learning rate must be"):
        train(run_config(tiny_store, tmp_path / "x", epochs=0))
    assert not (tmp_path / "x").exists()


def test_per_atom_scales_by_the_atom_count(tiny_store: Path, tmp_path: Path) -> None:
    train(run_config(tiny_store, tmp_path / "pa", epochs=1, per_atom=True))
    ck = saved(tmp_path / "pa" / "best.ckpt")
    assert ck["model"]["per_atom"] is True
    splits = json.loads((tmp_path / "pa" / "splits.json").read_text())
    y = {s["id"]: s["targets"]["heat_ref"] / 5 for s in perov_structures(60)}
    assert ck["target_mean"][0] == pytest.approx(np.mean([y[i] for i in splits["train"]]))


# ------------------------------------------------------------------ launcher


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


# ------------------------------------------------------------------------ runs that diverge


def test_a_diverging_run_stops_with_one_line_and_writes_no_checkpoint(
        tiny_store: Path, tmp_path: Path) -> None:
    """``lr 1e8`` printed NaN metrics, exited 0 and named a best.ckpt it never wrote."""
    out = tmp_path / "run"
    with pytest.raises(SettingError) as e:
        train(run_config(tiny_store, out, lr=1e8))
    line = str(e.value)
    assert line.startswith("training diverged in epoch 1 (batch ") and "\n" not in line
    assert "is not a finite number" in line and "lr 1e+08" in line
    assert "no checkpoint was written" in line
    assert e.value.settings == ["lr", "out"]
    assert not (out / "best.ckpt").exists() and not (out / "last.ckpt").exists()
    assert not (out / "metrics.csv").exists()


def _poison_in_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """From the first batch of ``epoch`` (1-based) on, every step leaves a NaN weight (the
    step's own loss is finite: the divergence shows in the next batch or the metrics)."""
    real = Trainer.take_step

    def take_step(self: Trainer, rows: np.ndarray) -> None:
        real(self, rows)
        if self.state.epoch + 1 >= epoch:
            import torch

            with torch.no_grad():
                next(self.model.parameters()).view(-1)[0] = math.nan

    monkeypatch.setattr(Trainer, "take_step", take_step)


@pytest.mark.parametrize("every", [None, 2, 32])
def test_a_run_that_diverges_later_keeps_its_last_good_epoch(
        tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        every: int | None) -> None:
    """Nothing of the diverging epoch is saved: last.ckpt (which resume continues from),
    best.ckpt and metrics.csv hold the last epoch whose numbers were finite. The same when the
    steps' error sums are read every 2 or 32 steps (as on a GPU) instead of every step: the
    divergence is found later in the epoch, and named by the same epoch and batch."""
    import torch

    from deepergat.training import trainer as trainer_module

    if every is not None:
        monkeypatch.setattr(trainer_module, "settle_every", lambda device: every)
    out = tmp_path / "run"
    _poison_in_epoch(monkeypatch, 2)
    found = "loss" if every is None else "(loss|MAE)"
    with pytest.raises(SettingError, match=r"^training diverged in epoch 2 \(batch 2\): "
                                           rf"the training {found} is not a finite number.*"
                                           r"last\.ckpt holds epoch 1"):
        train(run_config(tiny_store, out, epochs=3))
    last = saved(out / "last.ckpt")
    assert last["training"]["epoch"] == 1
    for name in ("last.ckpt", "best.ckpt"):
        state = saved(out / name)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert len((out / "metrics.csv").read_text().splitlines()) == 2  # header and epoch 1
    monkeypatch.undo()
    result = train(run_config(tiny_store, out, epochs=3, resume=True))
    assert result.epochs_done == 3 and math.isfinite(result.best_val_mae)


def test_non_finite_weights_after_an_epochs_last_step_are_not_saved(
        tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step whose loss was finite can still leave non-finite weights (its gradient
    overflowed): the epoch's end checks the weights before it saves anything."""
    out = tmp_path / "run"
    real = Trainer.take_step

    def last_step_poisons(self: Trainer, rows: np.ndarray) -> None:
        real(self, rows)
        if self.state.epoch == 1 and self.state.step == 3:  # 3 batches an epoch
            import torch

            with torch.no_grad():
                next(self.model.parameters()).view(-1)[0] = math.inf

    monkeypatch.setattr(Trainer, "take_step", last_step_poisons)
    with pytest.raises(SettingError, match=r"diverged in epoch 2: (a weight of the model|the "
                                           r"validation MAE) is not a finite number"):
        train(run_config(tiny_store, out, epochs=3, val_fraction=0.0, lr_monitor="train",
                         keep="last"))
    assert saved(out / "last.ckpt")["training"]["epoch"] == 1


def test_a_signal_never_saves_a_non_finite_state(
        tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    train(run_config(tiny_store, out, epochs=1))
    before = (out / "last.ckpt").read_bytes()
    _poison_in_epoch(monkeypatch, 2)
    real = Trainer.stop_reason

    def signal_after_one_batch(self: Trainer, stopper: object, t0: float) -> str | None:
        if self.state.step == 1:
            return "signal"
        return real(self, stopper, t0)  # type: ignore[arg-type]

    monkeypatch.setattr(Trainer, "stop_reason", signal_after_one_batch)
    with pytest.raises(SettingError, match="diverged in epoch 2"):
        train(run_config(tiny_store, out, epochs=2, resume=True))
    assert (out / "last.ckpt").read_bytes() == before


def test_a_learning_curve_that_cannot_be_drawn_is_a_warning(
        tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A plot never stops a run: units that matplotlib could not draw crashed every epoch."""
    import deepergat.training.trainer as trainer_module

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("Unknown symbol: \\notacommand")

    monkeypatch.setattr(trainer_module, "plot_learning_curve", broken)
    out = tmp_path / "run"
    result = train(run_config(tiny_store, out))
    assert result.epochs_done == 2 and (out / "best.ckpt").is_file()
    assert "learning curve not drawn: ValueError: Unknown symbol" in caplog.text


def test_units_that_read_as_mathtext_train_and_are_drawn(tmp_path: Path) -> None:
    """``--target 'heat_ref:$\\notacommand$'`` crashed every epoch's learning curve."""
    from deepergat.io.store import StructureBatch, write_store

    store = tmp_path / "units.h5"
    write_store(store, StructureBatch.from_structures(perov_structures(30)),
                units={"heat_ref": "$\\notacommand$"})
    out = tmp_path / "run"
    result = train(run_config(store, out))
    assert result.units == "$\\notacommand$" and result.epochs_done == 2
    assert (out / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_a_compiled_training_step_trains_the_same_model(tiny_store: Path, tmp_path: Path
                                                         ) -> None:
    """``--compile``: the same epochs to float32 rounding, checkpoints of the plain model (no
    compiler wrapper in their keys), the setting recorded; a resumed run may drop it."""
    pytest.importorskip("torch._inductor")
    from deepergat.training.trainer import inductor_compiler

    if inductor_compiler() is None:
        pytest.skip("no C++ compiler for Inductor")
    import torch

    from deepergat.training.trainer import batch_loss, compiled

    g = load_graphs(tiny_store, cache_dir=tmp_path / "cache")
    from deepergat.nn.deepergatgnn import DeeperGATGNN

    torch.manual_seed(0)
    net = DeeperGATGNN(layers=2, dim=16)
    net.train()
    rows = g.usable[:16]
    y = g.targets["heat_ref"]
    grads = []
    for model in (net, compiled(net, torch.device("cpu"))):
        net.zero_grad()
        loss, _, _ = batch_loss(model, g, rows, y, torch.device("cpu"), 1.0, False)
        loss.backward()
        grads.append((float(loss.detach()), [p.grad.clone() for p in net.parameters()]))
    assert grads[1][0] == pytest.approx(grads[0][0], rel=1e-5)
    for ga, gb in zip(grads[0][1], grads[1][1], strict=True):
        np.testing.assert_allclose(gb.numpy(), ga.numpy(), rtol=1e-3, atol=1e-6)
    eager, fast = tmp_path / "eager", tmp_path / "compiled"
    train(run_config(tiny_store, eager, epochs=1))
    train(run_config(tiny_store, fast, epochs=1, compile=True))
    a, b = saved(eager / "last.ckpt"), saved(fast / "last.ckpt")
    assert list(a["state_dict"]) == list(b["state_dict"])  # the plain model's keys
    mae = [np.loadtxt(d / "metrics.csv", delimiter=",", skiprows=1)[2:4] for d in (eager, fast)]
    np.testing.assert_allclose(mae[1], mae[0], rtol=0.02)
    assert yaml.safe_load((fast / "config.yaml").read_text())["compile"] is True
    train(run_config(tiny_store, fast, epochs=2, resume=True))  # resumed without compiling
    with open(fast / "metrics.csv") as f:
        assert len(list(csv.reader(f))) == 3


def test_compile_without_a_compiler_is_one_setting_error(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    import torch
    from torch._inductor import config

    from deepergat.training import trainer

    # Inductor's own search: $CXX (here one that does not exist), else g++ — not PATH's c++
    monkeypatch.setattr(config.cpp, "cxx", ("deepergat-no-such-cxx",))
    monkeypatch.setenv("CXX", "deepergat-no-such-cxx")
    with pytest.raises(SettingError, match=r"C\+\+ compiler \(deepergat-no-such-cxx") as err:
        trainer.compiled(torch.nn.Linear(2, 2), torch.device("cpu"))
    assert err.value.settings == ["compile"]


def test_a_bf16_step_is_autocast_and_what_is_kept_stays_float32(tiny_store: Path,
                                                                tmp_path: Path) -> None:
    """``--precision bf16``: the forward pass runs in bfloat16 (the loss differs from fp32's by
    bfloat16 rounding, not more), the loss and every kept tensor are float32, validation errors
    are float32 and close to an fp32 run's; the setting is recorded."""
    import torch

    from deepergat.nn.deepergatgnn import DeeperGATGNN
    from deepergat.training.trainer import batch_loss

    g = load_graphs(tiny_store, cache_dir=tmp_path / "cache")
    torch.manual_seed(0)
    net = DeeperGATGNN(layers=2, dim=16).train()
    rows, y = g.usable[:16], g.targets["heat_ref"]
    losses = {}
    for precision in ("fp32", "bf16"):
        loss, err_sum, _ = batch_loss(net, g, rows, y, torch.device("cpu"), 1.0, False,
                                      precision=precision)  # type: ignore[arg-type]
        assert loss.dtype == torch.float32 and math.isfinite(float(err_sum))
        losses[precision] = float(loss.detach())
    assert losses["bf16"] != losses["fp32"]  # really autocast
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)
    plain, half = tmp_path / "fp32", tmp_path / "bf16"
    train(run_config(tiny_store, plain, epochs=2))
    train(run_config(tiny_store, half, epochs=2, precision="bf16"))
    kept = saved(half / "last.ckpt")["state_dict"]
    assert all(t.dtype == torch.float32 for t in kept.values() if t.is_floating_point())
    mae = [np.loadtxt(d / "metrics.csv", delimiter=",", skiprows=1)[-1, 2:4] for d in (plain, half)]
    np.testing.assert_allclose(mae[1], mae[0], rtol=0.25)
    assert yaml.safe_load((half / "config.yaml").read_text())["precision"] == "bf16"


def test_tf32_on_a_cpu_and_an_unknown_precision_are_one_setting_error(tiny_store: Path,
                                                                       tmp_path: Path) -> None:
    from click.testing import CliRunner

    from deepergat.cli import main

    with pytest.raises(SettingError, match="tf32 is an NVIDIA GPU mode") as err:
        train(run_config(tiny_store, tmp_path / "run", epochs=1, precision="tf32",
                         device="cpu"))
    assert err.value.settings == ["precision"]
    with pytest.raises(SettingError, match="precision: 'fp16' is not one of fp32, bf16, tf32"):
        run_config(tiny_store, tmp_path / "run2", epochs=1, precision="fp16")
    r = CliRunner().invoke(main, ["train", "--data", str(tiny_store), "--target", "heat_ref",
                                  "--out", str(tmp_path / "run3"), "--epochs", "1",
                                  "--device", "cpu", "--precision", "tf32"])
    assert r.exit_code == 2 and "--precision tf32 is an NVIDIA GPU mode" in r.output


def test_graphs_prepared_on_the_device_train_as_the_host_batches_do(
        tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose graphs are prepared once on its device (`DeviceGraphs`, chosen on a GPU
    where they fit) trains bitwise as one whose batches are cut on the host; forced here on
    the CPU, which keeps them on the host by itself."""
    import torch

    from deepergat.training import trainer as trainer_module
    from deepergat.training.data import DeviceGraphs, GraphSet

    g = load_graphs(tiny_store, cache_dir=tmp_path)
    assert trainer_module.graphs_on([g], torch.device("cpu")) == [g]
    host = train(run_config(tiny_store, tmp_path / "host", epochs=2, per_atom=True))
    made: list[DeviceGraphs] = []

    def on_device(sets: list[GraphSet], device: torch.device) -> list[DeviceGraphs]:
        made.extend(DeviceGraphs(g, device) for g in sets)
        return made[-len(sets):]

    monkeypatch.setattr(trainer_module, "graphs_on", on_device)
    device = train(run_config(tiny_store, tmp_path / "device", epochs=2, per_atom=True))
    assert made  # the run cut its batches (and its targets and atom counts) from them
    assert [r.train_mae for r in device.history] == [r.train_mae for r in host.history]
    assert [r.val_mae for r in device.history] == [r.val_mae for r in host.history]
    assert_same_weights(tmp_path / "host" / "last.ckpt", tmp_path / "device" / "last.ckpt")


@pytest.mark.parametrize("every", [2, 5, 32])
def test_error_sums_read_every_few_steps_give_the_same_run(
        tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, every: int) -> None:
    """On a GPU the steps' |error| sums are read every `SETTLE_EVERY_GPU` steps (a read waits
    for the device): the metrics and weights are bitwise those of reading every step (forced
    here on the CPU, 9 steps an epoch: reads within and across epochs, and at epochs' ends only;
    divergences: `test_a_run_that_diverges_later_keeps_its_last_good_epoch`)."""
    from deepergat.training import trainer as trainer_module

    host = train(run_config(tiny_store, tmp_path / "each", epochs=2, batch_size=4))
    monkeypatch.setattr(trainer_module, "settle_every", lambda device: every)
    lazy = train(run_config(tiny_store, tmp_path / "lazy", epochs=2, batch_size=4))
    assert [r.train_mae for r in lazy.history] == [r.train_mae for r in host.history]
    assert [r.val_mae for r in lazy.history] == [r.val_mae for r in host.history]
    assert_same_weights(tmp_path / "each" / "last.ckpt", tmp_path / "lazy" / "last.ckpt")
