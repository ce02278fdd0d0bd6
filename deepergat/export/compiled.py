"""Models compiled on this machine, for this user: a private cache of AOTInductor packages
(looked up here; `deepergat.export.compile` writes them).

``deepergat compile MODEL`` compiles a checkpoint (weights only: nothing in it runs) with
AOTInductor on the user's own machine, checks the package against the checkpoint by the export's
parity rule, and keeps it in a cache only this user can write. From then on every ``.onnx`` file
exported from that checkpoint (a bundled model's included) runs on the CPU through the compiled
package (`load`'s ``runtime="auto"``): 1.4× OpenVINO's rate per core on the bundled model
(``benchmarks/bench_runtime.py``: 588 against 426 structures/s, whole screens 1.26×), the same
numbers within the agreement rule, and no trust flag — the native code is what this user's
compiler built, not code read from someone else's file.

An entry is keyed by everything its code depends on: the checkpoint's sha256, the torch and
deepergat versions, and the CPU (machine, model name and feature flags: a shared home directory
seen from another node type never loads code built for other instructions). An entry is used
only when its folder and package belong to this user and nobody else can write them, and the
package's sha256 is the one its record names (a half-written or altered file is never loaded).

Cache folder: ``$DEEPERGAT_COMPILED_CACHE``, else ``$XDG_CACHE_HOME/deepergat/compiled``, else
``~/.cache/deepergat/compiled``.
"""

from __future__ import annotations

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

from deepergat.system.files import file_sha256

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
    from .aoti import cpu_flags

    name = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                    break
    except OSError:
        name = platform.processor()
    flags = cpu_flags()
    digest = hashlib.sha256(" ".join(sorted(flags or ())).encode()).hexdigest()[:16]
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
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"owned by uid {st.st_uid}, not by this user"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "writable by group or others"
    return None


def find_compiled(source_sha256: str) -> CompiledEntry | None:
    """The usable entry for a checkpoint's sha256 on this machine, or None (no torch, no entry,
    or an entry that fails a check: said once in a warning)."""
    if not source_sha256:
        return None
    version = torch_version()
    if version is None:
        return None
    folder = entry_dir(source_sha256, torch=version)
    record_path, package = folder / RECORD, folder / PACKAGE
    if not record_path.exists():
        return None
    for p in (cache_root(), folder, record_path, package):
        problem = private_problem(p)
        if problem is not None:
            log.warning("not using the compiled model in %s: %s is %s", folder, p, problem)
            return None
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError) as e:
        log.warning("not using the compiled model in %s: unreadable record (%s)", folder, e)
        return None
    want = cache_key(source_sha256, version)
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in want.items()):
        log.warning("not using the compiled model in %s: its record is for another checkpoint, "
                    "version or CPU", folder)
        return None
    if file_sha256(package) != record.get("package_sha256"):
        log.warning("not using the compiled model in %s: the package is not the one compiled "
                    "(sha256 differs); run `deepergat compile` again", folder)
        return None
    return CompiledEntry(package, record)
