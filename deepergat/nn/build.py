"""A model from its recorded constructor arguments (`deepergat.nn.arguments`): what checkpoints
rebuild (`deepergat.nn.checkpoint`) and the PyG references mirror."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .ensemble import DeeperGATGNNEnsemble
from .graphmodel import GraphModel
from .registry import build_single

__all__ = ["build_from_config"]


def build_from_config(config: Mapping[str, Any]) -> GraphModel | DeeperGATGNNEnsemble:
    """The model a saved constructor-argument dict describes, with new weights: an ensemble
    when it has ``members``, else the class its ``arch`` names (none: `DeeperGATGNN`).

    Raises:
        ValueError: an ``arch`` this version does not build, or arguments the model refuses
            (TypeError for one it does not take).
    """
    if "members" in config:
        return DeeperGATGNNEnsemble(**config)
    return build_single(config)
