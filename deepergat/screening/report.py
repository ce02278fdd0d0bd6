"""`deepergat report`: one self-contained HTML page about a predictions file.

The run (model, its sha256, the input and its digest, structures, how long the screen took),
each target's histogram (the first target's, which ranks the short list, with the list's
threshold marked), the status and flag table with example ids, the short list (the screen's own
``--top``, ranking and filters unless the report is told otherwise: one row per distinct crystal
with its group size and known/novel mark, `deepergat.screening.shortlist`), an element map of the
list against all candidates (where the hits' chemistry lies), and with embeddings a 2-D map
(principal components) coloured by the prediction. Images are PNGs embedded as data URIs, so
the page can be mailed or archived alone.

Everything is read in blocks of a million rows: histograms from streamed bin counts (a first
pass for the range), the principal components from a streamed covariance (blocks of ~64 MB
whatever the embedding width), and the map from a fixed-stride sample of at most `MAP_POINTS`
rows spread over the whole file — memory does not grow with the file.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from deepergat.contract import FLAG_UNSEEN_ELEMENT, STATUS_CODES, RankOrder
from deepergat.errors import DeepergatError
from deepergat.metadata import ModelMetadata
from deepergat.system.files import atomic_open
from deepergat.system.plotting import plain_text

from .predictions import PREDICTIONS_FORMAT, take_rows
from .shortlist import ListSettings, ShortList, entries_table, short_list

__all__ = ["DEFAULT_REPORT_TOP", "MAP_POINTS", "report_settings", "write_report"]

#: Rows of the report's short list when neither the report nor the screen says.
DEFAULT_REPORT_TOP = 25

_READ_ROWS = 1 << 20
#: Most points drawn in the embedding map.
MAP_POINTS = 50_000
#: Bytes of float64 embeddings held at once by the map's streamed PCA.
_BLOCK_BYTES = 64 << 20
#: Example ids listed per status.
_EXAMPLES = 3


def _attr(f: h5py.File, key: str) -> str:
    v = f.attrs.get(key, "")
    return v.decode() if isinstance(v, bytes) else str(v)


def _model_metadata(text: str, where: str) -> ModelMetadata | None:
    """The model metadata a predictions file records, or None where it records none that
    reads (the report is drawn without it)."""
    try:
        return ModelMetadata.from_dict(json.loads(text), where=where)
    except (ValueError, DeepergatError):
        return None


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _histogram(ds: h5py.Dataset, bins: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(counts, edges, finite count) of a dataset's finite values, in two streamed passes."""
    m = ds.shape[0]
    lo, hi, n = np.inf, -np.inf, 0
    for a in range(0, m, _READ_ROWS):
        v = ds[a : a + _READ_ROWS].astype(np.float64)
        v = v[np.isfinite(v)]
        if len(v):
            lo, hi, n = min(lo, v.min()), max(hi, v.max()), n + len(v)
    if not n:
        return np.zeros(bins, np.int64), np.linspace(0, 1, bins + 1), 0
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    counts = np.zeros(bins, np.int64)
    for a in range(0, m, _READ_ROWS):
        v = ds[a : a + _READ_ROWS].astype(np.float64)
        counts += np.histogram(v[np.isfinite(v)], bins=edges)[0]
    return counts, edges, n


def _plot_histogram(counts: np.ndarray, edges: np.ndarray, name: str, units: str,
                    threshold: float | None, k: int) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.stairs(counts, edges, fill=True, alpha=0.6)
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="crimson", lw=1.5, label=f"top {k} threshold")
        ax.legend(loc="upper right")
    ax.set_xlabel(plain_text(name) + (f" ({plain_text(units)})" if units else ""))
    ax.set_ylabel("structures")
    ax.grid(alpha=0.3)
    return _png(fig)


