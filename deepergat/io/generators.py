"""Generative models' sample files: CDVAE / DiffCSP ``eval_gen.pt``, ``eval_recon.pt`` and
``eval_opt.pt``, read without running anything from them.

Such a file is a ``torch.save`` dict with ``frac_coords`` [S, ΣN, 3], ``atom_types`` [S, ΣN]
(Z), ``num_atoms`` [S, C], ``lengths`` [S, C, 3] (Å) and ``angles`` [S, C, 3] (degrees): S
sampling passes over C crystals. It also holds objects of the generator's own code: the run's
``argparse.Namespace`` (``eval_setting``), plain numbers, (empty) lists and, in
``eval_recon.pt``, a PyTorch Geometric ``Batch`` of the input crystals. They are unpickled by a
restricted unpickler: tensors and plain containers as usual, those known classes as inert
placeholders (their state kept as data, no code of theirs run), and any other class or function
the pickle asks for refuses the whole file before anything of it runs.

Structures are yielded pass-major with ids ``<file stem>-<pass>-<index>``; the lattice is
``pymatgen.core.Lattice.from_parameters(a, b, c, α, β, γ)``.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from deepergat.contract import MAX_ARCHIVE_EXPANSION, MAX_ARCHIVE_MEMBER_BYTES
from deepergat.errors import DeepergatError

__all__ = ["GENERATOR_KEYS", "Inert", "load_sample_file", "sample_structures"]

#: The keys a sample file must hold.
GENERATOR_KEYS = ("frac_coords", "atom_types", "num_atoms", "lengths", "angles")

#: Callables a tensor pickle legitimately names (as torch's weights-only loader allows).
_ALLOWED: dict[tuple[str, str], Any] = {}


def _allowed() -> dict[tuple[str, str], Any]:
    if _ALLOWED:
        return _ALLOWED
    import collections
    import copyreg

    import torch

    names = {
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "slice"): slice,
        ("builtins", "complex"): complex,
        ("builtins", "object"): object,
        ("copyreg", "_reconstructor"): copyreg._reconstructor,
        ("copyreg", "__newobj__"): copyreg.__newobj__,
    }
    for dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16, torch.int8,
                  torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool):
        names[("torch", str(dtype).split(".")[1])] = dtype
    _ALLOWED.update(names)
    return _ALLOWED


class Inert:
    """Stands in for an object of the generator's code (an ``argparse.Namespace``, a PyG
    ``Batch``): it keeps the unpickled state as data and runs nothing."""

    _name = "object"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_args"] = (args, kwargs)

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    def __call__(self, *args: Any, **kwargs: Any) -> Inert:
        """A placeholder that stood in for a factory (PyG pickles a ``Batch`` as a call on a
        getter object) makes another placeholder."""
        return type(self)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<inert {self._name}>"


#: Modules whose classes become inert placeholders (the generators' own objects).
_INERT_MODULES = ("argparse", "torch_geometric", "types")
_PLACEHOLDERS: dict[str, type] = {}


def _placeholder(module: str, name: str) -> type:
    key = f"{module}.{name}"
    if key not in _PLACEHOLDERS:
        _PLACEHOLDERS[key] = type(f"Inert_{name}", (Inert,), {"_name": key})
    return _PLACEHOLDERS[key]


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _Unpickler(pickle.Unpickler):
    """Finds only tensor rebuilders and plain types; the generators' classes as placeholders."""

    def find_class(self, module: str, name: str) -> Any:
        import _compat_pickle

        if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol-2 names of Python 2
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = _allowed().get((module, name))
        if found is not None:
            return found
        if module.split(".")[0] in _INERT_MODULES:
            return _placeholder(module, name)
        raise _RefusedGlobal(f"the pickle asks for {module}.{name}")


class _RestrictedPickle:
    """A ``pickle_module`` for ``torch.load`` whose unpickler is `_Unpickler`."""

    Unpickler = _Unpickler
    load = staticmethod(lambda f, **kw: _Unpickler(f, **kw).load())
    __name__ = "deepergat.io.generators._RestrictedPickle"


