"""DeeperGATGNN for crystal property prediction: train, export and screen on clusters.

The public Python names are these (`__all__`) and `deepergat.export.load`; everything else may
move between releases. The top-level package stays light (no torch): the names below import
what they need when called.

    >>> import deepergat
    >>> model = deepergat.load("perovskite-heat")            # a bundled name, or a file
    >>> table = model.predict(structures)                     # pymatgen, ASE, paths, stores
"""

from __future__ import annotations

from typing import Any

from ._version import __version__

__all__ = ["__version__", "load", "read_predictions"]


def load(model: str, *, device: str = "auto", trust: bool = False) -> Any:
    """A model ready to predict structures into a pandas DataFrame
    (`deepergat.api.model.load`: a bundled name, a checkpoint, a run folder or an exported
    file; ``device`` ``"auto"``, ``"cpu"``, ``"cuda"``; ``trust`` for files that run code)."""
    from .api.model import load as load_model

    return load_model(model, device=device, trust=trust)


def read_predictions(path: str, *, embeddings: bool = False) -> object:
    """A predictions file as a pandas DataFrame (`deepergat.screening.select.read_predictions`:
    index, id, each target, <target>_std for an ensemble, status, flags)."""
    from .screening.select import read_predictions as read

    return read(path, embeddings=embeddings)
