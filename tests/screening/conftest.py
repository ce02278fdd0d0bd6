"""Screening fixtures: the candidate store and a reference run (helpers: screen_helpers.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from screen_helpers import run_inprocess, write_screen_store


@pytest.fixture(scope="session")
def screen_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 structures: 291 candidates and the 9 `SPECIAL` ones (session-wide, read-only)."""
    return write_screen_store(tmp_path_factory.mktemp("screen-store") / "cands.h5")


@pytest.fixture(scope="session")
def reference_predictions(
    tmp_path_factory: pytest.TempPathFactory, screen_store: Path, small_model: dict[str, Any]
) -> Path:
    """One uninterrupted single-process screen of `screen_store` (chunk size 64, the default
    worker processes: the model runs in them on a multi-core CPU)."""
    out = tmp_path_factory.mktemp("reference") / "ref.h5"
    run_inprocess(screen_store, small_model["onnx"], out, chunk_size=64, workers=None)
    return out
