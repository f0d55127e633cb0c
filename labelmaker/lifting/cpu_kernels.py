"""Compiled loops of the CPU lifting path (numba): the vote accumulator's slots and hash table, its
results, and one frame's projection and depth test.

Each loop is the torch path's arithmetic, element by element, in the same float32/float64 operations
(numba compiles without fast-math, so no multiply-add is fused), so `numpy_core` gives the same bits
as `frame_loop`/`votes` (tests/test_numpy_cores.py). Compiled on first use and cached beside this file
(`cache=True`; a read-only install compiles once per process, ~2 s).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .visibility import NEAR

EMPTY = -1  # an unused hash table entry
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, nogil=True)
def _home(key, bits):
    """A key's first table position: Fibonacci hashing (the top `bits` bits of key * 2^64/phi)."""
    return np.int64((np.uint64(key) * _GOLDEN) >> np.uint64(64 - bits))


@njit(cache=True, nogil=True)
def _add(slot_cls, slot_w, tab_keys, tab_w, tab_bits, vi, ci, wi, n_classes):
    """One vote: to the vertex's slot holding the class, else its first empty slot (slots fill in
    order), else to the (vertex, class) entry of the hash table (linear probing); float32 sums.
    Returns 1 when it added a table entry."""
    S = slot_cls.shape[1]
    for s in range(S):
        cs = slot_cls[vi, s]
        if cs == ci:
            slot_w[vi, s] += wi
            return 0
        if cs == 0:
            slot_cls[vi, s] = ci
            slot_w[vi, s] = wi
            return 0
    key = vi * n_classes + ci
    mask = (1 << tab_bits) - 1
    h = _home(key, tab_bits)
    while True:
        k = tab_keys[h]
        if k == key:
            tab_w[h] += wi
            return 0
        if k == EMPTY:
            tab_keys[h] = key
            tab_w[h] = wi
            return 1
        h = (h + 1) & mask


@njit(cache=True, nogil=True)
def add_votes(slot_cls, slot_w, n_views, tab_keys, tab_w, tab_bits, v, c, w, n_classes, count_view, first, room):
    """Votes (vertex v[i], class c[i], weight w[i]) from i = first on, added in order (`_add`); class 0
    and weights <= 0 are skipped; `count_view`: each vote counts one view of its vertex. Stops before a
    vote that could add a table entry beyond `room` more. Returns (table entries added, where it stopped)."""
    added = 0
    for i in range(first, v.size):
        wi = w[i]
        ci = c[i]
        if not (wi > 0) or ci <= 0:
            continue
        if added >= room:
            return added, i
        if count_view:
            n_views[v[i]] += 1
        added += _add(slot_cls, slot_w, tab_keys, tab_w, tab_bits, v[i], ci, wi, n_classes)
    return added, v.size


@njit(cache=True, nogil=True)
def add_layers(slot_cls, slot_w, n_views, tab_keys, tab_w, tab_bits, v, pix, cls, wts, cos, n_classes, first, room):
    """One frame's votes from vertex first on: vertex v[i] seen at pixel pix[i] votes for each layer l's
    class cls[l, pix[i]] with weight wts[l, pix[i]] (times cos[i] when cos.size); layer 0 counts the
    view. The same sums as `add_votes` called layer after layer (a vertex's votes keep their order).
    Stops before a vertex whose votes could add table entries beyond `room` more. Returns (table
    entries added, where it stopped)."""
    added = 0
    angles = cos.size > 0
    L = cls.shape[0]
    for i in range(first, v.size):
        if added + L > room:
            return added, i
        vi, p = v[i], pix[i]
        for layer in range(L):
            wi = wts[layer, p]
            if angles:
                wi = wi * cos[i]
            ci = cls[layer, p]
            if not (wi > 0) or ci <= 0:
                continue
            if layer == 0:
                n_views[vi] += 1
            added += _add(slot_cls, slot_w, tab_keys, tab_w, tab_bits, vi, ci, wi, n_classes)
    return added, v.size


