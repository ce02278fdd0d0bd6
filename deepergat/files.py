"""The first bytes of a user's file, read with one clear error for the usual mistakes.

Used by everything that tells file kinds apart by content (`deepergat info`, the model loader).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DeepergatError

__all__ = ["read_head"]


def read_head(path: str | os.PathLike[str], n: int = 8, *, what: str = "file") -> bytes:
    """The first ``n`` bytes of ``path``.

    Args:
        path: the file. n: bytes to read. what: the kind of file expected, for messages.

    Raises:
        DeepergatError: the file does not exist, is a folder, or cannot be read.
    """
    p = Path(path)
    if not p.exists():
        raise DeepergatError(f"{p}: no such file")
    if p.is_dir():
        raise DeepergatError(f"{p}: is a folder, not a {what}")
    try:
        with open(p, "rb") as fh:
            return fh.read(n)
    except OSError as e:
        raise DeepergatError(f"{p}: cannot read: {e.strerror or e}") from None
