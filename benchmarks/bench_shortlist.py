"""What a short list costs: grouping candidates by structure (pymatgen's StructureMatcher within
a reduced formula) for a top-K list and for every row.

``python benchmarks/bench_shortlist.py [-n 100000] [--top 10 100 1000] [--full-seconds 600]``

Makes ``-n`` generated candidates (benchmarks/make_candidates.py) and a predictions file for
them whose values are a fixed random draw (so no model runs: only the list is timed; the
ranking's order does not change what grouping costs), then times `short_list` for each
``--top`` and for the full grouping under its time budget. Prints one table: rows examined,
groups, comparisons, seconds, comparisons per second. One process (the walk is sequential).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import make_candidates  # noqa: E402

from deepergat.elements import compositions  # noqa: E402
from deepergat.io.store import Store  # noqa: E402
from deepergat.screening.predictions import PredictionsWriter, Rows  # noqa: E402
from deepergat.screening.shortlist import ListSettings, short_list  # noqa: E402


def predictions_for(store: Path, out: Path, seed: int = 0) -> Path:
    """A predictions file of random values for every structure of ``store``."""
    with Store(store) as s:
        m = s.n_structures
        ids = s.ids(0, m)
        formulas, n_el = compositions(s.atomic_numbers(), s.n_atoms)
        digest = s.content_digest
    values = np.random.default_rng(seed).normal(0.0, 1.0, (m, 1)).astype(np.float32)
    with PredictionsWriter(out, n_structures=m, targets=[{"name": "e", "units": "eV"}],
                           embedding_dim=None,
                           attrs={"model": "random", "model_sha256": "0" * 64,
                                  "model_metadata": "{}", "input": str(store),
                                  "input_digest": digest,
                                  "screen_settings": json.dumps({})}) as w:
        w.write(0, Rows(index=np.arange(m), ids=ids, status=np.zeros(m, np.uint8),
                        flags=np.zeros(m, np.uint8), predictions=values, formula=formulas,
                        n_elements=n_el))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=100_000, help="candidates (100,000)")
    p.add_argument("--top", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--full-seconds", type=float, default=600.0,
                   help="budget of the full grouping (600 s; 0: skip it)")
    p.add_argument("--workdir", type=Path)
    a = p.parse_args(argv)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="deepergat-shortlist-"))
    work.mkdir(parents=True, exist_ok=True)
    store = work / f"candidates-{a.n}.h5"
    if not store.exists():
        make_candidates.main(["-n", str(a.n), "-o", str(store)])
    pred = predictions_for(store, work / "random.predictions.h5")
    rows = []
    cases = [(f"top {k}", ListSettings(top=k, seconds=None)) for k in a.top]
    if a.full_seconds > 0:
        cases.append((f"every row ({a.full_seconds:g} s budget)",
                      ListSettings(seconds=a.full_seconds)))
    for label, settings in cases:
        t0 = time.perf_counter()
        listed = short_list(pred, settings, store_verified=True)
        dt = time.perf_counter() - t0
        rows.append((label, listed.examined, len(listed.entries) - listed.ungrouped,
                     listed.ungrouped, listed.fits, dt))
        print(f"{label}: {listed.summary()}", flush=True)
    print(f"\n{a.n:,} generated candidates, random ranking, one process")
    print(f"{'list':<28} {'examined':>9} {'groups':>8} {'ungrouped':>10} {'fits':>8} "
          f"{'seconds':>8} {'fits/s':>7}")
    for label, examined, groups, ungrouped, fits, dt in rows:
        print(f"{label:<28} {examined:>9,} {groups:>8,} {ungrouped:>10,} {fits:>8,} "
              f"{dt:>8.1f} {fits / dt if dt else 0:>7.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
