"""docs/design.md's agreement rule and the parity plan."""

from __future__ import annotations

import numpy as np

from deepergat.export.parity import agree, compare, parity_cases, tolerance
from deepergat.export.samples import edge_case_structures, parity_structures


def test_tolerance_formula():
    y = np.array([[0.0], [1.0], [-1000.0]], dtype=np.float32)
    tol = tolerance(y, [0.5])
    expected = 1e-5 * 0.5 + 4 * np.spacing(np.abs(y).astype(np.float32)).astype(np.float64)
    np.testing.assert_array_equal(tol, expected)
    assert tol[2, 0] == 0.5e-5 + 4 * 2.0**-14  # ulp32(1000) = 2^-14


def test_agree_boundaries_and_nan():
    y1 = np.array([[1.0, 2.0]], dtype=np.float32)
    std = [1.0, 0.0]
    tol = tolerance(y1, std)
    assert agree(y1, y1 + tol * 0.999, std).all()
    assert not agree(y1, y1 + tol * 1.01, std).any()
    assert agree(np.array([[np.nan]]), np.array([[np.nan]]), [1.0]).all()
    assert not agree(np.array([[1.0]]), np.array([[np.nan]]), [1.0]).any()
    assert not agree(np.array([[1.0]]), np.array([[np.inf]]), [1.0]).any()


def test_samples_are_deterministic_and_prefix_free():
    a = parity_structures(50, seed=3)
    b = parity_structures(50, seed=3)
    np.testing.assert_array_equal(a.positions, b.positions)
    assert a.ids == b.ids
    assert set(a.n_atoms.tolist()) > {5}
    assert (~a.pbc.all(1)).any()  # slabs and clusters are there


def test_parity_cases_cover_every_structure():
    structures = parity_structures(130)
    cases = parity_cases(structures, cutoff=8.0, max_neighbors=12,
                         edge_cases=edge_case_structures(), big_batch=300, chunk=64)
    labels = [c.label for c in cases]
    assert labels[:3] == ["chunk-0", "chunk-1", "chunk-2"]
    assert "batch-300" in labels and "self-loop-only" in labels
    covered = {i for c in cases if c.label.startswith("chunk") for i in c.ids}
    assert covered == set(structures.ids)
    big = next(c for c in cases if c.label == "batch-300")
    assert len(big.ids) == 300


def test_compare_reports_figures_and_failures():
    structures = parity_structures(10)
    cases = parity_cases(structures, cutoff=8.0, max_neighbors=12, big_batch=0)
    ref = [(np.ones((len(c.ids), 1), np.float32), np.zeros((len(c.ids), 4), np.float32))
           for c in cases]
    ok = compare(cases, ref, ref, [1.0], target_names=["e"])
    assert ok.passed and ok.worst_ratio == 0 and ok.n_structures == 10
    bad = [(y + 1e-3, e) for y, e in ref]
    result = compare(cases, ref, bad, [1.0], target_names=["e"])
    assert not result.passed
    assert result.worst_ratio > 1
    assert result.failures[0]["target"] == "e"
    assert "worst ratio" in result.summary()
