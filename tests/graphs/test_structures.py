"""Structure checks (`deepergat.graphs.structures`): every status code, the first failing check
winning, and only good structures in the model inputs."""

from __future__ import annotations

import numpy as np

from deepergat.contract import MAX_Z
from deepergat.graphs import build_inputs
from deepergat.io.store import StructureBatch


def test_statuses_of_bad_structures() -> None:
    good = {
        "id": "ok",
        "lattice": np.eye(3) * 4,
        "atomic_numbers": [8, 22],
        "positions": [[0, 0, 0], [2, 2, 2]],
    }
    cases = {
        "empty": ({"atomic_numbers": [], "positions": np.zeros((0, 3))}, 1),
        "big": ({"atomic_numbers": [8] * 5, "positions": np.arange(15).reshape(5, 3) * 0.7}, 2),
        "z0": ({"atomic_numbers": [0, 8]}, 3),
        "z101": ({"atomic_numbers": [101, 8]}, 3),
        "nan": ({"positions": [[0, 0, np.nan], [1, 1, 1]]}, 4),
        "singular": ({"lattice": [[4, 0, 0], [8, 0, 0], [0, 0, 4]]}, 5),
        "inf lattice": ({"lattice": [[np.inf, 0, 0], [0, 4, 0], [0, 0, 4]]}, 5),
        "overlap": ({"positions": [[0, 0, 0], [0.05, 0, 0]]}, 6),
        "self overlap": ({"lattice": [[0.05, 0, 0], [0, 4, 0], [0, 0, 4]]}, 6),
        "first check wins": (
            {"atomic_numbers": [101, 8], "positions": [[0, 0, np.nan], [1, 1, 1]]},
            3,
        ),
    }
    structures = [good]
    for name, (change, _) in cases.items():
        structures.append({**good, "id": name, **change})
    batch = StructureBatch.from_structures(structures)
    g = build_inputs(batch, max_atoms=4, max_z=MAX_Z)
    want = [0] + [code for _, code in cases.values()]
    np.testing.assert_array_equal(g.status, want)
    np.testing.assert_array_equal(g.rows, [0])
    assert g.inputs["crystal_atoms"].shape[0] == 1 and g.inputs["atomic_numbers"].shape == (2,)

