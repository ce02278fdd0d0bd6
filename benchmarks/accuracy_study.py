"""The accuracy study: K-fold cross-validation of training recipes, and their comparison table.

Each recipe is a YAML file of `deepergat train` settings (``benchmarks/accuracy/*.yaml``); every
recipe runs on the same folds (same store, seed and validation fraction), so out-of-fold errors
compare structure by structure.

    # one run per recipe, sequentially (start two of these at once, one per core)
    OMP_NUM_THREADS=1 python benchmarks/accuracy_study.py run --data perov.h5 --target heat_ref \\
        --epochs 100 --out runs/accuracy benchmarks/accuracy/mic-data.yaml ...
    # the table (markdown): CV MAE, out-of-fold MAE/RMSE/R², paired difference to a baseline
    python benchmarks/accuracy_study.py table runs/accuracy --baseline periodic-cutoff-e100

A run that stops can be started again with the same command: finished folds are read back and
an interrupted fold resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for config in args.configs:
        name = f"{Path(config).stem}-e{args.epochs}"
        run_dir = out / name
        if (run_dir / "cv_metrics.json").is_file():
            print(f"{name}: done already", flush=True)
            continue
        cmd = [sys.executable, "-m", "deepergat.cli", "train", "--config", config,
               "--data", args.data, "--target", args.target, "--cv", str(args.folds),
               "--val-fraction", str(args.val_fraction), "--epochs", str(args.epochs),
               "--seed", str(args.seed), "--layers", str(args.layers), "--out", str(run_dir)]
        if run_dir.exists():
            cmd.append("--resume")
        print(f"{name}: {' '.join(cmd)}", flush=True)
        with open(out / f"{name}.log", "a") as log:
            code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
        print(f"{name}: exit {code}", flush=True)
        failed += code != 0
    return 1 if failed else 0


def _oof(path: Path) -> dict[str, tuple[float, float]]:
    with open(path, newline="") as f:
        return {r["id"]: (float(r["true"]), float(r["predicted"])) for r in csv.DictReader(f)}


def _seconds_per_epoch(run_dir: Path) -> float:
    seconds = []
    for metrics in sorted(run_dir.glob("fold-*/metrics.csv")):
        with open(metrics, newline="") as f:
            seconds += [float(r["seconds"]) for r in csv.DictReader(f)][1:]
    return float(np.median(seconds)) if seconds else math.nan


def table(args: argparse.Namespace) -> int:
    root = Path(args.root)
    runs = sorted(p.parent for p in root.glob("*/cv_metrics.json"))
    if not runs:
        print(f"no finished runs under {root}", file=sys.stderr)
        return 2
    base = None
    if args.baseline:
        if not (root / args.baseline / "oof.csv").is_file():
            print(f"no baseline run {args.baseline} under {root}", file=sys.stderr)
            return 2
        base = _oof(root / args.baseline / "oof.csv")
    units = json.loads((runs[0] / "cv_metrics.json").read_text()).get("units", "")
    print(f"| run | folds × n | CV MAE ({units}) mean ± std | out-of-fold MAE | RMSE | R² | "
          f"Δ MAE vs {args.baseline or '-'} (95 % CI) | s/epoch |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        m = json.loads((r / "cv_metrics.json").read_text())
        delta = "–"
        if base is not None and r.name != args.baseline:
            mine = _oof(r / "oof.csv")
            common = sorted(set(mine) & set(base))
            d = np.array([abs(mine[i][1] - mine[i][0]) - abs(base[i][1] - base[i][0])
                          for i in common])
            half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))
            delta = f"{d.mean():+.4f} ± {half:.4f}" + ("" if len(common) == len(base) else
                                                       f" ({len(common)} shared)")
        print(f"| {r.name} | {m['folds']} × {m['n']} | {m['mae_mean']:.4f} ± {m['mae_std']:.4f} | "
              f"{m['oof_mae']:.4f} | {m['oof_rmse']:.4f} | {m['oof_r2']:.4f} | {delta} | "
              f"{_seconds_per_epoch(r):.1f} |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="cross-validate each recipe")
    p.add_argument("configs", nargs="+", help="recipe YAML files")
    p.add_argument("--data", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--layers", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=run)
    t = sub.add_parser("table", help="print the comparison table")
    t.add_argument("root")
    t.add_argument("--baseline")
    t.set_defaults(func=table)
    args = parser.parse_args()
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
