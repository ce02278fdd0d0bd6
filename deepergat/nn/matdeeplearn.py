"""The frame the paper's baselines share — CGCNN, SchNet, MPNN, MEGNet (`deepergat.nn.cgcnn`,
`.schnet`, `.mpnn`, `.megnet`) — and their Deeper variants, in the padded layout of
docs/design.md §5.

Each follows the MatDeepLearn configuration the paper benchmarked (its ``*_demo`` entries): one
dense layer from the 114 atom features (100 one-hot Z, 14 degree classes) to ``dim`` with ReLU,
``layers`` graph convolutions each followed by BatchNorm, a pooling over each crystal's atoms,
``post_layers`` dense layers with ReLU and a linear head. `MatDeepLearnNet` holds everything but
the convolutions. ``deeper=True`` is the paper's "Deeper" variant: every BatchNorm becomes a
DiffGroupNorm(dim, 10) and each layer's input is added to its output (h ← norm(conv(h)) + h).
Where the base layer already ends in a residual (CGConv, SchNet's interaction, MEGNet's state
updates) the identity path is then counted twice, as in the paper's code: the node states grow
like 2^layers (docs/design.md §5). ``identity="single"`` counts it once: the base layer's own
residual is the skip, which DiffGroupNorm (unlike BatchNorm) keeps, h ← DGN(h + a) (MEGNet:
x ← x' + x).

Every convolution aggregates over each atom's own neighbor list (the K slots of its row), never
over the atoms that list it, unlike MatDeepLearn's CGConv, SchNet and NNConv: in the padded
layout the other way would need a scatter reduction, which the exported files avoid
(docs/design.md §5, "The paper's other architectures").

Parameter counts equal the paper's where the paper counted only modules the forward pass uses;
`deepergat.architectures.PAPER_UNUSED` lists the difference.

Shapes use N atoms, K neighbor slots (slot 0 the self loop), C crystals, A atom slots per
crystal, D = ``dim``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, get_args

from torch import Tensor, nn
from torch.nn import functional as F

from .graphmodel import GraphModel, Pool, check_pool
from .layers import BatchNorm, DiffGroupNorm

__all__ = ["IDENTITIES", "Identity", "MatDeepLearnNet", "masked_mean"]

#: How a Deeper variant whose base layer ends in a residual counts the identity: ``doubled``
#: (the paper's code: its skip is added to that residual) or ``single`` (the residual is the skip).
Identity = Literal["doubled", "single"]
IDENTITIES: tuple[str, ...] = get_args(Identity)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """[N, D] mean over the K slots of [N, K, D] where ``mask`` [N, K] is true."""
    m = mask.to(values.dtype).unsqueeze(-1)
    return (values * m).sum(1) / m.sum(1)


class MatDeepLearnNet(GraphModel):
    """The shared frame: pre-FC with ReLU, the layers (subclass), pooling, post-FC with ReLU,
    head. A subclass declares its own settings and the defaults it changes, builds its layers
    after ``super().__init__`` and implements ``forward``.

    Args:
        deeper: the paper's Deeper variant (DiffGroupNorm for every BatchNorm, skips).
        dim: width D of the atom states.
        hidden: width of the post layers.
        layers: graph convolutions (at least 1).
        post_layers: dense layers between the pooling and the head.
        groups: DiffGroupNorm groups (Deeper).
        pool: how a crystal's atom states become one vector (`Pool`).
        identity: how a Deeper variant counts the identity of a layer that ends in a residual
            (`Identity`; ``"single"`` only there).
        **settings: the shared settings (`GraphModel`).
    """

    #: the base layer ends in a residual of its own (h + message)
    own_residual: ClassVar[bool] = False
    #: width of the pooled vector in units of ``dim`` (MEGNet: atoms ‖ edges ‖ crystal state)
    pooled_dims: ClassVar[int] = 1
    written_as: ClassVar = {"deeper": bool}

    def __init__(
        self,
        *,
        deeper: bool = False,
        dim: int = 100,
        hidden: int = 100,
        layers: int = 4,
        post_layers: int = 3,
        groups: int = 10,
        pool: Pool = "mean",
        identity: Identity = "doubled",
        **settings: Any,
    ) -> None:
        super().__init__(**settings)
        if int(layers) < 1:
            raise ValueError(f"layers must be at least 1, got {layers}")
        if identity not in IDENTITIES:
            raise ValueError(f"identity {identity!r} is not one of {', '.join(IDENTITIES)}")
        if identity == "single" and not (deeper and self.own_residual):
            raise ValueError(
                "identity='single' applies to the Deeper variants of CGCNN, SchNet and MEGNet "
                "(layers that end in a residual of their own)")
        self.dim, self.depth, self.groups = dim, layers, groups
        self.deeper = bool(deeper)
        #: add the layer's input to its normalized output (the Deeper skip) on top of the
        #: base layer's own residual, if it has one
        self.outer_skip = self.deeper and identity == "doubled"
        self.pool_kind: Pool = check_pool(pool)
        self.pre = nn.Linear(self.atom_feature_size, dim)
        width = self.pooled_dims * dim
        post = []
        for _ in range(post_layers):
            post.append(nn.Linear(width, hidden))
            width = hidden
        self.post = nn.ModuleList(post)
        self.head = nn.Linear(width, self.target_mean.shape[0])

    def norm(self) -> nn.Module:
        """A new norm over ``dim`` features: DiffGroupNorm(dim, groups) in the Deeper variant,
        else BatchNorm."""
        return DiffGroupNorm(self.dim, self.groups) if self.deeper else BatchNorm(self.dim)

    def readout(self, pooled: Tensor, crystal_mask: Tensor) -> tuple[Tensor, Tensor]:
        """(prediction [C, T], embedding = the pooled vector [C, D'])."""
        h = pooled
        for lin in self.post:
            h = F.relu(lin(h))
        return self.scale_output(self.head(h), crystal_mask), pooled
