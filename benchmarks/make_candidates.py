"""Generate perovskite-family screening candidates straight into a structure store.

``python benchmarks/make_candidates.py -n N -o candidates.h5 [--seed S]``

Each candidate is an ABX3 cell made by element substitution on a distorted cubic prototype:
A on the corner (0, 0, 0), B in the body centre, X on the three face centres. The cubic lattice
constant comes from tabulated ionic radii (Shannon; covalent-like values for the nitrides),
the mean of the two ideal-contact estimates 2 (r_B + r_X) and √2 (r_A + r_X), so the tolerance
factor shows in the geometry. Every cell is then strained (a random symmetric strain of a few
per cent) and every atom displaced (a few hundredths of an Å). About a quarter of the candidates
are supercells (2×1×1, 2×2×1, 2×2×2: 10, 20, 40 atoms) whose B sites are drawn independently, so
double perovskites appear and sizes vary.

Everything is vectorized per batch of candidates; the generator is deterministic by ``--seed``
and prefix-stable (the first k candidates do not depend on N). Ids are ``cand-0000001``, ….
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

#: A-site cations: symbol, Z, 12-coordinate ionic radius (Å).
A_SITES: tuple[tuple[str, int, float], ...] = (
    ("Na", 11, 1.39), ("K", 19, 1.64), ("Rb", 37, 1.72), ("Cs", 55, 1.88), ("Ca", 20, 1.34),
    ("Sr", 38, 1.44), ("Ba", 56, 1.61), ("Pb", 82, 1.49), ("La", 57, 1.36), ("Y", 39, 1.21),
    ("Ag", 47, 1.28), ("Tl", 81, 1.70), ("Bi", 83, 1.45), ("Cd", 48, 1.31), ("Mg", 12, 1.22),
    ("Sc", 21, 1.16), ("In", 49, 1.30), ("Sn", 50, 1.35), ("Li", 3, 1.25), ("Hf", 72, 1.20),
)
#: B-site cations: symbol, Z, 6-coordinate ionic radius (Å).
B_SITES: tuple[tuple[str, int, float], ...] = (
    ("Ti", 22, 0.605), ("Zr", 40, 0.72), ("Hf", 72, 0.71), ("Nb", 41, 0.64), ("Ta", 73, 0.64),
    ("V", 23, 0.54), ("Cr", 24, 0.615), ("Mn", 25, 0.53), ("Fe", 26, 0.645), ("Co", 27, 0.545),
    ("Ni", 28, 0.56), ("Cu", 29, 0.73), ("Zn", 30, 0.74), ("Al", 13, 0.535), ("Ga", 31, 0.62),
    ("In", 49, 0.80), ("Sn", 50, 0.69), ("Sc", 21, 0.745), ("Mg", 12, 0.72), ("Ge", 32, 0.53),
    ("Mo", 42, 0.59), ("W", 74, 0.60), ("Ru", 44, 0.62), ("Rh", 45, 0.60), ("Ir", 77, 0.625),
    ("Pt", 78, 0.625), ("Os", 76, 0.63), ("Re", 75, 0.63), ("Si", 14, 0.40), ("Sb", 51, 0.60),
    ("Te", 52, 0.56), ("Pd", 46, 0.615), ("Ag", 47, 0.94), ("Au", 79, 0.85),
)
#: X-site anions: symbol, Z, ionic radius (Å), relative weight.
X_SITES: tuple[tuple[str, int, float, float], ...] = (
    ("O", 8, 1.40, 6.0), ("F", 9, 1.33, 1.0), ("N", 7, 1.46, 2.0), ("S", 16, 1.84, 1.0),
    ("Cl", 17, 1.81, 0.5), ("Br", 35, 1.96, 0.3), ("I", 53, 2.20, 0.2),
)
#: Supercell repeats and their share of the candidates.
SUPERCELLS: tuple[tuple[tuple[int, int, int], float], ...] = (
    ((1, 1, 1), 0.75), ((2, 1, 1), 0.12), ((2, 2, 1), 0.08), ((2, 2, 2), 0.05),
)
#: Fractional coordinates of the prototype: A, B, X, X, X.
PROTOTYPE = np.array(
    [[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]]
)
#: Candidates generated per batch (also the granularity of the seed stream).
BATCH = 65536
STRAIN = 0.03
DISPLACEMENT = 0.04  # Å, standard deviation


def _tables() -> tuple[np.ndarray, ...]:
    a = np.array([[z, r] for _, z, r in A_SITES])
    b = np.array([[z, r] for _, z, r in B_SITES])
    x = np.array([[z, r, w] for _, z, r, w in X_SITES])
    return a[:, 0].astype(np.int64), a[:, 1], b[:, 0].astype(np.int64), b[:, 1], \
        x[:, 0].astype(np.int64), x[:, 1], x[:, 2] / x[:, 2].sum()


def generate_batch(m: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """m candidates as flat store arrays.

    Args:
        m: number of candidates.
        rng: random generator (consumed in a fixed order, so output is a function of its state).

    Returns:
        dict with ``n_atoms`` [m] int64, ``lattice`` [m, 3, 3] float64 Å (rows),
        ``pbc`` [m, 3] bool, ``atomic_numbers`` [n] int64, ``positions`` [n, 3] float64 Å,
        structures concatenated in order.
    """
    za, ra, zb, rb, zx, rx, wx = _tables()
    shares = np.array([s for _, s in SUPERCELLS])
    kind = rng.choice(len(SUPERCELLS), size=m, p=shares / shares.sum())
    ia = rng.integers(0, len(za), m)
    ix = rng.choice(len(zx), size=m, p=wx)
    ib0 = rng.integers(0, len(zb), m)
    a_cubic = 0.5 * (2.0 * (rb[ib0] + rx[ix]) + np.sqrt(2.0) * (ra[ia] + rx[ix]))
    eps = rng.normal(scale=STRAIN / 2, size=(m, 3, 3))
    eps = 0.5 * (eps + eps.transpose(0, 2, 1))
    cell = a_cubic[:, None, None] * (np.eye(3)[None] + eps)  # [m, 3, 3] rows

    out_n = np.zeros(m, dtype=np.int64)
    lattice = np.empty((m, 3, 3))
    z_parts: list[tuple[np.ndarray, np.ndarray]] = []  # (structure rows, [s, n] Z)
    p_parts: list[np.ndarray] = []
    for k, (reps, _) in enumerate(SUPERCELLS):
        rows = np.flatnonzero(kind == k)
        if not len(rows):
            continue
        r = np.array(reps)
        shifts = np.stack(
            np.meshgrid(*(np.arange(v) for v in reps), indexing="ij"), axis=-1
        ).reshape(-1, 3)  # [cells, 3]
        cells = len(shifts)
        frac = ((shifts[:, None, :] + PROTOTYPE[None]) / r).reshape(-1, 3)  # [cells*5, 3]
        sup = cell[rows] * r[None, :, None]  # scale the rows
        s = len(rows)
        n = 5 * cells
        # Element per site: A and X fixed per candidate, B drawn per cell (double perovskites).
        ib = rng.integers(0, len(zb), (s, cells))
        ib[:, 0] = ib0[rows]
        same = rng.random((s, cells)) < 0.5  # half the supercells keep one B element
        ib = np.where(same, ib0[rows][:, None], ib)
        z = np.empty((s, cells, 5), dtype=np.int64)
        z[:, :, 0] = za[ia[rows]][:, None]
        z[:, :, 1] = zb[ib]
        z[:, :, 2:] = zx[ix[rows]][:, None, None]
        pos = np.einsum("nj,sjk->snk", frac, sup)  # [s, n, 3]
        pos += rng.normal(scale=DISPLACEMENT, size=pos.shape)
        out_n[rows] = n
        lattice[rows] = sup
        z_parts.append((rows, z.reshape(s, n)))
        p_parts.append(pos)
    # Scatter the per-kind blocks back into input order.
    offset = np.concatenate([[0], np.cumsum(out_n)[:-1]])
    total = int(out_n.sum())
    atomic_numbers = np.empty(total, dtype=np.int64)
    positions = np.empty((total, 3))
    for (rows, z), pos in zip(z_parts, p_parts, strict=True):
        n = z.shape[1]
        idx = (offset[rows][:, None] + np.arange(n)[None]).reshape(-1)
        atomic_numbers[idx] = z.reshape(-1)
        positions[idx] = pos.reshape(-1, 3)
    return {
        "n_atoms": out_n,
        "lattice": lattice,
        "pbc": np.ones((m, 3), dtype=bool),
        "atomic_numbers": atomic_numbers,
        "positions": positions,
    }


def batches(n: int, seed: int = 0) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(first candidate index, arrays) per batch of `BATCH` candidates, n in all."""
    seeds = np.random.SeedSequence(seed).spawn((n + BATCH - 1) // BATCH)
    for k, ss in enumerate(seeds):
        start = k * BATCH
        yield start, generate_batch(min(BATCH, n - start), np.random.default_rng(ss))


def candidate_ids(start: int, stop: int, width: int = 7) -> list[str]:
    """``cand-0000001``-style ids of candidates [start, stop) (1-based numbers)."""
    return [f"cand-{k:0{width}d}" for k in range(start + 1, stop + 1)]


def write_candidates(path: str | Path, n: int, *, seed: int = 0) -> str:
    """Write n candidates to a structure store; returns its content digest."""
    from deepergat.io.store import StoreWriter

    width = max(7, len(str(n)))
    with StoreWriter(path) as w:
        for start, arrays in batches(n, seed):
            m = len(arrays["n_atoms"])
            w.append(ids=candidate_ids(start, start + m, width), **arrays)
    return w.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=1_000_000, help="number of candidates (1,000,000)")
    p.add_argument("-o", "--output", required=True, help="output structure store (.h5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("-n must be at least 1")
    t0 = time.perf_counter()
    digest = write_candidates(args.output, args.n, seed=args.seed)
    print(
        f"wrote {args.n} candidates to {args.output} in {time.perf_counter() - t0:.1f} s "
        f"(content digest {digest[:12]})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
