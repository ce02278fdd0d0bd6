"""Building blocks of DeeperGATGNN in the padded layout (docs/design.md §5).

Every per-edge tensor is ``[N, K, ...]``: row i holds atom i's K neighbor slots, slot 0 the self
loop, ``neighbor_mask`` [N, K] marks the real edges. Reductions over a center's edges are masked
reductions over axis 1, so nothing here scatters with atomics and every op exports to ONNX,
TorchScript and ``torch.export``. Sizes come from tensor shapes only.

Shapes use N atoms, K neighbor slots, H heads, D = ``dim`` features.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from deepergat.contract import COMPOSITION_SIZE, DEFAULT_CUTOFF

__all__ = [
    "AGATConv",
    "BatchNorm",
    "DiffGroupNorm",
    "Form",
    "GaussianExpansion",
    "GlobalAttention",
    "MaskedBatchNorm",
    "check_form",
    "masked_softmax",
]


def masked_softmax(logits: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Softmax over ``dim`` of the entries where ``mask`` is true (zero elsewhere).

    Every row must hold at least one true entry (a self loop, a crystal's first atom).

    Args:
        logits: any shape. mask: bool, broadcastable to ``logits``.
        dim: the reduced axis.
    """
    neg = torch.finfo(logits.dtype).min
    masked = torch.where(mask, logits, torch.full_like(logits, neg))
    top = masked.amax(dim=dim, keepdim=True)
    w = torch.exp(masked - top) * mask.to(logits.dtype)
    return w / w.sum(dim=dim, keepdim=True)


#: The two equal ways a layer can compute (see `DiffGroupNorm` and `AGATConv`).
Form = Literal["rewritten", "direct"]


def check_form(form: str) -> Form:
    """``form`` if it names a `Form`, else ValueError."""
    if form not in get_args(Form):
        raise ValueError(f"form must be 'rewritten' or 'direct', got {form!r}")
    return form  # type: ignore[return-value]


class GaussianExpansion(nn.Module):
    """Distances on evenly spaced Gaussians: exp(-(d/scale - μ_k)² / (2 width²)).

    The scale is a fixed length stored in the model (the cutoff, or the training graphs'
    longest edge): a structure gets the same features whatever data set it is processed with.

    Args:
        gaussians: number of centers μ_k, evenly spaced over [0, 1].
        cutoff: the scale, Å; distances are divided by it (buffer ``cutoff``).
        width: Gaussian width in units of the [0, 1] range.

    Shapes:
        [...] float Å → [..., gaussians].
    """

    def __init__(
        self, gaussians: int = 50, *, cutoff: float = DEFAULT_CUTOFF, width: float = 0.2
    ) -> None:
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.0, 1.0, gaussians))
        self.register_buffer("cutoff", torch.tensor(float(cutoff)))
        self.register_buffer("coeff", torch.tensor(-0.5 / width**2))

    def forward(self, distance: Tensor) -> Tensor:
        d = (distance.to(self.centers.dtype) / self.cutoff).unsqueeze(-1)
        return torch.exp(self.coeff * (d - self.centers) ** 2)


