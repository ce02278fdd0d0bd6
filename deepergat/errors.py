"""The project's exception types.

`DeepergatError` is what a user can cause and fix (a path, a format, a schema, a setting); the CLI
prints its message as one line on stderr and exits with code 2. `GeometryError` is a per-structure
problem that screening records as a status code instead of stopping.
"""

from __future__ import annotations

import contextlib
import errno as errno_module
import os
import re
import shutil
from typing import Any

from .contract import STATUS_CODES  # re-exported: where callers always found it

__all__ = [
    "STATUS_CODES",
    "DeepergatError",
    "GeometryError",
    "SettingError",
    "environment_error",
    "is_full_disk",
    "is_memory_message",
    "is_write_failure",
    "literal",
    "user_error",
]


class DeepergatError(Exception):
    """A problem the user can fix; the message names the file, the item and the fix."""


class SettingError(DeepergatError):
    """A setting's value is the problem: the message names settings, and each front end names
    them in its own words.

    The message is a template whose ``{name}`` fields are settings (a lower-case identifier in
    braces; anything else in braces is text, and ``{{``/``}}`` are literal braces, so that user
    text passed through `literal` is never read as a setting). ``str()`` writes the settings'
    own names — the Python API's keyword arguments and the YAML keys — and the command line
    writes its flags instead (`render` with the command's names: ``val_fraction`` →
    ``--val-fraction``).

    Example:
        ``SettingError("{val_fraction} 1.5: must lie in [0, 1)")`` reads "val_fraction 1.5:
        must lie in [0, 1)" in Python and "--val-fraction 1.5: must lie in [0, 1)" in
        ``deepergat train``.
    """

    _FIELD = re.compile(r"\{\{|\}\}|\{([a-z][a-z0-9_]*)\}")

    def __init__(self, template: str) -> None:
        self.template = template
        super().__init__(self.render({}))

    def __reduce__(self) -> tuple[Any, ...]:
        # from a worker process or another rank with its settings (and a subclass's
        # attributes) intact, whatever the subclass's constructor takes
        return (_restore_setting_error, (type(self), self.template, dict(self.__dict__)))

    @property
    def settings(self) -> list[str]:
        """The settings the message names, in order."""
        return list(dict.fromkeys(n for n in self._FIELD.findall(self.template) if n))

    def render(self, names: dict[str, str]) -> str:
        """The message with each setting written as ``names[setting]`` (else its own name)."""
        def word(m: re.Match[str]) -> str:
            name = m.group(1)
            return m.group(0)[0] if name is None else names.get(name, name)

        return self._FIELD.sub(word, self.template)


def _restore_setting_error(cls: type[SettingError], template: str,
                           state: dict[str, Any]) -> SettingError:
    err = cls.__new__(cls)
    SettingError.__init__(err, template)
    err.__dict__.update(state)
    return err


def literal(text: object) -> str:
    """``text`` (a path, a value, another message) for a `SettingError` template, where it reads
    as itself: its braces are doubled, so nothing in it is taken for a setting."""
    return str(text).replace("{", "{{").replace("}", "}}")


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
#: The errnos of a full disk (the message adds the free and needed space).
_FULL = ("ENOSPC", "EDQUOT")
#: HDF5 puts the errno and the file of a failed write only in its message (h5py raises
#: RuntimeError, e.g. when a file is flushed or closed on a full disk, or OSError without
#: ``filename``): "... file write failed: ..., filename = '<path>', ..., errno = 28, ...".
_HDF5_ERRNO = re.compile(r"\berrno = (\d+)")
_HDF5_FILENAME = re.compile(r"\bfilename = '([^']*)'")


def _errno_name(e: BaseException) -> str:
    """The errno name of a file-system failure (``ENOSPC``, ...), or ``""``: from an
    OSError's ``errno``, else from the message of an OSError or RuntimeError that carries
    one (HDF5's ``errno = N``, ``[Errno N]``, or the system's text for a known errno)."""
    if not isinstance(e, OSError | RuntimeError):
        return ""
    code = e.errno if isinstance(e, OSError) else None
    text = str(e)
    if not code:
        m = _HDF5_ERRNO.search(text) or re.search(r"\[Errno (\d+)\]", text)
        code = int(m.group(1)) if m else None
    if not code:
        for name in _ENVIRONMENT:
            number = getattr(errno_module, name, None)
            if number is not None and os.strerror(number) in text:
                return name
        return ""
    return errno_module.errorcode.get(code, "")


