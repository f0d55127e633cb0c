"""`simulated`: noisy predictions derived from synthetic ground truth (tests and demo only).

It imitates how real 2D models fail, each simulated model in its own way (its own seed):
systematic class confusions (this model calls cabinets shelves half the time), random wrong
instances, labels bleeding across boundaries, wrong blobs, small objects missed, and the odd
frame that is badly wrong. Predictions are then expressed in the model's label space, through
the most specific class of that space for each unified class (so a NYU40 model loses detail).
It refuses to run on a scene without synthetic ground truth.

Error-model families (`SimulatedNoise`; presets `models=simulated_<family>`, configs/models/):
errors that differ in kind, not only in rate, so that the consensus is judged on more than one
way of being wrong:
- classes: class-level confusions (the preset `simulated`; every instance of a confused class may
  take the same wrong class);
- instances: one particular instance is wrong in (almost) every frame (`sticky_instances`): one
  chair is always "table" while the other chairs are right;
- coarse: coarse label spaces (`merge_classes`): a NYU40 model says otherprop / otherfurniture for
  lamps, pictures, night stands; an ADE20K model merges night stands into cabinets, bookshelves
  into shelves;
- segmentation: small objects missed, instances cut in two with one part taking the neighbour's
  class (over-segmentation, `split_rate`) or absorbed by the neighbour (under-, `merge_rate`);
- bad_frames: whole frames off (`warp_frame_rate`): shifted, rotated or blurred label maps;
- one_bad: one model much worse than the other two;
- correlated: two models sharing their systematic errors (`error_seed`): the same confusions in
  the same frames, so that they outvote the third model where they are wrong.
Each is seeded by the model's seed (and `error_seed`), per frame by the frame's name.
"""
from __future__ import annotations

import zlib

import numpy as np

from ..frames import FrameBatch
from ..io.ground_truth import GroundTruth, simulation_ground_truth
from ..io.images import resize_nearest
from ..lazy import LazyModule
from ..masks.simulated import largest_neighbour
from .base import ModelConfig, SceneContext, SimulatedNoise, register_segmenter

ndimage = LazyModule("scipy.ndimage")  # loaded on first use: the package imports every kind


@register_segmenter("simulated")
class SimulatedSegmenter:
    reads_pixels = False  # names and raster shape only (see base.Segmenter)

    def __init__(self, name: str, cfg: ModelConfig):
        from ..labels import label_space, mapping_from_unified, unified_space

        self.name = name
        self.label_space = cfg.label_space
        self.seed = cfg.seed
        self.noise: SimulatedNoise = cfg.noise
        space = label_space(cfg.label_space)  # fails early on an unknown space
        self.to_space = mapping_from_unified(cfg.label_space).copy()
        for unified_name, target in cfg.noise.merge_classes.items():  # coarse label spaces
            try:
                self.to_space[unified_space().id_of(unified_name)] = space.id_of(target)
            except (KeyError, ValueError) as e:
                raise ValueError(f"model {name!r}: noise.merge_classes {unified_name!r}: {target!r} needs a unified "
                                 f"class name and a class of {cfg.label_space} ({e})") from None
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
        error_seed = self.seed if self.noise.error_seed is None else int(self.noise.error_seed)
        h, w = batch.color.shape[1:3]
        out = []
        for name in batch.names:
            labels = resize_nearest(gt.frame_labels(name), (w, h))
            instances = resize_nearest(gt.frame_instances(name), (w, h))
            frame_key = zlib.crc32(name.encode())
            rng = np.random.default_rng([self.seed, frame_key])
            # the systematic errors' draws: shared by models with one error_seed (correlated errors)
            err_rng = None if self.noise.error_seed is None else np.random.default_rng([error_seed, frame_key, 1])
            extra_rng = np.random.default_rng([self.seed, frame_key, 2])
            noisy = corrupt(labels, instances, classes, confusion, self.noise, rng, err_rng=err_rng,
                            extra_rng=extra_rng, error_seed=error_seed)
            out.append(self._to_space(noisy))
        return np.stack(out)

    def _confusion_table(self, classes: np.ndarray, size: int) -> np.ndarray:
        """table[c] = the class this model mistakes c for (c itself if none)."""
        rng = np.random.default_rng([self.seed if self.noise.error_seed is None else int(self.noise.error_seed), 7])
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
            noise: SimulatedNoise, rng: np.random.Generator, err_rng: np.random.Generator | None = None,
            extra_rng: np.random.Generator | None = None, error_seed: int = 0) -> np.ndarray:
    """One frame's noisy unified labels from its true labels and instances.

    rng: the frame's draws; err_rng: the draws of the systematic confusions and of whether sticky
    instances show (None: rng / extra_rng), shared by models with one error seed; extra_rng: the
    draws of the further error kinds (sticky instances, over-/under-segmentation, warped frames),
    used only when those are on; error_seed: which instances are sticky and what they become
    (fixed across frames)."""
    out = labels.copy()
    extra_rng = extra_rng if extra_rng is not None else rng
    ids, first, sizes = np.unique(instances, return_index=True, return_counts=True)
    inst_class = labels.ravel()[first]
    new_class = inst_class.copy()
    # Systematic confusions and random wrong instances: whole instances change label.
    confused = (confusion[inst_class] != inst_class) & ((err_rng or rng).random(len(ids)) < noise.confusion_rate)
    new_class[confused] = confusion[inst_class[confused]]
    random_wrong = rng.random(len(ids)) < noise.instance_error_rate
    if len(classes):
        new_class[random_wrong] = rng.choice(classes, size=int(random_wrong.sum()))
    if noise.sticky_instances > 0 and len(classes) > 1:
        _stick(new_class, ids, inst_class, classes, noise, err_rng or extra_rng, error_seed)
    if noise.merge_rate > 0:  # under-segmentation: the instance takes its largest neighbour's class
        boxes = ndimage.find_objects(instances)
        class_of_id = dict(zip(ids.tolist(), inst_class.tolist()))
        for k in np.flatnonzero((ids > 0) & (extra_rng.random(len(ids)) < noise.merge_rate)):
            box = boxes[ids[k] - 1] if ids[k] - 1 < len(boxes) else None
            neighbour = largest_neighbour(instances, int(ids[k]), box)
            if neighbour:
                new_class[k] = class_of_id[neighbour]
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
    if noise.split_rate > 0:
        out = _split_instances(out, instances, ids, inst_class, noise.split_rate, extra_rng)
    out = _bleed_boundaries(out, noise.boundary_px, rng)
    out = _paint_blobs(out, classes, noise, rng)
    if len(classes) > 1 and rng.random() < noise.bad_frame_rate:
        scrambled = np.arange(max(int(out.max()), int(classes.max())) + 1)
        scrambled[classes] = rng.permutation(classes)
        out = scrambled[out]
    if noise.warp_frame_rate > 0 and extra_rng.random() < noise.warp_frame_rate:
        out = _warp_frame(out, noise, extra_rng)
    return out


