"""Models compiled on this machine, for this user: a private cache of AOTInductor packages
(looked up here; `deepergat.export.compile` writes them).

``deepergat compile MODEL`` compiles a checkpoint (weights only: nothing in it runs) with
AOTInductor on the user's own machine, checks the package against the checkpoint by the export's
parity rule, and keeps it in a cache only this user can write. From then on every ``.onnx`` file
exported from that checkpoint (a bundled model's included) runs on the CPU through the compiled
package (`load`'s ``runtime="auto"``): 1.4× OpenVINO's rate per core on the bundled model
(``benchmarks/bench_runtime.py``: 583 against 427 structures/s, whole screens 1.24×), the same
numbers within the agreement rule, and no trust flag — the native code is what this user's
compiler built, not code read from someone else's file.

An entry is keyed by everything its code depends on: the checkpoint's sha256, the torch and
deepergat versions, and the CPU (machine, model name and feature flags: a shared home directory
seen from another node type never loads code built for other instructions). An entry is used
only when the cache folder, its entry folder, the record and the package are this user's own
(no symbolic links, not writable by group or others), no folder above the cache can be changed
by anyone but this user or root (or is sticky, as ``/tmp``), the package's sha256 is the one its
record names (a half-written or altered file is never loaded) and is read and run through one
file descriptor, and its metadata describes the same model as the ``.onnx`` file's
(`deepergat.export.predictor`).

Cache folder: ``$DEEPERGAT_COMPILED_CACHE``, else ``$XDG_CACHE_HOME/deepergat/compiled``, else
``~/.cache/deepergat/compiled``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import platform
import stat
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from deepergat.errors import DeepergatError

__all__ = [
    "ENV_CACHE",
    "PACKAGE",
    "RECORD",
    "RECORD_FORMAT",
    "CompiledEntry",
    "cache_key",
    "cache_root",
    "cpu_identity",
    "entry_dir",
    "find_compiled",
    "private_problem",
    "torch_version",
]

log = logging.getLogger(__name__)

#: Environment variable naming the cache folder.
ENV_CACHE = "DEEPERGAT_COMPILED_CACHE"
#: The package and its record inside an entry's folder.
PACKAGE = "model.aoti.pt2"
RECORD = "compiled.json"
#: Version of the record's layout.
RECORD_FORMAT = 1


@dataclass(frozen=True)
class CompiledEntry:
    """A usable cache entry.

    Attributes:
        package: the AOTInductor package (``model.aoti.pt2``).
        record: what `compile_model` recorded (source sha256, versions, CPU, parity, seconds).
    """

    package: Path
    record: dict[str, Any]


def cache_root() -> Path:
    """The cache folder (module docstring); not created here."""
    env = os.environ.get(ENV_CACHE, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "deepergat" / "compiled"


def cpu_identity() -> dict[str, str]:
    """The CPU an entry's code was built for: machine, model name and a digest of its feature
    flags (Linux ``/proc/cpuinfo``; elsewhere ``platform.processor()``)."""
    from .aoti import cpu_flags, cpu_info

    name = cpu_info().get("model name") or platform.processor()
    digest = hashlib.sha256(" ".join(sorted(cpu_flags() or ())).encode()).hexdigest()[:16]
    return {"machine": platform.machine(), "model": name, "flags": digest}


def torch_version() -> str | None:
    """The installed torch's version without importing it (None: not installed)."""
    try:
        return importlib_metadata.version("torch")
    except importlib_metadata.PackageNotFoundError:
        return None


def cache_key(source_sha256: str, torch: str) -> dict[str, Any]:
    """What an entry's code depends on: the checkpoint, the torch and deepergat versions and
    the CPU (`cpu_identity`)."""
    from deepergat._version import __version__

    return {"source_sha256": source_sha256, "torch": torch, "deepergat": __version__,
            "cpu": cpu_identity()}


def entry_dir(source_sha256: str, *, torch: str | None = None) -> Path:
    """The folder of the entry for a checkpoint's sha256 on this machine (may not exist);
    ``torch``: the torch version (default: the installed one)."""
    version = torch or torch_version() or "none"
    key = json.dumps(cache_key(source_sha256, version), sort_keys=True)
    return cache_root() / hashlib.sha256(key.encode()).hexdigest()[:32]


