"""MODEL arguments: a path if it exists, else a bundled model name.

Bundled models live in ``deepergat/models/<name>/`` and ship ``best.ckpt`` (the checkpoint),
``card.md`` and ``model.onnx`` (the exported file screening loads). Loading for prediction
prefers the ``.onnx`` (no torch); exporting starts from the checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from deepergat.errors import DeepergatError

__all__ = ["BUNDLED_CHECKPOINT", "BUNDLED_ONNX", "bundled_dir", "bundled_models", "resolve_model"]

BUNDLED_CHECKPOINT = "best.ckpt"
BUNDLED_ONNX = "model.onnx"


def bundled_dir() -> Path:
    """The folder of bundled models (``deepergat/models``)."""
    import deepergat

    return Path(deepergat.__file__).resolve().parent / "models"


def bundled_models() -> list[str]:
    """Names of the bundled models (folders holding a checkpoint or an ONNX file)."""
    root = bundled_dir()
    if not root.is_dir():
        return []
    return sorted(
        d.name for d in root.iterdir()
        if d.is_dir() and ((d / BUNDLED_CHECKPOINT).is_file() or any(d.glob("*.onnx")))
    )


def resolve_model(
    path_or_name: str | os.PathLike[str], *, prefer: Literal["onnx", "checkpoint"] = "onnx"
) -> Path:
    """The model file a MODEL argument names.

    Args:
        path_or_name: an existing file, or a bundled model name.
        prefer: for a bundled name, its ``.onnx`` (prediction) or its checkpoint (export);
            the other one is the fallback.

    Raises:
        DeepergatError: neither a file nor a bundled model; lists the bundled names.
    """
    p = Path(path_or_name)
    if p.exists():
        if p.is_dir():
            raise DeepergatError(f"{p}: is a folder; give a model file or a bundled model name")
        return p
    name = os.fspath(path_or_name)
    folder = bundled_dir() / name
    if os.sep not in name and "/" not in name and folder.is_dir():
        onnx_files = sorted(folder.glob("*.onnx"))
        onnx_file = folder / BUNDLED_ONNX if (folder / BUNDLED_ONNX).is_file() else (
            onnx_files[0] if onnx_files else None)
        ckpt = folder / BUNDLED_CHECKPOINT if (folder / BUNDLED_CHECKPOINT).is_file() else None
        order = [onnx_file, ckpt] if prefer == "onnx" else [ckpt, onnx_file]
        for candidate in order:
            if candidate is not None:
                return candidate
    names = bundled_models()
    listed = ", ".join(names) if names else "none installed"
    raise DeepergatError(
        f"{name}: no such model file and no bundled model of that name (bundled: {listed})"
    )
