"""Checkpoint → ``torch.export`` program (``model.pt2``), and loading one without running code.

``torch.export.export(strict=False)`` with N, K, C, A declared dynamic (minimum 1) on an example
whose sizes are all ≥ 2 and distinct, then ``torch.export.save`` with the metadata document as
the extra file ``deepergat.json``; the archive's top folder is named after the final file
(``model/``). Loaded with `load_program` (``torch.export.load(...).module()``); the program
checks its input shapes against the declared ranges on every call.

``torch.export.load`` unpickles parts of the archive (sample inputs, legacy weight and constant
files) with ``torch.load(weights_only=False)`` and ``pickle.loads``: a planted pickle would run
its author's code. `load_program` reads the file once into memory and loads it while every
``torch.load`` is restricted to tensors and plain containers (``weights_only=True``) and plain
``pickle`` is refused, so such a file fails to load and nothing in it runs. The graph itself is
JSON naming registered operators only.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deepergat.errors import DeepergatError
from deepergat.system.files import atomic_path

from .metadata import EXTRA_FILE, encode_metadata, save_named, with_exporter
from .metadata import meta_tmp_path as _meta_tmp
from .shapes import dynamic_shapes

__all__ = ["load_program", "set_pt2_metadata", "write_pt2"]

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
    _save(program, Path(path), meta)
    log.info("wrote %s", path)
    return facts


def _save(program: Any, path: Path, meta: dict[str, Any]) -> None:
    """``torch.export.save`` into ``path``, the archive folder named after the final file."""
    import torch

    def save(p: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.export.save(program, os.fspath(p),
                              extra_files={EXTRA_FILE: encode_metadata(meta)})

    save_named(path, save)


def set_pt2_metadata(path: str | os.PathLike[str], meta: dict[str, Any]) -> None:
    """Replace the metadata document of a ``.pt2`` file (the program is re-saved unchanged)."""
    program = load_program(path)
    with atomic_path(path, tmp=_meta_tmp(Path(path))) as tmp:
        _save(program, tmp, meta)


_UNPICKLE_LOCK = threading.Lock()


class _RefusedPickle(pickle.UnpicklingError):
    """A pickle the restricted loader does not open."""


@contextlib.contextmanager
def _restricted_unpickling() -> Iterator[None]:
    """While active, ``torch.load`` only reads tensors and plain containers
    (``weights_only=True``, whatever the caller asked) and ``pickle.load(s)`` refuses."""
    import torch

    real_load, real_loads, real_pload = torch.load, pickle.loads, pickle.load

    def safe_load(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("pickle_module", None)
        kwargs["weights_only"] = True
        return real_load(f, *args, **kwargs)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise _RefusedPickle("a plain pickle in the archive (not tensors): refused")

    with _UNPICKLE_LOCK:
        torch.load, pickle.loads, pickle.load = safe_load, refuse, refuse  # type: ignore[assignment]
        try:
            yield
        finally:
            torch.load, pickle.loads, pickle.load = real_load, real_loads, real_pload


def load_program(path: str | os.PathLike[str], *,
                 extra_files: dict[str, Any] | None = None) -> Any:
    """``torch.export.load`` of a ``.pt2`` file without running code from it.

    The file is read once; every pickle inside may only hold tensors and plain containers.

    Args:
        path: the ``.pt2`` file.
        extra_files: name -> "" to fill with the archive's extra files (as torch's argument).

    Raises:
        DeepergatError: unreadable, damaged, or holding a pickle that is not plain tensors
            (the message says which; nothing of it ran).
    """
    import torch

    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DeepergatError(f"{p}: cannot read: {e.strerror or e}") from None
    try:
        with warnings.catch_warnings(), _restricted_unpickling():
            warnings.simplefilter("ignore")
            return torch.export.load(io.BytesIO(data), extra_files=extra_files)
    except pickle.UnpicklingError as e:
        raise DeepergatError(
            f"{p}: refused: the archive holds a pickle that is not plain tensors (it could run "
            f"code when loaded; nothing of it ran): {' '.join(str(e).split())[:200]}"
        ) from None
