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

__all__ = ["__version__", "read_predictions"]


def read_predictions(path: str, *, embeddings: bool = False) -> object:
    """A predictions file as a pandas DataFrame (`deepergat.screening.select.read_predictions`:
    index, id, each target, <target>_std for an ensemble, status, flags)."""
    from .screening.select import read_predictions as read

    return read(path, embeddings=embeddings)
