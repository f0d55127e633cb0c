"""The plain consensus vote (`consensus.vote`) in numpy, for the CPU: no torch import.

The same algorithm as `consensus.vote`, operation for operation (distinct tuples of source ids,
dense votes per tuple over the active classes, the tie rule and the unknown rules), so its labels
are those of the torch path and its shares the same bits where the weights are 0 or 1 (other
weights: torch fuses multiply-add in its vector loops, numpy does not; shares then differ in the
last bit at most). tests/test_numpy_cores.py compares the two on random inputs.

Why: on the CPU the vote runs ~5x faster in numpy than in torch's small-operation dispatch, and a
`labelmaker run` that never imports torch saves ~1.5 s and ~280 MB.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .consensus import _VOTE_CHUNK, TIE_TOLERANCE, ConsensusConfig, checked_vote_arguments, distinct_tuples

__all__ = ["vote_numpy", "vote_tuples_numpy", "TupleVote", "dense_mapping_numpy"]


def _mapping_np(mapping: Any, index: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A mapping's CSR (offsets, targets) as int64 arrays, checked as `consensus._mapping_arrays` does."""
    offsets = np.array(np.asarray(mapping.offsets), dtype=np.int64).reshape(-1)
    targets = np.array(np.asarray(mapping.targets), dtype=np.int64).reshape(-1)
    if offsets.ndim != 1 or offsets.size < 1 or int(offsets[0]) != 0 or int(offsets[-1]) > targets.size \
            or bool((offsets[1:] < offsets[:-1]).any()):
        raise ValueError(f"mapping {index}: offsets must be non-decreasing CSR row pointers starting at 0")
    used = targets[: int(offsets[-1])]
    if used.size and (int(used.min()) < 1 or int(used.max()) >= n_classes):
        raise ValueError(f"mapping {index}: unified target ids must lie in 1..{n_classes - 1} "
                         f"(found {int(used.min())}..{int(used.max())})")
    return offsets, targets


def dense_mapping_numpy(offsets: np.ndarray, targets: np.ndarray, n_classes: int, split: str,
                        prior: Sequence[float] | None = None) -> np.ndarray:
    """`consensus.dense_mapping` in numpy: (S, n_classes) float32, row s = the votes of source class s."""
    n_src = offsets.size - 1
    counts = offsets[1:] - offsets[:-1]
    rows = np.repeat(np.arange(n_src), counts)
    cols = targets[: int(offsets[-1])]
    if split == "prior":
        p = np.maximum(np.asarray(prior, dtype=np.float32)[cols], np.float32(1e-12))
        row_max = np.zeros(n_src, np.float32)
        np.maximum.at(row_max, rows, p)
        vals = p / row_max[rows]
    elif split == "share":
        vals = (np.float32(1.0) / np.maximum(counts, 1).astype(np.float32))[rows]
    else:
        vals = np.ones(rows.size, np.float32)
    dense = np.zeros(n_src * n_classes, np.float32)
    np.add.at(dense, rows * n_classes + cols, vals)
    return dense.reshape(n_src, n_classes)