@njit(cache=True, nogil=True)
def rehash(tab_keys, tab_w, new_keys, new_w, new_bits):
    """The entries of one table moved into an empty larger one."""
    mask = (1 << new_bits) - 1
    for j in range(tab_keys.size):
        key = tab_keys[j]
        if key == EMPTY:
            continue
        h = _home(key, new_bits)
        while new_keys[h] != EMPTY:
            h = (h + 1) & mask
        new_keys[h] = key
        new_w[h] = tab_w[j]


@njit(cache=True, nogil=True)
def table_by_vertex(tab_keys, tab_w, lo, hi, n_classes, cls_dtype):
    """The table's entries of vertices lo..hi-1 grouped by vertex, classes ascending within a vertex
    (= key order): (start (hi-lo+1,), classes, weights)."""
    n_v = hi - lo
    count = np.zeros(n_v + 1, np.int64)
    for j in range(tab_keys.size):
        key = tab_keys[j]
        if key != EMPTY:
            vi = key // n_classes
            if lo <= vi < hi:
                count[vi - lo + 1] += 1
    for i in range(n_v):
        count[i + 1] += count[i]
    n = count[n_v]
    cls = np.empty(n, cls_dtype)
    wts = np.empty(n, np.float32)
    fill = count[:n_v].copy()
    for j in range(tab_keys.size):
        key = tab_keys[j]
        if key == EMPTY:
            continue
        vi = key // n_classes
        if vi < lo or vi >= hi:
            continue
        p = fill[vi - lo]
        cls[p] = key - vi * n_classes
        wts[p] = tab_w[j]
        fill[vi - lo] = p + 1
    for i in range(n_v):  # insertion sort by class within each vertex (a few dozen entries)
        a, b = count[i], count[i + 1]
        for p in range(a + 1, b):
            ck, wk = cls[p], wts[p]
            q = p - 1
            while q >= a and cls[q] > ck:
                cls[q + 1] = cls[q]
                wts[q + 1] = wts[q]
                q -= 1
            cls[q + 1] = ck
            wts[q + 1] = wk
    return count, cls, wts


@njit(cache=True, nogil=True)
def results(slot_cls, slot_w, n_views, lo, start, ov_cls, ov_w, rows, top_k, out_ids, out_shares, out_totals,
            out_views):
    """Per vertex i = lo + k (its table entries: start[k]..start[k+1]-1 of ov_*): the top_k classes (weight
    descending, ties: lowest id first) over its slots and table entries, their shares of the vertex's
    total, the total and views, written to row rows[i].
    The total is `votes.VoteAccumulator.result`'s: the class weights summed in float64 by ascending class."""
    S = slot_cls.shape[1]
    ids = np.zeros(top_k, np.int64)
    best = np.zeros(top_k, np.float32)
    sc = np.zeros(S, np.int64)
    sw = np.zeros(S, np.float32)
    for k in range(start.size - 1):
        i = lo + k
        lo_e, hi_e = start[k], start[k + 1]
        n_s = 0  # the slots by ascending class
        for s in range(S):
            ce = np.int64(slot_cls[i, s])
            if ce <= 0:
                continue
            q = n_s - 1
            while q >= 0 and sc[q] > ce:
                sc[q + 1] = sc[q]
                sw[q + 1] = sw[q]
                q -= 1
            sc[q + 1] = ce
            sw[q + 1] = slot_w[i, s]
            n_s += 1
        total = 0.0
        p, e = 0, lo_e  # merge slots and table entries by class
        while p < n_s or e < hi_e:
            if e >= hi_e or (p < n_s and sc[p] < ov_cls[e]):
                total += np.float64(sw[p])
                p += 1
            else:
                total += np.float64(ov_w[e])
                e += 1
        for j in range(top_k):
            ids[j] = 0
            best[j] = 0
        n_kept = 0
        for e in range(n_s + hi_e - lo_e):  # insert each (class, weight) into the sorted top_k
            if e < n_s:
                ce, we = sc[e], sw[e]
            else:
                ce, we = np.int64(ov_cls[lo_e + e - n_s]), ov_w[lo_e + e - n_s]
            if not (we > 0):
                continue
            pos = n_kept
            while pos > 0 and (best[pos - 1] < we or (best[pos - 1] == we and ids[pos - 1] > ce)):
                pos -= 1
            if pos >= top_k:
                continue
            last = min(n_kept, top_k - 1)
            for q in range(last, pos, -1):
                ids[q] = ids[q - 1]
                best[q] = best[q - 1]
            ids[pos] = ce
            best[pos] = we
            if n_kept < top_k:
                n_kept += 1
        t32 = np.float32(total)
        r = rows[i]
        for j in range(top_k):
            out_ids[r, j] = ids[j]
            if t32 > 0:
                out_shares[r, j] = min(best[j] / max(t32, np.float32(1e-30)), np.float32(1.0))
            else:
                out_shares[r, j] = 0
        out_totals[r] = t32
        out_views[r] = n_views[i]


