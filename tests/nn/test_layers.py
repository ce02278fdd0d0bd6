"""Layers of the padded model against their plain references: masked softmax and BatchNorm
against the dense ops on the real entries, DiffGroupNorm against PyG's, AGAT against the
edge-list MessagePassing form, the two AGAT projection forms against each other."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepergat.nn.layers import (
    AGATConv,
    DiffGroupNorm,
    GaussianExpansion,
    MaskedBatchNorm,
    masked_softmax,
)


def _random_graph(n: int = 7, k: int = 5, dim: int = 8, seed: int = 0,
                  dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=dtype)
    edge = torch.randn(n, k, dim, generator=g, dtype=dtype)
    degree = torch.randint(1, k + 1, (n,), generator=g)
    mask = torch.arange(k)[None, :] < degree[:, None]
    neighbors = torch.randint(0, n, (n, k), generator=g)
    neighbors[:, 0] = torch.arange(n)
    neighbors = torch.where(mask, neighbors, torch.arange(n)[:, None])
    return x, edge, neighbors, mask


def test_masked_softmax_matches_softmax_over_real_entries() -> None:
    logits = torch.randn(4, 6, dtype=torch.float64)
    mask = torch.rand(4, 6) < 0.6
    mask[:, 2] = True
    w = masked_softmax(logits, mask, dim=1)
    assert torch.all(w[~mask] == 0)
    for i in range(4):
        ref = torch.softmax(logits[i][mask[i]], dim=0)
        torch.testing.assert_close(w[i][mask[i]], ref)


def test_masked_batchnorm_equals_batchnorm_on_real_entries() -> None:
    x = torch.randn(9, 5, 3, dtype=torch.float64)
    mask = torch.rand(9, 5) < 0.5
    mask[:, 0] = True
    ours = MaskedBatchNorm(3).double()
    ref = nn.BatchNorm1d(3).double()
    ref.load_state_dict(ours.state_dict())
    for _ in range(2):  # two training steps move the running statistics
        torch.testing.assert_close(ours(x, mask)[mask], ref(x[mask]))
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 2
    ours.eval()
    ref.eval()
    torch.testing.assert_close(ours(x, mask)[mask], ref(x[mask]))


def test_padding_does_not_change_masked_batchnorm() -> None:
    x = torch.randn(6, 4, 2, dtype=torch.float64)
    mask = torch.rand(6, 4) < 0.5
    mask[:, 0] = True
    a, b = MaskedBatchNorm(2).double(), MaskedBatchNorm(2).double()
    wide = torch.cat([x, 1e3 * torch.randn(6, 3, 2, dtype=torch.float64)], dim=1)
    wide_mask = torch.cat([mask, torch.zeros(6, 3, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(a(x, mask)[mask], b(wide, wide_mask)[wide_mask])


@pytest.mark.parametrize("form", ["rewritten", "direct"])
@pytest.mark.parametrize("training", [True, False])
def test_diffgroupnorm_equals_pyg(training: bool, form: str) -> None:
    from torch_geometric.nn.norm import DiffGroupNorm as PyGDiffGroupNorm

    torch.manual_seed(3)
    ours = DiffGroupNorm(16, 10, form=form).double()  # type: ignore[arg-type]
    with torch.no_grad():  # non-trivial affine and running statistics: the eval fold uses them
        ours.norm.weight.uniform_(0.5, 1.5)
        ours.norm.bias.uniform_(-0.5, 0.5)
        ours.norm.running_mean.uniform_(-0.3, 0.3)
        ours.norm.running_var.uniform_(0.2, 2.0)
    ref = PyGDiffGroupNorm(16, 10).double()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(30, 16, dtype=torch.float64)
    ours.train(training)
    ref.train(training)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-12, atol=1e-12)
    assert sum(p.numel() for p in ours.parameters()) == 16 * 10 + 2 * 16 * 10


def test_gaussian_expansion_scales_by_cutoff() -> None:
    g = GaussianExpansion(50, cutoff=8.0, width=0.2)
    d = torch.tensor([[0.0, 4.0, 8.0]])
    out = g(d)
    assert out.shape == (1, 3, 50)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor(1.0))  # d = 0 on the first center
    torch.testing.assert_close(out[0, 2, -1], torch.tensor(1.0))  # d = cutoff on the last
    expected = torch.exp(-0.5 * ((0.5 - torch.linspace(0, 1, 50)) / 0.2) ** 2)
    torch.testing.assert_close(out[0, 1], expected)


@pytest.mark.parametrize("training", [True, False])
def test_agat_padded_equals_edge_list(training: bool) -> None:
    from deepergat.nn.reference import EdgeListAGATConv

    x, edge, neighbors, mask = _random_graph()
    ours = AGATConv(8, heads=4).double()
    ref = EdgeListAGATConv(8, heads=4).double()
    ref.load_state_dict(ours.state_dict())
    ours.train(training)
    ref.train(training)
    n, k = mask.shape
    center = torch.arange(n)[:, None].expand(n, k)[mask]
    edge_index = torch.stack([neighbors[mask], center])
    torch.testing.assert_close(ours(x, edge, neighbors, mask), ref(x, edge_index, edge[mask]))
    torch.testing.assert_close(ours.bn.running_var, ref.bn.running_var)


def test_agat_direct_equals_rewritten() -> None:
    x, edge, neighbors, mask = _random_graph(seed=3)
    conv = AGATConv(8, heads=4).double().eval()
    conv.form = "rewritten"
    a = conv(x, edge, neighbors, mask)
    conv.form = "direct"
    b = conv(x, edge, neighbors, mask)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="form"):
        AGATConv(8, form="fast")  # type: ignore[arg-type]


def test_agat_empty_slots_do_not_matter() -> None:
    x, edge, neighbors, mask = _random_graph(seed=5)
    conv = AGATConv(8, heads=2).double().eval()
    n = x.shape[0]
    wide_edge = torch.cat([edge, torch.randn(n, 3, 8, dtype=torch.float64)], dim=1)
    wide_nb = torch.cat([neighbors, torch.arange(n)[:, None].expand(n, 3)], dim=1)
    wide_mask = torch.cat([mask, torch.zeros(n, 3, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(conv(x, edge, neighbors, mask),
                               conv(x, wide_edge, wide_nb, wide_mask))


def test_agat_parameter_count() -> None:
    conv = AGATConv(64, heads=4)
    assert sum(p.numel() for p in conv.parameters()) == 33_352
