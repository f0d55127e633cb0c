"""Overlapping binary masks -> one compact per-pixel id map."""
from __future__ import annotations

import numpy as np


def masks_to_id_map(masks: np.ndarray, min_area_px: int = 0) -> np.ndarray:
    """(K,H,W) bool masks -> (H,W) uint16 ids 1..K' (0 = no mask).

    Where masks overlap the smaller one wins (it is on top: parts inside objects stay visible);
    masks left with fewer than `min_area_px` visible pixels are dropped and ids are renumbered
    by size, largest first.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (K,H,W), got shape {masks.shape}")
    k, h, w = masks.shape
    out = np.zeros((h, w), dtype=np.int64)
    if k == 0:
        return out.astype(np.uint16)
    if k >= 65535:
        raise ValueError(f"{k} masks do not fit uint16 ids")
    areas = masks.reshape(k, -1).sum(1)
    for i in np.argsort(-areas, kind="stable"):  # largest first, so smaller ones paint over them
        out[masks[i]] = i + 1
    return compact_ids(out, min_area_px)


def compact_ids(ids: np.ndarray, min_area_px: int = 0) -> np.ndarray:
    """Renumber an id map to 1..K' by visible area (largest first), dropping ids under min_area_px."""
    uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    keep = (uniq > 0) & (counts >= max(1, min_area_px))
    order = np.argsort(-np.where(keep, counts, -1), kind="stable")
    new_id = np.zeros(len(uniq), dtype=np.int64)
    new_id[order[: int(keep.sum())]] = np.arange(1, int(keep.sum()) + 1)
    return new_id[inverse.reshape(ids.shape)].astype(np.uint16)
