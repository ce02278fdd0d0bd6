"""How well an ensemble's local error term ranks errors, for several kernel settings: on the
out-of-fold errors of a K-fold run (each fold's structures against references from the other
folds: thousands of structures, the data the settings are chosen on) and on the held-out
validation structures (the ensemble's spread with the term, its weight and scale fitted on one
half and counted on the other).

    python benchmarks/local_error.py --data perov.h5 --target heat_ref \\
        --folds runs/perovskite-heat-folds runs/perovskite-heat/ensemble.ckpt

``--folds`` is the run folder of ``deepergat train --cv K`` (or a fold ensemble): its
``oof.csv`` and ``fold-i/splits.json``. The ensemble's own term, if any, is replaced by each
setting in turn (`DeeperGATGNNEnsemble.set_local_error`, the code the product runs); a hard
k-nearest mean is the row without a bandwidth. Spearman figures carry a bootstrap standard error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_models import cross_fitted, held_out_options

from deepergat.graphs import graph_settings
from deepergat.nn.checkpoint import build_model, read_checkpoint
from deepergat.nn.ensemble import DeeperGATGNNEnsemble
from deepergat.training.assemble import member_outputs
from deepergat.training.config import TrainConfig
from deepergat.training.ensembles import oof_references
from deepergat.training.splits import make_splits
from deepergat.training.uncertainty import spearman

#: (k, bandwidth) settings compared; None: the hard mean of the k nearest.
SETTINGS = [(10, 0.3), (30, 0.2), (30, 0.3), (30, 0.5), (100, 0.3), (300, 0.3), (30, None),
            (100, None)]


def _boot(a: np.ndarray, b: np.ndarray, repeats: int = 200) -> float:
    rng = np.random.default_rng(0)
    return float(np.std([spearman(a[i], b[i]) for i in
                         (rng.integers(0, len(a), len(a)) for _ in range(repeats))]))


def _estimate(ens: DeeperGATGNNEnsemble, ref_embs: np.ndarray, ref_err: np.ndarray,
              query: np.ndarray, k: int, bandwidth: float | None) -> np.ndarray:
    """[n] ê of the query embeddings [K, n, D] against references [K, R, D] with errors [R]."""
    if bandwidth is None:  # hard k-nearest mean, standardized as the product does
        flat = ref_embs.transpose(1, 0, 2).reshape(ref_embs.shape[1], -1).astype(np.float64)
        center, scale = flat.mean(0), np.maximum(flat.std(0), 1e-6)
        z = (flat - center) / scale
        q = (query.transpose(1, 0, 2).reshape(query.shape[1], -1) - center) / scale
        d2 = (q * q).sum(1)[:, None] - 2 * q @ z.T + (z * z).sum(1)
        return ref_err[np.argsort(d2, 1)[:, :k]].mean(1)
    ens.set_local_error(torch.from_numpy(ref_embs), torch.from_numpy(ref_err[:, None]),
                        neighbors=min(k, len(ref_err)), bandwidth=bandwidth)
    with torch.no_grad():
        return ens.local_error(torch.from_numpy(query)).double().numpy()[:, 0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    held_out_options(p)
    p.add_argument("--folds", required=True, help="run folder of a --cv K run (oof.csv)")
    p.add_argument("ensemble", help="ensemble checkpoint whose members embed the structures")
    args = p.parse_args(argv)
    data = read_checkpoint(args.ensemble)
    ens = build_model(data)
    if not isinstance(ens, DeeperGATGNNEnsemble):
        raise SystemExit(f"{args.ensemble}: not an ensemble")
    settings = graph_settings(dict(data["model"]), where=args.ensemble)
    cfg = TrainConfig.from_dict(dict(
        data=args.data, target=args.target, out="unused", val_fraction=args.fraction,
        seed=args.seed, cutoff=settings["cutoff"], max_neighbors=settings["max_neighbors"],
        graph=settings["construction"]))
    splits = make_splits(cfg)
    g_val, val_rows = splits.val
    folds = Path(args.folds)
    g, rows, oof_err = oof_references(folds / "oof.csv", splits)
    ids = [g.ids[r] for r in rows]
    fold = np.full(len(rows), -1)
    for i in range(len(list(folds.glob("fold-*/splits.json")))):
        trained = set(json.loads((folds / f"fold-{i}" / "splits.json").read_text())["train"])
        fold[[j for j, sid in enumerate(ids) if sid not in trained]] = i
    if (fold < 0).any():
        raise SystemExit(f"{folds}: {int((fold < 0).sum())} structures in no fold")
    _, ref_embs = member_outputs(ens, g, rows)
    preds, val_embs = member_outputs(ens, g_val, val_rows)
    y = g_val.targets[args.target][val_rows]
    mean, raw = preds.mean(0)[:, 0], preds.std(0, ddof=1)[:, 0]
    err = np.abs(mean - y)
    print(f"{len(rows)} out-of-fold errors ({fold.max() + 1} folds, MAE {oof_err.mean():.4f}); "
          f"{len(y)} held-out structures, ensemble MAE {err.mean():.4f}, Spearman(σ_members, "
          f"|error|) {spearman(raw, err):.3f} ± {_boot(raw, err):.3f}\n")
    print("| k | bandwidth | out-of-fold: Spearman(ê, abs error) | held out: ê alone | "
          "held out: σ with the term, cross-fitted | 2σ coverage, cross-fitted |")
    print("|---|---|---|---|---|---|")
    for k, b in SETTINGS:
        cv = np.zeros(len(rows))
        for i in range(fold.max() + 1):
            q = fold == i
            cv[q] = _estimate(ens, ref_embs[:, ~q], oof_err[~q], ref_embs[:, q], k, b)
        local = _estimate(ens, ref_embs, oof_err, val_embs, k, b)
        c = cross_fitted(y, mean, raw, local)
        print(f"| {k} | {'hard mean' if b is None else b} | {spearman(cv, oof_err):.3f} ± "
              f"{_boot(cv, oof_err):.3f} | {spearman(local, err):.3f} ± {_boot(local, err):.3f} "
              f"| {c['spearman']:.3f} | {c['coverage_2sigma']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
