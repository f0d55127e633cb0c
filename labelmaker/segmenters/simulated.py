"""`simulated`: noisy predictions derived from synthetic ground truth (tests and demo only).

It imitates how real 2D models fail, each simulated model in its own way (its own seed):
systematic class confusions (this model calls cabinets shelves half the time), random wrong
instances, labels bleeding across boundaries, wrong blobs, small objects missed, and the odd
frame that is badly wrong. Predictions are then expressed in the model's label space, through
the most specific class of that space for each unified class (so a NYU40 model loses detail).
It refuses to run on a scene without synthetic ground truth.
"""
from __future__ import annotations

import zlib

import numpy as np
from scipy import ndimage

from ..frames import FrameBatch
from ..io.ground_truth import GroundTruth, simulation_ground_truth
from ..io.images import resize_nearest
from .base import ModelConfig, SceneContext, SimulatedNoise, register_segmenter


@register_segmenter("simulated")
class SimulatedSegmenter:
    def __init__(self, name: str, cfg: ModelConfig):
        from ..labels import label_space, mapping_from_unified, unified_space

        self.name = name
        self.label_space = cfg.label_space
        self.seed = cfg.seed
        self.noise: SimulatedNoise = cfg.noise
        label_space(cfg.label_space)  # fails early on an unknown space
        self.to_space = mapping_from_unified(cfg.label_space)
        self.n_unified = len(unified_space().ids)
        self._gt: GroundTruth | None = None

    def _ground_truth(self, ctx: SceneContext) -> GroundTruth:
        self._gt = simulation_ground_truth(
            ctx.scene,
            ctx.input_dir,
            f"model '{self.name}'",
            "use simulated models only on scenes made by `labelmaker synth`; configure real or precomputed models for "
            "real data",
            self._gt,
        )
        return self._gt

    def predict(self, batch: FrameBatch, ctx: SceneContext) -> np.ndarray:
        gt = self._ground_truth(ctx)
        classes = np.unique(gt.unified_ids[gt.unified_ids > 0])
        confusion = self._confusion_table(classes, self.n_unified)
        h, w = batch.color.shape[1:3]
        out = []
        for name in batch.names:
            labels = resize_nearest(gt.frame_labels(name), (w, h))
            instances = resize_nearest(gt.frame_instances(name), (w, h))
            rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
            noisy = corrupt(labels, instances, classes, confusion, self.noise, rng)
            out.append(self._to_space(noisy))
        return np.stack(out)

    def _confusion_table(self, classes: np.ndarray, size: int) -> np.ndarray:
        """table[c] = the class this model mistakes c for (c itself if none)."""
        rng = np.random.default_rng([self.seed, 7])
        table = np.arange(size)
        confused = classes[rng.random(len(classes)) < self.noise.confused_classes]
        for c in confused:
            others = classes[classes != c]
            if len(others):
                table[c] = rng.choice(others)
        return table

    def _to_space(self, unified: np.ndarray) -> np.ndarray:
        ids = self.to_space[unified]
        if (ids < 0).any():  # a unified class this space cannot express: it predicts the frame's most common class
            valid = ids[ids >= 0]
            ids = np.where(ids < 0, np.bincount(valid).argmax() if len(valid) else 0, ids)
        return ids.astype(np.int64)


def corrupt(labels: np.ndarray, instances: np.ndarray, classes: np.ndarray, confusion: np.ndarray,
            noise: SimulatedNoise, rng: np.random.Generator) -> np.ndarray:
    """One frame's noisy unified labels from its true labels and instances."""
    out = labels.copy()
    ids, first, sizes = np.unique(instances, return_index=True, return_counts=True)
    inst_class = labels.ravel()[first]
    new_class = inst_class.copy()
    # Systematic confusions and random wrong instances: whole instances change label.
    confused = (confusion[inst_class] != inst_class) & (rng.random(len(ids)) < noise.confusion_rate)
    new_class[confused] = confusion[inst_class[confused]]
    random_wrong = rng.random(len(ids)) < noise.instance_error_rate
    if len(classes):
        new_class[random_wrong] = rng.choice(classes, size=int(random_wrong.sum()))
    # Small objects are missed: they take the label most common around them.
    for k in np.flatnonzero((sizes < noise.small_object_px) & (ids > 0)):
        mask = instances == ids[k]
        ring = ndimage.binary_dilation(mask, iterations=2) & ~mask
        around = labels[ring]
        new_class[k] = np.bincount(around).argmax() if len(around) else inst_class[k]
    changed = new_class != inst_class
    if changed.any():
        class_of = np.zeros(int(ids.max()) + 1, dtype=np.int64)
        class_of[ids] = new_class
        hit = np.isin(instances, ids[changed])
        out[hit] = class_of[instances[hit]]
    out = _bleed_boundaries(out, noise.boundary_px, rng)
    out = _paint_blobs(out, classes, noise, rng)
    if len(classes) > 1 and rng.random() < noise.bad_frame_rate:
        scrambled = np.arange(max(int(out.max()), int(classes.max())) + 1)
        scrambled[classes] = rng.permutation(classes)
        out = scrambled[out]
    return out


def _bleed_boundaries(labels: np.ndarray, width: int, rng: np.random.Generator) -> np.ndarray:
    if width <= 0:
        return labels
    edge = np.zeros(labels.shape, bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    band = ndimage.binary_dilation(edge, iterations=width)
    dy, dx = rng.integers(-width, width + 1, size=2)
    shifted = np.roll(labels, (int(dy), int(dx)), axis=(0, 1))
    return np.where(band, shifted, labels)


def _paint_blobs(
    labels: np.ndarray, classes: np.ndarray, noise: SimulatedNoise, rng: np.random.Generator
) -> np.ndarray:
    n = rng.poisson(noise.blobs_per_frame)
    if n == 0 or not len(classes):
        return labels
    h, w = labels.shape
    yy, xx = np.mgrid[0:h, 0:w]
    out = labels.copy()
    for _ in range(n):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.5, 1.5, size=2) * noise.blob_radius_px
        out[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = rng.choice(classes)
    return out

