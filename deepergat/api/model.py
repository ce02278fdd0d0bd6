"""One call from structures to a table: ``deepergat.load(...).predict(structures)``.

`load` takes a bundled model name, a checkpoint, a run folder or an exported file (the MODEL
rule of `deepergat.export.resolve`; trust rules as `deepergat.export.load`) and returns a
`Model`. `Model.predict` takes pymatgen ``Structure``/``Molecule`` objects, ASE ``Atoms``, paths
of structure files or folders (any format ``deepergat pack`` reads) or structure stores, in
batches, and returns a pandas DataFrame: ``id``, ``formula``, each target, ``<target>_std``
(an ensemble's calibrated spread), ``status``, ``flags`` and with ``embeddings=True`` an
``embedding`` column — the numbers, statuses and flags ``deepergat predict`` and
``deepergat-screen`` give (the same featurizer, checks and predictor).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepergat.contract import DEFAULT_MAX_ATOMS, DEFAULT_OVERLAP_THRESHOLD
from deepergat.elements import compositions
from deepergat.errors import DeepergatError
from deepergat.io.store import Store, StructureBatch

from .predict import (
    _featurize_settings,
    _is_store,
    _pack_files,
    _predict_part,
    load_predictor,
)

__all__ = ["Model", "load"]

log = logging.getLogger(__name__)

#: Structures converted and predicted at once by default.
DEFAULT_BATCH_SIZE = 256


def load(model: str | os.PathLike[str], *, device: str = "auto", trust: bool = False
         ) -> Model:
    """The model a MODEL argument names, ready to predict structures.

    Args:
        model: a bundled model name (``"perovskite-heat"``), a checkpoint, a run folder or
            an exported file (``.onnx``, ``.pt2``; ``.pt`` and ``.aoti.pt2`` with ``trust``).
        device: ``"auto"`` (a GPU when one is visible and usable, else the CPU), ``"cpu"``,
            ``"cuda"`` or ``"cuda:N"``.
        trust: allow a file whose loading runs code from it (TorchScript, AOTInductor).

    Raises:
        DeepergatError: an unknown model, a damaged file, a file that needs ``trust``.
    """
    return Model(load_predictor(model, device=device, trust=trust))


class Model:
    """A loaded model: `predict` structures into a DataFrame.

    Attributes:
        predictor: the `deepergat.export.Predictor` (array-level ``predict(inputs)``).
        metadata: its `deepergat.metadata.ModelMetadata` (graph settings, targets, units).
    """

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        self.metadata = predictor.metadata

    @property
    def targets(self) -> list[str]:
        """The targets, in output order."""
        return list(self.predictor.targets)

    @property
    def units(self) -> list[str]:
        """Each target's units."""
        return list(self.predictor.units)

    def __repr__(self) -> str:
        kind = f"{self.metadata.members}-member ensemble" if self.predictor.has_std else "model"
        return (f"<deepergat {kind} {self.metadata.architecture_name} of "
                f"{', '.join(self.targets)} from {self.predictor.path}>")

    def predict(self, structures: Any, *, batch_size: int = DEFAULT_BATCH_SIZE,
                ids: Sequence[str] | None = None, embeddings: bool = False,
                max_atoms: int = DEFAULT_MAX_ATOMS,
                overlap_threshold: float = DEFAULT_OVERLAP_THRESHOLD) -> Any:
        """Predict structures; one row each, in the order given.

        Args:
            structures: a pymatgen ``Structure`` or ``Molecule``, an ASE ``Atoms``, a path (a
                structure file, a folder of them, a ``.h5`` structure store), or a list of any
                of these.
            batch_size: structures converted and predicted at once.
            ids: ids of in-memory structures (default ``"0"``, ``"1"``, …); files keep the ids
                ``deepergat pack`` gives them, stores their own.
            embeddings: add an ``embedding`` column ([D] float32 per row).
            max_atoms, overlap_threshold: the checks of status 2 and 6.

        Returns:
            A pandas DataFrame: ``id``, ``formula``, each target, ``<target>_std`` (an
            ensemble), ``status``, ``flags`` (, ``embedding``). A structure that fails a check
            has its status and no values (NaN).

        Raises:
            DeepergatError: an input of another type, unreadable files, pandas missing.
        """
        try:
            import pandas as pd
        except ImportError:
            raise DeepergatError("Model.predict returns a pandas DataFrame: pip install "
                                 "pandas") from None
        if batch_size < 1:
            raise DeepergatError(f"batch_size must be at least 1, got {batch_size}")
        settings = _featurize_settings(self.predictor, max_atoms=max_atoms,
                                       overlap_threshold=overlap_threshold)
        columns: dict[str, list[Any]] = {"id": [], "formula": []}
        names = self.targets
        values, spread, status, flags, embedding = [], [], [], [], []
        with tempfile.TemporaryDirectory(prefix="deepergat-predict-") as tmp:
            for batch in _batches(structures, batch_size, ids=ids, tmp=Path(tmp)):
                out = _predict_part(self.predictor, batch, settings, embeddings=embeddings)
                columns["id"].extend(batch.ids)
                columns["formula"].extend(compositions(batch.atomic_numbers, batch.n_atoms)[0])
                status.append(out[0])
                flags.append(out[1])
                values.append(out[2])
                if out[3] is not None:
                    spread.append(out[3])
                if embeddings:
                    embedding.append(out[4])
        t = len(names)
        v = np.concatenate(values) if values else np.zeros((0, t), np.float32)
        s = np.concatenate(spread) if spread else None
        for j, name in enumerate(names):
            columns[name] = v[:, j].tolist()
            if self.predictor.has_std:
                columns[f"{name}_std"] = (s[:, j] if s is not None
                                          else np.zeros(0, np.float32)).tolist()
        frame = pd.DataFrame(columns)
        for name in names + ([f"{n}_std" for n in names] if self.predictor.has_std else []):
            frame[name] = frame[name].astype(np.float32)
        frame["status"] = (np.concatenate(status) if status else np.zeros(0)).astype(np.uint8)
        frame["flags"] = (np.concatenate(flags) if flags else np.zeros(0)).astype(np.uint8)
        if embeddings:
            frame["embedding"] = list(np.concatenate(embedding)) if embedding else []
        return frame


