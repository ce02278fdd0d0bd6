"""Training: single process or ``torch.distributed`` data parallel, resumable to the bit.

`train` runs one training job described by a `TrainConfig` and writes to its run folder:

* ``config.yaml`` (the resolved configuration), ``splits.json`` (ids of each split),
* ``metrics.csv`` (``epoch,lr,train_mae,val_mae,seconds``) and ``learning_curve.png``,
* ``best.ckpt`` (the model the run keeps: lowest validation MAE, or with ``keep: last`` the last
  epoch) and ``last.ckpt`` (with optimizer, scheduler, epoch, position within the epoch and RNG
  states), both written atomically every epoch,
* ``test_metrics.json`` at the end, from ``best.ckpt`` on the test split.

Batches come from a `DistributedSampler` (one replica when not distributed) seeded by the run's
seed and the epoch, so the order of batches is a function of (seed, epoch) alone: a run resumed
from ``last.ckpt`` — after an epoch or after a signal in the middle of one — continues exactly as
the uninterrupted run would have. SIGUSR1 / SIGTERM and ``max_time`` stop at the next batch:
``last.ckpt`` is written, a requeue-able SLURM job is requeued, and `train` returns.

Defaults are the reference's: AdamW lr 0.005, 100 crystals a batch, ReduceLROnPlateau (factor
0.8, patience 10, min lr 1e-5, threshold 2e-4), L1 loss, 500 epochs. Targets are scaled by the
training set's mean and std inside the model (``scale_targets``); the loss is the L1 distance in
scaled units. The recipe settings the accuracy study varied (benchmarks/ACCURACY.md) are
fields of `TrainConfig`: ``graph``, ``distance_scale``, ``scale_targets``, ``lr_monitor`` and
``keep``.

`cross_validate` runs K-fold cross-validation: fold k is held out of member k's training,
learning-rate schedule and checkpoint choice, so the out-of-fold predictions (``oof.csv``) are
honest; ``cv_metrics.json`` has per-fold and mean ± std MAE.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from deepergat.architectures import UNWRITTEN
from deepergat.contract import Status
from deepergat.errors import DeepergatError
from deepergat.nn.checkpoint import atomic_save, make_checkpoint, read_checkpoint
from deepergat.nn.graphmodel import GraphModel
from deepergat.nn.registry import make_model
from deepergat.system.devices import pick_device, visible_gpus
from deepergat.system.launch import (
    LaunchInfo,
    launch_info,
    requeue_slurm_job,
    setup_distributed,
    teardown_distributed,
)

from .config import DEFAULT_VAL_FRACTION, TrainConfig, parse_max_time
from .data import GraphSet, load_graphs, to_tensors

__all__ = [
    "EpochRecord",
    "RunSplits",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "cross_validate",
    "epoch_batches",
    "parse_max_time",
    "plan_folds",
    "predict_rows",
    "train",
    "train_ensemble",
]

log = logging.getLogger(__name__)

METRICS_HEADER = ("epoch", "lr", "train_mae", "val_mae", "seconds")


@dataclass
class RunSplits:
    """The train / validation / test structures: a graph set and its rows for each."""

    train: tuple[GraphSet, np.ndarray]
    val: tuple[GraphSet, np.ndarray]
    test: tuple[GraphSet, np.ndarray] | None = None

    def ids(self) -> dict[str, list[str]]:
        out = {}
        for name in ("train", "val", "test"):
            part = getattr(self, name)
            if part is not None:
                g, rows = part
                out[name] = [g.ids[r] for r in rows]
        return out


@dataclass
class EpochRecord:
    epoch: int
    lr: float
    train_mae: float
    val_mae: float
    seconds: float


@dataclass
class TrainResult:
    """What a run did.

    Attributes:
        out: run folder. epochs_done: completed epochs. best_epoch, best_val_mae: of best.ckpt.
        test_mae: test split MAE from best.ckpt (None without a test split or when stopped).
        stopped: ``None`` (finished), ``"early_stop"``, ``"signal"`` or ``"max_time"``.
        requeued: whether a SLURM requeue was issued. history: this invocation's epochs.
    """

    out: Path
    epochs_done: int
    best_epoch: int
    best_val_mae: float
    test_mae: float | None = None
    test_count: int = 0
    stopped: str | None = None
    requeued: bool = False
    units: str = ""
    history: list[EpochRecord] = field(default_factory=list)


# ----------------------------------------------------------------------------- helpers


def epoch_batches(n: int, *, epoch: int, seed: int, batch_size: int, world_size: int = 1,
                  rank: int = 0) -> list[np.ndarray]:
    """This rank's training batches (positions in the training split) of one epoch.

    A `DistributedSampler` shuffled with (seed, epoch) gives the rank's share; it is cut into
    micro-batches of ceil(batch_size / world_size) crystals, so the ranks together take
    ``batch_size`` crystals a step. Every rank gets the same number of batches. A last
    micro-batch of one crystal joins the one before it (BatchNorm over crystals, as MEGNet's
    crystal state has, needs two rows in training); the ranks' shares are equal, so every rank
    does so alike.
    """
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    order = np.fromiter(iter(sampler), dtype=np.int64)
    local = max(1, math.ceil(batch_size / world_size))
    batches = [order[i : i + local] for i in range(0, len(order), local)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [np.concatenate(batches[-2:])]
    return batches


def _resolve_device(name: str, info: LaunchInfo) -> torch.device:
    """The training device: `deepergat.devices.pick_device` over the visible GPUs; ``auto``
    falls back to the CPU where this torch cannot use CUDA."""
    kind, index = pick_device(name, info.local_rank, visible_gpus())
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeepergatError(
            f"--device {name}: a GPU is visible but this torch ({torch.__version__}) cannot use "
            "CUDA; install a CUDA build of torch or use --device cpu"
        )
    return torch.device("cuda", index)


def _targets_of(g: GraphSet, name: str, rows: np.ndarray) -> np.ndarray:
    if not g.targets:
        raise DeepergatError(
            f"{g.source}: the store has no targets; pack it with --target NAME[:UNIT]"
        )
    if name not in g.targets:
        raise DeepergatError(
            f"{g.source}: no target {name!r}; available: {', '.join(sorted(g.targets))}"
        )
    y = g.targets[name][rows]
    bad = ~np.isfinite(y)
    if bad.any():
        ids = [g.ids[r] for r in rows[bad]]
        more = f" and {len(ids) - 10} more" if len(ids) > 10 else ""
        raise DeepergatError(
            f"{g.source}: target {name!r} is NaN or infinite for {len(ids)} structures "
            f"(ids {', '.join(ids[:10])}{more}); drop them or fix their values"
        )
    return y


def _usable_rows(g: GraphSet) -> np.ndarray:
    rows = g.usable
    skipped = len(g) - len(rows)
    if skipped:
        bad = [g.ids[r] for r in np.flatnonzero(g.status != Status.OK)[:10]]
        log.warning("%s: %d structures fail the graph checks and are left out (ids %s%s)",
                    g.source, skipped, ", ".join(bad), " …" if skipped > 10 else "")
    return rows


def _fraction(value: float | None, what: str) -> float:
    v = 0.0 if value is None else float(value)
    if not 0.0 <= v < 1.0:
        raise DeepergatError(f"--{what}-fraction {value}: must lie in [0, 1)")
    return v


def make_splits(cfg: TrainConfig, *, progress: Callable[[int], None] | None = None,
                require_val: bool = True) -> RunSplits:
    """Load graphs and split them as the configuration says (fixed by the seed).

    Args:
        cfg: the run configuration.
        progress: called with structure counts while graphs are built.
        require_val: an empty validation split is an error (cross-validation makes its own).
    """
    graphs = {}

    def get(path: str) -> GraphSet:
        if path not in graphs:
            graphs[path] = load_graphs(path, cutoff=cfg.cutoff, max_neighbors=cfg.max_neighbors,
                                       graph=cfg.graph, cache_dir=cfg.cache_dir,
                                       progress=progress)
        return graphs[path]

    if cfg.val_data and cfg.val_fraction:
        raise DeepergatError("give either --val-data or --val-fraction, not both")
    if cfg.test_data and cfg.test_fraction:
        raise DeepergatError("give either --test-data or --test-fraction, not both")
    main = get(cfg.data)
    rows = _usable_rows(main)
    _targets_of(main, cfg.target, rows)
    rng = np.random.default_rng(cfg.seed)
    rows = rows[rng.permutation(len(rows))]
    val_f = (DEFAULT_VAL_FRACTION if (cfg.val_data is None and cfg.val_fraction is None)
             else cfg.val_fraction)
    val_f = _fraction(val_f if cfg.val_data is None else 0.0, "val")
    test_f = _fraction(cfg.test_fraction if cfg.test_data is None else 0.0, "test")
    n_test = round(test_f * len(rows))
    n_val = round(val_f * len(rows))
    test_rows, val_rows, train_rows = (
        rows[:n_test], rows[n_test : n_test + n_val], rows[n_test + n_val :]
    )
    val = (main, val_rows)
    if cfg.val_data:
        g = get(cfg.val_data)
        val = (g, _usable_rows(g))
    test = (main, test_rows) if n_test else None
    if cfg.test_data:
        g = get(cfg.test_data)
        test = (g, _usable_rows(g))
    splits = RunSplits(train=(main, train_rows), val=val, test=test)
    for name in ("train", "val", "test"):
        part = getattr(splits, name)
        if part is None:
            continue
        g, r = part
        if len(r) == 0 and name == "val" and require_val and _needs_validation(cfg):
            raise DeepergatError(
                f"{g.source}: no validation structures, but lr_monitor is {cfg.lr_monitor!r} "
                f"and keep is {cfg.keep!r}; give --val-fraction > 0 (or --val-data), or set "
                "lr_monitor: train and keep: last"
            )
        if len(r) == 0 and name != "val":
            raise DeepergatError(
                f"{g.source}: the {name} split is empty ({len(main.usable)} usable structures); "
                "use more data or other split fractions"
            )
        if len(r):
            _targets_of(g, cfg.target, r)
    return splits


def _needs_validation(cfg: TrainConfig) -> bool:
    monitored = cfg.lr_schedule == "plateau" and cfg.lr_monitor == "val"
    return monitored or cfg.keep == "best" or cfg.early_stop is not None


def resolve_distance_scale(cfg: TrainConfig, g: GraphSet, rows: np.ndarray) -> float | None:
    """The model's ``distance_scale`` for this run: None (the cutoff), the given length, or the
    longest edge of the given (training) rows, rounded up to 1e-4 Å."""
    scale = cfg.distance_scale
    if scale == "cutoff":
        return None
    if scale == "data":
        longest = g.max_distance(rows)
        if longest <= 0:
            raise DeepergatError(f"{g.source}: distance_scale data: the training graphs have no "
                                 "edges; use distance_scale: cutoff")
        return math.ceil(longest * 1e4) / 1e4
    return float(scale)


def predict_rows(model: nn.Module, g: GraphSet, rows: np.ndarray, *, batch_size: int = 100,
                 device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Predictions and embeddings of usable rows (eval mode, no grad).

    Returns:
        ([n, T] float32 predictions in the targets' units, [n, D] float32 embeddings).
    """
    model.eval()
    preds, embs = [], []
    with torch.no_grad():
        for a in range(0, len(rows), batch_size):
            inputs = to_tensors(g.batch(rows[a : a + batch_size]), device)
            p, e = model(*inputs.values())
            preds.append(p.float().cpu().numpy())
            embs.append(e.float().cpu().numpy())
    if not preds:
        return np.zeros((0, 1), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(preds), np.concatenate(embs)


class _Stopper:
    """SIGUSR1 / SIGTERM set a flag that the loop checks between batches."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Stopper:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGUSR1, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("received signal %d: stopping after this batch", signum)
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _to_lists(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_to_lists(v) for v in value]
    return value


def _to_tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_to_tuples(v) for v in value)
    return value


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["key"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["gauss"]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_metrics(path: Path, rows: list[EpochRecord]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(METRICS_HEADER)
        for r in rows:
            w.writerow([r.epoch, f"{r.lr:.6g}", f"{r.train_mae:.6g}", f"{r.val_mae:.6g}",
                        f"{r.seconds:.3f}"])
    os.replace(tmp, path)


def _read_metrics(path: Path) -> list[EpochRecord]:
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
    """train and validation MAE per epoch, log scale, to a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ep = [r.epoch for r in rows]
    ax.plot(ep, [r.train_mae for r in rows], label="train")
    ax.plot(ep, [r.val_mae for r in rows], label="validation")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"MAE ({units})" if units else "MAE")
    scored = [r for r in rows if math.isfinite(r.val_mae)]
    if scored:
        best = min(scored, key=lambda r: r.val_mae)
        ax.set_title(title or f"best validation MAE {best.val_mae:.4g} at epoch {best.epoch}")
    elif rows:
        ax.set_title(title or f"training MAE {rows[-1].train_mae:.4g} at epoch {rows[-1].epoch}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the run


def _build_model(cfg: TrainConfig, mean: float, std: float,
                 distance_scale: float | None) -> GraphModel:
    kwargs = dict(cfg.model)
    kwargs.update(layers=cfg.layers, per_atom=cfg.per_atom, targets=1, cutoff=cfg.cutoff,
                  max_neighbors=cfg.max_neighbors, graph=cfg.graph,
                  distance_scale=distance_scale)
    try:
        model = make_model(cfg.arch, deeper=cfg.deeper, **kwargs)
    except (TypeError, ValueError) as e:
        raise DeepergatError(f"model settings ({cfg.arch}): {e}") from None
    model.set_target_scaling([mean], [std])
    if cfg.init_from:
        data = read_checkpoint(cfg.init_from)
        saved = {k: v for k, v in data["model"].items() if k != "agat_form"}
        mine = {k: v for k, v in model.config.items() if k != "agat_form"}
        if saved != mine:
            diff = {k: (saved.get(k, UNWRITTEN.get(k)), mine.get(k, UNWRITTEN.get(k)))
                    for k in set(saved) | set(mine) if saved.get(k) != mine.get(k)}
            raise DeepergatError(
                f"--init-from {cfg.init_from}: its model settings differ from this run's "
                f"(setting: checkpoint, run): {diff}"
            )
        state = {k: v for k, v in data["state_dict"].items()
                 if k not in ("target_mean", "target_std")}
        model.load_state_dict(state, strict=False)
    return model


def _batch_loss(model: nn.Module, g: GraphSet, rows: np.ndarray, y_all: np.ndarray,
                device: torch.device, std: float, per_atom: bool
                ) -> tuple[torch.Tensor, float, int]:
    inputs = to_tensors(g.batch(rows), device)
    y = torch.as_tensor(y_all[rows], dtype=torch.float32, device=device)
    pred = model(*inputs.values())[0][:, 0]
    err = pred - y
    if per_atom:
        err = err / torch.as_tensor(g.n_atoms[rows], dtype=torch.float32, device=device)
    loss = err.abs().mean() / std
    return loss, float((pred - y).detach().abs().sum()), len(rows)


def _allreduce(values: list[float], device: torch.device, distributed: bool, *,
               op: str = "sum") -> list[float]:
    """Sum (or max) of each value over ranks; the values themselves when not distributed."""
    if not distributed:
        return list(values)
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


def _evaluate_mae(model: nn.Module, g: GraphSet, rows: np.ndarray, y: np.ndarray,
                  info: LaunchInfo, device: torch.device, batch_size: int) -> float:
    share = rows[info.rank :: info.world_size]
    total, count = 0.0, float(len(share))
    if len(share):
        pred, _ = predict_rows(model, g, share, batch_size=batch_size, device=device)
        total = float(np.abs(pred[:, 0].astype(np.float64) - y[share]).sum())
    total, count = _allreduce([total, count], device, info.distributed)
    return total / max(count, 1.0)


def train(cfg: TrainConfig, *, splits: RunSplits | None = None,
          progress: Callable[[EpochRecord], None] | None = None,
          graph_progress: Callable[[int], None] | None = None,
          info: LaunchInfo | None = None) -> TrainResult:
    """Run (or resume) one training job; see the module docstring for what it writes.

    Args:
        cfg: the configuration.
        splits: ready splits (cross-validation passes its folds); else from ``cfg``.
        progress: called after every epoch (on rank 0) with its record.
        graph_progress: called with structure counts while graphs are built.
        info: launcher information (default: read from the environment).

    Raises:
        DeepergatError: bad data, settings or checkpoint.
    """
    if not cfg.out:
        raise DeepergatError("--out RUN_DIR is required")
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.lr <= 0:
        raise DeepergatError("epochs, batch size and learning rate must be positive")
    info = info or launch_info()
    device = _resolve_device(cfg.device, info)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = False
    if info.distributed:
        import torch.distributed as dist

        created = not dist.is_initialized()
        setup_distributed(info, backend="nccl" if device.type == "cuda" else "gloo")
    # Deep stacks produce subnormal floats, which a CPU computes ~100× slower: flushed
    # to zero, a 30-layer DeeperGATGNN step on Pt clusters takes 3.0 s instead of 11.8 s (one
    # core); values below 1.2e-38 change nothing a float32 model can resolve. GPUs are
    # unaffected; torch's default (off) is restored afterwards.
    flush = device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        return _train(cfg, splits=splits, progress=progress, graph_progress=graph_progress,
                      info=info, device=device)
    finally:
        if flush:
            torch.set_flush_denormal(False)
        if created:
            teardown_distributed()


@dataclass
class TrainState:
    """What changes while a run trains; ``last.ckpt`` saves it and ``--resume`` restores it.

    Attributes:
        epoch: epochs completed. step: batches done of the current epoch.
        train_sum, train_count: |error| sum and structures so far in the current epoch (over
            all ranks once reduced).
        best_val, best_epoch: lowest validation MAE and its epoch. since_best: epochs since.
        history: every completed epoch's record.
    """

    epoch: int = 0
    step: int = 0
    train_sum: float = 0.0
    train_count: float = 0.0
    best_val: float = math.inf
    best_epoch: int = 0
    since_best: int = 0
    history: list[EpochRecord] = field(default_factory=list)


@dataclass
class _Run:
    """One training run: its data, model, optimizer and scheduler, and its `TrainState`."""

    cfg: TrainConfig
    info: LaunchInfo
    device: torch.device
    splits: RunSplits
    model: GraphModel
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    std: float
    units: str
    elements: list[int]
    state: TrainState

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def writer(self) -> bool:
        return self.info.rank == 0

    @property
    def has_val(self) -> bool:
        return len(self.splits.val[1]) > 0

    def checkpoint(self, *, training: bool) -> dict[str, Any]:
        """The checkpoint dict now (with the optimizer, scheduler and RNG states if asked)."""
        st = self.state
        state = None
        if training:
            state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "epoch": st.epoch, "step": st.step, "train_sum": st.train_sum,
                "train_count": st.train_count, "best_val": st.best_val,
                "best_epoch": st.best_epoch, "since_best": st.since_best, "rng": _rng_state(),
            }
        return make_checkpoint(
            self.model, targets=[self.cfg.target], units=[self.units], elements=self.elements,
            store_digest=self.splits.train[0].digest, training=state,
            extra={"config": self.cfg.to_dict(), "best_epoch": st.best_epoch,
                   "best_val_mae": st.best_val},
        )


