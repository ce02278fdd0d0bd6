"""Training an ensemble: K members, then one ``ensemble.ckpt`` with a calibrated spread
(docs/design.md §6).

`train_ensemble` trains the members — the folds of a cross-validation (`deepergat.training.cv`)
or K seeds on one split — assembles them (`deepergat.training.assemble`), gives the ensemble its
local error term from out-of-fold errors (`oof_references`, the one reader of an ``oof.csv``),
calibrates its spread on the validation split and reports it there and on the test split.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepergat.errors import DeepergatError, SettingError
from deepergat.nn.checkpoint import atomic_save, make_checkpoint, read_checkpoint
from deepergat.nn.ensemble import DeeperGATGNNEnsemble

from .assemble import assemble, calibrate, member_outputs, set_local_error
from .config import TrainConfig
from .cv import OOF_HEADER, cross_validate, member_config, plan_folds, train_member
from .data import GraphSet
from .outputs import EpochRecord, write_json
from .splits import RunSplits, make_splits, resolve_distance_scale
from .uncertainty import uncertainty_metrics

__all__ = ["oof_references", "train_ensemble"]

log = logging.getLogger(__name__)

#: Out-of-fold references: (graph set, [n] rows of its training structures, [n] |errors|).
References = tuple[GraphSet, np.ndarray, np.ndarray]


def train_ensemble(cfg: TrainConfig, *,
                   progress: Callable[[int, EpochRecord], None] | None = None,
                   graph_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train ``cfg.ensembles.ensemble`` members and assemble them into ``out/ensemble.ckpt``.

    ``members: folds`` (default): the members are the folds of `cross_validate` (which also
    writes ``oof.csv`` and ``cv_metrics.json``); every structure outside the shared validation
    and test splits trains K − 1 members. ``members: seeds``: K runs on one train/validation
    split with seeds ``seed … seed + K − 1`` in ``out/member-k``. Either way the spread is
    calibrated on the validation split, which no member trained on, and
    ``ensemble_metrics.json`` reports the ensemble on the validation split (where it was
    calibrated) and on the test split, if any (where it was not). With ``member`` only that
    member trains (one task of a SLURM array) and nothing is assembled: the same run without
    it and with ``resume`` reads the finished members back and assembles.

    Args:
        cfg: the configuration.
        progress: called with (member, record) after every epoch.
        graph_progress: called with structure counts while graphs are built.

    Returns:
        The ``ensemble_metrics.json`` document, or with ``member`` ``{member, of, out,
        epochs}``.

    Raises:
        DeepergatError: fewer than 2 members, ``cv`` different from ``ensemble``, no
            validation split to calibrate on, a bad ``oof`` file (before any member trains),
            or a member that stopped early on a signal.
    """
    e = cfg.ensembles
    k = _member_count(cfg)
    out = Path(cfg.run.out)
    assembling = e.member is None
    oof = _oof_file(cfg)
    if e.members == "folds":
        plan = plan_folds(cfg, k, graph_progress=graph_progress)
        splits = plan.splits
    else:
        splits = make_splits(cfg, progress=graph_progress)
    if not len(splits.val[1]):
        raise SettingError("{ensemble} calibrates its spread on the validation split, which "
                           "no member trains on: give {val_fraction} > 0")
    # Read now, so that a wrong file fails before any member trains; never by a member run
    # (a SLURM array of seeds may start before the cross-validation has finished).
    references = oof_references(oof, splits) if oof is not None and assembling else None
    if e.members == "folds":
        cv = cross_validate(cfg.replace(cv=k, ensemble=None, oof=None), progress=progress,
                            plan=plan)
        if not assembling:
            return cv
        dirs = [out / f"fold-{i}" for i in range(k)]
        if references is None and e.local_neighbors:
            references = oof_references(out / "oof.csv", splits)
            oof = out / "oof.csv"
        summary: dict[str, Any] = {"members": k, "member_kind": e.members, "cv": cv}
    else:
        dirs = [out / f"member-{i}" for i in range(k)]
        trained = _train_seed_members(cfg, splits, dirs, progress)
        if not assembling:
            return trained
        summary = {"members": k, "member_kind": e.members}
    ensemble, checkpoint = _assemble(cfg, splits, dirs, references)
    if references is not None:
        summary["local_error"] = {"oof": str(oof), "references": len(references[1]),
                                  "neighbors": ensemble.neighbors}
    calibration = _calibrate(cfg, ensemble, splits.val)
    summary["validation"] = {"n": calibration["n"], **calibration["metrics"][cfg.dataset.target],
                             "note": "the spread was calibrated on these structures"}
    if splits.test is not None and len(splits.test[1]):
        summary["test"] = _test_report(cfg, ensemble, splits.test)
    atomic_save(checkpoint(calibration), out / "ensemble.ckpt")
    summary["checkpoint"] = str(out / "ensemble.ckpt")
    write_json(out / "ensemble_metrics.json", summary)
    return summary


def _member_count(cfg: TrainConfig) -> int:
    """K, checked against ``cv``."""
    e = cfg.ensembles
    k = int(e.ensemble or 0)
    if k < 2:
        raise SettingError(f"{{ensemble}} {e.ensemble}: an ensemble needs at least 2 members")
    if e.cv and e.cv != k:
        raise SettingError(f"{{cv}} {e.cv} and {{ensemble}} {k} differ; give one of them")
    return k


def _oof_file(cfg: TrainConfig) -> Path | None:
    """The ``oof`` file that gives the local error term, or None (warns where none will)."""
    e = cfg.ensembles
    if e.oof and not e.local_neighbors:
        log.warning("--oof %s is not used: --local-neighbors 0 leaves the local error term "
                    "out", e.oof)
    elif e.member is None and e.local_neighbors and not e.oof and e.members == "seeds":
        log.warning("a seed ensemble without --oof has no local error term: its σ is the "
                    "members' spread alone (give --oof RUN/oof.csv of a --cv run on the same "
                    "split and recipe)")
    return Path(e.oof) if e.oof and e.local_neighbors else None


