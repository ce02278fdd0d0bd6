"""Checkpoints: round trip with weights_only loading, metadata, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from arch_helpers import randomized
from model_helpers import model_inputs, perov_structures

from deepergat.errors import DeepergatError
from deepergat.metadata import ModelMetadata
from deepergat.nn.checkpoint import (
    ARCH_FORMAT,
    CHECKPOINT_FORMAT,
    atomic_save,
    load_checkpoint,
    make_checkpoint,
    metadata,
    model_metadata,
    save_checkpoint,
)
from deepergat.nn.deepergatgnn import DeeperGATGNN
from deepergat.nn.registry import make_model


def _saved(tmp_path: Path) -> tuple[Path, DeeperGATGNN]:
    torch.manual_seed(0)
    model = DeeperGATGNN(dim=16, layers=2, cutoff=7.0, max_neighbors=10, target_mean=[1.0],
                         target_std=[0.5]).eval()
    path = tmp_path / "m.ckpt"
    save_checkpoint(path, model, targets=["heat_ref"], units=["eV"], elements=[8, 1, 22],
                    store_digest="abc",
                    training={"epoch": 3, "rng": {"torch": torch.get_rng_state()}})
    return path, model


def test_round_trip_rebuilds_the_model(tmp_path: Path) -> None:
    path, model = _saved(tmp_path)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == CHECKPOINT_FORMAT == 1
    assert raw["model"]["dim"] == 16
    assert raw["graph"] == {"cutoff": 7.0, "max_neighbors": 10, "construction": "periodic"}
    assert raw["elements"] == [1, 8, 22]
    ck = load_checkpoint(path)
    assert not ck.model.training
    assert ck.metadata.target_names == ["heat_ref"] and ck.metadata.units == ["eV"]
    assert (ck.metadata.graph.cutoff, ck.metadata.graph.max_neighbors) == (7.0, 10)
    inputs = model_inputs(perov_structures(3), cutoff=7.0, max_neighbors=10)
    with torch.no_grad():
        torch.testing.assert_close(ck.model.forward_inputs(inputs)[0],
                                   model.forward_inputs(inputs)[0], rtol=0, atol=0)
    assert not (tmp_path / "m.ckpt.tmp").exists()


def test_metadata_document(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path)
    meta = metadata(path)
    json.dumps(meta)  # JSON-serializable
    assert meta["format"] == 1
    assert meta["graph"] == {"cutoff": 7.0, "max_neighbors": 10, "construction": "periodic"}
    assert meta["targets"] == [{"name": "heat_ref", "units": "eV", "mean": 1.0, "std": 0.5}]
    assert meta["elements"] == [1, 8, 22]
    assert len(meta["source_sha256"]) == 64
    assert meta["model"]["layers"] == 2 and "package_version" in meta


def test_a_checkpoint_exposes_the_one_metadata_object(tmp_path: Path) -> None:
    # the metadata a loaded checkpoint, `model_metadata` and an eager predictor expose is one
    # ModelMetadata, the file's digest included
    from deepergat.export import load

    path, _ = _saved(tmp_path)
    ck = load_checkpoint(path)
    assert isinstance(ck.metadata, ModelMetadata)
    assert ck.metadata == model_metadata(path)
    assert ck.metadata.to_dict() == metadata(path)
    predictor = load(path, device="cpu")
    assert predictor.metadata == ck.metadata
    assert predictor.sha256 == ck.metadata.source_sha256 == metadata(path)["source_sha256"]


def test_a_failed_save_leaves_the_earlier_file(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path)
    before = path.read_bytes()
    with pytest.raises(Exception, match="pickle"):
        atomic_save({"not a tensor": lambda: None}, path)
    assert path.read_bytes() == before
    assert not (tmp_path / "m.ckpt.tmp").exists()


def test_errors_name_the_file_and_problem(tmp_path: Path) -> None:
    with pytest.raises(DeepergatError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"hello, not a checkpoint")
    with pytest.raises(DeepergatError, match="not a readable deepergat checkpoint"):
        load_checkpoint(junk)
    path, _ = _saved(tmp_path)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DeepergatError, match="truncated"):
        load_checkpoint(truncated)
    other = tmp_path / "other.ckpt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(DeepergatError, match="not a deepergat checkpoint"):
        load_checkpoint(other)
    data = torch.load(path, weights_only=True)
    data["format"] = 99
    future = tmp_path / "future.ckpt"
    torch.save(data, future)
    with pytest.raises(DeepergatError, match="format 99 is not supported"):
        load_checkpoint(future)


def test_minimum_image_checkpoints_carry_the_translation_rule(tmp_path: Path) -> None:
    model = DeeperGATGNN(dim=16, layers=2, graph="minimum-image").eval()
    data = make_checkpoint(model, targets=["heat_ref"], units=["eV"], elements=[8, 22])
    assert data["graph"] == {"cutoff": 8.0, "max_neighbors": 12, "construction": "minimum-image",
                             "translation_tolerance": 0.25, "translation_max_atoms": 256}
    path = tmp_path / "mic.ckpt"
    torch.save(data, path)
    assert metadata(path)["graph"] == data["graph"]
    # written before the rule was recorded: read with this version's rule
    del data["graph"]["translation_tolerance"], data["graph"]["translation_max_atoms"]
    torch.save(data, path)
    assert load_checkpoint(path).model.config["graph"] == "minimum-image"
    # another rule: refused on load, not fed graphs it was not trained on
    data["graph"].update(translation_tolerance=0.5, translation_max_atoms=256)
    torch.save(data, path)
    with pytest.raises(DeepergatError, match=r"mic\.ckpt: made with another translation rule"):
        load_checkpoint(path)


def test_make_checkpoint_checks_target_count() -> None:
    model = DeeperGATGNN(dim=8, layers=1, targets=2)
    with pytest.raises(ValueError):
        make_checkpoint(model, targets=["a"], units=["eV"], elements=[1])


def test_checkpoints_name_their_architecture_and_format(tmp_path: Path) -> None:
    model = randomized("schnet", True, layers=2).float()
    path = tmp_path / "s.ckpt"
    save_checkpoint(path, model, targets=["heat_ref"], units=["eV"], elements=[8, 22])
    ck = load_checkpoint(path)
    assert ck.data["format"] == ARCH_FORMAT and type(ck.model).__name__ == "SchNet"
    inputs = model_inputs(perov_structures(3))
    with torch.no_grad():
        torch.testing.assert_close(ck.model.forward_inputs(inputs)[0],
                                   model.eval().forward_inputs(inputs)[0])
    plain = make_model("deepergatgnn", layers=1)
    save_checkpoint(tmp_path / "d.ckpt", plain, targets=["t"], units=[""], elements=[8])
    assert load_checkpoint(tmp_path / "d.ckpt").data["format"] == CHECKPOINT_FORMAT


# ------------------------------------------------------------ metadata against the weights


def _set(doc: dict, key: str, value: object) -> None:
    """``doc[a][b] = value`` for ``key`` ``"a.b"`` (lists by index: ``"targets.0"``)."""
    *path, last = key.split(".")
    for part in path:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    doc[int(last) if isinstance(doc, list) else last] = value


#: Metadata that contradicts a checkpoint's weights (cutoff 7 Å, 10 neighbors, target mean 1,
#: std 0.5, Gaussian width 0.2): each loaded before and was predicted with.
LIES = {
    "graph neighbors": ({"graph.max_neighbors": 40},
                        "graph.max_neighbors is 40 but model.max_neighbors is 10"),
    "graph cutoff": ({"graph.cutoff": 9.0}, "graph.cutoff is 9.0 but model.cutoff is 7.0"),
    "graph and model cutoff": ({"graph.cutoff": 9.0, "model.cutoff": 9.0},
                               "graph.cutoff is 9.0 but the weights scale distances by 7 Å"),
    "construction": ({"graph.construction": "minimum-image"},
                     "graph.construction is 'minimum-image' but model.graph is 'periodic'"),
    "distance scale": ({"model.distance_scale": 5.0},
                       "model.distance_scale is 5.0 but the weights scale distances by 7 Å"),
    "gaussian width": ({"model.gaussian_width": 0.1},
                       "model.gaussian_width is 0.1 but the weights' Gaussians have width 0.2"),
    "target mean": ({"target_mean": [3.0]},
                    "targets[0].mean is 3.0 but the weights scale by 1 (target_mean)"),
    "target std": ({"target_std": [2.0]},
                   "targets[0].std is 2.0 but the weights scale by 0.5 (target_std)"),
}


@pytest.mark.parametrize("lie", list(LIES))
def test_metadata_its_weights_contradict_is_refused_naming_both_values(
        tmp_path: Path, lie: str) -> None:
    """Graph settings, distance expansion and target scaling recorded beside the weights must
    be the weights' own: a checkpoint that says 40 neighbors for a model built for 10 gave
    status-0 predictions off by up to 1.7 eV."""
    path, _ = _saved(tmp_path)
    data = torch.load(path, weights_only=True)
    changes, words = LIES[lie]
    for key, value in changes.items():
        _set(data, key, value)
    torch.save(data, path)
    for read in (load_checkpoint, model_metadata):  # predict; info, export and training
        with pytest.raises(DeepergatError) as e:
            read(path)
        line = str(e.value)
        assert line.startswith(f"{path}: the metadata contradicts the model's weights: ")
        assert words in line and "\n" not in line


@pytest.mark.parametrize(("key", "value", "words"), [
    ("calibration.std_scale", [2.0], "calibration.std_scale is [2.0] but the weights hold"),
    ("calibration.local_weight", [1.0], "calibration.local_weight is [1.0] but the weights hold"),
    ("target_mean", [5.0], "targets[0].mean is 5.0 but the weights scale by"),
])
def test_an_ensembles_calibration_and_scaling_must_be_its_weights(
        tmp_path: Path, key: str, value: object, words: str) -> None:
    legacy = Path(__file__).resolve().parents[1] / "data" / "legacy" / "ensemble.ckpt"
    data = torch.load(legacy, weights_only=True)
    _set(data, key, value)
    path = tmp_path / "e.ckpt"
    torch.save(data, path)
    with pytest.raises(DeepergatError, match="the metadata contradicts") as e:
        load_checkpoint(path)
    assert words in str(e.value)


def test_every_architectures_checkpoint_agrees_with_its_weights(tmp_path: Path) -> None:
    """No model this package builds is refused: the 86 constructor-argument cases of
    tests/data/model_arguments.json (every architecture, Deeper, single identity, per-atom,
    distance scales, minimum-image graphs, ensembles with and without a local error term)."""
    import importlib.util

    from deepergat.nn.build import build_from_config
    from deepergat.nn.ensemble import DeeperGATGNNEnsemble

    source = Path(__file__).resolve().parents[1] / "data" / "make_model_arguments.py"
    spec = importlib.util.spec_from_file_location("make_model_arguments", source)
    assert spec is not None and spec.loader is not None
    cases = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cases)
    api = cases.Api(make_model, DeeperGATGNN, DeeperGATGNNEnsemble, build_from_config)
    models = cases.model_cases(api)
    assert len(models) == 86
    path = tmp_path / "m.ckpt"
    for name, make in models.items():
        model = make()
        t = model.config["targets"]
        save_checkpoint(path, model, targets=[f"t{i}" for i in range(t)], units=[""] * t,
                        elements=[8])
        assert load_checkpoint(path).model.config == model.config, name
