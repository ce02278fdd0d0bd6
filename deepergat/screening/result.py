"""What a screen reports: its `ScreenResult`, and the `Hooks` a front end shows progress with."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from deepergat.contract import Status

from .merge import MergeResult

__all__ = ["Hooks", "Outcome", "ScreenResult", "summary_json"]

Outcome = Literal["merged", "already-merged", "shard-done", "merge-claimed"]


@dataclass(frozen=True)
class Hooks:
    """Callbacks for the command line (progress bars belong there).

    Attributes:
        on_start: ``(structures to compute, structures already committed, ranks)`` on rank 0
            when the work starts.
        on_progress: ``(done, bad, flagged)`` summed over ranks, on rank 0, a few times a second.
    """

    on_start: Callable[[int, int, int], None] | None = None
    on_progress: Callable[[int, int, int], None] | None = None


@dataclass
class ScreenResult:
    """What a screen did (complete on rank 0; other ranks get their own counts).

    Attributes:
        outcome: ``merged`` (this run wrote the final file), ``already-merged`` (the complete
            output of this run was already there), ``shard-done`` (this shard is committed,
            others are not yet), ``merge-claimed`` (every chunk is committed and another task merged
            them: the output is there).
        output, parts, top_csv: paths (``top_csv`` None without a top-K list).
        short_list: how the top-K list was made (`ShortList.summary`), "" without one.
        ranks: processes in this run. shard: (I, N) or None.
        structures, seconds: structures computed in this run and the wall time it took.
        status: [8] counts by status of the structures computed in this run; flagged likewise.
        skipped: structures whose chunks were committed before this run.
        merge: the merge's counts (whole file) when this run merged.
        missing: chunks without a part after this run (other shards' work).
        rank_stats: per-rank `PipelineStats.as_dict`, on rank 0.
    """

    outcome: Outcome
    output: Path
    parts: Path
    top_csv: Path | None = None
    short_list: str = ""
    ranks: int = 1
    shard: tuple[int, int] | None = None
    structures: int = 0
    seconds: float = 0.0
    status: np.ndarray = field(default_factory=lambda: np.zeros(len(Status), np.int64))
    flagged: int = 0
    skipped: int = 0
    merge: MergeResult | None = None
    missing: list[int] = field(default_factory=list)
    rank_stats: list[dict[str, Any]] = field(default_factory=list)


def summary_json(result: ScreenResult) -> str:
    """The result as one JSON document (for logs and scripts)."""
    data = {
        "outcome": result.outcome, "output": str(result.output), "ranks": result.ranks,
        "shard": list(result.shard) if result.shard else None,
        "structures": result.structures, "seconds": result.seconds,
        "status": [int(x) for x in result.status], "flagged": result.flagged,
        "skipped": result.skipped, "missing": len(result.missing),
    }
    return json.dumps(data)
