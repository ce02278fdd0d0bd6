"""Helpers for the training tests: a tiny run configuration and checkpoint comparisons."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from deepergat.training.config import TrainConfig

#: Model arguments of the tests' tiny networks.
TINY = {"dim": 16}


def run_config(store: Path, out: Path, **settings: Any) -> TrainConfig:
    """A 2-layer, 2-epoch run on ``store`` into ``out`` (60/20/20 split, CPU, cache beside
    ``out``); ``settings`` by name override these."""
    base: dict[str, Any] = dict(
        data=str(store), target="heat_ref", out=str(out), layers=2, epochs=2, batch_size=16,
        seed=0, test_fraction=0.2, val_fraction=0.2, model=TINY,
        cache_dir=str(out.parent / "cache"), device="cpu")
    return TrainConfig.from_dict({**base, **settings})


def saved(path: Path) -> dict:
    """A checkpoint's dict as written."""
    return torch.load(path, weights_only=True)


def assert_same_weights(a: Path, b: Path, *, optimizer: bool = True) -> None:
    """Two checkpoints hold bit-identical weights (and AdamW moments, unless not asked)."""
    sa, sb = saved(a), saved(b)
    for k, v in sa["state_dict"].items():
        assert torch.equal(v, sb["state_dict"][k]), k
    if not optimizer:
        return
    oa, ob = sa["training"]["optimizer"]["state"], sb["training"]["optimizer"]["state"]
    for i in oa:
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(oa[i][k], ob[i][k])
