"""`compile_model`: a checkpoint compiled for this machine (AOTInductor) into this user's
private cache, where `deepergat.export.compiled.find_compiled` finds it (that module says
what an entry is and when it is used)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from deepergat.errors import DeepergatError, literal
from deepergat.system.files import atomic_path, file_sha256

from .compiled import (
    ENV_CACHE,
    PACKAGE,
    RECORD,
    RECORD_FORMAT,
    CompiledEntry,
    ancestors_problem,
    cache_key,
    cache_root,
    entry_dir,
    find_compiled,
    private_problem,
    torch_version,
)

__all__ = ["compile_model"]

log = logging.getLogger(__name__)


#: Seconds a compile waits for another process compiling the same entry.
WAIT_SECONDS = 1800.0


def _make_private(path: Path) -> Path:
    """Create ``path`` for this user only (each missing level mode 0700) and return its real
    path, or refuse one that is not private or that someone else could replace."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir(mode=0o700, exist_ok=True)
    real = Path(os.path.realpath(path))
    problem = private_problem(real)
    problem = f"{real} is {problem}" if problem else ancestors_problem(real)
    if problem is not None:
        raise DeepergatError(f"{literal(path)}: the compiled-model cache must be this user's own "
                             f"folder ({problem}); set {ENV_CACHE} to another folder")
    return real


@contextlib.contextmanager
def _entry_lock(folder: Path, say: Callable[[str], None]) -> Iterator[None]:
    """Hold the entry's lock, waiting while another process compiles it (`WAIT_SECONDS`)."""
    from deepergat.system.lock import LockHeldError, OutputLock

    lock = OutputLock(folder / ".compile", f"compile-{os.getpid()}-{uuid.uuid4().hex}",
                      label=str(folder), way_out="wait for it to finish")
    deadline = time.monotonic() + WAIT_SECONDS
    said = False
    while True:
        try:
            lock.acquire()
            break
        except LockHeldError:
            if time.monotonic() > deadline:
                raise
            if not said:
                say(f"another process is compiling this model into {folder}; waiting for it")
                said = True
            time.sleep(2.0)
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def _private_build(folder: Path) -> Iterator[None]:
    """Inductor's build folder inside the entry (not the shared ``/tmp/torchinductor_<user>``,
    where another user could have placed files), no graph cache read or written, and kernels
    that take their thread count at run time (not this process's count, fixed into them)."""
    import tempfile

    from torch._inductor import config
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    build = tempfile.mkdtemp(prefix="build-", dir=folder)
    try:
        with temporary_cache_dir(build), config.patch({"fx_graph_cache": False,
                                                       "cpp.dynamic_threads": True}):
            yield
    finally:
        shutil.rmtree(build, ignore_errors=True)


def compile_model(
    model: str | os.PathLike[str],
    *,
    check_data: str | os.PathLike[str] | None = None,
    n_check: int | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> tuple[CompiledEntry, bool]:
    """Compile a checkpoint for this machine into the cache (`find_compiled` finds it after).

    Args:
        model: a checkpoint, run folder or bundled model name (its checkpoint).
        check_data: a structure store for the parity check (else generated structures).
        n_check: generated structures for it (default: the export's, 1,024).
        force: compile again even when a usable entry exists.
        progress: called with a short message at each step.

    Returns:
        (the entry, whether it was compiled now: False when a usable one was there).

    Raises:
        DeepergatError: not a checkpoint, no torch or no working C++ compiler, a failed parity
            check (nothing is kept), or a cache folder that is not private.
    """
    from .exporter import export_model
    from .files import CHECKPOINT_KIND, expect_kind
    from .resolve import resolve_model

    say = progress or (lambda message: log.info("%s", message))
    source = resolve_model(model, prefer="checkpoint")
    if expect_kind(source) != CHECKPOINT_KIND:
        raise DeepergatError(f"{source}: compile starts from a checkpoint (.ckpt), a run folder "
                             "or a bundled model name")
    version = torch_version()
    if version is None:
        raise DeepergatError("compiling a model needs torch: pip install 'deepergat[train]'")
    sha = file_sha256(source)
    if not force:
        found = find_compiled(sha)
        if found is not None:
            return found, False
    root = _make_private(cache_root())
    folder = _make_private(root / entry_dir(sha, torch=version).name)
    with _entry_lock(folder, say):
        if not force:  # another process may have compiled it while this one waited
            found = find_compiled(sha)
            if found is not None:
                return found, False
        (folder / RECORD).unlink(missing_ok=True)  # unusable until compiled again
        say(f"compiling {source} for this CPU into {folder} (a minute or two; once per machine "
            "type and torch version)")
        t0 = time.perf_counter()
        sizes = {} if n_check is None else {"n_check": n_check}
        with _private_build(folder):
            result = export_model(source, folder, formats=["aoti"], check_data=check_data,
                                  progress=say, **sizes)
        seconds = time.perf_counter() - t0
        package = folder / PACKAGE
        os.chmod(package, 0o600)
        written = next((f for f in result.files if Path(f.path).name == PACKAGE), None)
        record = {
            **cache_key(sha, version),
            "format": RECORD_FORMAT,
            "source": str(source),
            "package_sha256": file_sha256(package),
            "parity": written.parity.summary() if written is not None else "",
            "seconds": round(seconds, 1),
            "compiled_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        with atomic_path(folder / RECORD) as tmp:
            Path(tmp).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        os.chmod(folder / RECORD, 0o600)
    entry = find_compiled(sha)
    if entry is None:
        raise DeepergatError(f"{folder}: the compiled model was written but cannot be used "
                             "(see the warning above)")
    return entry, True
