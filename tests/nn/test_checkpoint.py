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
