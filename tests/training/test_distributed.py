"""Distributed data parallel: 2 gloo processes on CPU, launched like torchrun (RANK, WORLD_SIZE,
...), against one process that accumulates gradients over the same per-rank micro-batches
(BatchNorm statistics are per rank, so one global batch is not the right reference)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from deepergat.training.config import TrainConfig
from deepergat.training.data import load_graphs
from deepergat.training.splits import make_splits
from deepergat.training.trainer import batch_loss, epoch_batches, new_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _train_on_two_ranks(*args: str, timeout: float) -> tuple[list[int], list[str]]:
    """`deepergat train ARGS` as ranks 0 and 1 of a torchrun-style gloo group (1 thread each).

    Returns:
        (exit codes, combined stdout+stderr) per rank.
    """
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "deepergat.cli", "train", *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    return [p.returncode for p in procs], outputs


@pytest.mark.slow
def test_two_gloo_ranks_equal_gradient_accumulation(tiny_store: Path, tmp_path: Path) -> None:
    settings = {"data": str(tiny_store), "target": "heat_ref", "layers": 2, "epochs": 2,
                "batch_size": 16, "seed": 0, "val_fraction": 0.2, "test_fraction": 0.2,
                "model": {"dim": 16}, "cache_dir": str(tmp_path / "cache"), "device": "cpu"}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(settings))
    load_graphs(tiny_store, cache_dir=tmp_path / "cache")  # build the cache once, up front
    out = tmp_path / "ddp"
    codes, outputs = _train_on_two_ranks("--config", str(config), "--out", str(out), timeout=300)
    assert codes == [0, 0], outputs
    assert "epoch    2/2" in outputs[0] and "epoch" not in outputs[1]  # only rank 0 reports
    ddp = torch.load(out / "last.ckpt", weights_only=True)

    # The reference: one process, same initial weights, each step sums loss_r / 2 over the
    # micro-batches rank r would have taken, then one optimizer step.
    cfg = TrainConfig.from_dict({**settings, "out": str(tmp_path / "ref")})
    splits = make_splits(cfg)
    g, rows = splits.train
    y = g.targets["heat_ref"]
    mean, std = float(y[rows].mean()), float(y[rows].std())
    # One thread, as in the ranks: the same reduction order. (With two threads here, float
    # differences in gradients near zero become lr-sized AdamW steps of opposite sign.)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(cfg.run.seed)
        model = new_model(cfg, mean, std, None)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.trainer.lr,
                                weight_decay=cfg.trainer.weight_decay)
        model.train()
        for epoch in range(cfg.trainer.epochs):
            per_rank = [epoch_batches(len(rows), epoch=epoch, seed=cfg.run.seed,
                                      batch_size=cfg.trainer.batch_size, world_size=2, rank=r)
                        for r in range(2)]
            for step in range(len(per_rank[0])):
                opt.zero_grad()
                for r in range(2):
                    loss, _, _ = batch_loss(model, g, rows[per_rank[r][step]], y,
                                             torch.device("cpu"), std, False)
                    (loss / 2).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    worst = 0.0
    for name, p in model.named_parameters():
        d = ddp["state_dict"][name]
        np.testing.assert_allclose(d.numpy(), p.detach().numpy(), rtol=1e-3, atol=2e-4,
                                   err_msg=name)
        worst = max(worst, float((d - p.detach()).abs().max()))
    assert worst < 2e-4
    assert ddp["training"]["epoch"] == 2
    metrics = (out / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 3


@pytest.mark.slow
def test_a_user_error_on_rank_0_stops_every_rank(tiny_store: Path, tmp_path: Path) -> None:
    codes, outputs = _train_on_two_ranks(
        "--data", str(tiny_store), "--target", "nope", "--device", "cpu",
        "--cache-dir", str(tmp_path), "--out", str(tmp_path / "run"), timeout=120)
    assert codes == [2, 2], outputs
    assert "available: heat_ref" in outputs[0]
