"""One training run: single process or ``torch.distributed`` data parallel, resumable to the bit.

`train` runs one job described by a `TrainConfig`; a `Trainer` owns it: `Trainer.open` checks
the run folder, loads the splits and builds (or restores from ``last.ckpt``) the model,
optimizer and schedule; `Trainer.train` runs the loop — `Trainer.train_one_epoch`, one
`Trainer.take_step` a batch, then `Trainer.end_epoch` (validation, schedule, the kept model,
``metrics.csv``) — and `Trainer.finish` ends it (a SLURM requeue after a stop, else the test
split's MAE). The run folder (`deepergat.training.outputs`):

* ``config.yaml``, ``splits.json``, ``metrics.csv``, ``learning_curve.png``,
* ``best.ckpt`` (the model the run keeps: lowest validation MAE, or with ``keep: last`` the last
  epoch) and ``last.ckpt`` (with optimizer, scheduler, epoch, position within the epoch and RNG
  states), both written atomically every epoch,
* ``test_metrics.json`` at the end, from ``best.ckpt`` on the test split.

Batches come from a `DistributedSampler` (one replica when not distributed) seeded by the run's
seed and the epoch, so the order of batches is a function of (seed, epoch) alone: a run resumed
from ``last.ckpt`` — after an epoch or after a signal in the middle of one — continues exactly as
the uninterrupted run would have. SIGUSR1 / SIGTERM and ``max_time`` stop at the next batch:
``last.ckpt`` is written, a requeue-able SLURM job is requeued, and `train` returns. The recipe
is docs/design.md §5, "Training recipe".
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepergat.architectures import UNWRITTEN
from deepergat.errors import DeepergatError, SettingError, literal
from deepergat.nn.checkpoint import atomic_save, make_checkpoint, read_checkpoint
from deepergat.nn.checkpoint import build_model as build_saved_model
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

from .config import Precision, TrainConfig
from .data import DeviceGraphs, GraphSet
from .outputs import (
    EpochRecord,
    plot_learning_curve,
    read_metrics,
    write_json,
    write_metrics,
    write_run_files,
)
from .splits import RunSplits, make_splits, require_validation, resolve_distance_scale, targets_of

__all__ = [
    "TrainResult",
    "TrainState",
    "Trainer",
    "batch_loss",
    "epoch_batches",
    "graphs_on",
    "load_kept_model",
    "new_model",
    "predict_rows",
    "train",
]

log = logging.getLogger(__name__)

#: Why a run stopped before its last epoch, by code (ranks agree on the largest): a loss
#: that is not a finite number on any rank stops every rank.
_REASONS: list[str | None] = [None, "signal", "max_time", "diverged"]
#: float32 resolves about 1.2e-7 of a number; targets whose std is below this share of their
#: mean are predicted in visible float32 steps (a warning).
_MIN_RELATIVE_STD = 1e-5
#: Settings a resumed run takes from its ``last.ckpt`` (they decide what the saved state means).
_RESUMED = ("data", "target", "arch", "deeper", "seed", "layers", "batch_size", "per_atom",
            "model")


@dataclass
class TrainResult:
    """What a run did.

    Attributes:
        out: run folder. epochs_done: completed epochs. best_epoch, best_val_mae: of best.ckpt.
        test_mae: test split MAE from best.ckpt (None without a test split or when stopped).
        test_count: structures in the test split.
        stopped: ``None`` (finished), ``"early_stop"``, ``"signal"`` or ``"max_time"``.
        requeued: whether a SLURM requeue was issued. units: the target's units.
        history: every completed epoch's record.
        checkpoint: ``best.ckpt`` when the run folder holds it, else None.
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
    checkpoint: Path | None = None


