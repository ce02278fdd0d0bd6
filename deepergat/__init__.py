"""DeeperGATGNN for crystal property prediction: train, export and screen on clusters.

The top-level package stays light (numpy and h5py only); torch-based parts are imported
where they are used so that ONNX screening never pays for torch at start-up.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("deepergat")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
