"""Compiled (numba) fast paths of the periodic and the minimum-image neighbor searches.

Same rules and results as the vectorized numpy searches in `deepergat.graphs.periodic` and
`deepergat.graphs.minimum_image`, which stay the references the tests compare against; used when
numba imports (set ``DEEPERGAT_NUMBA=0`` to turn them off). Per center atom: enumerate, for every
atom of the structure, only the lattice images that can reach the search sphere, starting from a
radius likely to hold ``max_neighbors`` atoms and falling back to the cutoff when it does not;
sort by (distance, neighbor Z, neighbor, image); keep the nearest ``max_neighbors`` plus ties.
An atom with more than `_SORT_SMALL` candidates first keeps only those that can be kept (within
the tie tolerance of its ``max_neighbors``-th distance, found by a partition) and sorts them
with stable merge sorts, so no step costs more than O(c log c) in its c candidates; an atom that
would keep more than ``max_degree`` neighbors marks its structure (status 9) and adds no edges.

`search_select` and `mic_select` are long on purpose: each is one compiled loop nest with every
per-center step (collect, order, keep ties, append) inline; helper functions for the steps the
two share were measurably slower (docs/design.md §4), so the steps stay written out in both.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["mic_select", "search_select"]


@njit(cache=True, nogil=True)
def _less(d: np.ndarray, z: np.ndarray, nb: np.ndarray, img: np.ndarray, a: int, b: int) -> bool:
    qa = math.floor(d[a] * 1e9)  # periodic.ORDER_SCALE: distances equal to 1e-9 Å are ties
    qb = math.floor(d[b] * 1e9)
    if qa != qb:
        return qa < qb
    if z[a] != z[b]:
        return z[a] < z[b]
    if nb[a] != nb[b]:
        return nb[a] < nb[b]
    for k in range(3):
        if img[a, k] != img[b, k]:
            return img[a, k] < img[b, k]
    return False


#: Up to this many candidates an atom's are ordered by argsort and an insertion pass (fast for
#: the usual few dozen); more go through `_shortlist` and `_lex_order`.
_SORT_SMALL = 64


@njit(cache=True, nogil=True)
def _shortlist(buf_d: np.ndarray, buf_j: np.ndarray, buf_img: np.ndarray, n: int, k: int,
               tie_tol: float) -> tuple[int, int, float]:
    """Move to the front the candidates that can be kept: within ``tie_tol`` of the k-th
    smallest distance (with 2e-9 Å of slack for the 1e-9 Å ordering steps). Returns (how many,
    how many are kept whatever the order of ties, the smallest distance)."""
    kth = np.partition(buf_d[:n], k - 1)[k - 1]
    upper = kth + tie_tol + 2e-9
    lower = kth + tie_tol - 2e-9
    m = 0
    sure = 0
    smallest = math.inf
    for q in range(n):
        d = buf_d[q]
        if d < smallest:
            smallest = d
        if d <= upper:
            if d <= lower:
                sure += 1
            buf_d[m] = d
            buf_j[m] = buf_j[q]
            buf_img[m, 0] = buf_img[q, 0]
            buf_img[m, 1] = buf_img[q, 1]
            buf_img[m, 2] = buf_img[q, 2]
            m += 1
    return m, sure, smallest


@njit(cache=True, nogil=True)
def _lex_order(order: np.ndarray, buf_d: np.ndarray, buf_z: np.ndarray, buf_j: np.ndarray,
               buf_img: np.ndarray, n: int) -> None:
    """Write into ``order`` the order `_less` defines of the first n candidates, by stable
    merge sorts from the last key to the first: O(n log n) however many distances tie."""
    key = np.empty(n, np.int64)
    for q in range(n):
        order[q] = q
    for level in range(6):
        for q in range(n):
            o = order[q]
            if level < 3:
                key[q] = buf_img[o, 2 - level]
            elif level == 3:
                key[q] = buf_j[o]
            elif level == 4:
                key[q] = buf_z[o]
            else:
                key[q] = math.floor(buf_d[o] * 1e9)  # periodic.ORDER_SCALE
        order[:] = order[np.argsort(key, kind="mergesort")]


@njit(cache=True, nogil=True)
def _collect(
    i: int,
    first: int,
    count: int,
    pos_w: np.ndarray,
    frac_w: np.ndarray,
    lat: np.ndarray,
    reach: np.ndarray,
    pbc: np.ndarray,
    radius: float,
    buf_j: np.ndarray,
    buf_d: np.ndarray,
    buf_img: np.ndarray,
) -> int:
    """Fill the buffers with every (j, image) within ``radius`` of atom i; returns the count
    (or -needed when the buffers are too small)."""
    n = 0
    cap = buf_j.shape[0]
    lo = np.zeros(3, np.int64)
    hi = np.zeros(3, np.int64)
    for j in range(first, first + count):
        for k in range(3):
            if pbc[k]:
                df = frac_w[j, k] - frac_w[i, k]
                lo[k] = math.ceil(-reach[k] - df)
                hi[k] = math.floor(reach[k] - df)
            else:
                lo[k] = 0
                hi[k] = 0
        bx = pos_w[j, 0] - pos_w[i, 0]
        by = pos_w[j, 1] - pos_w[i, 1]
        bz = pos_w[j, 2] - pos_w[i, 2]
        for a in range(lo[0], hi[0] + 1):
            for b in range(lo[1], hi[1] + 1):
                for c in range(lo[2], hi[2] + 1):
                    if j == i and a == 0 and b == 0 and c == 0:
                        continue
                    vx = bx + (a * lat[0, 0] + b * lat[1, 0] + c * lat[2, 0])
                    vy = by + (a * lat[0, 1] + b * lat[1, 1] + c * lat[2, 1])
                    vz = bz + (a * lat[0, 2] + b * lat[1, 2] + c * lat[2, 2])
                    d = math.sqrt(vx * vx + vy * vy + vz * vz)
                    if d <= radius:
                        if n < cap:
                            buf_j[n] = j
                            buf_d[n] = d
                            buf_img[n, 0] = a
                            buf_img[n, 1] = b
                            buf_img[n, 2] = c
                        n += 1
    if n > cap:
        return -n
    return n


# Long on purpose (module docstring): helpers for its per-center steps cost speed.
@njit(cache=True, nogil=True)
def search_select(
    rows_first: np.ndarray,
    rows_count: np.ndarray,
    lattice: np.ndarray,
    pbc: np.ndarray,
    recip_len: np.ndarray,
    radius0: np.ndarray,
    pos_w: np.ndarray,
    frac_w: np.ndarray,
    z: np.ndarray,
    cutoff: float,
    max_neighbors: int,
    tie_tol: float,
    max_degree: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Selected neighbor edges of S structures, atoms indexed in the gathered arrays.

    Args:
        rows_first, rows_count: [S] first gathered atom and atom count of each structure.
        lattice: [S, 3, 3] rows, Å. pbc: [S, 3] bool. recip_len: [S, 3] |b_k|, 1/Å.
        radius0: [S] first search radius, Å (≤ cutoff).
        pos_w: [n, 3] positions wrapped into the cell, Å. frac_w: [n, 3] their fractions.
        z: [n] atomic numbers. cutoff: Å. max_neighbors: count. tie_tol: Å.
        max_degree: the most neighbors an atom may keep (ties included).

    Returns:
        center [E], neighbor [E], distance [E] (float64 Å), image [E, 3] (relative to the
        wrapped positions), min_dist [S] (shortest pair distance found; inf when none),
        tied [S] (an atom would keep more than ``max_degree``; its edges are left out).
    """
    s_count = rows_first.shape[0]
    n_atoms = pos_w.shape[0]
    cap_out = max(16, n_atoms * (max_neighbors + 4))
    out_c = np.empty(cap_out, np.int64)
    out_n = np.empty(cap_out, np.int64)
    out_d = np.empty(cap_out, np.float64)
    out_img = np.empty((cap_out, 3), np.int64)
    min_dist = np.full(s_count, np.inf)
    tied = np.zeros(s_count, np.bool_)
    buf_cap = 256
    buf_j = np.empty(buf_cap, np.int64)
    buf_d = np.empty(buf_cap, np.float64)
    buf_img = np.empty((buf_cap, 3), np.int64)
    buf_z = np.empty(buf_cap, np.int64)
    reach = np.zeros(3)
    e = 0
    for s in range(s_count):
        first = rows_first[s]
        count = rows_count[s]
        lat = lattice[s]
        for i in range(first, first + count):
            radius = radius0[s]
            while True:
                for k in range(3):
                    reach[k] = radius * recip_len[s, k]
                n = _collect(
                    i,
                    first,
                    count,
                    pos_w,
                    frac_w,
                    lat,
                    reach,
                    pbc[s],
                    radius,
                    buf_j,
                    buf_d,
                    buf_img,
                )
                if n < 0:
                    buf_cap = -n * 2
                    buf_j = np.empty(buf_cap, np.int64)
                    buf_d = np.empty(buf_cap, np.float64)
                    buf_img = np.empty((buf_cap, 3), np.int64)
                    buf_z = np.empty(buf_cap, np.int64)
                    continue
                if radius >= cutoff:
                    break
                if n >= max_neighbors:
                    kth = np.partition(buf_d[:n], max_neighbors - 1)[max_neighbors - 1]
                    if kth <= radius - 2 * tie_tol:
                        break
                radius = cutoff
            if n == 0:
                continue
            if n > _SORT_SMALL and n > max_neighbors:
                n, sure, smallest = _shortlist(buf_d, buf_j, buf_img, n, max_neighbors, tie_tol)
                if smallest < min_dist[s]:
                    min_dist[s] = smallest
                if sure > max_degree:
                    tied[s] = True
                    continue
            for q in range(n):
                buf_z[q] = z[buf_j[q]]
            order = np.argsort(buf_d[:n])
            if n > _SORT_SMALL:
                _lex_order(order, buf_d, buf_z, buf_j, buf_img, n)
            else:
                # Insertion pass: fixes the order of exact distance ties by (Z, neighbor,
                # image).
                for a in range(1, n):
                    cur = order[a]
                    b = a - 1
                    while b >= 0 and _less(buf_d, buf_z, buf_j, buf_img, cur, order[b]):
                        order[b + 1] = order[b]
                        b -= 1
                    order[b + 1] = cur
            if buf_d[order[0]] < min_dist[s]:
                min_dist[s] = buf_d[order[0]]
            last = buf_d[order[min(n, max_neighbors) - 1]] + tie_tol
            keep = 0
            for q in range(n):
                if q < max_neighbors or buf_d[order[q]] <= last:
                    keep += 1
                else:
                    break
            if keep > max_degree:
                tied[s] = True
                continue
            if e + keep > cap_out:
                new_cap = max(cap_out * 2, e + keep)
                tc = np.empty(new_cap, np.int64)
                tn = np.empty(new_cap, np.int64)
                td = np.empty(new_cap, np.float64)
                ti = np.empty((new_cap, 3), np.int64)
                tc[:e] = out_c[:e]
                tn[:e] = out_n[:e]
                td[:e] = out_d[:e]
                ti[:e] = out_img[:e]
                out_c, out_n, out_d, out_img = tc, tn, td, ti
                cap_out = new_cap
            for q in range(keep):
                o = order[q]
                out_c[e] = i
                out_n[e] = buf_j[o]
                out_d[e] = buf_d[o]
                out_img[e, 0] = buf_img[o, 0]
                out_img[e, 1] = buf_img[o, 1]
                out_img[e, 2] = buf_img[o, 2]
                e += 1
    return out_c[:e], out_n[:e], out_d[:e], out_img[:e], min_dist, tied


