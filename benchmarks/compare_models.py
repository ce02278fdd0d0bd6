"""Checkpoints on the same held-out structures: MAE, RMSE, the paired difference, and for an
ensemble how well its spread describes its errors.

    python benchmarks/compare_models.py --data perov.h5 --target heat_ref NEW.ckpt OLD.ckpt ...

The structures are the split a run with ``--val-fraction F --seed S`` (and no test split) holds
out, which is the test split of a run with ``--val-fraction F --test-fraction F --seed S``
(``perovskite-heat-single``'s). A model that kept its last epoch on a fixed schedule never looked
at them; one that kept its best validation epoch did (its figure flatters it slightly). With
``--all`` every structure of ``--data`` is held out (a store no model trained on).

Each model gets the graphs of its own settings (cutoff, neighbors, construction), read from its
checkpoint. An ensemble (``ensemble.ckpt``) predicts the members' mean and its calibrated σ; its
spread was calibrated on its validation split, so when those are the structures here the
coverage is in-sample: the ``cross-fitted`` line calibrates on one random half and counts the
other, 200 times, which is what unseen structures would see.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from deepergat.graphs import graph_settings
from deepergat.nn.checkpoint import build_model, read_checkpoint
from deepergat.nn.ensemble import DeeperGATGNNEnsemble
from deepergat.training.assemble import member_outputs
from deepergat.training.config import TrainConfig
from deepergat.training.data import load_graphs
from deepergat.training.splits import make_splits
from deepergat.training.trainer import predict_rows
from deepergat.training.uncertainty import (
    calibration_scale,
    combined_spread,
    local_weight,
    spearman,
    uncertainty_metrics,
)


def held_out(data: str, target: str, settings: dict, *, fraction: float, seed: int,
             everything: bool) -> tuple[object, np.ndarray]:
    """(graph set, rows) of the held-out structures, with these graph settings."""
    if everything:
        g = load_graphs(data, cutoff=settings["cutoff"],
                        max_neighbors=settings["max_neighbors"], graph=settings["construction"])
        rows = g.usable
        return g, rows[np.isfinite(g.targets[target][rows])]
    cfg = TrainConfig.from_dict(dict(
        data=data, target=target, out="unused", val_fraction=fraction, seed=seed,
        cutoff=settings["cutoff"], max_neighbors=settings["max_neighbors"],
        graph=settings["construction"]))
    return make_splits(cfg).val


def held_out_options(p: argparse.ArgumentParser) -> None:
    """The options `held_out` takes: --data, --target, --fraction (the validation fraction
    held out) and --seed (the split's)."""
    p.add_argument("--data", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--fraction", type=float, default=0.1, help="the validation fraction")
    p.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    held_out_options(p)
    p.add_argument("--all", action="store_true", help="hold out every structure of --data")
    p.add_argument("models", nargs="+", help="checkpoints; the first is compared to the others")
    args = p.parse_args(argv)
    errors: list[np.ndarray] = []
    ids: list[str] | None = None
    lines = ["| model | graph | MAE | RMSE | coverage 1σ / 2σ | Spearman(σ, abs err) |",
             "|---|---|---|---|---|---|"]
    notes: list[str] = []
    for path in args.models:
        data = read_checkpoint(Path(path))
        model = build_model(data).to(torch.device("cpu"))
        settings = graph_settings(dict(data["model"]), where=path)
        g, rows = held_out(args.data, args.target, settings, fraction=args.fraction,
                           seed=args.seed, everything=args.all)
        these = [g.ids[r] for r in rows]
        if ids is None:
            ids = these
        elif these != ids:
            raise SystemExit(f"{path}: its graphs hold out other structures than the first's")
        y = g.targets[args.target][rows]
        if isinstance(model, DeeperGATGNNEnsemble):
            preds, embs = member_outputs(model, g, rows)
            with torch.no_grad():
                std = model.spread(torch.from_numpy(preds), torch.from_numpy(embs))
                local = model.local_error(torch.from_numpy(embs)).double().numpy()[:, 0]
            preds = preds[:, :, 0]  # [K, n]
            mean, raw = preds.mean(0), preds.std(0, ddof=1)
            m = uncertainty_metrics(y, mean, std.double().numpy()[:, 0])
            cover = (f"{m['coverage_1sigma']:.3f} / {m['coverage_2sigma']:.3f}")
            rho = f"{m['spearman_std_abs_error']:.3f}"
            c = cross_fitted(y, mean, raw, local)
            notes.append(
                f"{path}: cross-fitted (fit on half, count the other, 200 halvings): coverage "
                f"1σ {c['coverage_1sigma']:.3f}, 2σ {c['coverage_2sigma']:.3f} (5th–95th "
                f"percentile {c['coverage_2sigma_p5']:.3f}–{c['coverage_2sigma_p95']:.3f}); "
                f"Spearman(σ, abs error) {c['spearman']:.3f}")
            member = np.abs(preds - y).mean(1)
            term = (f", local error weight {float(model.local_weight[0]):.3f}"
                    if model.neighbors else "")
            notes.append(f"{path}: member MAEs {', '.join(f'{v:.4f}' for v in member)} "
                         f"(mean {member.mean():.4f}); std scale "
                         f"{float(model.std_scale[0]):.3f}{term}")
        else:
            mean = predict_rows(model, g, rows, batch_size=100)[0][:, 0].astype(np.float64)
            cover = rho = "-"
        err = mean - y
        errors.append(np.abs(err))
        lines.append(f"| {path} | {settings['construction']} | {np.abs(err).mean():.4f} | "
                     f"{np.sqrt((err**2).mean()):.4f} | {cover} | {rho} |")
    print(f"{len(errors[0])} held-out structures of {args.data}\n")
    print("\n".join(lines))
    for path, e in zip(args.models[1:], errors[1:], strict=True):
        d = errors[0] - e
        half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
        print(f"\npaired MAE difference ({args.models[0]} − {path}): {d.mean():+.4f} ± "
              f"{half:.4f} (95 %); first better on {(d < 0).sum()} of {len(d)}")
    for note in notes:
        print(f"\n{note}")
    return 0


def cross_fitted(y: np.ndarray, mean: np.ndarray, raw: np.ndarray, local: np.ndarray, *,
                 repeats: int = 200) -> dict[str, float]:
    """The spread's calibration (the local error weight, where ``local`` is not all 0, then
    the factor) fitted on one random half of the structures and judged on the other, the
    same ``repeats`` halvings for every call: mean ``coverage_1sigma``, ``coverage_2sigma``
    (with its 5th and 95th percentiles ``coverage_2sigma_p5``/``_p95``) and
    ``spearman`` (σ against |error|)."""
    rng = np.random.default_rng(0)
    c1, c2, rho = [], [], []
    has_local = bool(np.any(local))
    for _ in range(repeats):
        order = rng.permutation(len(y))
        fit, test = order[: len(y) // 2], order[len(y) // 2 :]
        w = (local_weight(y[fit, None], mean[fit, None], raw[fit, None], local[fit, None])[0]
             if has_local else 0.0)
        total = combined_spread(raw, local, w)
        s = calibration_scale(y[fit, None], mean[fit, None], total[fit, None])[0]
        err = np.abs(y[test] - mean[test])
        z = err / np.maximum(total[test] * s, 1e-12)
        c1.append((z <= 1).mean())
        c2.append((z <= 2).mean())
        rho.append(spearman(total[test], err))
    return {"coverage_1sigma": float(np.mean(c1)), "coverage_2sigma": float(np.mean(c2)),
            "coverage_2sigma_p5": float(np.percentile(c2, 5)),
            "coverage_2sigma_p95": float(np.percentile(c2, 95)),
            "spearman": float(np.mean(rho))}


if __name__ == "__main__":
    raise SystemExit(main())