def _status_table(f: h5py.File) -> list[tuple[int, int, list[str]]]:
    """(code, count, example ids) per status present, and the flagged count as code -1."""
    m = int(f["status"].shape[0])
    counts = np.zeros(256, np.int64)
    examples: dict[int, list[str]] = {}
    flagged, flagged_ex = 0, []
    for a in range(0, m, _READ_ROWS):
        st = f["status"][a : a + _READ_ROWS]
        counts += np.bincount(st, minlength=256)
        for code in np.unique(st).tolist():
            have = examples.setdefault(int(code), [])
            if len(have) < _EXAMPLES:
                rows = np.flatnonzero(st == code)[: _EXAMPLES - len(have)] + a
                have += [_id(f, r) for r in rows.tolist()]
        fl = np.flatnonzero(f["flags"][a : a + _READ_ROWS] & FLAG_UNSEEN_ELEMENT)
        flagged += len(fl)
        if len(flagged_ex) < _EXAMPLES:
            flagged_ex += [_id(f, r + a) for r in fl[: _EXAMPLES - len(flagged_ex)].tolist()]
    table = [(int(c), int(counts[c]), examples.get(int(c), [])) for c in np.flatnonzero(counts)]
    return [*table, (-1, flagged, flagged_ex)]


def _id(f: h5py.File, row: int) -> str:
    v = f["ids"][row]
    return v.decode() if isinstance(v, bytes) else str(v)


