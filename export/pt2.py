"""Checkpoint → ``torch.export`` program (``model.pt2``).

``torch.export.export(strict=False)`` with N, K, C, A declared dynamic (minimum 1) on an example
whose sizes are all ≥ 2 and distinct, then ``torch.export.save`` with the metadata document as
the extra file ``deepergat.json``. Loaded with ``torch.export.load(...).module()``; the program
checks its input shapes against the declared ranges on every call.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from deepergat.errors import DeepergatError

from .metadata import EXTRA_FILE, encode_metadata, with_exporter
from .metadata import meta_tmp_path as _meta_tmp
from .shapes import dynamic_shapes

__all__ = ["set_pt2_metadata", "write_pt2"]

log = logging.getLogger(__name__)


def export_program(model: Any, example: tuple[Any, ...]) -> Any:
    """The ``torch.export.ExportedProgram`` of ``model`` with every size dynamic.

    Raises:
        DeepergatError: export failed (a size the model specializes on, an unsupported op).
    """
    import torch

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(model, example, dynamic_shapes=dynamic_shapes(),
                                       strict=False)
    except Exception as e:
        raise DeepergatError(f"torch.export failed: {' '.join(str(e).split())[:500]}") from e


def write_pt2(
    model: Any, example: tuple[Any, ...], path: str | os.PathLike[str], metadata: dict[str, Any]
) -> dict[str, Any]:
    """Export ``model`` with ``torch.export`` and save it with the metadata.

    Args: see `deepergat.export.exporter.Writer`.

    Returns:
        the exporter facts stored in the metadata.
    """
    import torch

    program = export_program(model, example)
    facts = {"exporter": "torch.export.export(strict=False)", "torch": torch.__version__}
    meta = with_exporter(metadata, facts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(program, os.fspath(path), extra_files={EXTRA_FILE: encode_metadata(meta)})
    log.info("wrote %s", path)
    return facts


def set_pt2_metadata(path: str | os.PathLike[str], meta: dict[str, Any]) -> None:
    """Replace the metadata document of a ``.pt2`` file (the program is re-saved unchanged)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.load(os.fspath(path))
        tmp = _meta_tmp(Path(path))
        torch.export.save(program, os.fspath(tmp), extra_files={EXTRA_FILE: encode_metadata(meta)})
    os.replace(tmp, path)