def _train_seed_members(cfg: TrainConfig, splits: RunSplits, dirs: list[Path],
                        progress: Callable[[int, EpochRecord], None] | None) -> dict[str, Any]:
    """Train the seed members (all, or ``member`` alone) on one split; with ``member`` the
    ``{member, of, out, epochs}`` summary of that one."""
    g, train_rows = splits.train
    scale = resolve_distance_scale(cfg, g, train_rows)
    member_splits = RunSplits(train=splits.train, val=splits.val, test=None)
    only = cfg.ensembles.member
    done: dict[str, Any] = {}
    for i in range(len(dirs)) if only is None else [only]:
        cb = (lambda r, i=i: progress(i, r)) if progress is not None else None
        res = train_member(member_config(cfg, dirs[i], cfg.run.seed + i, scale), member_splits,
                           cb)
        done = {"member": i, "of": len(dirs), "out": str(dirs[i]), "epochs": res.epochs_done}
    return done


def _assemble(cfg: TrainConfig, splits: RunSplits, dirs: list[Path],
              references: References | None
              ) -> tuple[DeeperGATGNNEnsemble, Callable[[dict[str, Any]], dict[str, Any]]]:
    """(the ensemble of the members' ``best.ckpt`` with its local error term, a function of
    the calibration document that gives its checkpoint dict)."""
    out = Path(cfg.run.out)
    paths = [d / "best.ckpt" for d in dirs]
    datas = [read_checkpoint(p) for p in paths]
    ensemble, elements = assemble(datas, names=[str(p) for p in paths],
                                  allow_element_differences=True)
    if references is not None:
        g_ref, ref_rows, errors = references
        set_local_error(ensemble, g_ref, ref_rows, errors[:, None],
                        neighbors=cfg.ensembles.local_neighbors,
                        batch_size=cfg.trainer.batch_size)
    first = datas[0]
    members_info = [{"path": str(p.relative_to(out)), "seed": cfg.run.seed + i,
                     "best_epoch": int(d["extra"].get("best_epoch", 0))}
                    for i, (p, d) in enumerate(zip(paths, datas, strict=True))]

    def checkpoint(calibration: dict[str, Any]) -> dict[str, Any]:
        return make_checkpoint(
            ensemble, targets=first["targets"], units=first["units"], elements=elements,
            store_digest=first.get("store_digest", ""), calibration=calibration,
            extra={"config": cfg.to_dict(), "members": members_info},
        )

    return ensemble, checkpoint


def _calibrate(cfg: TrainConfig, ensemble: DeeperGATGNNEnsemble,
               val: tuple[GraphSet, np.ndarray]) -> dict[str, Any]:
    """Calibrate the ensemble's spread on the validation split; the calibration document."""
    d = cfg.dataset
    g_val, val_rows = val
    y_val = g_val.targets[d.target][val_rows][:, None]
    return calibrate(ensemble, g_val, val_rows, y_val, target_names=[d.target],
                     source=f"validation split of {d.val_data or d.data}",
                     batch_size=cfg.trainer.batch_size)


def _test_report(cfg: TrainConfig, ensemble: DeeperGATGNNEnsemble,
                 test: tuple[GraphSet, np.ndarray]) -> dict[str, Any]:
    """The calibrated ensemble on the test split: MAE, each member's MAE, spread metrics."""
    g_test, test_rows = test
    preds, embs = member_outputs(ensemble, g_test, test_rows, batch_size=cfg.trainer.batch_size)
    mean = preds.mean(0)[:, 0]
    with torch.no_grad():
        std = ensemble.spread(torch.from_numpy(preds), torch.from_numpy(embs))
    std = std.double().numpy()[:, 0]
    y = g_test.targets[cfg.dataset.target][test_rows]
    return {"n": len(test_rows), "mae": float(np.abs(y - mean).mean()),
            "member_mae": [float(np.abs(y - p[:, 0]).mean()) for p in preds],
            **uncertainty_metrics(y, mean, std)}


def oof_references(path: Path, splits: RunSplits) -> References:
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
            if header != list(OOF_HEADER):
                raise DeepergatError(f"{path}: not an out-of-fold file: the header must be "
                                     f"id,true,predicted (oof.csv of `deepergat train --cv K`), "
                                     f"got {','.join(header or [])!r}")
            for line, rec in enumerate(reader, start=2):
                sid, err = _oof_row(path, line, rec, row_of, held)
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


def _oof_row(path: Path, line: int, rec: list[str], row_of: dict[str, int],
             held: dict[str, str]) -> tuple[str, float]:
    """(id, |true − predicted|) of one ``oof.csv`` row, checked."""
    if len(rec) != 3:
        raise DeepergatError(f"{path}:{line}: expected id,true,predicted")
    sid = rec[0]
    if sid not in row_of:
        where = (f"in this run's {held[sid]} split, which no member may have seen "
                 "(its error would leak into the calibration there)"
                 if sid in held else "not a training structure of this run")
        raise SettingError(
            f"{path}:{line}: structure {sid!r} is {where}; give the oof.csv of a "
            "`{cv} K` run with the same data, {val_fraction}/{test_fraction} and {seed}")
    try:
        err = abs(float(rec[1]) - float(rec[2]))
    except ValueError:
        err = math.nan
    if not math.isfinite(err):
        raise DeepergatError(f"{path}:{line}: true and predicted must be finite "
                             f"numbers, got {rec[1]!r}, {rec[2]!r}")
    return sid, err
