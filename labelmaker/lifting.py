"""Lifting 2D labels onto 3D vertices: every frame votes for the vertices it sees.

Functional core: frames (unified label maps, confidence, depth, intrinsics, pose) and vertex
positions in, per-vertex hard and soft labels out (`lift`). Frames may come from a generator, so a
stage can stream them from the workspace shards: memory does not grow with the frame count.

Visibility of a vertex in a frame: it lies in front of the camera and projects (nearest pixel, pixel
centres at integer coordinates) inside the label raster onto a known label (id 0 casts no vote),
and its camera depth z agrees with the sensor depth d at its pixel of the depth raster (which may
differ in size from the label raster), |z - d| <= depth_tolerance_m + depth_tolerance_rel * d.
Where the sensor has no depth (0, or outside the depth raster, or no depth map at all), d is the
mesh's own depth ray cast through that pixel (open3d RaycastingScene, built on first need; ~0.4 s
and ~80 MB per million triangles); without triangles (a point cloud) such vertices get no vote.

Speed and memory: vertices are sorted into 25 cm cells once; per frame only the cells whose bounding
box meets the view frustum are projected, in chunks, in float32 (torch; CUDA when present, ray casting
stays on the CPU). Votes go to a `VoteAccumulator`: four (class, weight) slots per vertex plus a
sparse overflow buffer, compacted (sort + segment sum) as it grows -- never a dense
vertices x classes array. Results are deterministic: no float sum depends on thread scheduling.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from .devices import cpu_threads, resolve_device, to_tensor
from .lazy import LazyModule

torch = LazyModule("torch")  # loaded on first use (see lazy.py)

__all__ = ["LiftConfig", "LiftFrame", "LiftResult", "VoteAccumulator", "lift"]

_BLOCK_SIZE_M = 0.25  # edge of the spatial cells that group vertices for frustum culling
_CHUNK = 1 << 20  # candidate vertices projected at once
_NEAR = 1e-3  # m; vertices closer to the camera plane than this are never visible
_FRUSTUM_MARGIN_PX = 1.0


@dataclass
class LiftConfig:
    depth_tolerance_m: float = 0.03  # visibility: |z_vertex - depth| <= tol_m + tol_rel * depth
    depth_tolerance_rel: float = 0.02
    raycast_missing_depth: bool = True  # where sensor depth is 0, test against the mesh's ray-cast depth
    weight_by_confidence: bool = True  # vote weight = consensus confidence (else 1)
    weight_by_angle: bool = False  # also weight by |cos| of the view angle (needs normals)
    max_distance_m: float = 0.0  # vertices farther than this (camera z) cast no vote; 0 = no limit
    boundary_px: int = 0  # > 0: votes from pixels within this many pixels of a label change weigh less
    top_k: int = 3  # soft labels kept per vertex
    device: str = "auto"  # auto | cpu | cuda
    cpu_threads: int = 1  # torch CPU threads while lifting (0 = torch's default); not hashed: results do not
    # depend on it


@dataclass
class LiftFrame:
    """One frame's inputs to `lift`."""

    labels: Any  # (H,W) int unified ids (np.ndarray or torch.Tensor), 0 = unknown (casts no vote)
    confidence: Any | None  # (H,W) float in [0,1], or None (weight 1)
    depth_m: np.ndarray | None  # (Hd,Wd) float32 metres, 0 = missing; None = no sensor depth at all
    K_labels: np.ndarray  # (3,3) intrinsics of the label raster
    K_depth: np.ndarray  # (3,3) intrinsics of the depth raster
    T_cw: np.ndarray  # (4,4) world-to-camera, OpenCV axes
    more_labels: Any | None = None  # (R,H,W) the consensus' next-best classes per pixel (0 = none): they vote
    more_confidence: Any | None = None  # too, so a close call keeps its information; (R,H,W) their vote shares
    masks: Any | None = None  # (H,W) class-agnostic mask ids (0 = none), for `on_visible` observers (3D instances)


@dataclass
class LiftResult:
    labels: np.ndarray  # (V,) int64 hard label, 0 where no vote
    confidence: np.ndarray  # (V,) float32 winner's share of the vertex's votes
    topk_ids: np.ndarray  # (V,k) int64, best first, 0-padded
    topk_shares: np.ndarray  # (V,k) float32 share of the vertex's votes, rows sum <= 1
    n_views: np.ndarray  # (V,) int32 frames in which the vertex was visible and labelled
    votes_total: np.ndarray  # (V,) float32 summed vote weight