class MaskedBatchNorm(nn.Module):
    """BatchNorm over the last axis whose batch statistics cover real entries only.

    Same parameters and buffers as ``nn.BatchNorm1d(features)`` (weight, bias, running_mean,
    running_var, num_batches_tracked), so its state loads into one. In training the mean and
    the (biased) variance normalize, the unbiased variance updates the running estimate, as
    BatchNorm1d does, but over the entries where ``mask`` is true, never over padded slots. In
    eval mode it uses the running statistics (no data-dependent branch).

    Shapes:
        x [..., F], mask [...] bool → [..., F].
    """

    def __init__(self, features: int, *, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if self.training:
            m = mask.to(x.dtype).unsqueeze(-1)
            axes = tuple(range(x.dim() - 1))
            count = m.sum(axes)
            mean = (x * m).sum(axes) / count
            var = ((x - mean) ** 2 * m).sum(axes) / count
            with torch.no_grad():
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean.detach())
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * unbiased.detach())
                self.num_batches_tracked.add_(1)
        else:
            mean, var = self.running_mean, self.running_var
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class BatchNorm(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` (same parameters, buffers and training behaviour) whose eval mode is
    the folded affine map x ⊙ a + b written out, so exported files hold no
    BatchNormalization node (cuDNN's kernel rejected batches of ~80k rows).

    Shapes:
        [R, F] → [R, F].
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.training or self.running_mean is None or self.running_var is None:
            return super().forward(x)
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        return x * scale + (self.bias - self.running_mean * scale)


class DiffGroupNorm(nn.Module):
    """Differentiable group normalization (Zhou et al., 2020), as ``torch_geometric.nn.norm``.

    x ← x + λ Σ_g BN(s_g ⊙ x) with soft cluster assignments s = softmax(x W). Same parameters as
    PyG's ``DiffGroupNorm(dim, groups)`` (``lin.weight``, ``norm.*``): dim·groups + 2·dim·groups.
    Written out here so that it exports without PyG; atoms are never padded, so the BatchNorm
    statistics cover real atoms only.

    In eval mode the BatchNorm is a fixed affine map per feature, BN(y) = y ⊙ a + b, and two
    equal ways compute the sum over groups:

    * ``"rewritten"`` (default): Σ_g (s_g x ⊙ a_g + b_g) = x ⊙ (s A) + Σ_g b_g with A = a as
      [G, D]: an [N, G] @ [G, D] product, never the [N, G·D] tensor (10× the layer's width);
      exported files hold no BatchNormalization node (cuDNN's kernel rejected ~80k atoms).
    * ``"direct"``: the [N, G·D] tensor through BatchNorm, as in training.

    Args:
        dim: D. groups: G. lamda: λ.
        form: eval-mode form, see above; ``self.form`` may be changed after construction.

    Shapes:
        [N, D] → [N, D].
    """

    def __init__(
        self,
        dim: int,
        groups: int = 10,
        *,
        lamda: float = 0.01,
        form: Form = "rewritten",
    ) -> None:
        super().__init__()
        self.dim = dim
        self.groups = groups
        self.lamda = lamda
        self.form = check_form(form)
        self.lin = nn.Linear(dim, groups, bias=False)
        self.norm = nn.BatchNorm1d(groups * dim)

    def forward(self, x: Tensor) -> Tensor:
        s = self.lin(x).softmax(dim=-1)  # [N, G]
        if self.training or self.form == "direct":
            out = (s.unsqueeze(-1) * x.unsqueeze(-2)).flatten(1)  # [N, G·D]
            out = self.norm(out).unflatten(1, (self.groups, self.dim)).sum(-2)
        else:
            norm = self.norm
            scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)  # [G·D]
            shift = norm.bias - norm.running_mean * scale
            shape = (self.groups, self.dim)
            out = x * (s @ scale.view(shape)) + shift.view(shape).sum(0)
        return x + self.lamda * out


class AGATConv(nn.Module):
    """Augmented graph attention (Omee et al. 2022), padded layout.

    For the edge i ← j with edge embedding e_ij:
    h_i = act([x_i ‖ e_ij] W), h_j = act([x_j ‖ e_ij] W) with W ∈ R^{2D × H·D};
    a_ij = act(BN(act(Σ [h_i ‖ h_j] ⊙ att))) per head (BatchNorm over heads, statistics over
    real edges), α = softmax over the center's real edges, out_i = mean_heads Σ_j α_ij h_j + b;
    act = softplus.

    Two equal ways to compute it:

    * ``"rewritten"`` (default): [x ‖ e] W = x W_x + e W_e, the node half once per atom
      ([N, D] @ [D, H·D]) and gathered, the edge half once per edge (half the work of the
      direct projection).
    * ``"direct"``: the concatenation multiplied per edge, twice, as the reference does.

    Args:
        dim: D, node and edge embedding width (output width too).
        heads: H.
        form: which form, see above; ``self.form`` may be changed after construction.

    Parameters: 2D·H·D (W) + H·2D (att) + D (bias) + 2H (BatchNorm) = 33,352 at D=64, H=4.

    Shapes:
        x [N, D], edge [N, K, D], neighbors [N, K] int64, neighbor_mask [N, K] bool → [N, D].
    """

    def __init__(
        self, dim: int, heads: int = 4, *, form: Form = "rewritten"
    ) -> None:
        super().__init__()
        self.dim = dim
        self.heads = heads
        self.form = check_form(form)
        self.W = nn.Parameter(torch.empty(2 * dim, heads * dim))
        self.att = nn.Parameter(torch.empty(1, heads, 2 * dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.bn = MaskedBatchNorm(heads)
        nn.init.xavier_uniform_(self.W)
        nn.init.xavier_uniform_(self.att)

    def project(self, x: Tensor, edge: Tensor, neighbors: Tensor) -> tuple[Tensor, Tensor]:
        """(h_i, h_j), each [N, K, H, D], in the form chosen by ``self.form``."""
        if self.form == "direct":
            x_i = x.unsqueeze(1).expand(-1, edge.shape[1], -1)
            x_j = x[neighbors]
            h_i = F.softplus(torch.cat([x_i, edge], dim=-1) @ self.W)
            h_j = F.softplus(torch.cat([x_j, edge], dim=-1) @ self.W)
        else:
            node = x @ self.W[: self.dim]  # [N, H·D], once per atom
            pair = edge @ self.W[self.dim :]  # [N, K, H·D], once per edge
            # rows gathered with index_select (faster than advanced indexing on the CPU);
            # sums in place where autograd allows (neither the gather's nor the product's output
            # is saved for backward): two fewer [N, K, H·D] allocations per layer
            node_j = node.index_select(0, neighbors.reshape(-1)).unflatten(0, neighbors.shape)
            h_j = F.softplus(node_j.add_(pair))
            h_i = F.softplus(pair.add_(node.unsqueeze(1)))
        shape = (self.heads, self.dim)
        return h_i.unflatten(-1, shape), h_j.unflatten(-1, shape)

    def forward(self, x: Tensor, edge: Tensor, neighbors: Tensor, neighbor_mask: Tensor) -> Tensor:
        h_i, h_j = self.project(x, edge, neighbors)  # [N, K, H, D] each
        att = self.att.squeeze(0)  # [H, 2D]
        # contiguous halves: a strided [H, D] operand takes the CPU's slow broadcast path
        att_i, att_j = att[:, : self.dim].contiguous(), att[:, self.dim :].contiguous()
        alpha = (h_i * att_i).sum(-1) + (h_j * att_j).sum(-1)
        alpha = F.softplus(alpha)
        alpha = F.softplus(self.bn(alpha, neighbor_mask))
        alpha = masked_softmax(alpha, neighbor_mask.unsqueeze(-1), dim=1)
        # mean over heads of Σ_j α_ij h_j, as one batched product over the (slot, head) axis:
        # [N, 1, K·H] @ [N, K·H, D] → [N, 1, D].
        weights = (alpha / self.heads).flatten(1).unsqueeze(1)
        out = torch.bmm(weights, h_j.flatten(1, 2)).squeeze(1)
        return out + self.bias


class GlobalAttention(nn.Module):
    """Composition-aware global attention: g = softmax over the crystal's atoms of
    MLP([x_i ‖ composition]), two hidden layers of width D with softplus between.

    Parameters at D = 64 and a 108-long composition: 172→64→64→1 = 15,297.

    Shapes:
        x [N, D], composition [N, P] (the atom's crystal's vector), crystal_atoms [C, A],
        crystal_mask [C, A], batch [N] → g [N] (sums to 1 over each crystal's atoms).
    """

    def __init__(self, dim: int, composition: int = COMPOSITION_SIZE) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim + composition, dim)
        self.lin2 = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, 1)

    def forward(
        self,
        x: Tensor,
        composition: Tensor,
        crystal_atoms: Tensor,
        crystal_mask: Tensor,
        batch: Tensor,
    ) -> Tensor:
        h = F.softplus(self.lin1(torch.cat([x, composition], dim=-1)))
        logit = self.out(F.softplus(self.lin2(h))).squeeze(-1)  # [N]
        per_crystal = logit[crystal_atoms]  # [C, A]
        neg = torch.finfo(logit.dtype).min
        top = torch.where(crystal_mask, per_crystal, torch.full_like(per_crystal, neg)).amax(1)
        denom = (torch.exp(per_crystal - top.unsqueeze(1)) * crystal_mask.to(logit.dtype)).sum(1)
        return torch.exp(logit - top[batch]) / denom[batch]
