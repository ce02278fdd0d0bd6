"""The paper's depth study (its Figure 7) with this code: CV MAE against the number of layers for
each architecture, plain and Deeper.

    # runs, sequentially (start two at once with different --models, one per core)
    OMP_NUM_THREADS=1 python benchmarks/depth_study.py run --data pt.h5 --target total_energy \\
        --models cgcnn cgcnn+deeper gatgnn deepergatgnn --depths 5 15 30 --epochs 100 \\
        --folds 5 --out runs/depth
    # the table (markdown) and the plot
    python benchmarks/depth_study.py table runs/depth --plot benchmarks/depth.png
    # a reproducible random subset of a CSV data set (then `deepergat pack` it)
    python benchmarks/depth_study.py sample perov5_dev.csv -n 1000 --seed 0 -o perov1000.csv

A model is ``<arch>``, ``<arch>+deeper`` (`deepergat train --arch … --deeper`) or
``<arch>+deeper+single`` (the Deeper variant counting the identity once: ``model: {identity:
single}`` in the run's YAML, for cgcnn, schnet and megnet; docs/design.md §5); every run uses
the same folds (same store, seed and validation fraction) and the architecture's own learning
rate. A stopped run resumes with the same command (finished runs are skipped).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path


def _split(model: str) -> tuple[str, bool, bool]:
    """(arch, deeper, single identity) of a model name."""
    arch, _, flags = model.partition("+")
    if flags not in ("", "deeper", "deeper+single"):
        raise SystemExit(f"model {model!r}: write <arch>, <arch>+deeper or <arch>+deeper+single")
    if flags.endswith("single") and arch not in ("cgcnn", "schnet", "megnet"):
        raise SystemExit(f"model {model!r}: +single applies to cgcnn, schnet and megnet")
    return arch, flags.startswith("deeper"), flags.endswith("single")


def _config(base: str | None, model: dict, path: Path) -> str | None:
    """``base`` (a recipe YAML or None) with ``model`` merged into its ``model:`` settings,
    written to ``path``; ``base`` itself when there is nothing to merge."""
    if not model:
        return base
    import yaml

    values = (yaml.safe_load(Path(base).read_text()) if base else None) or {}
    if not isinstance(values, dict) or not isinstance(values.get("model") or {}, dict):
        raise SystemExit(f"{base}: a recipe is a mapping of settings, its model: one too")
    values["model"] = {**(values.get("model") or {}), **model}
    path.write_text(yaml.safe_dump(values))
    return str(path)


def run(args: argparse.Namespace) -> int:
    for model in args.models:  # every name checked before the first run starts
        _split(model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for depth in args.depths:
        for model in args.models:
            arch, deeper, single = _split(model)
            name = f"{model}-L{depth}"
            run_dir = out / name
            if (run_dir / "cv_metrics.json").is_file():
                print(f"{name}: done already", flush=True)
                continue
            cmd = [sys.executable, "-m", "deepergat.cli", "train", "--data", args.data,
                   "--target", args.target, "--arch", arch, "--layers", str(depth),
                   "--cv", str(args.folds), "--val-fraction", str(args.val_fraction),
                   "--epochs", str(args.epochs), "--seed", str(args.seed), "--out", str(run_dir)]
            if deeper:
                cmd.append("--deeper")
            config = _config(args.config, {"identity": "single"} if single else {},
                             out / f"{name}.yaml")
            if config:
                cmd += ["--config", config]
            if run_dir.exists():
                cmd.append("--resume")
            print(f"{name}: {' '.join(cmd)}", flush=True)
            with open(out / f"{name}.log", "a") as log:
                code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
            print(f"{name}: exit {code}", flush=True)
            failed += code != 0
    return 1 if failed else 0


def sample(args: argparse.Namespace) -> int:
    """A reproducible random subset of a CSV's rows (multi-line CIF fields kept whole)."""
    import csv
    import random

    csv.field_size_limit(1 << 30)
    with open(args.csv, newline="") as f:
        head, *body = list(csv.reader(f))
    if args.n > len(body):
        print(f"{args.csv}: {len(body)} rows, fewer than -n {args.n}", file=sys.stderr)
        return 2
    random.Random(args.seed).shuffle(body)
    with open(args.out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(head)
        writer.writerows(body[: args.n])
    print(f"{args.out}: {args.n} of {len(body)} rows (seed {args.seed})")
    return 0


def _results(root: Path) -> dict[str, dict[int, dict]]:
    found: dict[str, dict[int, dict]] = {}
    for metrics in root.glob("*-L*/cv_metrics.json"):
        model, _, depth = metrics.parent.name.rpartition("-L")
        found.setdefault(model, {})[int(depth)] = json.loads(metrics.read_text())
    return found


def table(args: argparse.Namespace) -> int:
    found = _results(Path(args.root))
    if not found:
        print(f"no finished runs under {args.root}", file=sys.stderr)
        return 2
    depths = sorted({d for runs in found.values() for d in runs})
    units = next(iter(next(iter(found.values())).values())).get("units", "")
    print(f"CV MAE ({units}), mean ± std over folds; — not run\n")
    print("| model | " + " | ".join(f"{d} layers" for d in depths) + " |")
    print("|---|" + "---|" * len(depths))
    for model in sorted(found):
        cells = []
        for d in depths:
            m = found[model].get(d)
            cells.append("—" if m is None else f"{m['mae_mean']:.4g} ± {m['mae_std']:.2g}")
        print(f"| {model} | " + " | ".join(cells) + " |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for model in sorted(found):
            xs = sorted(found[model])
            ys = [found[model][d]["mae_mean"] for d in xs]
            es = [found[model][d]["mae_std"] for d in xs]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=model,
                        linestyle="--" if "+deeper" in model or model.startswith("deeper")
                        else "-")
        ax.set_xlabel("graph-convolution layers")
        ax.set_ylabel(f"CV MAE ({units})" if units else "CV MAE")
        if all(math.isfinite(m["mae_mean"]) and m["mae_mean"] > 0
               for runs in found.values() for m in runs.values()):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"\nplot: {args.plot}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train the models at each depth (K-fold CV)")
    r.add_argument("--data", required=True)
    r.add_argument("--target", required=True)
    r.add_argument("--models", nargs="+", required=True,
                   help="<arch>, <arch>+deeper or <arch>+deeper+single")
    r.add_argument("--depths", nargs="+", type=int, default=[5, 15, 30])
    r.add_argument("--epochs", type=int, default=100)
    r.add_argument("--folds", type=int, default=5)
    r.add_argument("--val-fraction", type=float, default=0.1)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--config", help="a recipe YAML for every run (graph, schedule, …)")
    r.add_argument("--out", required=True)
    s = sub.add_parser("sample", help="a random subset of a CSV's rows (e.g. perov5_dev)")
    s.add_argument("csv")
    s.add_argument("-n", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-o", "--out", required=True)
    t = sub.add_parser("table", help="markdown table (and plot) of the finished runs")
    t.add_argument("root")
    t.add_argument("--plot", help="write the MAE-vs-depth plot here (.png)")
    args = p.parse_args(argv)
    return {"run": run, "sample": sample, "table": table}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
