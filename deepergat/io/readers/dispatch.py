"""The worker side: `run_chunk` parses a list of tasks, each with its format's parser, and turns
every parser error into a `Failure` that names the source and the reason."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

from .ase_db import parse_ase_db, parse_db_rows
from .cif import parse_cif_text
from .extxyz import parse_xyz_file, run_frames
from .poscar import parse_poscar_text
from .pymatgen_json import parse_json_file
from .records import (
    CifTextTask,
    DbRowsTask,
    FailTask,
    Failure,
    FileTask,
    FramesTask,
    Outcome,
    PackWarning,
    Record,
    Task,
    TaskError,
    TextTask,
    one_line,
    read_text,
)
from .samples import parse_sample_file

__all__ = ["parse_file", "run_chunk"]


def run_chunk(tasks: Sequence[Task], target_names: Sequence[str]) -> list[Outcome]:
    """Parse a list of tasks; the worker-process entry point.

    Args:
        tasks: tasks in input order.
        target_names: names of all store targets; ASE inputs look them up in ``atoms.info``,
            database key-value pairs and calculator results (missing names stay NaN).

    Returns:
        One `Outcome` per task, in order.
    """
    return [_run_task(t, tuple(target_names)) for t in tasks]


def _run_task(task: Task, names: tuple[str, ...]) -> Outcome:
    """One task's outcome: its records, or its failures; parser warnings become notes (and
    `PackWarning` s warnings)."""
    if isinstance(task, FailTask):
        return Outcome(failures=[task.failure])
    if isinstance(task, FramesTask):
        return run_frames(task, names)
    if isinstance(task, DbRowsTask):
        source = f"{task.path}:rows {task.offset}..{task.offset + task.limit - 1}"
    else:
        source = task.source or getattr(task, "path", "")
    notes: list[str] = []
    warned: list[str] = []
    failures: list[Failure] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            records = _parse(task, source, names, failures)
        notes = [f"{source}: {one_line(str(w.message))}" for w in caught]
        warned = [
            f"{source}: {one_line(str(w.message))}"
            for w in caught
            if issubclass(w.category, PackWarning)
        ]
    except TaskError as e:
        return Outcome(failures=[Failure(source, e.category, one_line(e.detail))])
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # any parser error is the file's problem, not ours
        return Outcome(failures=[Failure(source, "unreadable", one_line(e))])
    return Outcome(records=records, failures=failures, warnings=warned,
                   notes=[n for n in notes if n not in warned])


def _parse(task: CifTextTask | TextTask | DbRowsTask | FileTask, source: str,
           names: tuple[str, ...], failures: list[Failure]) -> list[Record]:
    """The records of a task that is parsed whole (a failing CIF block may go to
    ``failures``)."""
    if isinstance(task, CifTextTask):
        records = parse_cif_text(task.text, source, task.id, expect_one=True)
        _apply_raw_targets(records, task.raw_targets)
        return records
    if isinstance(task, TextTask):
        if task.fmt == "cif":
            return parse_cif_text(task.text, source, task.id, expect_one=False,
                                  failures=failures)
        return [parse_poscar_text(task.text, source, task.id)]
    if isinstance(task, DbRowsTask):
        return parse_db_rows(task, names)
    records = parse_file(task, names, failures)
    _apply_raw_targets(records, task.raw_targets)
    return records


def parse_file(task: FileTask, names: tuple[str, ...],
               failures: list[Failure] | None = None) -> list[Record]:
    """The records of a whole file, by its format.

    Raises:
        TaskError: an unknown format, a file that cannot be read, or one that holds a number
            of structures other than one where ``task.expect_one``.
    """
    source = task.source or task.path
    if task.fmt == "cif":
        records = parse_cif_text(read_text(task.path), source, task.id, expect_one=False,
                                 failures=failures)
    elif task.fmt == "poscar":
        records = [parse_poscar_text(read_text(task.path), source, task.id)]
    elif task.fmt == "json":
        records = parse_json_file(task.path, source, task.id, names)
    elif task.fmt == "extxyz":
        records = parse_xyz_file(task.path, source, task.id, names)
    elif task.fmt == "ase-db":
        records = parse_ase_db(task.path, "db", source, task.id, names)
    elif task.fmt == "generator":
        records = parse_sample_file(task.path, source)
    else:
        raise TaskError("unknown format", f"deepergat does not read {task.fmt!r} files")
    if task.expect_one and len(records) != 1:
        raise TaskError(
            "several structures", f"holds {len(records)} structures where exactly one is expected"
        )
    return records


def _apply_raw_targets(records: list[Record], raw: tuple[tuple[str, str], ...]) -> None:
    """Set the targets given as text (CSV cells, a MatDeepLearn row) on every record."""
    for name, text in raw:
        value = _parse_target(name, text)
        for r in records:
            r.targets[name] = value


def _parse_target(name: str, text: str) -> float:
    """A target's value text as a float; empty text is NaN."""
    s = (text or "").strip()
    if not s:
        return math.nan
    try:
        return float(s)
    except ValueError:
        raise TaskError(
            "bad target", f"target {name!r} value {s[:40]!r} is not a number"
        ) from None
