"""DeeperGATGNN for crystal property prediction: train, export and screen on clusters.

The public Python names are these (`__all__`) and `deepergat.export.load`; everything else may
move between releases. The top-level package stays light (no torch): the names below import
what they need when called.
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__", "read_predictions"]


def read_predictions(path: str, *, embeddings: bool = False) -> object:
    """A predictions file as a pandas DataFrame (`deepergat.screening.select.read_predictions`:
    index, id, each target, <target>_std for an ensemble, status, flags)."""
    from .screening.select import read_predictions as read

    return read(path, embeddings=embeddings)
