"""Mask model configs and the factory that builds one by kind."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Protocol

import numpy as np

from ..frames import FrameBatch, SceneContext
from ..registry import Registry


@dataclass
class SimulatedMaskNoise:
    """How simulated SAM masks err, per ground-truth instance and frame."""

    miss_rate: float = 0.1  # the instance gets no mask
    split_rate: float = 0.15  # over-segmentation: the instance is cut in two along a random line
    merge_rate: float = 0.1  # under-segmentation: the instance is merged into its largest neighbour
    boundary_px: int = 2  # mask outlines wander by up to this many pixels
    persistent: bool = False  # miss / split / merge drawn once per instance (its id), not per frame: the same
    # pillow is merged with the bed in every view, as a real mask model's habits persist


@dataclass
class SamArch:
    """SAM's architecture. The published checkpoints are the presets vit_h / vit_l / vit_b."""

    encoder_embed_dim: int = 1280
    encoder_depth: int = 32
    encoder_num_heads: int = 16
    encoder_global_attn_indexes: List[int] = field(default_factory=lambda: [7, 15, 23, 31])
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256


SAM_PRESETS = {
    "vit_h": SamArch(),
    "vit_l": SamArch(
        encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16, encoder_global_attn_indexes=[5, 11, 17, 23]
    ),
    "vit_b": SamArch(
        encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12, encoder_global_attn_indexes=[2, 5, 8, 11]
    ),
}


@dataclass
class SamConfig:
    """segment-anything's automatic mask generator (names as in SamAutomaticMaskGenerator)."""

    model_type: str = "vit_h"  # vit_h | vit_l | vit_b (the published checkpoints), or custom (then `arch`)
    arch: Optional[SamArch] = None  # custom architecture (tests: a tiny random SAM)
    # manifest name (checkpoints.csv), file name in checkpoint_dir, or path: SAM's plain state dict
    checkpoint: Optional[str] = "sam_vit_h"
    checkpoint_dir: Optional[str] = None  # presets: ${checkpoints.dir}; null: $LABELMAKER_CHECKPOINT_DIR
    points_per_side: int = 32
    points_per_batch: int = 64  # prompts per decoder call; halved on CUDA out-of-memory
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    device: str = "auto"  # auto | cpu | cuda
    fp16: bool = True  # autocast to half precision on CUDA (ignored on CPU)

    def architecture(self) -> SamArch:
        if self.model_type == "custom":
            if self.arch is None:
                raise ValueError("sam.model_type=custom needs sam.arch")
            return self.arch
        if self.model_type not in SAM_PRESETS:
            raise ValueError(f"unknown SAM model_type {self.model_type!r}; use {', '.join(SAM_PRESETS)} or custom")
        return SAM_PRESETS[self.model_type]


@dataclass
class MaskModelConfig:
    kind: str = "sam"  # sam | simulated (synthetic scenes only)
    min_area_px: int = 0  # masks with fewer visible pixels are dropped
    sam: SamConfig = field(default_factory=SamConfig)  # kind=sam
    seed: int = 0  # kind=simulated
    noise: SimulatedMaskNoise = field(default_factory=SimulatedMaskNoise)  # kind=simulated


@dataclass
class MasksConfig:
    models: Dict[str, MaskModelConfig] = field(default_factory=dict)  # mask model name -> model


class MaskModel(Protocol):
    name: str

    def masks(self, batch: FrameBatch, ctx: SceneContext) -> np.ndarray:
        """(N,H,W) uint16 mask-id maps at the batch's colour raster (0 = no mask)."""


MASK_MODELS: Registry = Registry("mask model kind")  # kind -> class(name, cfg); masks/__init__.py imports the kinds


def build_mask_model(name: str, cfg: MaskModelConfig) -> MaskModel:
    return MASK_MODELS.build(cfg.kind, name, cfg, context=f"mask model {name!r}: ")
