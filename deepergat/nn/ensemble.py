"""`DeeperGATGNNEnsemble`: K trained members of one architecture run as one model, whose third
output is their calibrated spread (docs/design.md §6). Assembling and calibrating one is
training's job (`deepergat.training.ensemble`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from deepergat.contract import INPUT_NAMES

from .arguments import RecordsArguments
from .deepergatgnn import DeeperGATGNN
from .layers import Form, check_form
from .registry import build_single

__all__ = ["LOCAL_BANDWIDTH", "DeeperGATGNNEnsemble"]

#: An ensemble's local error kernel width, in units of the squared distance of the k-th
#: nearest reference (from the best plateau on 3,408 out-of-fold errors: benchmarks/ACCURACY.md).
LOCAL_BANDWIDTH = 0.3


class DeeperGATGNNEnsemble(RecordsArguments, nn.Module):
    """K members of one architecture (any of `deepergat.nn.registry`) with one set of graph
    settings, run as one model.

    Members share every constructor argument (graph settings, distance scale, targets, sizes);
    each keeps its own weights and target scaling. The outputs are the members' mean
    prediction, their mean embedding, and the calibrated spread: the members' standard
    deviation (unbiased, over K) times ``std_scale`` (one factor per target, fitted on
    structures no member trained on: `deepergat.training.uncertainty.calibration_scale`).

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
        **member_config: the members' constructor arguments (a single model's, as
            `deepergat.nn.registry.build_single` takes them), shared by every member.

    ``config`` records the members' arguments, then ``members`` and ``local_error``.

    Shapes:
        Inputs as `DeeperGATGNN`. Outputs: (prediction [C, T], embedding [C, D], std [C, T]).
    """

    buffer_arguments = ("std_scale",)
    written_as: ClassVar = {"members": int}

    def __init__(self, *, members: int, std_scale: list[float] | None = None,
                 local_error: dict[str, int] | None = None, **member_config: Any) -> None:
        super().__init__()
        if int(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {members}")
        self.members = nn.ModuleList(build_single(member_config) for _ in range(int(members)))
        first = self.members[0]
        t = first.config["targets"]
        scale = torch.ones(t) if std_scale is None else torch.tensor(std_scale)
        self.register_buffer("std_scale", scale.to(torch.get_default_dtype()).reshape(t))
        self.config = {**first.config, **self.config}
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
        spread's factors at 1 (`deepergat.training.ensemble.calibrate` fits both). A
        coordinate that is constant over the references cannot tell them apart and is left
        out of the distances.
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
