"""On a GPU: screening with ``device="cuda"`` places the model on the GPU and writes the file the
CPU writes (statuses, flags and ids exactly; predictions within the cross-device tolerance).
Skipped where neither ONNX Runtime's CUDA provider nor torch's CUDA can run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from screen_helpers import read_predictions, run_inprocess

pytestmark = pytest.mark.gpu


def _skip_without_cuda(fmt: str) -> None:
    if fmt == "onnx":
        from deepergat.export.runtime import cuda_available

        if not cuda_available():
            pytest.skip("no CUDA provider or GPU")
    else:
        torch = pytest.importorskip("torch")
        if not torch.cuda.is_available():
            pytest.skip("torch sees no CUDA device")


@pytest.mark.parametrize("fmt", ["onnx", "checkpoint"])
def test_cuda_screen_matches_cpu(tmp_path: Path, screen_store: Path, small_model: dict[str, Any],
                                 reference_predictions: Path, fmt: str,
                                 caplog: pytest.LogCaptureFixture) -> None:
    _skip_without_cuda(fmt)
    out = tmp_path / "gpu.h5"
    with caplog.at_level(logging.INFO, logger="deepergat.screening.run"):
        result = run_inprocess(screen_store, small_model[fmt], out, device="cuda",
                               workers=None, chunk_size=64)
    assert " on cuda" in caplog.text, caplog.text
    assert result.outcome == "merged" and result.structures == 300
    gpu, cpu = read_predictions(out), read_predictions(reference_predictions)
    assert gpu["ids"] == cpu["ids"]
    np.testing.assert_array_equal(gpu["status"], cpu["status"])
    np.testing.assert_array_equal(gpu["flags"], cpu["flags"])
    y1, y2 = cpu["predictions"]["heat_ref"], gpu["predictions"]["heat_ref"]
    ok = cpu["status"] == 0
    assert np.array_equal(np.isnan(y1), np.isnan(y2))
    # docs/design.md's rule is for one device; across devices (other kernels) allow 10x
    tol = 10 * 1e-5 * small_model["std"] + 4 * np.spacing(np.abs(y1[ok]))
    assert np.all(np.abs(y1[ok] - y2[ok]) <= tol)
