"""The project's exception types.

`DeepergatError` is what a user can cause and fix (a path, a format, a schema, a setting); the CLI
prints its message as one line on stderr and exits with code 2. `GeometryError` is a per-structure
problem that screening records as a status code instead of stopping.
"""

from __future__ import annotations

from .contract import STATUS_CODES  # re-exported: where callers always found it

__all__ = ["STATUS_CODES", "DeepergatError", "GeometryError", "environment_error"]


class DeepergatError(Exception):
    """A problem the user can fix; the message names the file, the item and the fix."""


class GeometryError(DeepergatError):
    """A structure whose geometry cannot be turned into a graph.

    Attributes:
        status: the `deepergat.contract.Status` code (docs/design.md §9).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = int(status)


#: errno → what it means for the user, for file-system failures the user can fix.
_ENVIRONMENT = {
    "ENOSPC": "no space left on the device",
    "EDQUOT": "the disk quota is exceeded",
    "EROFS": "the file system is read-only",
    "EACCES": "permission denied",
    "EPERM": "operation not permitted",
}


def environment_error(e: OSError) -> DeepergatError | None:
    """The one-line `DeepergatError` for a file-system failure the user can fix (a full disk,
    a quota, a read-only folder, missing permissions), or None for other OS errors.

    The message names the file and, for a full disk, how much space is free.
    """
    import errno as errno_module
    import os
    import shutil

    name = errno_module.errorcode.get(e.errno or 0, "")
    what = _ENVIRONMENT.get(name)
    if what is None:
        return None
    path = e.filename or ""
    where = f"cannot write {path}" if path else "cannot write"
    extra = ""
    if name in ("ENOSPC", "EDQUOT") and path:
        folder = os.path.dirname(os.path.abspath(str(path))) or "."
        try:
            extra = f" ({shutil.disk_usage(folder).free / 1e6:.0f} MB free there)"
        except OSError:
            extra = ""
    fix = ("free space or choose another folder" if name in ("ENOSPC", "EDQUOT")
           else "choose a folder you can write to")
    return DeepergatError(f"{where}: {what}{extra}; {fix}, then run the same command again")
