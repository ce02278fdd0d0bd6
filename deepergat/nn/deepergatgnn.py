"""DeeperGATGNN (Omee et al., Patterns 3, 100491, 2022) in the padded layout of docs/design.md §5,
and with ``dgn=False, skip=False, batch_norm=True`` the paper's GATGNN.

The model takes the bare graph and computes every feature
from registered buffers: one-hot Z and degree, the Gaussian distance expansion, the composition
vector and the target scaling. A checkpoint or an exported file is therefore the whole predictor.

Parameter count at the defaults (dim 64, heads 4, 50 Gaussians, max_neighbors 12, one target):

==================================  ==========================================
atom embedding 114 → 64              7,360 (100 one-hot Z + 14 degree classes)
edge embedding 50 → 64               3,264
global attention 172 → 64 → 64 → 1  15,297
head 64 → 1                          65
**fixed part**                       **25,986**
AGAT layer                           33,352 (W 32,768, att 512, bias 64, BN 8)
DiffGroupNorm(64, 10)                1,920 (lin 640, BatchNorm(640) 1,280)
**per layer**                        **35,272**
==================================  ==========================================

so 378,706 at 10 layers and 1,084,146 at 30. The reference port counts 384,466 / 1,089,906: the
same 114-wide atom input, the same AGAT + DiffGroupNorm per layer and the same 172→64→64→1 global
attention, but its global-attention module also builds 3 DiffGroupNorm(64, 10) it never calls
(3 × 1,920 = 5,760); 378,706 + 5,760 = 384,466 and 1,084,146 + 5,760 = 1,089,906.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from deepergat.contract import (
    COMPOSITION_SIZE,
    DEFAULT_CUTOFF,
    DEFAULT_GRAPH,
    DEFAULT_MAX_NEIGHBORS,
    GraphConstruction,
)

from .graphmodel import GraphModel
from .layers import AGATConv, BatchNorm, DiffGroupNorm, Form, GlobalAttention, check_form

__all__ = ["DeeperGATGNN"]


class DeeperGATGNN(GraphModel):
    """Deep augmented graph-attention network with DiffGroupNorm and skips.

    Args:
        dim: embedding width D.
        layers: number of AGAT layers (the paper uses 10-30).
        heads: attention heads per AGAT layer.
        dgn: DiffGroupNorm after each layer.
        skip: residual skip x ← x + x_prev after each layer.
        groups: DiffGroupNorm groups.
        negative_slope: LeakyReLU slope of the embeddings.
        agat_form: ``"rewritten"`` (x W_x + e W_e, and in eval mode DiffGroupNorm without its
            [N, G·D] tensor; default) or ``"direct"`` ([x ‖ e] W, BatchNorm over [N, G·D]),
            equal results; see `AGATConv` and `DiffGroupNorm`.
        batch_norm: BatchNorm1d after each layer instead (the paper's GATGNN; not with dgn).
        gaussians, gaussian_width, cutoff, max_neighbors, graph, distance_scale, targets,
            per_atom, target_mean, target_std: the shared settings (`GraphModel`).

    The shared settings stay in this signature, among the model's own: checkpoints of format 1
    (written before the other architectures existed) record the arguments in this order, and
    ``deepergat info`` prints them so; their defaults are `GraphModel`'s (checked when the
    class is made).

    ``layers=5, dgn=False, skip=False, batch_norm=True`` is the paper's GATGNN.

    Shapes:
        Inputs (docs/design.md §5): atomic_numbers [N] int64, neighbors [N, K] int64,
        distances [N, K] float32 Å, neighbor_mask [N, K] bool, crystal_atoms [C, A] int64,
        crystal_mask [C, A] bool, batch [N] int64. Outputs: (prediction [C, T] in the
        targets' units, embedding [C, D], the pooled crystal vector).
    """

    def __init__(
        self,
        *,
        dim: int = 64,
        layers: int = 10,
        heads: int = 4,
        gaussians: int = 50,
        gaussian_width: float = 0.2,
        cutoff: float = DEFAULT_CUTOFF,
        max_neighbors: int = DEFAULT_MAX_NEIGHBORS,
        graph: GraphConstruction = DEFAULT_GRAPH,
        distance_scale: float | None = None,
        dgn: bool = True,
        skip: bool = True,
        groups: int = 10,
        targets: int = 1,
        per_atom: bool = False,
        negative_slope: float = 0.2,
        agat_form: Form = "rewritten",
        batch_norm: bool = False,
        target_mean: list[float] | None = None,
        target_std: list[float] | None = None,
    ) -> None:
        super().__init__(
            gaussians=gaussians, gaussian_width=gaussian_width, cutoff=cutoff,
            max_neighbors=max_neighbors, graph=graph, distance_scale=distance_scale,
            targets=targets, per_atom=per_atom, target_mean=target_mean, target_std=target_std,
        )
        if dgn and batch_norm:
            raise ValueError("dgn and batch_norm exclude each other: one norm per layer")
        self.skip = skip
        self.negative_slope = negative_slope
        self.node_embedding = nn.Linear(self.atom_feature_size, dim)
        self.edge_embedding = nn.Linear(gaussians, dim)
        self.convs = nn.ModuleList(AGATConv(dim, heads, form=agat_form) for _ in range(layers))
        self.norms = nn.ModuleList(
            DiffGroupNorm(dim, groups, form=agat_form) if dgn
            else BatchNorm(dim) if batch_norm else nn.Identity()
            for _ in range(layers)
        )
        self.global_attention = GlobalAttention(dim, COMPOSITION_SIZE)
        self.head = nn.Linear(dim, targets)

    # ------------------------------------------------------------------ helpers

    def set_agat_form(self, form: Form) -> None:
        """Switch every layer between the rewritten and the direct form (results are equal):
        the AGAT projection and the eval-mode DiffGroupNorm (see their classes)."""
        form = check_form(form)
        for conv in self.convs:
            conv.form = form
        for norm in self.norms:
            norm.form = form
        self.config["agat_form"] = form

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        atomic_numbers: Tensor,
        neighbors: Tensor,
        distances: Tensor,
        neighbor_mask: Tensor,
        crystal_atoms: Tensor,
        crystal_mask: Tensor,
        batch: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Predict the targets of C crystals; see the class docstring for shapes."""
        slope = self.negative_slope
        x = F.leaky_relu(self.node_embedding(self.atom_features(atomic_numbers, neighbor_mask)),
                         slope)
        e = F.leaky_relu(self.edge_embedding(self.expansion(distances)), slope)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = norm(conv(x, e, neighbors, neighbor_mask))
            x = h + x if self.skip else h
        comp = self.composition(atomic_numbers, crystal_atoms, crystal_mask)  # [C, 108]
        g = self.global_attention(x, comp[batch], crystal_atoms, crystal_mask, batch)
        x = x * g.unsqueeze(1)
        m = crystal_mask.to(x.dtype).unsqueeze(-1)
        embedding = (x[crystal_atoms] * m).sum(1)  # [C, D] sum pooling over real atoms
        return self.scale_output(self.head(embedding), crystal_mask), embedding
