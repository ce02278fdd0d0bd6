"""K-fold cross-validation: members trained with one fold held out each, honest out-of-fold
predictions (docs/design.md §5, "Cross-validation").

`plan_folds` sets the test and the shared validation split aside and cuts the rest into K
folds; `cross_validate` trains member k on the other folds in ``out/fold-k`` (a `train` run of
its own) and writes ``oof.csv`` and ``cv_metrics.json``. Ensembles of folds
(`deepergat.training.ensembles`) are cross-validations whose members are then assembled.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepergat.errors import SettingError
from deepergat.system.files import write_csv

from .config import TrainConfig
from .data import require_finite
from .outputs import EpochRecord, write_json
from .splits import RunSplits, make_splits, require_validation, resolve_distance_scale
from .trainer import TrainResult, load_kept_model, predict_rows, train

__all__ = [
    "OOF_HEADER",
    "FoldPlan",
    "cross_validate",
    "member_config",
    "plan_folds",
    "train_member",
]

#: The columns of ``oof.csv``: structure id, true value, out-of-fold prediction.
OOF_HEADER = ("id", "true", "predicted")


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

    A ``distance_scale`` of ``data`` is resolved here, over all K folds, so that every member
    has the same features.

    Raises:
        SettingError: fewer than 2 folds, fewer structures than folds, or no validation split
            while the recipe needs one (`deepergat.training.splits.require_validation`).
    """
    if k < 2:
        raise SettingError(f"{{cv}} {k}: need at least 2 folds")
    full = make_splits(cfg, require_val=False, progress=graph_progress)
    g, pool = full.train
    if len(pool) < k:
        raise SettingError(f"{{cv}} {k}: only {len(pool)} usable training structures")
    require_validation(cfg, full)
    return FoldPlan(splits=full, folds=np.array_split(pool, k),
                    distance_scale=resolve_distance_scale(cfg, g, pool))


def member_config(cfg: TrainConfig, out: Path, seed: int, scale: float | None) -> TrainConfig:
    """The configuration of one member of a cross-validation or an ensemble: its folder and
    seed, the common distance scale, and no test split (the caller evaluates on it)."""
    return cfg.replace(
        out=str(out), seed=seed, distance_scale="cutoff" if scale is None else scale,
        test_data=None, test_fraction=None, cv=None, ensemble=None, member=None, oof=None,
    )


def train_member(cfg: TrainConfig, splits: RunSplits,
                 progress: Callable[[EpochRecord], None] | None) -> TrainResult:
    """`train` one member on ready splits.

    Raises:
        SettingError: the member stopped on a signal or at ``max_time`` (continue with
            ``resume``).
    """
    res = train(cfg, splits=splits, progress=progress)
    if res.stopped in ("signal", "max_time"):
        raise SettingError(f"stopped in {cfg.run.out} ({res.stopped}, last.ckpt written); "
                           "continue with {resume}")
    return res


