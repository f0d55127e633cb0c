"""Mesh segments: a graph segmentation of the mesh over normals and colours, and vote pooling in them.

`segment_mesh(vertices, normals, colors, triangles, cfg)` gives every vertex a segment id: pieces
of surface that are smooth and evenly coloured (in the spirit of ScanNet's segmentator, i.e.
Felzenszwalb-Huttenlocher over the mesh's edges). Our implementation, vectorised:

* Edge weight of a mesh edge (a, b): ``(1 - n_a . n_b)`` -- squared (so smaller) where the edge is
  convex, ``(p_b - p_a) . n_a < 0``: objects are mostly convex, and where an object meets the floor
  or a wall the crease is concave -- plus ``color_weight * |c_a - c_b| / (255 sqrt 3)``.
* Merging (Felzenszwalb-Huttenlocher's predicate): two segments join over an edge of weight w when
  ``w <= min(Int(A) + k / |A|, Int(B) + k / |B|)``, Int = the largest weight merged inside. The
  classic algorithm walks the sorted edges one at a time with a union-find, a loop numpy cannot
  vectorise; we merge in Boruvka rounds instead: each round, every segment takes its cheapest
  edge to another segment, the edges that pass the predicate are merged at once (connected
  components), and edges inside a segment drop out. About log2(V) rounds of array work each.
* Segments smaller than `min_vertices` then join the neighbour across their cheapest edge.

`pool_votes` uses the segments in lifting: within a segment whose votes agree, every vertex gets the
segment's class distribution as extra evidence worth `strength` times an average vertex's votes, so
vertices with few or noisy votes follow their segment, while a vertex whose own votes clearly say
otherwise keeps its class (its votes outweigh the segment's share for it); a segment whose votes do
not agree (a segment across two objects) pools nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SegmentsConfig", "mesh_edges", "vertex_normals", "segment_mesh", "pool_votes", "segment_adjacency",
           "neighbour_cell_pairs", "distinct_sorted", "top_k_rows"]


@dataclass
class SegmentsConfig:
    enabled: bool = True  # lifting: pool votes within mesh segments (instances need segments in any case)
    k: float = 0.02  # Felzenszwalb-Huttenlocher's scale: larger -> larger segments
    # weight of the RGB difference (0..1 over the colour cube's diagonal) beside the normals' 1 - cos
    color_weight: float = 0.5
    min_vertices: int = 30  # smaller segments join their most similar neighbour
    agree: float = 0.5  # a segment pools votes only when its winning class holds this share of its votes
    strength: float = 1.0  # a segment's evidence for each of its vertices, in average vertex vote totals
    fill_unseen: bool = True  # vertices without votes in an agreeing segment take the segment's class
    smooth_iters: int = 0  # > 0: that many rounds of averaging vote shares with mesh neighbours (same segment only)
    smooth_alpha: float = 0.5  # weight of the neighbours' mean in each smoothing round


# ------------------------------------------------------------------------------------ geometry
def mesh_edges(triangles: np.ndarray, n_vertices: int) -> np.ndarray:
    """(E,2) distinct undirected edges (a < b) of a triangle mesh, sorted; int32 indices (int64 past 2^31 vertices)."""
    tri = np.asarray(triangles).reshape(-1, 3)
    small = n_vertices < 2**31
    if not len(tri):
        return np.zeros((0, 2), np.int32 if small else np.int64)
    a = tri.reshape(-1)  # each triangle's corners, and (below) the next corner: its three edges
    b = np.roll(tri, -1, axis=1).reshape(-1)
    key = np.minimum(a, b).astype(np.int64)
    hi = np.maximum(a, b)
    key *= np.int64(n_vertices)
    key += hi
    del b, hi
    key = distinct_sorted(key[key // n_vertices != key % n_vertices])
    dtype = np.int32 if small else np.int64
    return np.stack([(key // n_vertices).astype(dtype), (key % n_vertices).astype(dtype)], axis=1)


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """(V,3) float32 unit normals: area-weighted sums of the incident triangles' normals."""
    v = np.asarray(vertices, dtype=np.float32)
    tri = np.asarray(triangles).reshape(-1, 3)
    out = np.zeros((len(v), 3), np.float64)
    for start in range(0, len(tri), chunk):
        t = tri[start:start + chunk]
        p0 = v[t[:, 0]]
        face = np.cross(v[t[:, 1]] - p0, v[t[:, 2]] - p0)
        for c in range(3):
            for j in range(3):
                out[:, j] += np.bincount(t[:, c], weights=face[:, j], minlength=len(v))
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.maximum(norm, 1e-12)).astype(np.float32)


