"""Neighbor-graph throughput on one core: the batched builder vs per-structure paths.

Same structures, one run, for each data set of $DEEPERGAT_DATA (default ../shared/data)
that is present:

* batched builder, compiled kernel (`build_inputs`, the path training and screening use)
* batched builder, numpy reference search (``DEEPERGAT_NUMBA=0``)
* the same two for the minimum-image construction (``graph="minimum-image"``)
* `neighbor_list` called once per structure
* the reference pipeline: pymatgen ``Structure.get_neighbor_list`` + nearest 12 per atom,
  per structure (what a per-structure featurizer built on pymatgen does)

Usage: ``python benchmarks/bench_graphs.py [--limit N] [--repeat R]``. Structures are parsed with
pymatgen first (not timed). Prints a table; the goal is batched ≥ 5× the pymatgen pipeline.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, before numpy loads
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import argparse
import csv
import time
import warnings
from pathlib import Path

import numpy as np

from deepergat import graphs
from deepergat.io.store import StructureBatch

#: The public data sets: $DEEPERGAT_DATA, else ../shared/data beside the repository.
DATA = Path(os.environ.get("DEEPERGAT_DATA")
            or Path(__file__).resolve().parents[1].parent / "shared" / "data")
SETS = {"perov5_dev": "perov5_dev.csv", "carbon24_dev": "carbon24_dev.csv"}


def load(path: Path, limit: int) -> list:
    from pymatgen.core import Structure

    csv.field_size_limit(1 << 30)
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out.append(Structure.from_str(row["cif"], fmt="cif"))
            if len(out) >= limit:
                break
    return out


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def pymatgen_pipeline(structures: list, cutoff: float = 8.0, k: int = 12) -> None:
    for s in structures:
        center, _, _, dist = s.get_neighbor_list(cutoff)
        for a in range(len(s)):
            m = np.flatnonzero(center == a)
            m[np.argsort(dist[m], kind="stable")[:k]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=4000, help="structures per data set")
    p.add_argument("--repeat", type=int, default=3, help="best of R timings")
    p.add_argument("--chunk", type=int, default=2000, help="structures per batched call")
    args = p.parse_args()
    rows = []
    for name, file in SETS.items():
        path = DATA / file
        if not path.exists():
            print(f"skipping {name}: {path} not present")
            continue
        structures = load(path, args.limit)
        batch = StructureBatch.from_structures(
            [
                {
                    "id": str(i),
                    "lattice": s.lattice.matrix,
                    "atomic_numbers": s.atomic_numbers,
                    "positions": s.cart_coords,
                }
                for i, s in enumerate(structures)
            ]
        )
        chunks = [
            batch.select(np.arange(a, min(a + args.chunk, len(batch))))
            for a in range(0, len(batch), args.chunk)
        ]
        m = len(structures)

        def batched(chunks=chunks) -> None:
            for c in chunks:
                graphs.build_inputs(c)

        def batched_mic(chunks=chunks) -> None:
            for c in chunks:
                graphs.build_inputs(c, graph="minimum-image")

        def per_structure(structures=structures) -> None:
            for s in structures:
                graphs.neighbor_list(
                    s.lattice.matrix, s.cart_coords, atomic_numbers=s.atomic_numbers
                )

        os.environ["DEEPERGAT_NUMBA"] = "1"
        graphs.build_inputs(chunks[0].select(np.arange(2)))  # compile / load the kernel cache
        graphs.build_inputs(chunks[0].select(np.arange(2)), graph="minimum-image")
        t_fast = best_of(batched, args.repeat)
        t_fast_mic = best_of(batched_mic, args.repeat)
        t_list = best_of(per_structure, args.repeat)
        os.environ["DEEPERGAT_NUMBA"] = "0"
        t_numpy = best_of(batched, args.repeat)
        t_numpy_mic = best_of(batched_mic, args.repeat)
        os.environ["DEEPERGAT_NUMBA"] = "1"
        t_pmg = best_of(lambda structures=structures: pymatgen_pipeline(structures), args.repeat)
        atoms = int(batch.n_atoms.sum())
        for label, t in [
            ("batched build_inputs (compiled)", t_fast),
            ("batched build_inputs (numpy)", t_numpy),
            ("minimum-image build_inputs (compiled)", t_fast_mic),
            ("minimum-image build_inputs (numpy)", t_numpy_mic),
            ("neighbor_list per structure", t_list),
            ("pymatgen get_neighbor_list + 12 nearest", t_pmg),
        ]:
            rows.append((name, m, atoms, label, m / t, t_pmg / t))
    print()
    print(
        f"{'data':<13} {'structs':>7} {'atoms':>7}  {'path':<42} {'structs/s':>10} "
        f"{'vs pymatgen':>11}"
    )
    for name, m, atoms, label, rate, ratio in rows:
        print(f"{name:<13} {m:>7} {atoms:>7}  {label:<42} {rate:>10.0f} {ratio:>10.2f}x")


if __name__ == "__main__":
    main()