def _batches(structures: Any, size: int, *, ids: Sequence[str] | None,
             tmp: Path) -> Iterator[StructureBatch]:
    """Batches of at most ``size`` structures, in the order given."""
    items = [structures] if _single(structures) else list(structures)
    if ids is not None and len(ids) != sum(1 for x in items if not _is_path(x)):
        raise DeepergatError(f"ids: {len(ids)} given for "
                             f"{sum(1 for x in items if not _is_path(x))} in-memory structures")
    pending: list[dict[str, Any]] = []
    count = 0
    for item in items:
        if _is_path(item):
            if pending:
                yield from _chunks(StructureBatch.from_structures(pending), size)
                pending = []
            yield from _from_path(Path(item), size, tmp)
            continue
        sid = str(ids[count]) if ids is not None else str(count)
        pending.append({"id": sid, **_as_dict(item)})
        count += 1
        if len(pending) == size:
            yield StructureBatch.from_structures(pending)
            pending = []
    if pending:
        yield StructureBatch.from_structures(pending)


def _single(x: Any) -> bool:
    return _is_path(x) or _is_structure(x)


def _is_path(x: Any) -> bool:
    return isinstance(x, str | os.PathLike)


def _is_structure(x: Any) -> bool:
    kind = type(x).__name__
    module = type(x).__module__
    return (module.startswith("pymatgen") and hasattr(x, "sites")) or \
        (module.startswith("ase") and kind == "Atoms")


def _as_dict(x: Any) -> dict[str, Any]:
    """A pymatgen or ASE structure as the store's fields (lattice rows Å, Cartesian Å)."""
    module = type(x).__module__
    if module.startswith("ase"):
        return {"lattice": np.asarray(x.cell.array, dtype=np.float64),
                "pbc": np.asarray(x.pbc, dtype=bool),
                "atomic_numbers": np.asarray(x.numbers, dtype=np.int64),
                "positions": np.asarray(x.positions, dtype=np.float64)}
    if module.startswith("pymatgen") and hasattr(x, "sites"):
        if not x.is_ordered:
            raise DeepergatError(f"{x.composition.reduced_formula}: a disordered structure "
                                 "(partial occupancies) has no atoms to predict; order it first")
        numbers = np.array([site.specie.Z for site in x.sites], dtype=np.int64)
        if hasattr(x, "lattice"):
            return {"lattice": np.asarray(x.lattice.matrix, dtype=np.float64),
                    "pbc": np.asarray(x.lattice.pbc, dtype=bool), "atomic_numbers": numbers,
                    "positions": np.asarray(x.cart_coords, dtype=np.float64)}
        return {"lattice": np.zeros((3, 3)), "pbc": np.zeros(3, bool),
                "atomic_numbers": numbers,
                "positions": np.asarray(x.cart_coords, dtype=np.float64)}
    raise DeepergatError(f"cannot predict a {type(x).__name__}: give pymatgen Structures or "
                         "Molecules, ASE Atoms, file or folder paths, or structure stores")


def _chunks(batch: StructureBatch, size: int) -> Iterable[StructureBatch]:
    for a in range(0, len(batch), size):
        yield batch.select(np.arange(a, min(a + size, len(batch))))


def _from_path(path: Path, size: int, tmp: Path) -> Iterator[StructureBatch]:
    """The structures of a store, or of files packed into a temporary store first."""
    if not path.exists() and not any(ch in str(path) for ch in "*?["):
        raise DeepergatError(f"{path}: no such file or folder")
    if not _is_store(path):
        packed = tmp / f"inputs-{len(list(tmp.iterdir()))}.h5"
        result = _pack_files([path], packed, id_from="stem")
        if result.n_skipped:
            from deepergat.io.pack import describe_skipped

            log.warning("%s: skipped %d inputs that could not be read (%s)", path,
                        result.n_skipped, describe_skipped(result.skipped))
        path = packed
    with Store(path) as store:
        for a in range(0, store.n_structures, size):
            yield store.read(a, min(a + size, store.n_structures))