def cross_validate(cfg: TrainConfig, *, progress: Callable[[int, EpochRecord], None] | None = None,
                   graph_progress: Callable[[int], None] | None = None,
                   plan: FoldPlan | None = None) -> dict[str, Any]:
    """K-fold cross-validation over ``cfg.dataset.data`` (K = ``cfg.ensembles.cv``).

    Member k trains in ``out/fold-k`` on the other folds with seed ``seed + k``; fold k never
    enters its training, learning-rate schedule or checkpoint choice, so its predictions are
    out-of-fold. Writes ``out/oof.csv`` (``id,true,predicted``, every fold structure in store
    order) and ``out/cv_metrics.json``: per-fold MAE (``fold_mae``), their mean and sample std
    (``mae_mean``, ``mae_std``), the pooled out-of-fold MAE, RMSE and R², and, with a test
    split, each member's test MAE. With ``resume`` a finished fold is read back and an
    interrupted one continues from its ``last.ckpt``. With ``member`` only that fold trains
    and nothing is written but its folder.

    Args:
        cfg: the configuration.
        progress: called with (fold, record) after every epoch.
        graph_progress: called with structure counts while graphs are built.
        plan: the folds, when the caller has planned them (`plan_folds`).

    Returns:
        The ``cv_metrics.json`` document, or with ``member`` ``{member, of, out, epochs}``.
    """
    k = int(cfg.ensembles.cv or 0)
    plan = plan or plan_folds(cfg, k, graph_progress=graph_progress)
    out = Path(cfg.run.out)
    out.mkdir(parents=True, exist_ok=True)

    def train_fold(i: int) -> tuple[TrainConfig, TrainResult]:
        g = plan.splits.train[0]
        train_rows = np.concatenate([f for j, f in enumerate(plan.folds) if j != i])
        fold_cfg = member_config(cfg, out / f"fold-{i}", cfg.run.seed + i, plan.distance_scale)
        splits = RunSplits(train=(g, train_rows), val=plan.splits.val, test=None)
        cb = (lambda r: progress(i, r)) if progress is not None else None
        return fold_cfg, train_member(fold_cfg, splits, cb)

    member = cfg.ensembles.member
    if member is not None:  # one fold only; the run without it reads it back
        fold_cfg, res = train_fold(member)
        return {"member": member, "of": k, "out": fold_cfg.run.out, "epochs": res.epochs_done}
    results = [train_fold(i) for i in range(k)]
    summary, ids, true, predicted = _out_of_fold(cfg, plan, results)
    write_csv(out / "oof.csv", OOF_HEADER,
              ([i, repr(float(t)), f"{p:.7g}"]
               for i, t, p in zip(ids, true.tolist(), predicted.tolist(), strict=True)))
    write_json(out / "cv_metrics.json", summary)
    return summary


def _out_of_fold(cfg: TrainConfig, plan: FoldPlan,
                 results: list[tuple[TrainConfig, TrainResult]]
                 ) -> tuple[dict[str, Any], list[str], np.ndarray, np.ndarray]:
    """(the ``cv_metrics.json`` document, and the ids, true values and out-of-fold predictions
    of every fold structure in store order) from the trained members."""
    full, folds = plan.splits, plan.folds
    g, pool = full.train
    target, batch_size = cfg.dataset.target, cfg.trainer.batch_size
    y = g.targets[target]
    predicted = np.full(len(g), np.nan)
    test_mae: list[float] = []
    for (fold_cfg, _), fold in zip(results, folds, strict=True):
        kept = Path(fold_cfg.run.out) / "best.ckpt"
        member = load_kept_model(kept)
        pred, _ = predict_rows(member, g, fold, batch_size=batch_size)
        require_finite(pred, g, fold, what=str(kept))  # oof.csv and the metrics hold numbers
        predicted[fold] = pred[:, 0]
        if full.test is not None:
            g_test, test_rows = full.test
            tp, _ = predict_rows(member, g_test, test_rows, batch_size=batch_size)
            require_finite(tp, g_test, test_rows, what=str(kept))
            test_mae.append(float(np.abs(tp[:, 0] - g_test.targets[target][test_rows]).mean()))
    rows = np.sort(pool)
    err = predicted[rows] - y[rows]
    fold_mae = [float(np.abs(predicted[f] - y[f]).mean()) for f in folds]
    resid = y[rows] - y[rows].mean()
    trained = [res for _, res in results]
    summary: dict[str, Any] = {
        "target": target, "units": trained[0].units, "folds": len(folds),
        "seed": cfg.run.seed, "n": len(rows), "fold_n": [len(f) for f in folds],
        "fold_mae": fold_mae,
        "mae_mean": float(np.mean(fold_mae)), "mae_std": float(np.std(fold_mae, ddof=1)),
        "oof_mae": float(np.abs(err).mean()), "oof_rmse": float(np.sqrt((err**2).mean())),
        "oof_r2": float(1.0 - (err**2).sum() / (resid**2).sum()) if (resid**2).sum() else None,
        "val_n": len(full.val[1]),
        "val_mae": [None if not math.isfinite(r.best_val_mae) else float(r.best_val_mae)
                    for r in trained],
        "best_epoch": [int(r.best_epoch) for r in trained],
        "epochs": cfg.trainer.epochs,
        "distance_scale": plan.distance_scale,
    }
    if full.test is not None:
        summary.update(test_n=len(full.test[1]), test_mae=test_mae,
                       test_mae_mean=float(np.mean(test_mae)))
    return summary, [g.ids[r] for r in rows], y[rows], predicted[rows]
