"""MPNN (Gilmer et al. 2017), MatDeepLearn's form, and DeeperMPNN
(`deepergat.nn.matdeeplearn`)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .graphmodel import pool
from .matdeeplearn import MatDeepLearnNet, masked_mean

__all__ = ["MPNN"]


class MPNN(MatDeepLearnNet):
    """Message passing with edge networks (Gilmer et al. 2017), MatDeepLearn's form.

    Layer: Θ_ij = reshape(Lin(ReLU(Lin(e_ij))), [D, D]) (PyG ``NNConv(dim, dim, nn,
    aggr="mean")``), n_i = mean_j h_j Θ_ij + h_i R + b, m = ReLU(BN(n)), g ← GRU(m, g) and
    h ← g; Deeper: DGN instead of BN and h ← g + h (the GRU state g itself takes no skip).
    Mean pooling. Defaults: dim 100, hidden 100, 4 layers, 3 post layers. Each edge carries a
    D × D matrix: memory grows as E·D² (this is the paper's largest model per layer).

    Parameters: 41,901 + 1,086,000 per layer (Deeper: 1,088,800) at the defaults.

    Args:
        edge_hidden: width of the edge network's hidden layer.
        **settings: the frame's (`MatDeepLearnNet`) and the shared ones (`GraphModel`).
    """

    arch = "mpnn"

    def __init__(self, *, edge_hidden: int = 100, **settings: Any) -> None:
        super().__init__(**settings)
        self.convs = nn.ModuleList(_NNConv(self.dim, self.gaussians, edge_hidden)
                                   for _ in range(self.depth))
        self.norms = nn.ModuleList(self.norm() for _ in range(self.depth))
        self.grus = nn.ModuleList(_GRUCell(self.dim) for _ in range(self.depth))

    def forward(self, atomic_numbers: Tensor, neighbors: Tensor, distances: Tensor,
                neighbor_mask: Tensor, crystal_atoms: Tensor, crystal_mask: Tensor,
                batch: Tensor) -> tuple[Tensor, Tensor]:
        """(prediction [C, T], embedding [C, dim]); inputs as docs/design.md §5."""
        h = F.relu(self.pre(self.atom_features(atomic_numbers, neighbor_mask)))
        e = self.expansion(distances)
        g = h
        for conv, norm, gru in zip(self.convs, self.norms, self.grus, strict=True):
            m = F.relu(norm(conv(h, e, neighbors, neighbor_mask)))
            g = gru(m, g)
            h = g + h if self.deeper else g
        return self.readout(pool(h, crystal_atoms, crystal_mask, self.pool_kind), crystal_mask)


class _NNConv(nn.Module):
    """PyG's ``NNConv(dim, dim, Sequential(Linear(G, E), ReLU, Linear(E, dim²)), aggr="mean")``
    in the padded layout; names as PyG 2.x (``nn.0``, ``nn.2``, ``lin`` the root weight,
    ``bias``)."""

    def __init__(self, dim: int, gaussians: int, edge_hidden: int) -> None:
        super().__init__()
        self.dim = dim
        self.nn = nn.Sequential(nn.Linear(gaussians, edge_hidden), nn.ReLU(),
                                nn.Linear(edge_hidden, dim * dim))
        self.lin = nn.Linear(dim, dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, h: Tensor, e: Tensor, neighbors: Tensor, mask: Tensor) -> Tensor:
        theta = self.nn(e).unflatten(-1, (self.dim, self.dim))  # [N, K, D, D]
        h_j = h.index_select(0, neighbors.reshape(-1)).unflatten(0, neighbors.shape)
        msg = (h_j.unsqueeze(-2) @ theta).squeeze(-2)  # [N, K, D]
        return masked_mean(msg, mask) + self.lin(h) + self.bias


class _GRUCell(nn.Module):
    """One step of ``torch.nn.GRU(dim, dim)`` (gates r, z, n; same parameter names and
    layout), written out so that every exporter sees plain matrix products."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        k = 1.0 / math.sqrt(dim)
        self.weight_ih_l0 = nn.Parameter(torch.empty(3 * dim, dim).uniform_(-k, k))
        self.weight_hh_l0 = nn.Parameter(torch.empty(3 * dim, dim).uniform_(-k, k))
        self.bias_ih_l0 = nn.Parameter(torch.empty(3 * dim).uniform_(-k, k))
        self.bias_hh_l0 = nn.Parameter(torch.empty(3 * dim).uniform_(-k, k))

    def forward(self, x: Tensor, state: Tensor) -> Tensor:
        gi = F.linear(x, self.weight_ih_l0, self.bias_ih_l0)
        gh = F.linear(state, self.weight_hh_l0, self.bias_hh_l0)
        i_r, i_z, i_n = gi.chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return (1.0 - z) * n + z * state
