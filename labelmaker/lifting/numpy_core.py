"""Lifting in numpy, for the CPU: no torch import.

The same algorithm as the torch path, operation for operation -- frustum culling by 25 cm cells,
projection (summed in the order torch's addmm sums), the depth and ray-cast visibility tests, the
`VoteAccumulator`'s slots, overflow buffer and compactions, the top-k -- so that its results are
the same bits as the torch path's on the CPU (tests/test_numpy_cores.py compares every field on
scenes with holes in the depth, rasters of different sizes, ranked labels, angle weights, edges).
Differences that cannot change a result: candidates behind the camera or outside the image are
dropped before the later tests instead of masked, and short rows are reduced column by column
(numpy reduces them slowly).

`lifting.lift` is the one to call: this numpy path when `cfg.device` is the CPU
(`devices.numpy_on_cpu`: `auto` on a machine without an NVIDIA driver never imports torch), else
the torch path (`frame_loop.lift_torch`, CUDA).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np

from .types import LiftConfig, LiftFrame, LiftResult, checked_mesh, has_votes
from .visibility import BLOCK_SIZE_M, CHUNK, FRUSTUM_MARGIN_PX, NEAR, Raycaster

__all__ = ["lift_numpy", "NumpyVoteAccumulator"]


def _segment_sum(keys: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys (ascending) and the summed weight of each: a stable sort, then float64 prefix
    sums, as `votes._segment_sum` (the same order of additions, so the same bits)."""
    if keys.size == 0:
        return keys, weights
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    csum = np.cumsum(weights[order], dtype=np.float64)
    del order
    last = np.ones(keys.size, bool)
    np.not_equal(keys[1:], keys[:-1], out=last[:-1])
    ends = np.flatnonzero(last)
    sums = csum[ends]
    sums[1:] -= csum[ends[:-1]]
    return keys[ends], sums.astype(np.float32)