@njit(cache=True, nogil=True)
def project(idx, x, y, z3, P, q, W, H, z_max, labels, depth, Hd, Wd, same_raster, ax, bx, ay, by, tol_m, tol_rel,
            want_missing, vis_pos, vis_pix, miss_pos, miss_pix, miss_z, miss_key):
    """Candidates idx (block-sorted vertex ids, coordinates x, y, z3) projected into one frame with the
    torch path's float32 arithmetic: kept when in front of the camera (and within z_max > 0), inside
    the W x H label raster, on a label > 0. Those whose depth pixel holds depth d pass when
    |z - d| <= d * tol_rel + tol_m: (position in idx, label pixel) into vis_*; those without depth
    (none there, outside the depth raster, or no depth map: depth.size == 0) into miss_* with z and
    the ray's key (the depth raster's pixel, else Hd * Wd + the label pixel), when want_missing.
    Returns the two counts."""
    n_vis = 0
    n_miss = 0
    near = np.float32(NEAR)
    half = np.float32(0.5)
    no_depth = depth.size == 0
    for i in range(idx.size):
        j = idx[i]
        xi, yi, zi = x[j], y[j], z3[j]
        z = ((P[2, 0] * xi + P[2, 1] * yi) + P[2, 2] * zi) + q[2]
        if not (z > near):
            continue
        if z_max > 0 and not (z <= z_max):
            continue
        h0 = ((P[0, 0] * xi + P[0, 1] * yi) + P[0, 2] * zi) + q[0]
        h1 = ((P[1, 0] * xi + P[1, 1] * yi) + P[1, 2] * zi) + q[1]
        iz = np.float32(1.0) / z
        u = h0 * iz
        v = h1 * iz
        uh = u + half  # the pixel is floor(u + 0.5): inside the raster exactly when 0 <= u + 0.5 < W,
        vh = v + half  # and then the floor is the truncation
        if not (uh >= 0 and uh < W and vh >= 0 and vh < H):
            continue
        pix = np.int64(vh) * W + np.int64(uh)
        if labels[pix] <= 0:
            continue
        d = np.float32(0.0)
        key = pix
        if not no_depth:
            if same_raster:
                d = depth[pix]
            else:
                ud = u * ax + bx  # the depth raster's pixel: floor of these
                vd = v * ay + by
                if ud >= 0 and ud < Wd and vd >= 0 and vd < Hd:
                    key = np.int64(vd) * Wd + np.int64(ud)
                    d = depth[key]
                else:
                    key = Hd * Wd + pix
        if d > 0:
            if abs(z - d) <= d * tol_rel + tol_m:
                vis_pos[n_vis] = i
                vis_pix[n_vis] = pix
                n_vis += 1
        elif want_missing:
            miss_pos[n_miss] = i
            miss_pix[n_miss] = pix
            miss_z[n_miss] = z
            miss_key[n_miss] = key
            n_miss += 1
    return n_vis, n_miss
