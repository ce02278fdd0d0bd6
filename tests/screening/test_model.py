"""The model of a screen: loaded, probed and described; the default bundled model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from deepergat.errors import DeepergatError
from deepergat.export.resolve import resolve_model
from deepergat.screening.model import DEFAULT_MODEL, load_model, model_identity, model_path
from deepergat.screening.options import StructureChecks
from deepergat.system.files import file_sha256


def test_load_model_describes_what_it_loaded(small_model: dict[str, Any]) -> None:
    onnx = Path(small_model["onnx"])
    m = load_model(str(onnx), device=("cpu", 0), threads=1,
                   checks=StructureChecks(max_atoms=50, overlap_threshold=0.2))
    assert m.name == str(onnx.resolve())
    assert m.sha256 == file_sha256(onnx) == model_identity(str(onnx))[1]
    assert [t.name for t in m.targets] == [small_model["target"]]
    assert (m.settings.max_atoms, m.settings.overlap_threshold) == (50, 0.2)
    assert m.embedding_dim == 64 and not m.spread


def test_a_file_that_is_no_model_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(DeepergatError, match=r"bad\.onnx"):
        load_model(str(bad), device=("cpu", 0), threads=1, checks=StructureChecks())


def test_no_model_means_the_default_bundled_one() -> None:
    assert model_path(None) == resolve_model(DEFAULT_MODEL)
    name, sha = model_identity(None)
    assert name == DEFAULT_MODEL and sha == file_sha256(resolve_model(DEFAULT_MODEL))
