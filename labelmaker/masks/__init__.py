"""Class-agnostic masks per frame (SAM, or simulated from synthetic ground truth).

A mask model turns frames into per-pixel mask-id maps (uint16, 0 = no mask, ids per frame).
They refine the consensus (labelmaker.refine) and propose regions to the open-vocabulary model.
"""
from .base import MaskModelConfig, MasksConfig, SamArch, SamConfig, SimulatedMaskNoise, build_mask_model

__all__ = ["MaskModelConfig", "MasksConfig", "SamArch", "SamConfig", "SimulatedMaskNoise", "build_mask_model"]
