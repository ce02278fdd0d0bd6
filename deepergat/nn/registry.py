"""The architectures by name: ``deepergat train --arch`` (`make_model`) and the ``arch`` a
model's recorded arguments name (`build_single`). The names, their paper names and training
defaults are torch-free facts in `deepergat.architectures`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from deepergat.architectures import check_architecture

from .cgcnn import CGCNN
from .deepergatgnn import DeeperGATGNN
from .graphmodel import GraphModel
from .matdeeplearn import MatDeepLearnNet
from .megnet import MEGNet
from .mpnn import MPNN
from .schnet import SchNet

__all__ = ["NETS", "build_single", "count_parameters", "make_model", "model_class"]

#: The MatDeepLearn baselines by their ``arch`` (DeeperGATGNN and GATGNN record none).
NETS: dict[str, type[MatDeepLearnNet]] = {cls.arch: cls for cls in (CGCNN, SchNet, MPNN, MEGNet)}


def model_class(config: Mapping[str, Any]) -> type[GraphModel]:
    """The class of the single model a constructor-argument dict describes: the one its
    ``arch`` names (none: `DeeperGATGNN`).

    Raises:
        ValueError: an ``arch`` this version does not build.
    """
    arch = config.get("arch")
    if arch is None:
        return DeeperGATGNN
    if arch not in NETS:
        raise ValueError(f"unknown architecture {arch!r} (this deepergat builds "
                         f"{', '.join(['deepergatgnn', 'gatgnn', *NETS])})")
    return NETS[arch]


def build_single(config: Mapping[str, Any]) -> GraphModel:
    """The single model a constructor-argument dict describes (`model_class`), new weights."""
    cls = model_class(config)
    return cls(**{k: v for k, v in config.items() if k != "arch"})


def make_model(arch: str, *, deeper: bool = False, **kwargs: Any) -> GraphModel:
    """A new model of a `deepergat.architectures.Architecture` (``deepergat train --arch``).

    Args:
        arch: ``deepergatgnn`` (= ``gatgnn`` with ``deeper``), ``gatgnn``, ``cgcnn``,
            ``schnet``, ``megnet`` or ``mpnn``.
        deeper: the paper's Deeper variant (DiffGroupNorm and skip connections).
        **kwargs: constructor arguments (layers, graph settings, targets, …).
    """
    arch = check_architecture(arch)
    if arch in ("deepergatgnn", "gatgnn") and "identity" in kwargs:
        raise ValueError(
            "identity applies to the Deeper variants of CGCNN, SchNet and MEGNet (layers that "
            "end in a residual of their own); GATGNN's layer has none")
    if arch == "deepergatgnn" or (arch == "gatgnn" and deeper):
        return DeeperGATGNN(**kwargs)
    if arch == "gatgnn":
        return DeeperGATGNN(**{"dgn": False, "skip": False, "batch_norm": True, **kwargs})
    return NETS[arch](deeper=deeper, **kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
