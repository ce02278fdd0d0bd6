"""Ensembles mixed from single checkpoints, scored on the same held-out structures: MAE of the
mean, Spearman(σ, |error|) with its bootstrap standard error, cross-fitted 2σ coverage.

    python benchmarks/member_mix.py --data perov.h5 --target heat_ref \\
        seeds=runs/s/member-0/best.ckpt,runs/s/member-1/best.ckpt \\
        mixed=runs/s/member-0/best.ckpt,runs/f/fold-0/best.ckpt

Each ``NAME=CKPT,CKPT,…`` is one mix (at least 2 members); a checkpoint shared by several mixes
is evaluated once. The held-out structures are `compare_models.held_out`'s (``--fraction``,
``--seed``), each checkpoint on the graphs of its own settings. σ is the members' raw standard
deviation (the calibration factor does not change ranks); the coverage fits that factor on one
random half and counts the other, 200 times.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_models import held_out, held_out_options

from deepergat.graphs import graph_settings
from deepergat.nn.checkpoint import build_model, read_checkpoint
from deepergat.training.trainer import predict_rows
from deepergat.training.uncertainty import calibration_scale, spearman


def predictions(path: str, args: argparse.Namespace) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, true values, predictions) of one checkpoint on the held-out structures."""
    data = read_checkpoint(path)
    settings = graph_settings(dict(data["model"]), where=path)
    g, rows = held_out(args.data, args.target, settings, fraction=args.fraction,
                       seed=args.seed, everything=False)
    pred = predict_rows(build_model(data), g, rows, batch_size=100)[0][:, 0]
    return [g.ids[r] for r in rows], g.targets[args.target][rows], pred.astype(np.float64)


def score(preds: np.ndarray, y: np.ndarray, *, repeats: int = 200) -> str:
    mean, raw = preds.mean(0), preds.std(0, ddof=1)
    err = np.abs(mean - y)
    rng = np.random.default_rng(0)
    boot = [spearman(raw[i], err[i]) for i in (rng.integers(0, len(y), len(y))
                                                for _ in range(repeats))]
    cover = []
    for _ in range(repeats):
        order = rng.permutation(len(y))
        fit, test = order[: len(y) // 2], order[len(y) // 2:]
        s = calibration_scale(y[fit, None], mean[fit, None], raw[fit, None])[0]
        cover.append(np.mean(np.abs(y[test] - mean[test]) <= 2 * s * raw[test]))
    member = np.abs(preds - y).mean(1)
    return (f"{len(preds)} | {err.mean():.4f} | {spearman(raw, err):.3f} ± {np.std(boot):.3f} | "
            f"{np.mean(cover):.3f} | {member.min():.4f}–{member.max():.4f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    held_out_options(p)
    p.add_argument("mixes", nargs="+", help="NAME=CKPT,CKPT,...")
    args = p.parse_args(argv)
    mixes = {}
    for spec in args.mixes:
        name, _, paths = spec.partition("=")
        mixes[name] = [q for q in paths.split(",") if q]
        if len(mixes[name]) < 2:
            raise SystemExit(f"{spec}: a mix needs NAME=CKPT,CKPT[,...] with at least 2")
    cache: dict[str, np.ndarray] = {}
    ids = y = None
    for path in dict.fromkeys(q for paths in mixes.values() for q in paths):
        these, truth, cache[path] = predictions(path, args)
        if ids is None:
            ids, y = these, truth
        elif these != ids:
            raise SystemExit(f"{path}: its graphs hold out other structures than the first's")
    print(f"{len(ids)} held-out structures of {args.data}\n")
    print("| mix | K | MAE | Spearman(σ, abs err) ± SE | 2σ coverage, cross-fitted | "
          "member MAEs |\n|---|---|---|---|---|---|")
    for name, paths in mixes.items():
        print(f"| {name} | {score(np.stack([cache[q] for q in paths]), y)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
