"""Run any ImageSegmenter on a stack of frames as stored: what the segment stage does for every
real model alike.

Frames are stored as captured; networks are trained on upright photos. Each frame is turned
upright by its `upright` quarter turns (np.rot90), frames of one turn are batched (same shape),
optionally mirrored for test-time augmentation, run under fp16 autocast on CUDA, and the labels
are turned back to the stored raster. A CUDA out-of-memory halves the batch (down to 1) and
remembers the smaller size for the following batches.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import OutOfMemoryError
from .base import ImageSegmenter


@dataclass
class RunOptions:
    batch_size: int = 4
    flip_tta: bool = False
    device: str = "cpu"  # resolved already (see devices.resolve_device)
    fp16: bool = True


@dataclass
class Prediction:
    labels: np.ndarray  # (N,H,W) in the stored raster
    labels_flip: Optional[np.ndarray] = None  # the mirrored frames' labels, mirrored back (flip TTA)


class ImageRunner:
    """One model's runner; keeps the batch size that fit (after an out-of-memory) across calls."""

    def __init__(self, segmenter: ImageSegmenter, options: RunOptions):
        self.segmenter = segmenter
        self.options = options
        self.batch_size = max(1, int(options.batch_size))

    def run(self, color: np.ndarray, upright: np.ndarray, scene: str) -> Prediction:
        """color (N,H,W,3) uint8 as stored, upright (N,) quarter turns -> labels in the stored raster."""
        n, h, w = color.shape[:3]
        labels = np.zeros((n, h, w), np.int64)
        flipped = np.zeros((n, h, w), np.int64) if self.options.flip_tta else None
        turns = np.asarray(upright).astype(np.int64) % 4
        for k in np.unique(turns):
            idx = np.flatnonzero(turns == k)
            images = np.ascontiguousarray(np.rot90(color[idx], int(k), axes=(1, 2)))
            labels[idx] = np.rot90(self._predict(images, scene), -int(k), axes=(1, 2))
            if flipped is not None:
                mirrored = np.ascontiguousarray(images[:, :, ::-1])
                flipped[idx] = np.rot90(self._predict(mirrored, scene)[:, :, ::-1], -int(k), axes=(1, 2))
        return Prediction(labels, flipped)

    def _predict(self, images: np.ndarray, scene: str) -> np.ndarray:
        """Batches of self.batch_size; on CUDA out-of-memory: half the batch, again, then a clear error."""
        import torch

        out, i = [], 0
        while i < len(images):
            chunk = images[i:i + self.batch_size]
            try:
                with self._autocast():
                    pred = np.asarray(self.segmenter.predict_images(chunk))
            except torch.cuda.OutOfMemoryError as err:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if self.batch_size == 1:
                    raise OutOfMemoryError(
                        scene, self.segmenter.name,
                        f"out of memory on {self.options.device} even one frame at a time "
                        f"({chunk.shape[2]}x{chunk.shape[1]} px upright)",
                        "run it on a GPU with more memory, or lower the model's input size",
                    ) from err
                self.batch_size = max(1, self.batch_size // 2)
                continue
            if pred.shape != chunk.shape[:3]:
                raise ValueError(
                    f"model '{self.segmenter.name}' returned labels of shape {pred.shape} for images {chunk.shape}"
                )
            out.append(pred.astype(np.int64, copy=False))
            i += len(chunk)
        return np.concatenate(out) if out else np.zeros(images.shape[:3], np.int64)

    def _autocast(self):
        import torch

        if self.options.device.startswith("cuda") and self.options.fp16:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()
