"""MODEL arguments, one rule for every command: a file is itself; a run folder is its
``ensemble.ckpt`` (when it trained one) or its ``best.ckpt``; anything else is a bundled model.

Bundled models live in ``deepergat/models/<name>/`` and ship their checkpoint
(``ensemble.ckpt`` for an ensemble, else ``best.ckpt``: the run folder's rule), ``card.md``
and ``model.onnx``. A bundled name means its ``model.onnx`` for prediction — `deepergat
predict`, `evaluate`, `deepergat-screen` and `deepergat.export.load` alike (no torch needed)
— and its checkpoint for `deepergat export`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from deepergat.errors import DeepergatError

__all__ = ["BUNDLED_CHECKPOINT", "BUNDLED_KNOWN", "BUNDLED_ONNX", "bundled_checkpoint",
           "bundled_dir", "bundled_known", "bundled_models", "resolve_model"]

BUNDLED_CHECKPOINT = "best.ckpt"
BUNDLED_ONNX = "model.onnx"
#: In a bundled model's folder: the structure stores of crystals its training data already
#: holds, one path per line relative to the folder (``#`` starts a comment).
BUNDLED_KNOWN = "known.txt"
#: What a run folder (or a bundled model's folder) means, in order: the ensemble it trained,
#: else its kept model.
RUN_FOLDER_MODELS = ("ensemble.ckpt", BUNDLED_CHECKPOINT)


def bundled_dir() -> Path:
    """The folder of bundled models (``deepergat/models``)."""
    return Path(__file__).resolve().parents[1] / "models"


def bundled_checkpoint(folder: Path) -> Path | None:
    """The checkpoint a run folder or a bundled model's folder holds (`RUN_FOLDER_MODELS`
    order), or None."""
    for name in RUN_FOLDER_MODELS:
        if (folder / name).is_file():
            return folder / name
    return None


def bundled_models() -> list[str]:
    """Names of the bundled models (folders holding a checkpoint or an ONNX file)."""
    root = bundled_dir()
    if not root.is_dir():
        return []
    return sorted(
        d.name for d in root.iterdir()
        if d.is_dir() and (bundled_checkpoint(d) is not None or any(d.glob("*.onnx")))
    )


def resolve_model(
    path_or_name: str | os.PathLike[str], *, prefer: Literal["onnx", "checkpoint"] = "onnx"
) -> Path:
    """The model file a MODEL argument names (the module docstring's rule).

    Args:
        path_or_name: an existing file, a run folder, or a bundled model name.
        prefer: for a bundled name, its ``.onnx`` (prediction) or its checkpoint (export);
            the other one is the fallback.

    Raises:
        DeepergatError: neither a file, a run folder nor a bundled model; lists the bundled
            names.
    """
    p = Path(path_or_name)
    if p.exists():
        if p.is_dir():
            found = bundled_checkpoint(p)
            if found is not None:
                return found
            raise DeepergatError(f"{p}: is a folder without {' or '.join(RUN_FOLDER_MODELS)}; "
                                 "give a model file, a run folder or a bundled model name")
        return p
    name = os.fspath(path_or_name)
    folder = bundled_dir() / name
    if os.sep not in name and "/" not in name and folder.is_dir():
        onnx_files = sorted(folder.glob("*.onnx"))
        onnx_file = folder / BUNDLED_ONNX if (folder / BUNDLED_ONNX).is_file() else (
            onnx_files[0] if onnx_files else None)
        ckpt = bundled_checkpoint(folder)
        order = [onnx_file, ckpt] if prefer == "onnx" else [ckpt, onnx_file]
        for candidate in order:
            if candidate is not None:
                return candidate
    names = bundled_models()
    listed = ", ".join(names) if names else "none installed"
    raise DeepergatError(
        f"{name}: no such model file and no bundled model of that name (bundled: {listed})"
    )


def bundled_known(model: str | os.PathLike[str] | None) -> tuple[Path, ...]:
    """The known-structure stores a bundled model ships (`BUNDLED_KNOWN`), for a MODEL argument
    that is a bundled name or a file inside a bundled model's folder; () for any other."""
    if model is None:
        return ()
    p = Path(model)
    folder = p.parent if p.is_file() else bundled_dir() / os.fspath(model)
    root = bundled_dir().resolve()
    try:
        if folder.resolve().parent != root:
            return ()
    except OSError:
        return ()
    listing = folder / BUNDLED_KNOWN
    if not listing.is_file():
        return ()
    lines = [line.split("#", 1)[0].strip() for line in listing.read_text().splitlines()]
    return tuple((folder / line).resolve() for line in lines if line)
