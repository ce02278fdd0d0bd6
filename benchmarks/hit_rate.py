"""How good is the short list: precision, recall and DAF of the top K on out-of-fold predictions.

    python benchmarks/hit_rate.py runs/cv-single/oof.csv [runs/cv-ensemble/oof.csv ...] --goal min

Reads the ``oof.csv`` (``id,true,predicted``) of ``deepergat train --cv K`` runs: every structure
outside the validation and test splits, predicted by the fold model that never trained on it.
For each file it prints the MAE and, for each list (the top 1 % and 5 % of the structures by
prediction, ``--top-fraction``), the hits among them, precision, recall and the DAF (precision /
prevalence), each with a 95 % percentile bootstrap interval (2,000 resamples of the structures,
seed 0: `deepergat.api.metrics`). A hit is a structure in the true top K, or with
``--hit-threshold X`` one whose true value is ≤ X (``--goal min``) or ≥ X (``--goal max``).
``--goal min`` is the heat of formation's: low = stable = wanted.

When several files hold the same structures (the same folds of two recipes), the later ones get
a paired difference to the first: the same resamples for both, so the interval is the
difference's, not two intervals side by side. The interval covers which structures were drawn,
not the training's randomness (one fold split, one seed per fold).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import sys
from pathlib import Path

import numpy as np

from deepergat.api.metrics import (
    BOOTSTRAP_CONFIDENCE,
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    DEFAULT_TOP_FRACTIONS,
    GOALS,
    ScreeningMetrics,
    bootstrap_indices,
    percentile_interval,
    screening_metrics,
)
from deepergat.errors import DeepergatError


def read_oof(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, [n] true, [n] predicted) of an ``oof.csv``; empty or non-numeric cells are NaN.

    Raises:
        DeepergatError: the file lacks the ``id``, ``true`` or ``predicted`` column, or an id
            repeats.
    """
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"id", "true", "predicted"} - set(reader.fieldnames or ())
        if missing:
            raise DeepergatError(f"{path}: no column {', '.join(sorted(missing))}; an oof.csv "
                                 "of `deepergat train --cv K` has id,true,predicted")
        rows = list(reader)
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise DeepergatError(f"{path}: an id repeats; one row per structure expected")
    return ids, _numbers([r["true"] for r in rows]), _numbers([r["predicted"] for r in rows])


def _numbers(cells: list[str]) -> np.ndarray:
    out = np.full(len(cells), np.nan)
    for i, cell in enumerate(cells):
        with contextlib.suppress(ValueError):
            out[i] = float(cell)
    return out


def _fmt(v: float | None, spec: str) -> str:
    return "–" if v is None or not math.isfinite(v) else format(v, spec)


def _ci(value: float | None, interval: tuple[float | None, float | None] | None,
        spec: str) -> str:
    lo, hi = interval or (None, None)
    return f"{_fmt(value, spec)} [{_fmt(lo, spec)}, {_fmt(hi, spec)}]"


def mae_interval(y_true: np.ndarray, y_pred: np.ndarray, *, resamples: int, seed: int
                 ) -> tuple[float, tuple[float | None, float | None]]:
    """MAE over the finite pairs and its percentile bootstrap interval."""
    ok = np.isfinite(y_true) & np.isfinite(y_pred)
    err = np.abs(y_pred[ok] - y_true[ok])
    draws = [err[idx].mean() for idx in bootstrap_indices(len(err), resamples, seed=seed)]
    return float(err.mean()), percentile_interval(np.array(draws), BOOTSTRAP_CONFIDENCE)


def paired_precision(base: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray],
                     args: argparse.Namespace) -> list[tuple[float | None, tuple]]:
    """Per list: precision(other) − precision(base) on the same structures, with the interval
    of the difference over the same resamples."""
    def precisions(y: np.ndarray, p: np.ndarray) -> list[float]:
        m = screening_metrics(y, p, goal=args.goal, top_fractions=args.fractions,
                              hit_threshold=args.hit_threshold)
        return [np.nan if r.precision is None else r.precision for r in m.rankings["mean"]]

    point = np.subtract(precisions(*other), precisions(*base))
    draws = np.array([
        np.subtract(precisions(other[0][idx], other[1][idx]),
                    precisions(base[0][idx], base[1][idx]))
        for idx in bootstrap_indices(len(base[0]), args.resamples, seed=args.seed)
    ])
    return [(float(point[j]), percentile_interval(draws[:, j], BOOTSTRAP_CONFIDENCE))
            for j in range(len(point))]


