"""The training run's configuration (torch-free: the CLI reads its defaults from here).

`TrainConfig` holds every setting of `deepergat train`; the command line, a YAML file
(``--config``) and tests fill it, and the command-line options take their defaults from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from deepergat.contract import DEFAULT_CUTOFF, DEFAULT_GRAPH, DEFAULT_MAX_NEIGHBORS
from deepergat.errors import DeepergatError
from deepergat.system.devices import DEFAULT_DEVICE

__all__ = ["DEFAULTS", "DEFAULT_VAL_FRACTION", "MEMBER_KINDS", "TrainConfig", "parse_max_time"]

#: The validation fraction when neither ``val_data`` nor ``val_fraction`` is given.
DEFAULT_VAL_FRACTION = 0.1
#: How ensemble members differ (``members``).
MEMBER_KINDS = ("folds", "seeds")


@dataclass
class TrainConfig:
    """Everything a training run needs; the CLI, a YAML file and tests fill it.

    Attributes:
        data: training store. target: target name.
        val_data / val_fraction: a validation store, or the fraction of ``data`` held out
            (`DEFAULT_VAL_FRACTION` when neither is given).
        test_data / test_fraction: a test store, or the fraction of ``data`` held out (default
            none).
        out: run folder.
        arch: the architecture (`deepergat.architectures`: ``deepergatgnn``, ``gatgnn``,
            ``cgcnn``, ``schnet``, ``megnet``, ``mpnn``). deeper: its Deeper variant
            (DiffGroupNorm and skip connections; ``deepergatgnn`` is ``gatgnn`` deeper).
        layers, lr: graph layers and AdamW learning rate; None (the default) takes the
            architecture's (`ARCH_DEFAULTS`, the paper's benchmark settings) when the config
            is built.
        epochs, batch_size, seed, per_atom: as the CLI options.
        init_from: checkpoint whose weights start the run (fine-tuning).
        early_stop: stop after this many epochs without a better validation MAE.
        max_time: seconds of wall time after which the run stops as on a signal.
        device: ``auto``, ``cpu`` or ``cuda``.
        cache_dir: graph cache folder (default next to the store).
        resume: continue from ``out/last.ckpt`` when it exists.
        cv: K-fold cross-validation (`cross_validate`).
        ensemble: train this many members into ``ensemble.ckpt`` (`train_ensemble`).
        members: how ensemble members differ: ``"folds"`` (the K folds of a cross-validation)
            or ``"seeds"`` (one split, K seeds).
        member: with ``cv`` or ``ensemble``, train only this member (0-based; one task of a
            SLURM array or one core each); the run without it assembles them.
        oof: with ``ensemble``, out-of-fold predictions (``oof.csv`` of a ``cv`` run on the
            same data, split and recipe) that give the ensemble's local error term; a
            ``folds`` ensemble uses its own by default.
        local_neighbors: k of the local error term: the k-th nearest reference structure's
            distance sets its kernel width (0: no term, the members' spread alone; 30 was
            chosen on perov5's out-of-fold errors, benchmarks/ACCURACY.md).
        model: further model constructor arguments (dim, heads, gaussians, dgn, skip, identity,
            …).
        cutoff, max_neighbors, graph: graph settings (Å, count, ``periodic`` or
            ``minimum-image``).
        distance_scale: the length mapped onto the last Gaussian: ``"cutoff"``, ``"data"``
            (the training graphs' longest edge, fixed in the model) or a length in Å.
        scale_targets: standardize the target with the training set's mean and std.
        lr_monitor: what ReduceLROnPlateau watches: ``"val"`` (validation MAE) or ``"train"``
            (the epoch's training MAE, as the reference).
        keep: which model ``best.ckpt`` holds: ``"best"`` (lowest validation MAE) or
            ``"last"`` (the last epoch). Without a validation split: ``lr_monitor: train`` and
            ``keep: last``.
        lr_schedule: ``"plateau"`` (ReduceLROnPlateau on ``lr_monitor``, the reference's) or
            ``"cosine"`` (cosine annealing from ``lr`` to ``min_lr`` over ``epochs``, stepped
            per epoch; ``lr_monitor`` is then unused).
        weight_decay, lr_factor, lr_patience, min_lr, lr_threshold: optimizer and scheduler.
        curve_every: redraw the learning curve every this many epochs (and at the end).
    """

    data: str = ""
    target: str = ""
    out: str = ""
    val_data: str | None = None
    val_fraction: float | None = None
    test_data: str | None = None
    test_fraction: float | None = None
    arch: str = "deepergatgnn"
    deeper: bool = False
    layers: int | None = None
    epochs: int = 500
    batch_size: int = 100
    lr: float | None = None
    seed: int = 0
    per_atom: bool = False
    init_from: str | None = None
    early_stop: int | None = None
    max_time: float | None = None
    device: str = DEFAULT_DEVICE
    cache_dir: str | None = None
    resume: bool = False
    cv: int | None = None
    ensemble: int | None = None
    members: str = "folds"
    member: int | None = None
    oof: str | None = None
    local_neighbors: int = 30
    model: dict[str, Any] = field(default_factory=dict)
    cutoff: float = DEFAULT_CUTOFF
    max_neighbors: int = DEFAULT_MAX_NEIGHBORS
    graph: str = DEFAULT_GRAPH
    distance_scale: float | str = "cutoff"
    scale_targets: bool = True
    lr_monitor: str = "val"
    keep: str = "best"
    lr_schedule: str = "plateau"
    weight_decay: float = 0.01
    lr_factor: float = 0.8
    lr_patience: int = 10
    min_lr: float = 1e-5
    lr_threshold: float = 2e-4
    curve_every: int = 10

    def __post_init__(self) -> None:
        from deepergat.architectures import ARCH_DEFAULTS

        defaults = ARCH_DEFAULTS.get(self.arch)
        if defaults is not None:  # an unknown arch is reported by validate()
            if self.layers is None:
                self.layers = int(defaults["layers"][1 if self.deeper else 0])
            if self.lr is None:
                self.lr = float(defaults["lr"])

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Build from a dict whose keys are field names (dashes allowed)."""
        names = {f.name for f in dataclasses.fields(cls)}
        clean: dict[str, Any] = {}
        for key, value in values.items():
            k = str(key).replace("-", "_")
            if k not in names:
                raise DeepergatError(
                    f"{source}: unknown setting {key!r}; known: {', '.join(sorted(names))}"
                )
            clean[k] = value
        if isinstance(clean.get("max_time"), str):
            clean["max_time"] = parse_max_time(clean["max_time"])
        cfg = cls(**clean)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check the choice-valued settings; DeepergatError naming the choices."""
        from deepergat.architectures import ARCHITECTURES
        from deepergat.contract import GRAPH_CONSTRUCTIONS

        choices = {"arch": ARCHITECTURES, "graph": GRAPH_CONSTRUCTIONS,
                   "lr_monitor": ("val", "train"),
                   "keep": ("best", "last"), "members": MEMBER_KINDS,
                   "lr_schedule": ("plateau", "cosine")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise DeepergatError(f"{name}: {getattr(self, name)!r} is not one of "
                                     f"{', '.join(allowed)}")
        if self.member is not None:
            k = self.ensemble or self.cv
            if not k:
                raise DeepergatError("--member trains one member of --ensemble K or one fold "
                                     "of --cv K: give one of them")
            if isinstance(self.member, bool) or not isinstance(self.member, int) or not (
                    0 <= self.member < k):
                raise DeepergatError(f"--member {self.member!r}: give 0 to {k - 1} "
                                     f"(members of {k})")
        if isinstance(self.local_neighbors, bool) or not isinstance(self.local_neighbors, int) \
                or self.local_neighbors < 0:
            raise DeepergatError(f"--local-neighbors {self.local_neighbors!r}: give a count "
                                 "(0: no local error term)")
        if self.oof and not self.ensemble:
            raise DeepergatError("--oof gives an ensemble its local error term: give --ensemble K")
        scale = self.distance_scale
        if isinstance(scale, str) and scale not in ("cutoff", "data"):
            try:
                self.distance_scale = float(scale)
            except ValueError:
                raise DeepergatError(f"distance_scale: {scale!r}: give cutoff, data or a "
                                     "length in Å") from None
        if not isinstance(self.distance_scale, str) and not float(self.distance_scale) > 0:
            raise DeepergatError(f"distance_scale: {scale!r} must be a positive length in Å")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_max_time(text: str) -> float:
    """``HH:MM`` (or ``HH:MM:SS``) → seconds."""
    parts = str(text).strip().split(":")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) not in (2, 3) or any(n < 0 for n in nums):
        raise DeepergatError(f"--max-time {text!r}: expected HH:MM, e.g. 23:30")
    h, m, s = ([*nums, 0])[:3]
    return float(h * 3600 + m * 60 + s)




#: The defaults, for the command line.
DEFAULTS = TrainConfig()
