"""Helpers of the architecture tests (tests/nn): the architectures to run and a model of each
with fixed random weights."""

from __future__ import annotations

import torch

from deepergat.nn.registry import make_model

#: (arch, deeper) of the MatDeepLearn baselines.
NETS = [(a, d) for a in ("cgcnn", "schnet", "mpnn", "megnet") for d in (False, True)]


def randomized(arch: str, deeper: bool, *, layers: int = 3, **kw: object) -> torch.nn.Module:
    """A model with fixed random weights and non-trivial BatchNorm statistics, float64, eval."""
    torch.manual_seed(3)
    model = make_model(arch, deeper=deeper, layers=layers, target_mean=[-1.0],
                       target_std=[0.7], **kw).double()
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "running_mean"):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()