# Long on purpose (module docstring): helpers for its per-center steps cost speed.
@njit(cache=True, nogil=True)
def mic_select(
    rows_first: np.ndarray,
    rows_count: np.ndarray,
    lattice: np.ndarray,
    pbc: np.ndarray,
    recip_len: np.ndarray,
    pos_w: np.ndarray,
    frac_w: np.ndarray,
    z: np.ndarray,
    cutoff: float,
    max_neighbors: int,
    tie_tol: float,
    max_degree: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Minimum-image edges of S structures (`deepergat.graphs.minimum_image`).

    For each pair (i, j ≠ i): the fractional separation wrapped to the nearest image gives an
    upper bound d₀ of the minimum-image distance; the images that can reach min(d₀, cutoff)
    are enumerated (exact for any cell shape; a pair farther than the cutoff has no edge, so
    no pair enumerates more images than the cutoff's box, docs/design.md §4) and the
    shortest kept. Then each center's ``max_neighbors`` nearest within the cutoff, ties kept,
    ordered as `search_select` orders.

    Returns:
        center [E], neighbor [E], distance [E] Å, image [E, 3] (relative to the wrapped
        positions), min_dist [S]: the shortest pair distance within the cutoff, or the
        shortest lattice vector of the ±1 images when shorter (an atom and its own image);
        inf when none; tied [S] as `search_select`'s.
    """
    s_count = rows_first.shape[0]
    n_atoms = pos_w.shape[0]
    cap_out = max(16, n_atoms * (max_neighbors + 4))
    out_c = np.empty(cap_out, np.int64)
    out_n = np.empty(cap_out, np.int64)
    out_d = np.empty(cap_out, np.float64)
    out_img = np.empty((cap_out, 3), np.int64)
    min_dist = np.full(s_count, np.inf)
    tied = np.zeros(s_count, np.bool_)
    buf_cap = 64
    buf_j = np.empty(buf_cap, np.int64)
    buf_d = np.empty(buf_cap, np.float64)
    buf_img = np.empty((buf_cap, 3), np.int64)
    buf_z = np.empty(buf_cap, np.int64)
    df = np.zeros(3)
    shift = np.zeros(3, np.int64)
    lo = np.zeros(3, np.int64)
    hi = np.zeros(3, np.int64)
    e = 0
    for s in range(s_count):
        first = rows_first[s]
        count = rows_count[s]
        lat = lattice[s]
        # an atom and its own images: the shortest of the ±1 lattice combinations
        for a in range(-1, 2):
            for b in range(-1, 2):
                for c in range(-1, 2):
                    if (a == 0 and b == 0 and c == 0) or (a != 0 and not pbc[s, 0]) or (
                            b != 0 and not pbc[s, 1]) or (c != 0 and not pbc[s, 2]):
                        continue
                    vx = a * lat[0, 0] + b * lat[1, 0] + c * lat[2, 0]
                    vy = a * lat[0, 1] + b * lat[1, 1] + c * lat[2, 1]
                    vz = a * lat[0, 2] + b * lat[1, 2] + c * lat[2, 2]
                    d = math.sqrt(vx * vx + vy * vy + vz * vz)
                    if d < min_dist[s]:
                        min_dist[s] = d
        if count > buf_cap:
            buf_cap = count * 2
            buf_j = np.empty(buf_cap, np.int64)
            buf_d = np.empty(buf_cap, np.float64)
            buf_img = np.empty((buf_cap, 3), np.int64)
            buf_z = np.empty(buf_cap, np.int64)
        for i in range(first, first + count):
            n = 0
            for j in range(first, first + count):
                if j == i:
                    continue
                for k in range(3):
                    df[k] = frac_w[j, k] - frac_w[i, k]
                    shift[k] = math.floor(df[k] + 0.5) if pbc[s, k] else 0
                    df[k] -= shift[k]
                bx = df[0] * lat[0, 0] + df[1] * lat[1, 0] + df[2] * lat[2, 0]
                by = df[0] * lat[0, 1] + df[1] * lat[1, 1] + df[2] * lat[2, 1]
                bz = df[0] * lat[0, 2] + df[1] * lat[1, 2] + df[2] * lat[2, 2]
                # a pair farther than the cutoff has no edge: the images that can beat
                # min(d₀, cutoff) are all that can give one
                best = min(math.sqrt(bx * bx + by * by + bz * bz) + 1e-9, cutoff + 1e-6)
                for k in range(3):
                    if pbc[s, k]:
                        reach = best * recip_len[s, k]
                        lo[k] = math.ceil(-reach - df[k])
                        hi[k] = math.floor(reach - df[k])
                    else:
                        lo[k] = 0
                        hi[k] = 0
                # the shortest image; exact ties go to the smallest image (lexicographic)
                best = math.inf
                ba = bb = bc = 0
                for a in range(lo[0], hi[0] + 1):
                    for b in range(lo[1], hi[1] + 1):
                        for c in range(lo[2], hi[2] + 1):
                            fx = df[0] + a
                            fy = df[1] + b
                            fz = df[2] + c
                            vx = fx * lat[0, 0] + fy * lat[1, 0] + fz * lat[2, 0]
                            vy = fx * lat[0, 1] + fy * lat[1, 1] + fz * lat[2, 1]
                            vz = fx * lat[0, 2] + fy * lat[1, 2] + fz * lat[2, 2]
                            d = math.sqrt(vx * vx + vy * vy + vz * vz)
                            if d < best:
                                best, ba, bb, bc = d, a, b, c
                if best == math.inf:  # no image within the cutoff's box
                    continue
                # the distance again, as the numpy search computes it (same rounding: the
                # same order of exact ties): wrapped positions plus the image's vector
                ia, ib, ic = ba - shift[0], bb - shift[1], bc - shift[2]
                vx = (pos_w[j, 0] - pos_w[i, 0]) + (ia * lat[0, 0] + ib * lat[1, 0]
                                                    + ic * lat[2, 0])
                vy = (pos_w[j, 1] - pos_w[i, 1]) + (ia * lat[0, 1] + ib * lat[1, 1]
                                                    + ic * lat[2, 1])
                vz = (pos_w[j, 2] - pos_w[i, 2]) + (ia * lat[0, 2] + ib * lat[1, 2]
                                                    + ic * lat[2, 2])
                best = math.sqrt(vx * vx + vy * vy + vz * vz)
                if best < min_dist[s]:
                    min_dist[s] = best
                if best <= cutoff:  # the image applied to j's wrapped position
                    buf_j[n] = j
                    buf_d[n] = best
                    buf_img[n, 0] = ia
                    buf_img[n, 1] = ib
                    buf_img[n, 2] = ic
                    n += 1
            if n == 0:
                continue
            if n > _SORT_SMALL and n > max_neighbors:
                n, sure, _ = _shortlist(buf_d, buf_j, buf_img, n, max_neighbors, tie_tol)
                if sure > max_degree:
                    tied[s] = True
                    continue
            for q in range(n):
                buf_z[q] = z[buf_j[q]]
            order = np.argsort(buf_d[:n])
            if n > _SORT_SMALL:
                _lex_order(order, buf_d, buf_z, buf_j, buf_img, n)
            else:
                for a in range(1, n):
                    cur = order[a]
                    b = a - 1
                    while b >= 0 and _less(buf_d, buf_z, buf_j, buf_img, cur, order[b]):
                        order[b + 1] = order[b]
                        b -= 1
                    order[b + 1] = cur
            last = buf_d[order[min(n, max_neighbors) - 1]] + tie_tol
            keep = 0
            for q in range(n):
                if q < max_neighbors or buf_d[order[q]] <= last:
                    keep += 1
                else:
                    break
            if keep > max_degree:
                tied[s] = True
                continue
            if e + keep > cap_out:
                new_cap = max(cap_out * 2, e + keep)
                tc = np.empty(new_cap, np.int64)
                tn = np.empty(new_cap, np.int64)
                td = np.empty(new_cap, np.float64)
                ti = np.empty((new_cap, 3), np.int64)
                tc[:e] = out_c[:e]
                tn[:e] = out_n[:e]
                td[:e] = out_d[:e]
                ti[:e] = out_img[:e]
                out_c, out_n, out_d, out_img = tc, tn, td, ti
                cap_out = new_cap
            for q in range(keep):
                o = order[q]
                out_c[e] = i
                out_n[e] = buf_j[o]
                out_d[e] = buf_d[o]
                out_img[e, 0] = buf_img[o, 0]
                out_img[e, 1] = buf_img[o, 1]
                out_img[e, 2] = buf_img[o, 2]
                e += 1
    return out_c[:e], out_n[:e], out_d[:e], out_img[:e], min_dist, tied