def _train(cfg: TrainConfig, *, splits: RunSplits | None,
           progress: Callable[[EpochRecord], None] | None,
           graph_progress: Callable[[int], None] | None, info: LaunchInfo,
           device: torch.device) -> TrainResult:
    """The loop: open (or resume) the run, train epoch by epoch, finish."""
    run = _open_run(cfg, splits=splits, graph_progress=graph_progress, info=info, device=device)
    t_start = time.monotonic()
    stopped: str | None = None
    if cfg.early_stop is not None and run.state.since_best >= cfg.early_stop:
        stopped = "early_stop"  # resumed after its early stop: it stays stopped
    with _Stopper() as stopper:
        while run.state.epoch < cfg.epochs and stopped is None:
            t0 = time.monotonic()
            stopped = _train_epoch(run, stopper, t_start)
            if stopped:
                break
            record = _end_epoch(run, time.monotonic() - t0)
            if progress is not None and run.writer:
                progress(record)
            if cfg.early_stop is not None and run.state.since_best >= cfg.early_stop:
                stopped = "early_stop"
                log.info("early stop: %d epochs without a better validation MAE",
                         run.state.since_best)
                break
    return _finish(run, stopped)


def _open_run(cfg: TrainConfig, *, splits: RunSplits | None,
              graph_progress: Callable[[int], None] | None, info: LaunchInfo,
              device: torch.device) -> _Run:
    """Check the run folder, load the splits, build model, optimizer and scheduler, and
    restore ``last.ckpt`` with ``--resume``."""
    out = Path(cfg.out)
    last_path = out / "last.ckpt"
    resume_data = None
    if cfg.resume and last_path.is_file():
        resume_data = read_checkpoint(last_path)
        if not resume_data.get("training"):
            raise DeepergatError(f"{last_path}: holds no training state; cannot --resume")
        saved = resume_data["extra"].get("config", {})
        if cfg.lr_schedule == "cosine" and saved.get("epochs") not in (None, cfg.epochs):
            log.warning("--resume: the cosine schedule was laid out over %s epochs and keeps "
                        "that length (now --epochs %d)", saved.get("epochs"), cfg.epochs)
        for key in ("data", "target", "arch", "deeper", "seed", "layers", "batch_size",
                    "per_atom", "model"):
            if key in saved and saved[key] != getattr(cfg, key):
                log.warning("--resume: %s is %r in the saved run, %r now; using the saved value",
                            key, saved[key], getattr(cfg, key))
                setattr(cfg, key, saved[key])
    elif cfg.resume:
        log.info("--resume: %s has no last.ckpt; starting a new run", out)
    elif last_path.exists():
        raise DeepergatError(
            f"{out}: already holds a run (last.ckpt); pass --resume to continue it or choose "
            "another --out"
        )
    writer = info.rank == 0
    if writer:
        out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    splits = splits or _load_splits(cfg, info, device, graph_progress)
    g_train, train_rows = splits.train
    if not len(splits.val[1]) and _needs_validation(cfg):
        raise DeepergatError("no validation structures: set lr_monitor: train and keep: last "
                             "(and no --early-stop), or give a validation split")
    y_train = _targets_of(g_train, cfg.target, train_rows)
    scale_y = y_train / g_train.n_atoms[train_rows] if cfg.per_atom else y_train
    mean, std = 0.0, 1.0
    if cfg.scale_targets:
        mean = float(scale_y.mean())
        std = float(scale_y.std()) if len(scale_y) > 1 and scale_y.std() > 0 else 1.0
    if resume_data is not None:
        distance_scale = resume_data["model"].get("distance_scale")
    else:
        distance_scale = resolve_distance_scale(cfg, g_train, train_rows)

    model = _build_model(cfg, mean, std, distance_scale).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler: Any
    if cfg.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=cfg.epochs, eta_min=cfg.min_lr
        )
    else:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience,
            threshold=cfg.lr_threshold, min_lr=cfg.min_lr,
        )
    state = TrainState()
    if resume_data is not None:
        st = resume_data["training"]
        model.load_state_dict(resume_data["state_dict"])
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        state = TrainState(
            epoch=int(st["epoch"]), step=int(st["step"]),
            # The saved partial-epoch sums are over all ranks: rank 0 carries them.
            train_sum=float(st["train_sum"]) if writer else 0.0,
            train_count=float(st["train_count"]) if writer else 0.0,
            best_val=float(st["best_val"]), best_epoch=int(st["best_epoch"]),
            since_best=int(st["since_best"]),
            history=[r for r in _read_metrics(out / "metrics.csv") if r.epoch <= int(st["epoch"])],
        )
        _set_rng_state(st["rng"])
        log.info("resuming %s at epoch %d, batch %d", out, state.epoch + 1, state.step)

    if writer:
        with open(out / "config.yaml", "w") as f:
            yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
        with open(out / "splits.json", "w") as f:
            json.dump({"data": cfg.data, "seed": cfg.seed, **splits.ids()}, f)
    net: nn.Module = model
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return _Run(cfg=cfg, info=info, device=device, splits=splits, model=model, net=net,
                optimizer=optimizer, scheduler=scheduler, std=std,
                units=g_train.units.get(cfg.target, ""), elements=g_train.elements(train_rows),
                state=state)


