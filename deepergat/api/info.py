"""`deepergat info`: describe a deepergat file, recognised by its content.

`describe` is the one dispatch point: `file_kind` sniffs the file (HDF5 files by their root
``format`` attribute), and `DESCRIBERS` maps the kind to a function returning a JSON-ready dict;
`format_text` turns that dict into lines for people, through `FORMATTERS`. To teach ``info`` a new
kind (predictions, checkpoints, ONNX files), extend `file_kind` and register a describer and a
formatter for it.

Everything is read in chunks: a store of millions of structures is described without loading its
positions.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deepergat.contract import CHECKPOINT_KIND, MODEL_FORMATS
from deepergat.errors import DeepergatError
from deepergat.system.files import read_head

__all__ = ["DESCRIBERS", "FORMATTERS", "describe", "describe_store", "file_kind", "format_text"]

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
#: Atoms read at a time when counting elements.
_ATOM_CHUNK = 1 << 22


def file_kind(path: str | os.PathLike[str]) -> str:
    """What a file is, by content: an HDF5 file's ``format`` attribute, else ``"unknown"``.

    Args:
        path: the file.

    Returns:
        ``"deepergat-structures"``, ``"deepergat-predictions"``, another HDF5 ``format``
        attribute, ``"hdf5"`` (HDF5 without one), a model kind (``"deepergat-checkpoint"``,
        ``"deepergat-onnx"``, ``"deepergat-torchscript"``, ``"deepergat-pt2"``, by content) or
        ``"unknown"``.

    Raises:
        DeepergatError: the file does not exist, is a folder, or is damaged HDF5.
    """
    p = Path(path)
    head = read_head(p)
    import h5py

    if head != _HDF5_MAGIC and not h5py.is_hdf5(p):  # HDF5 may sit after a user block
        from deepergat.export.files import model_file_kind  # checkpoints and exported models

        return model_file_kind(p) or "unknown"
    from deepergat.io.store import format_attribute

    try:
        with h5py.File(p, "r") as f:
            fmt = format_attribute(f, p)  # checked before it is read: a hostile file's may be huge
    except OSError as e:
        raise DeepergatError(
            f"{p}: not a readable HDF5 file (truncated or damaged): {' '.join(str(e).split())}"
        ) from None
    return "hdf5" if fmt is None else fmt


def _stat(values: np.ndarray) -> dict[str, Any]:
    """count (non-NaN), mean, std (population), min, max; None where undefined."""
    v = values[~np.isnan(values)]
    if not len(v):
        return {"count": 0, "mean": None, "std": None, "min": None, "max": None}
    return {
        "count": len(v),
        "mean": float(v.mean()),
        "std": float(v.std()),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def _symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[z] if 0 <= z < len(chemical_symbols) else f"Z{z}"


def describe_store(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Counts, atoms per structure, elements, target statistics and digest of a store.

    Returns:
        ``{"format", "n_structures", "n_atoms_total", "atoms_per_structure": {"min", "median",
        "max"}, "elements": [symbols sorted by Z], "targets": {name: {"units", "count", "mean",
        "std", "min", "max"}}, "content_digest", "digest_verified"}``. Target statistics ignore
        NaN (``count`` is the number of non-NaN values; ``std`` is the population standard
        deviation); undefined statistics are None. Every array is read once to recompute the
        content digest: ``digest_verified`` is False when the arrays no longer match the digest
        recorded when the store was packed (edited in place, or damaged).

    Raises:
        DeepergatError: not a valid store, or an array that cannot be read (damaged).
    """
    import h5py

    from deepergat.io.store import STORE_FORMAT, Store

    with Store(path) as store:
        n = store.n_atoms
        per = (
            {"min": int(n.min()), "median": float(np.median(n)), "max": int(n.max())}
            if len(n)
            else {"min": None, "median": None, "max": None}
        )
        targets = {
            name: {"units": units, **_stat(store.target(name))}
            for name, units in store.targets.items()
        }
        total = store.n_atoms_total
        digest = store.content_digest
        verified = store.compute_digest() == digest
        m = store.n_structures
    counts = np.zeros(256, dtype=np.int64)
    try:
        with h5py.File(path, "r") as f:
            ds = f["atomic_numbers"]
            for a in range(0, total, _ATOM_CHUNK):
                z = ds[a : min(a + _ATOM_CHUNK, total)]
                counts += np.bincount(z.astype(np.int64), minlength=256)[:256]
    except (OSError, KeyError, ValueError) as e:
        raise DeepergatError(f"{path}: damaged structure store: {e}") from None
    return {
        "format": STORE_FORMAT,
        "n_structures": m,
        "n_atoms_total": total,
        "atoms_per_structure": per,
        "elements": [_symbol(int(z)) for z in np.flatnonzero(counts)],
        "targets": targets,
        "content_digest": digest,
        "digest_verified": verified,
    }


