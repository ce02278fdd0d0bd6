"""Predictions of structure files and stores with any model file, and the bundled models.

MODEL arguments follow `deepergat.export.resolve`'s one rule (a file; a run folder: its
ensemble.ckpt or best.ckpt; else a bundled model, whose ``model.onnx`` predicts): every
model runs through `deepergat.export.load`, one `Predictor` whatever the file kind.
Structures go through the same graphs as training (the model's graph settings) and get the
status codes and flags of docs/design.md §9, computed by the screen's own featurizer
(`deepergat.screening.pipeline.featurize`), so that ``deepergat predict`` and
``deepergat-screen`` report the same statuses and flags; a bad structure is a row with its
status and no value, never a crash, and a batch that fails for memory is predicted again in
halves, down to the single structure (status 10).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepergat.contract import (
    DEFAULT_MAX_ATOMS,
    DEFAULT_OVERLAP_THRESHOLD,
    MAX_TRANSLATION_ATOMS,
    MAX_Z,
    Status,
)
from deepergat.errors import DeepergatError, SettingError, literal

__all__ = ["PredictionRow", "load_predictor", "predict_inputs"]

log = logging.getLogger(__name__)

_CHUNK = 1024
#: `predict_inputs` predicts ``batch_size`` structures a model call, however many atoms: no
#: atom or edge budget cuts them further.
_NO_BUDGET = 1 << 62


def load_predictor(model: str | os.PathLike[str], *, device: str = "cpu",
                   trust: bool = False) -> Any:
    """The `deepergat.export.Predictor` of a MODEL argument: a checkpoint (eager PyTorch), an
    exported file (``.onnx``: OpenVINO or ONNX Runtime on a CPU, see `deepergat.export.load`;
    ``.pt``, ``.pt2``) or a bundled name (its ONNX file). ``trust`` allows files whose loading
    runs code (`deepergat.export.load`).

    Raises:
        DeepergatError: see `deepergat.export.load`.
    """
    from deepergat.export import load
    from deepergat.export.predictor import warn_cell_dependent

    predictor = load(model, device=device, trust=trust)  # type: ignore[arg-type]
    warn_cell_dependent(predictor.graph, str(model))
    return predictor


@dataclass
class PredictionRow:
    """One structure's result: id, [T] values (NaN unless status is 0), status code, for an
    ensemble the [T] calibrated spread (else None), and its flag bits (docs/design.md §9)."""

    id: str
    values: np.ndarray
    status: int
    std: np.ndarray | None = None
    flags: int = 0


def _is_store(path: Path) -> bool:
    if path.suffix.lower() not in (".h5", ".hdf5") or not path.is_file():
        return False
    import h5py

    from deepergat.io.store import STORE_FORMAT, format_attribute

    try:
        with h5py.File(path, "r") as f:
            return format_attribute(f, path) == STORE_FORMAT
    except OSError:
        return False


def _featurize_settings(model: Any, *, max_atoms: int, overlap_threshold: float) -> Any:
    """The screen's featurizer settings for this model and these checks."""
    from deepergat.screening.pipeline import FeaturizeSettings

    graph = model.metadata.graph
    return FeaturizeSettings(
        cutoff=graph.cutoff, max_neighbors=graph.max_neighbors, max_atoms=int(max_atoms),
        max_z=MAX_Z, overlap_threshold=float(overlap_threshold),
        seen_elements=tuple(sorted(model.elements)), graph=graph.construction,
        translation_max_atoms=int(graph.translations.get("translation_max_atoms",
                                                         MAX_TRANSLATION_ATOMS)),
        batch_atoms=_NO_BUDGET, batch_edges=_NO_BUDGET,
    )


def _predict_store(model: Any, path: Path, *, max_atoms: int, overlap_threshold: float,
                   batch_size: int) -> Iterator[PredictionRow]:
    from deepergat.io.store import Store

    settings = _featurize_settings(model, max_atoms=max_atoms,
                                   overlap_threshold=overlap_threshold)
    with Store(path) as store:
        for chunk in store.iter_chunks(_CHUNK):
            for a in range(0, len(chunk), batch_size):
                part = chunk.select(np.arange(a, min(a + batch_size, len(chunk))))
                status, flags, values, std, _ = _predict_part(model, part, settings)
                for k in range(len(part)):
                    yield PredictionRow(part.ids[k], values[k], int(status[k]),
                                        None if std is None else std[k], int(flags[k]))


_Part = tuple[np.ndarray, np.ndarray, np.ndarray, "np.ndarray | None", "np.ndarray | None"]