def vote_numpy(predictions: Sequence[Any], mappings: Sequence[Any], weights: Sequence[float], n_classes: int,
               cfg: ConsensusConfig | None = None, prior: Sequence[float] | None = None,
               ranks: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """`consensus.vote` (see there: arguments, tie rule, unknown rules, ranks) as numpy arrays:
    (labels int64, shares float32) of the predictions' shape, with a leading ranks axis when ranks > 1."""
    return vote_tuples_numpy(predictions, mappings, weights, n_classes, cfg, prior, ranks).pixels()


@dataclass
class TupleVote:
    """The vote per distinct tuple of ids: `labels` (R,U) int64 and `shares` (R,U) float32 of each
    tuple, `inverse` (P,) each pixel's tuple, `tuple_ids` per prediction the (U,) ids of each
    tuple, `shape` the predictions' shape and `ranks` the R asked for."""

    labels: np.ndarray
    shares: np.ndarray
    inverse: np.ndarray
    tuple_ids: list[np.ndarray]
    shape: tuple[int, ...]
    ranks: int

    def pixels(self, dtypes: tuple[Any, Any] = (np.int64, np.float32)) -> tuple[np.ndarray, np.ndarray]:
        """(labels, shares) per pixel, in `dtypes`, with a leading ranks axis when ranks > 1."""
        full = self.shape if self.ranks == 1 else (self.ranks, *self.shape)
        labels = self.labels.astype(dtypes[0], copy=False)[:, self.inverse]
        shares = self.shares.astype(dtypes[1], copy=False)[:, self.inverse]
        return labels.reshape(full), shares.reshape(full)

    def pixel_counts(self) -> np.ndarray:
        """(U,) pixels per tuple."""
        return np.bincount(self.inverse, minlength=self.labels.shape[1])


def vote_tuples_numpy(predictions: Sequence[Any], mappings: Sequence[Any], weights: Sequence[float],
                      n_classes: int, cfg: ConsensusConfig | None = None, prior: Sequence[float] | None = None,
                      ranks: int = 1) -> TupleVote:
    """`vote_numpy` before its results are spread over the pixels: a caller can keep them in a
    narrower dtype, or judge each tuple once for more than the vote (`consensus.tuple_disagreement`)."""
    cfg = cfg or ConsensusConfig()
    if cfg.split not in ("prior", "share", "each"):
        raise ValueError(f"consensus split must be 'prior', 'share' or 'each', got {cfg.split!r}")
    if cfg.split == "prior" and (prior is None or len(prior) != n_classes):
        raise ValueError(f"split='prior' needs a prior of length n_classes={n_classes}")
    w, n_classes = checked_vote_arguments(predictions, mappings, weights, n_classes)
    preds = []
    for p in predictions:
        a = np.asarray(p)
        if a.dtype.kind not in "iub":
            raise ValueError(f"label maps must hold integers, got dtype {a.dtype}")
        preds.append(a)
    shape = preds[0].shape
    for i, p in enumerate(preds):
        if p.shape != shape:
            raise ValueError(f"prediction {i} has shape {tuple(p.shape)}, prediction 0 has {tuple(shape)}")
    maps = [_mapping_np(m, i, n_classes) for i, m in enumerate(mappings)]
    sizes = [int(off.size) - 1 for off, _ in maps]
    flat = [p.reshape(-1) for p in preds]
    for i, (p, size) in enumerate(zip(flat, sizes)):
        if p.size == 0:
            continue
        lo, hi = int(p.min()), int(p.max())
        if lo < 0 or hi >= size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"prediction {i}: source label id {bad} is outside its label mapping "
                             f"(which covers ids 0..{size - 1})")

    def empty(inverse, tuple_ids) -> TupleVote:
        n_unique = len(tuple_ids[0]) if tuple_ids else 0
        return TupleVote(np.zeros((ranks, n_unique), np.int64), np.zeros((ranks, n_unique), np.float32),
                         inverse, tuple_ids, tuple(shape), ranks)

    if flat[0].size == 0:
        return empty(np.zeros(0, np.int64), [np.zeros(0, np.int64) for _ in flat])
    tuple_ids, inverse, n_unique = distinct_tuples(flat, sizes)

    dense = [dense_mapping_numpy(off, tgt, n_classes, cfg.split, prior) for off, tgt in maps]
    active = np.zeros(n_classes, bool)
    for ids, mat in zip(tuple_ids, dense):
        active |= (mat[np.unique(ids)] > 0).any(0)
    classes = np.flatnonzero(active)
    if classes.size == 0:
        return empty(inverse, tuple_ids)
    dense = [np.ascontiguousarray(mat[:, classes]) for mat in dense]
    nonempty = [(off[1:] > off[:-1]).astype(np.float32) for off, _ in maps]
    A = int(classes.size)
    padded = A < 2
    labels_u = np.zeros((ranks, n_unique), np.int64)
    conf_u = np.zeros((ranks, n_unique), np.float32)
    tiny = np.float32(np.finfo(np.float32).tiny)
    tol = np.float32(TIE_TOLERANCE)
    chunk = max(1, _VOTE_CHUNK // (A + 1))
    for start in range(0, n_unique, chunk):
        stop = min(n_unique, start + chunk)
        votes = np.zeros((stop - start, A), np.float32)
        total = np.zeros(stop - start, np.float32)
        for ids, table, ne, wi in zip(tuple_ids, dense, nonempty, w):
            if wi == 0.0:
                continue
            sel = ids[start:stop]
            if wi == 1.0:
                votes += table[sel]
                total += ne[sel]
            else:  # torch's add with alpha is a fused multiply-add: one rounding
                votes[:] = votes + wi * table[sel].astype(np.float64)
                total[:] = total + wi * ne[sel].astype(np.float64)
        if padded:
            votes = np.concatenate([votes, np.zeros_like(votes[:, :1])], 1)
        part = np.partition(votes, votes.shape[1] - 2, axis=1)
        best, second = part[:, -1], part[:, -2]
        del part
        tied = votes >= (best - tol * total)[:, None]
        winner = np.argmax(tied, axis=1)
        safe_total = np.maximum(total, tiny)
        support = best / safe_total
        margin = (best - second) / safe_total
        unknown = (total <= 0) | (best <= 0) | (total < cfg.min_votes) | (support < cfg.min_support) \
            | (margin < cfg.min_margin)
        winner_class = classes[np.minimum(winner, A - 1)]
        labels_u[0, start:stop] = np.where(unknown, 0, winner_class)
        conf_u[0, start:stop] = np.where(unknown, np.float32(0), np.minimum(support, np.float32(1.0)))
        rest, pick = votes, winner
        rows = np.arange(stop - start)
        for r in range(1, ranks):
            rest = rest.copy() if r == 1 else rest
            rest[rows, pick] = -1.0
            best_r = rest.max(1)
            pick = np.argmax(rest >= (best_r - tol * total)[:, None], axis=1)
            none = unknown | (best_r <= 0) | (pick >= A)
            labels_u[r, start:stop] = np.where(none, 0, classes[np.minimum(pick, A - 1)])
            conf_u[r, start:stop] = np.where(none, np.float32(0), np.clip(best_r / safe_total, 0.0, 1.0))
    return TupleVote(labels_u, conf_u, inverse, tuple_ids, tuple(shape), ranks)
