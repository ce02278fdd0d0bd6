"""Models from their recorded arguments (deepergat.nn.build): every ``model`` dict the starting
commit wrote (tests/data/model_arguments.json) rebuilds the model it describes."""

from __future__ import annotations

import json

import pytest
from structure_helpers import data_file

from deepergat.nn.build import build_from_config
from deepergat.nn.ensemble import DeeperGATGNNEnsemble
from deepergat.nn.registry import model_class

MODELS = json.loads(data_file("model_arguments.json").read_text())["models"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_recorded_arguments_rebuild_their_model(name: str) -> None:
    config = dict(MODELS[name]["model"])
    model = build_from_config(config)
    assert list(model.config.items()) == list(config.items())
    if "members" in config:
        assert isinstance(model, DeeperGATGNNEnsemble) and len(model.members) == config["members"]
        assert type(model.members[0]) is model_class(config)
    else:
        assert type(model) is model_class(config)


def test_arguments_this_version_does_not_build_are_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown architecture 'painn' \(this deepergat builds "
                                         "deepergatgnn, gatgnn, cgcnn, schnet, mpnn, megnet\\)"):
        build_from_config({"arch": "painn"})
    with pytest.raises(TypeError, match=r"SchNet\.__init__\(\) got an unexpected keyword "
                                        "argument 'heads'"):
        build_from_config({"arch": "schnet", "heads": 4, "members": 2})