#: deepergat's temporary names: ``<name>.tmp``, ``.<name>.tmp-<pid>``, ``.<name>.tmp-<host>-<pid>``.
_TEMPORARY = re.compile(r"^\.?(?P<name>.+?)\.tmp(-[\w.-]*)?$")


def _final_name(path: str) -> str:
    """The file a temporary file of this package becomes (messages name the user's file, not
    a temporary one that is removed when the failure is reported)."""
    folder, name = os.path.split(path)
    m = _TEMPORARY.match(name)
    return os.path.join(folder, m.group("name")) if m else path


#: How model runtimes (ONNX Runtime, OpenVINO, PyTorch, numpy) word an allocation failure.
MEMORY_PHRASES = ("out of memory", "unable to allocate", "failed to allocate",
                  "cannot allocate memory", "can't allocate memory", "bad_alloc",
                  "bad allocation")


def is_memory_message(text: str) -> bool:
    """Whether an error's message says an allocation failed (`MEMORY_PHRASES`)."""
    text = text.lower()
    return any(phrase in text for phrase in MEMORY_PHRASES)


def is_full_disk(e: BaseException) -> bool:
    """Whether ``e`` is a write that failed because the disk or the quota is full (an
    OSError, or h5py's RuntimeError, whose errno is ENOSPC or EDQUOT)."""
    return _errno_name(e) in _FULL


def is_write_failure(e: BaseException) -> bool:
    """Whether ``e`` is a write refused by the file system: a full disk or quota
    (`is_full_disk`) or a read-only file system (never a problem of a file being read)."""
    return _errno_name(e) in (*_FULL, "EROFS")


def environment_error(
    e: BaseException,
    *,
    path: str | os.PathLike[str] | None = None,
    needed: float | None = None,
    fix: str | None = None,
) -> DeepergatError | None:
    """The one-line `DeepergatError` for a file-system failure the user can fix (a full disk,
    a quota, a read-only folder, missing permissions), or None for other errors.

    It recognises an OSError by its errno and, because h5py reports a failed flush or close
    as RuntimeError with the errno only in its text, an OSError or RuntimeError whose message
    carries one. The message names the file and, for a full disk, how much space is free in
    its folder and (``needed``) how much the work needs.

    Args:
        e: the exception.
        path: the file or folder to name [default: the exception's file name, else the one
            in an HDF5 message].
        needed: bytes the work needs there, when known.
        fix: what to do [default: free space or choose another folder / choose a folder you
            can write to].
    """
    name = _errno_name(e)
    what = _ENVIRONMENT.get(name)
    if what is None:
        return None
    if path is None:
        path = getattr(e, "filename", None)
    if path is None:
        m = _HDF5_FILENAME.search(str(e))
        path = m.group(1) if m else None
    path = _final_name(os.fspath(path)) if path is not None else ""
    verb = "cannot access" if name in ("EACCES", "EPERM") else "cannot write"
    where = f"{verb} {path}" if path else verb
    space = []
    if name in _FULL and path:
        folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        with contextlib.suppress(OSError):
            space.append(f"{shutil.disk_usage(folder or '.').free / 1e6:.0f} MB free there")
    if name in _FULL and needed is not None:
        space.append(f"needs ~{max(needed / 1e6, 1):.0f} MB")
    extra = f" ({'; '.join(space)})" if space else ""
    if fix is None:
        fix = ("free space or choose another folder" if name in _FULL
               else "check its permissions or choose a folder you can write to"
               if name in ("EACCES", "EPERM") else "choose a folder you can write to")
    return DeepergatError(f"{where}: {what}{extra}; {fix}, then run the same command again")


def user_error(e: BaseException) -> DeepergatError | None:
    """What the command line reports as one line for ``e``, or None for an internal failure
    (a traceback).

    A `DeepergatError` is reported as it is, unless it was raised from a full disk: then as
    the full-disk message (free space, what to do), like the bare failure. An OSError or
    RuntimeError is reported when it is a file-system failure the user can fix
    (`environment_error`).
    """
    if isinstance(e, DeepergatError):
        cause = e.__cause__
        if cause is not None and is_full_disk(cause):
            return environment_error(cause) or e
        return e
    return environment_error(e)
