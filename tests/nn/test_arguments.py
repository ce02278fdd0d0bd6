"""Constructor arguments recorded once (deepergat.nn.arguments): every architecture and ensemble
writes exactly the ``model`` dict the starting commit of issue 23 wrote (tests/data/README.md),
refuses bad settings with the same messages, and the bundled models load and predict as before;
the recording rule on a class of its own."""

from __future__ import annotations

import importlib.util
import inspect
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from structure_helpers import data_file

from deepergat.architectures import UNWRITTEN, architecture_name
from deepergat.contract import INPUT_NAMES
from deepergat.graphs import build_inputs
from deepergat.io.store import StructureBatch
from deepergat.nn.arguments import recorded_arguments
from deepergat.nn.build import build_from_config
from deepergat.nn.cgcnn import CGCNN
from deepergat.nn.checkpoint import checkpoint_format, load_checkpoint
from deepergat.nn.deepergatgnn import DeeperGATGNN
from deepergat.nn.ensemble import DeeperGATGNNEnsemble
from deepergat.nn.graphmodel import GraphModel
from deepergat.nn.matdeeplearn import MatDeepLearnNet
from deepergat.nn.registry import make_model
from deepergat.nn.schnet import SchNet

FIXTURE = json.loads(data_file("model_arguments.json").read_text())


