"""The short list: the best structures of a screen, one per distinct crystal, marked known or
novel — what a scientist sends to DFT.

`short_list` ranks the rows of a predictions file (the first target's prediction, or an
ensemble's confidence bound), keeps those a ``where`` expression allows, and walks the ranking:
each row joins the group of the first better-ranked group representative it matches
(`deepergat.io.matching`: same reduced formula, then pymatgen's `StructureMatcher`), or founds
a group of its own; a representative is checked against the known stores. The walk stops once
``top`` groups are on the list (group sizes are counted among the rows examined until then, and
the list says how many that was), or when the time budget for grouping runs out: the rows past
it stay on the list one by one, marked ungrouped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from deepergat.contract import (
    DEFAULT_GROUP_SECONDS,
    DEFAULT_RANK_BY,
    DEFAULT_RANK_K,
    DEFAULT_RANK_ORDER,
    RANK_BY,
    RankBy,
    RankOrder,
    Status,
)
from deepergat.errors import DeepergatError, SettingError
from deepergat.io.matching import KnownStructures, Matcher, MatchTolerance, StructureRows

from .failures import literal
from .predictions import compositions_of
from .where import GROUP_COLUMNS, Where, comparable_columns

__all__ = ["DEFAULT_GROUP_SECONDS", "Entry", "ListSettings", "ShortList", "short_list"]

log = logging.getLogger(__name__)

_READ_ROWS = 1 << 20
#: Rows of the ranking read (and built as structures) at once during the walk: a first
#: block that a top-10 list rarely passes, growing to the last size for long walks.
_WALK_BLOCKS = (64, 256, 1024, 4096)


@dataclass(frozen=True)
class ListSettings:
    """How a short list is made.

    Attributes:
        top: groups on the list (rows, without grouping); None: every row ``where`` allows
            (the ranked ones first, then those without a rank — status other than 0 — in
            file order).
        order: ``asc`` (lowest key first) or ``desc``.
        rank_by: ``mean`` (the first target's prediction), or an ensemble's bound ``lower``
            (mean − k·std) or ``upper`` (mean + k·std). rank_k: that k.
        where: a `deepergat.screening.where` expression the rows must satisfy.
        group: one row per distinct crystal (False: the raw ranking).
        tolerance: the matching tolerances.
        known: structure stores of known crystals (training data, a database).
        novel_only: leave out groups that match a known crystal.
        seconds: the time budget for grouping (None: no limit).
    """

    top: int | None = None
    order: RankOrder = DEFAULT_RANK_ORDER
    rank_by: RankBy = DEFAULT_RANK_BY
    rank_k: float = DEFAULT_RANK_K
    where: str | None = None
    group: bool = True
    tolerance: MatchTolerance = field(default_factory=MatchTolerance)
    known: tuple[str, ...] = ()
    novel_only: bool = False
    seconds: float | None = DEFAULT_GROUP_SECONDS

    def check(self) -> None:
        """Validate the settings.

        Raises:
            SettingError: naming the setting.
        """
        if self.top is not None and (isinstance(self.top, bool) or self.top < 1):
            raise SettingError(f"{{top}} must be at least 1, got {self.top}")
        if self.rank_by not in RANK_BY:
            raise SettingError(f"{{rank_by}} {literal(repr(self.rank_by))}: choose "
                               f"{', '.join(RANK_BY)}")
        if self.order not in ("asc", "desc"):
            raise SettingError(f"{{top_order}} {literal(repr(self.order))}: choose asc or desc")
        if not (np.isfinite(self.rank_k) and self.rank_k >= 0):
            raise SettingError(f"{{rank_k}} must be a finite number ≥ 0, got {self.rank_k}")
        if self.known == ("none",):
            raise SettingError("{known} none: leave it out (a list of a model without known "
                               "stores has none)")
        if self.novel_only and not self.known:
            raise SettingError("{novel_only} needs known structures: give {known} STORE")
        if self.seconds is not None and not self.seconds > 0:
            raise SettingError(f"{{group_seconds}} must be positive, got {self.seconds}")

    def describe(self) -> dict[str, Any]:
        """The settings as plain values (recorded with a screen, shown by the report)."""
        return {"top": self.top, "order": self.order, "rank_by": self.rank_by,
                "rank_k": self.rank_k, "where": self.where, "group": self.group,
                "match_tol": str(self.tolerance), "known": list(self.known),
                "novel_only": self.novel_only}


@dataclass
class Entry:
    """One line of the list.

    Attributes:
        row: the row of the predictions file (a group's best-ranked member).
        group_size: members of its group among the rows examined; None when not grouped.
        members: rows of the group, best first (the row itself first).
        known: id of the known structure its group matches, "" when none matched, None when
            no known store was given.
    """

    row: int
    group_size: int | None
    members: list[int]
    known: str | None


@dataclass
class ShortList:
    """A short list and how it was made.

    Attributes:
        entries: the list, best first.
        ranked: rows with a finite key and status 0 that pass the row terms of ``where``.
        examined: rows of the ranking the grouping walked (group sizes are counted there).
        ungrouped: rows past the grouping budget (on the list one by one).
        grouped: rows were grouped. fits: structure comparisons made. seconds: time taken.
        known_structures: structures in the known stores.
        settings: what made it.
    """

    entries: list[Entry]
    ranked: int
    examined: int
    ungrouped: int
    grouped: bool
    fits: int
    seconds: float
    known_structures: int
    settings: ListSettings

    @property
    def rows(self) -> np.ndarray:
        """[n] rows of the predictions file on the list, best first."""
        return np.array([e.row for e in self.entries], dtype=np.int64)

    def summary(self) -> str:
        """One line: how many on the list, from how many rows, grouped how."""
        s = self.settings
        what = f"{len(self.entries)} " + ("distinct structures" if self.grouped else "rows")
        if not self.grouped:
            return f"{what} of {self.ranked:,} ranked"
        line = (f"{what} among the best {self.examined:,} of {self.ranked:,} ranked rows "
                f"(group sizes counted there; StructureMatcher {s.tolerance}, {self.fits:,} "
                f"comparisons, {self.seconds:.1f} s)")
        if self.ungrouped:
            line += f"; {self.ungrouped:,} rows past the {s.seconds:g} s budget left ungrouped"
        if s.known:
            line += f"; checked against {self.known_structures:,} known structures"
        return line


def short_list(path: str | os.PathLike[str], settings: ListSettings, *,
               store: str | os.PathLike[str] | None = None,
               store_verified: bool = False, rows: np.ndarray | None = None) -> ShortList:
    """The short list of a predictions file (see the module docstring).

    Args:
        path: a predictions file.
        settings: how to make it.
        store: the input structure store (default: the one the file records), read for the
            structures to match.
        store_verified: the caller has checked that ``store`` is the one screened (else its
            content digest is recomputed before any structure is read).
        rows: rows of the file to list in this order instead of the ranking (``where`` and
            ranking are not applied; grouping and known stores are).

    Raises:
        SettingError: bad settings, a ``where`` that does not parse, a term on groups without
            grouping, novelty without known stores.
        DeepergatError: a store that is gone or changed since the screen, a known store that
            is not a structure store.
    """
    settings.check()
    t0 = time.perf_counter()
    with h5py.File(path, "r") as f:
        targets = list(f["predictions"])
        spread = "std" in f
        where = (Where(settings.where, comparable_columns(targets, spread=spread))
                 if settings.where else None)
        if where is not None and where.on_groups and not settings.group:
            if {"novel", "known"} & where.names and settings.known:
                pass  # novelty is decided row by row without groups
            else:
                raise SettingError("{where}: group_size needs grouped rows (drop {no_group})")
        if where is not None and {"novel", "known"} & where.names and not settings.known:
            raise SettingError("{where}: novel and known need known structures: give {known} "
                               "STORE")
        if settings.rank_by != "mean" and not spread:
            raise SettingError(
                f"{{rank_by}} {settings.rank_by} ranks by mean ∓ k·std, but {literal(path)} "
                "has no std (the model is not an ensemble); use {rank_by} mean")
        order = (np.asarray(rows, dtype=np.int64) if rows is not None else
                 _ranking(f, targets[0], settings, where.row_terms() if where else None))
        walk = _Walk(f, order, settings, where, Path(store) if store else None, store_verified)
        entries = walk.run()
        if settings.top is None and where is not None and not where.on_groups and rows is None:
            entries += _unranked(f, where, exclude=order)
    return ShortList(entries=entries, ranked=len(order), examined=walk.examined,
                     ungrouped=walk.ungrouped, grouped=settings.group,
                     fits=walk.fits, seconds=time.perf_counter() - t0,
                     known_structures=walk.known_structures, settings=settings)


def _unranked(f: h5py.File, where: Where, *, exclude: np.ndarray) -> list[Entry]:
    """Rows without a rank (status other than 0, or no finite key) that ``where`` allows, in
    file order: a list without a ``top`` holds every row its expression chooses."""
    m = int(f["status"].shape[0])
    ranked = np.zeros(m, bool)
    ranked[exclude] = True
    out: list[Entry] = []
    for a in range(0, m, _READ_ROWS):
        b = min(m, a + _READ_ROWS)
        keep = where.evaluate(_Columns(f, a, b)) & ~ranked[a:b]
        out.extend(Entry(int(r) + a, None, [int(r) + a], None) for r in np.flatnonzero(keep))
    return out


def _ranking(f: h5py.File, first: str, settings: ListSettings,
             rows_where: Where | None) -> np.ndarray:
    """Rows with status 0, a finite key and the row terms of ``where``, best first (ties:
    the lower row first)."""
    m = int(f["status"].shape[0])
    bound = {"mean": 0.0, "lower": -settings.rank_k, "upper": settings.rank_k}[settings.rank_by]
    sign = 1.0 if settings.order == "asc" else -1.0
    keys, rows = [], []
    for a in range(0, m, _READ_ROWS):
        b = min(m, a + _READ_ROWS)
        v = f[f"predictions/{first}"][a:b].astype(np.float64)
        if bound:
            v = v + bound * f[f"std/{first}"][a:b].astype(np.float64)
        keep = np.isfinite(v) & (f["status"][a:b] == Status.OK)
        if rows_where is not None:
            keep &= rows_where.evaluate(_Columns(f, a, b))
        idx = np.flatnonzero(keep)
        keys.append(sign * v[idx])
        rows.append(idx + a)
    key = np.concatenate(keys) if keys else np.zeros(0)
    row = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    return row[np.lexsort((row, key))]


class _Columns:
    """A ``where`` reader over rows [a, b) of a predictions file (or given rows)."""

    def __init__(self, f: h5py.File, a: int = 0, b: int = 0, *,
                 rows: np.ndarray | None = None, extra: dict[str, Any] | None = None) -> None:
        self.f, self.a, self.b, self.rows = f, a, b, rows
        self.extra = extra or {}

    def __call__(self, name: str) -> Any:
        if name in self.extra:
            return self.extra[name]
        if name in ("formula", "n_elements"):  # from the file (version 1: its store)
            rows = self.rows if self.rows is not None else np.arange(self.a, self.b)
            self.extra["formula"], self.extra["n_elements"] = compositions_of(self.f, rows)
            return self.extra[name]
        if name in GROUP_COLUMNS:
            raise DeepergatError(f"where: {name} is not known for single rows")
        ds = self._dataset(name)
        return ds[self.a : self.b] if self.rows is None else ds[np.sort(self.rows)][
            np.argsort(np.argsort(self.rows))]

    def _dataset(self, name: str) -> h5py.Dataset:
        f = self.f
        if name in ("status", "flags"):
            return f[name]
        if name.endswith("_std") and "std" in f and name[:-4] in f["std"]:
            return f[f"std/{name[:-4]}"]
        return f[f"predictions/{name}"]


class _Walk:
    """The grouping walk over a ranking (`short_list`)."""

    def __init__(self, f: h5py.File, order: np.ndarray, settings: ListSettings,
                 where: Where | None, store: Path | None, verified: bool) -> None:
        self.f, self.order, self.s, self.where = f, order, settings, where
        self.examined = 0
        self.ungrouped = 0
        self.fits = 0
        self.known_structures = 0
        self.store_path = store
        self.verified = verified

    def run(self) -> list[Entry]:
        s = self.s
        need_structures = s.group or bool(s.known)
        if not len(self.order):
            return []
        if not need_structures:
            return self._plain()
        path = self.store_path or Path(_attr(self.f, "input"))
        with _open_store(path, _attr(self.f, "input_digest"), self.verified) as store:
            known = KnownStructures(s.known, s.tolerance) if s.known else None
            try:
                if known is not None:
                    self.known_structures = known.n_structures
                structures = _ByFileRow(StructureRows(store), self.f["index"])
                entries = self._grouped(structures, known) if s.group \
                    else self._plain(structures, known)
            finally:
                if known is not None:
                    self.fits += known.matcher.fits
                    known.close()
        return entries

    def _keep(self, entries: list[Entry]) -> list[Entry]:
        """The entries the full ``where`` and ``novel_only`` allow."""
        out = entries
        if self.s.novel_only:
            out = [e for e in out if not e.known]
        if self.where is not None and out:
            rows = np.array([e.row for e in out], dtype=np.int64)
            extra = {"group_size": np.array([e.group_size or 1 for e in out]),
                     "known": np.array([bool(e.known) for e in out]),
                     "novel": np.array([not e.known for e in out])}
            mask = self.where.evaluate(_Columns(self.f, rows=rows, extra=extra))
            out = [e for e, k in zip(out, mask.tolist(), strict=True) if k]
        return out

    def _plain(self, structures: _ByFileRow | None = None,
               known: KnownStructures | None = None) -> list[Entry]:
        """The raw ranking (each row its own entry), known rows marked when asked."""
        top = self.s.top
        out: list[Entry] = []
        for _, block in _blocks(self.order):
            formulas = compositions_of(self.f, block)[0] if known is not None else []
            batch = [Entry(int(r), None, [int(r)], None) for r in block]
            if known is not None and structures is not None:
                for e, name in zip(batch, formulas, strict=True):
                    e.known = known.match(structures.get(e.row), name) or ""
            out.extend(self._keep(batch))
            self.examined += len(block)
            if top is not None and len(out) >= top:
                return out[:top]
        return out

    def _grouped(self, structures: _ByFileRow, known: KnownStructures | None) -> list[Entry]:
        """Rows grouped in ranking order until ``top`` groups pass, or the budget ends."""
        s = self.s
        matcher = Matcher(s.tolerance)
        groups: list[Entry] = []
        by_formula: dict[str, list[Entry]] = {}
        deadline = None if s.seconds is None else time.monotonic() + s.seconds
        sizes_matter = self.where is not None and "group_size" in self.where.names
        passing = 0
        for a, block in _blocks(self.order):
            formulas = compositions_of(self.f, block)[0]
            structures.prefetch(block.tolist())
            for r, name in zip(block.tolist(), formulas, strict=True):
                if deadline is not None and time.monotonic() > deadline:
                    return self._past_budget(groups, a, matcher)
                self.examined += 1
                mine = structures.get(r)
                home = next((g for g in by_formula.get(name, ())
                             if matcher.same(structures.get(g.row), mine)), None)
                if home is not None:
                    home.members.append(r)
                    home.group_size = len(home.members)
                    continue
                entry = Entry(r, 1, [r], None)
                if known is not None:
                    entry.known = known.match(mine, name) or ""
                by_formula.setdefault(name, []).append(entry)
                groups.append(entry)
                if not sizes_matter and self._keep([entry]):
                    passing += 1
                    if s.top is not None and passing >= s.top:
                        self.fits += matcher.fits
                        return self._keep(groups)[: s.top]
        self.fits += matcher.fits
        kept = self._keep(groups)
        return kept if s.top is None else kept[: s.top]

    def _past_budget(self, groups: list[Entry], start: int, matcher: Matcher) -> list[Entry]:
        """The groups so far, then every row not examined, ungrouped."""
        self.fits += matcher.fits
        done = self._keep(groups)
        rest = [Entry(int(r), None, [int(r)], None) for r in self.order[self.examined:]]
        self.ungrouped = len(rest)
        log.warning("grouping stopped after %.0f s: %d rows left ungrouped", self.s.seconds,
                    len(rest))
        out = done + self._keep(rest)
        del start
        return out if self.s.top is None else out[: self.s.top]


class _ByFileRow:
    """Structures by row of the predictions file: its ``index`` says which store row (a funnel's
    file holds a subset of the store)."""

    def __init__(self, rows: StructureRows, index: h5py.Dataset) -> None:
        self.rows = rows
        self.index = index
        self._store_row: dict[int, int] = {}

    def prefetch(self, file_rows: Sequence[int]) -> None:
        want = [r for r in file_rows if r not in self._store_row]
        if want:
            srt = np.unique(np.asarray(want, dtype=np.int64))
            self._store_row.update(zip(srt.tolist(), self.index[srt].tolist(), strict=True))
        self.rows.prefetch(self._store_row[r] for r in file_rows)

    def get(self, file_row: int) -> Any:
        if file_row not in self._store_row:
            self.prefetch([file_row])
        return self.rows.get(self._store_row[file_row])


def _blocks(order: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(start, rows) of the ranking in growing blocks (`_WALK_BLOCKS`)."""
    a, k = 0, 0
    while a < len(order):
        size = _WALK_BLOCKS[min(k, len(_WALK_BLOCKS) - 1)]
        yield a, order[a : a + size]
        a, k = a + size, k + 1


def _attr(f: h5py.File, key: str) -> str:
    v = f.attrs.get(key, "")
    return v.decode() if isinstance(v, bytes) else str(v)


@contextlib.contextmanager
def _open_store(path: Path, digest: str, verified: bool) -> Iterator[Any]:
    """The input store, refused when it is gone or is not the one screened."""
    from deepergat.io.store import Store

    if not path.is_file():
        raise SettingError(f"{literal(path)}: the input store is gone; grouping and novelty "
                           "read the structures: pass {store} with the store that was "
                           "screened, or {no_group}")
    with Store(path) as store:
        if not verified and store.compute_digest() != digest:
            raise DeepergatError(
                f"{path}: is not the store that was screened (its content changed since, or "
                "it is another store); give the store that was screened")
        yield store


def entries_table(entries: Sequence[Entry]) -> dict[str, list[Any]]:
    """The list's group columns: ``group_size`` ("" when ungrouped), ``known`` (the matched
    id, "" when novel or unchecked)."""
    return {"group_size": ["" if e.group_size is None else e.group_size for e in entries],
            "known": [e.known or "" for e in entries]}
