"""The edge-list (PyTorch Geometric ``MessagePassing``) forms of every architecture: the
references the padded models must equal (docs/design.md: "every fast path has a plain reference
path"). DeeperGATGNN/GATGNN below; CGCNN, SchNet, MPNN and MEGNet in `EdgeListNet`, built from
PyG's ``CGConv``, SchNet ``InteractionBlock``, ``NNConv``, ``torch.nn.GRU`` and ``scatter``.

It follows the paper's reference implementation (AGATConv as a ``MessagePassing`` over an edge
list, PyG's ``DiffGroupNorm``, ``softmax`` by index and ``global_add_pool``), and has the same
parameter names as `deepergat.nn.deepergatgnn.DeeperGATGNN`, so ``load_state_dict`` moves
weights between the two. Used by tests and benchmarks only; it scatters with atomics and is not
exportable.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch_geometric.nn import MessagePassing, global_add_pool
from torch_geometric.nn.norm import DiffGroupNorm
from torch_geometric.utils import softmax

from deepergat.contract import COMPOSITION_SIZE, MAX_Z

from .deepergatgnn import DeeperGATGNN
from .registry import build_single

__all__ = ["EdgeListAGATConv", "EdgeListDeeperGATGNN", "EdgeListNet", "to_edge_list"]


def to_edge_list(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """Padded model inputs → edge list.

    Returns:
        dict with ``atomic_numbers`` [N], ``edge_index`` [2, E] (row 0 neighbor j = source,
        row 1 center i = target, PyG's flow), ``distance`` [E] Å, ``degree`` [N] (self loop
        included), ``batch`` [N].
    """
    mask = inputs["neighbor_mask"]
    n, k = mask.shape
    center = torch.arange(n).unsqueeze(1).expand(n, k)[mask]
    neighbor = inputs["neighbors"][mask]
    return {
        "atomic_numbers": inputs["atomic_numbers"],
        "edge_index": torch.stack([neighbor, center]),
        "distance": inputs["distances"][mask],
        "degree": mask.sum(1),
        "batch": inputs["batch"],
    }


class EdgeListAGATConv(MessagePassing):
    """AGAT layer as the reference writes it: messages per edge, softmax by target index."""

    def __init__(self, dim: int, heads: int = 4) -> None:
        super().__init__(aggr="add", node_dim=0)
        self.dim = dim
        self.heads = heads
        self.W = nn.Parameter(torch.empty(2 * dim, heads * dim))
        self.att = nn.Parameter(torch.empty(1, heads, 2 * dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.bn = nn.BatchNorm1d(heads)
        nn.init.xavier_uniform_(self.W)
        nn.init.xavier_uniform_(self.att)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        out = self.propagate(edge_index, x=x, edge_attr=edge_attr)  # [N, H, D]
        return out.mean(1) + self.bias

    def message(self, edge_index_i: Tensor, x_i: Tensor, x_j: Tensor, size_i: int | None,
                edge_attr: Tensor) -> Tensor:
        h_i = F.softplus(torch.cat([x_i, edge_attr], dim=-1) @ self.W)
        h_j = F.softplus(torch.cat([x_j, edge_attr], dim=-1) @ self.W)
        h_i = h_i.view(-1, self.heads, self.dim)
        h_j = h_j.view(-1, self.heads, self.dim)
        alpha = F.softplus((torch.cat([h_i, h_j], dim=-1) * self.att).sum(-1))
        alpha = F.softplus(self.bn(alpha))
        alpha = softmax(alpha, edge_index_i, num_nodes=size_i)
        return h_j * alpha.unsqueeze(-1)


class EdgeListDeeperGATGNN(nn.Module):
    """DeeperGATGNN over an edge list; same constructor and parameter names as the padded model.

    ``forward(inputs)`` takes the padded inputs dict (converted with `to_edge_list`) and returns
    (prediction [C, T], embedding [C, D]).
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__()
        padded = DeeperGATGNN(**kwargs)  # type: ignore[arg-type]
        cfg = padded.config
        self.config = cfg
        dim, layers = cfg["dim"], cfg["layers"]
        # Share the buffers and the non-AGAT modules' definitions with the padded model.
        self.register_buffer("element_table", padded.element_table)
        self.register_buffer("degree_classes", padded.degree_classes)
        self.register_buffer("composition_index", padded.composition_index)
        self.register_buffer("max_neighbors", padded.max_neighbors)
        self.register_buffer("target_mean", padded.target_mean)
        self.register_buffer("target_std", padded.target_std)
        self.expansion = padded.expansion
        self.node_embedding = padded.node_embedding
        self.edge_embedding = padded.edge_embedding
        self.convs = nn.ModuleList(EdgeListAGATConv(dim, cfg["heads"]) for _ in range(layers))
        self.norms = nn.ModuleList(
            DiffGroupNorm(dim, cfg["groups"]) if cfg["dgn"]
            else nn.BatchNorm1d(dim) if cfg.get("batch_norm") else nn.Identity()
            for _ in range(layers)
        )
        self.global_attention = padded.global_attention
        self.head = padded.head

    def forward(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        g = to_edge_list(inputs)
        cfg = self.config
        slope = cfg["negative_slope"]
        z = g["atomic_numbers"]
        degree = g["degree"].clamp(max=self.degree_classes.shape[0] - 1)
        dtype = self.element_table.dtype
        atom = torch.cat(
            [F.one_hot((z - 1).clamp(0, MAX_Z - 1), MAX_Z).to(dtype),
             F.one_hot(degree, self.degree_classes.shape[0]).to(dtype)], dim=1
        )
        x = F.leaky_relu(self.node_embedding(atom), slope)
        e = F.leaky_relu(self.edge_embedding(self.expansion(g["distance"])), slope)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = norm(conv(x, g["edge_index"], e))
            x = h + x if cfg["skip"] else h
        batch = g["batch"]
        c = inputs["crystal_mask"].shape[0]
        counts = torch.zeros(c, COMPOSITION_SIZE, dtype=dtype).index_add_(
            0, batch, F.one_hot(z.clamp(0, COMPOSITION_SIZE - 1), COMPOSITION_SIZE).to(dtype)
        )
        comp = counts / counts.sum(1, keepdim=True)
        ga = self.global_attention
        hid = F.softplus(ga.lin1(torch.cat([x, comp[batch]], dim=-1)))
        logit = ga.out(F.softplus(ga.lin2(hid)))
        w = softmax(logit, batch, num_nodes=len(batch))
        x = x * w
        embedding = global_add_pool(x, batch, size=c)
        prediction = self.head(embedding) * self.target_std + self.target_mean
        if cfg["per_atom"]:
            prediction = prediction * torch.bincount(batch, minlength=c).to(dtype).unsqueeze(1)
        return prediction, embedding


class EdgeListNet(nn.Module):
    """CGCNN, SchNet, MPNN or MEGNet (`deepergat.nn.registry.NETS`) over an edge list, with
    PyG's layers; same constructor-argument dict and parameter names as the padded model.

    ``forward(inputs)`` takes the padded inputs dict and returns (prediction [C, T],
    embedding [C, D']). SchNet's ``InteractionBlock`` also lists its filter network under
    ``conv.nn``; `load_padded` fills those aliases.
    """

    def __init__(self, config: dict[str, object]) -> None:
        from torch_geometric.nn import CGConv, NNConv
        from torch_geometric.nn.models.schnet import InteractionBlock

        super().__init__()
        padded = build_single(config)
        cfg = padded.config
        self.config = cfg
        self.arch = str(cfg["arch"])
        for name, buf in padded.named_buffers(recurse=False):
            self.register_buffer(name, buf)
        self.expansion = padded.expansion
        self.pre, self.post, self.head = padded.pre, padded.post, padded.head
        dim, layers, g = int(cfg["dim"]), int(cfg["layers"]), int(cfg["gaussians"])
        groups, deeper = int(cfg["groups"]), bool(cfg["deeper"])

        def norm() -> nn.Module:
            return DiffGroupNorm(dim, groups) if deeper else nn.BatchNorm1d(dim)

        if self.arch == "cgcnn":
            self.convs = nn.ModuleList(CGConv(dim, g, aggr="mean") for _ in range(layers))
        elif self.arch == "schnet":
            self.convs = nn.ModuleList(
                InteractionBlock(dim, g, int(cfg["filters"]), float(cfg["cutoff"]))
                for _ in range(layers))
        elif self.arch == "mpnn":
            e = int(cfg["edge_hidden"])
            self.convs = nn.ModuleList(
                NNConv(dim, dim, nn.Sequential(nn.Linear(g, e), nn.ReLU(),
                                               nn.Linear(e, dim * dim)), aggr="mean")
                for _ in range(layers))
            self.grus = nn.ModuleList(nn.GRU(dim, dim) for _ in range(layers))
        if self.arch == "megnet":
            for name in ("embed_e", "embed_x", "embed_u", "edge_mlps", "node_mlps",
                         "global_mlps"):
                setattr(self, name, getattr(padded, name))
            # the blocks' norms as PyG's DiffGroupNorm / BatchNorm1d over real rows
            for blocks in (self.edge_mlps, self.node_mlps, self.global_mlps):
                for block in blocks:
                    block.norms = nn.ModuleList(norm() for _ in block.norms)
        else:
            self.norms = nn.ModuleList(norm() for _ in range(layers))

    def load_padded(self, model: nn.Module) -> None:
        """Load a padded model's weights (SchNet's ``conv.nn`` aliases filled)."""
        state = dict(model.state_dict())
        if self.arch == "schnet":
            for key in list(state):
                if ".mlp." in key:
                    state[key.replace(".mlp.", ".conv.nn.")] = state[key]
        self.load_state_dict(state)

    def forward(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        from torch_geometric.utils import scatter

        g = to_edge_list(inputs)
        cfg = self.config
        z, batch, ei = g["atomic_numbers"], g["batch"], g["edge_index"]
        c = inputs["crystal_mask"].shape[0]
        dtype = self.element_table.dtype
        k = self.degree_classes.shape[0]
        atom = torch.cat(
            [F.one_hot((z - 1).clamp(0, MAX_Z - 1), MAX_Z).to(dtype),
             F.one_hot(g["degree"].clamp(max=k - 1), k).to(dtype)], dim=1)
        h = F.relu(self.pre(atom))
        e = self.expansion(g["distance"])  # [E, G]
        deeper = bool(cfg["deeper"])
        outer_skip = deeper and cfg.get("identity", "doubled") == "doubled"
        src, dst = ei[0], ei[1]  # neighbor j -> center i
        if self.arch == "megnet":
            x, u = h, torch.zeros(c, int(cfg["global_dim"]), dtype=dtype)
            for i in range(len(self.edge_mlps)):
                xt, et, ut = self.embed_x[i](x), self.embed_e[i](e), self.embed_u[i](u)
                e_new = self._mlp(self.edge_mlps[i],
                                  torch.cat([xt[dst], xt[src], et, ut[batch[dst]]], 1))
                v = scatter(e_new, dst, 0, dim_size=len(z), reduce="mean")
                x_new = self._mlp(self.node_mlps[i], torch.cat([xt, v, ut[batch]], 1))
                u_new = self._mlp(self.global_mlps[i], torch.cat([
                    scatter(v, batch, 0, dim_size=c, reduce="mean"),
                    scatter(x_new, batch, 0, dim_size=c, reduce="mean"), ut], 1))
                if i == 0:
                    x, e, u = x_new + xt, e_new + et, u_new + ut
                elif outer_skip:
                    x, e, u = x_new + 2 * x, e_new + 2 * e, u_new + 2 * u
                else:
                    x, e, u = x_new + x, e_new + e, u_new + u
            pooled = torch.cat([
                scatter(x, batch, 0, dim_size=c, reduce="mean"),
                scatter(scatter(e, dst, 0, dim_size=len(z), reduce="mean"), batch, 0,
                        dim_size=c, reduce="mean"), u], 1)
        else:
            hidden = h.unsqueeze(0)
            for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
                if self.arch == "cgcnn":
                    out = norm(conv(h, ei, e))  # CGConv adds h itself
                elif self.arch == "schnet":
                    out = norm(h + conv(h, ei, g["distance"].to(dtype), e))
                else:
                    m = F.relu(norm(conv(h, ei, e)))
                    out, hidden = self.grus[i](m.unsqueeze(0), hidden)
                    out = out.squeeze(0)
                h = out + h if outer_skip else out
            reduce = {"add": "sum", "mean": "mean", "max": "max"}[str(cfg["pool"])]
            pooled = scatter(h, batch, 0, dim_size=c, reduce=reduce)
        p = pooled
        for lin in self.post:
            p = F.relu(lin(p))
        prediction = self.head(p) * self.target_std + self.target_mean
        if cfg["per_atom"]:
            prediction = prediction * torch.bincount(batch, minlength=c).to(dtype).unsqueeze(1)
        return prediction, pooled

    @staticmethod
    def _mlp(block: nn.Module, x: Tensor) -> Tensor:
        for i, (lin, norm) in enumerate(zip(block.lins, block.norms, strict=True)):
            y = norm(F.relu(lin(x)))
            x = y + x if block.deeper and i > 0 else y
        return x
