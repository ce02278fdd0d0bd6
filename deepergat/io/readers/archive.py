"""Archives (``*.zip``, ``*.tar``, ``*.tar.gz``, ``*.tgz``) of CIF, POSCAR and extxyz files, read
in memory member by member (never unpacked to disk); ids from the member paths."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .extxyz import extxyz_tasks
from .records import FailTask, Failure, Task, TextTask, one_line, structure_format

__all__ = ["ARCHIVE_MEMBER_FORMATS", "archive_tasks"]

#: Formats read from inside archives.
ARCHIVE_MEMBER_FORMATS = ("cif", "poscar", "extxyz")


def archive_tasks(path: str | Path, *, path_ids: bool) -> Iterator[Task]:
    """Tasks for the structure files inside a ``.zip`` or ``.tar(.gz)`` archive, read in
    memory (never unpacked to disk), in member order.

    Members that are CIF, POSCAR/CONTCAR or extxyz files (by name) are read; ids are member
    stems (with ``path_ids``: ``<archive>/<member path>``), as for a folder. A member with an
    absolute or ``..`` path, or a link, is refused (a failure naming it); other members are
    ignored.
    """
    p = Path(path)
    found = 0
    try:
        for name, data, why in _archive_members(p):
            source = f"{p}:{name}"
            if data is None:
                yield FailTask(Failure(source, "unsafe member", why))
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
    except Exception as e:  # zipfile.BadZipFile, tarfile.ReadError, EOFError, zlib errors, ...
        yield FailTask(Failure(str(p), "unreadable", f"damaged archive: {one_line(e)}"))
        return
    if not found:
        yield FailTask(Failure(str(p), "unreadable", "no CIF, POSCAR or extxyz files inside"))


def _safe_member(name: str) -> bool:
    """A member path that stays inside the archive: relative, no ``..`` part."""
    parts = name.replace("\\", "/").split("/")
    return not (name.startswith(("/", "\\")) or ":" in parts[0] or ".." in parts)


def _wanted(name: str) -> str:
    """``"ok"`` for a member to read, why it is refused, or ``""`` for one to ignore."""
    if not _safe_member(name):
        return "unsafe path (absolute or with ..): refused"
    if structure_format(name) not in ARCHIVE_MEMBER_FORMATS:
        return ""
    return "ok"


def _archive_members(path: Path) -> Iterator[tuple[str, bytes | None, str]]:
    """(member name, its bytes or None, why it is skipped) of an archive, streamed in order:
    regular files only; a member is read only when its name is safe and a structure format."""
    import tarfile
    import zipfile

    if path.name.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.is_dir():
                    continue
                why = _wanted(info.filename)
                if why == "ok":
                    yield info.filename, z.read(info), ""
                elif why:
                    yield info.filename, None, why
        return
    with tarfile.open(path, mode="r|*") as t:  # streamed: one pass, nothing unpacked to disk
        for member in t:
            if not member.isfile():
                if member.issym() or member.islnk():
                    yield member.name, None, "a link: refused"
                continue
            why = _wanted(member.name)
            if why == "ok":
                fh = t.extractfile(member)
                yield member.name, fh.read() if fh is not None else b"", ""
            elif why:
                yield member.name, None, why
