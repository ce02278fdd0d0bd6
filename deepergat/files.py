"""Reading users' files by content: the first bytes, with one clear error for the usual
mistakes, and the SHA-256 digest (torch-free; screening ranks use it too).

Used by everything that tells file kinds apart by content (`deepergat info`, the model loader)
and everything that records which file gave a result (checkpoint and export metadata,
predictions files).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import DeepergatError

__all__ = ["file_sha256", "read_head"]


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


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
