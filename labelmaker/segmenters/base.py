"""The segmenter protocol, its config and the registry of kinds.

A segmenter maps a batch of frames to label maps (N,H,W) in its own label space, at the
colour raster of the frames. Real models (issue "Real 2D segmenters") get frames rotated
upright by the segment stage; `precomputed` and `simulated` read or derive labels per frame name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Protocol

import numpy as np

from ..frames import FrameBatch


@dataclass
class SimulatedNoise:
    """How a `simulated` model errs (all rates per frame unless said otherwise)."""

    confused_classes: float = 0.3  # share of classes this model systematically mistakes for another
    confusion_rate: float = 0.5  # chance per frame and instance of a confused class to take the wrong label
    instance_error_rate: float = 0.05  # chance per frame and instance of a random wrong label
    boundary_px: int = 2  # labels bleed across class boundaries by up to this many pixels
    blobs_per_frame: float = 1.0  # mean number of wrong-label blobs per frame
    blob_radius_px: float = 14.0
    small_object_px: int = 120  # instances smaller than this in a frame are missed
    bad_frame_rate: float = 0.03  # chance that a frame is labelled with a scrambled class table


@dataclass
class ModelConfig:
    kind: str = "simulated"  # registry key: precomputed | simulated
    label_space: str = "ade20k"  # the label space its predictions are in
    weight: float = 1.0  # its vote weight in the consensus
    path: Optional[str] = None  # precomputed: the folder of per-frame label PNGs
    seed: int = 0  # simulated: noise seed
    noise: SimulatedNoise = field(default_factory=SimulatedNoise)  # simulated only


@dataclass
class SceneContext:
    """What a segmenter may know about the scene besides the frames."""

    scene: str
    source: str  # importer name
    input_dir: Path  # the raw capture folder


class Segmenter(Protocol):
    label_space: str

    def predict(self, batch: FrameBatch, ctx: SceneContext) -> np.ndarray:
        """(N,H,W) integer label maps in `label_space` at the batch's colour raster."""


_REGISTRY: dict[str, Callable[[str, ModelConfig], Segmenter]] = {}


def register_segmenter(kind: str):
    def decorate(factory):
        if kind in _REGISTRY:
            raise ValueError(f"segmenter kind {kind!r} registered twice")
        _REGISTRY[kind] = factory
        return factory

    return decorate


def build_segmenter(name: str, cfg: ModelConfig) -> Segmenter:
    from . import precomputed, simulated  # noqa: F401  (register themselves)

    try:
        factory = _REGISTRY[cfg.kind]
    except KeyError:
        raise ValueError(f"model {name!r}: unknown segmenter kind {cfg.kind!r}; known: {', '.join(sorted(_REGISTRY))}") from None
    return factory(name, cfg)
