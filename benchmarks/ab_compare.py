"""Two versions of deepergat side by side: screening and training wall time, alternating runs.

``python benchmarks/ab_compare.py --base 4a91ba8 [--candidate .] [-n 50000] [--pairs 3]``

Runs the same workloads with the code of two source trees — ``--base`` (a commit, checked out
into a temporary worktree, or a folder) and ``--candidate`` (default: this checkout) — in
alternating order (base, candidate, candidate, base, …), each through ``python -m
deepergat.cli`` with ``PYTHONPATH`` pointing at its tree, and prints one table of medians and
their ratio:

* ``screen``: ``deepergat screen`` of ``-n`` generated candidates with the bundled default model,
  the whole command (start-up, merge and top-K included), default settings, all cores, after
  one untimed warm-up screen per tree (numba's kernel cache, the page cache);
* ``train``: ``deepergat train`` on ``--train-n`` perov5_dev structures (../shared/data, else the
  test fixture) for ``--epochs`` epochs, one thread (``OMP_NUM_THREADS=1``): the median seconds
  per epoch after the first (metrics.csv), and the whole command.

Trees from before the package layout of issue 23 (``export/`` and ``screening/`` beside
``deepergat/``) are run through a folder of links that imports them under the same names. The
machine must be otherwise quiet: the runs alternate so that drift hits both sides alike, but
other load does not.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = Path(os.environ.get("DEEPERGAT_DATA", REPO.parent / "shared" / "data"))


def importable(tree: Path, scratch: Path) -> Path:
    """A folder whose ``deepergat`` package is ``tree``'s code (linked for older layouts)."""
    if (tree / "deepergat" / "export").is_dir() or not (tree / "export").is_dir():
        return tree
    link = scratch / f"links-{tree.name}"
    pkg = link / "deepergat"
    pkg.mkdir(parents=True, exist_ok=True)
    for entry in (tree / "deepergat").iterdir():
        if not (pkg / entry.name).exists():
            (pkg / entry.name).symlink_to(entry)
    for sub in ("export", "screening"):
        if not (pkg / sub).exists():
            (pkg / sub).symlink_to(tree / sub)
    return link


def checkout(ref: str, scratch: Path) -> Path:
    """``ref`` as a folder: itself if it is one, else a detached worktree of this repository."""
    if Path(ref).is_dir():
        return Path(ref).resolve()
    where = scratch / f"tree-{ref.replace('/', '_')}"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(where), ref],
                   check=True, capture_output=True)
    return where


def run(tree: Path, args: list[str], *, threads: int | None, cwd: Path) -> float:
    """Wall seconds of ``python -m deepergat.cli ARGS`` with ``tree``'s code."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "deepergat.cli", *args], env=env, cwd=cwd,
                       capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{tree}: deepergat {' '.join(args[:1])} failed:\n{r.stderr[-2000:]}")
    return seconds


def epoch_seconds(run_dir: Path) -> float:
    with open(run_dir / "metrics.csv") as f:
        seconds = [float(r["seconds"]) for r in csv.DictReader(f)]
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def training_store(n: int, scratch: Path, tree: Path) -> Path:
    """``n`` perovskites packed into a store (with ``tree``'s code: both sides read it)."""
    source = DATA / "perov5_dev.csv"
    if not source.is_file():
        source = REPO / "tests" / "data" / "perov5_sample.csv"
    with open(source, newline="") as f:
        records = list(csv.reader(f))
    cut = scratch / "train.csv"
    with open(cut, "w", newline="") as f:
        csv.writer(f).writerows(records[: n + 1])
    store = scratch / "train.h5"
    run(tree, ["pack", str(cut), "--target", "heat_ref:eV", "-o", str(store)], threads=None,
        cwd=scratch)
    return store


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="commit or folder of the baseline")
    p.add_argument("--candidate", default=str(REPO), help="commit or folder (default: here)")
    p.add_argument("-n", type=int, default=50_000, help="screening candidates (50,000)")
    p.add_argument("--train-n", type=int, default=1000, help="training structures (1,000)")
    p.add_argument("--epochs", type=int, default=4, help="training epochs (4)")
    p.add_argument("--pairs", type=int, default=3, help="alternating pairs of runs (3)")
    p.add_argument("--skip", choices=["screen", "train"], action="append", default=[],
                   help="leave a workload out")
    p.add_argument("--workdir", type=Path, help="keep files here (default: a temporary folder)")
    a = p.parse_args(argv)

    scratch = Path(a.workdir or tempfile.mkdtemp(prefix="deepergat-ab-")).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    trees = {"base": checkout(a.base, scratch), "candidate": checkout(a.candidate, scratch)}
    paths = {name: importable(tree, scratch) for name, tree in trees.items()}
    sys.path.insert(0, str(HERE))
    import make_candidates

    results: dict[tuple[str, str], list[float]] = {}
    order = [("base", "candidate"), ("candidate", "base")]
    if "screen" not in a.skip:
        store = scratch / f"candidates-{a.n}.h5"
        if not store.exists():
            make_candidates.main(["-n", str(a.n), "-o", str(store)])
        warm = scratch / "candidates-warmup.h5"
        if not warm.exists():
            make_candidates.main(["-n", "300", "-o", str(warm)])
        for name in paths:  # compiled kernels cached and files in the page cache, untimed
            run(paths[name], ["screen", "--input", str(warm), "--output",
                              str(scratch / f"warmup-{name}.h5"), "--no-resume"],
                threads=None, cwd=scratch)
        for i in range(a.pairs):
            for name in order[i % 2]:
                out = scratch / f"screen-{name}.h5"
                for leftover in (out, out.with_name(out.name + ".parts")):
                    shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else \
                        leftover.unlink(missing_ok=True)
                s = run(paths[name], ["screen", "--input", str(store), "--output", str(out),
                                      "--top", "10"], threads=None, cwd=scratch)
                results.setdefault(("screen: whole command, s", name), []).append(s)
                print(f"screen {name}: {s:.1f} s ({a.n / s:.0f} structures/s)", flush=True)
    if "train" not in a.skip:
        store = training_store(a.train_n, scratch, paths["base"])
        for i in range(a.pairs):
            for name in order[i % 2]:
                out = scratch / f"train-{name}"
                shutil.rmtree(out, ignore_errors=True)
                s = run(paths[name], ["train", "--data", str(store), "--target", "heat_ref",
                                      "--epochs", str(a.epochs), "--device", "cpu", "--out",
                                      str(out), "--cache-dir", str(scratch)],
                        threads=1, cwd=scratch)
                e = epoch_seconds(out)
                results.setdefault(("train: s per epoch", name), []).append(e)
                results.setdefault(("train: whole command, s", name), []).append(s)
                print(f"train {name}: {e:.2f} s/epoch, {s:.1f} s in all", flush=True)

    print(f"\nbase {a.base} ({trees['base']}) vs candidate {a.candidate} ({trees['candidate']}); "
          f"medians of {a.pairs} alternating runs each")
    print(f"{'workload':<28} {'base':>10} {'candidate':>10} {'candidate/base':>15}")
    for what in dict.fromkeys(w for w, _ in results):
        b = statistics.median(results[(what, "base")])
        c = statistics.median(results[(what, "candidate")])
        print(f"{what:<28} {b:>10.2f} {c:>10.2f} {c / b:>15.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
