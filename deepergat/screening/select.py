"""Choosing structures from a predictions file and handing them on: ``where`` expressions,
`extract` (structure files ready for DFT and ``selection.csv``), `read_predictions` (a pandas
DataFrame for notebooks).

``where`` takes comparisons of a column with a number — ``heat_ref < 0.2``,
``heat_ref_std <= 0.05``, ``status == 0``, ``flags != 1`` — joined by ``and`` / ``or`` and
grouped with parentheses; ``and`` binds tighter. Columns are the targets, ``<target>_std`` (an
ensemble's spread), ``status`` and ``flags``. The text is tokenized and parsed here; nothing is
evaluated as Python. A row with NaN in a compared column never matches.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from deepergat.contract import (
    DEFAULT_GROUP_SECONDS,
    DEFAULT_RANK_BY,
    DEFAULT_RANK_K,
    DEFAULT_RANK_ORDER,
    RankBy,
    RankOrder,
)
from deepergat.errors import DeepergatError, SettingError
from deepergat.io.matching import MatchTolerance
from deepergat.system.files import atomic_open, atomic_path

from .failures import literal
from .predictions import PREDICTIONS_FORMAT, compositions_of, take_rows
from .shortlist import Entry, ListSettings, entries_table, short_list

__all__ = ["ExtractResult", "extract", "parse_where", "read_predictions", "where_rows"]

_READ_ROWS = 1 << 20
_TOKEN = re.compile(r"\s*(?:(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
                    r"|(?P<op><=|>=|==|!=|<|>)|(?P<paren>[()])|(?P<name>[A-Za-z_][A-Za-z0-9_]*))")
_OPS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
    "==": np.equal, "!=": np.not_equal,
}
_MIRROR = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}

#: A parsed expression: ("cmp", column, op, number) | ("and" | "or", left, right).
Node = tuple[Any, ...]


def _where_error(text: str, problem: str) -> SettingError:
    """``where '<text>': <problem>`` (``problem`` is plain text)."""
    return SettingError(f"{{where}} {literal(repr(text))}: {literal(problem)}")


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise _where_error(text, f"cannot read {text[pos:pos + 20]!r} (columns, numbers, "
                                     "< <= > >= == !=, and, or, parentheses)")
        kind = m.lastgroup or ""
        value = m.group(kind).strip()
        if kind == "name" and value.lower() in ("and", "or"):
            kind, value = "bool", value.lower()
        out.append((kind, value))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


class _Parser:
    """Recursive descent over the tokens of a ``where`` text: ``or`` of ``and`` of
    comparisons or parenthesised expressions."""

    def __init__(self, text: str, columns: list[str]) -> None:
        self.text = text
        self.columns = columns
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str) -> str:
        tok = self.peek()
        if tok is None or tok[0] != kind:
            got = "the end" if tok is None else repr(tok[1])
            raise _where_error(self.text, f"expected a {_WHAT[kind]}, got {got}")
        self.pos += 1
        return tok[1]

    def column(self, name: str) -> str:
        if name not in self.columns:
            raise _where_error(self.text, f"no column {name!r}; columns: "
                                          f"{', '.join(self.columns)}")
        return name

    def comparison(self) -> Node:
        tok = self.peek()
        if tok is not None and tok[0] == "paren" and tok[1] == "(":
            self.take("paren")
            node = self.disjunction()
            if self.take("paren") != ")":
                raise _where_error(self.text, "unbalanced parentheses")
            return node
        if tok is not None and tok[0] == "num":
            number = float(self.take("num"))
            op = self.take("op")
            return ("cmp", self.column(self.take("name")), _MIRROR[op], number)
        name = self.column(self.take("name"))
        op = self.take("op")
        return ("cmp", name, op, float(self.take("num")))

    def conjunction(self) -> Node:
        node = self.comparison()
        while self.peek() == ("bool", "and"):
            self.pos += 1
            node = ("and", node, self.comparison())
        return node

    def disjunction(self) -> Node:
        node = self.conjunction()
        while self.peek() == ("bool", "or"):
            self.pos += 1
            node = ("or", node, self.conjunction())
        return node


def parse_where(text: str, columns: list[str]) -> Node:
    """The expression tree of a ``where`` text, its columns checked against ``columns``.

    Raises:
        SettingError: a syntax error, an unknown column (the known ones listed).
    """
    parser = _Parser(text, columns)
    if not parser.tokens:
        raise SettingError("{where}: empty expression")
    tree = parser.disjunction()
    if parser.pos != len(parser.tokens):
        raise _where_error(text, f"unexpected {parser.tokens[parser.pos][1]!r}")
    return tree


_WHAT = {"num": "number", "op": "comparison (< <= > >= == !=)", "name": "column name",
         "paren": "parenthesis", "bool": "and/or"}


def _columns(f: h5py.File) -> list[str]:
    names = list(f["predictions"])
    spread = [f"{n}_std" for n in names] if "std" in f else []
    return [*names, *spread, "status", "flags"]


def _dataset(f: h5py.File, column: str) -> h5py.Dataset:
    if column in ("status", "flags"):
        return f[column]
    if column.endswith("_std") and "std" in f and column[:-4] in f["std"]:
        return f[f"std/{column[:-4]}"]
    return f[f"predictions/{column}"]


def _evaluate(node: Node, read: Callable[[str], np.ndarray]) -> np.ndarray:
    if node[0] == "cmp":
        _, col, op, number = node
        values = read(col).astype(np.float64)
        with np.errstate(invalid="ignore"):
            return _OPS[op](values, number) & ~np.isnan(values)
    left, right = _evaluate(node[1], read), _evaluate(node[2], read)
    return left & right if node[0] == "and" else left | right


def where_rows(path: str | os.PathLike[str], text: str) -> np.ndarray:
    """Rows (ascending) of a predictions file where the ``where`` expression holds, read in
    blocks of a million rows."""
    with h5py.File(path, "r") as f:
        tree = parse_where(text, _columns(f))
        m = int(f["status"].shape[0])
        parts = []
        for a in range(0, m, _READ_ROWS):
            b = min(m, a + _READ_ROWS)
            mask = _evaluate(tree, lambda c, a=a, b=b: _dataset(f, c)[a:b])
            parts.append(np.flatnonzero(mask) + a)
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _open_predictions(path: Path) -> dict[str, str]:
    try:
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format", "")
            fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
            if fmt != PREDICTIONS_FORMAT:
                raise DeepergatError(f"{path}: not a deepergat predictions file (format {fmt!r})")
            return {k: (v.decode() if isinstance(v, bytes) else str(v))
                    for k, v in f.attrs.items() if k in ("input", "input_digest", "model")}
    except OSError as e:
        raise DeepergatError(f"{path}: not a readable predictions file: "
                             f"{' '.join(str(e).split())[:160]}") from None


@dataclass
class ExtractResult:
    """What `extract` wrote: the folder, the structure files, ``selection.csv``."""

    folder: Path
    files: list[Path | None]
    selection: Path


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SUFFIX = {"cif": "cif", "poscar": "vasp", "extxyz": "extxyz"}


def extract(
    predictions: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    top: int | None = None,
    ids: list[str] | None = None,
    where: str | None = None,
    fmt: Literal["cif", "poscar", "extxyz"] = "cif",
    order: RankOrder = DEFAULT_RANK_ORDER,
    rank_by: RankBy = DEFAULT_RANK_BY,
    rank_k: float = DEFAULT_RANK_K,
    store: str | os.PathLike[str] | None = None,
    group: bool = True,
    match_tol: str = str(MatchTolerance()),
    known: tuple[str, ...] = (),
    novel_only: bool = False,
    group_seconds: float | None = DEFAULT_GROUP_SECONDS,
) -> ExtractResult:
    """Write the chosen structures as files ready for DFT, and ``out_dir/selection.csv``.

    ``top`` and ``where`` choose a short list (`deepergat.screening.shortlist`: ranked as the
    top-K CSV ranks, filtered by ``where``, one structure per distinct crystal unless ``group``
    is off, marked or left out by ``known``/``novel_only``); ``ids`` chooses exactly those
    structures. Structures are read from the input store the predictions file records (or
    ``store``), which must still hold what was screened: its content digest is recomputed.

    Files are ``<n>_<id>.<cif|vasp|extxyz>`` (n: the position in the selection, from 1,
    zero-padded so that names sort in list order); a structure that is not periodic on all
    three axes is written as extxyz whatever ``fmt`` (CIF and POSCAR need a cell), one without
    atoms not at all. ``selection.csv`` has ``id,formula,<target>[,<target>_std]...,status,
    flags,file,group_size,members,known`` (``file`` empty when none; ``members`` the ids of
    the structure's group, best first, ``;``-separated).

    Raises:
        DeepergatError: no choice or ``ids`` with another, unknown ids, an unreadable
            predictions file, a store that is gone or changed since the screen, an existing
            non-empty folder that is no earlier extraction.
    """
    from deepergat.io.store import Store

    path = Path(predictions)
    attrs = _open_predictions(path)
    if ids is not None and (top is not None or where is not None):
        raise SettingError("choose the structures with {ids}, or with {top} and/or {where}")
    if ids is None and top is None and where is None:
        raise SettingError("choose the structures with {top}, {where} or {ids}")
    if fmt not in _SUFFIX:
        raise SettingError(f"{{fmt}} {literal(repr(fmt))}: choose cif, poscar or extxyz")
    settings = ListSettings(top=top, order=order, rank_by=rank_by, rank_k=rank_k, where=where,
                            group=group, tolerance=MatchTolerance.parse(match_tol),
                            known=tuple(str(k) for k in known), novel_only=novel_only,
                            seconds=group_seconds)
    settings.check()
    store_path = Path(store) if store is not None else Path(attrs.get("input", ""))
    if not store_path.is_file():
        raise SettingError(f"{literal(path)}: its input store {literal(store_path)} is gone; "
                           "pass {store} with the store that was screened")
    out = Path(out_dir)
    earlier = _earlier_extraction(out)
    with Store(store_path) as s:
        if s.compute_digest() != attrs.get("input_digest"):
            raise DeepergatError(
                f"{store_path}: is not the store {path} was screened on (its content changed "
                "since, or it is another store); extract from the store that was screened"
            )
        if ids is not None:
            entries = _entries_of_ids(path, ids, settings, store_path)
        else:
            entries = short_list(path, settings, store=store_path,
                                 store_verified=True).entries
        rows = np.array([e.row for e in entries], dtype=np.int64)
        got = take_rows(path, rows, store=store_path)
        out.mkdir(parents=True, exist_ok=True)
        for stale in earlier:  # an earlier extraction's files go: the folder is one selection
            stale.unlink(missing_ok=True)
        width = len(str(len(rows)))
        files: list[Path | None] = []
        for n, (sid, index) in enumerate(zip(got["ids"], got["index"].tolist(), strict=True)):
            structure = s.read(index, index + 1).structure(0)
            own = fmt if np.all(structure["pbc"]) else "extxyz"
            if not len(structure["atomic_numbers"]):
                files.append(None)
                continue
            file = out / f"{n + 1:0{width}d}_{_SAFE.sub('_', sid)[:80]}.{_SUFFIX[own]}"
            _write_structure(structure, file, own)
            files.append(file)
    selection = out / "selection.csv"
    _write_selection(selection, got, files, entries, _ids_of(path, entries))
    return ExtractResult(folder=out, files=files, selection=selection)


def _entries_of_ids(path: Path, ids: list[str], settings: ListSettings,
                    store: Path) -> list[Entry]:
    """One entry per id (in the order given), marked against the known stores if any."""
    rows = _rows_of_ids(path, ids)
    entries = [Entry(int(r), None, [int(r)], None) for r in rows]
    if settings.known:
        marked = short_list(path, replace(settings, top=None, where=None, group=False),
                            store=store, store_verified=True, rows=rows)
        known = {e.row: e.known for e in marked.entries}
        for e in entries:
            e.known = known.get(e.row)
    return entries


def _ids_of(path: Path, entries: list[Entry]) -> dict[int, str]:
    """The ids of every row the entries name (members included)."""
    rows = np.array(sorted({r for e in entries for r in e.members}), dtype=np.int64)
    if not len(rows):
        return {}
    got = take_rows(path, rows)
    return dict(zip(rows.tolist(), got["ids"], strict=True))


def _earlier_extraction(out: Path) -> list[Path]:
    """The structure files of an earlier extraction into ``out`` (to be replaced).

    Raises:
        DeepergatError: ``out`` holds anything that is not an earlier extraction's
            ``selection.csv`` and the files it lists.
    """
    if not out.exists():
        return []
    if not out.is_dir():
        raise DeepergatError(f"{out}: exists and is not a folder; choose an empty folder")
    present = {p.name for p in out.iterdir()}
    if not present:
        return []
    listed: set[str] = set()
    if "selection.csv" in present:
        with open(out / "selection.csv", newline="") as f:
            listed = {Path(r["file"]).name for r in csv.DictReader(f) if r.get("file")}
    other = sorted(present - listed - {"selection.csv"}) if "selection.csv" in present else []
    if "selection.csv" not in present or other:
        shown = ", ".join((other or sorted(present))[:3])
        raise DeepergatError(f"{out}: exists and holds other files ({shown}); choose an empty "
                             "folder or an earlier extraction's")
    return [out / name for name in sorted(listed & present)]


def _rows_of_ids(path: Path, wanted: list[str]) -> np.ndarray:
    wanted = list(dict.fromkeys(wanted))  # an id listed twice is extracted once
    need = {s: None for s in wanted}
    with h5py.File(path, "r") as f:
        m = int(f["ids"].shape[0])
        for a in range(0, m, _READ_ROWS):
            for k, raw in enumerate(f["ids"][a : a + _READ_ROWS]):
                sid = raw.decode() if isinstance(raw, bytes) else str(raw)
                if sid in need and need[sid] is None:
                    need[sid] = a + k
    missing = [s for s, r in need.items() if r is None]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DeepergatError(f"{path}: no structure with id {', '.join(missing[:5])}{more}")
    return np.array([need[s] for s in wanted], dtype=np.int64)


def _write_structure(structure: dict[str, Any], file: Path, fmt: str) -> None:
    from ase import Atoms
    from ase.io import write

    atoms = Atoms(numbers=structure["atomic_numbers"], positions=structure["positions"],
                  cell=structure["lattice"], pbc=structure["pbc"])
    # a hidden temporary name: an earlier extraction's folder is refused when it holds others
    with atomic_path(file, tmp=file.with_name(f".{file.name}.tmp")) as tmp:
        write(tmp, atoms, format={"cif": "cif", "poscar": "vasp", "extxyz": "extxyz"}[fmt])


def _write_selection(path: Path, got: dict[str, Any], files: list[Path | None],
                     entries: list[Entry], ids: dict[int, str]) -> None:
    names = list(got["predictions"])
    spread = bool(got["std"])
    header = ["id", "formula", *[c for n in names for c in ((n, f"{n}_std") if spread else (n,))],
              "status", "flags", "file", "group_size", "members", "known"]
    table = entries_table(entries)
    # `csv.writer`'s own line ends (\r\n), as ever
    with atomic_open(path, "w", newline="", tmp=path.with_name(f".{path.name}.tmp")) as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for j, sid in enumerate(got["ids"]):
            values = [str(np.float32(src[n][j])) for n in names
                      for src in ((got["predictions"], got["std"]) if spread
                                  else (got["predictions"],))]
            file = files[j]
            members = ";".join(ids[r] for r in entries[j].members)
            w.writerow([sid, got["formula"][j], *values, int(got["status"][j]),
                        int(got["flags"][j]), file.name if file is not None else "",
                        table["group_size"][j], members, table["known"][j]])


def read_predictions(path: str | os.PathLike[str], *, embeddings: bool = False) -> Any:
    """A predictions file as a pandas DataFrame.

    Columns: ``index``, ``id``, each target, ``<target>_std`` (an ensemble's spread),
    ``status``, ``flags``, ``formula`` (reduced), ``n_elements``; with ``embeddings`` also
    ``embedding`` (one array per row). A file written before formulas were stored gets them
    from its input store while that is unchanged (else "" and 0, with a warning).

    Raises:
        DeepergatError: pandas missing, or not a predictions file.
    """
    try:
        import pandas as pd
    except ImportError:
        raise DeepergatError("read_predictions needs pandas: pip install pandas") from None
    p = Path(path)
    _open_predictions(p)
    with h5py.File(p, "r") as f:
        data: dict[str, Any] = {
            "index": f["index"][:],
            "id": [s.decode() if isinstance(s, bytes) else str(s) for s in f["ids"][:]],
        }
        for name, ds in f["predictions"].items():
            data[name] = ds[:]
            if "std" in f:
                data[f"{name}_std"] = f[f"std/{name}"][:]
        data["status"] = f["status"][:]
        data["flags"] = f["flags"][:]
        data["formula"], data["n_elements"] = compositions_of(
            f, np.arange(f["index"].shape[0]))
        if embeddings and "embeddings" in f:
            data["embedding"] = list(f["embeddings"][:])
    return pd.DataFrame(data)