def _fmt_num(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.6g}"


def _format_store(info: dict[str, Any], path: str) -> list[str]:
    per = info["atoms_per_structure"]
    elements = info["elements"]

    def row(label: str, text: str) -> str:
        return f"  {label:<17}{text}"

    lines = [
        f"{path}: deepergat structure store",
        row("structures", str(info["n_structures"])),
        row(
            "atoms",
            f"{info['n_atoms_total']} (per structure: min {_fmt_num(per['min'])}, "
            f"median {_fmt_num(per['median'])}, max {_fmt_num(per['max'])})",
        ),
        row(f"elements ({len(elements)})", " ".join(elements) or "-"),
    ]
    if not info["targets"]:
        lines.append(row("targets", "none"))
    for k, (name, t) in enumerate(info["targets"].items()):
        units = f" [{t['units']}]" if t["units"] else ""
        lines.append(
            row(
                "targets" if k == 0 else "",
                f"{name}{units}: {t['count']} values, mean {_fmt_num(t['mean'])}, "
                f"std {_fmt_num(t['std'])}, min {_fmt_num(t['min'])}, max {_fmt_num(t['max'])}",
            )
        )
    state = ("(the arrays match it)" if info.get("digest_verified", True) else
             "(DOES NOT MATCH the arrays: the store was edited or damaged after packing)")
    lines.append(row("content digest", f"{info['content_digest']} {state}"))
    return lines


def _describe_predictions(path: Path) -> dict[str, Any]:
    from deepergat.screening.predictions import describe_predictions

    return describe_predictions(path)


def _format_predictions(info: dict[str, Any], path: str) -> list[str]:
    from deepergat.screening.predictions import format_predictions

    return format_predictions(info, path)


def _describe_model(path: Path) -> dict[str, Any]:
    from deepergat.export.info import describe_model

    return describe_model(path)


def _format_model(info: dict[str, Any], path: str) -> list[str]:
    from deepergat.export.info import format_model

    return format_model(info, path)


#: Checkpoints and exported model files (deepergat.export.files.SUFFIX_KINDS).
_MODEL_KINDS = (CHECKPOINT_KIND, *(f.kind for f in MODEL_FORMATS.values()))

#: file kind -> function(path) -> JSON-ready dict with a "format" key.
DESCRIBERS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "deepergat-structures": describe_store,
    "deepergat-predictions": _describe_predictions,
    **dict.fromkeys(_MODEL_KINDS, _describe_model),
}

#: "format" value of a description -> function(description, path) -> lines of text.
FORMATTERS: dict[str, Callable[[dict[str, Any], str], list[str]]] = {
    "deepergat-structures": _format_store,
    "deepergat-predictions": _format_predictions,
    **dict.fromkeys(_MODEL_KINDS, _format_model),
}


def describe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe a deepergat file of any kind that `DESCRIBERS` knows.

    Raises:
        DeepergatError: missing, damaged, or not a kind of file deepergat describes.
    """
    p = Path(path)
    kind = file_kind(p)
    fn = DESCRIBERS.get(kind)
    if fn is None and kind == "unknown":
        from deepergat.export.files import SUFFIX_KINDS, expect_kind

        if p.suffix.lower() in SUFFIX_KINDS:  # a model file by name: say what is wrong with it
            expect_kind(p)  # raises: content "unknown" is never the kind a suffix names
    if fn is None:
        known = ", ".join(sorted(DESCRIBERS))
        what = {"unknown": "not a deepergat file", "hdf5": "an HDF5 file without a format"}.get(
            kind, f"an HDF5 file of format {kind!r}"
        )
        raise DeepergatError(f"{p}: {what}; deepergat info describes: {known}")
    return fn(p)


def format_text(info: dict[str, Any], path: str | os.PathLike[str]) -> str:
    """A description from `describe` as text for people."""
    fn = FORMATTERS.get(str(info.get("format")))
    if fn is None:
        import json

        return json.dumps(info, indent=2)
    return "\n".join(fn(info, os.fspath(path)))
