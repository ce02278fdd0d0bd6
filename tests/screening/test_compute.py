"""A rank's model-batch budget (the rank's work end to end: test_run.py, test_screen_cli.py)."""

from __future__ import annotations

from dataclasses import dataclass

from deepergat.screening.compute import GPU_BATCH_ATOMS, batch_budget
from deepergat.screening.options import RunControl
from deepergat.screening.pipeline import DEFAULT_BATCH_ATOMS, DEFAULT_BATCH_EDGES


@dataclass
class OnDevice:
    device: str


def test_batch_budget_by_device_unless_given() -> None:
    per_atom = DEFAULT_BATCH_EDGES // DEFAULT_BATCH_ATOMS
    assert batch_budget(RunControl(), OnDevice("cpu")) == (DEFAULT_BATCH_ATOMS,
                                                           DEFAULT_BATCH_EDGES)
    assert batch_budget(RunControl(), OnDevice("cuda:1")) == (GPU_BATCH_ATOMS,
                                                              GPU_BATCH_ATOMS * per_atom)
    assert batch_budget(RunControl(batch_atoms=64), OnDevice("cuda:0")) == (64, 64 * per_atom)
    assert batch_budget(RunControl(batch_atoms=64, batch_edges=100), object()) == (64, 100)