def _check_records(p: Path) -> None:
    """Refuse a ``torch.save`` zip whose records declare more bytes than an archive may expand
    to (`MAX_ARCHIVE_EXPANSION` per byte of file, beyond `MAX_ARCHIVE_MEMBER_BYTES`): torch
    allocates each tensor's storage at the size its record declares, and decompresses records
    that a crafted file compresses."""
    import zipfile

    try:
        if not zipfile.is_zipfile(p):
            return  # torch's legacy format: read as torch reads it
        with zipfile.ZipFile(p) as z:
            declared = sum(info.file_size for info in z.infolist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # torch says what is wrong with it
    size = p.stat().st_size
    if declared > max(MAX_ARCHIVE_EXPANSION * size, MAX_ARCHIVE_MEMBER_BYTES):
        raise DeepergatError(
            f"{p}: too large: its records declare {declared} bytes in a file of {size} (more "
            f"than {MAX_ARCHIVE_EXPANSION} per byte): a decompression bomb, not read"
        )


def load_sample_file(path: str | Path) -> dict[str, Any]:
    """The dict of a CDVAE/DiffCSP sample file, unpickled without running its code.

    Raises:
        DeepergatError: unreadable, a pickle asking for other code (refused before any of it
            runs), not a dict, or a key of `GENERATOR_KEYS` missing.
    """
    p = Path(path)
    try:
        import torch
    except ImportError:
        raise DeepergatError(
            f"{p}: generator sample files (.pt) are read with PyTorch, which this install "
            "lacks: pip install 'deepergat[train]'") from None
    _check_records(p)
    try:
        data = torch.load(p, map_location="cpu", weights_only=False,
                          pickle_module=_RestrictedPickle)  # type: ignore[arg-type]
    except _RefusedGlobal as e:
        raise DeepergatError(
            f"{p}: refused: {e}, which is not a tensor, a plain value or a known generator "
            "object (nothing of the file ran)"
        ) from None
    except Exception as e:  # a damaged or foreign file
        raise DeepergatError(f"{p}: not a readable generator sample file: "
                             f"{' '.join(str(e).split())[:200]}") from None
    if not isinstance(data, dict):
        raise DeepergatError(f"{p}: not a generator sample file (a {type(data).__name__}, not "
                             "a dict)")
    missing = [k for k in GENERATOR_KEYS if k not in data]
    if missing:
        raise DeepergatError(f"{p}: not a CDVAE/DiffCSP sample file: {', '.join(missing)} "
                             "missing")
    return data


def sample_structures(path: str | Path) -> Iterator[dict[str, Any]]:
    """The crystals of a sample file as ``StructureBatch.from_structures`` dicts, pass-major.

    Raises:
        DeepergatError: see `load_sample_file`; arrays whose shapes do not fit together.
    """
    from pymatgen.core import Lattice

    p = Path(path)
    data = load_sample_file(p)

    def array(key: str) -> np.ndarray:
        value = data[key]
        return np.asarray(value.numpy() if hasattr(value, "numpy") else value)

    frac, types, counts = array("frac_coords"), array("atom_types"), array("num_atoms")
    lengths, angles = array("lengths"), array("angles")
    if frac.ndim == 2:  # one pass saved without its leading axis
        frac, types, counts = frac[None], types[None], counts[None]
        lengths, angles = lengths[None], angles[None]
    s, c = counts.shape if counts.ndim == 2 else (0, 0)
    ok = (counts.ndim == 2 and frac.shape[0] == s and frac.shape[-1] == 3
          and types.shape[:2] == frac.shape[:2] and lengths.shape == (s, c, 3)
          and angles.shape == (s, c, 3) and (counts.sum(1) == frac.shape[1]).all())
    if not ok:
        raise DeepergatError(
            f"{p}: the arrays do not fit together (frac_coords {frac.shape}, atom_types "
            f"{types.shape}, num_atoms {counts.shape}, lengths {lengths.shape}, angles "
            f"{angles.shape})"
        )
    stem = p.name.split(".")[0]
    for k in range(s):
        first = np.concatenate([[0], np.cumsum(counts[k])[:-1]]).astype(np.int64)
        for i in range(c):
            a, n = int(first[i]), int(counts[k, i])
            lat = Lattice.from_parameters(*(float(x) for x in lengths[k, i]),
                                          *(float(x) for x in angles[k, i])).matrix
            yield {
                "id": f"{stem}-{k}-{i}",
                "lattice": lat,
                "pbc": (True, True, True),
                "atomic_numbers": types[k, a : a + n].astype(np.int64),
                "positions": frac[k, a : a + n].astype(np.float64) @ lat,
            }