def _load_splits(cfg: TrainConfig, info: LaunchInfo, device: torch.device,
                 graph_progress: Callable[[int], None] | None) -> RunSplits:
    """The splits; distributed, rank 0 builds the graph cache first and the others read it (a
    user error on rank 0 reaches every rank instead of leaving them waiting)."""
    if not info.distributed:
        return make_splits(cfg, progress=graph_progress)
    error: DeepergatError | None = None
    splits = None
    if info.rank == 0:
        try:
            splits = make_splits(cfg, progress=graph_progress)
        except DeepergatError as e:
            error = e
    failed = _allreduce([1.0 if error else 0.0], device, True, op="max")[0]
    if error is not None:
        raise error
    if failed:
        raise DeepergatError("rank 0 could not prepare the data (see its error message)")
    return splits if splits is not None else make_splits(cfg)


def _train_epoch(run: _Run, stopper: _Stopper, t_start: float) -> str | None:
    """The batches of the current epoch from ``state.step`` on; a signal or ``--max-time``
    stops between batches (``last.ckpt`` saved) and is returned."""
    cfg, info, st = run.cfg, run.info, run.state
    g_train, train_rows = run.splits.train
    y_all = g_train.targets[cfg.target]
    run.net.train()
    batches = epoch_batches(len(train_rows), epoch=st.epoch, seed=cfg.seed,
                            batch_size=cfg.batch_size, world_size=info.world_size, rank=info.rank)
    if st.step == 0:
        st.train_sum = st.train_count = 0.0
    while st.step < len(batches):
        reason = _stop_reason(stopper, cfg, t_start)
        if info.distributed:
            code = _allreduce([float(_REASONS.index(reason))], run.device, True, op="max")
            reason = _REASONS[int(code[0])]
        if reason is not None:
            st.train_sum, st.train_count = _allreduce([st.train_sum, st.train_count],
                                                      run.device, info.distributed)
            if run.writer:
                atomic_save(run.checkpoint(training=True), run.out / "last.ckpt")
            return reason
        loss, err_sum, count = _batch_loss(run.net, g_train, train_rows[batches[st.step]], y_all,
                                           run.device, run.std, cfg.per_atom)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        st.train_sum += err_sum
        st.train_count += count
        st.step += 1
    return None


