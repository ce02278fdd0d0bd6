"""The paper's baselines — CGCNN, SchNet, MPNN, MEGNet — and their Deeper variants, in the padded
layout of docs/design.md §5 (DeeperGATGNN and GATGNN live in `deepergat.model`).

Each follows the MatDeepLearn configuration the paper benchmarked (its ``*_demo`` entries): one
dense layer from the 114 atom features (100 one-hot Z, 14 degree classes) to ``dim`` with ReLU,
``layers`` graph convolutions each followed by BatchNorm, a pooling over each crystal's atoms,
``post_layers`` dense layers with ReLU and a linear head. ``deeper=True`` is the paper's
"Deeper" variant: every BatchNorm becomes a DiffGroupNorm(dim, 10) and each layer's input is
added to its output (h ← norm(conv(h)) + h). Where the base layer already ends in a residual
(CGConv, SchNet's interaction, MEGNet's state updates) the identity path is then counted twice,
as in the paper's code: the node states grow like 2^layers (docs/design.md §5). ``identity=
"single"`` counts it once: the base layer's own residual is the skip, which DiffGroupNorm (unlike
BatchNorm) keeps, h ← DGN(h + a) (MEGNet: x ← x' + x).

One deliberate difference from MatDeepLearn: every convolution aggregates over each atom's own
neighbor list (the K slots of its row), never over the atoms that list it. MatDeepLearn's
CGConv, SchNet and NNConv aggregate over incoming edges; in the padded layout that would need a
scatter reduction, which the exported files avoid. The two agree only on symmetric graphs
(minimum-image graphs of cells with at most ``max_neighbors`` + 1 atoms); most periodic
nearest-K graphs are not symmetric (docs/design.md §5, "The paper's other architectures").

Parameter counts equal the paper's where the paper counted only modules the forward pass uses;
`deepergat.architectures.PAPER_UNUSED` lists the difference (tests/test_nets.py).

Shapes use N atoms, K neighbor slots (slot 0 the self loop), C crystals, A atom slots per
crystal, D = ``dim``.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from deepergat.contract import (
    DEFAULT_CUTOFF,
    DEFAULT_GRAPH,
    DEFAULT_MAX_NEIGHBORS,
    GraphConstruction,
)
from deepergat.graphs import check_graph

from .graphmodel import GraphModel, Pool, check_pool, pool
from .layers import BatchNorm, DiffGroupNorm

__all__ = ["CGCNN", "IDENTITIES", "MPNN", "NETS", "Identity", "MEGNet", "SchNet"]

#: How a Deeper variant whose base layer ends in a residual counts the identity: ``doubled``
#: (the paper's code: its skip is added to that residual) or ``single`` (the residual is the skip).
Identity = Literal["doubled", "single"]
IDENTITIES: tuple[str, ...] = get_args(Identity)

# PyG's shifted softplus subtracts ln 2 rounded to float32.
_LN2_F32 = float(torch.log(torch.tensor(2.0, dtype=torch.float32)))


def _rows(module: nn.Module, x: Tensor, mask: Tensor) -> Tensor:
    """``module`` (a row-wise map in eval mode, a BatchNorm-like one in training) on the rows
    of x [..., F] where ``mask`` [...] is true: training statistics cover real rows only."""
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    if not module.training:
        return module(flat).reshape(shape)
    idx = mask.reshape(-1).nonzero().squeeze(1)
    return flat.index_copy(0, idx, module(flat.index_select(0, idx))).reshape(shape)


def _norm(dim: int, deeper: bool, groups: int) -> nn.Module:
    return DiffGroupNorm(dim, groups) if deeper else BatchNorm(dim)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """[N, D] mean over the K slots of [N, K, D] where ``mask`` [N, K] is true."""
    m = mask.to(values.dtype).unsqueeze(-1)
    return (values * m).sum(1) / m.sum(1)


class _MatDeepLearnNet(GraphModel):
    """Shared frame: pre-FC with ReLU, the layers (subclass), pooling, post-FC with ReLU, head."""

    arch: str = ""
    #: the base layer ends in a residual of its own (h + message)
    own_residual: bool = False

    def __init__(
        self,
        *,
        dim: int,
        hidden: int,
        layers: int,
        post_layers: int,
        deeper: bool,
        groups: int,
        pool: Pool,
        gaussians: int,
        gaussian_width: float,
        cutoff: float,
        max_neighbors: int,
        graph: GraphConstruction,
        distance_scale: float | None,
        targets: int,
        per_atom: bool,
        target_mean: list[float] | None,
        target_std: list[float] | None,
        pooled_width: int | None = None,
        extra: dict[str, Any] | None = None,
        identity: Identity = "doubled",
    ) -> None:
        super().__init__(
            gaussians=gaussians, gaussian_width=gaussian_width, cutoff=cutoff,
            max_neighbors=max_neighbors, distance_scale=distance_scale, targets=targets,
            per_atom=per_atom, target_mean=target_mean, target_std=target_std,
        )
        if int(layers) < 1:
            raise ValueError(f"layers must be at least 1, got {layers}")
        if identity not in IDENTITIES:
            raise ValueError(f"identity {identity!r} is not one of {', '.join(IDENTITIES)}")
        if identity == "single" and not (deeper and self.own_residual):
            raise ValueError(
                "identity='single' applies to the Deeper variants of CGCNN, SchNet and MEGNet "
                "(layers that end in a residual of their own)")
        # written only when it differs from the paper's form, so that files written before
        # the choice existed and new ones of the same model have equal settings (ensembles)
        if identity != "doubled":
            extra = {**(extra or {}), "identity": identity}
        self.config = {
            "arch": self.arch, "deeper": bool(deeper), "dim": dim, "hidden": hidden,
            "layers": layers, "post_layers": post_layers, "groups": groups,
            "pool": check_pool(pool), **(extra or {}), "gaussians": gaussians,
            "gaussian_width": gaussian_width, "cutoff": cutoff, "max_neighbors": max_neighbors,
            "graph": check_graph(graph),
            "distance_scale": None if distance_scale is None else float(distance_scale),
            "targets": targets, "per_atom": per_atom,
        }
        self.deeper = bool(deeper)
        #: add the layer's input to its normalized output (the Deeper skip) on top of the
        #: base layer's own residual, if it has one
        self.outer_skip = self.deeper and identity == "doubled"
        self.pool_kind: Pool = pool
        self.pre = nn.Linear(self.atom_feature_size, dim)
        width = pooled_width or dim
        post = []
        for _ in range(post_layers):
            post.append(nn.Linear(width, hidden))
            width = hidden
        self.post = nn.ModuleList(post)
        self.head = nn.Linear(width, targets)

    def readout(self, pooled: Tensor, crystal_mask: Tensor) -> tuple[Tensor, Tensor]:
        """(prediction [C, T], embedding = the pooled vector [C, D'])."""
        h = pooled
        for lin in self.post:
            h = F.relu(lin(h))
        return self.scale_output(self.head(h), crystal_mask), pooled


class CGCNN(_MatDeepLearnNet):
    """Crystal graph convolutional network (Xie & Grossman 2018), MatDeepLearn's form.

    Layer: z_ij = [h_i ‖ h_j ‖ e_ij], a_i = mean_j σ(z W_f + b_f) ⊙ softplus(z W_s + b_s)
    (PyG ``CGConv(dim, 50, aggr="mean")``), then h ← BN(h + a); Deeper: h ← DGN(h + a) + h
    (``identity="single"``: h ← DGN(h + a)).
    Mean pooling. Defaults: the paper's CGCNN (dim 100, hidden 150, 4 layers, 3 post layers).

    Parameters: 72,101 + 50,400 per layer (Deeper: 53,200 per layer) at the defaults.
    """

    arch = "cgcnn"
    own_residual = True

    def __init__(self, *, dim: int = 100, hidden: int = 150, layers: int = 4,
                 post_layers: int = 3, deeper: bool = False, groups: int = 10,
                 pool: Pool = "mean", gaussians: int = 50, gaussian_width: float = 0.2,
                 cutoff: float = DEFAULT_CUTOFF, max_neighbors: int = DEFAULT_MAX_NEIGHBORS,
                 graph: GraphConstruction = DEFAULT_GRAPH, distance_scale: float | None = None,
                 targets: int = 1, per_atom: bool = False, target_mean: list[float] | None = None,
                 target_std: list[float] | None = None,
                 identity: Identity = "doubled") -> None:
        super().__init__(dim=dim, hidden=hidden, layers=layers, post_layers=post_layers,
                         deeper=deeper, groups=groups, pool=pool, gaussians=gaussians,
                         gaussian_width=gaussian_width, cutoff=cutoff,
                         max_neighbors=max_neighbors, graph=graph,
                         distance_scale=distance_scale, targets=targets, per_atom=per_atom,
                         identity=identity, target_mean=target_mean, target_std=target_std)
        width = 2 * dim + gaussians
        self.convs = nn.ModuleList(_CGConv(dim, width) for _ in range(layers))
        self.norms = nn.ModuleList(_norm(dim, deeper, groups) for _ in range(layers))

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
        return _masked_mean(torch.sigmoid(gate) * F.softplus(core), mask)


class SchNet(_MatDeepLearnNet):
    """SchNet (Schütt et al. 2018) on the given graph, MatDeepLearn's form: PyG's interaction
    block over the Gaussian features and Å distances.

    Layer: W_ij = Lin(ssp(Lin(e_ij))) · ½(cos(π d_ij / cutoff) + 1),
    v_i = Lin₂(Σ_j (h_j W₁) ⊙ W_ij), v ← Lin(ssp(v)), then h ← BN(h + v);
    Deeper: h ← DGN(h + v) + h (``identity="single"``: h ← DGN(h + v)).
    ssp(x) = softplus(x) − ln 2. Max pooling. Defaults: dim 100, hidden 100, 150 filters,
    4 layers, 3 post layers.

    Parameters: 41,901 + 70,700 per layer (Deeper: 73,500) at the defaults.
    """

    arch = "schnet"
    own_residual = True

    def __init__(self, *, dim: int = 100, hidden: int = 100, filters: int = 150,
                 layers: int = 4, post_layers: int = 3, deeper: bool = False, groups: int = 10,
                 pool: Pool = "max", gaussians: int = 50, gaussian_width: float = 0.2,
                 cutoff: float = DEFAULT_CUTOFF, max_neighbors: int = DEFAULT_MAX_NEIGHBORS,
                 graph: GraphConstruction = DEFAULT_GRAPH, distance_scale: float | None = None,
                 targets: int = 1, per_atom: bool = False, target_mean: list[float] | None = None,
                 target_std: list[float] | None = None,
                 identity: Identity = "doubled") -> None:
        super().__init__(dim=dim, hidden=hidden, layers=layers, post_layers=post_layers,
                         deeper=deeper, groups=groups, pool=pool, gaussians=gaussians,
                         gaussian_width=gaussian_width, cutoff=cutoff,
                         max_neighbors=max_neighbors, graph=graph,
                         distance_scale=distance_scale, targets=targets, per_atom=per_atom,
                         identity=identity, target_mean=target_mean, target_std=target_std,
                         extra={"filters": filters})
        self.convs = nn.ModuleList(_Interaction(dim, gaussians, filters) for _ in range(layers))
        self.norms = nn.ModuleList(_norm(dim, deeper, groups) for _ in range(layers))

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


class MPNN(_MatDeepLearnNet):
    """Message passing with edge networks (Gilmer et al. 2017), MatDeepLearn's form.

    Layer: Θ_ij = reshape(Lin(ReLU(Lin(e_ij))), [D, D]) (PyG ``NNConv(dim, dim, nn,
    aggr="mean")``), n_i = mean_j h_j Θ_ij + h_i R + b, m = ReLU(BN(n)), g ← GRU(m, g) and
    h ← g; Deeper: DGN instead of BN and h ← g + h (the GRU state g itself takes no skip).
    Mean pooling. Defaults: dim 100, hidden 100, 4 layers, 3 post layers. Each edge carries a
    D × D matrix: memory grows as E·D² (this is the paper's largest model per layer).

    Parameters: 41,901 + 1,086,000 per layer (Deeper: 1,088,800) at the defaults.
    """

    arch = "mpnn"

    def __init__(self, *, dim: int = 100, hidden: int = 100, edge_hidden: int = 100,
                 layers: int = 4, post_layers: int = 3, deeper: bool = False, groups: int = 10,
                 pool: Pool = "mean", gaussians: int = 50, gaussian_width: float = 0.2,
                 cutoff: float = DEFAULT_CUTOFF, max_neighbors: int = DEFAULT_MAX_NEIGHBORS,
                 graph: GraphConstruction = DEFAULT_GRAPH, distance_scale: float | None = None,
                 targets: int = 1, per_atom: bool = False, target_mean: list[float] | None = None,
                 target_std: list[float] | None = None,
                 identity: Identity = "doubled") -> None:
        super().__init__(dim=dim, hidden=hidden, layers=layers, post_layers=post_layers,
                         deeper=deeper, groups=groups, pool=pool, gaussians=gaussians,
                         gaussian_width=gaussian_width, cutoff=cutoff,
                         max_neighbors=max_neighbors, graph=graph,
                         distance_scale=distance_scale, targets=targets, per_atom=per_atom,
                         identity=identity, target_mean=target_mean, target_std=target_std,
                         extra={"edge_hidden": edge_hidden})
        self.convs = nn.ModuleList(_NNConv(dim, gaussians, edge_hidden) for _ in range(layers))
        self.norms = nn.ModuleList(_norm(dim, deeper, groups) for _ in range(layers))
        self.grus = nn.ModuleList(_GRUCell(dim) for _ in range(layers))

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
        return _masked_mean(msg, mask) + self.lin(h) + self.bias


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


class MEGNet(_MatDeepLearnNet):
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
    """

    arch = "megnet"
    own_residual = True

    def __init__(self, *, dim: int = 100, hidden: int = 100, layers: int = 4,
                 post_layers: int = 3, mlp_layers: int = 2, global_dim: int = 3,
                 deeper: bool = False, groups: int = 10, pool: Pool = "mean",
                 gaussians: int = 50, gaussian_width: float = 0.2,
                 cutoff: float = DEFAULT_CUTOFF, max_neighbors: int = DEFAULT_MAX_NEIGHBORS,
                 graph: GraphConstruction = DEFAULT_GRAPH,
                 distance_scale: float | None = None, targets: int = 1, per_atom: bool = False,
                 target_mean: list[float] | None = None,
                 target_std: list[float] | None = None,
                 identity: Identity = "doubled") -> None:
        if pool != "mean":
            raise ValueError("MEGNet pools by the mean (its crystal state is a mean)")
        super().__init__(dim=dim, hidden=hidden, layers=layers, post_layers=post_layers,
                         deeper=deeper, groups=groups, pool=pool, gaussians=gaussians,
                         gaussian_width=gaussian_width, cutoff=cutoff,
                         max_neighbors=max_neighbors, graph=graph,
                         distance_scale=distance_scale, targets=targets, per_atom=per_atom,
                         identity=identity, target_mean=target_mean, target_std=target_std,
                         pooled_width=3 * dim,
                         extra={"mlp_layers": mlp_layers, "global_dim": global_dim})
        self.global_dim = global_dim

        def embed(width: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(width, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())

        self.embed_e = nn.ModuleList(embed(gaussians if i == 0 else dim) for i in range(layers))
        self.embed_x = nn.ModuleList(embed(dim) for _ in range(layers))
        self.embed_u = nn.ModuleList(embed(global_dim if i == 0 else dim) for i in range(layers))
        self.edge_mlps = nn.ModuleList(
            _Block(4 * dim, dim, mlp_layers, deeper, groups) for _ in range(layers))
        self.node_mlps = nn.ModuleList(
            _Block(3 * dim, dim, mlp_layers, deeper, groups) for _ in range(layers))
        self.global_mlps = nn.ModuleList(
            _Block(3 * dim, dim, mlp_layers, deeper, groups) for _ in range(layers))

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
            v = _masked_mean(e_new, mask)  # [N, D]
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
                            pool(_masked_mean(e, mask), crystal_atoms, crystal_mask, "mean"), u],
                           dim=-1)
        return self.readout(pooled, crystal_mask)


class _Block(nn.Module):
    """MEGNet's φ: ``layers`` × (Linear, ReLU, norm); Deeper: DGN norms and a residual from
    the second layer on. Edge inputs [N, K, F] are normalized over their real slots (``mask``),
    atom [N, F] and crystal [C, F] inputs over all rows (``mask`` None)."""

    def __init__(self, width: int, dim: int, layers: int, deeper: bool, groups: int) -> None:
        super().__init__()
        self.deeper = deeper
        self.lins = nn.ModuleList(nn.Linear(width if i == 0 else dim, dim) for i in range(layers))
        self.norms = nn.ModuleList(_norm(dim, deeper, groups) for _ in range(layers))

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        for i, (lin, norm) in enumerate(zip(self.lins, self.norms, strict=True)):
            y = F.relu(lin(x))
            y = norm(y) if mask is None else _rows(norm, y, mask)
            x = y + x if self.deeper and i > 0 else y
        return x


#: The classes of this module by ``arch`` value.
NETS: dict[str, type[_MatDeepLearnNet]] = {
    "cgcnn": CGCNN, "schnet": SchNet, "mpnn": MPNN, "megnet": MEGNet}
