"""Checkpoints (``.ckpt``): a plain dict saved with ``torch.save``, loadable with
``torch.load(weights_only=True)``.

The dict carries a checkpoint-format integer (`CHECKPOINT_FORMAT`, not the package version: a
release must not orphan old checkpoints), the model's constructor arguments, the graph settings,
target names, units and scaling, the elements seen in training, the training store's content
digest and the weights; a training checkpoint adds optimizer, scheduler, epoch and RNG states
(tensors and plain types only). `load_checkpoint` rebuilds the model from the saved arguments
(`deepergat.nn.build`); `model_metadata` gives the file's `deepergat.metadata.ModelMetadata`
(also `Checkpoint.metadata`), which exported files carry on.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deepergat._version import __version__
from deepergat.architectures import architecture_name
from deepergat.contract import CHECKPOINT_KIND, translation_rule
from deepergat.errors import DeepergatError
from deepergat.graphs import graph_settings
from deepergat.metadata import GraphSettings, ModelMetadata, WeightsView, check_weights
from deepergat.system.files import atomic_path, file_sha256

from .build import build_from_config
from .ensemble import DeeperGATGNNEnsemble
from .graphmodel import GraphModel

__all__ = [
    "ARCH_FORMAT",
    "CHECKPOINT_FORMAT",
    "ENSEMBLE_FORMAT",
    "Checkpoint",
    "atomic_save",
    "file_sha256",
    "load_checkpoint",
    "make_checkpoint",
    "metadata",
    "model_metadata",
    "read_checkpoint",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

#: Bumped only when the dict's layout changes incompatibly: DeeperGATGNN single models are
#: written as format 1, their ensembles (``members`` in the constructor arguments, which older
#: readers cannot rebuild) as `ENSEMBLE_FORMAT`, and every other architecture (an ``arch`` or
#: ``batch_norm`` argument: the MatDeepLearn baselines, the paper's GATGNN), single or ensemble, as
#: `ARCH_FORMAT`.
CHECKPOINT_FORMAT = 1
ENSEMBLE_FORMAT = 2
ARCH_FORMAT = 3
_READABLE = (CHECKPOINT_FORMAT, ENSEMBLE_FORMAT, ARCH_FORMAT)
_KIND = CHECKPOINT_KIND


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model (eval mode, CPU) and its metadata.

    Attributes:
        model: the model (`deepergat.nn.registry` names the architectures, or an ensemble of
            one) with its weights.
        path: where it was read from.
        data: the whole checkpoint dict (training state included, if any).
    """

    model: GraphModel | DeeperGATGNNEnsemble
    path: Path
    data: dict[str, Any] = field(repr=False)

    @functools.cached_property
    def metadata(self) -> ModelMetadata:
        """The checkpoint's `ModelMetadata` (targets, graph settings, elements, …;
        ``source_sha256`` this file's digest), as `model_metadata` gives it.

        Raises:
            DeepergatError: metadata of the wrong types.
        """
        return model_metadata(self.data, where=str(self.path)).replace(
            source_sha256=file_sha256(self.path))