def private_problem(path: Path) -> str | None:
    """Why ``path`` may not be trusted as this user's own (None: it may): a symlink, another
    owner, or writable by group or others."""
    try:
        st = os.lstat(path)
    except OSError as e:
        return f"cannot stat it ({e.strerror})"
    return _stat_problem(st)


def _stat_problem(st: os.stat_result) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"owned by uid {st.st_uid}, not by this user"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "writable by group or others"
    return None


def ancestors_problem(folder: Path) -> str | None:
    """Why someone else could replace ``folder`` (a real path) or what it holds (None: nobody
    but this user and root can): each folder above it must belong to this user or root and be
    writable by no one else unless it is sticky (``/tmp``: nobody renames another's entry)."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    for parent in folder.parents:
        try:
            st = os.stat(parent)
        except OSError as e:
            return f"{parent}: cannot stat it ({e.strerror})"
        if uid is not None and st.st_uid not in (uid, 0):
            return f"{parent} is owned by uid {st.st_uid}"
        sticky = bool(st.st_mode & stat.S_ISVTX)
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky:
            return f"{parent} is writable by group or others"
    return None


def _read_private(path: Path) -> bytes:
    """The bytes of a file that is this user's own, read through one descriptor that follows
    no symbolic link (what was checked is what is read).

    Raises:
        OSError: unreadable. ValueError: not this user's own regular file (the reason).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        problem = _stat_problem(st) or (None if stat.S_ISREG(st.st_mode) else "not a file")
        if problem is not None:
            raise ValueError(f"{path} is {problem}")
        return fh.read()


def find_compiled(source_sha256: str, *, warn: bool = True) -> CompiledEntry | None:
    """The usable entry for a checkpoint's sha256 on this machine, or None (no torch, no entry,
    or an entry that fails a check: said in a warning unless ``warn`` is false). The package is
    not read here: `open_package` reads and checks it when it is loaded."""
    say = log.warning if warn else log.debug
    if not source_sha256:
        return None
    version = torch_version()
    if version is None:
        return None
    try:
        root = Path(os.path.realpath(cache_root()))
        folder = root / entry_dir(source_sha256, torch=version).name
        record_path = folder / RECORD
        if not record_path.exists():
            return None
    except (OSError, RuntimeError):  # no home folder, an unreadable cache: nothing to use
        return None
    problem = ancestors_problem(root)
    for p in (root, folder):
        if problem is None and (why := private_problem(p)) is not None:
            problem = f"{p} is {why}"
    if problem is not None:
        say("not using the compiled model in %s: %s", folder, problem)
        return None
    try:
        record = json.loads(_read_private(record_path))
    except (OSError, ValueError) as e:
        say("not using the compiled model in %s: its record: %s", folder, e)
        return None
    want = cache_key(source_sha256, version)
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in want.items()):
        say("not using the compiled model in %s: its record is for another checkpoint, "
                    "version or CPU", folder)
        return None
    return CompiledEntry(folder / PACKAGE, record)


def open_package(entry: CompiledEntry) -> tuple[int, bytes]:
    """An open descriptor on the entry's package and its bytes, checked: this user's own
    regular file (no symbolic link), with the sha256 its record names. Load the package
    through the descriptor (``/proc/self/fd/N``), so the bytes checked are the bytes run.

    Raises:
        DeepergatError: the package fails a check (the reason; run ``deepergat compile`` again).
    """
    where = entry.package
    try:
        fd = os.open(where, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        why = f"{e.strerror}: a symbolic link is refused" if e.errno == errno.ELOOP else e.strerror
        raise DeepergatError(f"{where}: not using the compiled model: cannot open it ({why})"
                             ) from None
    try:
        st = os.fstat(fd)
        problem = _stat_problem(st) or (None if stat.S_ISREG(st.st_mode) else "not a file")
        if problem is not None:
            raise DeepergatError(f"{where}: not using the compiled model: it is {problem}")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read()
        if hashlib.sha256(data).hexdigest() != entry.record.get("package_sha256"):
            raise DeepergatError(f"{where}: not using the compiled model: the package is not "
                                 "the one compiled (sha256 differs); run `deepergat compile` "
                                 "again")
    except BaseException:
        os.close(fd)
        raise
    return fd, data
