"""The edge-list (PyTorch Geometric ``MessagePassing``) form of DeeperGATGNN: the reference the
padded model must equal (docs/design.md: "every fast path has a plain reference path").

It follows the paper's reference implementation (AGATConv as a ``MessagePassing`` over an edge
list, PyG's ``DiffGroupNorm``, ``softmax`` by index and ``global_add_pool``), and has the same
parameter names as `deepergat.model.DeeperGATGNN`, so ``load_state_dict`` moves weights between
the two. Used by tests and benchmarks only; it scatters with atomics and is not exportable.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch_geometric.nn import MessagePassing, global_add_pool
from torch_geometric.nn.norm import DiffGroupNorm
from torch_geometric.utils import softmax

from .model import COMPOSITION_SIZE, MAX_Z, DeeperGATGNN

__all__ = ["EdgeListAGATConv", "EdgeListDeeperGATGNN", "to_edge_list"]


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
            DiffGroupNorm(dim, cfg["groups"]) if cfg["dgn"] else nn.Identity()
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