def make_checkpoint(
    model: GraphModel | DeeperGATGNNEnsemble,
    *,
    targets: Sequence[str],
    units: Sequence[str],
    elements: Sequence[int],
    store_digest: str = "",
    training: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    calibration: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict of a model (or an ensemble).

    Args:
        model: the model; its ``config`` is saved as constructor arguments.
        targets, units: [T] target names and units, in the model's output order.
        elements: atomic numbers seen in training.
        store_digest: content digest of the training store.
        training: optimizer/scheduler state, epoch, RNG states (tensors and plain types).
        extra: more plain metadata (e.g. the run's config).
        calibration: an ensemble's spread calibration (``std_scale`` per target and how it
            was fitted: `deepergat.training.ensemble`); it travels into exported files' metadata.
    """
    config = dict(model.config)
    if len(targets) != config["targets"] or len(units) != config["targets"]:
        raise ValueError("targets and units must have one entry per model output")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    graph = graph_settings(config)
    return {
        "kind": _KIND,
        "format": checkpoint_format(config),
        "created_by": f"deepergat {__version__}",
        "model": config,
        "graph": {**graph, **translation_rule(graph["construction"])},
        "targets": [str(t) for t in targets],
        "units": [str(u) for u in units],
        "target_mean": [float(v) for v in model.target_mean.tolist()],
        "target_std": [float(v) for v in model.target_std.tolist()],
        "elements": sorted(int(z) for z in elements),
        "store_digest": str(store_digest),
        "state_dict": state,
        "training": dict(training) if training is not None else None,
        "extra": dict(extra or {}),
        **({"calibration": dict(calibration)} if calibration is not None else {}),
    }


def checkpoint_format(config: Mapping[str, Any]) -> int:
    """The checkpoint format a model's constructor arguments need (see `CHECKPOINT_FORMAT`)."""
    if "arch" in config or "batch_norm" in config:
        return ARCH_FORMAT
    return ENSEMBLE_FORMAT if "members" in config else CHECKPOINT_FORMAT


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` through ``<path>.tmp`` (`atomic_path`): readers never see half a file."""
    path = Path(path)
    with atomic_path(path, tmp=path.with_name(path.name + ".tmp")) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(path: str | os.PathLike[str], model: GraphModel | DeeperGATGNNEnsemble,
                    **kwargs: Any) -> None:
    """`make_checkpoint` and `atomic_save` in one call."""
    atomic_save(make_checkpoint(model, **kwargs), path)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint dict, validated.

    Raises:
        DeepergatError: missing file, not a checkpoint, truncated, an unknown format, graph
            settings this version would build differently (`GraphSettings.from_dict`), or
            metadata its weights contradict (`deepergat.metadata.check_weights`).
    """
    path = Path(path)
    if not path.is_file():
        raise DeepergatError(f"{path}: no such checkpoint file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged pickle raises anything (KeyError, EOFError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeepergatError(
            f"{path}: not a readable deepergat checkpoint (truncated or another kind of file: "
            f"{first})"
        ) from None
    if not isinstance(data, dict) or data.get("kind") != _KIND:
        raise DeepergatError(
            f"{path}: not a deepergat checkpoint (a torch file without the checkpoint fields); "
            "train one with `deepergat train`"
        )
    fmt = data.get("format")
    if fmt not in _READABLE:
        raise DeepergatError(
            f"{path}: checkpoint format {fmt!r} is not supported (this deepergat {__version__} "
            f"reads formats {', '.join(map(str, _READABLE))}); use a matching deepergat version"
        )
    missing = [k for k in ("model", "graph", "targets", "units", "state_dict") if k not in data]
    if missing:
        raise DeepergatError(f"{path}: damaged checkpoint: missing {', '.join(missing)}")
    GraphSettings.from_dict(data["graph"], where=str(path))  # e.g. another translation rule
    state = data["state_dict"]
    if not isinstance(state, Mapping) or not all(hasattr(v, "shape") for v in state.values()):
        raise DeepergatError(f"{path}: damaged checkpoint: state_dict is not a dict of tensors")
    try:
        meta = model_metadata(data, where=str(path))
    except (KeyError, TypeError, ValueError) as e:
        raise DeepergatError(f"{path}: damaged checkpoint: {type(e).__name__} {e}") from None
    # metadata the weights contradict (graph settings, target scaling, ...) would build other
    # graphs or report other numbers than the model computes with
    check_weights(meta, WeightsView.of(state), where=str(path))
    return data


def build_model(data: Mapping[str, Any]) -> GraphModel | DeeperGATGNNEnsemble:
    """A model rebuilt from a checkpoint dict's constructor arguments and weights (eval mode):
    a `DeeperGATGNNEnsemble` when the arguments name ``members``."""
    model = build_from_config(dict(data["model"]))
    model.load_state_dict(data["state_dict"])
    model.eval()
    return model


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint and rebuild its model (CPU, eval mode).

    Raises:
        DeepergatError: see `read_checkpoint`; also weights that do not fit the saved arguments.
    """
    data = read_checkpoint(path)
    try:
        model = build_model(data)
    except (TypeError, RuntimeError, KeyError) as e:
        raise DeepergatError(f"{path}: damaged checkpoint: {str(e).splitlines()[0]}") from None
    return Checkpoint(model=model, path=Path(path), data=data)


def model_metadata(path_or_data: str | os.PathLike[str] | Mapping[str, Any], *,
                   where: str = "checkpoint") -> ModelMetadata:
    """The metadata of a checkpoint (docs/design.md §7, §8), typed; exported files carry it on.

    Args:
        path_or_data: the checkpoint file, or its dict (`read_checkpoint`).
        where: the file a dict came from, for messages.

    Returns:
        `ModelMetadata`: ``kind`` `CHECKPOINT_KIND`, ``format`` (the checkpoint format),
        ``architecture`` (the paper's name: "DeeperGATGNN", "CGCNN", "DeeperSchNet", …),
        ``model`` (constructor arguments; ``members`` K for an ensemble), ``graph``,
        ``targets`` (name, units, mean, std), ``elements``, ``store_digest``,
        ``package_version``, ``source_sha256`` (of the checkpoint file; empty when given a
        dict) and for an ensemble ``calibration``.

    Raises:
        DeepergatError: see `read_checkpoint`; also metadata of the wrong types.
    """
    if isinstance(path_or_data, Mapping):
        data, sha = path_or_data, ""
    else:
        data, sha = read_checkpoint(path_or_data), file_sha256(path_or_data)
        where = str(path_or_data)
    doc = {
        "kind": CHECKPOINT_KIND,
        "format": data["format"],
        "architecture": architecture_name(dict(data["model"])),
        "model": dict(data["model"]),
        "graph": dict(data["graph"]),
        "targets": [
            {"name": n, "units": u, "mean": float(m), "std": float(s)}
            for n, u, m, s in zip(
                data["targets"], data["units"], data["target_mean"], data["target_std"],
                strict=True,
            )
        ],
        "elements": list(data["elements"]),
        "store_digest": data.get("store_digest", ""),
        "package_version": __version__,
        "source_sha256": sha,
        **({"calibration": dict(data["calibration"])} if data.get("calibration") else {}),
    }
    return ModelMetadata.from_dict(doc, where=where)


def metadata(path_or_data: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """`model_metadata` as its JSON-ready document (`ModelMetadata.to_dict`)."""
    return model_metadata(path_or_data).to_dict()