def table(args: argparse.Namespace) -> None:
    data = [read_oof(Path(p)) for p in args.oof]
    print(f"goal {args.goal}; a hit is "
          + ("a structure in the true top K" if args.hit_threshold is None else
             f"one whose true value is {'≤' if args.goal == 'min' else '≥'} "
             f"{args.hit_threshold:g}")
          + f"; [95 %]: percentile bootstrap, {args.resamples} resamples, seed {args.seed}\n")
    print("| oof.csv | n | MAE [95 %] | list | K | hits | precision [95 %] | recall [95 %] "
          "| DAF [95 %] |")
    print("|---|---|---|---|---|---|---|---|---|")
    results: list[ScreeningMetrics] = []
    for path, (_, y, p) in zip(args.oof, data, strict=True):
        m = screening_metrics(y, p, goal=args.goal, top_fractions=args.fractions,
                              hit_threshold=args.hit_threshold, resamples=args.resamples,
                              seed=args.seed)
        results.append(m)
        finite = np.isfinite(y)
        mae, mae_ci = mae_interval(y[finite], p[finite], resamples=args.resamples,
                                   seed=args.seed)
        for j, row in enumerate(m.rankings["mean"]):
            iv = row.intervals or {}
            first = j == 0
            print(f"| {path if first else ''} | {m.n if first else ''} "
                  f"| {_ci(mae, mae_ci, '.4f') if first else ''} "
                  f"| top {100 * row.fraction:g} % | {row.top_k} | {row.hits} "
                  f"| {_ci(row.precision, iv.get('precision'), '.3f')} "
                  f"| {_ci(row.recall, iv.get('recall'), '.3f')} "
                  f"| {_ci(row.daf, iv.get('daf'), '.3g')} |")
        if m.excluded:
            print(f"{path}: {m.excluded} rows without a finite true value left out",
                  file=sys.stderr)
    _paired(args, data)


def _paired(args: argparse.Namespace, data: list[tuple[list[str], np.ndarray, np.ndarray]]
            ) -> None:
    """Paired differences of the later files to the first, where they hold the same ids."""
    base_ids, by, bp = data[0]
    order = {i: k for k, i in enumerate(base_ids)}
    lines = []
    for path, (ids, y, p) in zip(args.oof[1:], data[1:], strict=True):
        if set(ids) != set(order):
            print(f"{path}: not the same structures as {args.oof[0]}; no paired difference",
                  file=sys.stderr)
            continue
        rows = np.array([order[i] for i in ids])
        y_al, p_al = np.empty_like(y), np.empty_like(p)
        y_al[rows], p_al[rows] = y, p
        ok = np.isfinite(by) & np.isfinite(y_al)
        for frac, (d, iv) in zip(args.fractions, paired_precision(
                (by[ok], bp[ok]), (y_al[ok], p_al[ok]), args), strict=True):
            lines.append(f"| {path} − {args.oof[0]} | top {100 * frac:g} % "
                         f"| {_ci(d, iv, '+.3f')} |")
    if lines:
        print("\n| paired Δ | list | precision [95 %] |\n|---|---|---|")
        print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("oof", nargs="+", help="oof.csv files (id,true,predicted)")
    ap.add_argument("--goal", choices=GOALS, default="min",
                    help="which end of the target is wanted [min: low heat of formation]")
    ap.add_argument("--top-fraction", dest="fractions", type=float, action="append",
                    help="K as a share of the structures; repeatable [0.01 and 0.05]")
    ap.add_argument("--hit-threshold", type=float,
                    help="a hit's true value passes X [default: a hit is in the true top K]")
    ap.add_argument("--resamples", type=int, default=BOOTSTRAP_RESAMPLES)
    ap.add_argument("--seed", type=int, default=BOOTSTRAP_SEED)
    args = ap.parse_args(argv)
    args.fractions = tuple(args.fractions or DEFAULT_TOP_FRACTIONS)
    try:
        table(args)
    except DeepergatError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
