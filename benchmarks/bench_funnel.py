"""A funnel against the ensemble on everything: how much of the ensemble's top 1 % a fast model's
pre-selection keeps, and at what cost.

``python benchmarks/bench_funnel.py [-n 20000] [--fractions 0.02 0.05 0.1] [--top 0.01]``

On ``-n`` generated candidates (benchmarks/make_candidates.py), in one run, whole commands:

* the ensemble (``--ensemble``, default the bundled ``perovskite-heat``) screens everything:
  its top ``--top`` fraction (lowest first, status 0) is the reference list, its wall time the
  baseline;
* the fast model (``--fast``, default ``perovskite-heat-single``, the screen's default) screens
  everything, then for each ``--fractions`` f the ensemble re-scores the fast model's best f·n
  (``deepergat-screen --from … --from-top``);
* per f: the recall of the reference list (the share of its rows in the funnel's top list of
  the same size, ranked by the ensemble's values) and the speed-up (ensemble-on-everything time
  over fast-screen time plus re-scoring time).

Goal (issue 24): recall ≥ 0.95 of the top 1 % at ≥ 3× the ensemble's throughput.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import make_candidates  # noqa: E402


def screen(args: list[str]) -> float:
    """Wall seconds of ``deepergat screen ARGS``."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "deepergat.cli", "screen", *args],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"deepergat screen {' '.join(args)} failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - t0


def top_rows(path: Path, k: int) -> np.ndarray:
    """Store rows of the k lowest first-target values with status 0."""
    with h5py.File(path, "r") as f:
        first = next(iter(f["predictions"]))
        v = f[f"predictions/{first}"][:].astype(np.float64)
        ok = np.flatnonzero(np.isfinite(v) & (f["status"][:] == 0))
        index = f["index"][:]
    best = ok[np.lexsort((ok, v[ok]))[:k]]
    return index[best]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=20_000, help="candidates (20,000)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    p.add_argument("--top", type=float, default=0.01, help="the reference list's fraction")
    p.add_argument("--fast", default="perovskite-heat-single")
    p.add_argument("--ensemble", default="perovskite-heat")
    p.add_argument("--workdir", type=Path)
    a = p.parse_args(argv)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="deepergat-funnel-"))
    work.mkdir(parents=True, exist_ok=True)
    store = work / f"candidates-{a.n}.h5"
    if not store.exists():
        make_candidates.main(["-n", str(a.n), "-o", str(store)])
    k = max(1, round(a.top * a.n))
    common = ["--input", str(store), "--no-resume", "--known", "none"]
    full = work / "ensemble.h5"
    t_ens = screen([*common, "--model", a.ensemble, "--output", str(full)])
    fast = work / "fast.h5"
    t_fast = screen([*common, "--model", a.fast, "--output", str(fast)])
    reference = set(top_rows(full, k).tolist())
    rows = []
    for f in a.fractions:
        m = max(k, round(f * a.n))
        out = work / f"funnel-{f:g}.h5"
        t_more = screen([*common, "--model", a.ensemble, "--from", str(fast), "--from-top",
                         str(m), "--output", str(out)])
        found = set(top_rows(out, k).tolist())
        recall = len(found & reference) / k
        rows.append((f, m, recall, t_fast + t_more, t_ens / (t_fast + t_more)))
        print(f"fraction {f:g}: recall {recall:.3f}, {t_fast + t_more:.1f} s", flush=True)
    cores = os.cpu_count()
    print(f"\n{a.n:,} generated candidates, {cores} cores; reference: the ensemble's top "
          f"{a.top:g} ({k} rows) screening everything in {t_ens:.1f} s "
          f"({a.n / t_ens:.0f} structures/s); fast model alone {t_fast:.1f} s")
    print(f"{'re-scored fraction':>19} {'rows':>7} {'recall of top':>14} {'funnel s':>9} "
          f"{'speed-up':>9}")
    for f, m, recall, t, speed in rows:
        print(f"{f:>19g} {m:>7,} {recall:>14.3f} {t:>9.1f} {speed:>8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
