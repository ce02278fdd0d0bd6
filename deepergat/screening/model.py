"""The model of a screen: resolved, loaded, checked on one probe structure.

Without a model argument a screen uses the bundled `DEFAULT_MODEL` (docs/design.md §2, MODEL
arguments). A rank loads its own predictor; a merge only needs the model file's sha256.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepergat import export
from deepergat.contract import MAX_Z
from deepergat.errors import DeepergatError, SettingError
from deepergat.export.resolve import bundled_models, resolve_model
from deepergat.graphs import BatchEdges, NeighborList
from deepergat.io.store import StructureBatch
from deepergat.metadata import ModelMetadata, TargetInfo
from deepergat.system.devices import visible_gpus
from deepergat.system.files import file_sha256

from .options import StructureChecks
from .pipeline import FeaturizeSettings

__all__ = [
    "DEFAULT_MODEL",
    "LoadedModel",
    "load_model",
    "model_identity",
    "model_path",
    "runs_compiled",
]

#: The bundled model screened with when no model is given (else the first bundled one).
DEFAULT_MODEL = "perovskite-heat-single"


@dataclass(frozen=True)
class LoadedModel:
    """The loaded model of a rank.

    Attributes:
        predictor: the `deepergat.export.Predictor`.
        name: the model's name or resolved path.
        sha256: of the file loaded.
        metadata: the predictor's metadata.
        targets: [T] its targets, in output order.
        settings: the featurizer's settings: the model's graph and the run's checks.
        embedding_dim: width D of the embeddings.
        spread: whether the model gives a calibrated ``std`` (an ensemble).
    """

    predictor: Any
    name: str
    sha256: str
    metadata: ModelMetadata
    targets: tuple[TargetInfo, ...]
    settings: FeaturizeSettings
    embedding_dim: int
    spread: bool = False


def _model_name(model: str) -> str:
    p = Path(model)
    return str(p.resolve()) if p.exists() else model


def _default_model() -> str:
    """The bundled model a screen uses without a model argument."""
    names = bundled_models()
    if not names:
        raise SettingError("no bundled model is installed; pass {model} FILE")
    return DEFAULT_MODEL if DEFAULT_MODEL in names else names[0]


def model_path(model: str | None) -> Path:
    """The file `deepergat.export.load` loads for a model argument (None: the default)."""
    return resolve_model(model if model is not None else _default_model())


def model_identity(model: str | None) -> tuple[str, str]:
    """(name, sha256) of a model without loading it (a merge needs no more): the sha256 of the
    file that `deepergat.export.load` would load, as `Predictor.sha256` is."""
    name = model if model is not None else _default_model()
    return _model_name(name), file_sha256(model_path(name))


def runs_compiled(model: str | None, device: str, *, compile_first: bool = False) -> bool:
    """Whether a screen on ``device`` (``auto``, ``cpu``, ``cuda``) would run ``model`` compiled
    on this machine (`deepergat.export.would_run_compiled`, or ``compile_first``: the screen
    compiles it before its workers start): a cheap look that never fails, for preparing the
    worker processes (a model that does not load is reported by the load)."""
    if device == "cuda" or (device == "auto" and visible_gpus()):
        return False
    try:
        path = model_path(model)
        return (compile_first and path.suffix == ".onnx") or export.would_run_compiled(path)
    except Exception:
        return False


def load_model(model: str | None, *, device: tuple[str, int], threads: int | None,
               checks: StructureChecks, trust: bool = False) -> LoadedModel:
    """Load the predictor, read its metadata and run one probe structure through it.

    Args:
        model: a model file or bundled name (None: the default bundled model).
        device: (``auto``/``cpu``/``cuda``, device id) from `pick_device`.
        threads: predictor CPU threads.
        checks: the run's status checks.
        trust: load a model file that runs code (`deepergat.export.load`).

    Raises:
        DeepergatError: a file that does not load, or fails on the probe, naming it.
    """
    if model is None:
        model = _default_model()
    try:
        predictor = export.load(model, device=device[0], device_id=device[1], threads=threads,
                                trust=trust)
    except DeepergatError:
        raise
    except Exception as e:  # a foreign or damaged file the loader did not recognise
        raise DeepergatError(f"{model}: cannot load the model: {e}") from None
    settings = FeaturizeSettings(
        cutoff=predictor.cutoff, max_neighbors=predictor.max_neighbors,
        max_atoms=int(checks.max_atoms), max_z=MAX_Z,
        overlap_threshold=float(checks.overlap_threshold),
        seen_elements=tuple(sorted(predictor.elements)), graph=predictor.graph,
    )
    targets = predictor.metadata.targets
    embedding_dim, spread = _probe(model, predictor, settings, len(targets))
    return LoadedModel(
        predictor=predictor, name=_model_name(model), sha256=str(predictor.sha256),
        metadata=predictor.metadata, targets=targets, settings=settings,
        embedding_dim=embedding_dim, spread=spread,
    )


def _probe(model: str, predictor: Any, settings: FeaturizeSettings, n_targets: int
           ) -> tuple[int, bool]:
    """Run one small crystal through the predictor: it runs, and gives T predictions and a
    D-wide embedding. Returns (D, whether it gives a spread).

    The probe's two atoms are each other's one neighbor, given rather than searched: a rank
    whose worker processes search and predict never loads the search kernel (~0.6 s)."""
    z = settings.seen_elements[0] if settings.seen_elements else 14
    probe = StructureBatch.from_structures([{
        "id": "probe", "lattice": np.eye(3) * 3.0, "pbc": (True, True, True),
        "atomic_numbers": [z, z], "positions": [[0.0, 0.0, 0.0], [1.5, 1.5, 1.5]],
    }])
    edges = NeighborList(center=np.array([0, 1]), neighbor=np.array([1, 0]),
                         distance=np.full(2, 1.5 * np.sqrt(3.0)),
                         image=np.zeros((2, 3), np.int64))
    g = BatchEdges(batch=probe, edges=edges, status=np.zeros(1, np.uint8),
                   width=np.array([2])).pad()
    try:
        out = predictor.predict(g.inputs)
    except Exception as e:  # any runtime failure is a model-file problem
        raise DeepergatError(f"{model}: the model failed on a probe structure: {e}") from None
    pred, emb = np.asarray(out.prediction), np.asarray(out.embedding)
    spread = out.std is not None
    if (pred.shape != (1, n_targets) or emb.ndim != 2 or emb.shape[0] != 1
            or (spread and np.shape(out.std) != pred.shape)):
        raise DeepergatError(
            f"{model}: the model returned prediction {pred.shape} and embedding {emb.shape} for "
            f"one crystal, expected (1, {n_targets}) and (1, D)"
        )
    return int(emb.shape[1]), spread
