"""CGCNN (Xie & Grossman 2018), MatDeepLearn's form, and DeeperCGCNN
(`deepergat.nn.matdeeplearn`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .graphmodel import pool
from .matdeeplearn import MatDeepLearnNet, masked_mean

__all__ = ["CGCNN"]


class CGCNN(MatDeepLearnNet):
    """Crystal graph convolutional network (Xie & Grossman 2018), MatDeepLearn's form.

    Layer: z_ij = [h_i ‖ h_j ‖ e_ij], a_i = mean_j σ(z W_f + b_f) ⊙ softplus(z W_s + b_s)
    (PyG ``CGConv(dim, 50, aggr="mean")``), then h ← BN(h + a); Deeper: h ← DGN(h + a) + h
    (``identity="single"``: h ← DGN(h + a)).
    Mean pooling. Defaults: the paper's CGCNN (dim 100, hidden 150, 4 layers, 3 post layers).

    Parameters: 72,101 + 50,400 per layer (Deeper: 53,200 per layer) at the defaults.

    Args:
        hidden: width of the post layers (the paper's CGCNN: 150).
        **settings: the frame's (`MatDeepLearnNet`) and the shared ones (`GraphModel`).
    """

    arch = "cgcnn"
    own_residual = True

    def __init__(self, *, hidden: int = 150, **settings: Any) -> None:
        super().__init__(hidden=hidden, **settings)
        width = 2 * self.dim + self.gaussians
        self.convs = nn.ModuleList(_CGConv(self.dim, width) for _ in range(self.depth))
        self.norms = nn.ModuleList(self.norm() for _ in range(self.depth))

    def forward(self, atomic_numbers: Tensor, neighbors: Tensor, distances: Tensor,
                neighbor_mask: Tensor, crystal_atoms: Tensor, crystal_mask: Tensor,
                batch: Tensor) -> tuple[Tensor, Tensor]:
        """(prediction [C, T], embedding [C, dim]); inputs as docs/design.md §5."""
        h = F.relu(self.pre(self.atom_features(atomic_numbers, neighbor_mask)))
        e = self.expansion(distances)  # [N, K, G]
        for conv, norm in zip(self.convs, self.norms, strict=True):
            out = norm(h + conv(h, e, neighbors, neighbor_mask))
            h = out + h if self.outer_skip else out
        return self.readout(pool(h, crystal_atoms, crystal_mask, self.pool_kind), crystal_mask)


class _CGConv(nn.Module):
    """The aggregated CGConv message a_i (without CGConv's own ``+ h_i``): parameters named as
    PyG's ``CGConv`` (``lin_f``, ``lin_s``: [2D + G] → D). The three parts of z W are computed
    apart — the node parts once per atom, gathered — never the [N, K, 2D + G] concatenation."""

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.dim = dim
        self.lin_f = nn.Linear(width, dim)
        self.lin_s = nn.Linear(width, dim)

    def forward(self, h: Tensor, e: Tensor, neighbors: Tensor, mask: Tensor) -> Tensor:
        d = self.dim
        w = torch.cat([self.lin_f.weight, self.lin_s.weight], 0)  # [2D, 2D + G]
        b = torch.cat([self.lin_f.bias, self.lin_s.bias], 0)
        own = h @ w[:, :d].T  # [N, 2D]
        other = h @ w[:, d:2 * d].T  # [N, 2D]
        other_j = other.index_select(0, neighbors.reshape(-1)).unflatten(0, neighbors.shape)
        z = own.unsqueeze(1) + other_j + e @ w[:, 2 * d:].T + b  # [N, K, 2D]
        gate, core = z[..., :d], z[..., d:]
        return masked_mean(torch.sigmoid(gate) * F.softplus(core), mask)