def edge_weights(vertices, normals, colors, edges: np.ndarray, color_weight: float, chunk: int = 1 << 20) -> np.ndarray:
    """Dissimilarity of the two ends of each edge (see the module doc), float32; in chunks of edges."""
    n = np.asarray(normals, dtype=np.float32)
    p = np.asarray(vertices, dtype=np.float32)
    c = None
    if colors is not None and color_weight > 0:
        c = np.asarray(colors)
        c = c.astype(np.float32) * (255.0 if c.dtype.kind == "f" else 1.0)
    scale = np.float32(color_weight / (255.0 * np.sqrt(3.0)))
    out = np.empty(len(edges), np.float32)
    for start in range(0, len(edges), chunk):
        a, b = edges[start:start + chunk, 0], edges[start:start + chunk, 1]
        na = n[a]
        w = np.clip(1.0 - np.einsum("ij,ij->i", na, n[b]), 0.0, 2.0)
        convex = np.einsum("ij,ij->i", p[b] - p[a], na) < 0
        w = np.where(convex, w * w, w)
        if c is not None:
            w += scale * np.linalg.norm(c[a] - c[b], axis=1)
        out[start:start + chunk] = w
    return out


# ------------------------------------------------------------------------------------ segmentation
def segment_mesh(vertices: np.ndarray, normals: np.ndarray | None, colors: np.ndarray | None, triangles: np.ndarray,
                 cfg: SegmentsConfig | None = None) -> np.ndarray:
    """(V,) int64 segment id per vertex, 0..S-1 numbered by each segment's first vertex.

    normals: (V,3) or None (computed from the triangles); colors: (V,3) uint8 0-255 or floats in
    [0,1], or None (normals only). A vertex in no triangle is a segment of its own.
    """
    cfg = cfg or SegmentsConfig()
    vertices = np.asarray(vertices)
    V = len(vertices)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must be (V,3), got {vertices.shape}")
    if V == 0:
        return np.zeros(0, np.int64)
    edges = mesh_edges(triangles, V)
    if normals is None or len(normals) != V:
        normals = vertex_normals(vertices, triangles)
    w = edge_weights(vertices, normals, colors, edges, float(cfg.color_weight))
    order = np.argsort(w, kind="stable")
    ca, cb, w = edges[order, 0], edges[order, 1], w[order]
    del edges, order
    ids = np.int32 if V < 2**31 else np.int64
    comp = np.arange(V, dtype=ids)
    size = np.ones(V, np.int64)
    internal = np.zeros(V, np.float32)
    k = float(cfg.k)

    def similar(ca, cb, we, size, internal):  # Felzenszwalb-Huttenlocher's predicate
        return we <= np.minimum(internal[ca] + k / size[ca], internal[cb] + k / size[cb])

    def small(ca, cb, we, size, internal):  # a segment under min_vertices joins its cheapest neighbour
        return (size[ca] < m) | (size[cb] < m)

    comp, size, internal, ca, cb, w = _boruvka(comp, size, internal, ca, cb, w, similar)
    m = int(cfg.min_vertices)
    if m > 1:
        comp, size, internal, ca, cb, w = _boruvka(comp, size, internal, ca, cb, w, small)
    return _first_seen_numbering(comp)


