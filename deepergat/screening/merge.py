"""Parts → the final predictions file, in input order, then the parts are removed.

The manifest holds everything the final file's attributes need (model, its sha256 and metadata,
input, digest, targets, embedding width), so a merge needs no model. Of the structures it reads
only their elements, for each row's reduced formula and element count, after checking that the
input store is still the one screened. The file is written under a temporary name and renamed,
so a merge killed half-way leaves the parts intact and no output; the parts are removed only
after the rename.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepergat.contract import Status
from deepergat.elements import compositions
from deepergat.errors import DeepergatError, SettingError
from deepergat.io.store import Store

from .failures import literal
from .parts import PartsDir, describe_stamps, store_fingerprint
from .plan import Plan
from .predictions import FLAG_UNSEEN_ELEMENT, NoSpaceError, PredictionsWriter

__all__ = [
    "MergeResult",
    "MissingChunksError",
    "check_input_unchanged",
    "check_space",
    "describe_missing",
    "merge_parts",
    "output_bytes",
]

log = logging.getLogger(__name__)


class MissingChunksError(DeepergatError):
    """Some chunks have no part file; ``missing`` lists them."""

    def __init__(self, message: str, missing: Sequence[int]) -> None:
        super().__init__(message)
        self.missing = list(missing)


@dataclass
class MergeResult:
    """A finished merge.

    Attributes:
        path: the predictions file. n_structures: its rows.
        status: [len(Status)] int64 counts by status code. flagged: rows with flag bit 0.
        seconds: time the merge took.
    """

    path: Path
    n_structures: int
    status: np.ndarray = field(default_factory=lambda: np.zeros(len(Status), np.int64))
    flagged: int = 0
    seconds: float = 0.0


def _ranges(values: Sequence[int]) -> str:
    out: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        out.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ", ".join(out)


def describe_missing(missing: Sequence[int], plan: Plan, limit: int = 20) -> str:
    """``"chunks 3, 7-9 of 12 (structures [6000, 8000), …)"``, shortened past ``limit``."""
    spans = [plan.bounds(k) for k in missing[:limit]]
    where = ", ".join(f"[{a}, {b})" for a, b in spans)
    if len(missing) > limit:
        where += f", … ({len(missing) - limit} more)"
    word = "chunk" if len(missing) == 1 else "chunks"
    return f"{word} {_ranges(list(missing))} of {plan.n_chunks} (structures {where})"


def output_bytes(n_structures: int, manifest: dict[str, Any]) -> int:
    """Upper bound of a predictions file's size (uncompressed) for this run, ids of up to 32
    characters (what `PredictionsWriter` first reserves)."""
    t = len(manifest["targets"])
    # index, status, flags, values, an id (reference, heap header, text)
    per = 8 + 2 + 4 * t * (2 if manifest.get("spread") else 1) + 32 + 32
    if manifest.get("embeddings"):
        per += 4 * int(manifest.get("embedding_dim") or 0)
    return n_structures * per + (2 << 20)


def check_space(output: Path, needed: int, *, factor: float) -> None:
    """Refuse to start when the output's folder lacks ``factor`` × ``needed`` bytes (parts and
    the merged file side by side), instead of failing on a full disk half way.

    Raises:
        NoSpaceError: naming the folder, the MB needed and free.
    """
    try:
        free = shutil.disk_usage(output.parent if str(output.parent) else ".").free
    except OSError:
        return
    want = int(needed * factor)
    if free < want:
        raise NoSpaceError(
            f"no space left on the folder of {output}: this run needs ~{want / 1e6:.0f} MB "
            f"(parts and the merged file), {free / 1e6:.0f} MB are free", want, free
        )


def merge_parts(parts: PartsDir, plan: Plan, manifest: dict[str, Any], *,
                run: dict[str, Any] | None = None) -> MergeResult:
    """Write ``parts.output`` from every chunk's part, in input order, then remove the parts.

    Args:
        parts: the parts directory (its ``output`` is the final file).
        plan: the run's chunks (from the manifest's chunk size).
        manifest: the run manifest.
        run: what the merging run computed (``structures``, ``seconds``, ``ranks``), stored
            as the ``screen_run`` attribute for reports.

    Returns:
        The `MergeResult`.

    Raises:
        MissingChunksError: some chunks have no part, or parts another run wrote (removed):
            names them; nothing is written.
        NoSpaceError: the output's disk cannot hold the file (the parts are kept; nothing
            else is left).
        DeepergatError: a damaged part.
    """
    t0 = time.perf_counter()
    missing = parts.missing(range(plan.n_chunks))
    if missing:
        raise MissingChunksError(
            f"{parts.path}: cannot merge, {len(missing)} of {plan.n_chunks} chunks are missing: "
            f"{describe_missing(missing, plan)}; rerun the screen with the same settings to "
            "compute them (committed chunks are kept)",
            missing,
        )
    run_id = str(manifest.get("run") or parts.run_id())
    foreign = parts.foreign(range(plan.n_chunks), run=run_id)
    if foreign:  # never merged: removed, so the next run computes them
        for k, _ in foreign:
            parts.part_path(k).unlink(missing_ok=True)
        ks = [k for k, _ in foreign]
        raise MissingChunksError(
            f"{parts.path}: cannot merge, {len(foreign)} part files were not written by this "
            f"run (manifest run {run_id!r}): {describe_stamps(foreign)}; removed — rerun the "
            f"screen with the same settings to compute {describe_missing(ks, plan)} again",
            ks,
        )
    check_space(parts.output, output_bytes(plan.n_structures, manifest), factor=1.1)
    check_input_unchanged(parts, manifest)
    targets = manifest["targets"]
    emb_dim = int(manifest["embedding_dim"]) if manifest.get("embeddings") else None
    spread = bool(manifest.get("spread", False))
    attrs = {
        "model": str(manifest["model"]),
        "model_sha256": str(manifest["model_sha256"]),
        "model_metadata": json.dumps(manifest["model_metadata"], sort_keys=True),
        "input": str(manifest["input"]),
        "input_digest": str(manifest["input_digest"]),
        "screen_settings": json.dumps(screen_settings(manifest), sort_keys=True),
        "screen_run": json.dumps(run or {}, sort_keys=True),
    }
    result = MergeResult(path=parts.output, n_structures=plan.n_structures)
    try:
        with PredictionsWriter(
            parts.output, n_structures=plan.n_structures, targets=targets,
            embedding_dim=emb_dim, attrs=attrs, spread=spread,
        ) as w, Store(manifest["input"]) as store:
            for k in range(plan.n_chunks):
                a, b = plan.bounds(k)
                rows = parts.read(k, start=a, stop=b, targets=len(targets),
                                  embedding_dim=emb_dim, spread=spread, run=run_id,
                                  index=plan.store_rows(a, b))
                if plan.rows is None:
                    rows.formula, rows.n_elements = compositions(store.atomic_numbers(a, b),
                                                                 store.n_atoms[a:b])
                else:
                    chosen = store.read_rows(plan.store_rows(a, b))
                    rows.formula, rows.n_elements = compositions(chosen.atomic_numbers,
                                                                 chosen.n_atoms)
                w.write(a, rows)
                parts.refresh_claim()  # a claimant on another node shows it merges still
                result.status += np.bincount(rows.status, minlength=len(Status))[: len(Status)]
                result.flagged += int(np.count_nonzero(rows.flags & FLAG_UNSEEN_ELEMENT))
    except NoSpaceError as e:
        raise NoSpaceError(e.detail, e.needed, e.free,
                           f"the parts in {literal(parts.path)} are kept: free space and run the "
                           "same command again (or choose another {output})") from None
    parts.remove()
    result.seconds = time.perf_counter() - t0
    log.info("merged %d chunks into %s in %.1f s", plan.n_chunks, parts.output, result.seconds)
    return result


def check_input_unchanged(parts: PartsDir, manifest: dict[str, Any]) -> None:
    """The input store is the one the run screened: its fingerprint is the one recorded when the
    run began, or else its arrays still hash to the run's content digest.

    Raises:
        SettingError: the store is gone, unreadable or changed (its parts describe other
            structures than the file now holds); the parts are kept.
    """
    store = str(manifest["input"])
    try:
        if store_fingerprint(store) == manifest.get("input_fingerprint"):
            return

        def rehash() -> str:
            with Store(store) as s:
                return s.compute_digest()

        digest = parts.input_digest(store, rehash)
    except (OSError, DeepergatError) as e:
        raise SettingError(
            f"{literal(store)}: cannot read the input store to finish the screen "
            f"({literal(' '.join(str(e).split()))}); put it back and run the same command again "
            "(the parts are kept)") from None
    if digest != manifest["input_digest"]:
        raise SettingError(
            f"{literal(store)}: the input store changed while it was screened (content digest "
            f"{digest[:12]}, the screen began with {str(manifest['input_digest'])[:12]}): the "
            f"parts in {literal(parts.path)} describe other structures; screen it again with "
            "{resume}")


def screen_settings(manifest: dict[str, Any]) -> dict[str, Any]:
    """The settings a predictions file records so a rerun can recognise its own output."""
    settings = {
        "max_atoms": manifest["max_atoms"],
        "overlap_threshold": manifest["overlap_threshold"],
        "embeddings": bool(manifest["embeddings"]),
    }
    if manifest.get("subset"):  # a funnel's rows (a full screen's record stays as it was)
        settings["subset"] = manifest["subset"]
    return settings
