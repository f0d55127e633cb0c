"""The in-memory form of imported frames, shared by importers, the workspace and stages."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class FrameBatch:
    """A run of consecutive frames of one scene, all arrays stacked on the first axis.

    color is (N,Hc,Wc,3) uint8; depth (N,Hd,Wd) uint16 millimetres with 0 = no depth;
    confidence (N,Hd,Wd) uint8 (0 low, 1 medium, 2 high; all 2 where the source has none);
    K_color / K_depth (N,3,3) pinhole intrinsics of the stored images; T_cw (N,4,4)
    world-to-camera (OpenCV axes); upright (N,) quarter turns for np.rot90 (see geometry).
    """

    names: list[str]
    timestamps: np.ndarray
    color: np.ndarray
    depth: np.ndarray
    confidence: np.ndarray
    K_color: np.ndarray
    K_depth: np.ndarray
    T_cw: np.ndarray
    upright: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    @property
    def depth_m(self) -> np.ndarray:
        """Depth in metres as float32, 0 where missing."""
        return self.depth.astype(np.float32) / 1000.0


@dataclass
class SceneContext:
    """What a frame model (segmenter, mask model) may know about the scene besides the frames."""

    scene: str
    source: str  # importer name
    input_dir: Path  # the raw capture folder
