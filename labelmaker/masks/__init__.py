"""Class-agnostic masks per frame (SAM, or simulated from synthetic ground truth).

A mask model turns frames into per-pixel mask-id maps (uint16, 0 = no mask, ids per frame).
They refine the consensus (labelmaker.refine) and propose regions to the open-vocabulary model.
Kinds register themselves in `base.MASK_MODELS`; this package imports them (the registry does not).
"""
from . import sam, simulated  # noqa: F401  (register their kinds)
from .base import MASK_MODELS, MaskModelConfig, MasksConfig, SamArch, SamConfig, SimulatedMaskNoise, build_mask_model

__all__ = ["MASK_MODELS", "MaskModelConfig", "MasksConfig", "SamArch", "SamConfig", "SimulatedMaskNoise",
           "build_mask_model"]
