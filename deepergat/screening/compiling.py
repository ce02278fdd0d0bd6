"""A CPU screen's model compiled for this machine before the screen starts (``--compile``).

`deepergat.export.compile` compiles a checkpoint with AOTInductor into this user's private
cache, and every ``.onnx`` file of that checkpoint then runs compiled on this kind of CPU (a
whole screen ~1.25× OpenVINO's rate on the bundled model, `benchmarks/bench_runtime.py`).
Compiling costs about 50 s on the development machine, once per user, CPU kind and torch
version. So ``auto`` compiles when the run computes at least `AUTO_COMPILE_MIN` structures on
the CPU (~4 minutes on OpenVINO on 2 cores, which the faster runtime pays back within the run)
and a C++ compiler is there;
``yes`` compiles whenever the model is not compiled yet; ``no`` never does. Rank 0 compiles
before the other ranks load their model, so they find it too (on the same kind of CPU).

The checkpoint must be beside the ``.onnx`` file (a bundled model's folder, or a run folder
exported into itself) with the sha256 the file's metadata names; a job script's
``DEEPERGAT_ONNX_RUNTIME`` choice is never overridden.
"""

from __future__ import annotations

import logging
from pathlib import Path

from deepergat.errors import DeepergatError, SettingError, literal
from deepergat.export.compiled import torch_version
from deepergat.export.openvino_runtime import chosen_runtime
from deepergat.export.resolve import bundled_checkpoint
from deepergat.system.files import file_sha256

from .model import LoadedModel
from .options import CompileChoice

__all__ = ["AUTO_COMPILE_MIN", "checkpoint_beside", "compile_first"]

log = logging.getLogger(__name__)

#: Structures a run must compute on the CPU before ``auto`` compiles its model (~4 min at
#: OpenVINO's rate on 2 cores, against ~50 s of compiling).
AUTO_COMPILE_MIN = 200_000


def checkpoint_beside(model: LoadedModel) -> Path | None:
    """The checkpoint an ``.onnx`` model was exported from, when it lies beside the file (the
    run folder's rule: ``ensemble.ckpt``, else ``best.ckpt``) with the recorded sha256."""
    path = Path(model.predictor.path)
    if path.suffix != ".onnx" or not model.metadata.source_sha256:
        return None
    ckpt = bundled_checkpoint(path.parent)
    if ckpt is None or file_sha256(ckpt) != model.metadata.source_sha256:
        return None
    return ckpt


def _compiler() -> str | None:
    """The C++ compiler Inductor itself would use (its own search, not PATH's ``c++``)."""
    from deepergat.training.trainer import inductor_compiler

    return inductor_compiler()


def _progress(message: str) -> None:
    # the first step says why the screen waits a minute: shown without -v
    level = logging.WARNING if message.startswith("compiling") else logging.INFO
    log.log(level, "%s", message)


def compile_first(choice: CompileChoice, model: LoadedModel, *, structures: int,
                  device: str) -> bool:
    """Compile the screen's model for this machine when ``choice`` says so (module docstring).

    Args:
        choice: ``auto``, ``yes`` or ``no``.
        model: the model rank 0 loaded.
        structures: how many structures this run computes.
        device: ``cpu`` or ``cuda``.

    Returns:
        True when a compiled model was made now (load the model again to use it).

    Raises:
        SettingError: ``yes`` where it cannot be done (no checkpoint beside the file, a GPU, a
            runtime the environment chose).
        DeepergatError: ``yes`` and compiling failed.
    """
    if choice == "no" or model.predictor.backend == "compiled":
        return False
    why_not = None
    if device != "cpu":
        why_not = "the model runs on a GPU"
    elif chosen_runtime("auto") != "auto":
        why_not = "DEEPERGAT_ONNX_RUNTIME chooses the runtime"
    elif Path(model.predictor.path).suffix != ".onnx":
        why_not = "only an .onnx model runs compiled"
    if why_not is None and choice == "auto" and (structures < AUTO_COMPILE_MIN
                                                 or torch_version() is None
                                                 or _compiler() is None):
        return False  # cheap reasons first: the checkpoint is hashed only when it may compile
    ckpt = checkpoint_beside(model) if why_not is None else None
    if why_not is None and ckpt is None:
        why_not = (f"its checkpoint is not beside {model.predictor.path} (compile it with "
                   "`deepergat compile CHECKPOINT`)")
    if why_not is not None:
        if choice == "yes":
            raise SettingError(f"{{compile}} yes: cannot compile the model: {literal(why_not)}")
        return False
    from deepergat.export.compile import compile_model

    try:
        compile_model(ckpt, progress=_progress)
    except DeepergatError as e:
        if choice == "yes":
            raise
        log.warning("could not compile the model for this CPU (%s); screening without it", e)
        return False
    return True