def _end_epoch(run: _Run, seconds: float) -> EpochRecord:
    """Validate, step the scheduler, track the best epoch and save ``best.ckpt`` (the kept
    model), ``last.ckpt``, the metrics and the learning curve."""
    cfg, st = run.cfg, run.state
    total, count = _allreduce([st.train_sum, st.train_count], run.device, run.info.distributed)
    train_mae = total / max(count, 1.0)
    val_mae = math.nan
    if run.has_val:
        g_val, val_rows = run.splits.val
        val_mae = _evaluate_mae(run.model, g_val, val_rows, g_val.targets[cfg.target], run.info,
                                run.device, cfg.batch_size)
    lr = run.optimizer.param_groups[0]["lr"]
    if cfg.lr_schedule == "cosine":
        run.scheduler.step()
    else:
        run.scheduler.step(val_mae if cfg.lr_monitor == "val" else train_mae)
    st.epoch += 1
    st.step = 0
    better = run.has_val and val_mae < st.best_val
    if better:
        st.best_val, st.best_epoch, st.since_best = val_mae, st.epoch, 0
    else:
        st.since_best += 1
    keep = better if cfg.keep == "best" else True  # best.ckpt is rewritten
    record = EpochRecord(st.epoch, lr, train_mae, val_mae, seconds)
    st.history.append(record)
    st.train_sum = st.train_count = 0.0
    if run.writer:
        _write_metrics(run.out / "metrics.csv", st.history)
        state = run.checkpoint(training=True)
        if keep:
            atomic_save({**state, "training": None}, run.out / "best.ckpt")
        atomic_save(state, run.out / "last.ckpt")
        if st.epoch % max(cfg.curve_every, 1) == 0 or st.epoch == cfg.epochs:
            plot_learning_curve(st.history, run.out / "learning_curve.png", units=run.units)
    return record


