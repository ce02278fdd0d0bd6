"""The padded architectures equal their PyTorch Geometric edge-list references
(deepergat.nn.reference) to 1e-10 in float64, in training and eval mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from arch_helpers import NETS, randomized
from model_helpers import model_inputs, perov_structures

from deepergat.nn.reference import EdgeListDeeperGATGNN, EdgeListNet


@pytest.mark.parametrize(("arch", "deeper", "identity"), [
    *[(a, d, "doubled") for a, d in NETS], ("gatgnn", False, None),
    *[(a, True, "single") for a in ("cgcnn", "schnet", "megnet")]])
@pytest.mark.parametrize("training", [False, True])
def test_padded_equals_pyg_edge_list_reference(arch: str, deeper: bool, identity: str | None,
                                               training: bool) -> None:
    model = randomized(arch, deeper, **({"identity": identity} if identity == "single" else {}))
    if arch == "gatgnn":
        ref = EdgeListDeeperGATGNN(**model.config).double()
        ref.load_state_dict(model.state_dict())
    else:
        ref = EdgeListNet(model.config).double()
        ref.load_padded(model)
    model.train(training)
    ref.train(training)
    inputs = model_inputs(perov_structures(24, ids=("9866",)))
    with torch.no_grad():
        p, e = model.forward_inputs(inputs)
        rp, re = ref(inputs)
    np.testing.assert_allclose(p.numpy(), rp.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(e.numpy(), re.numpy(), rtol=1e-10, atol=1e-10)
    if training:  # the same BatchNorm running statistics after the step (real rows only)
        mine, theirs = model.state_dict(), ref.state_dict()
        for key, value in mine.items():
            torch.testing.assert_close(value, theirs[key])