def _predict_part(model: Any, part: Any, settings: Any, *, embeddings: bool = False) -> _Part:
    """[m] status, [m] flags, [m, T] values, [m, T] spread (None for a single model) and
    with ``embeddings`` [m, D] pooled vectors (else None) of a batch; NaN where the status is
    not 0. A batch that fails for memory is predicted again in halves, down to the single
    structure, which gets status 10 when a one-atom probe structure then predicts."""
    from deepergat.screening.pipeline import memory_failure

    try:
        return _predict_once(model, part, settings, embeddings=embeddings)
    except Exception as e:
        if isinstance(e, DeepergatError) or not memory_failure(e):
            raise
        m = len(part)
        if m > 1:
            halves = [_predict_part(model, part.select(np.arange(a, b)), settings,
                                    embeddings=embeddings)
                      for a, b in ((0, m // 2), (m // 2, m))]
            return tuple(None if x[0] is None else np.concatenate(x)  # type: ignore[return-value]
                         for x in zip(*halves, strict=True))
        _check_probe(model, settings, e)
        log.warning("structure %r failed for memory even alone: status %d", part.ids[0],
                    int(Status.OUT_OF_MEMORY))
        from deepergat.graphs import structure_flags

        values = np.full((1, len(model.targets)), np.nan, dtype=np.float32)
        flags = structure_flags(part, seen_elements=settings.seen_elements, graph=settings.graph,
                                translation_max_atoms=settings.translation_max_atoms)
        return (np.full(1, int(Status.OUT_OF_MEMORY), np.int64), flags, values,
                values.copy() if model.has_std else None,
                np.full((1, model.metadata.embedding_dim), np.nan, np.float32) if embeddings
                else None)


def _predict_once(model: Any, part: Any, settings: Any, *, embeddings: bool = False) -> _Part:
    """`_predict_part` without the retries."""
    from deepergat.screening.pipeline import featurize

    feat = featurize(part, settings)
    values = np.full((len(part), len(model.targets)), np.nan, dtype=np.float32)
    std = values.copy() if model.has_std else None
    emb = (np.full((len(part), model.metadata.embedding_dim), np.nan, dtype=np.float32)
           if embeddings else None)
    status = feat.status.astype(np.int64)
    for g in feat.graphs:
        if not len(g.rows):
            continue
        out = model.predict(g.inputs)
        values[g.rows] = out.prediction
        if emb is not None:
            emb[g.rows] = out.embedding
        bad = ~np.isfinite(out.prediction).all(1)
        if std is not None and out.std is not None:
            std[g.rows] = out.std
            bad |= ~np.isfinite(out.std).all(1)
            std[g.rows[bad]] = np.nan
        status[g.rows[bad]] = Status.NONFINITE_PREDICTION
        values[g.rows[bad]] = np.nan
        if emb is not None:
            emb[g.rows[bad]] = np.nan
    return status, feat.flags, values, std, emb


def _check_probe(model: Any, settings: Any, error: BaseException) -> None:
    """Raises when a one-atom probe structure fails for memory too: the failure is then not
    the structure's."""
    from deepergat.screening.pipeline import memory_failure, probe_batch

    try:
        _predict_once(model, probe_batch(settings), settings)
    except Exception as e:
        if isinstance(e, DeepergatError) or not memory_failure(e):
            raise
        raise DeepergatError(
            f"the model runs out of memory even on a one-atom structure ({error}); free "
            "memory, or predict on a machine with more") from None


def predict_inputs(
    model_path: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    *,
    batch_size: int = 100,
    max_atoms: int = DEFAULT_MAX_ATOMS,
    overlap_threshold: float = DEFAULT_OVERLAP_THRESHOLD,
    device: str = "cpu",
    on_skipped: Callable[[int, str], None] | None = None,
    trust: bool = False,
    id_from: str = "stem",
) -> tuple[Any, Iterator[PredictionRow]]:
    """Predict structure files (any format `deepergat pack` reads) and stores.

    Structure files are packed into a temporary store first (unreadable ones are skipped and
    reported through ``on_skipped(count, description)``, the description naming the first
    few with their reasons (``a.cif (unreadable: …); b.cif:block 1 (data_x) (…); and N
    more``); ids as ``deepergat pack --id-from`` makes them); stores are read as they are.

    Returns:
        (the loaded `deepergat.export.Predictor`, an iterator of `PredictionRow` in input
        order).
    """
    model = load_predictor(model_path, device=device, trust=trust)
    paths = [Path(p) for p in inputs]
    _check_inputs(paths)
    settings = dict(max_atoms=max_atoms, overlap_threshold=overlap_threshold,
                    batch_size=batch_size)

    def rows() -> Iterator[PredictionRow]:
        files: list[Path] = []  # consecutive structure files are packed together
        for p in paths:
            if _is_store(p):
                yield from _predict_files(model, files, settings, id_from=id_from,
                                          on_skipped=on_skipped)
                files.clear()
                yield from _predict_store(model, p, **settings)
            else:
                files.append(p)
        yield from _predict_files(model, files, settings, id_from=id_from,
                                  on_skipped=on_skipped)

    return model, rows()


def _check_inputs(paths: list[Path]) -> None:
    """Every input exists (or is a glob), and an ``.h5`` file is a structure store."""
    if not paths:
        raise DeepergatError("no inputs given")
    for p in paths:
        if not p.exists() and not any(ch in str(p) for ch in "*?["):
            raise DeepergatError(f"{p}: no such file or folder")
        if p.suffix.lower() in (".h5", ".hdf5") and p.is_file() and not _is_store(p):
            from deepergat.io.store import Store

            Store(p).close()  # raises the store's own message (truncated, another kind, ...)
            raise DeepergatError(f"{p}: not a deepergat structure store")


def _predict_files(model: Any, files: list[Path], settings: dict[str, Any], *, id_from: str,
                   on_skipped: Callable[[int, str], None] | None) -> Iterator[PredictionRow]:
    """Rows of structure files, packed into a temporary store first (skipped files reported
    through ``on_skipped``)."""
    if not files:
        return
    from deepergat.io.pack import describe_skipped

    try:
        tmp_dir = tempfile.TemporaryDirectory(prefix="deepergat-predict-")
    except OSError as e:
        raise _temporary_space_error(e) or e from None
    with tmp_dir as tmp:
        store = Path(tmp) / "inputs.h5"
        result = _pack_files(files, store, id_from=id_from)
        if result.n_skipped and on_skipped is not None:
            listed = _skipped_items(store)
            what = describe_skipped(result.skipped)  # "2 unreadable, 1 disordered"
            if listed:  # each named with its reason; counts too when some are not
                what = f"{what}: {listed}" if result.n_skipped > _NAMED else listed
            on_skipped(result.n_skipped, what)
        yield from _predict_store(model, store, **settings)


def _pack_files(files: list[Path], store: Path, *, id_from: str) -> Any:
    """`deepergat.io.pack.pack` of ``files`` into the temporary ``store``; its errors name the
    user's files (and settings), never the temporary store."""
    from deepergat.io.pack import NothingPacked, describe_skipped, pack

    try:
        return pack([str(f) for f in files], store, workers=1, skip_bad=True,
                    id_from=id_from)  # type: ignore[arg-type]
    except NothingPacked as e:
        listed = _skipped_items(store)
        if listed:
            raise DeepergatError(f"no structure could be read from the inputs: {listed}") from None
        names = ", ".join(str(f) for f in files[:_NAMED])
        more = f" and {len(files) - _NAMED} more" if len(files) > _NAMED else ""
        raise DeepergatError(f"no structure could be read from {names}{more} "
                             f"({describe_skipped(e.skipped) or 'nothing found'})") from None
    except (DeepergatError, OSError, RuntimeError) as e:
        space = _temporary_space_error(e)
        if space is not None:  # the temporary store's disk, not the user's files
            raise space from None
        if isinstance(e, SettingError):
            raise SettingError(e.template.replace(literal(f"{store}: "), "")) from None
        if isinstance(e, DeepergatError):
            raise DeepergatError(str(e).replace(f"{store}: ", "")) from None
        raise


#: Skipped inputs named in a message; the rest are counted ("and N more").
_NAMED = 5


def _skipped_items(store: Path) -> str:
    """The inputs `deepergat.pack.pack` skipped while packing ``store`` (from its
    ``<stem>.skipped.csv``), for a message: the first `_NAMED` as ``source (reason)`` — the
    file, ``file:block k (data_name)``, ``file:frame k``, ``file:row k`` — then "and N more";
    ``""`` when the list cannot be read."""
    import csv

    listed = store.with_name(store.stem + ".skipped.csv")
    try:
        with open(listed, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.reader(fh)][1:]
    except (OSError, csv.Error, UnicodeDecodeError):
        return ""
    items = []
    for row in rows[:_NAMED]:
        source = row[0] if row else "?"
        reason = " ".join((row[1] if len(row) > 1 else "").split())
        if len(reason) > 80:
            reason = reason[:77] + "..."
        items.append(f"{source} ({reason})" if reason else source)
    more = f"; and {len(rows) - _NAMED} more" if len(rows) > _NAMED else ""
    return "; ".join(items) + more


def _temporary_space_error(e: BaseException) -> DeepergatError | None:
    """The one-line error for a file-system failure (a full disk, a quota, a read-only
    folder) while packing structure files into the temporary store, naming the temporary
    folder and ``TMPDIR``; None for other errors."""
    from deepergat.errors import environment_error, is_write_failure

    cause = e.__cause__ if isinstance(e, DeepergatError) else e
    if cause is None or not is_write_failure(cause):  # e.g. an input that cannot be read
        return None
    return environment_error(
        cause, path=tempfile.gettempdir(),
        fix="predict packs structure files into a temporary store there: free space or set "
            "TMPDIR to another folder",
    )