def _finish(run: _Run, stopped: str | None) -> TrainResult:
    """The result; after a signal or ``--max-time`` a requeue, else the curve and the test
    split's MAE from ``best.ckpt``."""
    cfg, st, out = run.cfg, run.state, run.out
    best_epoch, best_val = st.best_epoch, st.best_val
    if cfg.keep == "last" and st.history:
        best_epoch, best_val = st.history[-1].epoch, st.history[-1].val_mae
    result = TrainResult(out=out, epochs_done=st.epoch, best_epoch=best_epoch,
                         best_val_mae=best_val, stopped=stopped, units=run.units,
                         history=st.history)
    if stopped in ("signal", "max_time"):
        if run.writer:
            result.requeued = requeue_slurm_job(run.info)
        return result
    if run.writer and st.history:
        plot_learning_curve(st.history, out / "learning_curve.png", units=run.units)
    test = run.splits.test
    if test is not None and len(test[1]) and (out / "best.ckpt").is_file():
        g_test, test_rows = test
        best_model = _best_model(out / "best.ckpt", run.device)
        result.test_mae = _evaluate_mae(best_model, g_test, test_rows,
                                        g_test.targets[cfg.target], run.info, run.device,
                                        cfg.batch_size)
        result.test_count = len(test_rows)
        if run.writer:
            with open(out / "test_metrics.json", "w") as f:
                json.dump({"target": cfg.target, "units": run.units, "n": len(test_rows),
                           "mae": result.test_mae, "best_epoch": best_epoch,
                           "best_val_mae": best_val}, f, indent=2)
    return result


