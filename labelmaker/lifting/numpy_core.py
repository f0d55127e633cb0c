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

from ..lazy import LazyModule
from .types import LiftConfig, LiftFrame, LiftResult, checked_mesh, has_votes
from .visibility import BLOCK_SIZE_M, CHUNK, FRUSTUM_MARGIN_PX, NEAR, frames_with_mesh_depth
from .votes import SLOTS

__all__ = ["lift_numpy", "NumpyVoteAccumulator"]

kernels = LazyModule("labelmaker.lifting.cpu_kernels")  # numba: compiled loops, loaded on first use


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


class NumpyVoteAccumulator:
    """`votes.VoteAccumulator` for the CPU (compiled loops, `cpu_kernels`): the same sums and results, bit for bit.

    Storage: `slots` (class, weight) pairs per vertex, filled in order, and a hash table of
    (vertex * n_classes + class) -> weight for the classes beyond them (doubled when 3/4 full). Each
    (vertex, class) weight is a float32 sum of that pair's votes, one `add` call after another, so
    where a pair is stored changes no bit."""

    def __init__(self, n_vertices: int, n_classes: int, slots: int = SLOTS, buffer_size: int = 1 << 20):
        self.n_vertices, self.n_classes = int(n_vertices), int(n_classes)
        if self.n_classes < 2:
            raise ValueError("n_classes must be >= 2 (id 0 is unknown)")
        self.slots = int(slots)
        self.cls_dtype = np.uint8 if self.n_classes <= 256 else np.int16 if self.n_classes <= 32767 else np.int32
        self.slot_cls = np.zeros((self.n_vertices, self.slots), self.cls_dtype)
        self.slot_w = np.zeros((self.n_vertices, self.slots), np.float32)
        self.n_views = np.zeros(self.n_vertices, np.int32)
        self._key_dtype = np.int32 if self.n_vertices * self.n_classes < 2**31 else np.int64
        self._bits = max(4, int(max(16, buffer_size) - 1).bit_length())
        self._keys = np.full(1 << self._bits, -1, self._key_dtype)
        self._w = np.zeros(1 << self._bits, np.float32)
        self._used = 0
        self.compactions = 0  # times the table grew

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
            self.add_checked(v, c, w)
            return
        keys, w = _segment_sum(v * self.n_classes + c, np.ascontiguousarray(w))  # sorted by vertex, then class
        v, c = keys // self.n_classes, keys % self.n_classes
        self.add_checked(v, c, w, count_view=False)
        self.n_views[np.unique(v)] += 1

    def add_checked(self, v, c, w, count_view: bool = True) -> None:
        """Votes of callers that checked them (`lift`'s frames): v in range (distinct unless
        count_view is False), c in 0..n_classes-1, w finite; class 0 and weights <= 0 are skipped.
        A vertex's new classes take its empty slots in the order they come."""
        v = np.ascontiguousarray(v, dtype=np.int64)
        c = np.ascontiguousarray(c, dtype=np.int64)
        w = np.ascontiguousarray(w, dtype=np.float32)
        at = 0
        while at < v.size:
            room = self._room()  # (grows the table first when it must)
            added, at = kernels.add_votes(self.slot_cls, self.slot_w, self.n_views, self._keys, self._w, self._bits,
                                          v, c, w, self.n_classes, bool(count_view), at, room)
            self._used += added

    def add_frame(self, v, pix, cls, wts, cos=None) -> None:
        """One frame's votes (`cpu_kernels.add_layers`): vertex v[i] (distinct, checked) seen at pixel pix[i]
        votes for cls[l, pix[i]] with weight wts[l, pix[i]] (times cos[i]) in each layer l; layer 0 counts the view."""
        cos = np.zeros(0, np.float32) if cos is None else np.ascontiguousarray(cos, dtype=np.float32)
        at = 0
        while at < v.size:
            room = self._room(cls.shape[0])  # (grows the table first when it must)
            added, at = kernels.add_layers(self.slot_cls, self.slot_w, self.n_views, self._keys, self._w, self._bits,
                                           v, pix, cls, wts, cos, self.n_classes, at, room)
            self._used += added

    def _room(self, need: int = 1) -> int:
        """Table entries that may still be added before it is 3/4 full (grown first when fewer than `need`)."""
        if self._used + need > (3 << self._bits) // 4:
            self._grow()
        return (3 << self._bits) // 4 - self._used

    def _grow(self) -> None:
        bits = self._bits + 1
        keys = np.full(1 << bits, -1, self._key_dtype)
        ws = np.zeros(1 << bits, np.float32)
        kernels.rehash(self._keys, self._w, keys, ws, bits)
        self._keys, self._w, self._bits = keys, ws, bits
        self.compactions += 1

    @property
    def overflow_entries(self) -> int:
        return self._used

    def result(self, top_k: int = 3, order: np.ndarray | None = None, chunk: int = 1 << 18,
               out: LiftResult | None = None) -> LiftResult:
        """Hard label, shares, top-k, views and totals per vertex (see `votes.VoteAccumulator.result`);
        `out`: write into its arrays (rows `order`) instead of new ones (its labels and confidence are
        then views of its first top-k column)."""
        top_k = int(top_k)
        if top_k < 1:
            raise ValueError("top_k must be >= 1")
        V = self.n_vertices
        rows = np.arange(V) if order is None else np.asarray(order).astype(np.int64, copy=False)
        if out is not None:
            out_ids, shares, totals, n_views = out.topk_ids, out.topk_shares, out.votes_total, out.n_views
        else:
            out_ids = np.zeros((V, top_k), np.int64)
            shares = np.zeros((V, top_k), np.float32)
            totals = np.zeros(V, np.float32)
            n_views = np.zeros(V, np.int32)
        step = max(1, int(chunk)) * 4
        for lo in range(0, V, step):  # the table's entries of a range of vertices at a time
            hi = min(V, lo + step)
            start, ov_cls, ov_w = kernels.table_by_vertex(self._keys, self._w, lo, hi, self.n_classes, self.cls_dtype)
            kernels.results(self.slot_cls, self.slot_w, self.n_views, lo, start, ov_cls, ov_w, rows, top_k,
                            out_ids, shares, totals, n_views)
        if out is not None:
            return out
        return LiftResult(labels=out_ids[:, 0].copy(), confidence=shares[:, 0].copy(), topk_ids=out_ids,
                          topk_shares=shares, n_views=n_views, votes_total=totals)


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

    def visible(self, R: np.ndarray, t: np.ndarray, bounds, z_max: float, cells: slice = slice(None)) -> np.ndarray:
        """Indices (sorted order) of the vertices of all cells (of `cells`) whose box meets the frustum."""
        c = self.corners[cells]
        pc = [((c[..., 0] * R[i, 0] + c[..., 1] * R[i, 1]) + c[..., 2] * R[i, 2]) + t[i] for i in range(3)]
        x, y, z = pc
        xmin, xmax, ymin, ymax = (float(b) for b in bounds)
        out = (z <= NEAR).all(1) | (x < xmin * z).all(1) | (x > xmax * z).all(1) \
            | (y < ymin * z).all(1) | (y > ymax * z).all(1)
        if z_max > 0:
            out |= (z > z_max).all(1)
        keep = np.flatnonzero(~out) + (cells.start or 0)
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
               progress: Callable[[int], Any] | None = None, on_visible: Callable | None = None,
               ray_frames: Callable | None = None) -> LiftResult:
    """`frame_loop.lift_torch` on the CPU (see there): the same results, bit for bit.

    The vertices are voted for in passes of about `cfg.vertices_per_pass` (whole spatial cells; one
    pass with `on_visible`), each reading the frames again with an accumulator of its own vertices
    alone: a (vertex, class) sum is the same in any pass (`NumpyVoteAccumulator`)."""
    cfg = cfg or LiftConfig()
    verts_np, triangles = checked_mesh(vertices, triangles, normals, cfg)
    V = len(verts_np)
    if V == 0:
        for _ in (frames() if callable(frames) else frames):
            if progress:
                progress(1)
        return NumpyVoteAccumulator(V, n_classes).result(cfg.top_k)
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
    passes = _vertex_passes(blocks.counts, 0 if on_visible is not None else int(cfg.vertices_per_pass))
    raycast = cfg.raycast_missing_depth and triangles is not None and len(triangles)
    out, depths = None, []  # (the frames' mesh depths from the first pass, for the others)
    for n_pass, (cells, v0, v1) in enumerate(passes):
        acc = NumpyVoteAccumulator(v1 - v0, n_classes)
        if n_pass == 0:
            pairs = frames_with_mesh_depth(frames, verts_np, triangles, ray_frames=ray_frames) if raycast else \
                ((frame, None) for frame in _frames_again(frames, len(passes) > 1))
        else:
            pairs = zip(_frames_again(frames, True), depths if raycast else iter(lambda: None, 0))
        for index, (frame, mesh_depth) in enumerate(pairs):
            if n_pass == 0 and raycast and len(passes) > 1:
                depths.append(mesh_depth)
            _lift_frame(index, frame, verts_s, xyz, norms_s, blocks, acc, mesh_depth, origin, cfg, on_visible,
                        cells, v0)
            if progress:
                progress(1 / len(passes) if len(passes) > 1 else 1)
        out = acc.result(cfg.top_k, order=blocks.perm[v0:v1],
                         out=out or (_empty_result(V, cfg.top_k) if len(passes) > 1 else None))
        del acc
    return out


