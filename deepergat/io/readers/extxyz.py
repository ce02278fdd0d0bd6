"""extxyz (``*.extxyz``, ``*.xyz``): frames split by their atom counts in the main process,
parsed by ASE's extxyz reader in the workers, a bad frame failing alone.

Targets are looked up in each frame's ``info`` and calculator results (`record_from_ase`).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .records import (
    FailTask,
    Failure,
    FramesTask,
    Outcome,
    Record,
    Task,
    TaskError,
    numbered_ids,
    one_line,
    record_from_ase,
)

__all__ = ["FRAMES_PER_TASK", "TEXT_PER_TASK", "extxyz_tasks", "parse_xyz_file", "run_frames"]

#: extxyz frames per task.
FRAMES_PER_TASK = 64
#: A task also ends once its frames hold this much text (large frames travel a few at a time).
TEXT_PER_TASK = 4 << 20

#: A frame, or what could not be read as one, with its 0-based frame index (-1: lines that are
#: no frame at all, or a file that cannot be read).
_Item = tuple[int, str | Failure]


def extxyz_tasks(path: str | Path, *, id_prefix: str, text: str | None = None,
                 label: str | None = None) -> Iterator[Task]:
    """Split an (extended) XYZ file into frames and batch them into `FramesTask` s, streamed.

    A frame is a line with the atom count, a comment line, one line per atom, and any ``VEC``
    lines (as ASE reads them). Blank lines between frames are skipped. Every frame is either
    passed on or reported as a failure, and the split resumes at the next header, so one bad
    frame never hides the frames after it: a frame whose atom lines end early (the next frame's
    count line met where an atom was due) or run on past its count fails alone; lines that are
    no frame at all are reported by their line numbers. Frames keep their position in the file
    (frame k is id ``<id>_<k>`` whatever failed before it).

    Args:
        path: the file. id_prefix: the file's id.
        text: the file's content when it is not on disk (an archive member; then ``label``
            names it in messages).
    """
    p = Path(label) if label is not None else Path(path)
    items = _frames(p, text)
    first_item = next(items, None)
    if first_item is None:
        yield FailTask(Failure(str(p), "unreadable", "no frames in the file"))
        return
    second_item = next(items, None)
    single = (second_item is None and first_item[0] == 0
              and not isinstance(first_item[1], Failure))
    batch: list[str] = []
    start = size = 0
    for k, item in _chain_first(first_item, second_item, items):
        if isinstance(item, Failure):
            if batch:
                yield FramesTask(str(p), start, tuple(batch), id_prefix, single)
                batch = []
            yield FailTask(item)
            continue
        if not batch:
            start, size = k, 0
        batch.append(item)
        size += len(item)
        if len(batch) >= FRAMES_PER_TASK or size >= TEXT_PER_TASK:
            yield FramesTask(str(p), start, tuple(batch), id_prefix, single)
            batch = []
    if batch:
        yield FramesTask(str(p), start, tuple(batch), id_prefix, single)


def _chain_first(first: Any, second: Any, rest: Iterator[Any]) -> Iterator[Any]:
    """The two items read ahead (the second None at the end), then the rest."""
    yield first
    if second is not None:
        yield second
        yield from rest


def _frames(p: Path, text: str | None) -> Iterator[_Item]:
    """The frames of a file on disk, or of ``text`` when given, in order."""
    if text is not None:
        yield from _split(io.StringIO(text), p)
        return
    try:
        fh = open(p, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as e:
        yield -1, Failure(str(p), "unreadable", f"cannot open: {e.strerror or e}")
        return
    with fh:
        try:
            yield from _split(fh, p)
        except UnicodeDecodeError as e:
            yield -1, Failure(str(p), "unreadable", f"not a UTF-8 text file: {e}")


class _Lines:
    """The lines of a text file with their 1-based numbers; lines read ahead can be pushed
    back."""

    def __init__(self, fh: io.TextIOBase) -> None:
        self._fh = fh
        self._back: list[str] = []
        self.line_no = 0  # the number of the line last read

    def read(self) -> str:
        """The next line (``""`` at the end)."""
        self.line_no += 1
        return self._back.pop() if self._back else self._fh.readline()

    def unread(self, line: str) -> None:
        """Push ``line`` back: the next `read` returns it."""
        self.line_no -= 1
        self._back.append(line)


def _split(fh: io.TextIOBase, p: Path) -> Iterator[_Item]:
    """Frames and failures of an XYZ text, in order (`extxyz_tasks` gives the rules)."""
    lines = _Lines(fh)
    k = 0
    while True:
        line = lines.read()
        if not line:
            return
        if not line.strip():
            continue
        natoms = _xyz_count(line)
        if natoms is None:  # not a header: skip to the next one, reporting the lines
            failure, more = _skip_junk(lines, line, p)
            yield -1, failure
            if not more:
                return
            continue
        yield k, _read_frame(lines, line, natoms, f"{p}:frame {k}")
        k += 1


def _skip_junk(lines: _Lines, line: str, p: Path) -> tuple[Failure, bool]:
    """The failure naming the lines from ``line`` (no atom count) up to the next count line,
    and whether such a line follows (it is pushed back)."""
    first = lines.line_no
    while True:
        nxt = lines.read()
        if not nxt or _xyz_count(nxt) is not None:
            last = lines.line_no - 1
            if nxt:
                lines.unread(nxt)
            break
    where = f"line {first}" if last == first else f"lines {first}-{last}"
    failure = Failure(f"{p}:{where}", "unreadable",
                      f"not an XYZ frame (line {first} should hold an atom count, "
                      f"got {line.strip()[:40]!r})")
    return failure, bool(nxt)


def _read_frame(lines: _Lines, header: str, natoms: int, src: str) -> str | Failure:
    """The text of the frame that starts with ``header`` (its atom count ``natoms``), or the
    failure of a frame that ends early or runs on past its count."""
    frame = [header]
    comment = lines.read()
    if not comment:
        return Failure(src, "unreadable", "file ends inside the frame")
    frame.append(comment)
    for i in range(natoms):
        nxt = lines.read()
        if not nxt:
            return Failure(src, "unreadable", f"the file ends after {i} of its {natoms} atoms")
        if _xyz_count(nxt) is not None or not nxt.strip():
            lines.unread(nxt)
            return Failure(src, "unreadable",
                           f"claims {natoms} atoms but has {i} (line {lines.line_no + 1} ends it)")
        frame.append(nxt)
    while True:  # VEC lines belong to the frame; more atom lines are an error
        nxt = lines.read()
        if nxt.lstrip().startswith("VEC"):
            frame.append(nxt)
            continue
        problem = ""
        if nxt and _xyz_atom_line(nxt):
            extra = 0
            while nxt and _xyz_atom_line(nxt):
                extra += 1
                nxt = lines.read()
            problem = (f"claims {natoms} atoms but {extra} more atom "
                       f"line{'s follow' if extra > 1 else ' follows'}")
        if nxt:
            lines.unread(nxt)
        return Failure(src, "unreadable", problem) if problem else "".join(frame)


def _xyz_count(line: str) -> int | None:
    """The atom count of an XYZ header line (one non-negative integer), else None."""
    parts = line.split()
    if len(parts) != 1:
        return None
    try:
        n = int(parts[0])
    except ValueError:
        return None
    return n if n >= 0 else None


def _xyz_atom_line(line: str) -> bool:
    """Whether a line looks like an XYZ atom line: a species or number, then 3 coordinates
    (or coordinates first, as some ``Properties`` orders write them)."""
    parts = line.split()
    if len(parts) < 4:
        return False

    def numbers(items: list[str]) -> bool:
        try:
            [float(x) for x in items]
        except ValueError:
            return False
        return True

    return numbers(parts[1:4]) or numbers(parts[0:3])


def _parse_xyz_text(text: str) -> Any:
    from ase.io.extxyz import read_xyz

    return next(read_xyz(io.StringIO(text), index=0))


def parse_xyz_file(path: str, source: str, sid: str, names: tuple[str, ...]) -> list[Record]:
    """Every frame of an extxyz file at once (a MatDeepLearn row's structure file)."""
    from ase.io import read

    frames = read(path, index=":", format="extxyz")
    ids = numbered_ids(sid, len(frames))
    return [record_from_ase(a, source, i, names) for a, i in zip(frames, ids, strict=True)]


def run_frames(task: FramesTask, names: tuple[str, ...]) -> Outcome:
    """Parse a FramesTask; a bad frame fails alone (frames were split by their atom counts)."""
    out = Outcome()
    ids = numbered_ids(task.id, len(task.texts), single=task.single, first=task.first)
    for j, (text, sid) in enumerate(zip(task.texts, ids, strict=True)):
        source = f"{task.path}:frame {task.first + j}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                atoms = _parse_xyz_text(text)
            out.records.append(record_from_ase(atoms, source, sid, names))
        except TaskError as e:
            out.failures.append(Failure(source, e.category, one_line(e.detail)))
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as e:
            out.failures.append(Failure(source, "unreadable", one_line(e)))
    return out