_REASONS: list[str | None] = [None, "signal", "max_time"]


def _stop_reason(stopper: _Stopper, cfg: TrainConfig, t_start: float) -> str | None:
    if stopper.signal is not None:
        return "signal"
    if cfg.max_time is not None and time.monotonic() - t_start >= cfg.max_time:
        return "max_time"
    return None


def _best_model(path: Path, device: torch.device) -> GraphModel:
    from deepergat.nn.checkpoint import build_model

    return build_model(read_checkpoint(path)).to(device)


# ----------------------------------------------------------------------------- cross-validation


@dataclass
class FoldPlan:
    """How a cross-validation cuts its data (fixed by the configuration's seed).

    Attributes:
        splits: ``train`` the structures the folds partition, ``val`` the validation split
            every member shares (maybe empty), ``test`` the held-out test split or None.
        folds: K arrays of rows of ``splits.train``'s graph set.
        distance_scale: the members' common ``distance_scale`` (None: the cutoff).
    """

    splits: RunSplits
    folds: list[np.ndarray]
    distance_scale: float | None


def plan_folds(cfg: TrainConfig, k: int, *,
               graph_progress: Callable[[int], None] | None = None) -> FoldPlan:
    """Set aside the test and the shared validation split, then cut the rest into K folds.

    Raises:
        DeepergatError: fewer structures than folds, or no validation split while the recipe
            needs one.
    """
    if k < 2:
        raise DeepergatError(f"--cv {k}: need at least 2 folds")
    base = dataclasses.replace(cfg, cv=None, ensemble=None)
    full = make_splits(base, require_val=False, progress=graph_progress)
    g, pool = full.train
    if len(pool) < k:
        raise DeepergatError(f"--cv {k}: only {len(pool)} usable training structures")
    if not len(full.val[1]) and _needs_validation(cfg):
        raise DeepergatError(
            "--cv with --val-fraction 0 needs lr_monitor: train and keep: last (and no "
            "--early-stop): nothing else may look at the held-out fold"
        )
    return FoldPlan(splits=full, folds=np.array_split(pool, k),
                    distance_scale=resolve_distance_scale(cfg, g, pool))


def _member_config(cfg: TrainConfig, out: Path, seed: int, scale: float | None) -> TrainConfig:
    return dataclasses.replace(
        cfg, out=str(out), seed=seed, distance_scale="cutoff" if scale is None else scale,
        test_data=None, test_fraction=None, cv=None, ensemble=None, member=None, oof=None,
    )


def _train_member(cfg: TrainConfig, splits: RunSplits,
                  progress: Callable[[EpochRecord], None] | None) -> TrainResult:
    res = train(cfg, splits=splits, progress=progress)
    if res.stopped in ("signal", "max_time"):
        raise DeepergatError(
            f"stopped in {cfg.out} ({res.stopped}, last.ckpt written); continue with --resume"
        )
    return res


