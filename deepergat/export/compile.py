"""`compile_model`: a checkpoint compiled for this machine (AOTInductor) into this user's
private cache, where `deepergat.export.compiled.find_compiled` finds it (that module says
what an entry is and when it is used)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from deepergat.errors import DeepergatError
from deepergat.system.files import atomic_path, file_sha256

from .compiled import (
    ENV_CACHE,
    PACKAGE,
    RECORD,
    RECORD_FORMAT,
    CompiledEntry,
    cache_key,
    cache_root,
    entry_dir,
    find_compiled,
    private_problem,
    torch_version,
)

__all__ = ["compile_model"]

log = logging.getLogger(__name__)


def _make_private(path: Path) -> None:
    """Create ``path`` (and parents) for this user only, or refuse one that is not private."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    problem = private_problem(path)
    if problem is not None:
        raise DeepergatError(f"{path}: the compiled-model cache must be this user's own "
                             f"folder, and it is {problem}; set {ENV_CACHE} to another folder")


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
    root = cache_root()
    _make_private(root)
    folder = entry_dir(sha, torch=version)
    _make_private(folder)
    (folder / RECORD).unlink(missing_ok=True)  # the entry is unusable until compiled again
    say(f"compiling {source} for this CPU into {folder} (a minute or two; once per machine "
        "type and torch version)")
    t0 = time.perf_counter()
    sizes = {} if n_check is None else {"n_check": n_check}
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