def _embedding_map(f: h5py.File, first: str) -> str | None:
    """PCA of the embeddings (streamed covariance), a strided sample drawn coloured by the first
    target; None without embeddings."""
    if "embeddings" not in f:
        return None
    emb, pred = f["embeddings"], f[f"predictions/{first}"]
    m, d = emb.shape
    block = max(1024, _BLOCK_BYTES // (8 * max(d, 1)))  # float64 rows per read, ~64 MB
    total, s, ss = 0, np.zeros(d), np.zeros((d, d))
    for a in range(0, m, block):
        x = emb[a : a + block].astype(np.float64)
        x = x[np.isfinite(x).all(1)]
        total += len(x)
        s += x.sum(0)
        ss += x.T @ x
    if total < 3:
        return None
    mean = s / total
    cov = ss / total - np.outer(mean, mean)
    w, v = np.linalg.eigh(cov)
    axes = v[:, np.argsort(w)[::-1][:2]]
    stride = max(1, -(-m // MAP_POINTS))  # ceil: the sample spans the whole file
    block = max(stride, block - block % stride)  # blocks start on the stride: rows 0, s, 2s…
    x = np.concatenate([emb[a : a + block : stride] for a in range(0, m, block)])
    y = np.concatenate([pred[a : a + block : stride] for a in range(0, m, block)])
    ok = np.isfinite(x).all(1) & np.isfinite(y)
    xy = (x[ok] - mean) @ axes
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=y[ok], s=3, cmap="viridis", alpha=0.7, linewidths=0)
    fig.colorbar(sc, ax=ax, label=plain_text(first))
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    ax.set_title(f"embeddings of {ok.sum():,} structures" + (" (sampled)" if stride > 1 else ""))
    return _png(fig)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:980px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:left;font-size:.9em}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:
tabular-nums}code{font-size:.9em}img{max-width:100%}"""


@dataclass
class _Page:
    """What the page shows, read from the predictions file.

    Attributes:
        name: the file's name. info: (label, value) rows of the run table.
        names: targets. units: of each target. spread: the file has an ensemble's std.
        hists: (target, finite values, PNG data URI) per target.
        statuses: `_status_table`'s rows. top: `take_rows` of the top-K rows (best first).
        n_top: rows in the top-K table. order: the ranking's order. emap: the embedding map.
        listed: the short list. elements: the element map (PNG data URI) or None.
        notes: what the page could not do, said plainly.
    """

    name: str
    info: list[tuple[str, str]]
    names: list[str]
    units: dict[str, str]
    spread: bool
    hists: list[tuple[str, int, str]]
    statuses: list[tuple[int, int, list[str]]]
    top: dict[str, Any]
    n_top: int
    order: RankOrder
    emap: str | None
    listed: ShortList | None = None
    elements: str | None = None
    notes: list[str] = field(default_factory=list)


def report_settings(path: str | os.PathLike[str], **given: Any) -> ListSettings:
    """The short list a report shows: each setting as ``given`` (None: not given), else as the
    screen that wrote the file recorded it, else the default (`DEFAULT_REPORT_TOP` rows).

    Args:
        given: `ListSettings` fields (``top``, ``order``, ``rank_by``, ``rank_k``, ``where``,
            ``group``, ``tolerance``, ``known``, ``novel_only``, ``seconds``).
    """
    from deepergat.io.matching import MatchTolerance

    try:
        with h5py.File(path, "r") as f:
            recorded = json.loads(_attr(f, "screen_run") or "{}").get("short_list") or {}
    except (OSError, ValueError):
        recorded = {}
    values: dict[str, Any] = {"top": DEFAULT_REPORT_TOP}
    for key in ("top", "order", "rank_by", "rank_k", "where", "group", "novel_only"):
        if recorded.get(key) is not None:
            values[key] = recorded[key]
    if recorded.get("match_tol"):
        values["tolerance"] = MatchTolerance.parse(recorded["match_tol"])
    if recorded.get("known"):
        values["known"] = tuple(str(k) for k in recorded["known"])
    values.update({k: v for k, v in given.items() if v is not None})
    return ListSettings(**values)


def write_report(
    predictions: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    settings: ListSettings | None = None,
    bins: int = 60,
) -> Path:
    """Write the HTML report of a predictions file.

    Args:
        predictions: the file. output: the page (default ``<predictions stem>.report.html``).
        settings: the short list shown (default `report_settings`: the screen's own).
        bins: histogram bins.

    Returns:
        The page's path.

    Raises:
        DeepergatError: not a readable predictions file; bad list settings.
    """
    path = Path(predictions)
    out = Path(output) if output else path.with_name(path.stem + ".report.html")
    page = _read_page(path, settings=settings or report_settings(path), bins=bins)
    with atomic_open(out, "w", encoding="utf-8",
                     tmp=out.with_name(f".{out.name}.tmp-{os.getpid()}")) as fh:
        fh.write(_html(page))
    return out


def _listed(path: Path, settings: ListSettings, notes: list[str]) -> ShortList | None:
    """The short list, or None where the structures it needs are unavailable (said in
    ``notes``: the page then shows the ranking ungrouped)."""
    missing = [k for k in settings.known if not Path(k).is_file()]
    if missing:
        notes.append(f"known stores not found, novelty not checked: {', '.join(missing)}")
        settings = replace(settings, known=tuple(k for k in settings.known
                                                 if Path(k).is_file()), novel_only=False)
    try:
        return short_list(path, settings)
    except DeepergatError as e:
        if not settings.group and not settings.known:
            raise
        notes.append(f"not grouped ({' '.join(str(e).split())})")
        return short_list(path, replace(settings, group=False, known=(), novel_only=False))


def _read_page(path: Path, *, settings: ListSettings, bins: int) -> _Page:
    """Everything the page shows, read in blocks."""
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DeepergatError(f"{path}: not a readable predictions file: "
                             f"{' '.join(str(e).split())[:160]}") from None
    with f:
        if _attr(f, "format") != PREDICTIONS_FORMAT:
            raise DeepergatError(f"{path}: not a deepergat predictions file")
        names = list(f["predictions"])
        units = {n: _attr(f["predictions"][n], "units") for n in names}
        m = int(f["status"].shape[0])
        notes: list[str] = []
        listed = _listed(path, settings, notes) if m else None
        rows = listed.rows if listed is not None else np.zeros(0, np.int64)
        best = take_rows(path, rows)
        if listed is not None:
            best.update(entries_table(listed.entries))
        hists = []
        for n in names:
            counts, edges, finite = _histogram(f[f"predictions/{n}"], bins)
            threshold = float(best["predictions"][n][-1]) if len(rows) and n == names[0] else None
            hists.append((n, finite, _plot_histogram(counts, edges, n, units[n], threshold,
                                                     len(rows))))
        return _Page(
            name=path.name, info=_run_info(f, path, m), names=names, units=units,
            spread="std" in f, hists=hists, statuses=_status_table(f), top=best,
            n_top=len(rows), order=settings.order,
            emap=_embedding_map(f, names[0]) if names else None, listed=listed,
            elements=_element_map(f, best["formula"]) if len(rows) else None, notes=notes,
        )


def _run_info(f: h5py.File, path: Path, m: int) -> list[tuple[str, str]]:
    """The run table's rows: model, input, structures, writer, ensemble, the screen's rate."""
    run = json.loads(_attr(f, "screen_run") or "{}")
    meta = _model_metadata(_attr(f, "model_metadata"), f"{path} model_metadata")
    info = [("model", _attr(f, "model")), ("model sha256", _attr(f, "model_sha256")),
            ("input", _attr(f, "input")), ("input digest", _attr(f, "input_digest")),
            ("structures", f"{m:,}"), ("written by", _attr(f, "created_by"))]
    if meta is not None and meta.is_ensemble:
        info.append(("ensemble", f"{meta.members} members, calibrated std"))
    if run.get("seconds"):
        rate = run["structures"] / run["seconds"] if run["seconds"] else 0
        info.append(("screen", f"{run['structures']:,} structures in {run['seconds']:.1f} s "
                               f"({rate:,.0f}/s) on {run.get('ranks', 1)} rank(s)"))
    return info


def _html(page: _Page) -> str:
    """The page: run table, histograms, statuses, the top-K table, the embedding map."""
    e = html.escape
    names, units, best = page.names, page.units, page.top
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>deepergat report: "
             f"{e(page.name)}</title><style>{_CSS}</style></head><body>",
             f"<h1>Screening report: {e(page.name)}</h1>",
             "<h2>The run</h2><table>" + "".join(
                 f"<tr><th>{e(k)}</th><td><code>{e(v)}</code></td></tr>" for k, v in page.info)
             + "</table>"]
    parts.append("<h2>Predictions</h2>")
    for n, finite, img in page.hists:
        parts.append(f"<h3>{e(n)}{' (' + e(units[n]) + ')' if units[n] else ''}: {finite:,} "
                     f"values</h3><img alt='histogram of {e(n)}' src='{img}'>")
    parts.append("<h2>Status and flags</h2><table><tr><th>code</th><th>meaning</th>"
                 "<th>structures</th><th>examples</th></tr>")
    for code, count, ex in page.statuses:
        meaning = (STATUS_CODES.get(code, "unknown") if code >= 0
                   else "flag: an element the model never saw in training")
        label = str(code) if code >= 0 else "flag 1"
        parts.append(f"<tr><td>{label}</td><td>{e(meaning)}</td><td class='num'>{count:,}</td>"
                     f"<td>{e(', '.join(ex))}</td></tr>")
    parts.append("</table>")
    head = "".join(f"<th>{e(n)}</th>" + (f"<th>{e(n)} std</th>" if page.spread else "")
                   for n in names)
    what = "distinct structures" if page.listed is not None and page.listed.grouped else "rows"
    parts.append(f"<h2 id='top'>Top {page.n_top} {what} by {e(names[0])} "
                 f"({'lowest' if page.order == 'asc' else 'highest'} first)</h2>")
    if page.listed is not None:
        parts.append(f"<p class='note'>{e(page.listed.summary())}"
                     + (f"; where {e(page.listed.settings.where)}"
                        if page.listed.settings.where else "") + "</p>")
    parts.extend(f"<p class='note'>{e(n)}</p>" for n in page.notes)
    parts.append("<table id='top-table'><tr><th>rank</th><th>id</th><th>formula</th>"
                 f"{head}<th>flags</th><th>group size</th><th>known as</th></tr>")
    for j in range(page.n_top):
        cells = "".join(
            f"<td class='num'>{best['predictions'][n][j]:.6g}</td>"
            + (f"<td class='num'>{best['std'][n][j]:.3g}</td>" if page.spread else "")
            for n in names)
        size = best.get("group_size", [""] * page.n_top)[j]
        known = best.get("known", [""] * page.n_top)[j]
        parts.append(f"<tr><td class='num'>{j + 1}</td><td>{e(best['ids'][j])}</td>"
                     f"<td>{e(best['formula'][j])}</td>{cells}"
                     f"<td class='num'>{int(best['flags'][j])}</td>"
                     f"<td class='num'>{e(str(size))}</td><td>{e(str(known))}</td></tr>")
    parts.append("</table>")
    if page.elements is not None:
        parts.append("<h2>Elements</h2><p class='note'>The share of the list that contains each "
                     "element, beside its share among all ranked candidates.</p>"
                     f"<img alt='element map' src='{page.elements}'>")
    if page.emap is not None:
        parts.append(f"<h2>Embeddings</h2><img alt='embedding map' src='{page.emap}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _table_position(z: int) -> tuple[int, int]:
    """(row, column) of element ``z`` in the periodic table's usual 18-column layout, the
    lanthanides and actinides in two rows below (rows 8 and 9)."""
    if z <= 2:
        return 0, 0 if z == 1 else 17
    starts = [(3, 1), (11, 2), (19, 3), (37, 4), (55, 5), (87, 6)]
    row, first = max((r, s) for s, r in starts if z >= s)
    offset = z - first
    if row <= 2:  # 8 elements: groups 1-2 and 13-18
        return row, offset if offset < 2 else offset + 10
    if (row >= 5 and 57 <= z <= 71) or 89 <= z <= 103:  # f-block rows
        return (8 if z <= 71 else 9), 3 + (z - (57 if z <= 71 else 89))
    if row >= 5 and offset >= 2:  # after the f-block: hafnium / rutherfordium on
        offset -= 14
    return row, offset


def _element_shares(formulas: Sequence[str]) -> np.ndarray:
    """[119] share of the formulas that contain each element (index Z)."""
    from .where import _elements

    names, counts = np.unique(np.asarray(formulas, dtype=object), return_counts=True)
    share = np.zeros(119)
    for name, count in zip(names.tolist(), counts.tolist(), strict=True):
        for z in _elements(str(name)):
            if 0 < z < 119:
                share[z] += count
    return share / max(len(formulas), 1)


def _element_map(f: h5py.File, listed: Sequence[str]) -> str | None:
    """Two periodic tables: the share of the short list containing each element, and its share
    among all ranked candidates (status 0), read in blocks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deepergat.elements import SYMBOLS

    from .predictions import compositions_of

    m = int(f["status"].shape[0])
    total = np.zeros(119)
    n = 0
    for a in range(0, m, _READ_ROWS):
        rows = np.arange(a, min(m, a + _READ_ROWS))
        ok = f["status"][a : a + len(rows)] == 0
        if not ok.any():
            continue
        names = compositions_of(f, rows[ok])[0]
        total += _element_shares(names) * len(names)
        n += len(names)
    if not n:
        return None
    shares = {"the short list": _element_shares(list(listed)), "all ranked candidates": total / n}
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.6))
    for ax, (title, share) in zip(axes, shares.items(), strict=True):
        grid = np.full((10, 18), np.nan)
        for z in range(1, 119):
            r, c = _table_position(z)
            grid[r, c] = share[z]
        ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0, vmax=max(share.max(), 1e-9))
        for z in range(1, 119):
            r, c = _table_position(z)
            ax.text(c, r, SYMBOLS[z], ha="center", va="center", fontsize=6,
                    color="white" if share[z] < 0.5 * share.max() else "black")
        ax.set_title(f"share of {title} containing the element")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return _png(fig)
