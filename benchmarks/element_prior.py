"""Does a per-element error prior rank held-out errors better than an ensemble's spread?

    python benchmarks/element_prior.py --data perov.h5 --target heat_ref \\
        --folds runs/ensemble-e300 runs/seeds/member-{0..4}/best.ckpt

The prior comes from out-of-fold errors: each ``--folds`` member ``fold-k/best.ckpt`` (a
``deepergat train --ensemble K --members folds`` run) predicts the structures of its own fold
(neither its training nor the shared validation split, read from ``fold-k/splits.json``). An
element's prior is the mean absolute out-of-fold error of the structures holding it, shrunk
toward the overall mean with weight ``--shrink`` structures; a structure's prior is the mean
(or max) over its elements. The ensemble (the checkpoints given, at least 2) is scored on the
shared validation split — no member of either set trained on it — by Spearman(score, |error|)
for its spread σ, the prior p, σ·p and √(σ² + p²), each with a bootstrap standard error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_models import held_out, held_out_options

from deepergat.graphs import graph_settings
from deepergat.nn.checkpoint import build_model, read_checkpoint
from deepergat.training.trainer import predict_rows
from deepergat.training.uncertainty import spearman


def _load(path: Path) -> tuple[object, dict]:
    data = read_checkpoint(path)
    return build_model(data), graph_settings(dict(data["model"]), where=str(path))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    held_out_options(p)
    p.add_argument("--folds", required=True, help="folder of fold-k/best.ckpt, splits.json")
    p.add_argument("--shrink", type=float, default=20.0)
    p.add_argument("members", nargs="+", help="the ensemble's member checkpoints")
    args = p.parse_args(argv)
    folds = sorted(Path(args.folds).glob("fold-*/best.ckpt"))
    if len(folds) < 2 or len(args.members) < 2:
        raise SystemExit("give a folds folder with at least 2 folds and at least 2 members")
    _, settings = _load(folds[0])
    g, every = held_out(args.data, args.target, settings, fraction=args.fraction,
                        seed=args.seed, everything=True)
    gv, val = held_out(args.data, args.target, settings, fraction=args.fraction,
                       seed=args.seed, everything=False)
    val_ids = {gv.ids[r] for r in val}
    y = g.targets[args.target]

    rows, errors = [], []
    for ckpt in folds:
        model, mine = _load(ckpt)
        if mine != settings:
            raise SystemExit(f"{ckpt}: other graph settings than {folds[0]}")
        split = json.loads((ckpt.parent / "splits.json").read_text())
        if set(split["val"]) != val_ids:
            raise SystemExit(f"{ckpt}: its validation split is not --fraction/--seed's")
        skip = set(split["train"]) | val_ids
        own = np.array([r for r in every if g.ids[r] not in skip])
        pred = predict_rows(model, g, own, batch_size=100)[0][:, 0]
        rows.append(own)
        errors.append(np.abs(pred.astype(np.float64) - y[own]))
    oof_rows, oof_err = np.concatenate(rows), np.concatenate(errors)

    def elements(graphs: object, r: int) -> set[int]:
        a = int(graphs.atom_offset[r])
        return {int(z) for z in graphs.atomic_numbers[a : a + int(graphs.n_atoms[r])]}

    overall = float(oof_err.mean())
    by_element: dict[int, list[float]] = defaultdict(list)
    for r, e in zip(oof_rows, oof_err, strict=True):
        for z in elements(g, int(r)):
            by_element[z].append(float(e))
    prior_z = {z: (sum(v) + args.shrink * overall) / (len(v) + args.shrink)
               for z, v in by_element.items()}

    preds = []
    for ckpt in args.members:
        model, mine = _load(Path(ckpt))
        if mine != settings:
            raise SystemExit(f"{ckpt}: other graph settings than {folds[0]}")
        preds.append(predict_rows(model, gv, val, batch_size=100)[0][:, 0])
    stack = np.array(preds, np.float64)
    err = np.abs(stack.mean(0) - gv.targets[args.target][val])
    sigma = stack.std(0, ddof=1)
    rng = np.random.default_rng(0)
    boots = [rng.integers(0, len(err), len(err)) for _ in range(300)]

    print(f"out-of-fold structures {len(oof_rows)} (MAE {overall:.4f}); held-out {len(err)} "
          f"(ensemble MAE {err.mean():.4f})\n")
    print("| score | Spearman(score, abs error) |\n|---|---|")

    def row(name: str, score: np.ndarray) -> None:
        se = np.std([spearman(score[i], err[i]) for i in boots])
        print(f"| {name} | {spearman(score, err):.3f} ± {se:.3f} |")

    row("σ (ensemble spread)", sigma)
    for how, reduce in (("mean", np.mean), ("max", np.max)):
        prior = np.array([reduce([prior_z.get(z, overall) for z in elements(gv, int(r))])
                          for r in val])
        row(f"p (element prior, {how})", prior)
        row(f"σ·p ({how})", sigma * prior)
        row(f"√(σ² + p²) ({how})", np.sqrt(sigma**2 + prior**2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