def _vertex_passes(counts: np.ndarray, per_pass: int) -> list[tuple[slice, int, int]]:
    """(cells, first vertex, end vertex) of each pass: consecutive cells (vertex counts `counts`,
    vertices sorted by cell) holding about `per_pass` vertices; one pass when per_pass is 0."""
    total = int(counts.sum())
    if per_pass <= 0 or total <= per_pass:
        return [(slice(0, len(counts)), 0, total)]
    ends = np.cumsum(counts)
    n = -(-total // per_pass)
    cuts = np.unique(np.searchsorted(ends, np.arange(1, n) * (total / n)))
    cuts = [0, *[int(c) for c in cuts if 0 < c < len(counts)], len(counts)]
    starts = np.concatenate([[0], ends])
    return [(slice(a, b), int(starts[a]), int(starts[b])) for a, b in zip(cuts[:-1], cuts[1:])]


def _frames_again(frames, again: bool):
    """A fresh iterator over the frames (a list, or a function returning an iterator)."""
    if callable(frames):
        return iter(frames())
    if again and iter(frames) is frames:
        raise TypeError("lift: frames must be a list or a function returning an iterator of frames "
                        "(voting in vertex passes reads them again)")
    return iter(frames)


def _empty_result(V: int, top_k: int) -> LiftResult:
    ids = np.zeros((V, top_k), np.int64)
    shares = np.zeros((V, top_k), np.float32)
    return LiftResult(labels=ids[:, 0], confidence=shares[:, 0], topk_ids=ids, topk_shares=shares,
                      n_views=np.zeros(V, np.int32), votes_total=np.zeros(V, np.float32))


def _lift_frame(index, frame, verts_s, xyz, norms_s, blocks, acc, mesh_depth, origin, cfg, on_visible=None,
                cells: slice = slice(None), v0: int = 0) -> None:
    """One frame's votes (`frame_loop._lift_frame`); `xyz`: the block-sorted vertices' coordinate columns;
    only the vertices of `cells` vote, into `acc` whose vertex 0 is sorted vertex v0."""
    tol_m, tol_rel = float(cfg.depth_tolerance_m), float(cfg.depth_tolerance_rel)
    labels = np.asarray(frame.labels)
    if labels.ndim != 2 or labels.size == 0:
        raise ValueError(f"frame {index}: labels must be (H,W), got {tuple(labels.shape)}")
    H, W = labels.shape
    labels = np.ascontiguousarray(labels.reshape(-1), dtype=np.int64)
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
    more, more_w = [labels], [conf if conf is not None else np.ones(H * W, np.float32)]
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
    cls = np.stack(more).astype(acc.cls_dtype, copy=False)  # layer 0: the labels, then the ranked layers
    wts = np.stack(more_w).astype(np.float32, copy=False)
    del more, more_w
    depth = None
    if frame.depth_m is not None:
        depth = np.asarray(frame.depth_m).astype(np.float32, copy=False)
        if depth.ndim != 2:
            raise ValueError(f"frame {index}: depth must be (H,W), got {tuple(depth.shape)}")
        Hd, Wd = depth.shape
        depth = np.ascontiguousarray(depth.reshape(-1))

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
    idx_all = blocks.visible(R, t, bounds, z_max, cells)
    same_raster = False
    if depth is not None:
        Kd = np.asarray(frame.K_depth, dtype=np.float64)
        same_raster = (Hd, Wd) == (H, W) and np.allclose(Kd, K, rtol=0, atol=1e-9)
        ax, bx = float(Kd[0, 0] / fx), float(Kd[0, 2] - Kd[0, 0] * cx / fx + 0.5)
        ay, by = float(Kd[1, 1] / fy), float(Kd[1, 2] - Kd[1, 1] * cy / fy + 0.5)

    n = min(CHUNK, idx_all.size)
    vis_pos, vis_pix, miss_pos, miss_pix, miss_key = (np.empty(n, np.int64) for _ in range(5))
    miss_z = np.empty(n, np.float32)
    if depth is None:
        depth, Hd, Wd, same_raster, ax, bx, ay, by = np.zeros(0, np.float32), 0, 0, False, 0.0, 0.0, 0.0, 0.0
    f32 = np.float32
    for start in range(0, idx_all.size, CHUNK):
        idx = idx_all[start:start + CHUNK]
        n_vis, n_miss = kernels.project(idx, *xyz, P, q, W, H, f32(z_max), labels, depth, Hd, Wd, same_raster,
                                        f32(ax), f32(bx), f32(ay), f32(by), f32(tol_m), f32(tol_rel),
                                        mesh_depth is not None, vis_pos, vis_pix, miss_pos, miss_pix, miss_z, miss_key)
        keep, kept_px = vis_pos[:n_vis], vis_pix[:n_vis]
        if n_miss:
            z, d = miss_z[:n_miss], mesh_depth.at(miss_key[:n_miss])
            ok = np.isfinite(d)
            d = np.where(ok, d, np.float32(0))
            seen = np.flatnonzero(ok & (np.abs(z - d) <= np.float32(tol_m) + np.float32(tol_rel) * d))
            keep = np.concatenate([keep, miss_pos[seen]])
            kept_px = np.concatenate([kept_px, miss_pix[seen]])
        if keep.size == 0:
            continue
        vid = idx[keep]
        cos = None
        if norms_s is not None:
            centre = (-Rn.T @ tn).astype(np.float32)
            ray = verts_s[vid] - centre
            cos = np.abs((norms_s[vid] * ray).sum(1)) / np.maximum(np.sqrt((ray * ray).sum(1)), np.float32(1e-12))
        acc.add_frame(vid - v0 if v0 else vid, kept_px, cls, wts, cos)
        if on_visible is not None:
            on_visible(index, frame, blocks.perm[vid], kept_px)