def _stick(new_class: np.ndarray, ids: np.ndarray, inst_class: np.ndarray, classes: np.ndarray,
           noise: SimulatedNoise, rng: np.random.Generator, error_seed: int) -> None:
    """Sticky instances: whether an instance is one and the class it takes are drawn once per
    instance (seeded by its id), so the same object is wrong in every frame it shows in."""
    shows = rng.random(len(ids)) < noise.sticky_rate
    for k in np.flatnonzero((ids > 0) & shows):
        inst_rng = np.random.default_rng([error_seed, 13, int(ids[k])])
        if inst_rng.random() < noise.sticky_instances:
            others = classes[classes != inst_class[k]]
            new_class[k] = others[inst_rng.integers(len(others))]


def _split_instances(out: np.ndarray, instances: np.ndarray, ids: np.ndarray, inst_class: np.ndarray, rate: float,
                     rng: np.random.Generator) -> np.ndarray:
    """Over-segmentation: a part of an instance, cut along a random line through its centre, takes
    the (true) class of the largest neighbouring instance. Changes `out` in place."""
    class_of_id = dict(zip(ids.tolist(), inst_class.tolist()))
    boxes = ndimage.find_objects(instances)
    for k in np.flatnonzero((ids > 0) & (rng.random(len(ids)) < rate)):
        inst = int(ids[k])
        neighbour = largest_neighbour(instances, inst, boxes[inst - 1] if inst - 1 < len(boxes) else None)
        if not neighbour:
            continue
        yy, xx = np.nonzero(instances == inst)
        angle = rng.uniform(0, np.pi)
        side = (yy - yy.mean()) * np.cos(angle) - (xx - xx.mean()) * np.sin(angle) > 0
        out[yy[side], xx[side]] = class_of_id[neighbour]
    return out


def _warp_frame(labels: np.ndarray, noise: SimulatedNoise, rng: np.random.Generator) -> np.ndarray:
    """A whole frame off: its label map shifted, rotated about its centre or blurred (block-coarse)."""
    kind = rng.integers(3)
    if kind == 0:
        dy, dx = rng.uniform(-1, 1, size=2) * noise.warp_shift_px
        return ndimage.shift(labels, (dy, dx), order=0, mode="nearest")
    if kind == 1:
        angle = rng.uniform(-1, 1) * noise.warp_rotate_deg
        return ndimage.rotate(labels, angle, reshape=False, order=0, mode="nearest")
    b = max(2, int(noise.warp_blur_px))
    rows, cols = (np.minimum(np.arange(n) // b * b + b // 2, n - 1) for n in labels.shape)
    return labels[np.ix_(rows, cols)]  # each b x b block takes its centre's class


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

