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


def test_the_probe_graph_is_its_crystals_searched_graph_cut_to_one_neighbor(
        small_model: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The rank's probe gives its two atoms each other as neighbor instead of searching (no
    search kernel loaded in a rank whose workers search): the inputs the search gives for that
    crystal, cut to the self loop and the first neighbor slot (the other seven images of the
    bcc neighbor are ties at the same distance, then come the six second neighbors)."""
    from dataclasses import replace

    import numpy as np

    from deepergat.io.store import StructureBatch
    from deepergat.screening import model as model_module
    from deepergat.screening.pipeline import featurize

    seen: list[Any] = []
    real = model_module._probe

    class Spy:
        def __init__(self, predictor: Any) -> None:
            self.predictor = predictor

        def predict(self, inputs: dict[str, np.ndarray]) -> Any:
            seen.append(inputs)
            return self.predictor.predict(inputs)

    def spying(model: str, predictor: Any, settings: Any, n_targets: int) -> tuple[int, bool]:
        seen.append(settings)
        return real(model, Spy(predictor), settings, n_targets)

    monkeypatch.setattr(model_module, "_probe", spying)
    load_model(small_model["onnx"], device=("cpu", 0), threads=1, checks=StructureChecks())
    settings, given = seen
    assert settings.max_neighbors >= 8  # the search keeps the eight tied images
    z = settings.seen_elements[0]
    probe = StructureBatch.from_structures([{
        "id": "probe", "lattice": np.eye(3) * 3.0, "pbc": (True, True, True),
        "atomic_numbers": [z, z], "positions": [[0.0, 0.0, 0.0], [1.5, 1.5, 1.5]]}])
    searched = featurize(probe, replace(settings, max_atoms=2, overlap_threshold=0.0)
                         ).graph.inputs
    assert given.keys() == searched.keys()
    assert searched["neighbor_mask"][:, :9].all()  # the self loop, then the eight images
    for name in given:
        want = searched[name]
        if name in ("neighbors", "distances", "neighbor_mask"):
            want = want[:, :2]
        assert given[name].dtype == want.dtype, name
        np.testing.assert_allclose(given[name], want, rtol=1e-6, err_msg=name)
