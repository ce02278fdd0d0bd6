"""What every architecture shares: the model contract of docs/design.md §5 around its layers.

`GraphModel` holds the settings every model shares (the graph it was trained on, the distance
expansion, the targets) and what they build: the featurization computed from registered
buffers — one-hot Z and degree atom features, the Gaussian distance expansion, the composition
vector — the target scaling, and the readout helpers (masked pooling over a crystal's atoms).
An architecture (`deepergat.nn.deepergatgnn.DeeperGATGNN`, the MatDeepLearn baselines of
`deepergat.nn.matdeeplearn`) adds its layers between them, so every one takes the bare padded
graph and returns (prediction [C, T], embedding [C, D]): checkpoints, export, prediction,
ensembles and screening work for all of them unchanged.
"""

from __future__ import annotations

from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor, nn

from deepergat.contract import (
    COMPOSITION_SIZE,
    DEFAULT_CUTOFF,
    DEFAULT_GRAPH,
    DEFAULT_MAX_NEIGHBORS,
    INPUT_NAMES,
    MAX_Z,
    GraphConstruction,
)
from deepergat.graphs import check_graph

from .arguments import RecordsArguments, optional_float
from .layers import GaussianExpansion

__all__ = ["GraphModel", "Pool", "check_pool", "pool"]

#: How a crystal's atom vectors become one vector.
Pool = Literal["add", "mean", "max"]


def check_pool(value: str) -> Pool:
    """``value`` if it names a `Pool`, else ValueError."""
    if value not in get_args(Pool):
        raise ValueError(f"pool must be one of {', '.join(get_args(Pool))}, got {value!r}")
    return value  # type: ignore[return-value]


def pool(x: Tensor, crystal_atoms: Tensor, crystal_mask: Tensor, kind: Pool) -> Tensor:
    """[C, D] sum, mean or max of each crystal's real atoms' rows of x [N, D].

    Args:
        x: [N, D]. crystal_atoms: [C, A] int64 atom indices. crystal_mask: [C, A] bool, every
            row with at least one true entry.
        kind: ``"add"``, ``"mean"`` or ``"max"``.
    """
    per = x[crystal_atoms]  # [C, A, D]
    m = crystal_mask.unsqueeze(-1)
    if kind == "max":
        return torch.where(m, per, torch.full_like(per, torch.finfo(x.dtype).min)).amax(1)
    mf = m.to(x.dtype)
    total = (per * mf).sum(1)
    return total / mf.sum(1) if kind == "mean" else total


