"""`simulated` masks: SAM-like masks derived from synthetic ground-truth instances (tests, bench).

Real SAM masks follow image edges well but over-segment (a cabinet door becomes its own mask),
under-segment (a pillow merged with the bed), miss things and wander a little at outlines. These
masks do the same, seeded per model and frame. Refuses scenes without synthetic ground truth.
"""
from __future__ import annotations

import zlib

import numpy as np

from ..frames import FrameBatch, SceneContext
from ..io.ground_truth import GroundTruth, simulation_ground_truth
from ..io.images import resize_nearest
from ..lazy import LazyModule
from .base import MASK_MODELS, MaskModelConfig, SimulatedMaskNoise
from .idmap import compact_ids

ndimage = LazyModule("scipy.ndimage")  # loaded on first use (segmenters import this module)


@MASK_MODELS.register("simulated")
class SimulatedMasks:
    def __init__(self, name: str, cfg: MaskModelConfig):
        self.name = name
        self.cfg = cfg
        self._gt: GroundTruth | None = None

    def _ground_truth(self, ctx: SceneContext) -> GroundTruth:
        self._gt = simulation_ground_truth(
            ctx.scene,
            ctx.input_dir,
            f"mask model '{self.name}'",
            "use simulated masks only on scenes made by `labelmaker synth`; configure kind=sam for real data",
            self._gt,
        )
        return self._gt

    def masks(self, batch: FrameBatch, ctx: SceneContext) -> np.ndarray:
        gt = self._ground_truth(ctx)
        h, w = batch.color.shape[1:3]
        out = []
        for name in batch.names:
            instances = resize_nearest(gt.frame_instances(name), (w, h))
            rng = np.random.default_rng([self.cfg.seed, zlib.crc32(name.encode())])
            masks = simulate_masks(instances, self.cfg.noise, rng, self.cfg.min_area_px, instance_seed=self.cfg.seed)
            out.append(masks)
        return np.stack(out)


def simulate_masks(
    instances: np.ndarray,
    noise: SimulatedMaskNoise,
    rng: np.random.Generator,
    min_area_px: int = 0,
    instance_seed: int = 0,
) -> np.ndarray:
    """One frame's (H,W) uint16 mask ids from its ground-truth instance map (0 = nothing). With
    noise.persistent, what happens to an instance is drawn from (instance_seed, its id): the same
    in every frame."""
    ids = np.asarray(instances, dtype=np.int64).copy()
    present = np.unique(ids[ids > 0])
    next_id = int(ids.max()) + 1 if ids.size else 1
    boxes = ndimage.find_objects(ids)
    for inst in present:
        roll = np.random.default_rng([instance_seed, 17, int(inst)]).random(3) if noise.persistent else rng.random(3)
        if roll[0] < noise.merge_rate:
            neighbour = largest_neighbour(ids, inst, boxes[inst - 1])
            if neighbour:
                ids[ids == inst] = neighbour
                continue
        if roll[1] < noise.split_rate:
            yy, xx = np.nonzero(ids == inst)  # (it may have absorbed a merged neighbour)
            if len(yy) > 1:
                angle = rng.uniform(0, np.pi)
                side = (yy - yy.mean()) * np.cos(angle) - (xx - xx.mean()) * np.sin(angle) > 0
                ids[yy[side], xx[side]] = next_id
                next_id += 1
        if roll[2] < noise.miss_rate:
            ids[ids == inst] = 0
    ids = _jitter_outlines(ids, noise.boundary_px, rng)
    return compact_ids(ids, min_area_px)


def largest_neighbour(ids: np.ndarray, inst: int, box) -> int:
    """The instance sharing the longest border with `inst` (0 if none)."""
    if box is None:
        return 0
    pad = 2
    sl = tuple(slice(max(0, s.start - pad), s.stop + pad) for s in box)
    window = ids[sl]
    mask = window == inst
    ring = ndimage.binary_dilation(mask, iterations=pad) & ~mask
    around = window[ring]
    around = around[(around > 0) & (around != inst)]
    return int(np.bincount(around).argmax()) if len(around) else 0


def _jitter_outlines(ids: np.ndarray, width: int, rng: np.random.Generator, scale_px: float = 12.0) -> np.ndarray:
    """Outlines shifted by a smooth random displacement field of up to `width` pixels (SAM's
    outlines are smooth but not exactly on the object's edge)."""
    if width <= 0:
        return ids
    h, w = ids.shape
    coarse = (max(2, int(np.ceil(h / scale_px)) + 1), max(2, int(np.ceil(w / scale_px)) + 1))
    field = rng.uniform(-width, width, size=(2, *coarse))
    dy, dx = (
        np.rint(
            ndimage.zoom(f, (h / coarse[0], w / coarse[1]), order=1, grid_mode=True, mode="nearest")[:h, :w]
        ).astype(np.int64)
        for f in field
    )
    yy, xx = np.mgrid[0:h, 0:w]
    return ids[np.clip(yy + dy, 0, h - 1), np.clip(xx + dx, 0, w - 1)]
