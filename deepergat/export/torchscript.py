"""Checkpoint → TorchScript by tracing (``model.pt``).

Tracing, not scripting: the model's forward is plain tensor code whose only Python control flow
(the layer loop, the AGAT form, ``per_atom``, ``skip``) is fixed per model, and every size comes
from tensor shapes, which the tracer records as ``aten::size`` ops. What C++/LAMMPS-style hosts
load with ``torch::jit::load``; PyTorch deprecates TorchScript in favour of ``torch.export``
(`deepergat.export.pt2`), so both are written. The metadata document is the extra file
``deepergat.json``.

Not frozen (``torch.jit.freeze``): freezing measured no faster here and a frozen module's
weights are constants a host can no longer move with ``.to(device)``.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from deepergat.errors import DeepergatError
from deepergat.system.files import atomic_path

from .metadata import EXTRA_FILE, encode_metadata, save_named, with_exporter
from .metadata import meta_tmp_path as _meta_tmp

__all__ = ["set_torchscript_metadata", "write_torchscript"]

log = logging.getLogger(__name__)


def write_torchscript(
    model: Any, example: tuple[Any, ...], path: str | os.PathLike[str], metadata: dict[str, Any]
) -> dict[str, Any]:
    """Trace ``model`` on ``example`` and save it with the metadata as an extra file.

    Args: see `deepergat.export.exporter.Writer`.

    Returns:
        the exporter facts stored in the metadata.

    Raises:
        DeepergatError: tracing failed.
    """
    import torch

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(model, example, check_trace=False, _store_inputs=False)
    except Exception as e:
        raise DeepergatError(f"TorchScript tracing failed: {' '.join(str(e).split())[:500]}") from e
    facts = {"exporter": "torch.jit.trace", "torch": torch.__version__}
    meta = with_exporter(metadata, facts)
    _save(traced, Path(path), meta)
    log.info("wrote %s", path)
    return facts


def _save(module: Any, path: Path, meta: dict[str, Any]) -> None:
    """``torch.jit.save`` into ``path``, the archive folder named after the final file."""
    import torch

    def save(p: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated
            torch.jit.save(module, os.fspath(p), _extra_files={EXTRA_FILE: encode_metadata(meta)})

    save_named(path, save)


def set_torchscript_metadata(path: str | os.PathLike[str], meta: dict[str, Any]) -> None:
    """Replace the metadata document of a TorchScript file (the code and weights are re-saved
    unchanged)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(os.fspath(path), map_location="cpu")  # the file just written
    with atomic_path(path, tmp=_meta_tmp(Path(path))) as tmp:
        _save(module, tmp, meta)