@dataclass
class TrainState:
    """What changes while a run trains; ``last.ckpt`` saves it and ``resume`` restores it.

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

    def saved(self) -> dict[str, Any]:
        """The state as ``last.ckpt`` holds it (optimizer, scheduler and RNG added there)."""
        return {"epoch": self.epoch, "step": self.step, "train_sum": self.train_sum,
                "train_count": self.train_count, "best_val": self.best_val,
                "best_epoch": self.best_epoch, "since_best": self.since_best}

    @classmethod
    def restored(cls, saved: dict[str, Any], *, history: list[EpochRecord],
                 carries_sums: bool) -> TrainState:
        """The state of a ``last.ckpt``; its partial-epoch sums are over all ranks, so only the
        rank that ``carries_sums`` (rank 0) takes them."""
        epoch = int(saved["epoch"])
        return cls(
            epoch=epoch, step=int(saved["step"]),
            train_sum=float(saved["train_sum"]) if carries_sums else 0.0,
            train_count=float(saved["train_count"]) if carries_sums else 0.0,
            best_val=float(saved["best_val"]), best_epoch=int(saved["best_epoch"]),
            since_best=int(saved["since_best"]),
            history=[r for r in history if r.epoch <= epoch],
        )


# ----------------------------------------------------------------------------- building blocks


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


def resolve_device(name: str, info: LaunchInfo) -> torch.device:
    """The training device: `deepergat.system.devices.pick_device` over the visible GPUs;
    ``auto`` falls back to the CPU where this torch cannot use CUDA."""
    kind, index = pick_device(name, info.local_rank, visible_gpus())
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SettingError(
            f"{{device}} {name}: a GPU is visible but this torch ({torch.__version__}) cannot "
            "use CUDA; install a CUDA build of torch or use {device} cpu"
        )
    return torch.device("cuda", index)


def new_model(cfg: TrainConfig, mean: float, std: float,
                distance_scale: float | None) -> GraphModel:
    """The run's model with its target scaling, started from ``init_from`` when given.

    Raises:
        DeepergatError: model arguments the architecture refuses, or an ``init_from``
            checkpoint whose model settings differ.
    """
    net, data = cfg.network, cfg.dataset
    kwargs = dict(net.model)
    kwargs.update(layers=net.layers, per_atom=net.per_atom, targets=1, cutoff=data.cutoff,
                  max_neighbors=data.max_neighbors, graph=data.graph,
                  distance_scale=distance_scale)
    try:
        model = make_model(net.arch, deeper=net.deeper, **kwargs)
    except (TypeError, ValueError) as e:
        raise DeepergatError(f"model settings ({net.arch}): {e}") from None
    model.set_target_scaling([mean], [std])
    if net.init_from:
        saved_ckpt = read_checkpoint(net.init_from)
        saved = {k: v for k, v in saved_ckpt["model"].items() if k != "agat_form"}
        mine = {k: v for k, v in model.config.items() if k != "agat_form"}
        if saved != mine:
            diff = {k: (saved.get(k, UNWRITTEN.get(k)), mine.get(k, UNWRITTEN.get(k)))
                    for k in set(saved) | set(mine) if saved.get(k) != mine.get(k)}
            raise SettingError(
                f"{{init_from}} {net.init_from}: its model settings differ from this run's "
                f"(setting: checkpoint, run): {diff}"
            )
        state = {k: v for k, v in saved_ckpt["state_dict"].items()
                 if k not in ("target_mean", "target_std")}
        model.load_state_dict(state, strict=False)
    return model


def inductor_compiler() -> str | None:
    """The C++ compiler Inductor will use on the CPU (``$CXX``, else ``g++``), None when it
    finds none. Asked of Inductor itself, which searches its own way (not PATH's ``c++``)."""
    try:
        from torch._inductor import exc
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # another PyTorch layout: let torch.compile report it
        return "unknown"
    try:
        return get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        return None


def compiled(net: nn.Module, device: torch.device) -> nn.Module:
    """``net`` through ``torch.compile`` (dynamic shapes: one compilation serves every batch);
    the module's own parameters and state dict are unchanged (checkpoints save the model).

    Raises:
        SettingError: the compiler Inductor needs is missing (a C++ compiler on the CPU,
            Triton on CUDA).
    """
    if device.type == "cpu":
        if not inductor_compiler():
            cxx = os.environ.get("CXX") or "g++"
            raise SettingError(f"{{compile}} on the CPU needs a C++ compiler ({cxx} not found: "
                               "install g++, or set CXX to one); or train without it")
    elif device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            raise SettingError("{compile} on CUDA needs triton (pip install triton); or train "
                               "without it") from None
    return torch.compile(net, dynamic=True)  # type: ignore[return-value]


def set_precision(precision: Precision, device: torch.device) -> None:
    """Check the training step's arithmetic against the device and set it up: ``tf32`` turns
    on TensorFloat-32 matrix products (CUDA only, process-wide); ``bf16`` warns on a CPU
    without native bfloat16 (it runs, emulated and slower).

    Raises:
        SettingError: ``tf32`` on a CPU.
    """
    if precision == "tf32":
        if device.type != "cuda":
            raise SettingError("{precision} tf32 is an NVIDIA GPU mode (TensorFloat-32 matrix "
                               "products); on a CPU use bf16 or fp32")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif precision == "bf16" and device.type == "cpu":
        try:
            native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            native = True  # cannot tell: say nothing
        if not native:
            log.warning("--precision bf16: this CPU has no native bfloat16 (AVX512-BF16 or "
                        "AMX); the step is emulated and likely slower than fp32")


def batch_loss(model: nn.Module, g: GraphSet | DeviceGraphs, rows: np.ndarray,
               y_all: np.ndarray, device: torch.device, std: float, per_atom: bool, *,
               precision: Precision = "fp32") -> tuple[torch.Tensor, torch.Tensor, int]:
    """The L1 loss of one batch in scaled units, its |error| sum (target units; a 0-d tensor
    on the device, read by the caller when it needs it) and its size.

    Args:
        model: the model (or its DDP wrapper), in training mode.
        g, rows: the batch's usable rows of a graph set (on the host, or on the device).
            y_all: [M] targets of ``g``.
        std: the target scale. per_atom: the loss compares per-atom values.
        precision: ``bf16`` runs the forward pass under ``torch.autocast`` in bfloat16 (the
            loss is taken in float32); ``fp32`` and ``tf32`` as they are.
    """
    inputs = g.tensors(rows, device)
    y = g.values(y_all, rows, device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        pred = model(*inputs.values())[0][:, 0]
    pred = pred.float()
    err = pred - y
    if per_atom:
        err = err / g.values(g.host.n_atoms, rows, device)
    loss = err.abs().mean() / std
    return loss, (pred - y).detach().abs().sum(), len(rows)


def predict_rows(model: nn.Module, g: GraphSet | DeviceGraphs, rows: np.ndarray, *,
                 batch_size: int = 100, device: torch.device | str = "cpu"
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and embeddings of usable rows (eval mode, no grad).

    Returns:
        ([n, T] float32 predictions in the targets' units, [n, D] float32 embeddings).
    """
    model.eval()
    preds, embs = [], []
    with torch.no_grad():
        for a in range(0, len(rows), batch_size):
            inputs = g.tensors(rows[a : a + batch_size], device)
            p, e = model(*inputs.values())
            preds.append(p.float().cpu().numpy())
            embs.append(e.float().cpu().numpy())
    if not preds:
        return np.zeros((0, 1), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(preds), np.concatenate(embs)


def load_kept_model(path: Path, device: torch.device | str = "cpu") -> GraphModel:
    """The model of a run's ``best.ckpt`` (or any checkpoint) on ``device``."""
    return build_saved_model(read_checkpoint(path)).to(device)


def _allreduce(values: list[float], device: torch.device, distributed: bool, *,
               op: str = "sum") -> list[float]:
    """Sum (or max) of each value over ranks; the values themselves when not distributed."""
    if not distributed:
        return list(values)
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


def _evaluate_mae(model: nn.Module, g: GraphSet | DeviceGraphs, rows: np.ndarray, y: np.ndarray,
                  info: LaunchInfo, device: torch.device, batch_size: int) -> float:
    """MAE of ``model`` over ``rows``, each rank predicting its share."""
    share = rows[info.rank :: info.world_size]
    total, count = 0.0, float(len(share))
    if len(share):
        pred, _ = predict_rows(model, g, share, batch_size=batch_size, device=device)
        total = float(np.abs(pred[:, 0].astype(np.float64) - y[share]).sum())
    total, count = _allreduce([total, count], device, info.distributed)
    return total / max(count, 1.0)


#: Steps between reads of the batches' |error| sums on a GPU: each read waits for the device,
#: so a step that read its own would leave the GPU idle while the host queues the next.
SETTLE_EVERY_GPU = 32


def settle_every(device: torch.device) -> int:
    """Steps between reads of the batches' |error| sums (`Trainer.settle`): every step on the
    CPU (a read costs nothing there), `SETTLE_EVERY_GPU` on a GPU."""
    return 1 if device.type == "cpu" else SETTLE_EVERY_GPU


#: The share of a GPU's free memory the training and validation graphs may take on it.
DEVICE_GRAPHS_SHARE = 0.25


def graphs_on(sets: list[GraphSet], device: torch.device) -> list[GraphSet | DeviceGraphs]:
    """Where a run's batches are cut, for its distinct graph sets together: on a CUDA device,
    once, when they take at most `DEVICE_GRAPHS_SHARE` of its free memory (`DeviceGraphs`: a
    step then copies its rows, not its padded inputs); else on the host (the CPU cuts them as
    fast with numpy)."""
    if device.type != "cuda":
        return list(sets)
    need = sum(DeviceGraphs.nbytes(g) for g in sets)
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    structures = sum(len(g) for g in sets)
    if need > DEVICE_GRAPHS_SHARE * free:
        log.info("graphs of %d structures (%.0f MB) cut on the host: over %.0f %% of %s's "
                 "free memory", structures, need / 1e6, 100 * DEVICE_GRAPHS_SHARE, device)
        return list(sets)
    log.info("graphs of %d structures (%.0f MB) prepared once on %s", structures, need / 1e6,
             device)
    return [DeviceGraphs(g, device) for g in sets]


class _Stopper:
    """SIGUSR1 / SIGTERM set a flag that the loop checks between batches."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Stopper:
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
    # weights_only loading takes lists, not tuples
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


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# ----------------------------------------------------------------------------- opening a run


def _read_resume(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Any] | None]:
    """(the configuration to run, the ``last.ckpt`` to continue or None): refuses a folder
    that holds a run unless resuming; a resumed run keeps its saved `_RESUMED` settings."""
    out = Path(cfg.run.out)
    last_path = out / "last.ckpt"
    if not cfg.run.resume:
        if last_path.exists():
            raise SettingError(f"{out}: already holds a run (last.ckpt); pass {{resume}} to "
                               "continue it or choose another {out}")
        return cfg, None
    if not last_path.is_file():
        log.info("--resume: %s has no last.ckpt; starting a new run", out)
        return cfg, None
    data = read_checkpoint(last_path)
    if not data.get("training"):
        raise SettingError(f"{last_path}: holds no training state; cannot {{resume}}")
    saved = data["extra"].get("config", {})
    now = cfg.to_dict()
    if cfg.trainer.lr_schedule == "cosine" and saved.get("epochs") not in (None, now["epochs"]):
        log.warning("--resume: the cosine schedule was laid out over %s epochs and keeps "
                    "that length (now --epochs %d)", saved.get("epochs"), now["epochs"])
    changed = {}
    for key in _RESUMED:
        if key in saved and saved[key] != now[key]:
            log.warning("--resume: %s is %r in the saved run, %r now; using the saved value",
                        key, saved[key], now[key])
            changed[key] = saved[key]
    return (cfg.replace(**changed) if changed else cfg), data


def _target_scaling(cfg: TrainConfig, g: GraphSet, rows: np.ndarray) -> tuple[float, float]:
    """(mean, std) of the training targets (per atom with ``per_atom``); (0, 1) unscaled."""
    y = targets_of(g, cfg.dataset.target, rows)
    y = y / g.n_atoms[rows] if cfg.network.per_atom else y
    if not cfg.network.scale_targets:
        return 0.0, 1.0
    std = float(y.std()) if len(y) > 1 and y.std() > 0 else 1.0
    mean = float(y.mean())
    if std < _MIN_RELATIVE_STD * abs(mean):
        log.warning("%s: target %r varies by %.3g around %.6g: float32 predictions resolve "
                    "only steps of %.2g (%.1f %% of that); train on the difference from a "
                    "reference value for a finer model", g.source, cfg.dataset.target, std, mean,
                    abs(mean) * 2.0**-23, 100 * abs(mean) * 2.0**-23 / std)
    return mean, std


def _optimizer(cfg: TrainConfig, model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW and the learning-rate schedule."""
    t = cfg.trainer
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    if t.lr_schedule == "cosine":
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=t.epochs, eta_min=t.min_lr
        )
    return optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=t.lr_factor, patience=t.lr_patience,
        threshold=t.lr_threshold, min_lr=t.min_lr,
    )


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


# ----------------------------------------------------------------------------- the trainer


class Trainer:
    """One training run: its data, model, optimizer and schedule, and its `TrainState`.

    Build it with `open`; `train` runs the loop. Attributes are the run's parts: ``cfg``,
    ``info`` (launcher), ``device``, ``splits``, ``model`` (and ``net``, its DDP wrapper when
    distributed), ``optimizer``, ``scheduler``, ``std`` (target scale), ``units``,
    ``elements`` (seen in training) and ``state``.
    """

    def __init__(self, cfg: TrainConfig, *, info: LaunchInfo, device: torch.device,
                 splits: RunSplits, model: GraphModel, optimizer: torch.optim.Optimizer,
                 scheduler: Any, std: float, state: TrainState) -> None:
        self.cfg = cfg
        self.info = info
        self.device = device
        self.splits = splits
        self.model = model
        self.net: nn.Module = model
        if info.distributed:
            self.net = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        set_precision(cfg.run.precision, device)
        if cfg.run.compile:
            self.net = compiled(self.net, device)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.std = std
        g_train, train_rows = splits.train
        self.units = g_train.units.get(cfg.dataset.target, "")
        self.elements = g_train.elements(train_rows)
        self.state = state
        #: (epoch, batch), 1-based, of this rank's first loss that was not a finite number
        self.diverged: tuple[int, int] | None = None
        #: the training and validation graphs, on the device where they fit (`graphs_on`)
        distinct = list({id(g): g for g, _ in (splits.train, splits.val)}.values())
        placed = dict(zip((id(g) for g in distinct), graphs_on(distinct, device), strict=True))
        self.train_graphs = placed[id(splits.train[0])]
        self.val_graphs = placed[id(splits.val[0])]
        #: (step, |error| sum on the device) of the steps not read yet (`settle`)
        self.unread: list[tuple[int, torch.Tensor]] = []
        self.settle_every = settle_every(device)

    @property
    def out(self) -> Path:
        return Path(self.cfg.run.out)

    @property
    def writer(self) -> bool:
        """Whether this rank writes the run folder (rank 0)."""
        return self.info.rank == 0

    @property
    def has_val(self) -> bool:
        return len(self.splits.val[1]) > 0

    @classmethod
    def open(cls, cfg: TrainConfig, *, splits: RunSplits | None = None,
             graph_progress: Callable[[int], None] | None = None, info: LaunchInfo,
             device: torch.device) -> Trainer:
        """Check the run folder, load the splits, build model, optimizer and scheduler, and
        restore ``last.ckpt`` when resuming; writes ``config.yaml`` and ``splits.json``.

        Raises:
            DeepergatError: a folder holding another run, bad data or settings.
        """
        cfg, resume = _read_resume(cfg)
        out = Path(cfg.run.out)
        writer = info.rank == 0
        if writer:
            out.mkdir(parents=True, exist_ok=True)
        _seed_everything(cfg.run.seed)
        splits = splits or _load_splits(cfg, info, device, graph_progress)
        require_validation(cfg, splits)
        g_train, train_rows = splits.train
        mean, std = _target_scaling(cfg, g_train, train_rows)
        if resume is not None:
            distance_scale = resume["model"].get("distance_scale")
        else:
            distance_scale = resolve_distance_scale(cfg, g_train, train_rows)
        model = new_model(cfg, mean, std, distance_scale).to(device)
        optimizer, scheduler = _optimizer(cfg, model)
        state = TrainState()
        if resume is not None:
            st = resume["training"]
            model.load_state_dict(resume["state_dict"])
            optimizer.load_state_dict(st["optimizer"])
            scheduler.load_state_dict(st["scheduler"])
            state = TrainState.restored(st, history=read_metrics(out / "metrics.csv"),
                                        carries_sums=writer)
            _set_rng_state(st["rng"])
            log.info("resuming %s at epoch %d, batch %d", out, state.epoch + 1, state.step)
        if writer:
            write_run_files(out, cfg, splits)
        return cls(cfg, info=info, device=device, splits=splits, model=model,
                   optimizer=optimizer, scheduler=scheduler, std=std, state=state)

    def checkpoint(self, *, training: bool) -> dict[str, Any]:
        """The checkpoint dict now (with the optimizer, scheduler and RNG states if asked)."""
        st = self.state
        state = None
        if training:
            state = {"optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), **st.saved(), "rng": _rng_state()}
        return make_checkpoint(
            self.model, targets=[self.cfg.dataset.target], units=[self.units],
            elements=self.elements, store_digest=self.splits.train[0].digest, training=state,
            extra={"config": self.cfg.to_dict(), "best_epoch": st.best_epoch,
                   "best_val_mae": st.best_val},
        )

    def train(self, progress: Callable[[EpochRecord], None] | None = None) -> TrainResult:
        """Train epoch by epoch until ``epochs``, an early stop, a signal or ``max_time``.

        Args:
            progress: called after every epoch (on rank 0) with its record.
        """
        t = self.cfg.trainer
        t_start = time.monotonic()
        stopped: str | None = None
        if t.early_stop is not None and self.state.since_best >= t.early_stop:
            stopped = "early_stop"  # resumed after its early stop: it stays stopped
        with _Stopper() as stopper:
            while self.state.epoch < t.epochs and stopped is None:
                t0 = time.monotonic()
                stopped = self.train_one_epoch(stopper, t_start)
                if stopped:
                    break
                record = self.end_epoch(time.monotonic() - t0)
                if progress is not None and self.writer:
                    progress(record)
                if t.early_stop is not None and self.state.since_best >= t.early_stop:
                    stopped = "early_stop"
                    log.info("early stop: %d epochs without a better validation MAE",
                             self.state.since_best)
        return self.finish(stopped)

    def stop_reason(self, stopper: _Stopper, t_start: float) -> str | None:
        """``"diverged"``, ``"signal"``, ``"max_time"`` or None: whether to stop before the
        next batch."""
        if self.diverged is not None:
            return "diverged"
        if stopper.signal is not None:
            return "signal"
        max_time = self.cfg.run.max_time
        if max_time is not None and time.monotonic() - t_start >= max_time:
            return "max_time"
        return None

    def train_one_epoch(self, stopper: _Stopper, t_start: float) -> str | None:
        """The batches of the current epoch from ``state.step`` on; a signal or ``max_time``
        stops between batches (``last.ckpt`` saved) and is returned."""
        info, st = self.info, self.state
        train_rows = self.splits.train[1]
        self.net.train()
        batches = epoch_batches(len(train_rows), epoch=st.epoch, seed=self.cfg.run.seed,
                                batch_size=self.cfg.trainer.batch_size,
                                world_size=info.world_size, rank=info.rank)
        if st.step == 0:
            st.train_sum = st.train_count = 0.0
        while st.step < len(batches):
            reason = self.stop_reason(stopper, t_start)
            if info.distributed:
                code = _allreduce([float(_REASONS.index(reason))], self.device, True, op="max")
                reason = _REASONS[int(code[0])]
            if reason is not None:
                self.settle()  # a divergence among the unread steps, on any rank, stops all
                st.train_sum, st.train_count, bad, diverged = _allreduce(
                    [st.train_sum, st.train_count, self._nonfinite_state(),
                     float(self.diverged is not None)], self.device, info.distributed)
                if reason == "diverged" or diverged or bad:  # never a last.ckpt that resume
                    # would continue
                    raise self.divergence(st.epoch + 1, "a weight of the model" if bad and not
                                          (reason == "diverged" or diverged)
                                          else "the training loss")
                if self.writer:
                    atomic_save(self.checkpoint(training=True), self.out / "last.ckpt")
                return reason
            self.take_step(train_rows[batches[st.step]])
        return None

    def take_step(self, rows: np.ndarray) -> None:
        """One optimizer step on one batch (usable rows of the training graph set)."""
        g_train = self.splits.train[0]
        loss, err_sum, count = batch_loss(self.net, self.train_graphs, rows,
                                          g_train.targets[self.cfg.dataset.target], self.device,
                                          self.std, self.cfg.network.per_atom,
                                          precision=self.cfg.run.precision)
        st = self.state
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        st.train_count += count
        st.step += 1
        self.unread.append((st.step, err_sum))
        if len(self.unread) >= self.settle_every:
            self.settle()

    def settle(self) -> None:
        """Read the unread steps' |error| sums (one wait for the device) into the epoch's sum,
        and note the first step whose sum was not a finite number: the ranks then stop together
        before their next batch (`stop_reason`); every rank still took its steps, as
        data-parallel training needs. Nothing of that epoch is saved."""
        if not self.unread:
            return
        sums = torch.stack([t.double() for _, t in self.unread]).cpu().tolist()
        for (step, _), value in zip(self.unread, sums, strict=True):
            if not math.isfinite(value) and self.diverged is None:
                self.diverged = (self.state.epoch + 1, step)
        self.state.train_sum += math.fsum(sums)
        self.unread.clear()

    def _nonfinite_state(self) -> float:
        """1.0 when a weight, buffer or optimizer moment is not a finite number, else 0.0."""
        tensors = [t for t in self.model.state_dict().values() if t.is_floating_point()]
        tensors += [t for state in self.optimizer.state.values() for t in state.values()
                    if isinstance(t, torch.Tensor) and t.is_floating_point()]
        checks: dict[torch.device, list[torch.Tensor]] = {}
        for t in tensors:  # AdamW keeps its step counts on the CPU: one check per device
            checks.setdefault(t.device, []).append(torch.isfinite(t).all())
        finite = all(bool(torch.stack(flags).all()) for flags in checks.values())
        return 0.0 if finite else 1.0

    def divergence(self, epoch: int, what: str) -> SettingError:
        """The error that stops a run whose loss, metrics or weights stopped being finite
        numbers in ``epoch``; nothing of that epoch is saved."""
        seen = self.diverged
        where = f" (batch {seen[1]})" if seen is not None and seen[0] == epoch else ""
        kept = (f"last.ckpt holds epoch {self.state.epoch}" if self.state.epoch
                else "no checkpoint was written")
        mean = float(self.model.target_mean[0])
        units = f" {self.units}" if self.units else ""
        return SettingError(
            f"training diverged in epoch {epoch}{where}: {what} is not a finite number; "
            f"likely causes: a learning rate too large ({{lr}} {self.cfg.trainer.lr:g}) or "
            f"targets of an extreme scale (mean {mean:.4g}, std {self.std:.4g}{literal(units)});"
            f" {kept}: start again with a smaller {{lr}} in another {{out}}")

    def end_epoch(self, seconds: float) -> EpochRecord:
        """Validate, step the scheduler, track the best epoch and save ``best.ckpt`` (the kept
        model), ``last.ckpt``, the metrics and the learning curve."""
        t, st = self.cfg.trainer, self.state
        self.settle()  # a non-finite sum makes the reduced training MAE one on every rank
        total, count, bad = _allreduce([st.train_sum, st.train_count, self._nonfinite_state()],
                                       self.device, self.info.distributed)
        train_mae = total / max(count, 1.0)
        val_mae = math.nan
        if self.has_val:
            g_val, val_rows = self.splits.val
            val_mae = _evaluate_mae(self.model, self.val_graphs, val_rows,
                                    g_val.targets[self.cfg.dataset.target], self.info,
                                    self.device, t.batch_size)
        # every rank sees the same reduced numbers, so every rank stops alike
        if not math.isfinite(train_mae):
            raise self.divergence(st.epoch + 1, "the training MAE")
        if bad:
            raise self.divergence(st.epoch + 1, "a weight of the model")
        if self.has_val and not math.isfinite(val_mae):
            raise self.divergence(st.epoch + 1, "the validation MAE")
        lr = self.optimizer.param_groups[0]["lr"]
        if t.lr_schedule == "cosine":
            self.scheduler.step()
        else:
            self.scheduler.step(val_mae if t.lr_monitor == "val" else train_mae)
        st.epoch += 1
        st.step = 0
        better = self.has_val and val_mae < st.best_val
        if better:
            st.best_val, st.best_epoch, st.since_best = val_mae, st.epoch, 0
        else:
            st.since_best += 1
        record = EpochRecord(st.epoch, lr, train_mae, val_mae, seconds)
        st.history.append(record)
        st.train_sum = st.train_count = 0.0
        if self.writer:
            self._save_epoch(keep=better if t.keep == "best" else True)
        return record

    def _save_epoch(self, *, keep: bool) -> None:
        """``metrics.csv``, ``best.ckpt`` (when this epoch is kept), ``last.ckpt``, and the
        learning curve every ``curve_every`` epochs and at the last."""
        st = self.state
        write_metrics(self.out / "metrics.csv", st.history)
        state = self.checkpoint(training=True)
        if keep:
            atomic_save({**state, "training": None}, self.out / "best.ckpt")
        atomic_save(state, self.out / "last.ckpt")
        run = self.cfg.run
        if st.epoch % max(run.curve_every, 1) == 0 or st.epoch == self.cfg.trainer.epochs:
            self.plot_curve()

    def plot_curve(self) -> None:
        """``learning_curve.png``; a plot that fails is a warning, never the run's end."""
        try:
            plot_learning_curve(self.state.history, self.out / "learning_curve.png",
                                units=self.units)
        except Exception as e:  # matplotlib raises many types (a font, a backend, the text)
            log.warning("%s: learning curve not drawn: %s: %s", self.out / "learning_curve.png",
                        type(e).__name__, " ".join(str(e).split())[:200])

    def finish(self, stopped: str | None) -> TrainResult:
        """The result; after a signal or ``max_time`` a requeue, else the curve and the test
        split's MAE from ``best.ckpt`` (``test_metrics.json``)."""
        st, out = self.state, self.out
        best_epoch, best_val = st.best_epoch, st.best_val
        if self.cfg.trainer.keep == "last" and st.history:
            best_epoch, best_val = st.history[-1].epoch, st.history[-1].val_mae
        best = out / "best.ckpt"
        result = TrainResult(out=out, epochs_done=st.epoch, best_epoch=best_epoch,
                             best_val_mae=best_val, stopped=stopped, units=self.units,
                             history=st.history, checkpoint=best if best.is_file() else None)
        if stopped in ("signal", "max_time"):
            if self.writer:
                result.requeued = requeue_slurm_job(self.info)
            return result
        if self.writer and st.history:
            self.plot_curve()
        test = self.splits.test
        if test is not None and len(test[1]) and best.is_file():
            g_test, test_rows = test
            target = self.cfg.dataset.target
            kept = load_kept_model(out / "best.ckpt", self.device)
            result.test_mae = _evaluate_mae(kept, g_test, test_rows, g_test.targets[target],
                                            self.info, self.device, self.cfg.trainer.batch_size)
            if not math.isfinite(result.test_mae):
                raise DeepergatError(
                    f"{best}: the test MAE is not a finite number (a prediction on the test "
                    f"split overflowed float32): the targets' scale (mean "
                    f"{float(kept.target_mean[0]):.4g}, std {self.std:.4g}) is likely extreme")
            result.test_count = len(test_rows)
            if self.writer:
                write_json(out / "test_metrics.json", {
                    "target": target, "units": self.units, "n": len(test_rows),
                    "mae": result.test_mae, "best_epoch": best_epoch, "best_val_mae": best_val})
        return result


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
    if not cfg.run.out:
        raise SettingError("{out} RUN_DIR is required")
    t = cfg.trainer
    if t.epochs < 1 or t.batch_size < 1 or float(t.lr or 0.0) <= 0:
        raise SettingError("epochs, batch size and learning rate must be positive")
    info = info or launch_info()
    device = resolve_device(cfg.run.device, info)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = False
    if info.distributed:
        import torch.distributed as dist

        created = not dist.is_initialized()
        setup_distributed(info, backend="nccl" if device.type == "cuda" else "gloo")
    # Deep stacks produce subnormal floats, which a CPU computes far slower; flushed to zero
    # they change nothing a float32 model resolves. Restored afterwards.
    flush = device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        trainer = Trainer.open(cfg, splits=splits, graph_progress=graph_progress, info=info,
                               device=device)
        return trainer.train(progress)
    finally:
        if flush:
            torch.set_flush_denormal(False)
        if created:
            teardown_distributed()
