"""Compiled (numba) fast path of the periodic neighbor search.

Same rules and results as the vectorized numpy search in `deepergat.graphs`, which stays the
reference the tests compare against; used when numba imports (set ``DEEPERGAT_NUMBA=0`` to turn
it off). Per center atom: enumerate, for every atom of the structure, only the lattice images that
can reach the search sphere, starting from a radius likely to hold ``max_neighbors`` atoms and
falling back to the cutoff when it does not; sort by (distance, neighbor Z, neighbor, image);
keep the nearest ``max_neighbors`` plus ties.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["search_select"]


@njit(cache=True, nogil=True)
def _less(d: np.ndarray, z: np.ndarray, nb: np.ndarray, img: np.ndarray, a: int, b: int) -> bool:
    if d[a] != d[b]:
        return d[a] < d[b]
    if z[a] != z[b]:
        return z[a] < z[b]
    if nb[a] != nb[b]:
        return nb[a] < nb[b]
    for k in range(3):
        if img[a, k] != img[b, k]:
            return img[a, k] < img[b, k]
    return False


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
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Selected neighbor edges of S structures, atoms indexed in the gathered arrays.

    Args:
        rows_first, rows_count: [S] first gathered atom and atom count of each structure.
        lattice: [S, 3, 3] rows, Å. pbc: [S, 3] bool. recip_len: [S, 3] |b_k|, 1/Å.
        radius0: [S] first search radius, Å (≤ cutoff).
        pos_w: [n, 3] positions wrapped into the cell, Å. frac_w: [n, 3] their fractions.
        z: [n] atomic numbers. cutoff: Å. max_neighbors: count. tie_tol: Å.

    Returns:
        center [E], neighbor [E], distance [E] (float64 Å), image [E, 3] (relative to the
        wrapped positions), min_dist [S] (shortest pair distance found; inf when none).
    """
    s_count = rows_first.shape[0]
    n_atoms = pos_w.shape[0]
    cap_out = max(16, n_atoms * (max_neighbors + 4))
    out_c = np.empty(cap_out, np.int64)
    out_n = np.empty(cap_out, np.int64)
    out_d = np.empty(cap_out, np.float64)
    out_img = np.empty((cap_out, 3), np.int64)
    min_dist = np.full(s_count, np.inf)
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
            for q in range(n):
                buf_z[q] = z[buf_j[q]]
            order = np.argsort(buf_d[:n])
            # Insertion pass: fixes the order of exact distance ties by (Z, neighbor, image).
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
    return out_c[:e], out_n[:e], out_d[:e], out_img[:e], min_dist
