"""Files as wholes: the first bytes and the SHA-256 digest of users' files (torch-free; screening
ranks use it too), and files that appear only when written completely.

`read_head` and `file_sha256` serve everything that tells file kinds apart by content
(`deepergat info`, the model loader) and everything that records which file gave a result
(checkpoint and export metadata, predictions files). `atomic_path`, `atomic_open` and
`write_csv` are the one way the tool writes a result file: into a temporary file beside it that
replaces the final name by one ``os.replace`` when complete, so a reader never sees half a file
and a failure or a kill leaves the earlier file as it was.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from deepergat.errors import DeepergatError

__all__ = [
    "atomic_open",
    "atomic_path",
    "file_sha256",
    "private_temporary",
    "read_head",
    "temporary_name",
    "write_csv",
]


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


def temporary_name(path: str | os.PathLike[str]) -> Path:
    """Where `atomic_path` writes ``path`` first: ``<stem>.tmp<suffix>`` beside it (the suffix
    kept for writers that choose a format by it, as matplotlib does, or add one, as
    ``numpy.savez`` does)."""
    p = Path(path)
    return p.with_name(f"{p.stem}.tmp{p.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *,
                tmp: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """A temporary path to write instead of ``path``; when the block ends normally it replaces
    ``path`` (one ``os.replace``), when it raises it is removed and ``path`` stays as it was.

    Args:
        path: the final file.
        tmp: the temporary file (default `temporary_name`), in the same folder so that the
            rename is atomic; a leftover of a killed writer is overwritten by the next one.
    """
    final = Path(path)
    staged = Path(tmp) if tmp is not None else temporary_name(final)
    try:
        yield staged
        os.replace(staged, final)
    except BaseException:
        with contextlib.suppress(OSError):
            staged.unlink()
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", *,
                tmp: str | os.PathLike[str] | None = None, **kwargs: Any) -> Iterator[IO[Any]]:
    """`open` a file that replaces ``path`` only when the block ends normally (`atomic_path`).

    ``mode`` is a write mode (``"w"`` or ``"wb"``); ``kwargs`` go to `open` (``newline``,
    ``encoding``).
    """
    with atomic_path(path, tmp=tmp) as staged, open(staged, mode, **kwargs) as fh:
        yield fh


def private_temporary(path: str | os.PathLike[str]) -> Path:
    """A temporary name for ``path`` that only this process writes, ``.<name>.tmp-<host>-<pid>``
    beside it (for a file that may be written by several processes at once, e.g. a user's
    ``--csv``); leftovers of killed processes on this host are removed first."""
    p = Path(path)
    host = socket.gethostname().replace("-", "_") or "host"
    prefix = f".{p.name}.tmp-{host}-"
    with contextlib.suppress(OSError):
        for entry in os.listdir(p.parent):
            pid = entry[len(prefix):]
            if not (entry.startswith(prefix) and pid.isdigit()):
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:  # its writer was killed
                (p.parent / entry).unlink(missing_ok=True)
            except OSError:  # alive (another user's)
                pass
    return p.with_name(f"{prefix}{os.getpid()}")


def write_csv(path: str | os.PathLike[str], header: Sequence[str],
              rows: Iterable[Sequence[Any]], *,
              tmp: str | os.PathLike[str] | None = None) -> None:
    """A CSV file (``\\n`` line ends, UTF-8) written whole: ``header``, then ``rows`` (an
    iterable, consumed while writing: rows may be computed as they are written)."""
    with atomic_open(path, "w", tmp=tmp, newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
