"""MEGNet (Chen et al. 2019), MatDeepLearn's form, and DeeperMEGNet
(`deepergat.nn.matdeeplearn`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .graphmodel import pool
from .matdeeplearn import MatDeepLearnNet, masked_mean

__all__ = ["MEGNet"]


class MEGNet(MatDeepLearnNet):
    """MatErials Graph Network (Chen et al. 2019), MatDeepLearn's form: edge, atom and crystal
    states updated in turn by MLP blocks, each with a residual.

    Per layer: embeddings x̃, ẽ, ũ = ReLU(Lin(ReLU(Lin(·)))) of the states (layer 0: of the
    pre-FC atoms, the Gaussian features and a zero crystal state of width ``global_dim``);
    e' = φ_e([x̃_i ‖ x̃_j ‖ ẽ_ij ‖ ũ]), v_i = mean_j e'_ij, x' = φ_x([x̃_i ‖ v_i ‖ ũ]),
    u' = φ_u([mean_crystal v ‖ mean_crystal x' ‖ ũ]); φ = ``mlp_layers`` × (Linear, ReLU, BN).
    States: layer 0 x = x' + x̃ (e, u alike), later x = x' + x. Deeper: DGN for every BN,
    residuals inside φ, and x = x' + 2x (the paper's code adds the skip to a state update that
    already ends in one; ``identity="single"``: x = x' + x). Readout: [mean x ‖ mean of the
    atoms' mean e ‖ u] → post layers.

    Parameters: 47,201 + 192,400 per layer (Deeper: 209,200) at the defaults.

    Args:
        mlp_layers: layers of each φ block.
        global_dim: width of the starting crystal state.
        **settings: the frame's (`MatDeepLearnNet`; ``pool`` must be ``"mean"``: the crystal
            state is a mean) and the shared ones (`GraphModel`).
    """

    arch = "megnet"
    own_residual = True
    pooled_dims = 3

    def __init__(self, *, mlp_layers: int = 2, global_dim: int = 3, **settings: Any) -> None:
        if settings.get("pool", "mean") != "mean":
            raise ValueError("MEGNet pools by the mean (its crystal state is a mean)")
        super().__init__(**settings)
        self.global_dim = global_dim
        dim, layers, deeper = self.dim, self.depth, self.deeper

        def embed(width: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(width, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())

        g = self.gaussians
        self.embed_e = nn.ModuleList(embed(g if i == 0 else dim) for i in range(layers))
        self.embed_x = nn.ModuleList(embed(dim) for _ in range(layers))
        self.embed_u = nn.ModuleList(embed(global_dim if i == 0 else dim) for i in range(layers))
        self.edge_mlps = nn.ModuleList(
            _Block(4 * dim, dim, mlp_layers, deeper, self.norm) for _ in range(layers))
        self.node_mlps = nn.ModuleList(
            _Block(3 * dim, dim, mlp_layers, deeper, self.norm) for _ in range(layers))
        self.global_mlps = nn.ModuleList(
            _Block(3 * dim, dim, mlp_layers, deeper, self.norm) for _ in range(layers))

    def forward(self, atomic_numbers: Tensor, neighbors: Tensor, distances: Tensor,
                neighbor_mask: Tensor, crystal_atoms: Tensor, crystal_mask: Tensor,
                batch: Tensor) -> tuple[Tensor, Tensor]:
        """(prediction [C, T], embedding [C, 3·dim]); inputs as docs/design.md §5."""
        x = F.relu(self.pre(self.atom_features(atomic_numbers, neighbor_mask)))
        e = self.expansion(distances)  # [N, K, G]
        dtype = x.dtype
        u = torch.zeros_like(crystal_mask[:, :1], dtype=dtype).expand(-1, self.global_dim)
        mask = neighbor_mask
        k = neighbors.shape[1]
        for i in range(len(self.edge_mlps)):
            xt, et, ut = self.embed_x[i](x), self.embed_e[i](e), self.embed_u[i](u)
            xj = xt.index_select(0, neighbors.reshape(-1)).unflatten(0, neighbors.shape)
            ub = ut[batch]  # [N, D]: each atom's crystal state
            e_in = torch.cat([xt.unsqueeze(1).expand(-1, k, -1), xj, et,
                              ub.unsqueeze(1).expand(-1, k, -1)], dim=-1)
            e_new = self.edge_mlps[i](e_in, mask)  # [N, K, D]
            v = masked_mean(e_new, mask)  # [N, D]
            x_new = self.node_mlps[i](torch.cat([xt, v, ub], dim=-1), None)
            u_in = torch.cat([pool(v, crystal_atoms, crystal_mask, "mean"),
                              pool(x_new, crystal_atoms, crystal_mask, "mean"), ut], dim=-1)
            u_new = self.global_mlps[i](u_in, None)
            if i == 0:
                x, e, u = x_new + xt, e_new + et, u_new + ut
            elif self.outer_skip:
                x, e, u = x_new + 2 * x, e_new + 2 * e, u_new + 2 * u
            else:
                x, e, u = x_new + x, e_new + e, u_new + u
        pooled = torch.cat([pool(x, crystal_atoms, crystal_mask, "mean"),
                            pool(masked_mean(e, mask), crystal_atoms, crystal_mask, "mean"), u],
                           dim=-1)
        return self.readout(pooled, crystal_mask)


class _Block(nn.Module):
    """MEGNet's φ: ``layers`` × (Linear, ReLU, ``norm()``); Deeper: DGN norms and a residual from
    the second layer on. Edge inputs [N, K, F] are normalized over their real slots (``mask``),
    atom [N, F] and crystal [C, F] inputs over all rows (``mask`` None)."""

    def __init__(self, width: int, dim: int, layers: int, deeper: bool,
                 norm: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.deeper = deeper
        self.lins = nn.ModuleList(nn.Linear(width if i == 0 else dim, dim) for i in range(layers))
        self.norms = nn.ModuleList(norm() for _ in range(layers))

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        for i, (lin, norm) in enumerate(zip(self.lins, self.norms, strict=True)):
            y = F.relu(lin(x))
            y = norm(y) if mask is None else _rows(norm, y, mask)
            x = y + x if self.deeper and i > 0 else y
        return x


def _rows(module: nn.Module, x: Tensor, mask: Tensor) -> Tensor:
    """``module`` (a row-wise map in eval mode, a BatchNorm-like one in training) on the rows
    of x [..., F] where ``mask`` [...] is true: training statistics cover real rows only."""
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    if not module.training:
        return module(flat).reshape(shape)
    idx = mask.reshape(-1).nonzero().squeeze(1)
    return flat.index_copy(0, idx, module(flat.index_select(0, idx))).reshape(shape)