def cross_validate(cfg: TrainConfig, *, progress: Callable[[int, EpochRecord], None] | None = None,
                   graph_progress: Callable[[int], None] | None = None,
                   plan: FoldPlan | None = None) -> dict[str, Any]:
    """K-fold cross-validation over ``cfg.data``.

    The test split (``--test-fraction`` / ``--test-data``) and then the validation split
    (``--val-fraction``, shared by every fold; 0 for none) are set aside first; the remaining
    structures are cut into K folds (fixed by the seed). Member k trains in ``out/fold-k`` on
    the other folds with seed ``seed + k``; fold k never enters its training, learning-rate
    schedule or checkpoint choice, so its predictions are out-of-fold. A ``distance_scale`` of
    ``data`` is resolved once, over all K folds, so that every member has the same features.

    Writes ``out/oof.csv`` (``id,true,predicted``, every fold structure in store order) and
    ``out/cv_metrics.json``: per-fold MAE (``fold_mae``), their mean and sample std
    (``mae_mean``, ``mae_std``), the pooled out-of-fold MAE, RMSE and R², and, with a test
    split, each member's test MAE. With ``cfg.resume`` a finished fold is read back and an
    interrupted one continues from its ``last.ckpt``. With ``cfg.member`` only that fold trains
    and nothing is written but its folder.

    Returns:
        The ``cv_metrics.json`` document.
    """
    k = int(cfg.cv or 0)
    plan = plan or plan_folds(cfg, k, graph_progress=graph_progress)
    full, folds, scale = plan.splits, plan.folds, plan.distance_scale
    g, pool = full.train
    g_val, val_rows = full.val
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    def train_fold(i: int) -> tuple[TrainConfig, TrainResult]:
        train_rows = np.concatenate([f for j, f in enumerate(folds) if j != i])
        fold_cfg = _member_config(cfg, out / f"fold-{i}", cfg.seed + i, scale)
        splits = RunSplits(train=(g, train_rows), val=(g_val, val_rows), test=None)
        cb = (lambda r: progress(i, r)) if progress is not None else None
        return fold_cfg, _train_member(fold_cfg, splits, cb)

    if cfg.member is not None:  # one fold only; the run without --member reads it back
        fold_cfg, res = train_fold(cfg.member)
        return {"member": cfg.member, "of": k, "out": fold_cfg.out, "epochs": res.epochs_done}
    y = g.targets[cfg.target]
    predicted = np.full(len(g), np.nan)
    results: list[TrainResult] = []
    test_mae: list[float] = []
    for i in range(k):
        fold_cfg, res = train_fold(i)
        results.append(res)
        member = _best_model(Path(fold_cfg.out) / "best.ckpt", torch.device("cpu"))
        pred, _ = predict_rows(member, g, folds[i], batch_size=cfg.batch_size)
        predicted[folds[i]] = pred[:, 0]
        if full.test is not None:
            g_test, test_rows = full.test
            tp, _ = predict_rows(member, g_test, test_rows, batch_size=cfg.batch_size)
            test_mae.append(float(np.abs(tp[:, 0] - g_test.targets[cfg.target][test_rows]).mean()))
    rows = np.sort(pool)
    err = predicted[rows] - y[rows]
    fold_mae = [float(np.abs(predicted[f] - y[f]).mean()) for f in folds]
    resid = y[rows] - y[rows].mean()
    summary: dict[str, Any] = {
        "target": cfg.target, "units": results[0].units, "folds": k, "seed": cfg.seed,
        "n": len(rows), "fold_n": [len(f) for f in folds],
        "fold_mae": fold_mae,
        "mae_mean": float(np.mean(fold_mae)), "mae_std": float(np.std(fold_mae, ddof=1)),
        "oof_mae": float(np.abs(err).mean()), "oof_rmse": float(np.sqrt((err**2).mean())),
        "oof_r2": float(1.0 - (err**2).sum() / (resid**2).sum()) if (resid**2).sum() else None,
        "val_n": len(val_rows),
        "val_mae": [None if not math.isfinite(r.best_val_mae) else float(r.best_val_mae)
                    for r in results],
        "best_epoch": [int(r.best_epoch) for r in results],
        "epochs": cfg.epochs,
        "distance_scale": scale,
    }
    if full.test is not None:
        summary.update(test_n=len(full.test[1]), test_mae=test_mae,
                       test_mae_mean=float(np.mean(test_mae)))
    _write_oof(out / "oof.csv", [g.ids[r] for r in rows], y[rows], predicted[rows])
    with open(out / "cv_metrics.json", "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def train_ensemble(cfg: TrainConfig, *,
                   progress: Callable[[int, EpochRecord], None] | None = None,
                   graph_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train ``cfg.ensemble`` members and assemble them into ``out/ensemble.ckpt``.

    ``members: folds`` (default): the members are the folds of `cross_validate` (which also
    writes ``oof.csv`` and ``cv_metrics.json``); every structure outside the shared validation
    and test splits trains K − 1 members. ``members: seeds``: K runs on one train/validation
    split with seeds ``seed … seed + K − 1`` in ``out/member-k``. Either way the spread is
    calibrated on the validation split, which no member trained on (`deepergat.ensemble`), and
    ``ensemble_metrics.json`` reports the ensemble on the validation split (where it was
    calibrated) and on the test split, if any (where it was not). With ``cfg.member`` only that
    member trains (one task of a SLURM array, one core each) and nothing is assembled: the
    same run without it and with ``resume`` reads the finished members back and assembles.

    Returns:
        The ``ensemble_metrics.json`` document.

    Raises:
        DeepergatError: fewer than 2 members, ``--cv`` different from ``--ensemble``, no
            validation split to calibrate on, or a member that stopped early on a signal.
    """
    from .ensemble import assemble, calibrate, member_outputs, set_local_error
    from .uncertainty import uncertainty_metrics

    k = int(cfg.ensemble or 0)
    if k < 2:
        raise DeepergatError(f"--ensemble {cfg.ensemble}: an ensemble needs at least 2 members")
    if cfg.cv and cfg.cv != k:
        raise DeepergatError(f"--cv {cfg.cv} and --ensemble {k} differ; give one of them")
    out = Path(cfg.out)
    summary: dict[str, Any] = {"members": k, "member_kind": cfg.members}
    assembling = cfg.member is None
    if cfg.oof and not cfg.local_neighbors:
        log.warning("--oof %s is not used: --local-neighbors 0 leaves the local error term "
                    "out", cfg.oof)
    elif assembling and cfg.local_neighbors and not cfg.oof and cfg.members == "seeds":
        log.warning("a seed ensemble without --oof has no local error term: its σ is the "
                    "members' spread alone (give --oof RUN/oof.csv of a --cv run on the same "
                    "split and recipe)")
    oof_given = Path(cfg.oof) if cfg.oof and cfg.local_neighbors else None
    if cfg.members == "folds":
        plan = plan_folds(cfg, k, graph_progress=graph_progress)
        if not len(plan.splits.val[1]):
            raise DeepergatError("--ensemble calibrates its spread on the validation split, "
                                 "which no member trains on: give --val-fraction > 0")
        if oof_given is not None and assembling:  # a wrong file fails now, not after training
            oof_references(oof_given, plan.splits)
        summary["cv"] = cross_validate(dataclasses.replace(cfg, cv=k, ensemble=None),
                                       progress=progress, plan=plan)
        if cfg.member is not None:
            return summary["cv"]
        splits = plan.splits
        dirs = [out / f"fold-{i}" for i in range(k)]
    else:
        splits = make_splits(dataclasses.replace(cfg, ensemble=None), progress=graph_progress)
        if not len(splits.val[1]):
            raise DeepergatError("--ensemble calibrates its spread on the validation split, "
                                 "which no member trains on: give --val-fraction > 0")
        if oof_given is not None and assembling:  # a wrong file fails now, not after training
            oof_references(oof_given, splits)
        g, train_rows = splits.train
        scale = resolve_distance_scale(cfg, g, train_rows)
        dirs = [out / f"member-{i}" for i in range(k)]
        member_splits = RunSplits(train=splits.train, val=splits.val, test=None)
        for i in range(k) if cfg.member is None else [cfg.member]:
            cb = (lambda r, i=i: progress(i, r)) if progress is not None else None
            res = _train_member(_member_config(cfg, dirs[i], cfg.seed + i, scale),
                                member_splits, cb)
        if cfg.member is not None:
            return {"member": cfg.member, "of": k, "out": str(dirs[cfg.member]),
                    "epochs": res.epochs_done}
    paths = [d / "best.ckpt" for d in dirs]
    datas = [read_checkpoint(p) for p in paths]
    ensemble, elements = assemble(datas, names=[str(p) for p in paths],
                                  allow_element_differences=True)
    oof = oof_given or (out / "oof.csv" if cfg.members == "folds" else None)
    if oof is not None and cfg.local_neighbors:
        g_ref, ref_rows, errors = oof_references(oof, splits)
        set_local_error(ensemble, g_ref, ref_rows, errors[:, None],
                        neighbors=cfg.local_neighbors, batch_size=cfg.batch_size)
        summary["local_error"] = {"oof": str(oof), "references": len(ref_rows),
                                  "neighbors": ensemble.neighbors}
    g_val, val_rows = splits.val
    y_val = g_val.targets[cfg.target][val_rows][:, None]
    calibration = calibrate(ensemble, g_val, val_rows, y_val, target_names=[cfg.target],
                            source=f"validation split of {cfg.val_data or cfg.data}",
                            batch_size=cfg.batch_size)
    summary["validation"] = {"n": calibration["n"], **calibration["metrics"][cfg.target],
                             "note": "the spread was calibrated on these structures"}
    if splits.test is not None and len(splits.test[1]):
        g_test, test_rows = splits.test
        preds, embs = member_outputs(ensemble, g_test, test_rows, batch_size=cfg.batch_size)
        mean = preds.mean(0)[:, 0]
        with torch.no_grad():
            std = ensemble.spread(torch.from_numpy(preds), torch.from_numpy(embs))
        std = std.double().numpy()[:, 0]
        y = g_test.targets[cfg.target][test_rows]
        summary["test"] = {"n": len(test_rows), "mae": float(np.abs(y - mean).mean()),
                           "member_mae": [float(np.abs(y - p[:, 0]).mean()) for p in preds],
                           **uncertainty_metrics(y, mean, std)}
    first = datas[0]
    members_info = [{"path": str(p.relative_to(out)), "seed": cfg.seed + i,
                     "best_epoch": int(d["extra"].get("best_epoch", 0))}
                    for i, (p, d) in enumerate(zip(paths, datas, strict=True))]
    atomic_save(make_checkpoint(
        ensemble, targets=first["targets"], units=first["units"], elements=elements,
        store_digest=first.get("store_digest", ""), calibration=calibration,
        extra={"config": cfg.to_dict(), "members": members_info},
    ), out / "ensemble.ckpt")
    summary["checkpoint"] = str(out / "ensemble.ckpt")
    with open(out / "ensemble_metrics.json", "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def oof_references(path: Path, splits: RunSplits) -> tuple[GraphSet, np.ndarray, np.ndarray]:
    """(graph set, rows, [n] |true − predicted|) of an ``oof.csv``'s structures, every one a
    training structure of ``splits``.

    Raises:
        DeepergatError: not an ``id,true,predicted`` file, a value that is not a finite number,
            a structure twice, fewer than 2 rows, or a structure that is not in the training
            split (one in the validation or test split would leak its error into the
            calibration there).
    """
    g, train_rows = splits.train
    row_of = {g.ids[r]: int(r) for r in train_rows}
    held = {}
    for part, pair in (("validation", splits.val), ("test", splits.test)):
        if pair is not None:
            held.update({pair[0].ids[r]: part for r in pair[1]})
    rows, errors = [], []
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header != ["id", "true", "predicted"]:
                raise DeepergatError(f"{path}: not an out-of-fold file: the header must be "
                                     f"id,true,predicted (oof.csv of `deepergat train --cv K`), "
                                     f"got {','.join(header or [])!r}")
            for line, rec in enumerate(reader, start=2):
                if len(rec) != 3:
                    raise DeepergatError(f"{path}:{line}: expected id,true,predicted")
                sid = rec[0]
                if sid not in row_of:
                    where = (f"in this run's {held[sid]} split, which no member may have seen "
                             "(its error would leak into the calibration there)"
                             if sid in held else "not a training structure of this run")
                    raise DeepergatError(
                        f"{path}:{line}: structure {sid!r} is {where}; give the oof.csv of a "
                        "`--cv K` run with the same data, --val-fraction/--test-fraction and "
                        "--seed")
                try:
                    err = abs(float(rec[1]) - float(rec[2]))
                except ValueError:
                    err = math.nan
                if not math.isfinite(err):
                    raise DeepergatError(f"{path}:{line}: true and predicted must be finite "
                                         f"numbers, got {rec[1]!r}, {rec[2]!r}")
                rows.append(row_of[sid])
                errors.append(err)
    except OSError as e:
        raise DeepergatError(f"{path}: cannot read out-of-fold predictions: "
                             f"{e.strerror or e}") from None
    if len(set(rows)) != len(rows):
        seen: set[int] = set()
        again = next(r for r in rows if r in seen or seen.add(r))
        raise DeepergatError(f"{path}: structure {g.ids[again]!r} appears more than once")
    if len(rows) < 2:
        raise DeepergatError(f"{path}: {len(rows)} out-of-fold predictions; the local error "
                             "term needs at least 2")
    return g, np.asarray(rows, dtype=np.int64), np.asarray(errors)


def _write_oof(path: Path, ids: list[str], true: np.ndarray, predicted: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["id", "true", "predicted"])
        for i, t, p in zip(ids, true.tolist(), predicted.tolist(), strict=True):
            w.writerow([i, repr(float(t)), f"{p:.7g}"])
    os.replace(tmp, path)


def iter_records(rows: list[EpochRecord]) -> Iterator[dict[str, Any]]:
    for r in rows:
        yield dataclasses.asdict(r)
