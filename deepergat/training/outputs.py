"""The files of a run folder (checkpoints aside), each written whole (`deepergat.system.files`).

==========================  ==================================================================
``config.yaml``             the resolved settings, flat (`TrainConfig.to_dict`)
``splits.json``             ``data``, ``seed`` and the ids of each split
``metrics.csv``             ``epoch,lr,train_mae,val_mae,seconds``, one row an epoch
``learning_curve.png``      training and validation MAE per epoch, log scale
``test_metrics.json``       the kept model on the test split
==========================  ==================================================================

Cross-validations and ensembles add their summaries (`write_json`) and ``oof.csv``
(`deepergat.training.cv`).
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deepergat.system.files import atomic_open, atomic_path
from deepergat.system.plotting import plain_text

from .config import TrainConfig
from .splits import RunSplits

__all__ = [
    "METRICS_HEADER",
    "EpochRecord",
    "plot_learning_curve",
    "read_metrics",
    "write_json",
    "write_metrics",
    "write_run_files",
]

#: The columns of ``metrics.csv``.
METRICS_HEADER = ("epoch", "lr", "train_mae", "val_mae", "seconds")


@dataclass
class EpochRecord:
    """One row of ``metrics.csv``.

    Attributes:
        epoch: epochs completed (1-based). lr: the learning rate the epoch trained with.
        train_mae, val_mae: MAE in the target's units (``val_mae`` NaN without a validation
            split). seconds: wall time of the epoch.
    """

    epoch: int
    lr: float
    train_mae: float
    val_mae: float
    seconds: float


def write_metrics(path: Path, rows: list[EpochRecord]) -> None:
    """``metrics.csv``, every epoch so far."""
    # csv's default dialect (\r\n line ends), as every metrics.csv written so far.
    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(METRICS_HEADER)
        for r in rows:
            w.writerow([r.epoch, f"{r.lr:.6g}", f"{r.train_mae:.6g}", f"{r.val_mae:.6g}",
                        f"{r.seconds:.3f}"])


def read_metrics(path: Path) -> list[EpochRecord]:
    """The rows of a ``metrics.csv`` (none when it does not exist)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [
            EpochRecord(int(r["epoch"]), float(r["lr"]), float(r["train_mae"]),
                        float(r["val_mae"]), float(r["seconds"]))
            for r in csv.DictReader(f)
        ]


def plot_learning_curve(rows: list[EpochRecord], path: Path, *, units: str = "",
                        title: str = "") -> None:
    """Training and validation MAE per epoch, log scale, to a PNG (matplotlib Agg).

    ``units`` and ``title`` are drawn as written (`deepergat.system.plotting.plain_text`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ep = [r.epoch for r in rows]
    ax.plot(ep, [r.train_mae for r in rows], label="train")
    ax.plot(ep, [r.val_mae for r in rows], label="validation")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"MAE ({plain_text(units)})" if units else "MAE")
    scored = [r for r in rows if math.isfinite(r.val_mae)]
    if scored:
        best = min(scored, key=lambda r: r.val_mae)
        ax.set_title(plain_text(title)
                     or f"best validation MAE {best.val_mae:.4g} at epoch {best.epoch}")
    elif rows:
        ax.set_title(plain_text(title)
                     or f"training MAE {rows[-1].train_mae:.4g} at epoch {rows[-1].epoch}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        with atomic_path(path) as staged:  # keeps the .png suffix: matplotlib picks by it
            fig.savefig(staged)
    finally:
        plt.close(fig)


def write_json(path: str | os.PathLike[str], doc: dict[str, Any], *,
               indent: int | None = 2) -> None:
    """A JSON document written whole."""
    with atomic_open(path, "w") as f:
        json.dump(doc, f, indent=indent)


def write_run_files(out: Path, cfg: TrainConfig, splits: RunSplits) -> None:
    """``config.yaml`` (the settings, flat) and ``splits.json`` of a run."""
    with atomic_open(out / "config.yaml", "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
    write_json(out / "splits.json", {"data": cfg.dataset.data, "seed": cfg.run.seed,
                                     **splits.ids()}, indent=None)
