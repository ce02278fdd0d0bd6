"""CIF readers for `deepergat pack`: gemmi's fast reader against pymatgen's path (issue 27).

`deepergat.io.readers.cif.parse_cif_text` offers every CIF block to
`deepergat.io.readers.cif_gemmi.read_cif` (gemmi's tokenizer and numpy) and reads with pymatgen
(``CifParser`` → ``Structure.from_sites``) what it declines. This script checks, CIF by CIF,
that both give the same thing, and times them:

* the sets: the CIF column of ``perov5_dev.csv`` (3,787 rows) and ``carbon24_dev.csv`` (2,032),
  the fixtures ``tests/data/perov5_sample.csv`` and ``carbon24_sample.csv``, and two rewrites
  that exercise symmetry: every dev structure written by pymatgen's ``CifWriter(symprec=0.1)``
  (the symmetry-distinct sites and the listed operations, special positions, 1/3 and 2/3
  coordinates, hexagonal cells), and the perov5 ones with oxidation states too (``O2-`` type
  symbols and an ``_atom_type_oxidation_number`` loop);
* per CIF: the gemmi reader's answer (taken, or the reason it declines), then
  ``parse_cif_text(..., fast=True)`` against ``fast=False``: the same failure category, or the
  same number of records with the same atomic numbers in the same order and lattice and
  positions equal within 1e-6 Å (the table gives the largest difference, and how many CIFs
  gave arrays of equal bits, signed zeros included);
* time: each set parsed whole by each path, alternating, three times; the median (one process,
  one thread).

Run from the repository root (about five minutes on one core; ``--limit`` cuts each set)::

    OMP_NUM_THREADS=1 python benchmarks/cif_readers.py [--data /work/shared/data] [--limit N]

It prints a markdown table and exits 1 if any CIF differs.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from deepergat.io.readers.cif import MAX_CIF_ATOMS, parse_cif_text  # noqa: E402
from deepergat.io.readers.cif_gemmi import gemmi_available, read_cif  # noqa: E402
from deepergat.io.readers.records import Record, TaskError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-6


def _csv_cifs(path: Path, limit: int | None) -> list[str]:
    csv.field_size_limit(1 << 30)
    with open(path, newline="") as fh:
        rows = [row["cif"] for row in csv.DictReader(fh)]
    return rows[:limit] if limit else rows


def _rewrites(cifs: list[str], *, oxidation: bool) -> list[str]:
    """The structures written back with their symmetry (and oxidation states)."""
    from pymatgen.core import Structure
    from pymatgen.core.periodic_table import Element
    from pymatgen.io.cif import CifWriter

    out = []
    for text in cifs:
        s = Structure.from_str(text, fmt="cif")
        if oxidation:  # any fixed state per element will do: the reader only has to agree
            s.add_oxidation_state_by_element({el.symbol: (Element(el.symbol).common_oxidation_states
                                                          or (1,))[0] for el in s.elements})
        try:
            out.append(str(CifWriter(s, symprec=0.1)))
        except Exception:  # spglib may fail on a structure: keep the P1 form
            out.append(str(CifWriter(s)))
    return out


def _parse(text: str, i: int, fast: bool) -> list[Record] | str:
    try:
        return parse_cif_text(text, f"row {i}", str(i), expect_one=True, fast=fast)
    except TaskError as e:
        return f"failure: {e.category}"


def _difference(a: list[Record] | str, b: list[Record] | str) -> tuple[float, bool]:
    """Largest lattice/position difference (Å; inf where the outcomes are not comparable), and
    whether the arrays hold the same bits (signed zeros included)."""
    if isinstance(a, str) or isinstance(b, str):
        return (0.0 if a == b else float("inf")), a == b
    if len(a) != len(b):
        return float("inf"), False
    worst = 0.0
    bits = all(x.lattice.tobytes() == y.lattice.tobytes()
               and x.positions.tobytes() == y.positions.tobytes()
               for x, y in zip(a, b, strict=True))
    for x, y in zip(a, b, strict=True):
        if (x.id, x.source) != (y.id, y.source) or not np.array_equal(
                x.atomic_numbers, y.atomic_numbers) or not np.array_equal(x.pbc, y.pbc) \
                or x.positions.shape != y.positions.shape:
            return float("inf"), False
        worst = max(worst, float(np.abs(x.lattice - y.lattice).max()),
                    float(np.abs(x.positions - y.positions).max(initial=0.0)))
    return worst, bits


def _time(cifs: list[str], fast: bool) -> float:
    start = time.perf_counter()
    for i, text in enumerate(cifs):
        _parse(text, i, fast)
    return time.perf_counter() - start


def run_set(name: str, cifs: list[str]) -> dict[str, object]:
    reasons: Counter[str] = Counter()
    taken = differ = exact = 0
    worst = 0.0
    for i, text in enumerate(cifs):
        got = read_cif(text, MAX_CIF_ATOMS)
        if isinstance(got, str):
            reasons[got] += 1
        else:
            taken += 1
        d, bits = _difference(_parse(text, i, True), _parse(text, i, False))
        if d > TOL:
            differ += 1
            print(f"  {name} row {i}: differs ({d})", file=sys.stderr)
        else:
            worst = max(worst, d)
            exact += bits
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(3):
        for fast in (False, True):
            times[fast].append(_time(cifs, fast))
    slow, quick = statistics.median(times[False]), statistics.median(times[True])
    return {"set": name, "cifs": len(cifs), "taken": taken, "declined": len(cifs) - taken,
            "reasons": reasons, "differ": differ, "exact": exact, "worst": worst,
            "pymatgen_s": slow, "fast_s": quick}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    p.add_argument("--limit", type=int, default=None, help="first N CIFs of each set")
    args = p.parse_args(argv)
    if not gemmi_available():
        print("gemmi is not installed: every CIF takes pymatgen's path", file=sys.stderr)
        return 2
    warnings.simplefilter("ignore")
    perov = _csv_cifs(args.data / "perov5_dev.csv", args.limit)
    carbon = _csv_cifs(args.data / "carbon24_dev.csv", args.limit)
    sets = {
        "perov5_dev": perov,
        "carbon24_dev": carbon,
        "tests/data/perov5_sample": _csv_cifs(ROOT / "tests/data/perov5_sample.csv", args.limit),
        "tests/data/carbon24_sample": _csv_cifs(ROOT / "tests/data/carbon24_sample.csv",
                                                args.limit),
        "perov5_dev symmetrized": _rewrites(perov, oxidation=False),
        "carbon24_dev symmetrized": _rewrites(carbon, oxidation=False),
        "perov5_dev symmetrized + oxidation states": _rewrites(perov, oxidation=True),
    }
    results = []
    for name, cifs in sets.items():
        results.append(run_set(name, cifs))
        r = results[-1]
        print(f"{name}: {r['taken']}/{r['cifs']} fast, {r['differ']} differ", file=sys.stderr)
    print("| set | CIFs | gemmi reader | declined (pymatgen) | differ | equal bits | "
          "max diff (Å) | pymatgen path (ms/CIF) | with gemmi (ms/CIF) | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        n = r["cifs"]
        slow, quick = r["pymatgen_s"], r["fast_s"]  # type: ignore[assignment]
        print(f"| {r['set']} | {n} | {r['taken']} | {r['declined']} | {r['differ']} | "
              f"{r['exact']} | {r['worst']:.1e} | {1e3 * slow / n:.3f} | "  # type: ignore
              f"{1e3 * quick / n:.3f} | {slow / quick:.1f}× |")  # type: ignore[operator]
    reasons: Counter[str] = Counter()
    for r in results:
        reasons.update(r["reasons"])  # type: ignore[arg-type]
    if reasons:
        print("\n| declined because | CIFs |\n|---|---:|")
        for reason, count in reasons.most_common():
            print(f"| {reason} | {count} |")
    return 1 if any(r["differ"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