def _nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Indices of the True entries of a 1-D mask (numpy's is several times faster on the CPU)."""
    if mask.is_cuda:
        return torch.nonzero(mask).squeeze(1)
    return torch.from_numpy(np.flatnonzero(mask.numpy()))


def _segment_sum(keys: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct keys (ascending) and the summed weight of each; deterministic on every device
    (stable sort, then float64 prefix sums, instead of atomic scatter-adds)."""
    if keys.numel() == 0:
        return keys, weights
    keys, order = torch.sort(keys, stable=True)
    csum = torch.cumsum(weights.index_select(0, order).to(torch.float64), 0)
    del order
    last = torch.ones(keys.numel(), dtype=torch.bool, device=keys.device)
    last[:-1] = keys[1:] != keys[:-1]
    ends = _nonzero(last)
    sums = csum.index_select(0, ends)
    sums[1:] -= csum.index_select(0, ends[:-1])
    return keys.index_select(0, ends), sums.to(torch.float32)


def _group_rank(sorted_ids: torch.Tensor) -> torch.Tensor:
    """Position of each element within its run of equal values (input sorted)."""
    n = sorted_ids.numel()
    pos = torch.arange(n, device=sorted_ids.device)
    start = torch.ones(n, dtype=torch.bool, device=sorted_ids.device)
    start[1:] = sorted_ids[1:] != sorted_ids[:-1]
    first = torch.cummax(torch.where(start, pos, torch.zeros_like(pos)), 0).values
    return pos - first


class VoteAccumulator:
    """Sparse per-vertex class votes: (vertex, class) -> summed weight.

    Storage: `slots` (class, weight) pairs per vertex, filled in order and never freed, plus an
    overflow buffer of (vertex * n_classes + class, weight) for vertices that meet more classes
    than they have slots. The buffer is compacted (sort + segment sum) whenever it fills and grows
    when compaction frees less than half of it. A (vertex, class) pair lives either in a slot or in
    the overflow, never both. Each `add` call counts as one view of every vertex it gives a vote.
    All sums are deterministic (no atomic float adds).
    """

    def __init__(self, n_vertices: int, n_classes: int, device: str | torch.device = "auto", slots: int = 4,
                 buffer_size: int = 1 << 20):
        self.n_vertices, self.n_classes = int(n_vertices), int(n_classes)
        if self.n_classes < 2:
            raise ValueError("n_classes must be >= 2 (id 0 is unknown)")
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.slots = int(slots)
        cls_dtype = torch.int16 if self.n_classes <= 32767 else torch.int32
        self._cls_dtype = cls_dtype
        self.slot_cls = torch.zeros((self.n_vertices, self.slots), dtype=cls_dtype, device=self.device)
        self.slot_w = torch.zeros((self.n_vertices, self.slots), dtype=torch.float32, device=self.device)
        self.n_views = torch.zeros(self.n_vertices, dtype=torch.int32, device=self.device)
        self._cap = max(16, int(buffer_size))
        self._ov_keys = torch.empty(self._cap, dtype=torch.int64, device=self.device)
        self._ov_w = torch.empty(self._cap, dtype=torch.float32, device=self.device)
        self._ov_n = 0  # entries in the buffer
        self._ov_compact = 0  # leading entries that are compacted (distinct, sorted)
        self.compactions = 0

    # ---------------------------------------------------------------- adding
    def add(self, vertex_ids, class_ids, weights, distinct: bool = False) -> None:
        """Add votes. Class id 0 and weight 0 entries are ignored. `distinct=True` promises that no
        vertex id occurs twice in this call (as in one frame of `lift`); it skips a sort."""
        dev = self.device
        v = to_tensor(vertex_ids, dev, torch.int64).reshape(-1)
        c = to_tensor(class_ids, dev, torch.int64).reshape(-1)
        w = to_tensor(weights, dev, torch.float32).reshape(-1)
        if w.numel() == 1 and v.numel() != 1:
            w = w.expand(v.numel())
        if not (v.numel() == c.numel() == w.numel()):
            raise ValueError(f"add: {v.numel()} vertex ids, {c.numel()} class ids, {w.numel()} weights")
        if v.numel() == 0:
            return
        if int(v.min()) < 0 or int(v.max()) >= self.n_vertices:
            raise ValueError(f"add: vertex ids must lie in 0..{self.n_vertices - 1}")
        if int(c.min()) < 0 or int(c.max()) >= self.n_classes:
            raise ValueError(f"add: class ids must lie in 0..{self.n_classes - 1}")
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError("add: weights must be finite and >= 0")
        keep = (c > 0) & (w > 0)
        if not bool(keep.all()):
            v, c, w = v[keep], c[keep], w[keep]
            if v.numel() == 0:
                return
        if distinct:
            self._add_distinct(v, c, w)
            return
        keys, w = _segment_sum(v * self.n_classes + c, w)  # sorted by vertex, then class
        v, c = keys // self.n_classes, keys % self.n_classes
        self._add_sorted(v, c, w)
        uv = torch.unique_consecutive(v)
        self.n_views.index_add_(0, uv, torch.ones_like(uv, dtype=torch.int32))

    def _add_distinct_fast(self, v: torch.Tensor, c: torch.Tensor, w: torch.Tensor, count_view: bool = True) -> None:
        """`add(..., distinct=True)` without the argument checks (for `lift`): v distinct and in
        range, c in 1..n_classes-1, w >= 0 (zero weights are dropped here)."""
        if not bool((w > 0).all()):
            keep = _nonzero(w > 0)
            v, c, w = v.index_select(0, keep), c.index_select(0, keep), w.index_select(0, keep)
        if v.numel():
            self._add_distinct(v, c, w, count_view)

    def _add_distinct(self, v: torch.Tensor, c: torch.Tensor, w: torch.Tensor, count_view: bool = True) -> None:
        S = self.slots
        cc = c.to(self._cls_dtype)
        flat = v * S
        if count_view:
            self.n_views.index_add_(0, v, torch.ones(v.numel(), dtype=torch.int32, device=self.device))
        # most votes repeat the class already in the vertex's first slot: add those in one pass
        first = self.slot_cls.view(-1).index_select(0, flat) == cc
        self.slot_w.view(-1).index_add_(0, flat, torch.where(first, w, torch.zeros_like(w)))
        rest = _nonzero(~first)
        if rest.numel() == 0:
            return
        v, c, cc, w, flat = (x.index_select(0, rest) for x in (v, c, cc, w, flat))
        cls_v = self.slot_cls.index_select(0, v)
        match = cls_v == cc.unsqueeze(1)
        found = match.any(1)
        used = (cls_v != 0).sum(1)
        slot = torch.where(found, torch.argmax(match.to(torch.uint8), 1), used)
        ok = slot < S
        flat = flat + slot
        if not bool(ok.all()):
            bad = _nonzero(~ok)
            self._overflow(v[bad] * self.n_classes + c[bad], w[bad])
            good = _nonzero(ok)
            flat, cc, w = flat[good], cc[good], w[good]
        self.slot_cls.view(-1).index_copy_(0, flat, cc)
        self.slot_w.view(-1).index_add_(0, flat, w)  # positions are distinct: deterministic

    def _add_sorted(self, v: torch.Tensor, c: torch.Tensor, w: torch.Tensor) -> None:
        """(v, c) distinct and sorted by v; a vertex may occur several times."""
        S = self.slots
        cls_v = self.slot_cls[v]
        cc = c.to(self._cls_dtype)
        match = cls_v == cc.unsqueeze(1)
        found = match.any(1)
        used = (cls_v != 0).sum(1)
        slot = torch.argmax(match.to(torch.uint8), 1)
        new = torch.nonzero(~found).squeeze(1)
        if new.numel():  # the r-th new class of a vertex takes its (used + r)-th slot
            slot[new] = used[new] + _group_rank(v[new])
        ok = slot < S
        flat = v * S + slot
        if not bool(ok.all()):
            self._overflow(v[~ok] * self.n_classes + c[~ok], w[~ok])
            flat, cc, w = flat[ok], cc[ok], w[ok]
        self.slot_cls.view(-1)[flat] = cc
        self.slot_w.view(-1).index_add_(0, flat, w)

    def _overflow(self, keys: torch.Tensor, w: torch.Tensor) -> None:
        while keys.numel():
            room = self._cap - self._ov_n
            if room == 0:
                self._compact()
                continue
            take = min(room, keys.numel())
            self._ov_keys[self._ov_n:self._ov_n + take] = keys[:take]
            self._ov_w[self._ov_n:self._ov_n + take] = w[:take]
            self._ov_n += take
            keys, w = keys[take:], w[take:]

    def _compact(self) -> None:
        if self._ov_n == self._ov_compact:
            if self._ov_n < self._cap:
                return
        else:
            keys, sums = _segment_sum(self._ov_keys[:self._ov_n], self._ov_w[:self._ov_n])
            n = keys.numel()
            self._ov_keys[:n] = keys
            self._ov_w[:n] = sums
            self._ov_n = self._ov_compact = n
            self.compactions += 1
        if self._ov_n > self._cap // 2:  # compaction freed too little: grow
            cap = self._cap * 2
            keys = torch.empty(cap, dtype=torch.int64, device=self.device)
            ws = torch.empty(cap, dtype=torch.float32, device=self.device)
            keys[:self._ov_n] = self._ov_keys[:self._ov_n]
            ws[:self._ov_n] = self._ov_w[:self._ov_n]
            self._ov_keys, self._ov_w, self._cap = keys, ws, cap

    @property
    def overflow_entries(self) -> int:
        return self._ov_n

    # ---------------------------------------------------------------- reading
    def result(self, top_k: int = 3, order: np.ndarray | None = None, chunk: int = 1 << 18) -> LiftResult:
        """Hard label (0 without votes), winner's share, top-k ids/shares (ties: lowest id first),
        views and total weight per vertex, as numpy arrays. With `order`, accumulator row i is
        written to output row order[i] (lets `lift` undo its vertex sorting without copies)."""
        top_k = int(top_k)
        if top_k < 1:
            raise ValueError("top_k must be >= 1")
        self._compact()
        V, C = self.n_vertices, self.n_classes
        rows = np.arange(V) if order is None else np.asarray(order)
        out_ids = np.zeros((V, top_k), dtype=np.int64)
        shares = np.zeros((V, top_k), dtype=np.float32)
        totals = np.zeros(V, dtype=np.float32)
        n_views = np.zeros(V, dtype=np.int32)
        ov_keys, ov_w = self._ov_keys[:self._ov_n], self._ov_w[:self._ov_n]  # sorted by key
        ov_v = ov_keys // C
        bounds = torch.searchsorted(ov_v, torch.arange(0, V + chunk, chunk, device=self.device).clamp_(max=V)).tolist()
        for n_chunk, a in enumerate(range(0, V, chunk)):
            b = min(V, a + chunk)
            lo, hi = bounds[n_chunk], bounds[n_chunk + 1]  # overflow entries of vertices a..b-1
            cls = self.slot_cls[a:b].to(torch.int64)
            w = self.slot_w[a:b]
            total = w.to(torch.float64).sum(1)
            ids, best = _top_k_dense(cls, w, top_k, C)
            if hi > lo:  # vertices with more classes than slots: exact top-k over slots + overflow
                verts, sums = _segment_sum(ov_v[lo:hi], ov_w[lo:hi])
                total.index_add_(0, verts - a, sums.to(torch.float64))  # distinct positions: deterministic
                ov_ids, ov_best = self._top_k_overflow(verts, ov_keys[lo:hi], ov_w[lo:hi], top_k)
                ids[verts - a] = ov_ids
                best[verts - a] = ov_best
            total = total.to(torch.float32)
            share = torch.where(total.unsqueeze(1) > 0, best / total.clamp(min=1e-30).unsqueeze(1),
                                torch.zeros_like(best)).clamp_(max=1.0)
            r = rows[a:b]
            out_ids[r] = ids.cpu().numpy()
            shares[r] = share.cpu().numpy()
            totals[r] = total.cpu().numpy()
            n_views[r] = self.n_views[a:b].cpu().numpy()
        return LiftResult(labels=out_ids[:, 0].copy(), confidence=shares[:, 0].copy(), topk_ids=out_ids,
                          topk_shares=shares, n_views=n_views, votes_total=totals)

    def _top_k_overflow(self, vertices: torch.Tensor, ov_keys: torch.Tensor, ov_w: torch.Tensor,
                        top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k of the given (sorted, distinct) vertices over their slots and overflow entries, by
        sorting all their (vertex, class, weight) entries: weight descending, then class ascending."""
        C, S = self.n_classes, self.slots
        n = vertices.numel()
        row = torch.arange(n, device=self.device)
        slot_c = self.slot_cls.index_select(0, vertices).to(torch.int64).reshape(-1)
        slot_w = self.slot_w.index_select(0, vertices).reshape(-1)
        ov_row = torch.searchsorted(vertices, ov_keys // C)
        ent_row = torch.cat([row.repeat_interleave(S), ov_row])
        ent_c = torch.cat([slot_c, ov_keys % C])
        ent_w = torch.cat([slot_w, ov_w])
        keep = _nonzero(ent_c > 0)
        ent_row, ent_c, ent_w = ent_row[keep], ent_c[keep], ent_w[keep]
        o = torch.argsort(ent_c, stable=True)
        o = o[torch.argsort(-ent_w[o], stable=True)]
        o = o[torch.argsort(ent_row[o], stable=True)]
        ent_row, ent_c, ent_w = ent_row[o], ent_c[o], ent_w[o]
        rank = _group_rank(ent_row)
        sel = _nonzero(rank < top_k)
        ids = torch.zeros((n, top_k), dtype=torch.int64, device=self.device)
        best = torch.zeros((n, top_k), dtype=torch.float32, device=self.device)
        ids[ent_row[sel], rank[sel]] = ent_c[sel]
        best[ent_row[sel], rank[sel]] = ent_w[sel]
        return ids, best


def _top_k_dense(cls: torch.Tensor, w: torch.Tensor, top_k: int, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of (n, m) class ids (0 = empty) and weights: the k best classes (weight descending,
    ties: lowest id first) and their weights, 0-padded."""
    n = cls.shape[0]
    w = torch.where(cls > 0, w, torch.full_like(w, -1.0))
    ids = torch.zeros((n, top_k), dtype=torch.int64, device=cls.device)
    best_w = torch.zeros((n, top_k), dtype=torch.float32, device=cls.device)
    for j in range(min(top_k, cls.shape[1])):
        best = w.max(1).values
        tied = w == best.unsqueeze(1)
        pick = torch.where(tied, cls, torch.full_like(cls, n_classes)).min(1).values
        valid = best > 0
        ids[:, j] = torch.where(valid, pick, torch.zeros_like(pick))
        best_w[:, j] = torch.where(valid, best, torch.zeros_like(best))
        w = torch.where(tied & (cls == pick.unsqueeze(1)), torch.full_like(w, -1.0), w)
    return ids, best_w


class _Raycaster:
    """Mesh depth along given rays (open3d RaycastingScene on the CPU), built on first use."""

    def __init__(self, vertices: np.ndarray, triangles: np.ndarray):
        self._vertices, self._triangles = vertices, triangles
        self._scene = None

    def z_depth(self, origin: np.ndarray, dirs_world: np.ndarray) -> np.ndarray:
        """Ray parameter of the first hit for rays origin + t * dir (inf where nothing is hit);
        with dirs whose camera z component is 1 this is the camera z depth of the hit."""
        import open3d as o3d

        if self._scene is None:
            self._scene = o3d.t.geometry.RaycastingScene()
            self._scene.add_triangles(o3d.core.Tensor(np.ascontiguousarray(self._vertices, dtype=np.float32)),
                                      o3d.core.Tensor(np.ascontiguousarray(self._triangles, dtype=np.uint32)))
            self._vertices = self._triangles = None
        rays = np.empty((len(dirs_world), 6), dtype=np.float32)
        rays[:, :3] = origin
        rays[:, 3:] = dirs_world
        return self._scene.cast_rays(o3d.core.Tensor(rays), nthreads=0)["t_hit"].numpy()


class _Blocks:
    """Vertices sorted into spatial cells; per cell the index range and a tight bounding box."""

    def __init__(self, vertices: torch.Tensor, size: float):
        dev = vertices.device
        lo = vertices.min(0).values
        cell = torch.floor((vertices - lo) / size).to(torch.int64)
        dims = cell.max(0).values + 1
        key = (cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]
        key, self.perm = torch.sort(key, stable=True)
        _, counts = torch.unique_consecutive(key, return_counts=True)
        self.counts = counts
        self.starts = torch.cumsum(counts, 0) - counts
        block_of = torch.repeat_interleave(torch.arange(counts.numel(), device=dev), counts)
        pts = vertices.index_select(0, self.perm)
        self.sorted_points = pts  # (V,3) in block order; the caller takes it
        nb = counts.numel()
        bmin = torch.full((nb, 3), float("inf"), device=dev).scatter_reduce(
            0, block_of.unsqueeze(1).expand(-1, 3), pts, "amin")
        bmax = torch.full((nb, 3), float("-inf"), device=dev).scatter_reduce(
            0, block_of.unsqueeze(1).expand(-1, 3), pts, "amax")
        sel = torch.tensor([[(i >> k) & 1 for k in range(3)] for i in range(8)], dtype=torch.bool, device=dev)
        self.corners = torch.where(sel.unsqueeze(0), bmax.unsqueeze(1), bmin.unsqueeze(1))  # (B,8,3)

    def visible(self, R: torch.Tensor, t: torch.Tensor, bounds: tuple[float, float, float, float],
                z_max: float) -> torch.Tensor:
        """Indices (sorted order) of the vertices of all blocks that meet the frustum."""
        pc = self.corners @ R.T + t  # (B,8,3)
        x, y, z = pc[..., 0], pc[..., 1], pc[..., 2]
        xmin, xmax, ymin, ymax = bounds
        out = (z <= _NEAR).all(1) | (x < xmin * z).all(1) | (x > xmax * z).all(1) \
            | (y < ymin * z).all(1) | (y > ymax * z).all(1)
        if z_max > 0:
            out |= (z > z_max).all(1)
        keep = torch.nonzero(~out).squeeze(1)
        counts = self.counts[keep]
        total = int(counts.sum()) if keep.numel() else 0
        if total == 0:
            return torch.zeros(0, dtype=torch.int64, device=R.device)
        shift = self.starts[keep] - (torch.cumsum(counts, 0) - counts)
        return torch.arange(total, device=R.device) + torch.repeat_interleave(shift, counts)


def boundary_weight(labels: torch.Tensor, width: int) -> torch.Tensor:
    """(H,W) weights (d + 1) / (width + 1), capped at 1, where d is the chessboard distance in
    pixels to the nearest label change.

    2D segmenters err most along object boundaries (labels bleed over by a few pixels, and
    depth edges mix surfaces), so a vote from there is worth less than one from inside a region.
    """
    edge = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    dx = labels[:, 1:] != labels[:, :-1]
    dy = labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    weight = torch.ones(labels.shape, dtype=torch.float32, device=labels.device)
    reached = edge.to(torch.float32)[None, None]
    for d in range(width + 1):
        if d:
            reached = torch.nn.functional.max_pool2d(reached, 3, stride=1, padding=1)
        newly = (reached[0, 0] > 0) & (weight == 1.0)
        weight[newly] = (d + 1) / (width + 1)
    return weight


def frames_in_view(vertices: np.ndarray, T_cw: np.ndarray, K: np.ndarray, hw: tuple[int, int],
                   max_depth_m: float = 10.0, sample: int = 4096) -> np.ndarray:
    """(N,) whether each camera (world-to-camera T_cw (N,4,4), intrinsics K (N,3,3), images of
    height, width `hw`) has any of (a sample of) the vertices in front of it within
    `max_depth_m` and inside its image. Cheap: for telling "no frame looks at the mesh" apart
    from "the frames look at it but their depth disagrees"."""
    verts = np.asarray(vertices, dtype=np.float64)
    if len(verts) > sample:
        verts = verts[np.linspace(0, len(verts) - 1, sample).astype(np.int64)]
    T_cw, K = np.asarray(T_cw, dtype=np.float64), np.asarray(K, dtype=np.float64)
    h, w = hw
    out = np.zeros(len(T_cw), dtype=bool)
    for start in range(0, len(T_cw), 64):  # (64 frames x 4096 vertices x 3) at a time
        T, k = T_cw[start:start + 64], K[start:start + 64]
        cam = np.einsum("nij,vj->nvi", T[:, :3, :3], verts) + T[:, None, :3, 3]
        z = cam[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = k[:, None, 0, 0] * cam[..., 0] / z + k[:, None, 0, 2]
            v = k[:, None, 1, 1] * cam[..., 1] / z + k[:, None, 1, 2]
        inside = (z > 0.05) & (z < max_depth_m) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        out[start:start + 64] = inside.any(axis=1)
    return out


def lift(frames: Iterable[LiftFrame], vertices: np.ndarray, triangles: np.ndarray | None, n_classes: int,
         cfg: LiftConfig | None = None, normals: np.ndarray | None = None,
         progress: Callable[[int], Any] | None = None,
         on_visible: Callable[[int, LiftFrame, np.ndarray, np.ndarray], Any] | None = None) -> LiftResult:
    """Accumulate every frame's labels onto the vertices that frame sees (see the module doc).

    Vote weight = consensus confidence at the pixel (if cfg.weight_by_confidence and the frame has
    one, else 1) x |cos| of the angle between the vertex normal and the view ray (if
    cfg.weight_by_angle and normals are given). Zero-weight votes are dropped. `progress`, if given,
    is called with 1 after each frame (tqdm's `update` fits). `on_visible(index, frame, vertex_ids,
    pixels)`, if given, sees each frame's voting vertices (numpy ids in the caller's vertex order) and
    their flat pixel indices in the label raster, possibly in several calls per frame (the 3D
    instances count masks with it). Results are deterministic.
    """
    cfg = cfg or LiftConfig()
    with cpu_threads(cfg.cpu_threads):
        return _lift(frames, vertices, triangles, n_classes, cfg, normals, progress, on_visible)


def _lift(frames: Iterable[LiftFrame], vertices: np.ndarray, triangles: np.ndarray | None, n_classes: int,
          cfg: LiftConfig, normals: np.ndarray | None, progress: Callable[[int], Any] | None,
          on_visible: Callable | None) -> LiftResult:
    device = resolve_device(cfg.device)
    verts_np = np.asarray(vertices)
    if verts_np.ndim != 2 or verts_np.shape[1] != 3:
        raise ValueError(f"vertices must be (V,3), got {verts_np.shape}")
    if not np.isfinite(verts_np).all():
        raise ValueError("vertices must be finite (found NaN or inf)")
    V = len(verts_np)
    if triangles is not None:
        triangles = np.asarray(triangles)
        if triangles.ndim != 2 or triangles.shape[1] != 3 or triangles.dtype.kind not in "iu":
            raise ValueError(f"triangles must be (F,3) integer vertex indices, got {triangles.shape} {triangles.dtype}")
        if len(triangles) and (int(triangles.min()) < 0 or int(triangles.max()) >= V):
            raise ValueError(f"triangles index vertices outside 0..{V - 1}")
    if normals is not None and np.shape(normals) != (V, 3):
        raise ValueError(f"normals must be (V,3) like the vertices, got {np.shape(normals)}")
    if int(cfg.top_k) < 1:
        raise ValueError("top_k must be >= 1")
    acc = VoteAccumulator(V, n_classes, device=device)
    if V == 0:
        for _ in frames:
            if progress:
                progress(1)
        return acc.result(cfg.top_k)

    origin = np.mean(verts_np, axis=0, dtype=np.float64)  # work relative to the scene centre in float32
    if verts_np.dtype == np.float32:
        verts = to_tensor(verts_np, device, torch.float32) - torch.from_numpy(origin.astype(np.float32)).to(device)
    else:
        verts = torch.from_numpy((verts_np - origin).astype(np.float32)).to(device)
    blocks = _Blocks(verts, _BLOCK_SIZE_M)
    del verts
    verts_s = blocks.sorted_points  # (V,3) in block order
    blocks.sorted_points = None
    norms_s = None
    if cfg.weight_by_angle and normals is not None:
        nrm = to_tensor(normals, device, torch.float32).index_select(0, blocks.perm)
        norms_s = nrm / nrm.norm(dim=1, keepdim=True).clamp(min=1e-12)
        del nrm
    raycaster = None
    if cfg.raycast_missing_depth and triangles is not None and len(triangles):
        raycaster = _Raycaster(np.asarray(verts_np, dtype=np.float32), np.asarray(triangles))

    for index, frame in enumerate(frames):
        _lift_frame(index, frame, verts_s, norms_s, blocks, acc, raycaster, origin, cfg, device, on_visible)
        if progress:
            progress(1)

    return acc.result(cfg.top_k, order=blocks.perm.cpu().numpy())


def _lift_frame(index: int, frame: LiftFrame, verts_s: torch.Tensor, norms_s: torch.Tensor | None, blocks: _Blocks,
                acc: VoteAccumulator, raycaster: _Raycaster | None, origin: np.ndarray, cfg: LiftConfig,
                device: torch.device, on_visible: Callable | None = None) -> None:
    tol_m, tol_rel = float(cfg.depth_tolerance_m), float(cfg.depth_tolerance_rel)
    labels = to_tensor(frame.labels, device, torch.int64)
    if labels.ndim != 2 or labels.numel() == 0:
        raise ValueError(f"frame {index}: labels must be (H,W), got {tuple(labels.shape)}")
    H, W = labels.shape
    labels = labels.reshape(-1)
    lo, hi = (int(x) for x in torch.aminmax(labels))
    if lo < 0 or hi >= acc.n_classes:
        raise ValueError(f"frame {index}: label id {lo if lo < 0 else hi} is outside the unified space "
                         f"0..{acc.n_classes - 1}")
    conf = None
    if cfg.weight_by_confidence and frame.confidence is not None:
        conf = to_tensor(frame.confidence, device, torch.float32).reshape(-1)
        if conf.numel() != H * W:
            raise ValueError(f"frame {index}: confidence must have the label raster's shape {(H, W)}")
    near_edge = boundary_weight(labels.view(H, W), int(cfg.boundary_px)).reshape(-1) if cfg.boundary_px > 0 else None
    if near_edge is not None:
        conf = near_edge if conf is None else conf * near_edge
    more, more_w = [], []
    if frame.more_labels is not None:
        layers = to_tensor(frame.more_labels, device, torch.int64).reshape(-1, H * W)
        if layers.shape[1] != H * W:
            raise ValueError(f"frame {index}: more_labels must be (R,H,W) with the label raster's (H,W) = {(H, W)}")
        shares = None
        if frame.more_confidence is not None and cfg.weight_by_confidence:
            shares = to_tensor(frame.more_confidence, device, torch.float32).reshape(-1, H * W)
        for r in range(layers.shape[0]):
            w_r = shares[r] if shares is not None else (layers[r] > 0).to(torch.float32)
            more.append(layers[r])
            more_w.append(w_r * near_edge if near_edge is not None else w_r)
    depth = None
    if frame.depth_m is not None:
        depth = to_tensor(frame.depth_m, device, torch.float32)
        if depth.ndim != 2:
            raise ValueError(f"frame {index}: depth must be (H,W), got {tuple(depth.shape)}")
        Hd, Wd = depth.shape
        depth = depth.reshape(-1)

    T = np.asarray(frame.T_cw, dtype=np.float64)
    Rn = T[:3, :3]
    tn = T[:3, 3] + Rn @ origin  # camera from origin-relative coordinates
    K = np.asarray(frame.K_labels, dtype=np.float64)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    R = torch.from_numpy(Rn.astype(np.float32)).to(device)
    t = torch.from_numpy(tn.astype(np.float32)).to(device)
    # rows of P @ p + q: (u * z, v * z, z) in the label raster
    P = torch.from_numpy((K @ Rn).astype(np.float32)).to(device)
    q = torch.from_numpy((K @ tn).astype(np.float32)).to(device).unsqueeze(1)
    m = _FRUSTUM_MARGIN_PX
    bounds = ((-0.5 - m - cx) / fx, (W - 0.5 + m - cx) / fx, (-0.5 - m - cy) / fy, (H - 0.5 + m - cy) / fy)
    z_max = float(cfg.max_distance_m)
    idx_all = blocks.visible(R, t, bounds, z_max)
    same_raster = False
    if depth is not None:
        Kd = np.asarray(frame.K_depth, dtype=np.float64)
        same_raster = (Hd, Wd) == (H, W) and np.allclose(Kd, K, rtol=0, atol=1e-9)
        # the depth raster's pixel coordinates are affine in the label raster's
        ax, bx = Kd[0, 0] / fx, Kd[0, 2] - Kd[0, 0] * cx / fx + 0.5
        ay, by = Kd[1, 1] / fy, Kd[1, 2] - Kd[1, 1] * cy / fy + 0.5

    for start in range(0, idx_all.numel(), _CHUNK):
        idx = idx_all[start:start + _CHUNK]
        h = torch.addmm(q, P, verts_s.index_select(0, idx).T)  # (3,n)
        z = h[2]
        iz = z.clamp(min=_NEAR).reciprocal()  # vertices behind the near plane are masked out below
        u = h[0] * iz  # continuous pixel coordinates
        v = h[1] * iz
        uf = (u + 0.5).floor_()
        vf = (v + 0.5).floor_()
        ok = (z > _NEAR) & (uf >= 0) & (uf < W) & (vf >= 0) & (vf < H)
        if z_max > 0:
            ok &= z <= z_max
        pix = (vf.clamp_(0, H - 1).to(torch.int64) * W).add_(uf.clamp_(0, W - 1).to(torch.int64))
        lab = labels.index_select(0, pix)
        ok &= lab > 0
        if depth is None:
            missing = ok
            visible = None
        else:
            if same_raster:
                d = depth.index_select(0, pix)
            else:
                ud = torch.floor(u * ax + bx)
                vd = torch.floor(v * ay + by)
                inside = (ud >= 0) & (ud < Wd) & (vd >= 0) & (vd < Hd)
                dpix = (vd.clamp_(0, Hd - 1).to(torch.int64) * Wd).add_(ud.clamp_(0, Wd - 1).to(torch.int64))
                d = torch.where(inside, depth.index_select(0, dpix), torch.zeros_like(z))
            has = d > 0
            visible = ok & has & ((z - d).abs_() <= d * tol_rel + tol_m)
            missing = ok & ~has
        keep = _nonzero(visible) if visible is not None else torch.zeros(0, dtype=torch.int64, device=device)
        if raycaster is not None:
            miss = _nonzero(missing)
            if miss.numel():
                label_px = pix.index_select(0, miss)
                if depth is None:  # rays through the label raster's pixels
                    key, rasters = label_px, [(K, W, H)]
                elif same_raster:
                    key, rasters = label_px, [(K, W, H)]
                else:  # through the depth raster's pixels; the label raster's where it has none
                    key = torch.where(inside.index_select(0, miss), dpix.index_select(0, miss), Hd * Wd + label_px)
                    rasters = [(Kd, Wd, Hd), (K, W, H)]
                seen = _raycast_visible(raycaster, Rn, T, z.index_select(0, miss), key, rasters, tol_m, tol_rel)
                keep = torch.cat([keep, miss.index_select(0, _nonzero(seen))])
        if keep.numel() == 0:
            continue
        vid = idx.index_select(0, keep)
        w = conf.index_select(0, pix.index_select(0, keep)) if conf is not None \
            else torch.ones(keep.numel(), device=device)
        if norms_s is not None:  # |cos| between the normal and the ray from the camera (world axes)
            centre = torch.from_numpy((-Rn.T @ tn).astype(np.float32)).to(device)
            ray = verts_s.index_select(0, vid) - centre
            cos = (norms_s.index_select(0, vid) * ray).sum(1).abs_() / ray.norm(dim=1).clamp_(min=1e-12)
            w = w * cos
        acc._add_distinct_fast(vid, lab.index_select(0, keep), w)
        if on_visible is not None:
            original = blocks.perm.index_select(0, vid).cpu().numpy()
            on_visible(index, frame, original, pix.index_select(0, keep).cpu().numpy())
        if more:
            kept_px = pix.index_select(0, keep)
            for layer, layer_w in zip(more, more_w):
                w_r = layer_w.index_select(0, kept_px)
                if norms_s is not None:
                    w_r = w_r * cos
                acc._add_distinct_fast(vid, layer.index_select(0, kept_px), w_r, count_view=False)


def _raycast_visible(raycaster: _Raycaster, R: np.ndarray, T: np.ndarray, z: torch.Tensor, key: torch.Tensor,
                     rasters: list, tol_m: float, tol_rel: float) -> torch.Tensor:
    """Visibility of vertices without sensor depth against the mesh's depth ray cast through their
    pixel, one ray per distinct pixel. `key` indexes the pixels of the rasters [(K, W, H), ...]
    laid one after the other."""
    device = z.device
    n_px = sum(W * H for _, W, H in rasters)
    present = torch.zeros(n_px, dtype=torch.bool, device=device)
    present[key] = True
    uniq = _nonzero(present)
    slot = torch.zeros(n_px, dtype=torch.int64, device=device)
    slot[uniq] = torch.arange(uniq.numel(), device=device)
    inv = slot.index_select(0, key)
    uniq = uniq.cpu()
    dirs = torch.ones((uniq.numel(), 3), dtype=torch.float64)
    base = 0
    for K, W, H in rasters:
        sel = _nonzero((uniq >= base) & (uniq < base + W * H))
        local = uniq.index_select(0, sel) - base
        dirs[sel, 0] = ((local % W).to(torch.float64) - K[0, 2]) / K[0, 0]
        dirs[sel, 1] = ((local // W).to(torch.float64) - K[1, 2]) / K[1, 1]
        base += W * H
    centre = -R.T @ T[:3, 3]
    # camera z of the first hit (the directions have camera z = 1); rows of dirs @ R are R^T d
    t_hit = raycaster.z_depth(centre.astype(np.float32), (dirs.numpy() @ R).astype(np.float32))
    d = torch.from_numpy(t_hit).to(device).index_select(0, inv)
    ok = torch.isfinite(d)
    d = torch.where(ok, d, torch.zeros_like(d))
    return ok & ((z - d).abs() <= tol_m + tol_rel * d)