def _boruvka(comp, size, internal, ca, cb, w, accept):
    """Merge components over edges (ca, cb: component ids; w sorted ascending) in rounds until
    `accept` takes none.

    comp: (V,) component of each vertex (ids 0..n-1); size, internal: per component. Each round,
    each component proposes its cheapest edge to another component; proposals that `accept` are
    merged (connected components of the accepted edges). Returns the updated arrays and the edges
    that still join different components, in component ids."""
    while True:
        keep = ca != cb
        if not keep.all():
            ca, cb, w = ca[keep], cb[keep], w[keep]
        del keep
        E = len(w)
        if E == 0:
            break
        n = len(size)
        idx_type = np.int32 if E < 2**31 - 1 else np.int64
        best = np.full(n, E, idx_type)
        idx = np.arange(E, dtype=idx_type)
        np.minimum.at(best, ca, idx)
        np.minimum.at(best, cb, idx)
        del idx
        cand = distinct_sorted(best[best < E])
        ok = accept(ca[cand], cb[cand], w[cand], size, internal)
        sel = cand[ok]
        if not len(sel):
            break
        from scipy import sparse  # here: scipy.sparse costs ~0.3 s to import, and every command loads this module
        from scipy.sparse import csgraph

        graph = sparse.coo_matrix((np.ones(len(sel), np.int8), (ca[sel], cb[sel])), shape=(n, n))
        n_new, label = csgraph.connected_components(graph, directed=False)
        label = label.astype(comp.dtype, copy=False)
        new_internal = np.zeros(n_new, np.float32)
        np.maximum.at(new_internal, label, internal)
        np.maximum.at(new_internal, label[ca[sel]], w[sel])
        size = np.bincount(label, weights=size, minlength=n_new).astype(np.int64)
        internal = new_internal
        comp = label[comp]
        ca, cb = label[ca], label[cb]
    return comp, size, internal, ca, cb, w


def _first_seen_numbering(comp: np.ndarray) -> np.ndarray:
    """Renumber ids 0..S-1 in order of their first occurrence (deterministic, order-independent of merges)."""
    uniq, first, inverse = np.unique(comp, return_index=True, return_inverse=True)
    rank = np.empty(len(uniq), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(uniq))
    return rank[inverse.reshape(-1)]


