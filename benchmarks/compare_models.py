"""Two checkpoints on the same held-out structures: MAE, RMSE and the paired difference.

    python benchmarks/compare_models.py --data perov.h5 --target heat_ref NEW.ckpt OLD.ckpt

The structures are the split a run with ``--val-fraction F --seed S`` (and no test split) holds
out, which is the test split of a run with ``--val-fraction F --test-fraction F --seed S`` (the
bundled model's). A model that kept its last epoch on a fixed schedule never looked at them;
one that kept its best validation epoch did (its figure flatters it slightly).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from deepergat import train
from deepergat.config import TrainConfig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("models", nargs=2, help="NEW.ckpt OLD.ckpt")
    args = p.parse_args(argv)
    cfg = TrainConfig(data=args.data, target=args.target, out="unused",
                      val_fraction=args.fraction, seed=args.seed)
    g, rows = train.make_splits(cfg).val
    y = g.targets[args.target][rows]
    errors = []
    print(f"{len(rows)} held-out structures of {args.data}\n")
    print("| model | MAE | RMSE |")
    print("|---|---|---|")
    for path in args.models:
        model = train._best_model(Path(path), torch.device("cpu"))
        pred, _ = train.predict_rows(model, g, rows, batch_size=100)
        err = pred[:, 0] - y
        errors.append(np.abs(err))
        print(f"| {path} | {np.abs(err).mean():.4f} | {np.sqrt((err**2).mean()):.4f} |")
    d = errors[0] - errors[1]
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    print(f"\npaired MAE difference (first − second): {d.mean():+.4f} ± {half:.4f} (95 %); "
          f"first better on {(d < 0).sum()} of {len(d)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
