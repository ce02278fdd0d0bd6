"""SchNet (Schütt et al. 2018), MatDeepLearn's form, and DeeperSchNet
(`deepergat.nn.matdeeplearn`)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .graphmodel import Pool, pool
from .matdeeplearn import MatDeepLearnNet

__all__ = ["SchNet"]

# PyG's shifted softplus subtracts ln 2 rounded to float32.
_LN2_F32 = float(torch.log(torch.tensor(2.0, dtype=torch.float32)))


class SchNet(MatDeepLearnNet):
    """SchNet (Schütt et al. 2018) on the given graph, MatDeepLearn's form: PyG's interaction
    block over the Gaussian features and Å distances.

    Layer: W_ij = Lin(ssp(Lin(e_ij))) · ½(cos(π d_ij / cutoff) + 1),
    v_i = Lin₂(Σ_j (h_j W₁) ⊙ W_ij), v ← Lin(ssp(v)), then h ← BN(h + v);
    Deeper: h ← DGN(h + v) + h (``identity="single"``: h ← DGN(h + v)).
    ssp(x) = softplus(x) − ln 2. Max pooling. Defaults: dim 100, hidden 100, 150 filters,
    4 layers, 3 post layers.

    Parameters: 41,901 + 70,700 per layer (Deeper: 73,500) at the defaults.

    Args:
        pool: SchNet pools by the max.
        filters: width of the continuous filters.
        **settings: the frame's (`MatDeepLearnNet`) and the shared ones (`GraphModel`).
    """

    arch = "schnet"
    own_residual = True

    def __init__(self, *, pool: Pool = "max", filters: int = 150, **settings: Any) -> None:
        super().__init__(pool=pool, **settings)
        self.convs = nn.ModuleList(_Interaction(self.dim, self.gaussians, filters)
                                   for _ in range(self.depth))
        self.norms = nn.ModuleList(self.norm() for _ in range(self.depth))

    def forward(self, atomic_numbers: Tensor, neighbors: Tensor, distances: Tensor,
                neighbor_mask: Tensor, crystal_atoms: Tensor, crystal_mask: Tensor,
                batch: Tensor) -> tuple[Tensor, Tensor]:
        """(prediction [C, T], embedding [C, dim]); inputs as docs/design.md §5."""
        h = F.relu(self.pre(self.atom_features(atomic_numbers, neighbor_mask)))
        e = self.expansion(distances)
        d = distances.to(e.dtype)
        envelope = 0.5 * (torch.cos(d * (math.pi / self.cutoff)) + 1.0)  # [N, K]
        envelope = envelope * neighbor_mask.to(e.dtype)  # padded slots add nothing
        for conv, norm in zip(self.convs, self.norms, strict=True):
            out = norm(h + conv(h, e, envelope, neighbors))
            h = out + h if self.outer_skip else out
        return self.readout(pool(h, crystal_atoms, crystal_mask, self.pool_kind), crystal_mask)


class _Interaction(nn.Module):
    """PyG's SchNet ``InteractionBlock(dim, gaussians, filters, cutoff)`` in the padded layout,
    parameter names as PyG's (``mlp.0``, ``mlp.2``, ``conv.lin1``, ``conv.lin2``, ``lin``)."""

    def __init__(self, dim: int, gaussians: int, filters: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(gaussians, filters), nn.Identity(),
                                 nn.Linear(filters, filters))
        self.conv = nn.Module()
        self.conv.lin1 = nn.Linear(dim, filters, bias=False)
        self.conv.lin2 = nn.Linear(filters, dim)
        self.lin = nn.Linear(dim, dim)

    def forward(self, h: Tensor, e: Tensor, envelope: Tensor, neighbors: Tensor) -> Tensor:
        w = self.mlp[2](F.softplus(self.mlp[0](e)) - _LN2_F32) * envelope.unsqueeze(-1)
        v = self.conv.lin1(h)  # [N, F]
        v_j = v.index_select(0, neighbors.reshape(-1)).unflatten(0, neighbors.shape)
        v = self.conv.lin2((v_j * w).sum(1))  # padded slots: w = 0
        return self.lin(F.softplus(v) - _LN2_F32)