def segment_adjacency(segment: np.ndarray, vertices: np.ndarray, triangles: np.ndarray,
                      radius_m: float = 0.0) -> np.ndarray:
    """(P,2) int64 distinct pairs (s < t) of segments that touch: joined by a mesh edge, or (radius_m > 0)
    with vertices within about `radius_m` of each other (meshes made of separate pieces, point clouds).

    Proximity is tested between voxel cells of size radius_m: two segments are neighbours when they
    occupy the same cell or two cells that share a face, edge or corner."""
    seg = np.asarray(segment, dtype=np.int64)
    S = int(seg.max()) + 1 if len(seg) else 0
    pairs = []
    if len(triangles):
        e = mesh_edges(triangles, len(seg))
        sa, sb = seg[e[:, 0]], seg[e[:, 1]]
        d = sa != sb
        pairs.append(np.stack([np.minimum(sa[d], sb[d]), np.maximum(sa[d], sb[d])], 1))
    if radius_m > 0 and len(seg):
        cell = np.floor((np.asarray(vertices, np.float64) - np.min(vertices, axis=0)) / radius_m).astype(np.int64) + 1
        dims = cell.max(axis=0) + 2
        key = (cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]
        occ = distinct_sorted(key * S + seg)  # distinct (cell, segment)
        i, j = neighbour_cell_pairs(occ // S, dims)
        sa, sb = occ[i] % S, occ[j] % S
        d = sa != sb
        pairs.append(np.stack([np.minimum(sa[d], sb[d]), np.maximum(sa[d], sb[d])], 1))
    if not pairs:
        return np.zeros((0, 2), np.int64)
    allp = np.concatenate(pairs)
    if not len(allp):
        return np.zeros((0, 2), np.int64)
    key = distinct_sorted(allp[:, 0] * S + allp[:, 1])
    return np.stack([key // S, key % S], 1)


def neighbour_cell_pairs(cell_key: np.ndarray, dims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) of entries of `cell_key` (sorted keys ``(x * dims[1] + y) * dims[2] + z`` of
    cells with coordinates >= 1 and < dims - 1; repeats allowed) in the same or in touching cells
    (face, edge or corner): each unordered pair of distinct cells once, pairs within a cell both ways
    (and i == j)."""
    offsets = [(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1) if (dx, dy, dz) >= (0, 0, 0)]
    out_i, out_j = [], []
    for dx, dy, dz in offsets:
        shifted = cell_key + (dx * dims[1] + dy) * dims[2] + dz
        lo = np.searchsorted(cell_key, shifted, side="left")
        count = np.searchsorted(cell_key, shifted, side="right") - lo
        has = np.flatnonzero(count > 0)
        if not len(has):
            continue
        n = count[has]
        src = np.repeat(has, n)
        dst = np.repeat(lo[has] - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
        out_i.append(src)
        out_j.append(dst)
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_i), np.concatenate(out_j)


def distinct_sorted(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values (a sort and a comparison: faster here than np.unique's hashing)."""
    x = np.sort(x)
    if len(x) < 2:
        return x
    keep = np.empty(len(x), bool)
    keep[0] = True
    np.not_equal(x[1:], x[:-1], out=keep[1:])
    return x[keep]


# ------------------------------------------------------------------------------------ pooling
def _sparse_votes(topk_ids: np.ndarray, topk_shares: np.ndarray, totals: np.ndarray):
    """The top-k votes as (row, class, weight) triples with weight > 0."""
    V, k = topk_ids.shape
    rows = np.repeat(np.arange(V, dtype=np.int64), k)
    cls = topk_ids.reshape(-1).astype(np.int64)
    wt = (topk_shares.astype(np.float64) * totals.astype(np.float64)[:, None]).reshape(-1)
    keep = (cls > 0) & (wt > 0)
    return rows[keep], cls[keep], wt[keep]


def _group_sum(rows: np.ndarray, cls: np.ndarray, wt: np.ndarray, n_classes: int):
    key = rows * n_classes + cls
    uk, inv = np.unique(key, return_inverse=True)
    return uk // n_classes, uk % n_classes, np.bincount(inv.reshape(-1), weights=wt, minlength=len(uk))


def top_k_rows(rows: np.ndarray, cls: np.ndarray, wt: np.ndarray, n_rows: int, k: int):
    """Per row the k heaviest (class, weight) entries (ties: lower class first); rows distinct per class."""
    ids = np.zeros((n_rows, k), np.int64)
    ws = np.zeros((n_rows, k), np.float64)
    if len(rows):
        order = np.lexsort((cls, -wt, rows))
        r, c, w = rows[order], cls[order], wt[order]
        start = np.ones(len(r), bool)
        start[1:] = r[1:] != r[:-1]
        pos = np.arange(len(r)) - np.maximum.accumulate(np.where(start, np.arange(len(r)), 0))
        sel = pos < k
        ids[r[sel], pos[sel]] = c[sel]
        ws[r[sel], pos[sel]] = w[sel]
    return ids, ws


def pool_votes(topk_ids: np.ndarray, topk_shares: np.ndarray, totals: np.ndarray, segment: np.ndarray, n_classes: int,
               cfg: SegmentsConfig, edges: np.ndarray | None = None):
    """Per-vertex votes (top-k ids and shares of `totals`) pooled within agreeing segments.

    Returns (labels (V,), confidence (V,), topk_ids (V,k), topk_shares (V,k)) like a lift result:
    shares are of the vertex's pooled votes. `edges` (mesh edges) for cfg.smooth_iters > 0.
    """
    topk_ids = np.asarray(topk_ids)
    V, k = topk_ids.shape
    seg = np.asarray(segment, dtype=np.int64)
    if seg.shape != (V,):
        raise ValueError(f"segment ids must be ({V},) like the votes, got {seg.shape}")
    totals = np.asarray(totals, dtype=np.float64)
    S = int(seg.max()) + 1 if V else 0
    if cfg.smooth_iters <= 0 and S > 0:
        return _pool_chunked(topk_ids, np.asarray(topk_shares), totals, seg, S, n_classes, cfg)
    rows, cls, wt = _sparse_votes(topk_ids, np.asarray(topk_shares), totals)
    srow, scls, swt = _group_sum(seg[rows], cls, wt, n_classes)
    seg_total = np.bincount(srow, weights=swt, minlength=S)
    seg_best = np.zeros(S, np.float64)
    np.maximum.at(seg_best, srow, swt)
    agree = (seg_total > 0) & (seg_best >= float(cfg.agree) * seg_total)
    # the segment's evidence per vertex: strength x the mean vote total of its voting vertices
    n_voting = np.bincount(seg, weights=(totals > 0).astype(np.float64), minlength=S)
    mean_total = np.divide(np.bincount(seg, weights=totals, minlength=S), n_voting, out=np.zeros(S), where=n_voting > 0)
    # per segment its top-k classes (enough: what is beyond them is small or not an agreeing segment)
    sid, sw = top_k_rows(srow, scls, swt, S, k)
    scale = np.where(agree, float(cfg.strength) * mean_total / np.maximum(seg_total, 1e-12), 0.0)
    add_w = sw * scale[:, None]  # (S,k)
    receives = np.ones(V, bool) if cfg.fill_unseen else totals > 0
    vr = np.flatnonzero(receives & agree[seg])
    prow = np.repeat(vr, k)
    pcls = sid[seg[vr]].reshape(-1)
    pwt = add_w[seg[vr]].reshape(-1)
    keep = (pcls > 0) & (pwt > 0)
    rows = np.concatenate([rows, prow[keep]])
    cls = np.concatenate([cls, pcls[keep]])
    wt = np.concatenate([wt, pwt[keep]])
    rows, cls, wt = _group_sum(rows, cls, wt, n_classes)
    if cfg.smooth_iters > 0 and edges is not None and len(edges):
        rows, cls, wt = _smooth(rows, cls, wt, V, n_classes, seg, edges, int(cfg.smooth_iters), float(cfg.smooth_alpha))
    total = np.bincount(rows, weights=wt, minlength=V)
    ids, ws = top_k_rows(rows, cls, wt, V, k)
    shares = np.divide(ws, total[:, None], out=np.zeros_like(ws), where=total[:, None] > 0).astype(np.float32)
    return ids[:, 0].copy(), shares[:, 0].copy(), ids, shares


_DENSE_MAX = 1 << 23  # segments x classes up to this: per-segment class sums in one dense array
_ROWS = 1 << 18  # vertices per chunk


def _segment_tops(topk_ids, topk_shares, totals, seg, S, n_classes, k):
    """Per segment: its summed vote weight, its k heaviest classes (ties: lower id first; 0 = none)
    and their weights. Dense (segments x classes) sums when that array is small; else sparse
    (segment, class) sums, reduced chunk by chunk (a real 2.5 M-vertex mesh has ~10^5 segments)."""
    if S * n_classes <= _DENSE_MAX:
        sums = np.zeros(S * n_classes, np.float64)
        for a in range(0, len(seg), _ROWS):
            ids = topk_ids[a:a + _ROWS].astype(np.int64)
            w = topk_shares[a:a + _ROWS].astype(np.float64) * totals[a:a + _ROWS, None]
            sums += np.bincount((seg[a:a + _ROWS, None] * n_classes + ids).reshape(-1), weights=w.reshape(-1),
                                minlength=S * n_classes)
        sums = sums.reshape(S, n_classes)
        sums[:, 0] = 0.0  # id 0 casts no vote
        order = np.lexsort((np.broadcast_to(np.arange(n_classes), sums.shape), -sums), axis=-1)[:, :k]
        sw = np.take_along_axis(sums, order, 1)
        return sums.sum(1), np.where(sw > 0, order, 0), sw
    parts = []
    for a in range(0, len(seg), _ROWS):
        rows, cls, wt = _sparse_votes(topk_ids[a:a + _ROWS], topk_shares[a:a + _ROWS], totals[a:a + _ROWS])
        parts.append(_group_sum(seg[a:a + _ROWS][rows], cls, wt, n_classes))
    srow, scls, swt = _group_sum(*(np.concatenate(x) for x in zip(*parts)), n_classes)
    sid, sw = top_k_rows(srow, scls, swt, S, k)
    return np.bincount(srow, weights=swt, minlength=S), sid, sw


def _pool_chunked(topk_ids, topk_shares, totals, seg, S, n_classes, cfg):
    """`pool_votes` without smoothing, in vertex chunks: the same result as the sparse path in a
    fraction of its memory (each vertex's candidates are its own top-k and its segment's top-k)."""
    V, k = topk_ids.shape
    seg_total, sid, sw = _segment_tops(topk_ids, topk_shares, totals, seg, S, n_classes, k)
    agree = (seg_total > 0) & (sw[:, 0] >= float(cfg.agree) * seg_total)
    n_voting = np.bincount(seg, weights=(totals > 0).astype(np.float64), minlength=S)
    mean_total = np.divide(np.bincount(seg, weights=totals, minlength=S), n_voting, out=np.zeros(S), where=n_voting > 0)
    scale = np.where(agree, float(cfg.strength) * mean_total / np.maximum(seg_total, 1e-12), 0.0)
    add_w = sw * scale[:, None] * (sid > 0)
    out_ids = np.zeros((V, k), np.int64)
    out_sh = np.zeros((V, k), np.float32)
    for a in range(0, V, _ROWS):
        ids = topk_ids[a:a + _ROWS].astype(np.int64)
        own = np.where(ids > 0, topk_shares[a:a + _ROWS].astype(np.float64) * totals[a:a + _ROWS, None], 0.0)
        sg = seg[a:a + _ROWS]
        extra_ids, extra = sid[sg], add_w[sg]
        if not cfg.fill_unseen:
            extra = extra * (totals[a:a + _ROWS, None] > 0)
        for j in range(k):  # a class both in the vertex's and in its segment's top-k: one candidate
            for m in range(k):
                same = (extra_ids[:, m] == ids[:, j]) & (ids[:, j] > 0)
                own[:, j] += np.where(same, extra[:, m], 0.0)
                extra[:, m] = np.where(same, 0.0, extra[:, m])
        cand_ids = np.concatenate([ids, extra_ids], 1)
        cand_w = np.concatenate([own, extra], 1)
        cand_ids = np.where(cand_w > 0, cand_ids, 0)
        pick = np.lexsort((cand_ids, -cand_w), axis=-1)[:, :k]
        top_w = np.take_along_axis(cand_w, pick, 1)
        total = cand_w.sum(1, keepdims=True)
        out_ids[a:a + _ROWS] = np.where(top_w > 0, np.take_along_axis(cand_ids, pick, 1), 0)
        out_sh[a:a + _ROWS] = np.divide(top_w, total, out=np.zeros_like(top_w), where=total > 0)
    return out_ids[:, 0].copy(), out_sh[:, 0].copy(), out_ids, out_sh


def _smooth(rows, cls, wt, V, n_classes, seg, edges, iters, alpha):
    """Vote shares averaged with mesh neighbours in the same segment, `iters` rounds."""
    from scipy import sparse

    a, b = edges[:, 0], edges[:, 1]
    same = seg[a] == seg[b]
    a, b = a[same], b[same]
    both = (np.concatenate([a, b]), np.concatenate([b, a]))
    adj = sparse.coo_matrix((np.ones(2 * len(a)), both), shape=(V, V)).tocsr()
    deg = np.asarray(adj.sum(axis=1)).ravel()
    inv_deg = sparse.diags(np.divide(1.0, deg, out=np.zeros(V), where=deg > 0))
    total = np.bincount(rows, weights=wt, minlength=V)
    q = sparse.csr_matrix((wt / np.maximum(total[rows], 1e-12), (rows, cls)), shape=(V, n_classes))
    has = sparse.diags((deg > 0).astype(np.float64))
    for _ in range(iters):
        q = (q - alpha * (has @ q) + alpha * (inv_deg @ (adj @ q))).tocsr()
    q = q.tocoo()
    keep = q.data > 0
    r, c = q.row[keep].astype(np.int64), q.col[keep].astype(np.int64)
    # back to vote weights: shares x the vertex's own total (vertices without votes keep their pooled sum)
    return r, c, q.data[keep] * np.maximum(total[r], 1e-12)
