"""The architectures ``deepergat train --arch`` builds, by name: the choices, their paper names,
training defaults, parameter-count facts and the settings written only when set. Torch-free
(metadata readers use it); the models are in `deepergat.nn` (`deepergat.nn.registry` maps
these names to their classes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

__all__ = [
    "ARCHITECTURES",
    "ARCH_DEFAULTS",
    "PAPER_UNUSED",
    "UNWRITTEN",
    "Architecture",
    "architecture_name",
    "check_architecture",
    "embedding_width",
]

#: ``deepergat train --arch`` choices; ``deepergatgnn`` is ``gatgnn`` with ``--deeper``.
Architecture = Literal["deepergatgnn", "gatgnn", "cgcnn", "schnet", "megnet", "mpnn"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)

#: Trainable parameters the paper's counts include that the reference's forward pass never
#: uses, per architecture: (fixed, per layer). GATGNN's global attention builds three norms it
#: never applies (BatchNorm1d(64), or DiffGroupNorm(64, 10) in DeeperGATGNN); PyG 1.6–2.0.1's
#: CGConv built a BatchNorm1d(channels) even with ``batch_norm=False`` (PyG PR #3348).
PAPER_UNUSED: dict[str, tuple[int, int]] = {
    "GATGNN": (384, 0),
    "DeeperGATGNN": (5760, 0),
    "CGCNN": (0, 200),
    "DeeperCGCNN": (0, 200),
}

#: Model settings written into a file's constructor arguments only when they differ from
#: these values, which is what an absent key means: files from before the setting existed and
#: new ones of the same model have equal settings (`deepergat.nn.arguments`).
UNWRITTEN: dict[str, Any] = {"batch_norm": False, "identity": "doubled", "local_error": None}

_DISPLAY = {"gatgnn": "GATGNN", "cgcnn": "CGCNN", "schnet": "SchNet", "megnet": "MEGNet",
            "mpnn": "MPNN"}


def check_architecture(value: str) -> Architecture:
    """``value`` if it names an `Architecture`, else ValueError."""
    if value not in ARCHITECTURES:
        raise ValueError(f"architecture {value!r} is not one of {', '.join(ARCHITECTURES)}")
    return value  # type: ignore[return-value]


def architecture_name(config: Mapping[str, Any]) -> str:
    """The paper's name of the architecture a constructor-argument dict describes
    ("DeeperGATGNN", "GATGNN", "CGCNN", "DeeperSchNet", …; a DeeperGATGNN-class model with
    another mix of norm and skips is named by its parts, e.g. "GATGNN (no norm)")."""
    arch = config.get("arch")
    if arch is None:  # the DeeperGATGNN class: named by its norm and skips
        dgn, skip = bool(config.get("dgn", True)), bool(config.get("skip", True))
        batch_norm = bool(config.get("batch_norm", False))
        if dgn and skip:
            return "DeeperGATGNN"
        if batch_norm and not skip:
            return "GATGNN"
        norm = "+DiffGroupNorm" if dgn else "+BatchNorm" if batch_norm else ""
        name = "GATGNN" + norm + ("+skip" if skip else "")
        return name if norm or skip else "GATGNN (no norm)"
    name = ("Deeper" if config.get("deeper") else "") + _DISPLAY[arch]
    return name + (" (single identity)" if config.get("identity") == "single" else "")


def embedding_width(config: Mapping[str, Any]) -> int:
    """Width of the ``embedding`` output of the model a constructor-argument dict describes:
    ``dim`` (MEGNet: 3 × dim, atoms ‖ edges ‖ crystal state)."""
    dim = int(config.get("dim", 64))
    return 3 * dim if config.get("arch") == "megnet" else dim


#: Training defaults by architecture where the paper's benchmark configuration (MatDeepLearn's
#: ``*_demo`` entries) sets them: layers (plain, Deeper) and AdamW learning rate.
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "deepergatgnn": {"layers": (10, 10), "lr": 0.005},
    "gatgnn": {"layers": (5, 10), "lr": 0.005},
    "cgcnn": {"layers": (4, 10), "lr": 0.002},
    "schnet": {"layers": (4, 10), "lr": 0.0005},
    "mpnn": {"layers": (4, 10), "lr": 0.001},
    "megnet": {"layers": (4, 10), "lr": 0.0005},
}
