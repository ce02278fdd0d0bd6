"""The training run's settings in five sections (torch-free: the CLI reads its defaults here).

`TrainConfig` is what ``deepergat train`` runs, grouped by concern:

=============  =============================================================================
``dataset``    `DataSettings`: stores, target, splits, graph settings, graph cache
``network``    `NetworkSettings`: architecture, depth, model arguments, target scaling
``trainer``    `TrainerSettings`: epochs, batches, optimizer, schedule, stopping, kept epoch
``ensembles``  `EnsembleSettings`: cross-validation, ensembles and their local error term
``run``        `RunSettings`: run folder, seed, device, resume, wall time, plots
=============  =============================================================================

Every setting has one name, unique across the sections: its YAML key, its command-line option
(``val_fraction`` → ``--val-fraction``) and the name an error message gives it
(`deepergat.errors.SettingError`). So a ``--config`` file may be flat (every file written so
far) or sectioned (``trainer: {epochs: 300}``), and `TrainConfig.to_dict` gives the flat form
a run writes into ``config.yaml`` and its checkpoints. The recipe, cross-validation and
ensembles: docs/design.md §5 and §6.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal, get_args

from deepergat.architectures import ARCH_DEFAULTS, Architecture
from deepergat.contract import (
    DEFAULT_CUTOFF,
    DEFAULT_GRAPH,
    DEFAULT_MAX_NEIGHBORS,
    GraphConstruction,
)
from deepergat.errors import DeepergatError, SettingError
from deepergat.system.devices import DEFAULT_DEVICE, DeviceChoice

__all__ = [
    "DEFAULTS",
    "DEFAULT_VAL_FRACTION",
    "MEMBER_KINDS",
    "SECTIONS",
    "DataSettings",
    "EnsembleSettings",
    "Keep",
    "LrMonitor",
    "LrSchedule",
    "MemberKind",
    "NetworkSettings",
    "RunSettings",
    "TrainConfig",
    "TrainerSettings",
    "flat_settings",
    "parse_max_time",
]

#: The validation fraction when neither ``val_data`` nor ``val_fraction`` is given.
DEFAULT_VAL_FRACTION = 0.1

#: What ReduceLROnPlateau watches: the validation MAE, or the epoch's training MAE.
LrMonitor = Literal["val", "train"]
#: Which epoch ``best.ckpt`` holds: the lowest validation MAE, or the last.
Keep = Literal["best", "last"]
#: The learning-rate schedule.
LrSchedule = Literal["plateau", "cosine"]
#: How ensemble members differ (``members``).
MemberKind = Literal["folds", "seeds"]
#: Arithmetic of the training step (`RunSettings.precision`).
Precision = Literal["fp32", "bf16", "tf32"]
MEMBER_KINDS: tuple[str, ...] = get_args(MemberKind)


def _choice_error(name: str, value: Any, allowed: tuple[str, ...]) -> SettingError:
    # Named as the YAML key, not as a field: click checks the options' choices, so a bad value
    # here comes from a --config file.
    return SettingError(f"{name}: {value!r} is not one of {', '.join(allowed)}")


class _Section:
    """What every section shares: its `Literal` choices checked on construction."""

    #: field name → its `Literal` type, checked by `_check_choices`.
    CHOICES: ClassVar[dict[str, Any]] = {}

    def _check_choices(self) -> None:
        for name, kind in self.CHOICES.items():
            allowed = get_args(kind)
            if getattr(self, name) not in allowed:
                raise _choice_error(name, getattr(self, name), allowed)


@dataclass
class DataSettings(_Section):
    """Which structures train, validate and test, and how they become graphs.

    Attributes:
        data: the training store (.h5).
        target: the target's name in it.
        val_data: a validation store (instead of ``val_fraction``).
        val_fraction: fraction of ``data`` held out for validation, in [0, 1)
            (`DEFAULT_VAL_FRACTION` when neither this nor ``val_data`` is given; 0: none).
        test_data: a test store (instead of ``test_fraction``).
        test_fraction: fraction of ``data`` held out for testing, in [0, 1) (default none).
        cutoff: graph cutoff radius, Å.
        max_neighbors: neighbors kept per atom.
        graph: graph construction, ``periodic`` or ``minimum-image``.
        cache_dir: graph cache folder (default: next to the store).
    """

    CHOICES: ClassVar[dict[str, Any]] = {"graph": GraphConstruction}

    data: str = ""
    target: str = ""
    val_data: str | None = None
    val_fraction: float | None = None
    test_data: str | None = None
    test_fraction: float | None = None
    cutoff: float = DEFAULT_CUTOFF
    max_neighbors: int = DEFAULT_MAX_NEIGHBORS
    graph: GraphConstruction = DEFAULT_GRAPH
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        self._check_choices()


@dataclass
class NetworkSettings(_Section):
    """The model to train.

    Attributes:
        arch: the architecture (`deepergat.architectures.ARCHITECTURES`).
        deeper: its Deeper variant (DiffGroupNorm and skip connections; ``deepergatgnn`` is
            ``gatgnn`` deeper).
        layers: graph layers; None takes the architecture's (`ARCH_DEFAULTS`, the paper's
            benchmark settings) when the `TrainConfig` is built.
        per_atom: the target is extensive: learn it per atom.
        distance_scale: the length mapped onto the last distance Gaussian: ``"cutoff"``,
            ``"data"`` (the training graphs' longest edge, fixed in the model) or a length, Å.
        scale_targets: standardize the target with the training set's mean and std (inside the
            model).
        init_from: a checkpoint whose weights start the run (fine-tuning; same model settings).
        model: further constructor arguments of the architecture, by name (e.g. ``dim``,
            ``heads``, ``gaussians``, ``dgn``, ``skip``, ``identity``; see its class), as the
            YAML mapping ``model: {dim: 64}`` gives them. The run fills in ``layers``,
            ``per_atom``, the graph settings and ``distance_scale`` itself.
    """

    CHOICES: ClassVar[dict[str, Any]] = {"arch": Architecture}

    arch: Architecture = "deepergatgnn"
    deeper: bool = False
    layers: int | None = None
    per_atom: bool = False
    distance_scale: float | str = "cutoff"
    scale_targets: bool = True
    init_from: str | None = None
    model: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_choices()
        scale = self.distance_scale
        # Named as the YAML key: the same line the command printed for --distance-scale so far.
        if isinstance(scale, str) and scale not in ("cutoff", "data"):
            try:
                self.distance_scale = float(scale)
            except ValueError:
                raise SettingError(f"distance_scale: {scale!r}: give cutoff, data or a "
                                   "length in Å") from None
        if not isinstance(self.distance_scale, str) and not float(self.distance_scale) > 0:
            raise SettingError(f"distance_scale: {scale!r} must be a positive length in Å")


@dataclass
class TrainerSettings(_Section):
    """How the network trains: the reference's recipe by default.

    Attributes:
        epochs: epochs to train.
        batch_size: crystals a step (over all ranks together).
        lr: AdamW learning rate; None takes the architecture's when the `TrainConfig` is built.
        weight_decay: AdamW weight decay.
        lr_schedule: ``"plateau"`` (ReduceLROnPlateau on ``lr_monitor``) or ``"cosine"``
            (annealed from ``lr`` to ``min_lr`` over ``epochs``, stepped per epoch).
        lr_monitor: what the plateau schedule watches: ``"val"`` (the validation MAE) or
            ``"train"`` (the epoch's training MAE, as the reference).
        lr_factor, lr_patience, lr_threshold: ReduceLROnPlateau's factor, patience (epochs)
            and relative threshold.
        min_lr: the smallest learning rate of either schedule.
        early_stop: stop after this many epochs without a better validation MAE.
        keep: which model ``best.ckpt`` holds: ``"best"`` (lowest validation MAE) or
            ``"last"`` (the last epoch). Without a validation split: ``lr_monitor: train``,
            ``keep: last`` and no ``early_stop`` (`deepergat.training.splits`).
    """

    CHOICES: ClassVar[dict[str, Any]] = {"lr_monitor": LrMonitor, "keep": Keep,
                                         "lr_schedule": LrSchedule}

    epochs: int = 500
    batch_size: int = 100
    lr: float | None = None
    weight_decay: float = 0.01
    lr_schedule: LrSchedule = "plateau"
    lr_monitor: LrMonitor = "val"
    lr_factor: float = 0.8
    lr_patience: int = 10
    lr_threshold: float = 2e-4
    min_lr: float = 1e-5
    early_stop: int | None = None
    keep: Keep = "best"

    def __post_init__(self) -> None:
        self._check_choices()


@dataclass
class EnsembleSettings(_Section):
    """Cross-validation and ensembles.

    Attributes:
        cv: K-fold cross-validation (`deepergat.training.cv`).
        ensemble: train this many members into ``ensemble.ckpt``
            (`deepergat.training.ensembles`).
        members: how ensemble members differ: ``"folds"`` (the K folds of a cross-validation)
            or ``"seeds"`` (one split, K seeds).
        member: with ``cv`` or ``ensemble``, train only this member (0-based; one task of a
            SLURM array); the run without it assembles them.
        oof: with ``ensemble``, the ``oof.csv`` of a cross-validation on the same data, split
            and recipe, whose out-of-fold errors give the ensemble its local error term (a
            ``folds`` ensemble uses its own by default).
        local_neighbors: k of the local error term: the k-th nearest reference structure sets
            its kernel width (0: no term, the members' spread alone).
    """

    CHOICES: ClassVar[dict[str, Any]] = {"members": MemberKind}

    cv: int | None = None
    ensemble: int | None = None
    members: MemberKind = "folds"
    member: int | None = None
    oof: str | None = None
    local_neighbors: int = 30

    def __post_init__(self) -> None:
        self._check_choices()
        if self.member is not None:
            k = self.ensemble or self.cv
            if not k:
                raise SettingError("{member} trains one member of {ensemble} K or one fold "
                                   "of {cv} K: give one of them")
            if isinstance(self.member, bool) or not isinstance(self.member, int) or not (
                    0 <= self.member < k):
                raise SettingError(f"{{member}} {self.member!r}: give 0 to {k - 1} "
                                   f"(members of {k})")
        if isinstance(self.local_neighbors, bool) or not isinstance(self.local_neighbors, int) \
                or self.local_neighbors < 0:
            raise SettingError(f"{{local_neighbors}} {self.local_neighbors!r}: give a count "
                               "(0: no local error term)")
        if self.oof and not self.ensemble:
            raise SettingError("{oof} gives an ensemble its local error term: give "
                               "{ensemble} K")


@dataclass
class RunSettings(_Section):
    """Where and how the run goes.

    Attributes:
        out: the run folder.
        seed: fixes the splits, the initial weights and the order of batches.
        device: ``auto``, ``cpu`` or ``cuda`` (checked when the run picks its device,
            `deepergat.system.devices`).
        resume: continue from ``out/last.ckpt`` when it exists.
        max_time: seconds of wall time after which the run stops as on a signal (``HH:MM``
            or ``HH:MM:SS`` text is converted).
        curve_every: redraw the learning curve every this many epochs (and at the end).
        compile: run the training step (forward and backward) through ``torch.compile``
            (Inductor: fused C++ kernels on the CPU, which needs a C++ compiler; Triton on
            CUDA). Compiled once per run for any batch shape (``dynamic=True``), cached per
            user by PyTorch; validation and prediction stay eager.
        precision: the training step's arithmetic: ``fp32``; ``bf16`` (forward and loss under
            ``torch.autocast`` in bfloat16: CUDA, and CPUs with AMX/AVX512-BF16); ``tf32``
            (CUDA matrix products in TensorFloat-32). Weights, optimizer, validation and every
            reported error stay float32.
    """

    CHOICES: ClassVar[dict[str, Any]] = {"precision": Precision}

    out: str = ""
    seed: int = 0
    device: DeviceChoice = DEFAULT_DEVICE
    resume: bool = False
    max_time: float | None = None
    curve_every: int = 10
    compile: bool = False
    precision: Precision = "fp32"

    def __post_init__(self) -> None:
        if isinstance(self.max_time, str):
            self.max_time = parse_max_time(self.max_time)
        self._check_choices()


#: Section name → its settings class, in the order `TrainConfig` holds them.
SECTIONS: dict[str, type[_Section]] = {
    "dataset": DataSettings,
    "network": NetworkSettings,
    "trainer": TrainerSettings,
    "ensembles": EnsembleSettings,
    "run": RunSettings,
}
#: Setting name → the section that holds it.
_SECTION_OF: dict[str, str] = {f.name: section for section, cls in SECTIONS.items()
                               for f in fields(cls)}  # type: ignore[arg-type]
#: The flat order of ``config.yaml`` and checkpoints' ``extra.config``, as runs have written
#: it so far (files stay comparable line by line).
_FLAT_ORDER = (
    "data", "target", "out", "val_data", "val_fraction", "test_data", "test_fraction", "arch",
    "deeper", "layers", "epochs", "batch_size", "lr", "seed", "per_atom", "init_from",
    "early_stop", "max_time", "device", "cache_dir", "resume", "cv", "ensemble", "members",
    "member", "oof", "local_neighbors", "model", "cutoff", "max_neighbors", "graph",
    "distance_scale", "scale_targets", "lr_monitor", "keep", "lr_schedule", "weight_decay",
    "lr_factor", "lr_patience", "min_lr", "lr_threshold", "curve_every", "compile",
    "precision",
)


@dataclass
class TrainConfig:
    """Everything a training run needs, in sections; the CLI, a YAML file and tests fill it.

    Build it from settings by name with `from_dict` (flat or sectioned) or from the sections
    themselves; change settings by name with `replace`. ``network.layers`` and
    ``trainer.lr`` left None take the architecture's defaults here.

    Attributes:
        dataset, network, trainer, ensembles, run: the sections (see their classes).
    """

    dataset: DataSettings = field(default_factory=DataSettings)
    network: NetworkSettings = field(default_factory=NetworkSettings)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    ensembles: EnsembleSettings = field(default_factory=EnsembleSettings)
    run: RunSettings = field(default_factory=RunSettings)

    def __post_init__(self) -> None:
        defaults = ARCH_DEFAULTS[self.network.arch]
        if self.network.layers is None:
            self.network.layers = int(defaults["layers"][1 if self.network.deeper else 0])
        if self.trainer.lr is None:
            self.trainer.lr = float(defaults["lr"])

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "config") -> TrainConfig:
        """Build from settings by name, flat or sectioned (`flat_settings`); the missing ones
        take their defaults.

        Raises:
            DeepergatError: an unknown setting (``source`` names where it came from).
            SettingError: a value out of its choices or range.
        """
        by_section: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for name, value in flat_settings(values, source=source).items():
            by_section[_SECTION_OF[name]][name] = value
        return cls(**{name: SECTIONS[name](**kw) for name, kw in by_section.items()})

    def to_dict(self) -> dict[str, Any]:
        """Every setting by name, flat, in the order runs write them (``config.yaml``)."""
        sections = {name: getattr(self, name) for name in SECTIONS}
        return {name: copy.deepcopy(getattr(sections[_SECTION_OF[name]], name))
                for name in _FLAT_ORDER}

    def replace(self, **settings: Any) -> TrainConfig:
        """A copy with the given settings (by name) changed, checked like `from_dict`."""
        return TrainConfig.from_dict({**self.to_dict(), **settings}, source="replace")

    def validate(self) -> None:
        """Check every setting again (after changing a section in place).

        Raises:
            SettingError: a value out of its choices or range.
        """
        TrainConfig.from_dict(self.to_dict())


def flat_settings(values: Mapping[str, Any], *, source: str = "config") -> dict[str, Any]:
    """Settings by name from a flat mapping (``epochs: 300``), a sectioned one
    (``trainer: {epochs: 300}``) or a mix; dashes in names read as underscores.

    Raises:
        DeepergatError: an unknown setting or section, a section that is not a mapping, or a
            setting given twice.
    """
    flat: dict[str, Any] = {}

    def put(key: Any, value: Any, section: str | None = None) -> None:
        name = str(key).replace("-", "_")
        if name not in _SECTION_OF or (section is not None and _SECTION_OF[name] != section):
            where = f" in section {section!r}" if section is not None else ""
            known = sorted(n for n, s in _SECTION_OF.items() if section in (None, s))
            raise DeepergatError(f"{source}: unknown setting {key!r}{where}; known: "
                                 f"{', '.join(known)}")
        if name in flat:
            raise DeepergatError(f"{source}: setting {name!r} is given twice")
        flat[name] = value

    for key, value in values.items():
        if key in SECTIONS:
            if not isinstance(value, Mapping):
                raise DeepergatError(f"{source}: section {key!r} must be a mapping of "
                                     "settings")
            for sub, v in value.items():
                put(sub, v, key)
        else:
            put(key, value)
    return flat


def parse_max_time(text: str) -> float:
    """``HH:MM`` (or ``HH:MM:SS``) → seconds.

    Raises:
        SettingError: any other text.
    """
    parts = str(text).strip().split(":")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) not in (2, 3) or any(n < 0 for n in nums):
        raise SettingError(f"{{max_time}} {text!r}: expected HH:MM, e.g. 23:30")
    h, m, s = ([*nums, 0])[:3]
    return float(h * 3600 + m * 60 + s)


#: The defaults, for the command line.
DEFAULTS = TrainConfig()
