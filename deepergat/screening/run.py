"""The screening driver: checks, plan, parts, ranks, pipeline, merge — in that order.

`screen` runs on every rank. File-level problems (input, model, an output or parts directory of
another run) are found by rank 0 before any work starts and raised on every rank as one
`AllRanksError` (`setup`). Then the chunks still to do are handed out (dynamically across MPI
ranks, a static atom-balanced share for an array shard), committed as parts, and merged
(`compute`): by rank 0 after an MPI run, by the array task that completes the set (``O_EXCL``
claim), or by `merge_only`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from deepergat.contract import DEFAULT_CHUNK_SIZE
from deepergat.errors import DeepergatError, SettingError
from deepergat.system.lock import OutputLock, run_token

from .compute import compute
from .failures import AllRanksError, literal, work_failure
from .merge import merge_parts, output_bytes
from .model import model_identity
from .mpi import Ranks
from .options import ScreenOptions, default_output, top_csv_path
from .parts import PartsDir
from .plan import Plan
from .predictions import read_identity
from .result import Hooks, ScreenResult, summary_json
from .setup import (
    InputStore,
    discard_unused_parts,
    open_input,
    prepare,
    same_output,
    verified_input,
    write_top,
)
from .subset import load_rows

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "AllRanksError",
    "Hooks",
    "ScreenOptions",
    "ScreenResult",
    "default_output",
    "merge_only",
    "screen",
    "summary_json",
    "top_csv_path",
]

log = logging.getLogger(__name__)


def screen(opts: ScreenOptions, ranks: Ranks, hooks: Hooks | None = None) -> ScreenResult:
    """Screen a structure store with a model (every rank calls this).

    Args:
        opts: the options.
        ranks: `deepergat.screening.mpi.connect`'s result.
        hooks: progress callbacks (rank 0).

    Returns:
        The `ScreenResult`.

    Raises:
        AllRanksError: file-level problems, on every rank alike, before any work starts.
        MissingChunksError: ``merge_only`` with missing chunks (rank 0).
        DeepergatError: a problem met while working (e.g. a damaged part), on one rank.
    """
    hooks = hooks or Hooks()
    if opts.control.merge_only:
        if ranks.is_root:
            return merge_only(opts)
        output = opts.files.output_path
        return ScreenResult("merged", output, PartsDir(output).path)
    locks: list[OutputLock] = []  # rank 0's hold on the output, for the whole run
    try:
        try:
            prepared = prepare(opts, ranks, locks)
        except AllRanksError:
            raise
        except DeepergatError as e:  # raised alike on every rank (same inputs everywhere)
            raise AllRanksError(e) from None
        if isinstance(prepared, ScreenResult):
            return prepared
        shard = prepared.shard
        log_name = (f"shard-{shard[0]:04d}-of-{shard[1]:04d}-rank-{ranks.rank:04d}" if shard
                    else f"rank-{ranks.rank:04d}")
        try:
            with _rank_log(prepared.parts, log_name):
                return compute(opts, ranks, hooks, prepared)
        finally:
            if prepared.started is not None:  # a pipeline that took them has stopped them
                prepared.started.close()
    finally:
        for lock in locks:
            lock.release()


# ------------------------------------------------------------------------------ logging


class _RankLogHandler(logging.FileHandler):
    """The per-rank log file. A record it cannot write (the disk filled up) switches it off
    quietly: the run's own one-line error says what happened, not logging's traceback."""

    def handleError(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.close()
        self.setLevel(logging.CRITICAL + 1)


@contextlib.contextmanager
def _rank_log(parts: PartsDir, name: str) -> Iterator[None]:
    """Log this rank's INFO records to ``<parts>/logs/<name>.log`` while screening; the other
    handlers keep the level they had (warnings only on stderr unless ``-v``)."""
    logger = logging.getLogger("deepergat")
    handler: logging.Handler | None = None
    old_level = logger.level
    changed: list[logging.Handler] = []
    try:
        parts.logs.mkdir(parents=True, exist_ok=True)
        handler = _RankLogHandler(parts.logs / f"{name}.log")
    except OSError as e:
        log.warning("no per-rank log in %s: %s", parts.logs, e)
    if handler is not None:
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s [%(threadName)s]: %(message)s"
        ))
        effective = logger.getEffectiveLevel()
        if effective > logging.INFO:
            for h in logger.handlers:
                if h.level == logging.NOTSET:
                    h.setLevel(effective)
                    changed.append(h)
            logger.setLevel(logging.INFO)
        logger.addHandler(handler)
    try:
        yield
    finally:
        if handler is not None:
            logger.removeHandler(handler)
            handler.close()
            logger.setLevel(old_level)
            for h in changed:
                h.setLevel(logging.NOTSET)


# ------------------------------------------------------------------------------ merge-only


def merge_only(opts: ScreenOptions) -> ScreenResult:
    """Merge complete parts, or confirm an existing complete output (``merge_only``).

    Raises:
        MissingChunksError: chunks are missing (named).
        DeepergatError: no parts and no output of this run; parts or output of another run.
    """
    opts.check()
    inp = open_input(opts.files.input)
    output = opts.files.output_path
    with OutputLock(output, run_token(), on_last_exit=discard_unused_parts(output)):
        inp = verified_input(inp, PartsDir(output))
        result = _merge_or_confirm(inp, output, opts.predictor.model,
                                   top=opts.ranking.top is not None)
        if result.top_csv is not None:
            result.short_list = write_top(opts, output, result.top_csv).summary()
        return result


def _merge_or_confirm(inp: InputStore, output: Path, model: str | None, *,
                      top: bool) -> ScreenResult:
    """The merge of the parts of this input and model, or an output of them already there
    (``top``: the result names the top-K list to write)."""
    parts = PartsDir(output)
    name, sha = model_identity(model)
    manifest = parts.read_manifest()
    identity = read_identity(output)
    top_csv = top_csv_path(output) if top else None
    if manifest is not None:
        parts.check({"input_digest": inp.digest, "model_sha256": sha},
                    keys=("input_digest", "model_sha256"))
        if identity is not None and same_output(identity, manifest):
            parts.remove()
            result = ScreenResult("already-merged", output, parts.path, top_csv=top_csv)
        else:
            result = _merge_manifest(parts, manifest, top_csv)
    elif identity is not None:
        if (identity["input_digest"], identity["model_sha256"]) != (inp.digest, sha):
            raise DeepergatError(
                f"{output}: belongs to another run (input digest {identity['input_digest'][:12]},"
                f" model sha256 {identity['model_sha256'][:12]}; now {inp.digest[:12]} and "
                f"{sha[:12]}); nothing to merge for this input and model"
            )
        result = ScreenResult("already-merged", output, parts.path, top_csv=top_csv)
    else:
        raise SettingError(
            f"nothing to merge: neither {literal(parts.path)} nor {literal(output)} exists; run "
            "deepergat-screen without {merge_only} first"
        )
    log.info("merge-only for model %s: %s", name, result.outcome)
    return result


def _merge_manifest(parts: PartsDir, manifest: dict[str, Any], top: Path | None
                    ) -> ScreenResult:
    """Merge the parts of the run ``manifest`` describes."""
    plan = Plan(int(manifest["n_structures"]), int(manifest["chunk_size"]),
                np.zeros(int(manifest["n_chunks"]), np.int64), rows=load_rows(parts, manifest))
    try:
        merged = merge_parts(parts, plan, manifest)
    except BaseException as e:
        raise work_failure(e, 0, parts.output, lambda: output_bytes(plan.n_structures, manifest),
                           "the committed parts are kept") from None
    return ScreenResult("merged", parts.output, parts.path, top_csv=top, merge=merged)
