"""Sparse per-vertex class votes (`VoteAccumulator`): what `lift` adds each frame's votes to.

`SLOTS` (class, weight) slots per vertex plus a sparse overflow buffer, compacted (sort + sum per key)
as it grows -- never a dense vertices x classes array. Each (vertex, class) weight is a float32 sum
of that pair's votes one `add` call after another, in call order, wherever the pair is stored (slot
or overflow, before or after a compaction): the results depend on neither `slots` nor the buffer's
size, and no float sum depends on thread scheduling (no atomic adds).
"""
from __future__ import annotations

import numpy as np

from ..devices import nonzero, resolve_device, to_tensor
from ..lazy import LazyModule
from .types import LiftResult, has_votes

torch = LazyModule("torch")  # loaded on first use (see lazy.py)

SLOTS = 16  # (class, weight) slots per vertex; a 2.5 M-vertex scan's vertices meet ~25 classes each (ranked votes)


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
    ends = nonzero(last)
    sums = csum.index_select(0, ends)
    sums[1:] -= csum.index_select(0, ends[:-1])
    return keys.index_select(0, ends), sums.to(torch.float32)


def _sequential_sum(keys: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct keys (ascending) and the sum of each key's weights (in their dtype), added one after another in
    the order they come (a stable sort, then one index_add per rank within the keys: distinct positions,
    so deterministic on every device)."""
    if keys.numel() == 0:
        return keys, weights
    keys, order = torch.sort(keys, stable=True)
    weights = weights.index_select(0, order)
    del order
    start = torch.ones(keys.numel(), dtype=torch.bool, device=keys.device)
    start[1:] = keys[1:] != keys[:-1]
    group = torch.cumsum(start, 0) - 1
    rank = _group_rank(keys)
    sums = torch.zeros(int(group[-1]) + 1, dtype=weights.dtype, device=keys.device)
    by_rank = torch.argsort(rank, stable=True)
    at = 0
    for n in torch.bincount(rank).tolist():
        sel = by_rank[at:at + n]
        sums.index_add_(0, group.index_select(0, sel), weights.index_select(0, sel))
        at += n
    return keys[start], sums


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
    than they have slots. The buffer is compacted (sort + sum per key, in arrival order) whenever it
    fills and grows when compaction frees less than half of it. A (vertex, class) pair lives either in
    a slot or in the overflow, never both; its weight is the float32 sum of its votes in call order
    either way. Each `add` call counts as one view of every vertex it gives a vote.
    """

    def __init__(self, n_vertices: int, n_classes: int, device: str | torch.device = "auto", slots: int = SLOTS,
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
        if not has_votes(v, c, w, self.n_vertices, self.n_classes, torch.isfinite):
            return
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

    def add_checked(self, v: torch.Tensor, c: torch.Tensor, w: torch.Tensor, count_view: bool = True) -> None:
        """`add(..., distinct=True)` for callers that checked their votes already (`lift`'s frames): v distinct and in
        range, c in 0..n_classes-1, w >= 0 (class 0 and zero weights are dropped here)."""
        ok = (w > 0) & (c > 0)
        if not bool(ok.all()):
            keep = nonzero(ok)
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
        rest = nonzero(~first)
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
            bad = nonzero(~ok)
            self._overflow(v[bad] * self.n_classes + c[bad], w[bad])
            good = nonzero(ok)
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
            keys, sums = _sequential_sum(self._ov_keys[:self._ov_n], self._ov_w[:self._ov_n])
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
            # the total: a vertex's class weights summed in float64 by ascending class, wherever they are kept
            row = torch.arange(b - a, device=self.device).repeat_interleave(cls.shape[1])
            key = torch.cat([row * C + cls.reshape(-1), ov_keys[lo:hi] - a * C])
            ent_w = torch.cat([w.reshape(-1), ov_w[lo:hi]]).to(torch.float64)
            keep = nonzero(key % C > 0)
            key, order = torch.sort(key.index_select(0, keep))
            summed, sums = _sequential_sum(key // C, ent_w.index_select(0, keep).index_select(0, order))
            total = torch.zeros(b - a, dtype=torch.float64, device=self.device)
            total[summed] = sums
            del row, key, ent_w, keep, order
            ids, best = _top_k_dense(cls, w, top_k, C)
            if hi > lo:  # vertices with more classes than slots: exact top-k over slots + overflow
                verts = torch.unique_consecutive(ov_v[lo:hi])
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
        keep = nonzero(ent_c > 0)
        ent_row, ent_c, ent_w = ent_row[keep], ent_c[keep], ent_w[keep]
        o = torch.argsort(ent_c, stable=True)
        o = o[torch.argsort(-ent_w[o], stable=True)]
        o = o[torch.argsort(ent_row[o], stable=True)]
        ent_row, ent_c, ent_w = ent_row[o], ent_c[o], ent_w[o]
        rank = _group_rank(ent_row)
        sel = nonzero(rank < top_k)
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
