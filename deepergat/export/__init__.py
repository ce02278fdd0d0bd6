"""deepergat.export: checkpoints → ONNX, TorchScript and ``torch.export`` files (and
AOTInductor packages), parity-checked, and `load`, one `Predictor` over every model file kind.

Importing this package (and loading an ``.onnx`` file with `load`) imports neither torch nor
torch_geometric: screening ranks and workers would pay seconds for each. Torch is imported
inside the torch-backed code paths only (exporting, ``.pt``/``.pt2``/``.ckpt`` files).

Modules, one job each:

====================  ============================================================================
``metadata``          the metadata document every exported file carries; graph-settings check
``files``             file kinds by suffix, confirmed by content; metadata read without torch
``resolve``           MODEL arguments: a path, else a bundled model name
``runtime``           ONNX Runtime: supported IR version, provider choice, quiet sessions
``openvino_runtime``  OpenVINO: the default CPU runtime of single models' ``.onnx`` files
``predictor``         `load` and the `Predictor` classes (ONNX Runtime, OpenVINO, TorchScript, .pt2,
                      eager)
``shapes``            dynamic sizes: the example batch and the dynamic-shape spec
``onnx``              the ONNX writer (dynamo exporter, softplus translation, op allow-list)
``torchscript``       the TorchScript writer (tracing)
``pt2``               the ``torch.export`` writer
``aoti``              the AOTInductor writer (``--format aoti``: compiled, CPU, fastest there)
``samples``           deterministic check structures and edge cases (numpy)
``parity``            docs/design.md's agreement rule, the parity cases and their figures (numpy)
``exporter``          `export_model`: write, check, and only then move files into place
``info``              ``deepergat info`` for checkpoints and exported files
====================  ============================================================================
"""

from __future__ import annotations

from .exporter import FILE_NAMES, FORMATS, ExportedFile, ExportResult, export_model
from .files import read_metadata, sniff
from .metadata import EXPORT_FORMAT, check_settings
from .parity import agree, tolerance
from .predictor import (
    OnnxPredictor,
    OpenVinoPredictor,
    Predictor,
    TorchPredictor,
    load,
    would_run_compiled,
)
from .resolve import bundled_models, resolve_model

__all__ = [
    "EXPORT_FORMAT",
    "FILE_NAMES",
    "FORMATS",
    "ExportResult",
    "ExportedFile",
    "OnnxPredictor",
    "OpenVinoPredictor",
    "Predictor",
    "TorchPredictor",
    "agree",
    "bundled_models",
    "check_settings",
    "export_model",
    "load",
    "read_metadata",
    "resolve_model",
    "sniff",
    "tolerance",
    "would_run_compiled",
]
