"""Does a model predict for a supercell what it predicts for the cell? One table per model.

    python benchmarks/supercell_check.py --data perov.h5 -n 400 MODEL [MODEL ...]

For the first ``n`` structures of a store, each model predicts the cell and its 2×1×1, 2×2×1 and
2×2×2 supercells (the same crystal); the table gives the mean and largest |Δ| and, when the store
has the model's target, the MAE of the cell and of the supercells against it. A periodic-graph
model of a per-crystal target gives Δ = 0 (its atoms' neighborhoods are the cell's; a
``per_atom`` model's sum grows with the atom count instead). A minimum-image model gives Δ = 0
too: its graphs count a cell's translated copies as one atom (docs/design.md §4).

``--jitter A`` moves every atom of every cell and supercell by a random vector in [-A, A]³ Å
first (seed 0, the same displacements for every model): the copies of a cell in a supercell then
differ by up to 2A per axis, within the 0.25 Å translation tolerance for A = 0.03. The Δ are
still against the unjittered cell, so the 1×1×1 row shows what the jitter alone changes.
"""

from __future__ import annotations

import argparse

import numpy as np

from deepergat import export
from deepergat.contract import MAX_Z
from deepergat.graphs import build_inputs, graph_settings
from deepergat.io.store import Store, StructureBatch

REPEATS = ((2, 1, 1), (2, 2, 1), (2, 2, 2))


def supercell(s: dict, reps: tuple[int, int, int]) -> dict:
    """The structure dict repeated reps[k] times along lattice vector k."""
    lat = np.asarray(s["lattice"])
    shifts = [i * lat[0] + j * lat[1] + k * lat[2]
              for i in range(reps[0]) for j in range(reps[1]) for k in range(reps[2])]
    return {"id": s["id"], "lattice": lat * np.asarray(reps, float)[:, None],
            "atomic_numbers": np.tile(s["atomic_numbers"], len(shifts)),
            "positions": np.concatenate([s["positions"] + v for v in shifts])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="model files or bundled names")
    p.add_argument("--data", required=True, help="structure store")
    p.add_argument("-n", type=int, default=400, help="structures (first n of the store)")
    p.add_argument("--jitter", type=float, default=0.0,
                   help="random displacement of every atom, Å (default 0: exact supercells)")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)

    def jitter(s: dict) -> dict:
        if args.jitter <= 0:
            return s
        moved = s["positions"] + rng.uniform(-args.jitter, args.jitter, s["positions"].shape)
        return {**s, "positions": moved}

    with Store(args.data) as store:
        b = store.read(0, args.n)
    cells = [{"id": b.ids[i], "lattice": b.lattice[i],
              "atomic_numbers": b.atomic_numbers[b.offset[i]:b.offset[i] + b.n_atoms[i]],
              "positions": b.positions[b.offset[i]:b.offset[i] + b.n_atoms[i]]}
             for i in range(len(b))]
    print(f"{len(cells)} structures of {args.data}"
          + (f", atoms moved by up to {args.jitter} Å" if args.jitter > 0 else "") + "\n")
    print("| model | graph | cell | mean abs Δ vs cell | max abs Δ | MAE | ")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        rng = np.random.default_rng(0)  # the same displacements for every model
        model = export.load(name, threads=1)
        g = graph_settings(model.metadata.graph.to_dict())
        target = model.targets[0]
        y = b.targets.get(target)

        def predict(structures: list[dict], model=model, g=g) -> np.ndarray:
            inputs = build_inputs(StructureBatch.from_structures(structures),
                                  cutoff=g["cutoff"], max_neighbors=g["max_neighbors"],
                                  graph=g["construction"], max_z=MAX_Z).inputs
            return np.asarray(model.predict(inputs).prediction)[:, 0]

        base = predict(cells)
        mae = f"{np.abs(base - y).mean():.4f}" if y is not None else "-"
        print(f"| {name} | {g['construction']} | 1×1×1 | 0 | 0 | {mae} |")
        rows = [((1, 1, 1), "1×1×1 jittered")] if args.jitter > 0 else []
        rows += [(reps, "×".join(map(str, reps)) + (" jittered" if args.jitter > 0 else ""))
                 for reps in REPEATS]
        for reps, label in rows:
            d = predict([jitter(supercell(c, reps)) for c in cells]) - base
            mae = f"{np.abs(base + d - y).mean():.4f}" if y is not None else "-"
            print(f"| {name} | {g['construction']} | {label} | "
                  f"{np.abs(d).mean():.4f} | {np.abs(d).max():.4f} | {mae} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