def _group_rank(sorted_ids: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal values (input sorted)."""
    n = sorted_ids.size
    pos = np.arange(n)
    start = np.ones(n, bool)
    start[1:] = sorted_ids[1:] != sorted_ids[:-1]
    first = np.maximum.accumulate(np.where(start, pos, 0))
    return pos - first


class NumpyVoteAccumulator:
    """`votes.VoteAccumulator` in numpy (see there): the same slots, overflow buffer, compactions
    and results, bit for bit."""

    def __init__(self, n_vertices: int, n_classes: int, slots: int = 4, buffer_size: int = 1 << 20):
        self.n_vertices, self.n_classes = int(n_vertices), int(n_classes)
        if self.n_classes < 2:
            raise ValueError("n_classes must be >= 2 (id 0 is unknown)")
        self.slots = int(slots)
        self._cls_dtype = np.int16 if self.n_classes <= 32767 else np.int32
        self.slot_cls = np.zeros((self.n_vertices, self.slots), self._cls_dtype)
        self.slot_w = np.zeros((self.n_vertices, self.slots), np.float32)
        self.n_views = np.zeros(self.n_vertices, np.int32)
        self._cap = max(16, int(buffer_size))
        self._ov_keys = np.empty(self._cap, np.int64)
        self._ov_w = np.empty(self._cap, np.float32)
        self._ov_n = 0
        self._ov_compact = 0
        self.compactions = 0

    def add(self, vertex_ids, class_ids, weights, distinct: bool = False) -> None:
        """Add votes (see `votes.VoteAccumulator.add`)."""
        v = np.asarray(vertex_ids).astype(np.int64, copy=False).reshape(-1)
        c = np.asarray(class_ids).astype(np.int64, copy=False).reshape(-1)
        w = np.asarray(weights).astype(np.float32, copy=False).reshape(-1)
        if w.size == 1 and v.size != 1:
            w = np.broadcast_to(w, v.shape)
        if not has_votes(v, c, w, self.n_vertices, self.n_classes, np.isfinite):
            return
        keep = (c > 0) & (w > 0)
        if not bool(keep.all()):
            v, c, w = v[keep], c[keep], w[keep]
            if v.size == 0:
                return
        if distinct:
            self._add_distinct(v, c, np.ascontiguousarray(w))
            return
        keys, w = _segment_sum(v * self.n_classes + c, np.ascontiguousarray(w))
        v, c = keys // self.n_classes, keys % self.n_classes
        self._add_sorted(v, c, w)
        uv = np.unique(v)
        self.n_views[uv] += 1

    def _add_distinct_fast(self, v, c, w, count_view: bool = True) -> None:
        pos = w > 0
        if not bool(pos.all()):
            keep = np.flatnonzero(pos)
            v, c, w = v[keep], c[keep], w[keep]
        if v.size:
            self._add_distinct(v, c, w, count_view)

    def _add_distinct(self, v, c, w, count_view: bool = True) -> None:
        S = self.slots
        cc = c.astype(self._cls_dtype)
        flat = v * S
        if count_view:
            self.n_views[v] += 1
        cls_flat = self.slot_cls.reshape(-1)
        w_flat = self.slot_w.reshape(-1)
        first = cls_flat[flat] == cc
        rest = np.flatnonzero(~first)
        if rest.size == 0:
            w_flat[flat] += w
            return
        hit = np.flatnonzero(first)
        w_flat[flat[hit]] += w[hit]
        v, c, cc, w, flat = v[rest], c[rest], cc[rest], w[rest], flat[rest]
        cls_v = self.slot_cls[v]
        # the slot holding the class (first match), else the first empty one (slots fill in order); S: none
        small = np.int8 if S < 127 else np.int64
        slot = np.full(v.size, S, small)
        used = np.zeros(v.size, small)
        for s in range(S - 1, -1, -1):
            col = cls_v[:, s]
            slot = np.where(col == cc, small(s), slot)
            used += col != 0
        slot = np.where(slot < S, slot, used).astype(np.int64)
        ok = slot < S
        flat = flat + slot
        if not bool(ok.all()):
            bad = np.flatnonzero(~ok)
            self._overflow(v[bad] * self.n_classes + c[bad], w[bad])
            good = np.flatnonzero(ok)
            flat, cc, w = flat[good], cc[good], w[good]
        cls_flat[flat] = cc
        w_flat[flat] += w

    def _add_sorted(self, v, c, w) -> None:
        S = self.slots
        cls_v = self.slot_cls[v]
        cc = c.astype(self._cls_dtype)
        match = cls_v == cc[:, None]
        found = match.any(1)
        used = (cls_v != 0).sum(1)
        slot = np.argmax(match, 1)
        new = np.flatnonzero(~found)
        if new.size:
            slot[new] = used[new] + _group_rank(v[new])
        ok = slot < S
        flat = v * S + slot
        if not bool(ok.all()):
            self._overflow(v[~ok] * self.n_classes + c[~ok], w[~ok])
            flat, cc, w = flat[ok], cc[ok], w[ok]
        self.slot_cls.reshape(-1)[flat] = cc
        np.add.at(self.slot_w.reshape(-1), flat, w)

    def _overflow(self, keys, w) -> None:
        while keys.size:
            room = self._cap - self._ov_n
            if room == 0:
                self._compact()
                continue
            take = min(room, keys.size)
            self._ov_keys[self._ov_n:self._ov_n + take] = keys[:take]
            self._ov_w[self._ov_n:self._ov_n + take] = w[:take]
            self._ov_n += take
            keys, w = keys[take:], w[take:]

    def _compact(self) -> None:
        if self._ov_n == self._ov_compact:
            if self._ov_n < self._cap:
                return
        else:
            n = self._merge_sum(self._ov_compact, self._ov_n)
            self._ov_n = self._ov_compact = n
            self.compactions += 1
        if self._ov_n > self._cap // 2:
            cap = self._cap * 2
            keys = np.empty(cap, np.int64)
            ws = np.empty(cap, np.float32)
            keys[:self._ov_n] = self._ov_keys[:self._ov_n]
            ws[:self._ov_n] = self._ov_w[:self._ov_n]
            self._ov_keys, self._ov_w, self._cap = keys, ws, cap

    def _merge_sum(self, n_a: int, n: int, chunk: int = 1 << 22) -> int:
        """Buffer entries 0..n-1 summed per key in place (returns the distinct count). What the torch
        path's stable sort of the whole buffer gives, found faster and with less memory: the first
        n_a entries are sorted and distinct (the last compaction's), so only the rest is sorted and
        merged after them; the float64 prefix sums run in chunks, each carrying the last one's end."""
        keys, w = self._ov_keys, self._ov_w
        order = np.argsort(keys[n_a:n], kind="stable")
        b_keys, b_w = keys[n_a:n][order], w[n_a:n][order]
        del order
        a_keys = keys[:n_a]
        merged_k = np.empty(n, np.int64)
        merged_w = np.empty(n, np.float32)
        at = np.searchsorted(b_keys, a_keys, side="left") + np.arange(n_a)  # a key before equal new ones
        merged_k[at], merged_w[at] = a_keys, w[:n_a]
        at = np.searchsorted(a_keys, b_keys, side="right") + np.arange(n - n_a)
        merged_k[at], merged_w[at] = b_keys, b_w
        del at, b_keys, b_w
        last = np.empty(n, bool)
        np.not_equal(merged_k[1:], merged_k[:-1], out=last[:-1])
        last[-1] = True
        ends = np.flatnonzero(last)
        del last
        at_ends = np.empty(ends.size, np.float64)
        carry, done = np.zeros(1, np.float64), 0
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            csum = np.cumsum(np.concatenate([carry, merged_w[start:stop]]), dtype=np.float64)[1:]
            upto = int(np.searchsorted(ends, stop))
            at_ends[done:upto] = csum[ends[done:upto] - start]
            carry, done = csum[-1:], upto
        sums = at_ends
        sums[1:] -= at_ends[:-1].copy()
        d = ends.size
        keys[:d] = merged_k[ends]
        w[:d] = sums
        return d

    @property
    def overflow_entries(self) -> int:
        return self._ov_n

    def result(self, top_k: int = 3, order: np.ndarray | None = None, chunk: int = 1 << 18) -> LiftResult:
        """Hard label, shares, top-k, views and totals per vertex (see `votes.VoteAccumulator.result`)."""
        top_k = int(top_k)
        if top_k < 1:
            raise ValueError("top_k must be >= 1")
        self._compact()
        V, C = self.n_vertices, self.n_classes
        rows = np.arange(V) if order is None else np.asarray(order)
        out_ids = np.zeros((V, top_k), np.int64)
        shares = np.zeros((V, top_k), np.float32)
        totals = np.zeros(V, np.float32)
        n_views = np.zeros(V, np.int32)
        ov_keys, ov_w = self._ov_keys[:self._ov_n], self._ov_w[:self._ov_n]
        ov_v = ov_keys // C
        bounds = np.searchsorted(ov_v, np.minimum(np.arange(0, V + chunk, chunk), V)).tolist()
        for n_chunk, a in enumerate(range(0, V, chunk)):
            b = min(V, a + chunk)
            lo, hi = bounds[n_chunk], bounds[n_chunk + 1]
            cls = self.slot_cls[a:b].astype(np.int64)
            w = self.slot_w[a:b]
            total = w[:, 0].astype(np.float64)
            for s_ in range(1, w.shape[1]):
                total += w[:, s_]
            ids, best = _top_k_dense(cls, w, top_k, C)
            if hi > lo:
                verts, sums = _segment_sum(ov_v[lo:hi], ov_w[lo:hi])
                total[verts - a] += sums.astype(np.float64)
                ov_ids, ov_best = self._top_k_overflow(verts, ov_keys[lo:hi], ov_w[lo:hi], top_k)
                ids[verts - a] = ov_ids
                best[verts - a] = ov_best
            total = total.astype(np.float32)
            share = np.where(total[:, None] > 0, best / np.maximum(total, np.float32(1e-30))[:, None],
                             np.float32(0))
            np.minimum(share, np.float32(1.0), out=share)
            r = rows[a:b]
            out_ids[r] = ids
            shares[r] = share
            totals[r] = total
            n_views[r] = self.n_views[a:b]
        return LiftResult(labels=out_ids[:, 0].copy(), confidence=shares[:, 0].copy(), topk_ids=out_ids,
                          topk_shares=shares, n_views=n_views, votes_total=totals)

    def _top_k_overflow(self, vertices, ov_keys, ov_w, top_k: int):
        """Top-k of the given (sorted, distinct) vertices over their slots and overflow entries."""
        C, S = self.n_classes, self.slots
        n = vertices.size
        row = np.arange(n)
        slot_c = self.slot_cls[vertices].astype(np.int64).reshape(-1)
        slot_w = self.slot_w[vertices].reshape(-1)
        ov_row = np.searchsorted(vertices, ov_keys // C)
        ent_row = np.concatenate([np.repeat(row, S), ov_row])
        ent_c = np.concatenate([slot_c, ov_keys % C])
        ent_w = np.concatenate([slot_w, ov_w])
        keep = np.flatnonzero(ent_c > 0)
        ent_row, ent_c, ent_w = ent_row[keep], ent_c[keep], ent_w[keep]
        # order: row, then weight descending, then class; (row, class) pairs are distinct, so one
        # sort by a packed key (weights >= 0: their float bits order like them) gives the same order
        c_bits = max(1, int(C - 1).bit_length())
        if (max(n, 1) - 1).bit_length() + 31 + c_bits <= 63:
            w_key = np.int64(0x7FFFFFFF) - ent_w.view(np.int32).astype(np.int64)
            o = np.argsort((ent_row << (31 + c_bits)) | (w_key << c_bits) | ent_c)
        else:
            o = np.argsort(ent_c, kind="stable")
            o = o[np.argsort(-ent_w[o], kind="stable")]
            o = o[np.argsort(ent_row[o], kind="stable")]
        ent_row, ent_c, ent_w = ent_row[o], ent_c[o], ent_w[o]
        rank = _group_rank(ent_row)
        sel = np.flatnonzero(rank < top_k)
        ids = np.zeros((n, top_k), np.int64)
        best = np.zeros((n, top_k), np.float32)
        ids[ent_row[sel], rank[sel]] = ent_c[sel]
        best[ent_row[sel], rank[sel]] = ent_w[sel]
        return ids, best


def _top_k_dense(cls, w, top_k: int, n_classes: int):
    """Per row of (n, m) class ids (0 = empty) and weights: the k best classes (weight descending,
    ties: lowest id first) and their weights, 0-padded (column by column: numpy reduces short rows slowly)."""
    n, m = cls.shape
    cols_c = [cls[:, s] for s in range(m)]
    cols_w = [np.where(c > 0, w[:, s], np.float32(-1.0)) for s, c in enumerate(cols_c)]
    ids = np.zeros((n, top_k), np.int64)
    best_w = np.zeros((n, top_k), np.float32)
    for j in range(min(top_k, m)):
        best = cols_w[0].copy()
        for x in cols_w[1:]:
            np.maximum(best, x, out=best)
        tied = [x == best for x in cols_w]
        pick = np.where(tied[0], cols_c[0], n_classes)
        for t, c in zip(tied[1:], cols_c[1:]):
            np.minimum(pick, np.where(t, c, n_classes), out=pick)
        valid = best > 0
        ids[:, j] = np.where(valid, pick, 0)
        best_w[:, j] = np.where(valid, best, np.float32(0))
        for s in range(m):
            cols_w[s] = np.where(tied[s] & (cols_c[s] == pick), np.float32(-1.0), cols_w[s])
    return ids, best_w


class _Blocks:
    """Vertices sorted into spatial cells; per cell the index range and a tight bounding box."""

    def __init__(self, vertices: np.ndarray, size: float):
        lo = vertices.min(0)
        cell = np.floor((vertices - lo) / np.float32(size)).astype(np.int64)
        dims = cell.max(0) + 1
        key = (cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]
        del cell
        self.perm = np.argsort(key, kind="stable")
        key = key[self.perm]
        first = np.ones(key.size, bool)
        np.not_equal(key[1:], key[:-1], out=first[1:])
        self.starts = np.flatnonzero(first)
        self.counts = np.diff(np.append(self.starts, key.size))
        del key, first
        pts = vertices[self.perm]
        self.sorted_points = pts
        bmin = np.minimum.reduceat(pts, self.starts, axis=0)
        bmax = np.maximum.reduceat(pts, self.starts, axis=0)
        sel = np.array([[(i >> k) & 1 for k in range(3)] for i in range(8)], dtype=bool)
        self.corners = np.where(sel[None], bmax[:, None], bmin[:, None])  # (B,8,3)

    def visible(self, R: np.ndarray, t: np.ndarray, bounds, z_max: float) -> np.ndarray:
        """Indices (sorted order) of the vertices of all cells whose box meets the frustum."""
        c = self.corners
        pc = [((c[..., 0] * R[i, 0] + c[..., 1] * R[i, 1]) + c[..., 2] * R[i, 2]) + t[i] for i in range(3)]
        x, y, z = pc
        xmin, xmax, ymin, ymax = (float(b) for b in bounds)
        out = (z <= NEAR).all(1) | (x < xmin * z).all(1) | (x > xmax * z).all(1) \
            | (y < ymin * z).all(1) | (y > ymax * z).all(1)
        if z_max > 0:
            out |= (z > z_max).all(1)
        keep = np.flatnonzero(~out)
        counts = self.counts[keep]
        total = int(counts.sum()) if keep.size else 0
        if total == 0:
            return np.zeros(0, np.int64)
        shift = self.starts[keep] - (np.cumsum(counts) - counts)
        return np.arange(total) + np.repeat(shift, counts)


def boundary_weight_numpy(labels: np.ndarray, width: int) -> np.ndarray:
    """`visibility.boundary_weight` in numpy: (H,W) weights (d + 1) / (width + 1), capped at 1, d the
    chessboard distance to the nearest label change."""
    edge = np.zeros(labels.shape, bool)
    dx = labels[:, 1:] != labels[:, :-1]
    dy = labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    weight = np.ones(labels.shape, np.float32)
    reached = edge
    for d in range(width + 1):
        if d:  # 3x3 dilation (max pool, stride 1, padding 1)
            grown = reached.copy()
            grown[1:, :] |= reached[:-1, :]
            grown[:-1, :] |= reached[1:, :]
            g2 = grown.copy()
            g2[:, 1:] |= grown[:, :-1]
            g2[:, :-1] |= grown[:, 1:]
            reached = g2
        newly = reached & (weight == 1.0)
        weight[newly] = (d + 1) / (width + 1)
    return weight


def lift_numpy(frames: Iterable[LiftFrame], vertices: np.ndarray, triangles: np.ndarray | None, n_classes: int,
               cfg: LiftConfig | None = None, normals: np.ndarray | None = None,
               progress: Callable[[int], Any] | None = None, on_visible: Callable | None = None) -> LiftResult:
    """`frame_loop.lift_torch` on the CPU in numpy (see there): the same results, bit for bit."""
    cfg = cfg or LiftConfig()
    verts_np, triangles = checked_mesh(vertices, triangles, normals, cfg)
    V = len(verts_np)
    acc = NumpyVoteAccumulator(V, n_classes)
    if V == 0:
        for _ in frames:
            if progress:
                progress(1)
        return acc.result(cfg.top_k)
    origin = np.mean(verts_np, axis=0, dtype=np.float64)
    if verts_np.dtype == np.float32:
        verts = verts_np - origin.astype(np.float32)
    else:
        verts = (verts_np - origin).astype(np.float32)
    blocks = _Blocks(verts, BLOCK_SIZE_M)
    del verts
    xyz = tuple(np.ascontiguousarray(blocks.sorted_points[:, i]) for i in range(3))  # columns: faster gathers
    verts_s = blocks.sorted_points if cfg.weight_by_angle and normals is not None else None  # (for view rays)
    blocks.sorted_points = None
    norms_s = None
    if cfg.weight_by_angle and normals is not None:
        nrm = np.asarray(normals).astype(np.float32)[blocks.perm]
        norms_s = nrm / np.maximum(np.sqrt((nrm * nrm).sum(1, keepdims=True)), np.float32(1e-12))
        del nrm
    raycaster = None
    if cfg.raycast_missing_depth and triangles is not None and len(triangles):
        raycaster = Raycaster(np.asarray(verts_np, dtype=np.float32), np.asarray(triangles))
    for index, frame in enumerate(frames):
        _lift_frame(index, frame, verts_s, xyz, norms_s, blocks, acc, raycaster, origin, cfg, on_visible)
        if progress:
            progress(1)
    return acc.result(cfg.top_k, order=blocks.perm)


def _lift_frame(index, frame, verts_s, xyz, norms_s, blocks, acc, raycaster, origin, cfg, on_visible=None) -> None:
    """One frame's votes (`frame_loop._lift_frame`); `xyz`: the block-sorted vertices' coordinate columns."""
    tol_m, tol_rel = float(cfg.depth_tolerance_m), float(cfg.depth_tolerance_rel)
    labels = np.asarray(frame.labels)
    if labels.ndim != 2 or labels.size == 0:
        raise ValueError(f"frame {index}: labels must be (H,W), got {tuple(labels.shape)}")
    H, W = labels.shape
    if labels.dtype.kind not in "iu":
        labels = labels.astype(np.int64)
    labels = labels.reshape(-1)
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= acc.n_classes:
        raise ValueError(f"frame {index}: label id {lo if lo < 0 else hi} is outside the unified space "
                         f"0..{acc.n_classes - 1}")
    conf = None
    if cfg.weight_by_confidence and frame.confidence is not None:
        conf = np.asarray(frame.confidence).astype(np.float32, copy=False).reshape(-1)
        if conf.size != H * W:
            raise ValueError(f"frame {index}: confidence must have the label raster's shape {(H, W)}")
    near_edge = boundary_weight_numpy(labels.reshape(H, W), int(cfg.boundary_px)).reshape(-1) \
        if cfg.boundary_px > 0 else None
    if near_edge is not None:
        conf = near_edge if conf is None else conf * near_edge
    more, more_w = [], []
    if frame.more_labels is not None:
        layers = np.asarray(frame.more_labels)
        if layers.size % (H * W):
            raise ValueError(f"frame {index}: more_labels must be (R,H,W) with the label raster's (H,W) = {(H, W)}")
        layers = layers.reshape(-1, H * W)
        shares = None
        if frame.more_confidence is not None and cfg.weight_by_confidence:
            shares = np.asarray(frame.more_confidence).astype(np.float32, copy=False).reshape(-1, H * W)
        for r in range(layers.shape[0]):
            w_r = shares[r] if shares is not None else (layers[r] > 0).astype(np.float32)
            more.append(layers[r])
            more_w.append(w_r * near_edge if near_edge is not None else w_r)
    depth = None
    if frame.depth_m is not None:
        depth = np.asarray(frame.depth_m).astype(np.float32, copy=False)
        if depth.ndim != 2:
            raise ValueError(f"frame {index}: depth must be (H,W), got {tuple(depth.shape)}")
        Hd, Wd = depth.shape
        depth = depth.reshape(-1)

    T = np.asarray(frame.T_cw, dtype=np.float64)
    Rn = T[:3, :3]
    tn = T[:3, 3] + Rn @ origin
    K = np.asarray(frame.K_labels, dtype=np.float64)
    fx, fy, cx, cy = (float(x) for x in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
    R = Rn.astype(np.float32)
    t = tn.astype(np.float32)
    P = (K @ Rn).astype(np.float32)
    q = (K @ tn).astype(np.float32)
    m = FRUSTUM_MARGIN_PX
    bounds = ((-0.5 - m - cx) / fx, (W - 0.5 + m - cx) / fx, (-0.5 - m - cy) / fy, (H - 0.5 + m - cy) / fy)
    z_max = float(cfg.max_distance_m)
    idx_all = blocks.visible(R, t, bounds, z_max)
    same_raster = False
    if depth is not None:
        Kd = np.asarray(frame.K_depth, dtype=np.float64)
        same_raster = (Hd, Wd) == (H, W) and np.allclose(Kd, K, rtol=0, atol=1e-9)
        ax, bx = float(Kd[0, 0] / fx), float(Kd[0, 2] - Kd[0, 0] * cx / fx + 0.5)
        ay, by = float(Kd[1, 1] / fy), float(Kd[1, 2] - Kd[1, 1] * cy / fy + 0.5)

    for start in range(0, idx_all.size, CHUNK):
        idx = idx_all[start:start + CHUNK]
        x, y, zz = (a[idx] for a in xyz)
        # (P @ p) + q row by row, in the order torch's addmm sums (bit-identical on the CPU)
        z = ((P[2, 0] * x + P[2, 1] * y) + P[2, 2] * zz) + q[2]
        front = z > np.float32(NEAR)
        if z_max > 0:
            front &= z <= np.float32(z_max)
        sel = np.flatnonzero(front)  # candidates in front of the camera (the others never vote)
        x, y, zz, z = x[sel], y[sel], zz[sel], z[sel]
        h0 = ((P[0, 0] * x + P[0, 1] * y) + P[0, 2] * zz) + q[0]
        h1 = ((P[1, 0] * x + P[1, 1] * y) + P[1, 2] * zz) + q[1]
        del x, y, zz
        iz = np.float32(1.0) / z
        u = h0 * iz
        v = h1 * iz
        uf = np.floor(u + np.float32(0.5))
        vf = np.floor(v + np.float32(0.5))
        ok = (uf >= 0) & (uf < W) & (vf >= 0) & (vf < H)
        sel2 = np.flatnonzero(ok)
        sel, z, u, v, uf, vf = sel[sel2], z[sel2], u[sel2], v[sel2], uf[sel2], vf[sel2]
        pix = vf.astype(np.int64) * W + uf.astype(np.int64)
        lab = labels[pix]
        sel3 = np.flatnonzero(lab > 0)
        sel, z, u, v, pix, lab = sel[sel3], z[sel3], u[sel3], v[sel3], pix[sel3], lab[sel3]
        if depth is None:
            keep = np.zeros(0, np.int64)
            miss = np.arange(sel.size)
        else:
            if same_raster:
                d = depth[pix]
            else:
                ud = np.floor(u * np.float32(ax) + np.float32(bx))
                vd = np.floor(v * np.float32(ay) + np.float32(by))
                inside = (ud >= 0) & (ud < Wd) & (vd >= 0) & (vd < Hd)
                dpix = np.clip(vd, 0, Hd - 1).astype(np.int64) * Wd + np.clip(ud, 0, Wd - 1).astype(np.int64)
                d = np.where(inside, depth[dpix], np.float32(0))
            has = d > 0
            keep = np.flatnonzero(has & (np.abs(z - d) <= d * np.float32(tol_rel) + np.float32(tol_m)))
            miss = np.flatnonzero(~has) if raycaster is not None else None
        if raycaster is not None and miss.size:
            label_px = pix[miss]
            if depth is None or same_raster:
                key, rasters = label_px, [(K, W, H)]
            else:
                key = np.where(inside[miss], dpix[miss], Hd * Wd + label_px)
                rasters = [(Kd, Wd, Hd), (K, W, H)]
            seen = _raycast_visible(raycaster, Rn, T, z[miss], key, rasters, tol_m, tol_rel)
            keep = np.concatenate([keep, miss[np.flatnonzero(seen)]])
        if keep.size == 0:
            continue
        vid = idx[sel[keep]]
        kept_px = pix[keep]
        w = conf[kept_px] if conf is not None else np.ones(keep.size, np.float32)
        if norms_s is not None:
            centre = (-Rn.T @ tn).astype(np.float32)
            ray = verts_s[vid] - centre
            cos = np.abs((norms_s[vid] * ray).sum(1)) / np.maximum(np.sqrt((ray * ray).sum(1)), np.float32(1e-12))
            w = w * cos
        acc._add_distinct_fast(vid, lab[keep].astype(np.int64), w)
        if on_visible is not None:
            on_visible(index, frame, blocks.perm[vid], kept_px)
        for layer, layer_w in zip(more, more_w):
            w_r = layer_w[kept_px]
            if norms_s is not None:
                w_r = w_r * cos
            acc._add_distinct_fast(vid, layer[kept_px].astype(np.int64), w_r, count_view=False)


def _raycast_visible(raycaster, R, T, z, key, rasters, tol_m: float, tol_rel: float) -> np.ndarray:
    """`visibility.raycast_visible` in numpy: one ray per distinct pixel of `key`."""
    n_px = sum(W * H for _, W, H in rasters)
    present = np.zeros(n_px, bool)
    present[key] = True
    uniq = np.flatnonzero(present)
    slot = np.zeros(n_px, np.int64)
    slot[uniq] = np.arange(uniq.size)
    inv = slot[key]
    dirs = np.ones((uniq.size, 3), np.float64)
    base = 0
    for K, W, H in rasters:
        sel = np.flatnonzero((uniq >= base) & (uniq < base + W * H))
        local = uniq[sel] - base
        dirs[sel, 0] = ((local % W).astype(np.float64) - K[0, 2]) / K[0, 0]
        dirs[sel, 1] = ((local // W).astype(np.float64) - K[1, 2]) / K[1, 1]
        base += W * H
    centre = -R.T @ T[:3, 3]
    t_hit = raycaster.z_depth(centre.astype(np.float32), (dirs @ R).astype(np.float32))
    d = t_hit[inv]
    ok = np.isfinite(d)
    d = np.where(ok, d, np.float32(0))
    return ok & (np.abs(z - d) <= np.float32(tol_m) + np.float32(tol_rel) * d)
