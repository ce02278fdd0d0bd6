"""DeeperGATGNN (Omee et al., Patterns 3, 100491, 2022) in the padded layout of docs/design.md.

The model takes the bare graph (docs/design.md §5) and computes every feature
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

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from deepergat.contract import (
    COMPOSITION_SIZE,
    DEFAULT_CUTOFF,
    DEFAULT_GRAPH,
    DEFAULT_MAX_NEIGHBORS,
    ENSEMBLE_OUTPUT_NAMES,
    INPUT_NAMES,
    MAX_Z,
    OUTPUT_NAMES,
    GraphConstruction,
)
from deepergat.graphs import check_graph

from .graphmodel import GraphModel
from .layers import AGATConv, BatchNorm, DiffGroupNorm, Form, GlobalAttention, check_form

__all__ = [
    "ENSEMBLE_OUTPUT_NAMES",
    "INPUT_NAMES",
    "MAX_Z",
    "OUTPUT_NAMES",
    "DeeperGATGNN",
    "DeeperGATGNNEnsemble",
    "build_from_config",
    "count_parameters",
    "make_model",
]


class DeeperGATGNN(GraphModel):
    """Deep augmented graph-attention network with DiffGroupNorm and skips.

    Args:
        dim: embedding width D.
        layers: number of AGAT layers (the paper uses 10-30).
        heads: attention heads per AGAT layer.
        gaussians: Gaussians of the distance expansion over [0, 1] (distance / distance_scale).
        gaussian_width: their width, in units of the [0, 1] range.
        cutoff: graph cutoff, Å (graph setting).
        max_neighbors: graph setting; degree classes are 0..max_neighbors + 1 (self loop
            included), a larger degree from ties takes the top class.
        graph: graph construction, ``"periodic"`` or ``"minimum-image"`` (graph setting,
            `deepergat.graphs`); the model only records it so that loaders can check it.
        distance_scale: Å mapped onto the last Gaussian (None: the cutoff). Training may set
            it from the training graphs' longest edge; it is fixed in the model thereafter, so
            a structure gets the same features at training and prediction time.
        dgn: DiffGroupNorm after each layer.
        batch_norm: BatchNorm1d after each layer instead (the paper's GATGNN; not with dgn).
        skip: residual skip x ← x + x_prev after each layer.
        groups: DiffGroupNorm groups.
        targets: number of targets T.
        per_atom: predict per atom and multiply by the atom count (extensive targets).
        negative_slope: LeakyReLU slope of the embeddings.
        agat_form: ``"rewritten"`` (x W_x + e W_e, and in eval mode DiffGroupNorm without its
            [N, G·D] tensor; default) or ``"direct"`` ([x ‖ e] W, BatchNorm over [N, G·D]),
            equal results; see `AGATConv` and `DiffGroupNorm`.
        target_mean, target_std: [T] scaling; prediction = raw · std + mean (set from the
            training set with `set_target_scaling`).

    ``layers=5, dgn=False, skip=False, batch_norm=True`` is the paper's GATGNN.

    Shapes:
        Inputs (docs/design.md): atomic_numbers [N] int64, neighbors [N, K] int64, distances [N, K]
        float32 Å, neighbor_mask [N, K] bool, crystal_atoms [C, A] int64, crystal_mask [C, A]
        bool, batch [N] int64. Outputs: (prediction [C, T] in the targets' units,
        embedding [C, D], the pooled crystal vector).
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
        batch_norm: bool = False,
        groups: int = 10,
        targets: int = 1,
        per_atom: bool = False,
        negative_slope: float = 0.2,
        agat_form: Form = "rewritten",
        target_mean: list[float] | None = None,
        target_std: list[float] | None = None,
    ) -> None:
        super().__init__(
            gaussians=gaussians, gaussian_width=gaussian_width, cutoff=cutoff,
            max_neighbors=max_neighbors, distance_scale=distance_scale, targets=targets,
            per_atom=per_atom, target_mean=target_mean, target_std=target_std,
        )
        graph = check_graph(graph)
        if dgn and batch_norm:
            raise ValueError("dgn and batch_norm exclude each other: one norm per layer")
        self.config: dict[str, Any] = {
            "dim": dim,
            "layers": layers,
            "heads": heads,
            "gaussians": gaussians,
            "gaussian_width": gaussian_width,
            "cutoff": cutoff,
            "max_neighbors": max_neighbors,
            "graph": graph,
            "distance_scale": None if distance_scale is None else float(distance_scale),
            "dgn": dgn,
            "skip": skip,
            "groups": groups,
            "targets": targets,
            "per_atom": per_atom,
            "negative_slope": negative_slope,
            "agat_form": agat_form,
            # written only when set: checkpoints of the default model stay readable by
            # releases that predate the option
            **({"batch_norm": True} if batch_norm else {}),
        }
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