class GraphModel(RecordsArguments, nn.Module):
    """Base of every architecture: the shared settings, contract buffers, featurization and
    target scaling.

    Args (the settings every architecture shares; each passes them on as ``**settings``):
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
        targets: number of targets T.
        per_atom: predict per atom and multiply by the atom count (extensive targets).
        target_mean, target_std: [T] starting target scaling (buffers: the weights hold the
            trained one); prediction = raw · std + mean (`set_target_scaling`).

    ``config`` holds the constructor arguments (`deepergat.nn.arguments`); subclasses add
    their layers and implement ``forward``.
    """

    buffer_arguments = ("target_mean", "target_std")
    written_as: ClassVar = {"distance_scale": optional_float}

    def __init__(
        self,
        *,
        gaussians: int = 50,
        gaussian_width: float = 0.2,
        cutoff: float = DEFAULT_CUTOFF,
        max_neighbors: int = DEFAULT_MAX_NEIGHBORS,
        graph: GraphConstruction = DEFAULT_GRAPH,
        distance_scale: float | None = None,
        targets: int = 1,
        per_atom: bool = False,
        target_mean: list[float] | None = None,
        target_std: list[float] | None = None,
    ) -> None:
        super().__init__()
        if distance_scale is not None and not float(distance_scale) > 0:
            raise ValueError(f"distance_scale must be a positive length in Å, got {distance_scale}")
        check_graph(graph)
        self.per_atom = per_atom
        degree_classes = max_neighbors + 2
        # Constants as buffers: a saved or exported model carries them.
        self.register_buffer("element_table", torch.eye(MAX_Z))  # row Z-1: one-hot of Z
        self.register_buffer("degree_classes", torch.arange(degree_classes))
        self.max_degree_class = degree_classes - 1
        self.register_buffer("composition_index", torch.arange(COMPOSITION_SIZE))
        self.register_buffer("max_neighbors", torch.tensor(max_neighbors, dtype=torch.long))
        mean = torch.zeros(targets) if target_mean is None else torch.tensor(target_mean)
        std = torch.ones(targets) if target_std is None else torch.tensor(target_std)
        self.register_buffer("target_mean", mean.to(torch.get_default_dtype()).reshape(targets))
        self.register_buffer("target_std", std.to(torch.get_default_dtype()).reshape(targets))
        scale = cutoff if distance_scale is None else float(distance_scale)
        self.expansion = GaussianExpansion(gaussians, cutoff=scale, width=gaussian_width)

    @property
    def gaussians(self) -> int:
        """Width G of the distance expansion."""
        return int(self.expansion.centers.shape[0])

    @property
    def atom_feature_size(self) -> int:
        """Width of `atom_features`: 100 one-hot Z + max_neighbors + 2 degree classes."""
        return MAX_Z + self.degree_classes.shape[0]

    @property
    def cutoff(self) -> float:
        """Graph cutoff, Å."""
        return float(self.config["cutoff"])

    def set_target_scaling(self, mean: Tensor | list[float], std: Tensor | list[float]) -> None:
        """Set the [T] target mean and std (training-set statistics, in the targets' units)."""
        mean_t = torch.as_tensor(mean, dtype=self.target_mean.dtype).reshape(-1)
        std_t = torch.as_tensor(std, dtype=self.target_std.dtype).reshape(-1)
        self.target_mean.copy_(mean_t)
        self.target_std.copy_(std_t)

    def atom_features(self, atomic_numbers: Tensor, neighbor_mask: Tensor) -> Tensor:
        """[N, 100 + max_neighbors + 2] one-hot Z ‖ one-hot degree (self loop included)."""
        z = (atomic_numbers - 1).clamp(0, MAX_Z - 1)  # Z outside 1..MAX_Z: screened earlier
        # the bound is a Python int fixed at init: a bound taken from a tensor's shape would be
        # traced into a CPU tensor and pin exported files to the CPU
        degree = neighbor_mask.sum(1).clamp(max=self.max_degree_class)
        dtype = self.element_table.dtype
        one_hot_degree = (degree.unsqueeze(1) == self.degree_classes).to(dtype)
        return torch.cat([self.element_table[z], one_hot_degree], dim=1)

    def composition(
        self, atomic_numbers: Tensor, crystal_atoms: Tensor, crystal_mask: Tensor
    ) -> Tensor:
        """[C, 108] element fractions of each crystal (index Z)."""
        z = atomic_numbers.clamp(0, COMPOSITION_SIZE - 1)
        dtype = self.element_table.dtype
        one_hot = (z[crystal_atoms].unsqueeze(-1) == self.composition_index).to(dtype)
        m = crystal_mask.to(dtype)
        counts = (one_hot * m.unsqueeze(-1)).sum(1)
        return counts / m.sum(1, keepdim=True)

    def scale_output(self, raw: Tensor, crystal_mask: Tensor) -> Tensor:
        """[C, T] prediction in the targets' units from the head's [C, T] output."""
        prediction = raw * self.target_std + self.target_mean
        if self.per_atom:
            prediction = prediction * crystal_mask.to(raw.dtype).sum(1, keepdim=True)
        return prediction

    def forward_inputs(self, inputs: dict[str, Tensor]) -> tuple[Tensor, ...]:
        """``forward`` on a dict keyed by `INPUT_NAMES`."""
        return self(*(inputs[name] for name in INPUT_NAMES))
