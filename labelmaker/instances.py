"""3D instances: class-agnostic 2D masks (SAM, simulated) merged across views over mesh segments.

Functional core, fed by lifting's visibility pass (`lift(..., on_visible=evidence.add)`):

* Per frame, each mesh segment (labelmaker.segments) seen with at least `min_seen_vertices`
  visible vertices is *in* the frame's mask that holds at least `cover` of them (else in no mask).
* Two neighbouring segments (a mesh edge between them, or vertices within `adjacency_m`) count a
  frame *together* when both are in the same mask, *apart* when both are in masks but different
  ones. They belong to one instance when together >= `min_together` and together > `affinity` x
  (together + apart): a mask that merges a pillow into the bed in a few views does not merge them in
  3D when most views keep them apart; a mask that cuts a table in two in some views does not split it.
* Instances are the connected components of that graph over segments that were in a mask in at
  least `min_masked_share` of the frames that saw them; each vertex takes its segment's instance
  (-1 = none; instances under `min_vertices` vertices are dropped), numbered 0.. by first vertex.
* An instance's class comes from its vertices' votes: the mean of their vote shares (soft labels),
  top-k classes with shares; its score is the winner's share.

`label_components` is the baseline without masks: connected components of the semantic labels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .segments import distinct_sorted, neighbour_cell_pairs, mesh_edges

__all__ = ["InstancesConfig", "MaskEvidence", "Instances", "merge_instances", "instance_classes", "label_components"]


@dataclass
class InstancesConfig:
    # lift: 3D instances from a mask model's masks (needs that mask stage; segments from lift.segments' settings)
    enabled: bool = False
    masks: str = "sam"  # which mask model's masks (masks.models.<name>)
    min_seen_vertices: int = 4  # a segment counts as seen in a frame with this many visible vertices
    cover: float = 0.5  # ... and as in a mask when this share of them fall in it
    min_together: int = 2  # frames two neighbouring segments must share a mask before they may merge
    affinity: float = 0.5  # they merge when together > affinity * (together + apart)
    min_masked_share: float = 0.3  # segments in a mask in fewer of the frames that see them belong to no instance
    adjacency_m: float = 0.05  # segments within this distance are neighbours (besides mesh edges)
    min_vertices: int = 50  # smaller instances are dropped (-1)
    top_k: int = 3  # classes kept per instance (soft labels)


class MaskEvidence:
    """Counts, over frames, how often neighbouring segments share a mask (see the module doc).

    `add(index, frame, vertex_ids, pixels)` takes the visible vertices of (part of) one frame and
    their pixels in the label raster (lifting's `on_visible` signature; `frame.masks` is the frame's
    (H,W) mask-id map, 0 = no mask); calls for one frame come together. `finish()` ends the last frame.
    """

    def __init__(self, segment: np.ndarray, pairs: np.ndarray, cfg: InstancesConfig):
        self.segment = np.asarray(segment, dtype=np.int64)
        self.n_segments = int(self.segment.max()) + 1 if len(self.segment) else 0
        self.pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)  # sorted, s < t
        self.ptr = np.searchsorted(self.pairs[:, 0], np.arange(self.n_segments + 1))
        self.cfg = cfg
        self.together = np.zeros(len(self.pairs), np.int32)
        self.apart = np.zeros(len(self.pairs), np.int32)
        self.seen = np.zeros(self.n_segments, np.int32)
        self.masked = np.zeros(self.n_segments, np.int32)
        self._assigned = np.full(self.n_segments, -1, np.int64)
        self._frame = None
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []
        self.frames = 0

    def add(self, index: int, frame, vertex_ids: np.ndarray, pixels: np.ndarray) -> None:
        if frame.masks is None:
            raise ValueError(f"frame {index}: no masks to build instances from")
        if index != self._frame:
            self.finish()
            self._frame = index
        masks = np.asarray(frame.masks).reshape(-1)
        ids = masks[np.asarray(pixels, dtype=np.int64)].astype(np.int64)
        self._parts.append((np.asarray(vertex_ids, dtype=np.int64), ids))

    def finish(self) -> None:
        if not self._parts:
            return
        v = np.concatenate([p[0] for p in self._parts])
        m = np.concatenate([p[1] for p in self._parts])
        self._parts = []
        self.frames += 1
        s = self.segment[v]
        M = int(m.max()) + 1
        key = _distinct_counts(s * M + m)
        uk, cnt = key
        ks, km = uk // M, uk % M
        start = np.ones(len(ks), bool)
        start[1:] = ks[1:] != ks[:-1]
        first = np.flatnonzero(start)
        vis = np.add.reduceat(cnt, first)
        seg = ks[first]
        # the mask (not 0) holding most of each segment's visible vertices
        masked_cnt = np.where(km > 0, cnt, 0)
        order = np.lexsort((-masked_cnt, ks))
        ko = ks[order]
        best = order[np.r_[True, ko[1:] != ko[:-1]]]  # first of each segment: its biggest mask
        best_m, best_c = km[best], masked_cnt[best]
        seen = vis >= int(self.cfg.min_seen_vertices)
        inside = seen & (best_m > 0) & (best_c >= float(self.cfg.cover) * vis)
        self.seen[seg[seen]] += 1
        A, mA = seg[inside], best_m[inside]
        self.masked[A] += 1
        if not len(A):
            return
        self._assigned[A] = mA
        lo, hi = self.ptr[A], self.ptr[A + 1]
        n = hi - lo
        idx = np.repeat(lo - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
        other = self._assigned[self.pairs[idx, 1]]
        mine = np.repeat(mA, n)
        both = other >= 0
        self.together[idx[both & (other == mine)]] += 1
        self.apart[idx[both & (other != mine)]] += 1
        self._assigned[A] = -1


def _distinct_counts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.sort(x)
    if not len(x):
        return x, np.zeros(0, np.int64)
    start = np.ones(len(x), bool)
    start[1:] = x[1:] != x[:-1]
    first = np.flatnonzero(start)
    return x[first], np.diff(np.r_[first, len(x)])


@dataclass
class Instances:
    vertex: np.ndarray  # (V,) int64 instance id per vertex, -1 = none
    n_instances: int
    topk_ids: np.ndarray  # (I,k) int64 classes, best first, 0-padded
    topk_shares: np.ndarray  # (I,k) float32 mean vote share of each class over the instance's vertices
    n_vertices: np.ndarray  # (I,) int64

    @property
    def labels(self) -> np.ndarray:
        return self.topk_ids[:, 0]

    @property
    def scores(self) -> np.ndarray:
        return self.topk_shares[:, 0]

    def soft(self) -> dict:
        """The per-instance soft labels as soft.h5 stores them (io.export.write_soft_labels)."""
        return {"instance": self.vertex, "instance_topk_ids": self.topk_ids, "instance_topk_shares": self.topk_shares,
                "instance_n_vertices": self.n_vertices}


def merge_instances(evidence: MaskEvidence, cfg: InstancesConfig) -> np.ndarray:
    """(V,) int64 instance per vertex (-1 = none), 0.. numbered by first vertex.

    Segments are merged agglomeratively: each round, the evidence between groups is the sum over
    the neighbouring segment pairs between them, every group picks the neighbour it shares masks
    with most (highest together / (together + apart), then most frames together) among those that
    pass `min_together` and `affinity`, and mutual choices merge. Summing over all pairs between two
    groups keeps one segment on their border (in one mask in some views, in the other in others)
    from chaining two objects together."""
    evidence.finish()
    seg = evidence.segment
    S = evidence.n_segments
    usable = (evidence.masked > 0) & (evidence.masked >= float(cfg.min_masked_share) * np.maximum(evidence.seen, 1))
    keep = usable[evidence.pairs[:, 0]] & usable[evidence.pairs[:, 1]] & ((evidence.together + evidence.apart) > 0)
    p = evidence.pairs[keep]
    t_pair = evidence.together[keep].astype(np.float64)
    a_pair = evidence.apart[keep].astype(np.float64)
    group = np.arange(S, dtype=np.int64)
    while len(p):
        gs, gt = group[p[:, 0]], group[p[:, 1]]
        lo, hi = np.minimum(gs, gt), np.maximum(gs, gt)
        inner = lo == hi
        if inner.any():  # pairs now inside one group are spent
            p, t_pair, a_pair, lo, hi = p[~inner], t_pair[~inner], a_pair[~inner], lo[~inner], hi[~inner]
            if not len(p):
                break
        key, inv = np.unique(lo * S + hi, return_inverse=True)
        inv = inv.reshape(-1)
        T = np.bincount(inv, weights=t_pair, minlength=len(key))
        A = np.bincount(inv, weights=a_pair, minlength=len(key))
        ok = (T >= int(cfg.min_together)) & (T > float(cfg.affinity) * (T + A))
        if not ok.any():
            break
        g1, g2 = key[ok] // S, key[ok] % S
        aff, tog = T[ok] / (T[ok] + A[ok]), T[ok]
        # each group's best partner: sort candidate (group, partner) rows by group, then best first
        ga, gb = np.concatenate([g1, g2]), np.concatenate([g2, g1])
        af, tg = np.concatenate([aff, aff]), np.concatenate([tog, tog])
        order = np.lexsort((gb, -tg, -af, ga))
        ga, gb = ga[order], gb[order]
        first = np.r_[True, ga[1:] != ga[:-1]]
        best = np.full(S, -1, np.int64)
        best[ga[first]] = gb[first]
        src = ga[first]
        mutual = src[(best[best[src]] == src) & (src < best[src])]
        if not len(mutual):
            break
        merge_to = np.arange(S, dtype=np.int64)
        merge_to[best[mutual]] = mutual
        group = merge_to[group]
    inst = np.where(usable[seg], group[seg], -1) if len(seg) else np.zeros(0, np.int64)
    return _renumber(inst, int(cfg.min_vertices))


def _renumber(inst: np.ndarray, min_vertices: int) -> np.ndarray:
    """Drop ids with fewer than `min_vertices` members; number the rest 0.. by first vertex."""
    out = np.full(len(inst), -1, np.int64)
    has = np.flatnonzero(inst >= 0)
    if not len(has):
        return out
    ids, first, inv, counts = np.unique(inst[has], return_index=True, return_inverse=True, return_counts=True)
    keep = counts >= max(1, min_vertices)
    rank = np.full(len(ids), -1, np.int64)
    kept = np.flatnonzero(keep)
    rank[kept[np.argsort(first[kept], kind="stable")]] = np.arange(len(kept))
    out[has] = rank[inv.reshape(-1)]
    return out


def instance_classes(instance: np.ndarray, topk_ids: np.ndarray, topk_shares: np.ndarray, k: int = 3) -> Instances:
    """Each instance's classes: the mean of its vertices' vote shares (vertices without votes count
    as none), top-k."""
    instance = np.asarray(instance, dtype=np.int64)
    n = int(instance.max()) + 1 if len(instance) and instance.max() >= 0 else 0
    n_vertices = np.bincount(instance[instance >= 0], minlength=n).astype(np.int64)
    ids = np.asarray(topk_ids, dtype=np.int64)
    sh = np.asarray(topk_shares, dtype=np.float64)
    rows = np.repeat(instance, ids.shape[1])
    cls, wt = ids.reshape(-1), sh.reshape(-1)
    keep = (rows >= 0) & (cls > 0) & (wt > 0)
    rows, cls, wt = rows[keep], cls[keep], wt[keep]
    C = int(cls.max()) + 1 if len(cls) else 1
    key, inv = np.unique(rows * C + cls, return_inverse=True)
    sums = np.bincount(inv.reshape(-1), weights=wt, minlength=len(key))
    from .segments import top_k_rows

    top, tw = top_k_rows(key // C, key % C, sums, n, k)
    shares = np.divide(tw, n_vertices[:, None], out=np.zeros_like(tw), where=n_vertices[:, None] > 0).astype(np.float32)
    return Instances(vertex=instance, n_instances=n, topk_ids=top, topk_shares=shares, n_vertices=n_vertices)


def label_components(labels: np.ndarray, vertices: np.ndarray, triangles: np.ndarray, radius_m: float = 0.0,
                     min_vertices: int = 1) -> np.ndarray:
    """The baseline without masks: connected components of equal semantic labels (> 0) over mesh
    edges, and (radius_m > 0) between vertices in neighbouring voxel cells of that size, as
    `segment_adjacency` sees neighbours. (V,) int64, -1 for unlabelled vertices."""
    labels = np.asarray(labels, dtype=np.int64)
    V = len(labels)
    rows, cols = [], []
    if len(triangles):
        e = mesh_edges(triangles, V)
        same = (labels[e[:, 0]] == labels[e[:, 1]]) & (labels[e[:, 0]] > 0)
        rows.append(e[same, 0])
        cols.append(e[same, 1])
    n_nodes = V
    if radius_m > 0 and V:
        lab = np.flatnonzero(labels > 0)
        L = int(labels.max()) + 1
        pts = np.asarray(vertices, np.float64)
        cell = np.floor((pts[lab] - pts.min(axis=0)) / radius_m).astype(np.int64) + 1
        dims = cell.max(axis=0) + 2
        ckey = ((cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]) * L + labels[lab]
        occ = distinct_sorted(ckey)
        node = V + np.searchsorted(occ, ckey)  # one node per (cell, label), joined to its vertices
        rows.append(lab)
        cols.append(node)
        i, j = neighbour_cell_pairs(occ // L, dims)
        same = (occ[i] % L) == (occ[j] % L)
        rows.append(V + i[same])
        cols.append(V + j[same])
        n_nodes = V + len(occ)
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    from scipy import sparse  # here: ~0.3 s to import, and every command loads this module
    from scipy.sparse import csgraph

    graph = sparse.coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(n_nodes, n_nodes))
    _, comp = csgraph.connected_components(graph, directed=False)
    inst = np.where(labels > 0, comp[:V], -1)
    return _renumber(inst, min_vertices)