#: An ensemble's local error kernel width, in units of the squared distance of the k-th
#: nearest reference (from the best plateau on 3,408 out-of-fold errors: benchmarks/ACCURACY.md).
LOCAL_BANDWIDTH = 0.3


class DeeperGATGNNEnsemble(nn.Module):
    """K members of one architecture (DeeperGATGNN or any of `deepergat.nets`) with one set of
    graph settings, run as one model.

    Members share every constructor argument (graph settings, distance scale, targets, sizes);
    each keeps its own weights and target scaling. The outputs are the members' mean
    prediction, their mean embedding, and the calibrated spread: the members' standard
    deviation (unbiased, over K) times ``std_scale`` (one factor per target, fitted on
    structures no member trained on: `deepergat.uncertainty.calibration_scale`).

    With a local error term (``local_error``, docs/design.md §6) the spread has a second
    part: ê, a kernel-weighted mean of reference structures' out-of-fold |errors| by their
    distance d in the members' embedding space (their K pooled vectors side by side, each
    coordinate standardized over the references), with weights ∝ exp(−d² / (b · d_k²)), d_k
    the distance of the k-th nearest reference (k = ``neighbors``, b = ``bandwidth``): the
    nearest references count, and ê varies smoothly with the input (a hard k-nearest mean would
    jump when rounding reorders two references). The calibrated spread is then
    ``std_scale · sqrt(σ_members² + (local_weight · ê)²)``: the members' disagreement, plus
    how wrong models of this recipe were on similar structures they had not trained on.

    Args:
        members: K ≥ 2.
        std_scale: [T] calibration factors (default 1: the raw spread).
        local_error: ``{"neighbors": k, "bandwidth": b, "references": R, "features": W}`` to
            hold a local error term (its tensors come with the weights, or from
            `set_local_error`); W is K × the members' embedding width. None: the members'
            spread alone.
        **member_config: the members' constructor arguments (`build_from_config`'s dict of a
            single model), shared by every member.

    Shapes:
        Inputs as `DeeperGATGNN`. Outputs: (prediction [C, T], embedding [C, D], std [C, T]).
    """

    def __init__(self, *, members: int, std_scale: list[float] | None = None,
                 local_error: dict[str, int] | None = None, **member_config: Any) -> None:
        super().__init__()
        if int(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {members}")
        self.members = nn.ModuleList(build_from_config(member_config)
                                     for _ in range(int(members)))
        first = self.members[0]
        t = first.config["targets"]
        scale = torch.ones(t) if std_scale is None else torch.tensor(std_scale)
        self.register_buffer("std_scale", scale.to(torch.get_default_dtype()).reshape(t))
        self.config: dict[str, Any] = {**first.config, "members": int(members)}
        self.neighbors = 0
        if local_error is not None:
            k, r, w = (int(local_error[key]) for key in ("neighbors", "references", "features"))
            b = float(local_error["bandwidth"])
            if not 1 <= k <= r or w < 1 or not b > 0:
                raise ValueError(f"local_error needs 1 <= neighbors <= references, features "
                                 f">= 1 and bandwidth > 0, got {dict(local_error)}")
            self._local_buffers(torch.zeros(r, w), torch.zeros(w), torch.ones(w),
                                torch.zeros(r, t), torch.zeros(t), neighbors=k, bandwidth=b)

    def _local_buffers(self, refs: Tensor, center: Tensor, scale: Tensor, errors: Tensor,
                       weight: Tensor, *, neighbors: int, bandwidth: float) -> None:
        for name, value in (("reference_embeddings", refs), ("embedding_center", center),
                            ("embedding_scale", scale), ("reference_errors", errors),
                            ("local_weight", weight)):
            self.register_buffer(name, value.detach().to(self.std_scale).clone())
        self.neighbors = int(neighbors)
        self.bandwidth = float(bandwidth)
        self.config["local_error"] = {"neighbors": self.neighbors, "bandwidth": self.bandwidth,
                                      "references": len(refs), "features": int(refs.shape[1])}

    def set_local_error(self, embeddings: Tensor, errors: Tensor, *, neighbors: int,
                        bandwidth: float = LOCAL_BANDWIDTH) -> None:
        """Hold a local error term: the reference structures' member embeddings and errors.

        Args:
            embeddings: [K, R, D] the members' pooled vectors of R reference structures
                (structures whose ``errors`` are out-of-fold: no model that made the error
                trained on them).
            errors: [R, T] their out-of-fold |errors|, in the targets' units.
            neighbors: k, whose distance sets the kernel's width (at most R).
            bandwidth: b, the kernel's width in units of the k-th nearest distance squared.

        The ensemble is uncalibrated afterwards: the term's weight starts at 0 and the
        spread's factors at 1 (`deepergat.ensemble.calibrate` fits both). A coordinate that is
        constant over the references cannot tell them apart and is left out of the distances.
        """
        k_members, r, _ = embeddings.shape
        if k_members != len(self.members) or errors.shape != (r, self.std_scale.shape[0]):
            raise ValueError(f"local error references: embeddings {tuple(embeddings.shape)} "
                             f"and errors {tuple(errors.shape)} do not fit {len(self.members)} "
                             f"members and {self.std_scale.shape[0]} targets")
        if not 1 <= neighbors <= r:
            raise ValueError(f"local error: neighbors must be 1 to {r} (the references), "
                             f"got {neighbors}")
        flat = embeddings.transpose(0, 1).flatten(1).double()
        center = flat.mean(0)
        scale = flat.std(0, unbiased=False)
        scale = torch.where(scale > 1e-6 * scale.max(), scale, torch.inf)
        self._local_buffers((flat - center) / scale, center, scale, errors.double(),
                            torch.zeros_like(self.std_scale), neighbors=neighbors,
                            bandwidth=bandwidth)
        self.set_std_scale(torch.ones_like(self.std_scale))

    def set_local_weight(self, weight: Tensor | list[float]) -> None:
        """Set the [T] weights of the local error term."""
        self.local_weight.copy_(torch.as_tensor(weight, dtype=self.local_weight.dtype)
                                .reshape(-1))

    def local_error(self, embeddings: Tensor) -> Tensor:
        """[C, T] ê: the kernel-weighted mean reference error around each crystal, from the
        [K, C, D] member embeddings (zeros without a local error term)."""
        c = embeddings.shape[1]
        if not self.neighbors:
            return embeddings.new_zeros(c, self.std_scale.shape[0])
        q = (embeddings.transpose(0, 1).flatten(1) - self.embedding_center) / self.embedding_scale
        refs = self.reference_embeddings
        d2 = ((q * q).sum(1, keepdim=True) - 2.0 * q @ refs.T
              + (refs * refs).sum(1)).clamp_min(0.0)  # [C, R] squared distances
        kth = -torch.topk(-d2, self.neighbors, dim=1).values[:, -1:]  # [C, 1]
        # the floor (in squared standardized units, far above float32 rounding of d2) keeps
        # the kernel finite where k or more references coincide with the crystal
        weights = torch.softmax(-d2 / (self.bandwidth * kth).clamp_min(1e-3), dim=1)
        return weights @ self.reference_errors

    def spread(self, preds: Tensor, embeddings: Tensor) -> Tensor:
        """[C, T] calibrated σ from [K, C, T] member predictions and [K, C, D] embeddings."""
        k = preds.shape[0]
        var = ((preds - preds.mean(0)) ** 2).sum(0) / (k - 1)
        if self.neighbors:
            var = var + (self.local_weight * self.local_error(embeddings)) ** 2
        return torch.sqrt(var) * self.std_scale

    @property
    def cutoff(self) -> float:
        """Graph cutoff, Å."""
        return float(self.config["cutoff"])

    @property
    def target_mean(self) -> Tensor:
        """[T] the members' mean target mean (their scaling differs by training split)."""
        return torch.stack([m.target_mean for m in self.members]).mean(0)

    @property
    def target_std(self) -> Tensor:
        """[T] the members' mean target standard deviation (for the agreement rule)."""
        return torch.stack([m.target_std for m in self.members]).mean(0)

    def set_agat_form(self, form: Form) -> None:
        """`DeeperGATGNN.set_agat_form` on every member (other architectures have one form)."""
        form = check_form(form)
        for m in self.members:
            if isinstance(m, DeeperGATGNN):
                m.set_agat_form(form)
        if "agat_form" in self.config:
            self.config["agat_form"] = form

    def set_std_scale(self, scale: Tensor | list[float]) -> None:
        """Set the [T] calibration factors."""
        self.std_scale.copy_(torch.as_tensor(scale, dtype=self.std_scale.dtype).reshape(-1))

    def member_outputs(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        """([K, C, T] member predictions, [K, C, D] member embeddings)."""
        outs = [m(*inputs) for m in self.members]
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])

    def forward(
        self,
        atomic_numbers: Tensor,
        neighbors: Tensor,
        distances: Tensor,
        neighbor_mask: Tensor,
        crystal_atoms: Tensor,
        crystal_mask: Tensor,
        batch: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(mean prediction [C, T], mean embedding [C, D], calibrated std [C, T])."""
        preds, embs = self.member_outputs(atomic_numbers, neighbors, distances, neighbor_mask,
                                          crystal_atoms, crystal_mask, batch)
        return preds.mean(0), embs.mean(0), self.spread(preds, embs)

    def forward_inputs(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """`forward` on a dict keyed by `INPUT_NAMES`."""
        return self(*(inputs[name] for name in INPUT_NAMES))


def build_from_config(config: dict[str, Any]) -> GraphModel | DeeperGATGNNEnsemble:
    """The model a saved constructor-argument dict describes: an ensemble when it has
    ``members``, else the class its ``arch`` names (none: `DeeperGATGNN`)."""
    config = dict(config)
    if "members" in config:
        return DeeperGATGNNEnsemble(**config)
    arch = config.pop("arch", None)
    if arch is None:
        return DeeperGATGNN(**config)
    from .nets import NETS

    if arch not in NETS:
        raise ValueError(f"unknown architecture {arch!r} (this deepergat builds "
                         f"{', '.join(['deepergatgnn', 'gatgnn', *NETS])})")
    return NETS[arch](**config)


def make_model(arch: str, *, deeper: bool = False, **kwargs: Any) -> GraphModel:
    """A new model of a `deepergat.nets.Architecture` (``deepergat train --arch``).

    Args:
        arch: ``deepergatgnn`` (= ``gatgnn`` with ``deeper``), ``gatgnn``, ``cgcnn``,
            ``schnet``, ``megnet`` or ``mpnn``.
        deeper: the paper's Deeper variant (DiffGroupNorm and skip connections).
        **kwargs: constructor arguments (layers, graph settings, targets, …).
    """
    from deepergat.architectures import check_architecture

    from .nets import NETS

    arch = check_architecture(arch)
    if arch in ("deepergatgnn", "gatgnn") and "identity" in kwargs:
        raise ValueError(
            "identity applies to the Deeper variants of CGCNN, SchNet and MEGNet (layers that "
            "end in a residual of their own); GATGNN's layer has none")
    if arch == "deepergatgnn" or (arch == "gatgnn" and deeper):
        return DeeperGATGNN(**kwargs)
    if arch == "gatgnn":
        return DeeperGATGNN(**{"dgn": False, "skip": False, "batch_norm": True, **kwargs})
    return NETS[arch](deeper=deeper, **kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