def _cases() -> ModuleType:
    """tests/data/make_model_arguments.py, whose cases the fixture was made from."""
    spec = importlib.util.spec_from_file_location("make_model_arguments",
                                                  data_file("make_model_arguments.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CASES = _cases()
API = CASES.Api(make_model, DeeperGATGNN, DeeperGATGNNEnsemble, build_from_config)
MODELS = CASES.model_cases(API)
ERRORS = CASES.error_cases(API)


def _text(value: Any) -> str:
    """JSON text: tells 7 from 7.0 and keeps the keys' order."""
    return json.dumps(value)


def test_the_fixture_covers_every_case() -> None:
    assert sorted(MODELS) == sorted(FIXTURE["models"])
    assert sorted(ERRORS) == sorted(FIXTURE["errors"])


@pytest.mark.parametrize("name", sorted(FIXTURE["models"]))
def test_recorded_arguments_equal_the_starting_commits(name: str) -> None:
    torch.manual_seed(0)
    model = MODELS[name]()
    got = CASES.record(model, checkpoint_format, architecture_name)
    want = FIXTURE["models"][name]
    # keys, values, their types and order: `deepergat info` prints them in this order
    assert _text(got["model"]) == _text(want["model"])
    assert (got["format"], got["architecture"]) == (want["format"], want["architecture"])


@pytest.mark.parametrize("name", sorted(FIXTURE["errors"]))
def test_refusals_read_as_the_starting_commits(name: str) -> None:
    assert CASES.refusal(ERRORS[name]) == FIXTURE["errors"][name]


@pytest.mark.parametrize("name", sorted(FIXTURE["bundled"]))
def test_bundled_models_load_and_predict_as_before(name: str) -> None:
    want = FIXTURE["bundled"][name]
    path = Path(__file__).resolve().parents[2] / "deepergat" / "models" / name
    ck = load_checkpoint(path)
    assert _text(list(map(list, ck.data["model"].items()))) == _text(want["saved"])
    assert _text(list(map(list, ck.model.config.items()))) == _text(want["rebuilt"])
    structures = CASES.perovskites(6)
    graph = ck.metadata.graph.as_kwargs()
    batch = build_inputs(StructureBatch.from_structures(structures), **graph)
    assert [structures[r]["id"] for r in batch.rows] == want["ids"]
    with torch.no_grad():
        outputs = ck.model(*(torch.from_numpy(np.asarray(batch.inputs[n])) for n in INPUT_NAMES))
    assert len(outputs) == len(want["outputs"])
    for got, expected in zip(outputs, want["outputs"], strict=True):
        np.testing.assert_allclose(got.double().numpy(), np.array(expected), rtol=1e-6,
                                   atol=1e-6)


# ------------------------------------------------------------------ the rule, on a class of its own


class _Toy(GraphModel):
    """A made-up architecture: one setting of its own, one written only when set."""

    arch = "toy"

    def __init__(self, *, width: int = 3, identity: str = "doubled", **settings: Any) -> None:
        super().__init__(**settings)
        self.width = width


def test_a_class_declares_its_own_settings_and_shows_all() -> None:
    shown = inspect.signature(_Toy).parameters
    assert list(shown)[:2] == ["width", "identity"]
    assert shown["cutoff"].default == 8.0 and shown["targets"].default == 1
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in shown.values())
    # a subclass that changes a default keeps the setting in its place; its own come after
    cgcnn, schnet = inspect.signature(CGCNN).parameters, inspect.signature(SchNet).parameters
    assert cgcnn["hidden"].default == 150 and schnet["pool"].default == "max"
    assert list(schnet)[:9] == ["deeper", "dim", "hidden", "layers", "post_layers", "groups",
                                "pool", "identity", "filters"]
    # an instance's signature stays its call's (tracers and exporters read it)
    assert not hasattr(_Toy(), "__signature__")


def test_the_record_rule() -> None:
    shared = {"gaussians": 50, "gaussian_width": 0.2, "cutoff": 8.0, "max_neighbors": 12,
              "graph": "periodic", "distance_scale": None, "targets": 1, "per_atom": False}
    toy = _Toy(width=5, target_mean=[1.0], target_std=[2.0])  # buffers: never written
    assert list(toy.config.items()) == [("arch", "toy"), ("width", 5), *shared.items()]
    assert toy.width == 5 and float(toy.target_std[0]) == 2.0
    # written only when it differs from what its absence means: after the always-written ones
    single = _Toy(identity="single", distance_scale=6)
    assert list(single.config)[:3] == ["arch", "width", "identity"]
    assert single.config["distance_scale"] == 6.0 and type(single.config["distance_scale"]) is \
        float
    assert UNWRITTEN["identity"] == "doubled" and "identity" not in _Toy().config
    assert recorded_arguments(_Toy, {"width": 2}) == {"arch": "toy", "width": 2, **shared}


def test_unknown_settings_are_refused_by_the_class_built() -> None:
    with pytest.raises(TypeError, match=r"^_Toy\.__init__\(\) got an unexpected keyword "
                                        r"argument 'depth'$"):
        _Toy(depth=2)
    with pytest.raises(TypeError, match="positional"):
        _Toy(3)  # type: ignore[misc]


def test_a_subclass_without_an_init_records_as_its_base() -> None:
    class Wider(_Toy):
        pass

    assert Wider(width=7).config == _Toy(width=7).config


def test_a_shared_setting_declared_again_keeps_its_default() -> None:
    with pytest.raises(TypeError, match=r"cutoff defaults to 5\.0, the shared setting to 8\.0"):
        class Bad(GraphModel):
            def __init__(self, *, cutoff: float = 5.0, **settings: Any) -> None:
                super().__init__(cutoff=cutoff, **settings)

    with pytest.raises(TypeError, match="keyword-only"):
        class Positional(MatDeepLearnNet):
            def __init__(self, width: int = 3, **settings: Any) -> None:
                super().__init__(**settings)


def test_setters_update_the_record() -> None:
    model = DeeperGATGNN(layers=1)
    model.set_agat_form("direct")
    assert model.config["agat_form"] == "direct"
    ensemble = DeeperGATGNNEnsemble(members=2, layers=1, dim=8)
    assert list(ensemble.config)[-1] == "members" and "local_error" not in ensemble.config
    ensemble.set_local_error(torch.randn(2, 6, 8), torch.rand(6, 1), neighbors=3)
    assert ensemble.config["local_error"] == {"neighbors": 3, "bandwidth": 0.3,
                                              "references": 6, "features": 16}
    # the recorded arguments rebuild the model: the same record, the same buffers' shapes
    again = build_from_config(ensemble.config)
    assert again.config == ensemble.config
    assert again.reference_embeddings.shape == ensemble.reference_embeddings.shape
