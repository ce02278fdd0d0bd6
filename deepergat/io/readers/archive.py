"""Archives (``*.zip``, ``*.tar``, ``*.tar.gz``/``*.tgz``, and tar compressed with bzip2 or xz)
of CIF, POSCAR and extxyz files, read member by member in bounded memory (never unpacked to
disk); ids from the member paths.

What an archive holds is never trusted (docs/design.md §13): a member is read in blocks and
refused once it passes `MAX_MEMBER_BYTES` (whatever its header declares), and an archive stops
being read once the bytes it has expanded to pass `MAX_EXPANSION` times its size (beyond the first
`MAX_MEMBER_BYTES`). Every member is accounted for: read; refused or not read, as a failure that
names it (unsafe paths, links and special files, archives inside the archive, formats read only
as files); or, when its name is no structure format at all (``README.md``), ignored with a warning
that names it, as in folders.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from deepergat.contract import MAX_ARCHIVE_EXPANSION, MAX_ARCHIVE_MEMBER_BYTES

from .extxyz import extxyz_tasks
from .records import FailTask, Failure, Task, TextTask, one_line, structure_format

__all__ = ["ARCHIVE_MEMBER_FORMATS", "MAX_EXPANSION", "MAX_MEMBER_BYTES", "archive_tasks"]

log = logging.getLogger(__name__)

#: Formats read from inside archives.
ARCHIVE_MEMBER_FORMATS = ("cif", "poscar", "extxyz")
#: Most bytes one member may hold (declared or as read): a structure file is kilobytes; an
#: extxyz trajectory this large is read from a file, not from an archive.
MAX_MEMBER_BYTES = MAX_ARCHIVE_MEMBER_BYTES
#: Most bytes an archive may expand to per byte of archive, once past `MAX_MEMBER_BYTES`.
MAX_EXPANSION = MAX_ARCHIVE_EXPANSION
#: Bytes read from a member at a time.
_BLOCK = 1 << 20

#: Formats pack reads as files but not from inside archives.
_FILE_ONLY = {"json": "JSON", "ase-db": "ASE database", "csv": "CSV", "generator": "sample .pt"}


class _TooMuch(Exception):
    """The archive expanded past its budget (`MAX_EXPANSION`)."""


def archive_tasks(path: str | Path, *, path_ids: bool) -> Iterator[Task]:
    """Tasks for the structure files inside an archive, in member order, in bounded memory.

    Members that are CIF, POSCAR/CONTCAR or extxyz files (by name) are read; ids are member
    stems (with ``path_ids``: ``<archive>/<member path>``), as for a folder. A member with an
    absolute or ``..`` path, a link or special file, an archive, a file in a format pack reads
    only as a file (JSON, ASE db, CSV, ``.pt``), or one larger than `MAX_MEMBER_BYTES`, is a
    failure naming it; an archive that expands past `MAX_EXPANSION` times its size is a failure
    naming it, and the rest of it is not read. Members in no structure format are ignored with
    one warning per archive that names them.
    """
    p = Path(path)
    found = 0
    ignored: list[str] = []
    try:
        for name, data, failure in _archive_members(p, ignored):
            source = f"{p}:{name}"
            if failure is not None:
                yield FailTask(Failure(source, *failure))
                continue
            found += 1
            member = Path(name)
            sid = f"{p.as_posix()}/{name}" if path_ids else member.stem
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                yield FailTask(Failure(source, "unreadable", "not a UTF-8 text file"))
                continue
            fmt = structure_format(name)
            if fmt == "extxyz":
                yield from extxyz_tasks(p, id_prefix=sid, text=text, label=source)
            else:
                yield TextTask(source=source, fmt=str(fmt), id=sid, text=text)
    except _TooMuch as e:
        failure = Failure(str(p), "too large", str(e))
    except Exception as e:  # zipfile.BadZipFile, tarfile.ReadError, EOFError, zlib errors, ...
        failure = Failure(str(p), "unreadable", f"damaged archive: {one_line(e)}")
    else:
        failure = (None if found else
                   Failure(str(p), "unreadable", "no CIF, POSCAR or extxyz files inside"))
    if ignored:  # not when the pack stopped reading it (GeneratorExit passes the handlers)
        shown = ", ".join(ignored[:5]) + (", ..." if len(ignored) > 5 else "")
        log.warning("%s: ignored %d members that are not structure files (%s)", p,
                    len(ignored), shown)
    if failure is not None:
        yield FailTask(failure)


def _safe_member(name: str) -> bool:
    """A member path that stays inside the archive: relative, no ``..`` part."""
    parts = name.replace("\\", "/").split("/")
    return not (name.startswith(("/", "\\")) or ":" in parts[0] or ".." in parts)


def _verdict(name: str) -> tuple[str, str] | None:
    """None for a member to read, ``("", "")`` for one to ignore, else (category, detail) of
    why it is not read."""
    if not _safe_member(name):
        return "unsafe member", "unsafe path (absolute or with ..): refused"
    fmt = structure_format(name)
    if fmt in ARCHIVE_MEMBER_FORMATS:
        return None
    if fmt == "archive":
        return "nested archive", "an archive inside the archive is not read; unpack it"
    if fmt in _FILE_ONLY:
        return ("not read from archives", f"{_FILE_ONLY[fmt]} files are read as files, not "
                                          "from inside archives; unpack the archive")
    return "", ""


class _Budget:
    """Bytes an archive may still expand to."""

    def __init__(self, archive_bytes: int) -> None:
        self.limit = max(MAX_EXPANSION * archive_bytes, MAX_MEMBER_BYTES)
        self.used = 0

    def take(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise _TooMuch(
                f"expands past {MAX_EXPANSION} bytes per byte of archive ({self.used} bytes "
                f"from {self.limit // MAX_EXPANSION}); the rest of it is not read"
            )


def _read_member(fh: IO[bytes], declared: int, budget: _Budget) -> bytes | None:
    """A member's bytes, read in blocks; None once it passes `MAX_MEMBER_BYTES` (its header
    may have lied about its size)."""
    if declared > MAX_MEMBER_BYTES:
        return None
    parts: list[bytes] = []
    size = 0
    while True:
        block = fh.read(min(_BLOCK, MAX_MEMBER_BYTES + 1 - size))
        if not block:
            return b"".join(parts)
        budget.take(len(block))
        size += len(block)
        if size > MAX_MEMBER_BYTES:
            return None
        parts.append(block)


def _too_large(declared: int) -> tuple[str, str]:
    return ("too large", f"holds {'at least ' if declared <= MAX_MEMBER_BYTES else ''}"
                         f"{max(declared, MAX_MEMBER_BYTES + 1)} bytes; members of at most "
                         f"{MAX_MEMBER_BYTES} bytes are read")


_Member = tuple[str, bytes, None] | tuple[str, None, tuple[str, str]]


def _archive_members(path: Path, ignored: list[str]) -> Iterator[_Member]:
    """(member name, its bytes, None) for a member to read, or (name, None, (category,
    detail)) for one that is not read, streamed in order; names of ignored members are appended
    to ``ignored``.

    Raises:
        _TooMuch: the archive expanded past its budget.
    """
    budget = _Budget(path.stat().st_size)
    if path.name.lower().endswith(".zip"):
        yield from _zip_members(path, ignored, budget)
    else:
        yield from _tar_members(path, ignored, budget)


def _zip_members(path: Path, ignored: list[str], budget: _Budget) -> Iterator[_Member]:
    import zipfile

    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if info.is_dir():
                continue
            why = _verdict(info.filename)
            if why == ("", ""):
                ignored.append(info.filename)
            elif why is not None:
                yield info.filename, None, why
            else:
                with z.open(info) as fh:
                    data = _read_member(fh, info.file_size, budget)
                if data is None:
                    yield info.filename, None, _too_large(info.file_size)
                else:
                    yield info.filename, data, None


def _tar_members(path: Path, ignored: list[str], budget: _Budget) -> Iterator[_Member]:
    """A tar's members in one forward pass through a decompressor whose output (tar's own
    headers, and members passed over, included) is counted against the budget."""
    import tarfile

    with _decompressed(path, budget) as stream, tarfile.open(fileobj=stream, mode="r:") as t:
        for member in t:
            t.members.clear()  # tarfile keeps every member it met: one at a time is enough
            if not member.isfile():
                if member.issym() or member.islnk():
                    yield member.name, None, ("unsafe member", "a link: refused")
                elif not member.isdir():
                    yield member.name, None, ("unsafe member", "not a regular file: refused")
                continue
            why = _verdict(member.name)
            if why == ("", ""):
                ignored.append(member.name)
            elif why is not None:
                yield member.name, None, why
            else:
                fh = t.extractfile(member)
                data = b"" if fh is None else _read_member(fh, member.size, budget)
                if data is None:
                    yield member.name, None, _too_large(member.size)
                else:
                    yield member.name, data, None


class _Counted:
    """A read-only stream whose bytes, read or passed over, are taken from an archive's
    budget; a read or seek past what the budget has left fails before anything is allocated or
    decompressed (tarfile reads long-name and pax headers whole)."""

    def __init__(self, raw: IO[bytes], budget: _Budget) -> None:
        self._raw = raw
        self._budget = budget

    def _left(self) -> int:
        return self._budget.limit - self._budget.used

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > self._left():
            self._budget.take(self._left() + 1)  # raises: a read this large passes the budget
        data = self._raw.read(n)
        self._budget.take(len(data))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        here = self._raw.tell()
        target = offset if whence == 0 else here + offset if whence == 1 else None
        if target is None:
            raise OSError("an archive stream is not read from its end")
        # moving forward decompresses what it passes; moving back decompresses from the start
        cost = target - here if target >= here else target
        if cost > self._left():
            self._budget.take(self._left() + 1)
        self._budget.take(cost)
        return self._raw.seek(target)

    def tell(self) -> int:
        return self._raw.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> _Counted:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _decompressed(path: Path, budget: _Budget) -> _Counted:
    """The archive's tar stream: decompressed by its magic bytes (gzip, bzip2, xz) or as is."""
    import bz2
    import gzip
    import lzma

    with open(path, "rb") as fh:
        magic = fh.read(6)
    opener: Any = open
    if magic.startswith(b"\x1f\x8b"):
        opener = gzip.open
    elif magic.startswith(b"BZh"):
        opener = bz2.open
    elif magic.startswith(b"\xfd7zXZ\x00"):
        opener = lzma.open
    return _Counted(opener(path, "rb"), budget)
